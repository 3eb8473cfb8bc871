"""The HTTP side of the server: one handler thread per connection, the engine behind them all.

    client ─HTTP─► handler thread ─┐                                       ┌─► handler ─JSON or SSE─► client
    client ─HTTP─► handler thread ─┼─ Request ─► engine thread ─ tokens ─┼─► handler ─JSON or SSE─► client
    client ─HTTP─► handler thread ─┘  (queue)    one model, one batch:    └─► handler ─JSON or SSE─► client
      parse and check the request,               admit, prefill, decode       turn tokens into text
      apply the chat template                    step, emit, leave

Standard library only (http.server). What a request may say and what comes back is
serving/openai_api.py's; the batch is serving/engine.py's.

Read top to bottom:
    client_state     whether the client is still there, read without taking anything from the socket
    the handler      GET /v1/models, POST /v1/chat/completions (and GET /stats, the engine's counters);
                     a client that leaves is noticed
    the server       listen, then start_engine: the model, its adapters and the engine behind the handlers
"""
import json
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

from plumbing.errors import UserError
from serving.engine import Engine, EngineFull, EngineStopped, Request
from serving.multi_lora import AdapterBank
from serving.openai_api import BASE_NAME, ApiError, chunk, completion, model_card, parse_chat_request, server_sent_event, usage


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
            self.send_json(200, {"object": "list", "data": [model_card(name, service.created) for name in service.names]})
        elif path.startswith("/v1/models/") and unquote(path[len("/v1/models/"):]) in service.names:
            self.send_json(200, model_card(unquote(path[len("/v1/models/"):]), service.created))
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


class ChatServer(ThreadingHTTPServer):
    """The HTTP server with its Service: listen() opens it, start_engine() puts the model behind it,
    serve_forever() answers, close() stops the engine, then the socket."""

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

    def start_engine(self, model, tokenizer, adapters: dict, context: int, *, lora_mode: str = "batched",
                     max_batch_size: int = 32, max_waiting: int = 256, max_body_bytes: int = 1_000_000,
                     log_requests: bool = True) -> None:
        """Serve `model` as "minimind" and each of `adapters` ({name: read_adapter(...)}) under its name:
        stack the adapters in the model's dtype and device, start the engine; requests are answered from
        serve_forever on. The engine owns the model from now on (see Engine's lora_mode).

        context: the longest prompt + answer a request may use, in tokens (at most model.config.max_seq_len)."""
        weight = model.output.weight
        bank = AdapterBank(BASE_NAME, adapters, device=weight.device, dtype=weight.dtype)
        engine = Engine(model, tokenizer.eos_token_id, bank, lora_mode, max_batch_size, max_waiting)
        self.service = Service(engine, tokenizer, bank.names, context, max_body_bytes, log_requests, int(time.time()))
        engine.start()


def listen(host: str, port: int) -> ChatServer:
    """A ChatServer bound to host:port (0: a free port), with no model behind it yet; a port that is
    taken is a one-line UserError. Listening comes first, so it fails before a model is loaded."""
    try:
        return ChatServer((host, port), Handler)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}; pass another --port") from None
