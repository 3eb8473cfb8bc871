"""OpenAI's chat-completions API, as this server speaks it: requests checked, responses shaped.

Nothing here touches the network or the model: a request body (bytes) goes in, a checked ChatRequest
or an ApiError comes out; an answer's tokens and text go in, OpenAI's JSON objects come out.
serving/http_server.py moves them over HTTP.

Read top to bottom:
    errors           ApiError: OpenAI's error object and the HTTP status that goes with it
    the request      parse_chat_request: a JSON body -> a checked ChatRequest, or an ApiError naming the field
    the responses    OpenAI's model, completion and chunk objects, server-sent events
"""
import json
from dataclasses import dataclass

from dataset.records import check_unicode
from dataset.token_cache import DataError
from evaluation import MAX_NEW_TOKENS, TEMPERATURE, TOP_P
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


def model_card(name: str, created: int) -> dict:
    """GET /v1/models' entry for one served model; an adapter names the base it runs on (as vLLM's do)."""
    return {"id": name, "object": "model", "created": created, "owned_by": "minimind",
            "parent": None if name == BASE_NAME else BASE_NAME}

