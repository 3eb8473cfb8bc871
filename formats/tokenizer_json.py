"""tokenizer.json and tokenizer_config.json, Hugging Face's files for a tokenizer: read with every check, and written.

model/tokenizer.py is the tokenizer; this is its file format. A tokenizer file can come from anywhere
(MiniMind2, Hugging Face, a hand edit), so reading refuses, in one line naming the file, what would
otherwise mis-encode silently: a damaged file, a vocabulary with two tokens on one id, a malformed
merge, an added token on another's id, and tokenizer.json features this implementation does not do
(a normalizer, another pre-tokenizer, dropout, byte fallback, ...). Writing produces exactly what
Hugging Face writes for MiniMind2, so `tokenizers` and `transformers` load the files.
"""
import json
import os

from plumbing import untrusted_json
from plumbing.errors import UserError


class TokenizerError(UserError, ValueError):
    """A tokenizer.json this code cannot use (unreadable, damaged, inconsistent, unsupported), or text
    it cannot encode. The message names the file, or the position in the text, and the problem."""


def read_tokenizer_json(path):
    """A tokenizer folder (or its tokenizer.json) -> (file, vocab, merges as pairs, added tokens,
    {"bos_token", "eos_token", "pad_token"}, the config's chat_template or None), every part checked.

    Merges may be written "left right" (older files, MiniMind2's) or ["left", "right"] (newer).
    """
    path = os.fspath(path)
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no tokenizer at {path!r}: pass a tokenizer.json or a directory "
                                "holding one (train one with train_tokenizer.py)")
    spec = _read_json(file)
    _check_supported(spec, file)
    vocab, merges, added = _check_spec(spec, file)

    special_names = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>"}
    template = None
    config_file = os.path.join(os.path.dirname(file), "tokenizer_config.json")
    if os.path.isfile(config_file):
        config = _read_json(config_file)
        for name in special_names:
            value = config.get(name)
            if isinstance(value, dict):  # {"content": "<s>", ...} form
                value = value.get("content")
            if value:
                special_names[name] = value
        template = config.get("chat_template")
    return file, vocab, merges, added, special_names, template


def tokenizer_json_files(vocab, merges, added_tokens, bos_token, eos_token, pad_token, chat_template) -> dict:
    """{"tokenizer.json": text, "tokenizer_config.json": text}: what Tokenizer.save() writes, in memory.

    The files are what Hugging Face writes for MiniMind2, so `tokenizers.Tokenizer.from_file`
    and `transformers.AutoTokenizer.from_pretrained(directory)` load them. Output is
    deterministic: the same tokenizer always gives byte-identical files.
    """
    # merges as "left right" strings: every tokenizers version reads that form. Byte-level
    # tokens never contain a space (a space byte is written 'Ġ'), so the split is unambiguous.
    if any(" " in part for m in merges for part in m):
        merges = [list(m) for m in merges]
    else:
        merges = [f"{a} {b}" for a, b in merges]
    added_tokens = [{"id": t["id"], "content": t["content"], "single_word": False, "lstrip": False,
                     "rstrip": False, "normalized": False, "special": t["special"]}
                    for t in sorted(added_tokens, key=lambda t: t["id"])]
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False,
                  "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1])),
                  "merges": merges},
    }
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"}
                                 for t in added_tokens},
        "additional_special_tokens": [],
        "bos_token": bos_token,
        "clean_up_tokenization_spaces": False,
        "eos_token": eos_token,
        "legacy": True,
        "model_max_length": 32768,
        "pad_token": pad_token,
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>" if any(t["content"] == "<unk>" for t in added_tokens) else None,
        "chat_template": chat_template,
    }
    return {name: json.dumps(obj, ensure_ascii=False, indent=2) + "\n"
            for name, obj in (("tokenizer.json", spec), ("tokenizer_config.json", config))}


def _read_json(file):
    """A tokenizer file's JSON object, or a TokenizerError naming the file (cut short, not JSON, not UTF-8,
    nested absurdly deep: plumbing/untrusted_json.py)."""
    try:
        spec = untrusted_json.load_file(file)
    except untrusted_json.JSONError as e:
        raise TokenizerError(f"{e}: the file is damaged; restore it, or make it again with train_tokenizer.py") from None
    if not isinstance(spec, dict):
        raise TokenizerError(f"{file} is not a tokenizer file: it holds a JSON {type(spec).__name__}, not an object")
    return spec


def _check_spec(spec, file):
    """tokenizer.json's model.vocab, model.merges and added_tokens -> (vocab, merges as pairs, added tokens),
    each checked for the shape Tokenizer needs, or a TokenizerError naming the file and what is wrong.

    Both merge forms are read: "left right" (older files, MiniMind2's) and ["left", "right"] (newer).
    """
    def bad(problem):
        return TokenizerError(f"{file}: {problem} (a damaged or hand-edited tokenizer.json? restore it, "
                              "or make it again with train_tokenizer.py)")

    model = spec.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if not isinstance(vocab, dict) or not vocab:
        raise bad('no "model": {"vocab": {token: id, ...}}')
    merges = model.get("merges")
    if not isinstance(merges, list):
        raise bad('no "model": {"merges": [...]}')
    by_id = {}
    for token, i in vocab.items():
        if type(i) is not int or i < 0:
            raise bad(f"vocab entry {token!r} has id {i!r}, not a non-negative integer")
        if i in by_id:
            raise bad(f"vocab entries {by_id[i]!r} and {token!r} both have id {i}")
        by_id[i] = token
    pairs = []
    for rank, m in enumerate(merges):
        pair = m.split(" ") if isinstance(m, str) else m
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) and p for p in pair)):
            raise bad(f"merge #{rank} {m!r} is not a pair of tokens")
        pairs.append(pair)
    added = []
    if not isinstance(spec.get("added_tokens") or [], list):
        raise bad('"added_tokens" is not a list')
    for t in spec.get("added_tokens") or []:
        if not (isinstance(t, dict) and type(t.get("id")) is int and t["id"] >= 0 and isinstance(t.get("content"), str)):
            raise bad(f"added token {t!r} lacks an integer id or a string content")
        if by_id.get(t["id"], t["content"]) != t["content"]:
            raise bad(f"added token {t['content']!r} has id {t['id']}, which the vocab gives to {by_id[t['id']]!r}")
        added.append({"id": t["id"], "content": t["content"], "special": t.get("special", True)})
    return vocab, pairs, added


def _check_supported(spec, file):
    """Refuse tokenizer.json features this implementation does not do, instead of mis-encoding."""
    model = spec.get("model") if isinstance(spec.get("model"), dict) else {}
    problems = []
    if model.get("type") != "BPE":
        problems.append(f"model type {model.get('type')!r} (only BPE)")
    if spec.get("normalizer") is not None:
        problems.append("a normalizer")
    pre = spec.get("pre_tokenizer") if isinstance(spec.get("pre_tokenizer"), dict) else {}
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        problems.append(f"pre_tokenizer {pre} (only ByteLevel, add_prefix_space=false, use_regex=true)")
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            problems.append(f"model.{key}={model[key]!r}")
    for key in ("byte_fallback", "ignore_merges"):
        if model.get(key):
            problems.append(f"model.{key}=true")
    for t in spec.get("added_tokens") if isinstance(spec.get("added_tokens"), list) else []:
        flags = [k for k in ("lstrip", "rstrip", "single_word") if isinstance(t, dict) and t.get(k)]
        if flags:
            problems.append(f"added token {t.get('content')!r} with {', '.join(flags)}")
    if problems:
        raise TokenizerError(f"{file}: unsupported tokenizer ({'; '.join(problems)}); this project reads "
                             "byte-level BPE tokenizers like MiniMind2's")
