"""JSON from outside the program -- a request body, a file someone shared -- parsed with limits.

Python's json module recurses once per level of nesting, so `[[[[...]]]]` a few thousand levels
deep raises RecursionError (a traceback, or in a server a dropped connection) instead of an error
a user or a client can act on. Real files and requests of this project are a few levels deep, so
anything deeper than MAX_DEPTH is refused before the parser sees it, in one pass over the text:

    loads('{"a": [1, 2]}')          -> {'a': [1, 2]}
    loads('[' * 10_000)             -> JSONError: nested deeper than 64 levels
    loads('{"a": 1', what="x.json") -> JSONError: x.json is not valid JSON (line 1, column 8: ...)

Every reader of JSON that a user or a client hands us goes through here (the server's requests,
sidecars, tokenizer.json, adapter_config.json, the token cache's meta.json, safetensors headers).
Standard library only.
"""
import json
import sys

from plumbing.errors import UserError

MAX_DEPTH = 64  # deepest nesting accepted; the project's own files use at most 5


class JSONError(UserError, ValueError):
    """Text that is not JSON, or JSON nested too deeply to be what we expect."""


def nesting_depth(text: str) -> int:
    """How deeply [ and { nest in `text`, ignoring brackets inside strings:
    nesting_depth('{"a": [1, "]"]}') -> 2"""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def loads(text, what: str = "the JSON text", max_depth: int = MAX_DEPTH):
    """json.loads(text) for untrusted text (str or UTF-8 bytes); JSONError naming `what` if it is not
    JSON, not UTF-8, or nested more than max_depth levels."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise JSONError(f"{what} is not UTF-8 text (byte {e.start})") from None
    depth = nesting_depth(text)
    if depth > max_depth:
        raise JSONError(f"{what} is nested {depth} levels deep, more than the {max_depth} accepted")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise JSONError(f"{what} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except ValueError:  # Python refuses to convert an integer of more than 4,300 digits (sys.get_int_max_str_digits)
        raise JSONError(f"{what} holds an integer of more than {sys.get_int_max_str_digits()} digits") from None


def load_file(path, what: str = None, max_depth: int = MAX_DEPTH):
    """loads() of a file's contents; an unreadable file is a JSONError too."""
    what = what or str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise JSONError(f"cannot read {what} ({e.strerror or e})") from None
    return loads(data, what, max_depth)
