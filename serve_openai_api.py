"""An OpenAI-compatible server for one MiniMind model and any number of its LoRA adapters.

    python serve_openai_api.py --lora_name lora_medical lora_identity     # http://127.0.0.1:8998/v1

    curl http://127.0.0.1:8998/v1/models
    curl http://127.0.0.1:8998/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "lora_medical", "messages": [{"role": "user", "content": "..."}], "temperature": 0}'

The base model is served as "minimind" and each adapter under its own name; a request picks one
with "model". Requests for any of them share the running batch (serving/engine.py), each row wearing
its own adapter (serving/multi_lora.py). The official `openai` client works against it unchanged,
streaming or not (docs/serving.md). Standard library only: http.server, one thread per connection.

    client ─HTTP─► handler thread ─┐                                       ┌─► handler ─JSON or SSE─► client
    client ─HTTP─► handler thread ─┼─ Request ─► engine thread ─ tokens ─┼─► handler ─JSON or SSE─► client
    client ─HTTP─► handler thread ─┘  (queue)    one model, one batch:    └─► handler ─JSON or SSE─► client
      parse and check the request,               admit, prefill, decode       turn tokens into text
      apply the chat template                    step, emit, leave

Read top to bottom:
    errors           ApiError: OpenAI's error object and the HTTP status that goes with it
    the request      parse_chat_request: a JSON body -> a checked ChatRequest, or an ApiError naming the field
    the responses    OpenAI's completion and chunk objects, server-sent events
    the handler      GET /v1/models, POST /v1/chat/completions (and GET /stats, the engine's counters);
                     a client that leaves is noticed
    the server       load the base and the adapters through formats.loader, start the engine, Ctrl-C
    command line
"""
import argparse
import json
import os
import queue
import selectors
import socket
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from dataset.lm_dataset import DataError, check_unicode
from evaluation import MAX_NEW_TOKENS, TEMPERATURE, TOP_P
from plumbing.device import DEVICE_HELP, DTYPES, INFERENCE_DTYPE_HELP, pick_device, pick_dtype
from serving.engine import Engine, EngineFull, EngineStopped, Request
from plumbing.errors import UserError, run_main
from formats.loader import (MODEL_MODES, add_shape_args, adapter_path, check_adapter_name, find_checkpoint, load_checkpoint,
                          missing_adapter_message, shape_from_args)
from serving.multi_lora import AdapterBank, read_adapter
from plumbing.untrusted_json import JSONError, loads

BASE_NAME = "minimind"  # what "model" names the base model as; adapters go by their own names
# A request that leaves out temperature, top_p or max_tokens is answered as eval_model.py answers
# (one configuration: evaluation.py's TEMPERATURE, TOP_P and MAX_NEW_TOKENS, its flags' defaults).


# ----------------------------------------------------------------------------------------------
# Errors, in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with an HTTP status.


class ApiError(Exception):
    """A request we refuse: the status and the error object to answer with."""

    def __init__(self, status: int, message: str, param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


# ----------------------------------------------------------------------------------------------
# The request: every field checked, so nothing reaches the engine that it cannot do.

ROLES = ("system", "user", "assistant")  # what MiniMind's chat template knows
FIELDS = ("model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stream",
          "stream_options", "seed", "n", "user")  # "user" (an end-user id) is accepted and ignored


@dataclass
class ChatRequest:
    """A checked chat-completion request."""

    model: str  # "minimind" or an adapter's name
    adapter: int  # its index in the AdapterBank (0 = the base)
    prompt: list  # token ids: the chat template applied to the messages
    max_new_tokens: int
    temperature: float  # 0 = greedy
    top_p: float
    seed: int | None
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the token counts


def _number(data: dict, key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    """data[key] if it is a number in [low, high] (or (low, high] with low_open), else an ApiError."""
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"'{key}' must be a number, got {json.dumps(value)}", key, "invalid_type")
    if not (low < value <= high if low_open else low <= value <= high):
        raise ApiError(400, f"'{key}' must be in {'(' if low_open else '['}{low}, {high}], got {value}", key, "invalid_value")
    return float(value)


def _text(content, where: str) -> str:
    """A message's content: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(400, f"'{where}' must be a string or a list of text parts; this model reads text only", where, "invalid_type")


def check_messages(messages) -> list:
    """The messages as MiniMind's chat template takes them, or an ApiError naming the bad one.

    [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}] -> [{"role": "user", "content": "Hi"}]
    """
    if messages is None:
        raise ApiError(400, "'messages' is required: a list of {role, content} objects", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages", "invalid_value")
    checked = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"'messages[{i}]' must be an object with a role and a content", f"messages[{i}]", "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise ApiError(400, f"'messages[{i}].role' is {json.dumps(role)}; MiniMind's chat template knows "
                                f"{', '.join(ROLES)}", f"messages[{i}].role", "invalid_value")
        if role == "system" and i > 0:
            raise ApiError(400, f"'messages[{i}]' is a system message; only the first message may be one",
                           f"messages[{i}].role", "invalid_value")
        checked.append({"role": role, "content": _text(m.get("content"), f"messages[{i}].content")})
    if checked[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's: the template then ends with the assistant's "
                            "header, where the answer starts", f"messages[{len(checked) - 1}].role", "invalid_value")
    return checked


def refuse_lone_surrogates(value, param: str = "") -> None:
    """An ApiError naming the field if any string or key in the parsed body holds a lone surrogate.

    JSON can spell one ("\\ud800"), json.loads gives it back as it is, and it is not text: it can be
    neither tokenized nor written into an error message as UTF-8.
    refuse_lone_surrogates({"messages": [{"content": "\\ud800"}]}) -> ApiError naming 'messages[0].content'
    """
    def check(text, what):
        try:
            check_unicode(text, "the body", what)
        except DataError as e:
            raise ApiError(400, str(e), param or None, "invalid_value") from None

    if isinstance(value, dict):
        for key, item in value.items():
            check(key, f"a key of '{param}'" if param else "a key")
            refuse_lone_surrogates(item, f"{param}.{key}" if param else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            refuse_lone_surrogates(item, f"{param}[{i}]")
    elif isinstance(value, str):
        check(value, f"'{param}'")


def parse_chat_request(body: bytes, names: list, tokenizer, context: int) -> ChatRequest:
    """A POST /v1/chat/completions body -> ChatRequest, or the ApiError to answer with.

    names: the served models, the base first. context: the longest prompt + answer, in tokens.
    parse_chat_request(b'{"model": "nope", ...}', ["minimind"], ...) -> ApiError 404 model_not_found
    """
    try:
        data = loads(body, "the body")  # depth-limited: [[[[...]]]] is an error, not a RecursionError
    except JSONError as e:
        raise ApiError(400, str(e), None, "invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", None, "invalid_json")
    refuse_lone_surrogates(data)
    unknown = [key for key, value in data.items() if key not in FIELDS and value is not None]
    if unknown:
        raise ApiError(400, f"unsupported parameter '{unknown[0]}'; this server reads {', '.join(FIELDS)}",
                       unknown[0], "unsupported_parameter")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, f"'model' is required: one of {', '.join(names)}", "model", "missing_required_parameter")
    if model not in names:
        raise ApiError(404, f"the model '{model}' does not exist; this server has: {', '.join(names)}", "model", "model_not_found")
    messages = check_messages(data.get("messages"))
    # Messages of more bytes than the context's tokens could hold are refused before the tokenizer
    # spends time on them: no token stands for more than max_token_bytes bytes, so such a prompt is
    # longer than the context for certain, and would be refused after tokenizing anyway.
    size, most = sum(len(m["content"].encode("utf-8")) for m in messages), context * tokenizer.max_token_bytes
    if size > most:
        raise ApiError(400, f"the messages are {size} bytes; this model's context is {context} tokens, which hold at "
                            f"most {most} bytes ({tokenizer.max_token_bytes} per token)", "messages",
                       "context_length_exceeded")
    temperature = _number(data, "temperature", TEMPERATURE, 0, 2)
    top_p = _number(data, "top_p", TOP_P, 0, 1, low_open=True)
    if data.get("n") not in (None, 1):
        raise ApiError(400, "'n' must be 1: one answer per request", "n", "invalid_value")
    stream = data.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", "stream", "invalid_type")
    options = data.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "'stream_options' must be an object such as {\"include_usage\": true}", "stream_options", "invalid_type")
    if options and not stream:
        raise ApiError(400, "'stream_options' is only allowed with \"stream\": true", "stream_options", "invalid_value")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ApiError(400, f"'seed' must be an integer in [0, 2^63), got {json.dumps(seed)}", "seed", "invalid_value")

    prompt = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if len(prompt) >= context:
        raise ApiError(400, f"the messages are {len(prompt)} tokens; this model's context is {context} tokens, and "
                            "the answer needs at least one of them", "messages", "context_length_exceeded")
    key = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = data.get(key)
    if max_tokens is None:
        max_tokens = MAX_NEW_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ApiError(400, f"'{key}' must be an integer of at least 1, got {json.dumps(max_tokens)}", key, "invalid_value")
    if max_tokens > context:
        raise ApiError(400, f"'{key}' is {max_tokens}, but this model's context is {context} tokens, prompt and answer "
                            "together", key, "invalid_value")
    # An answer cannot outgrow the context: one that reaches its end stops there, finish_reason "length".
    max_tokens = min(max_tokens, context - len(prompt))
    return ChatRequest(model, names.index(model), prompt, max_tokens, temperature, top_p, seed, stream,
                       options.get("include_usage", False))


# ----------------------------------------------------------------------------------------------
# The responses, in OpenAI's shapes.


def completion(request_id: str, created: int, chat: ChatRequest, text: str, finish_reason: str, usage: dict) -> dict:
    """The whole answer: a "chat.completion" object."""
    return {"id": request_id, "object": "chat.completion", "created": created, "model": chat.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": usage}


def chunk(request_id: str, created: int, chat: ChatRequest, delta: dict, finish_reason=None) -> dict:
    """One piece of a streamed answer: a "chat.completion.chunk" object."""
    return {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": chat.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def usage(chat: ChatRequest, completion_tokens: int) -> dict:
    """Token counts; completion_tokens counts every token generated, the closing </s> included."""
    return {"prompt_tokens": len(chat.prompt), "completion_tokens": completion_tokens,
            "total_tokens": len(chat.prompt) + completion_tokens}


def server_sent_event(data) -> bytes:
    """b'data: {...}\\n\\n': one event of a text/event-stream, as OpenAI streams (the last one is [DONE])."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode("utf-8")


def client_state(connection: socket.socket) -> str:
    """How the client's end of the connection stands, read without taking anything from it:

    "here"  nothing to read (a client waiting for its answer sends nothing), or a next request;
    "shut"  it sent FIN: it closed the connection, or only its sending half (shutdown(SHUT_WR), as
            `nc -N` does) and still reads. TCP shows both alike until something is written to them:
            a closed socket then answers with a reset, a half-closed one takes the bytes;
    "gone"  the socket is reset or broken. After a FIN, recv reports end of file even once a reset
            has come, so the socket's pending error (SO_ERROR) is what tells.
    MSG_PEEK leaves any bytes that did arrive in place. A selector, not select.select, which cannot
    watch a socket numbered 1024 or more (a busy server's sockets are)."""
    try:
        if connection.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return "gone"
        with selectors.DefaultSelector() as selector:
            selector.register(connection, selectors.EVENT_READ)
            if selector.select(timeout=0) and connection.recv(1, socket.MSG_PEEK) == b"":
                return "shut"
        return "here"
    except (OSError, ValueError):
        return "gone"


# ----------------------------------------------------------------------------------------------
# The handler: one per connection, on its own thread (ThreadingHTTPServer).


class Handler(BaseHTTPRequestHandler):
    """GET /v1/models[/NAME], POST /v1/chat/completions; everything else is a JSON error.

    HTTP/1.1 with keep-alive, as the openai client expects: a plain answer carries its
    Content-Length, a streamed one is sent in chunks (Transfer-Encoding: chunked)."""

    protocol_version = "HTTP/1.1"
    server_version = "MiniMind"
    timeout = 120  # seconds a connection may stay silent (idle, or sending its body) before it is closed
    POLL_S = 0.25  # how often a handler waiting for tokens checks that its client is still there

    # -- plumbing --------------------------------------------------------------------------------

    def log_message(self, format, *args):
        if self.server.service.log_requests:
            super().log_message(format, *args)

    def parse_request(self) -> bool:
        self.body_read = False  # per request: a keep-alive connection carries many
        return super().parse_request()

    def send_json(self, status: int, obj: dict, close: bool = False) -> None:
        """Answer with a JSON body. A request body that no one read is read first (or, when it cannot
        be, the connection closes): left in the socket, it would be parsed as the next request."""
        if not close:
            close = not self.drain_body()
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def send_api_error(self, error: ApiError, close: bool = False) -> None:
        self.send_json(error.status, error.body(), close)

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (a bad request line, headers too long, an unknown method) as JSON too."""
        text = message or self.responses.get(code, ("error",))[0]
        try:
            self.send_api_error(ApiError(code, text), close=True)
        except OSError:
            self.close_connection = True

    def write_chunk(self, data: bytes) -> None:
        """One piece of a chunked body (its length in hex, CRLF, the bytes, CRLF); b'' ends the body."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def path_only(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    # -- GET ---------------------------------------------------------------------------------------

    def do_GET(self):
        service, path = self.server.service, self.path_only()
        if path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [service.model_card(name) for name in service.names]})
        elif path.startswith("/v1/models/") and unquote(path[len("/v1/models/"):]) in service.names:
            self.send_json(200, service.model_card(unquote(path[len("/v1/models/"):])))
        elif path.startswith("/v1/models/"):
            name = unquote(path[len("/v1/models/"):])
            self.send_api_error(ApiError(404, f"the model '{name}' does not exist; this server has: "
                                              f"{', '.join(service.names)}", "model", "model_not_found"))
        elif path == "/stats":
            self.send_json(200, dict(service.engine.stats))
        else:
            self.send_api_error(ApiError(404, f"no route GET {path}; try GET /v1/models", None, "not_found"))

    # -- POST --------------------------------------------------------------------------------------

    def do_POST(self):
        service, path = self.server.service, self.path_only()
        try:
            if path != "/v1/chat/completions":
                raise ApiError(404, f"no route POST {path}; this server answers POST /v1/chat/completions", None, "not_found")
            chat = parse_chat_request(self.read_body(), service.names, service.tokenizer, service.context)
            request = Request(chat.prompt, chat.adapter, chat.max_new_tokens, chat.temperature, chat.top_p, chat.seed)
            service.engine.submit(request)
        except ApiError as e:
            self.send_api_error(e, close=self.close_connection)
            return
        except EngineFull as e:
            self.send_api_error(ApiError(503, f"the server is overloaded ({e}); try again later", None, "overloaded"))
            return
        except EngineStopped as e:
            self.send_api_error(ApiError(503, str(e), None, "shutting_down"), close=True)
            return
        except OSError:  # the client left while sending its request: nobody to answer
            raise
        except Exception:  # a bug: the log gets the traceback, the client still gets an answer
            traceback.print_exc()
            self.send_api_error(ApiError(500, "the server failed on this request; see its log", None, "server_error"),
                                close=True)
            return
        request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        try:
            if chat.stream:
                self.stream_answer(chat, request, request_id, created)
            else:
                self.whole_answer(chat, request, request_id, created)
        except OSError:  # the client hung up (broken pipe, reset, timeout): its row leaves the batch
            request.cancelled.set()
            self.close_connection = True

    def read_body(self) -> bytes:
        """The request body, or an ApiError for a body we will not read (no length, too long)."""
        self.body_read = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length header, not chunked", None, "length_required")
        length = self.headers.get("Content-Length")
        try:
            n = int(length)
        except (TypeError, ValueError):
            self.close_connection = True
            raise ApiError(411, "a Content-Length header is required", None, "length_required") from None
        limit = self.server.service.max_body_bytes
        if not 0 <= n <= limit:
            self.close_connection = True  # the unread body would be taken for the next request
            raise ApiError(413, f"the body is {n} bytes; this server takes at most {limit} (--max_body_bytes)",
                           None, "request_too_large")
        return self.rfile.read(n)

    def drain_body(self) -> bool:
        """Read and drop the body of a request answered without it (a POST to an unknown path, a GET
        with a body), so that the next request is parsed from its start. False if the connection
        must close instead: the body has no length, or one longer than any we read."""
        if self.body_read or ("Content-Length" not in self.headers and "Transfer-Encoding" not in self.headers):
            return True
        try:
            self.read_body()
        except ApiError:
            return False
        return True

    def events(self, request: Request, probe):
        """The engine's events for `request`, checking every POLL_S seconds that the client is still
        there (a client waiting for a whole answer, or for its first token, writes nothing we could
        fail on). Once the client has shut its end, `probe()` writes something it ignores: a client
        that only half-closed reads it, a closed socket answers with a reset, which the next check
        sees as "gone". probe=None: EOF decides nothing, the answer is generated to its end."""
        checked, probed = time.monotonic(), False
        while True:
            try:
                event = request.events.get(timeout=self.POLL_S)
            except queue.Empty:
                event = None
            if time.monotonic() - checked >= self.POLL_S:
                state = client_state(self.connection)
                if state == "gone":
                    raise ConnectionAbortedError("the client closed the connection")
                if state == "shut" and probe is not None and not probed:
                    probe()
                    probed = True
                checked = time.monotonic()
            if event is None:
                continue
            yield event
            if event[0] != "token":
                return

    def send_continue(self) -> None:
        """An interim "100 Continue": HTTP/1.1 clients read past any number of 1xx answers (RFC 9110,
        15.2), so it can probe a client waiting for a whole answer; HTTP/1.0 ones must never get one."""
        self.send_response_only(100)
        self.end_headers()

    def whole_answer(self, chat, request, request_id, created) -> None:
        tokens, eos = [], self.server.service.tokenizer.eos_token_id
        probe = self.send_continue if self.request_version != "HTTP/1.0" else None
        for kind, value in self.events(request, probe):
            if kind == "token":
                tokens.append(value)
            elif kind == "end":
                text = self.server.service.tokenizer.decode([t for t in tokens if t != eos], skip_special_tokens=True)
                self.send_json(200, completion(request_id, created, chat, text, value, usage(chat, len(tokens))))
            else:  # "error" or "stopped"
                status, code = (503, "shutting_down") if kind == "stopped" else (500, "engine_error")
                self.send_api_error(ApiError(status, value, None, code), close=kind == "stopped")

    def stream_answer(self, chat, request, request_id, created) -> None:
        """Server-sent events: a role chunk, chunks of text as tokens come, a finish chunk, [DONE].

        The stream decoder holds back the bytes of a character split over two tokens, so no chunk
        carries half a character; the pieces concatenate to exactly the whole answer's text. A
        chunk carries every token already waiting: one per token while we keep up, several at once
        when this thread falls behind the engine (then fewer writes is what lets it catch up)."""
        tok = self.server.service.tokenizer
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.write_chunk(server_sent_event(chunk(request_id, created, chat, {"role": "assistant", "content": ""})))
        decoder, generated, text = tok.stream_decoder(skip_special_tokens=True), 0, ""
        probe = lambda: self.write_chunk(b": keep-alive\n\n")  # an SSE comment, which clients skip
        for kind, value in self.events(request, probe):
            if kind == "token":
                generated += 1
                text += decoder.push(value)
                if text and request.events.empty():
                    self.write_chunk(server_sent_event(chunk(request_id, created, chat, {"content": text})))
                    text = ""
            elif kind == "end":
                text += decoder.flush()
                if text:
                    self.write_chunk(server_sent_event(chunk(request_id, created, chat, {"content": text})))
                self.write_chunk(server_sent_event(chunk(request_id, created, chat, {}, finish_reason=value)))
                if chat.include_usage:
                    last = chunk(request_id, created, chat, {}) | {"choices": [], "usage": usage(chat, generated)}
                    self.write_chunk(server_sent_event(last))
            else:  # the status is already sent: the error goes into the stream, as OpenAI does
                status, code = (503, "shutting_down") if kind == "stopped" else (500, "engine_error")
                self.write_chunk(server_sent_event(ApiError(status, value, None, code).body()))
        self.write_chunk(server_sent_event("[DONE]"))
        self.write_chunk(b"")

    def do_PUT(self):
        self.send_api_error(ApiError(405, f"{self.command} is not allowed here; use GET /v1/models or "
                                          "POST /v1/chat/completions", None, "method_not_allowed"), close=True)

    do_DELETE = do_PATCH = do_PUT


# ----------------------------------------------------------------------------------------------
# The server: the model, its adapters and the engine behind the HTTP handlers.


@dataclass
class Service:
    """What every handler reads; the engine is the only thing that touches the model."""

    engine: Engine
    tokenizer: object
    names: list  # the served models: "minimind" first, then the adapters
    context: int  # the longest prompt + answer, in tokens
    max_body_bytes: int
    log_requests: bool
    created: int  # when the server started: the models' "created"

    def model_card(self, name: str) -> dict:
        """GET /v1/models' entry; an adapter names the base it runs on (as vLLM's do)."""
        return {"id": name, "object": "model", "created": self.created, "owned_by": "minimind",
                "parent": None if name == BASE_NAME else BASE_NAME}


class ChatServer(ThreadingHTTPServer):
    """The HTTP server with its Service; close() stops the engine, then the socket."""

    daemon_threads = True  # a connection still open at exit does not keep the process alive
    request_queue_size = 128  # connections waiting to be accepted; socketserver's 5 drops the SYNs of a
    #                           burst of clients, which then retry only after a second
    service: Service = None

    def close(self) -> None:
        if self.service is not None:
            self.service.engine.stop()  # waiting and running requests are told the server is stopping
        self.server_close()

    def handle_error(self, request, client_address) -> None:
        """A client that left or went silent (a broken pipe, a reset connection, a timeout) is no fault
        of the server: no traceback for it, hundreds of which would bury the real ones. Anything else
        is a bug, and shows its traceback."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def open_server(args) -> ChatServer:
    """Listen on --host/--port, load the base and the adapters, start the engine -> the server.

    Listening comes first, so a port that is taken fails before the model is loaded."""
    names = check_args(args)
    device = pick_device(args.device)
    dtype, _ = pick_dtype(device, args.dtype)
    try:
        server = ChatServer((args.host, args.port), Handler)
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}; pass another --port") from None
    try:
        ckpt = args.ckpt or find_checkpoint(args.out_dir, MODEL_MODES[args.model_mode], args.dim, args.use_moe)
        loaded = load_checkpoint(ckpt, tokenizer=args.tokenizer, shape=shape_from_args(args), max_seq_len=args.max_seq_len,
                                 device=device, dtype=dtype)
        model, tok = loaded.model, loaded.tokenizer
        if model.config.use_moe:  # the engine's per-row adapter products read each block's one feed-forward
            raise UserError(f"{ckpt} is a mixture-of-experts model; the server batches dense models only "
                            "(chat with it through eval_model.py --use_moe)")
        adapters = {}
        for name in names:
            path = adapter_path(args.out_dir, name, model.config.dim, model.config.use_moe)
            if not os.path.isfile(path):
                raise UserError(missing_adapter_message(args.out_dir, name, model.config.dim, model.config.use_moe))
            adapters[name] = read_adapter(model, path)  # through model_lora.load_lora, which checks the fit
        context = args.max_seq_len or model.config.max_seq_len  # load_checkpoint refused a longer one
        bank = AdapterBank(BASE_NAME, adapters, device=device, dtype=model.output.weight.dtype)
        engine = Engine(model, tok.eos_token_id, bank, args.lora_mode, args.max_batch_size, args.max_waiting)
        server.service = Service(engine, tok, bank.names, context, args.max_body_bytes, args.log_requests, int(time.time()))
        engine.start()
    except BaseException:
        server.server_close()
        raise
    return server


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser():
    """eval_model.py's flags for the base checkpoint and its adapters, plus the server's own."""
    p = argparse.ArgumentParser(description="Serve a MiniMind model and its LoRA adapters over OpenAI's chat API.")
    p.add_argument("--out_dir", default="out", help="where the checkpoints and lora/ adapters are (default: %(default)s)")
    p.add_argument("--model_mode", choices=sorted(MODEL_MODES), default="sft",
                   help="which stage's checkpoint: pretrain -> OUT_DIR/pretrain_DIM.pth, sft -> OUT_DIR/full_sft_DIM.pth "
                        "(default: %(default)s)")
    p.add_argument("--ckpt", default=None, help="checkpoint file to load instead of the --model_mode one")
    p.add_argument("--lora_name", nargs="+", default=[],
                   help="adapters OUT_DIR/lora/NAME_DIM.pth to serve, each under its NAME beside the base "
                        f"('{BASE_NAME}')")
    add_shape_args(p)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--dtype", default="auto", choices=DTYPES, help=INFERENCE_DTYPE_HELP)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 opens it to the network, with no authentication (default: %(default)s)")
    p.add_argument("--port", type=int, default=8998, help="port to listen on; 0 picks a free one (default: %(default)s, MiniMind2's)")
    p.add_argument("--lora_mode", choices=["batched", "merged"], default="batched",
                   help="batched: each row of a batch wears its own adapter, any mix shares a batch; merged: one "
                        "adapter at a time is merged into the weights (S-LoRA's baseline, for bench_serve.py) "
                        "(default: %(default)s)")
    p.add_argument("--max_batch_size", type=int, default=32,
                   help="requests decoded together; more wait in a queue (1 = one at a time) (default: %(default)s)")
    p.add_argument("--max_waiting", type=int, default=256,
                   help="requests that may wait for a row; beyond them the answer is 503, try again (default: %(default)s)")
    p.add_argument("--max_seq_len", type=int, default=None,
                   help="context a request may use, prompt + answer, in tokens (default: the model's max_seq_len)")
    p.add_argument("--max_body_bytes", type=int, default=1_000_000,
                   help="largest request body accepted; larger ones get 413 (default: %(default)s)")
    p.add_argument("--log_requests", action=argparse.BooleanOptionalAction, default=True,
                   help="print one line per HTTP request on stderr")
    return p


def check_args(args) -> list:
    """Refuse flags that cannot work, before anything is loaded -> the adapter names."""
    names = list(args.lora_name)
    for name in names:
        check_adapter_name(name)
    if BASE_NAME in names:
        raise UserError(f"--lora_name {BASE_NAME}: that name is the base model's; rename the adapter")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"--lora_name names {', '.join(duplicates)} more than once")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    for flag in ("max_batch_size", "max_waiting", "max_body_bytes"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.max_seq_len is not None and args.max_seq_len < 2:
        raise UserError(f"--max_seq_len must be at least 2 (a prompt token and an answer token), got {args.max_seq_len}")
    return names


def main(argv=None):
    """Serve until Ctrl-C; then tell the open requests the server is stopping, and close."""
    args = build_parser().parse_args(argv)
    server = open_server(args)
    host, port = server.server_address[:2]
    names = server.service.names
    weights = str(server.service.engine.model.output.weight.dtype).removeprefix("torch.")
    print(f"serving {', '.join(names)} at http://{host}:{port}/v1 ({weights} weights, {args.lora_mode} adapters, "
          f"up to {args.max_batch_size} requests per batch); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(run_main(main))
