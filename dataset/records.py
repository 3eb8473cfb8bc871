"""MiniMind's jsonl formats, read one line at a time and checked: every bad line an error naming FILE:LINE.

    {"text": "..."}                                              a pretraining record
    {"conversations": [{"role": "user", "content": "..."},       an SFT (or LoRA) record: an optional system
                       {"role": "assistant", "content": "..."}]}  turn, then user and assistant alternating
    {"chosen": [...turns], "rejected": [...turns]}                a preference (DPO) record: one prompt, two replies

dataset/lm_dataset.py turns records into what a model trains on; this is what a record must be, and
what is said when one is not. A bad record is a DataError ("FILE:LINE: problem (how to fix)"), so a
typo in line 80,000 of a 4 GB file is found and named, never trained on silently nor a traceback.
train_tokenizer.py, evaluation.py and the server read text through the same functions, so every tool
reports bad data the same way. (DataError itself is dataset/token_cache.py's, whose builder counts and
skips bad lines with --skip_bad_lines.)
"""
import json
import os

from dataset.token_cache import DataError


def json_type(value):
    """The JSON name of a parsed value's type, for error messages: json_type(None) -> 'null'."""
    names = {type(None): "null", bool: "true/false", int: "a number", float: "a number",
             str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def parse_line(raw, where):
    """One jsonl line (bytes) -> the JSON object on it, or DataError naming `where` ("FILE:LINE").

    parse_line(b'{"text": "hi"}\\n', "f.jsonl:1") -> {'text': 'hi'}
    """
    try:
        # utf-8-sig also accepts the byte-order mark some Windows editors put at the start of a file.
        line = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: invalid UTF-8 at byte {e.start + 1} of the line "
                        "(re-save the file as UTF-8)") from None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON: {e.msg} at column {e.colno} "
                        "(each line must be one complete JSON object)") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {json_type(record)} "
                        "(each line must be one {...} object)")
    return record


def check_unicode(text, where, what):
    """JSON can spell a lone surrogate ("\\ud800"), which is not text and cannot be tokenized."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{where}: {what} holds a lone surrogate {text[e.start]!r} at character {e.start + 1}, "
                        "which is not valid Unicode (fix the \\uXXXX escape)") from None


def check_pretrain_record(record, where):
    """{"text": "..."} -> the text, or DataError saying what is wrong with it."""
    fix = 'each line must look like {"text": "..."}'
    if "text" not in record:
        raise DataError(f'{where}: missing key "text" ({fix})')
    text = record["text"]
    if not isinstance(text, str):
        raise DataError(f'{where}: "text" must be a string, not {json_type(text)} ({fix})')
    if not text.strip():
        raise DataError(f'{where}: "text" is empty (remove the line or give it some text)')
    check_unicode(text, where, '"text"')
    return text


def check_sft_record(record, where):
    """{"conversations": [...]} -> the list of {"role", "content"} messages, or DataError.

    The rules follow the chat template: an optional "system" turn first, then "user" and "assistant"
    alternating, starting with "user". At least one assistant turn, or there is nothing to train on.
    Extra keys (in the record or in a turn) are ignored.
    """
    fix = ('each line must look like {"conversations": [{"role": "user", "content": "..."}, '
           '{"role": "assistant", "content": "..."}]}')
    if "conversations" not in record:
        raise DataError(f'{where}: missing key "conversations" ({fix})')
    return check_messages(record["conversations"], where, "conversations", fix)


def check_messages(turns, where, key, fix):
    """A record's list of turns (its `key`) -> [{"role", "content"}, ...], or DataError (check_sft_record's
    rules); `fix` says what a good line looks like."""
    side = "" if key == "conversations" else f'"{key}": '  # which side of a preference pair, if one
    if not isinstance(turns, list) or not turns:
        what = "an empty list" if turns == [] else json_type(turns)
        raise DataError(f'{where}: "{key}" must be a non-empty list, not {what} ({fix})')
    messages = []
    for number, turn in enumerate(turns, start=1):      # turns numbered from 1, as a person counts
        if not isinstance(turn, dict):
            raise DataError(f'{where}: {side}turn {number} must be an object, not {json_type(turn)} ({fix})')
        for name in ("role", "content"):
            if name not in turn:
                raise DataError(f'{where}: {side}turn {number} has no "{name}" ({fix})')
            if not isinstance(turn[name], str):
                raise DataError(f'{where}: {side}turn {number}: "{name}" must be a string, '
                                f'not {json_type(turn[name])} ({fix})')
        role, content = turn["role"], turn["content"]
        if role not in ("system", "user", "assistant"):
            raise DataError(f'{where}: {side}turn {number}: unknown role "{role}" '
                            '(use "system", "user" or "assistant")')
        if role == "system" and number > 1:
            raise DataError(f'{where}: {side}turn {number}: "system" is only allowed as the first turn '
                            '(move it to the front)')
        expected = "user" if not messages or messages[-1]["role"] != "user" else "assistant"
        if role != "system" and role != expected:
            raise DataError(f'{where}: {side}turn {number}: expected role "{expected}", got "{role}" '
                            '(after an optional first "system" turn, turns alternate user, assistant, '
                            'user, ...)')
        if not content.strip():
            raise DataError(f'{where}: {side}turn {number} ({role}) has empty "content" '
                            '(fill it in or remove the turn)')
        check_unicode(content, where, f"{side}turn {number} ({role})")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: {side}no assistant turn, so nothing to train on "
                        "(add the assistant's reply, or use the line for pretraining)")
    return messages


def check_dpo_record(record, where):
    """{"chosen": [...], "rejected": [...]} -> (chosen messages, rejected messages), or DataError.

    MiniMind2's preference format: two conversations (each by check_sft_record's rules) that ask the
    same thing -- every turn but the last is the same -- and end in two different assistant replies,
    the preferred one and the other. A pair with equal replies teaches nothing (its DPO loss is log 2
    whatever the model), and two different prompts would compare answers to different questions.
    """
    fix = ('each line must look like {"chosen": [{"role": "user", "content": "..."}, {"role": "assistant", '
           '"content": "..."}], "rejected": [the same turns, but another last reply]}')
    for key in ("chosen", "rejected"):
        if key not in record:
            raise DataError(f'{where}: missing key "{key}" ({fix})')
    chosen, rejected = (check_messages(record[key], where, key, fix) for key in ("chosen", "rejected"))
    for key, messages in (("chosen", chosen), ("rejected", rejected)):
        if messages[-1]["role"] != "assistant":
            raise DataError(f'{where}: "{key}" must end with the assistant\'s reply ({fix})')
    if chosen[:-1] != rejected[:-1]:
        turn = next((n for n, (c, r) in enumerate(zip(chosen[:-1], rejected[:-1]), 1) if c != r), min(len(chosen), len(rejected)))
        raise DataError(f'{where}: "chosen" and "rejected" differ at turn {turn}, before their last reply '
                        "(both must answer the same conversation; only the last reply may differ)")
    if chosen[-1] == rejected[-1]:
        raise DataError(f'{where}: "chosen" and "rejected" have the same reply (a preference pair needs two '
                        "different ones)")
    return chosen, rejected


def check_record(record, where):
    """A record of either kind -> ("pretrain", text) or ("sft", messages), or DataError.

    check_record({"text": "Hi."}, "f.jsonl:1") -> ("pretrain", "Hi.")
    """
    if "conversations" in record:
        return "sft", check_sft_record(record, where)
    if "text" in record:
        return "pretrain", check_pretrain_record(record, where)
    raise DataError(f'{where}: neither "text" (pretraining) nor "conversations" (SFT) in the record '
                    f"(keys: {', '.join(record) or 'none'})")


def jsonl_lines(path):
    """Yield (raw line, "FILE:LINE") for every non-blank line of a jsonl file; parse each with parse_line.

    Lines are read as bytes and decoded one by one, so invalid UTF-8 is reported with its line number
    (reading the file as text would fail with a byte position in the whole file). The cache builder
    reads byte ranges of a file in parallel instead (token_cache.tokenize_range), with the same rules.
    """
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror}) (check the path)") from None
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            raise DataError(f"{path}:1: the file is empty (expected one JSON object per line)")
        for line_number, raw in enumerate(f, start=1):
            if raw.strip():
                yield raw, f"{path}:{line_number}"
