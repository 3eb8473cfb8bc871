"""
Pretraining and SFT datasets in MiniMind's jsonl formats, for files of many gigabytes.

A language model is trained to predict token t+1 from tokens 0..t. A data set therefore gives, for each
sample, the token ids and which of them the model must learn to predict (the loss mask). This file builds
that, top to bottom:

1. Reading jsonl one line at a time; a bad line becomes an error naming FILE:LINE.
2. One record -> (text, trained) pieces. Pretraining trains on every token after <s>; SFT only on each
   assistant reply and the </s> that closes it, never on the system prompt, the user, or the template.
3. Pieces -> token ids + trained spans -> MiniMind's (X, Y, loss_mask): cut, pad, shift by one.
4. A pre-tokenized cache: the file is tokenized once, streamed, into flat binary arrays that every
   process reads a sample at a time, so memory does not grow with the file (MiniMind reads whole
   files into RAM, on every process).
5. PretrainDataset and SFTDataset.
6. `python -m dataset.lm_dataset --show FILE` prints one sample with its trained tokens marked.

The tokenizer is any object with model/tokenizer.py's interface (encode_batch, decode,
apply_chat_template, bos/eos/pad_token_id, vocab_size, save).
"""
import argparse
import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm


# ---------------------------------------------------------------------------------------------------
# 1. Reading jsonl, and saying exactly which line is bad
# ---------------------------------------------------------------------------------------------------

class DataError(ValueError):
    """A bad data file or record. The message reads "FILE:LINE: problem (how to fix)"."""


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
    turns = record["conversations"]
    if not isinstance(turns, list) or not turns:
        what = "an empty list" if turns == [] else json_type(turns)
        raise DataError(f'{where}: "conversations" must be a non-empty list, not {what} ({fix})')
    messages = []
    for number, turn in enumerate(turns, start=1):      # turns numbered from 1, as a person counts
        if not isinstance(turn, dict):
            raise DataError(f'{where}: turn {number} must be an object, not {json_type(turn)} ({fix})')
        for key in ("role", "content"):
            if key not in turn:
                raise DataError(f'{where}: turn {number} has no "{key}" ({fix})')
            if not isinstance(turn[key], str):
                raise DataError(f'{where}: turn {number}: "{key}" must be a string, '
                                f'not {json_type(turn[key])} ({fix})')
        role, content = turn["role"], turn["content"]
        if role not in ("system", "user", "assistant"):
            raise DataError(f'{where}: turn {number}: unknown role "{role}" '
                            '(use "system", "user" or "assistant")')
        if role == "system" and number > 1:
            raise DataError(f'{where}: turn {number}: "system" is only allowed as the first turn '
                            '(move it to the front)')
        expected = "user" if not messages or messages[-1]["role"] != "user" else "assistant"
        if role != "system" and role != expected:
            raise DataError(f'{where}: turn {number}: expected role "{expected}", got "{role}" '
                            '(after an optional first "system" turn, turns alternate user, assistant, '
                            'user, ...)')
        if not content.strip():
            raise DataError(f'{where}: turn {number} ({role}) has empty "content" '
                            '(fill it in or remove the turn)')
        check_unicode(content, where, f"turn {number} ({role})")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant turn, so nothing to train on "
                        "(add the assistant's reply, or use the line for pretraining)")
    return messages


# ---------------------------------------------------------------------------------------------------
# 2. One record -> (text, trained) pieces
# ---------------------------------------------------------------------------------------------------
# A record becomes a list of text pieces, each marked trained or not. Each piece is tokenized on its
# own, so the trained tokens are known exactly: no searching the token stream for "<s>assistant"
# afterwards (MiniMind does that search, and its mask starts one token late; see the README).

def token_text(tokenizer, token_id):
    """The text of one special token: token_text(tok, tok.eos_token_id) -> '</s>'."""
    return tokenizer.decode([token_id])


def pretrain_pieces(text, tokenizer):
    """Pretraining: '<s>' + text + '</s>', every token after '<s>' trained (as MiniMind does).

    pretrain_pieces("Hi.", tok) -> [('<s>', False), ('Hi.</s>', True)]
    '<s>' is marked untrained only because nothing comes before it to predict it from.
    """
    return [(token_text(tokenizer, tokenizer.bos_token_id), False),
            (text + token_text(tokenizer, tokenizer.eos_token_id), True)]


def sft_pieces(messages, tokenizer):
    """SFT: the conversation rendered by the chat template, trained only on each reply + its '</s>'.

    With MiniMind2's template (SYS = the default system prompt):
      sft_pieces([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], tok)
      -> [('<s>system\\nSYS</s>\\n<s>user\\nHi</s>\\n<s>assistant\\n', False),
          ('Hello!</s>', True),
          ('\\n', False)]

    How the reply is found, for any template: the conversation up to reply k, rendered with
    add_generation_prompt=True, is exactly the prompt the model is given at chat time; everything
    rendering reply k adds after that, up to and including the eos text, is what the model must
    produce. Generation stops at '</s>', so the '\\n' the template puts after it is never produced
    and is not trained (MiniMind trains it; the difference is one always-the-same token per reply).
    """
    eos = token_text(tokenizer, tokenizer.eos_token_id)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    pieces, done = [], 0                      # done: characters of `full` already in a piece
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
        with_reply = tokenizer.apply_chat_template(messages[:k + 1], tokenize=False)
        if not (full.startswith(with_reply) and with_reply.startswith(prompt) and len(prompt) >= done):
            raise ValueError("the chat template does not render a conversation as the concatenation of "
                             "its turns, so reply spans cannot be found (use model/tokenizer.py's template)")
        end = with_reply.rfind(eos, len(prompt))
        if end < 0:
            raise ValueError(f"the chat template does not close assistant replies with {eos!r}")
        end += len(eos)
        pieces += [(full[done:len(prompt)], False), (full[len(prompt):end], True)]
        done = end
    pieces.append((full[done:], False))
    return [(text, trained) for text, trained in pieces if text]


def pretrain_record_pieces(raw, where, tokenizer):
    """One line of a pretraining file (bytes) -> its pieces, or DataError naming `where` (FILE:LINE)."""
    return pretrain_pieces(check_pretrain_record(parse_line(raw, where), where), tokenizer)


def sft_record_pieces(raw, where, tokenizer):
    """One line of an SFT file (bytes) -> its pieces, or DataError naming `where` (FILE:LINE)."""
    return sft_pieces(check_sft_record(parse_line(raw, where), where), tokenizer)


# ---------------------------------------------------------------------------------------------------
# 3. Pieces -> ids and trained spans -> (X, Y, loss_mask)
# ---------------------------------------------------------------------------------------------------

def encode_pieces(records, tokenizer):
    """Tokenize many records' pieces in one batch -> [(ids, spans)], one per record.

    spans are (start, end) token positions (end exclusive) of the trained pieces:
      [[('<s>', False), ('Hi.</s>', True)]] -> [([1, 72, 14, 2], [(1, 4)])]   (ids depend on the vocab)
    Specials written in the text ('<s>', '</s>') become their single tokens, as in MiniMind.
    """
    flat_ids = tokenizer.encode_batch([text for pieces in records for text, _ in pieces])
    out, j = [], 0
    for pieces in records:
        ids, spans = [], []
        for _, trained in pieces:
            if trained:
                spans.append((len(ids), len(ids) + len(flat_ids[j])))
            ids.extend(flat_ids[j])
            j += 1
        out.append((ids, spans))
    return out


def make_example(ids, spans, max_length, pad_id):
    """(ids, trained spans) -> MiniMind's (X, Y, loss_mask), three LongTensors of length max_length - 1.

    The ids are cut to max_length and padded with pad_id; mask[p] = 1 when token p is trained.
    X = ids[:-1] is what the model reads, Y = ids[1:] what it must predict at each position, and
    loss_mask = mask[1:] lines up with Y. A span cut by max_length keeps the part before the cut;
    padding is never inside a span, so it never carries loss.

    max_length 6, ids [1, 7, 8, 2], span (2, 4) (token 8 and the eos 2 trained):
      padded [1, 7, 8, 2, 0, 0]   mask [0, 0, 1, 1, 0, 0]
      X      [1, 7, 8, 2, 0]
      Y      [7, 8, 2, 0, 0]      loss_mask [0, 1, 1, 0, 0]
    """
    ids = torch.as_tensor(np.asarray(ids[:max_length], dtype=np.int64))
    padded = torch.full((max_length,), pad_id, dtype=torch.long)
    padded[:len(ids)] = ids
    mask = torch.zeros(max_length, dtype=torch.long)
    for start, end in spans:
        mask[start:min(end, max_length)] = 1
    return padded[:-1], padded[1:], mask[1:]


# ---------------------------------------------------------------------------------------------------
# 4. The token cache
# ---------------------------------------------------------------------------------------------------
# Layout of one cache folder (N samples, T tokens, K spans); every file is a flat binary array:
#   tokens.bin        (T,)    uint16 (uint32 if the vocab has more than 65536 tokens): all ids, end to end
#   offsets.bin       (N+1,)  int64: sample i is tokens[offsets[i]:offsets[i+1]]
#   spans.bin         (K, 2)  int32: trained (start, end) positions, relative to the sample's start
#   span_offsets.bin  (N+1,)  int64: sample i's spans are spans[span_offsets[i]:span_offsets[i+1]]
#   meta.json         counts, dtype, skipped lines, and what the cache was built from
# Samples are stored already cut to max_length, so the cache holds at most N * max_length tokens.

CACHE_FORMAT = 1  # bump when the layout or the meaning of the cached arrays changes


def file_fingerprint(path, probe_bytes=1 << 20):
    """What identifies a data file's content cheaply: size, modification time, and hashes of its first
    and last MiB (so a file rewritten within one mtime tick, or copied with its mtime, still differs)."""
    stat = os.stat(path)
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(probe_bytes)).hexdigest()
        f.seek(max(0, stat.st_size - probe_bytes))
        tail = hashlib.sha256(f.read(probe_bytes)).hexdigest()
    return {"name": os.path.basename(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "head_sha256": head, "tail_sha256": tail}


def tokenizer_fingerprint(tokenizer):
    """sha256 of the files tokenizer.save() writes: a changed vocab, merge or special token changes it."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()


def cache_folder(data_path, kind, tokenizer, max_length, cache_dir):
    """Where the cache for this (file, tokenizer, kind, max_length) lives; a change to any of them gives
    a different folder, so a stale cache is never read.
    -> e.g. 'dataset/.cache/sft_demo.jsonl.sft.len512.3f2a9c0d1b7e4a55'"""
    key = {"format": CACHE_FORMAT, "kind": kind, "max_length": max_length,
           "file": file_fingerprint(data_path), "tokenizer": tokenizer_fingerprint(tokenizer)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    if cache_dir is None:
        cache_dir = os.path.join(os.path.dirname(os.path.abspath(data_path)), ".cache")
    return os.path.join(cache_dir, f"{os.path.basename(data_path)}.{kind}.len{max_length}.{digest}")


def split_lines(data_path, parts):
    """Cut a file into `parts` byte ranges at line starts -> [(start, end, number of start's line)].

    A 1000-byte file, parts=2 -> e.g. [(0, 503, 1), (503, 1000, 8)]: the second range starts at the
    first line beginning at or after byte 500, which is line 8. Small files give fewer ranges.
    """
    size = os.path.getsize(data_path)
    starts = [0]
    with open(data_path, "rb") as f:
        for k in range(1, parts):
            f.seek(max(0, k * size // parts - 1))
            f.readline()                           # move to the start of the next line
            if starts[-1] < f.tell() < size:
                starts.append(f.tell())
        # Line numbers at the cut points, for error messages: count newlines, one block at a time.
        first_lines, newlines, pos = [1], 0, 0
        f.seek(0)
        for cut in starts[1:]:
            while pos < cut:
                block = f.read(min(16 << 20, cut - pos))
                newlines += block.count(b"\n")
                pos += len(block)
            first_lines.append(newlines + 1)
    return list(zip(starts, starts[1:] + [size], first_lines))


def token_dtype(vocab_size):
    """Smallest unsigned dtype holding every id: uint16 for MiniMind's 6400 tokens (2 bytes a token)."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def tokenize_range(data_path, start, end, first_line, record_pieces, tokenizer, max_length, skip_bad,
                   out_dir, progress, chunk_bytes=4 << 20):
    """Tokenize the lines starting in bytes [start, end) of data_path into out_dir, streaming.

    Memory holds one chunk (~4 MB of text) at a time. Writes tokens.bin, spans.bin and, without the
    leading 0, offsets.bin and span_offsets.bin (merge_parts adds it). record_pieces(line, "FILE:LINE",
    tokenizer) gives a record's pieces or raises DataError; with skip_bad=False the first one stops
    the work. progress(n) is called with the bytes read. Returns counts and the bad lines seen.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    summary = {"samples": 0, "tokens": 0, "spans": 0, "no_trained_tokens": 0,
               "bad": 0, "bad_lines": [], "first_error": None}
    with contextlib.ExitStack() as stack:
        out = {name: stack.enter_context(open(os.path.join(out_dir, name + ".bin"), "wb"))
               for name in ("tokens", "offsets", "spans", "span_offsets")}

        def write(chunk):
            for ids, spans in encode_pieces(chunk, tokenizer):
                ids = ids[:max_length]
                spans = [(s, min(e, max_length)) for s, e in spans if s < max_length]  # cut like the ids
                summary["samples"] += 1
                summary["tokens"] += len(ids)
                summary["spans"] += len(spans)
                summary["no_trained_tokens"] += not spans
                out["tokens"].write(np.asarray(ids, dtype=dtype).tobytes())
                out["offsets"].write(np.int64(summary["tokens"]).tobytes())
                out["spans"].write(np.asarray(spans, dtype=np.int32).reshape(-1, 2).tobytes())
                out["span_offsets"].write(np.int64(summary["spans"]).tobytes())

        f = stack.enter_context(open(data_path, "rb"))
        f.seek(start)
        chunk, chunk_size, pos, reported = [], 0, start, start
        for line_number, raw in enumerate(f, start=first_line):
            if pos >= end:
                break
            pos += len(raw)
            if not raw.strip():
                continue                           # blank lines (e.g. a trailing one) are not records
            try:
                chunk.append(record_pieces(raw, f"{data_path}:{line_number}", tokenizer))
            except DataError as e:
                summary["bad"] += 1
                summary["first_error"] = summary["first_error"] or str(e)
                if len(summary["bad_lines"]) < 5:
                    summary["bad_lines"].append(line_number)
                if not skip_bad:
                    break
                continue
            chunk_size += len(raw)
            if chunk_size >= chunk_bytes:
                write(chunk)
                progress(pos - reported)
                chunk, chunk_size, reported = [], 0, pos
        write(chunk)
        progress(end - reported)
    return summary


def _add_to_counter(counter, n):
    with counter.get_lock():
        counter.value += n


def _tokenize_range_process(job, counter):
    """Body of one worker process: tokenize_range, summary written to the part's folder."""
    summary = tokenize_range(**job, progress=functools.partial(_add_to_counter, counter))
    with open(os.path.join(job["out_dir"], "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f)


def tokenize_in_processes(jobs, bar):
    """Run tokenize_range jobs, one process each, moving the progress bar -> their summaries."""
    context = multiprocessing.get_context()
    counter = context.Value("q", 0)
    processes = [context.Process(target=_tokenize_range_process, args=(job, counter)) for job in jobs]
    for process in processes:
        process.start()
    while any(process.is_alive() for process in processes):
        time.sleep(0.2)
        bar.update(counter.value - bar.n)
    bar.update(counter.value - bar.n)
    if any(process.exitcode != 0 for process in processes):
        raise RuntimeError("a tokenizing process failed (its error is printed above)")
    summaries = []
    for job in jobs:
        with open(os.path.join(job["out_dir"], "summary.json"), encoding="utf-8") as f:
            summaries.append(json.load(f))
    return summaries


def merge_parts(part_dirs, summaries, folder):
    """Concatenate the parts' arrays into folder; offsets of part j move by the tokens before it."""
    with open(os.path.join(folder, "tokens.bin"), "wb") as tokens, \
            open(os.path.join(folder, "spans.bin"), "wb") as spans, \
            open(os.path.join(folder, "offsets.bin"), "wb") as offsets, \
            open(os.path.join(folder, "span_offsets.bin"), "wb") as span_offsets:
        offsets.write(np.zeros(1, np.int64).tobytes())
        span_offsets.write(np.zeros(1, np.int64).tobytes())
        tokens_before = spans_before = 0
        for part, summary in zip(part_dirs, summaries):
            for name, out in (("tokens", tokens), ("spans", spans)):
                with open(os.path.join(part, name + ".bin"), "rb") as f:
                    shutil.copyfileobj(f, out)
            (np.fromfile(os.path.join(part, "offsets.bin"), np.int64) + tokens_before).tofile(offsets)
            (np.fromfile(os.path.join(part, "span_offsets.bin"), np.int64) + spans_before).tofile(span_offsets)
            tokens_before += summary["tokens"]
            spans_before += summary["spans"]


def build_cache(data_path, folder, record_pieces, tokenizer, max_length, skip_bad, workers):
    """Tokenize a jsonl file into a cache folder, with `workers` processes, each streaming one byte range.

    The folder is written under a temporary name and renamed into place at the end, so a reader sees
    either no cache or a whole one, and two processes building at once cannot corrupt it (the second
    rename fails and its copy is dropped).
    """
    if os.path.getsize(data_path) == 0:
        raise DataError(f"{data_path}:1: the file is empty (expected one JSON object per line)")
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(folder) + ".tmp-", dir=os.path.dirname(folder))
    started = time.perf_counter()
    try:
        jobs = []
        for k, (start, end, first_line) in enumerate(split_lines(data_path, workers)):
            os.mkdir(os.path.join(tmp, f"part{k}"))
            jobs.append({"data_path": data_path, "start": start, "end": end, "first_line": first_line,
                         "record_pieces": record_pieces, "tokenizer": tokenizer, "max_length": max_length,
                         "skip_bad": skip_bad, "out_dir": os.path.join(tmp, f"part{k}")})
        print(f"tokenizing {data_path} into {folder} ({len(jobs)} process{'es' if len(jobs) > 1 else ''}); "
              "this happens once",
              file=sys.stderr)
        with tqdm(total=os.path.getsize(data_path), unit="B", unit_scale=True, disable=None,
                  desc="tokenizing") as bar:
            if len(jobs) == 1:
                summaries = [tokenize_range(**jobs[0], progress=bar.update)]
            else:
                summaries = tokenize_in_processes(jobs, bar)

        bad = [s for s in summaries if s["bad"]]
        if bad and not skip_bad:
            raise DataError(bad[0]["first_error"])  # the first bad line of the file: parts are in order
        counts = {name: sum(s[name] for s in summaries)
                  for name in ("samples", "tokens", "spans", "no_trained_tokens")}
        skipped = {"count": sum(s["bad"] for s in bad), "lines": [n for s in bad for n in s["bad_lines"]][:5],
                   "first_error": bad[0]["first_error"] if bad else None}
        if counts["samples"] == 0:
            if skipped["count"]:
                raise DataError(f"{skipped['first_error']} [all {skipped['count']} records are bad]")
            raise DataError(f"{data_path}:1: the file has only blank lines (expected one JSON object per line)")

        merge_parts([job["out_dir"] for job in jobs], summaries, tmp)
        for job in jobs:
            shutil.rmtree(job["out_dir"])
        meta = {"format": CACHE_FORMAT, "dtype": np.dtype(token_dtype(tokenizer.vocab_size)).name,
                "max_length": max_length, **counts, "skipped": skipped, "source": file_fingerprint(data_path)}
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, ensure_ascii=False)
        os.chmod(tmp, 0o755)                       # mkdtemp makes it private; other users may share the cache
        try:
            os.replace(tmp, folder)
        except OSError:
            if not os.path.exists(os.path.join(folder, "meta.json")):
                raise
            # Another process finished the same cache first; it is identical, so use it.
        print(f"cached {counts['samples']:,} samples, {counts['tokens']:,} tokens "
              f"({os.path.getsize(os.path.join(folder, 'tokens.bin')) / 1e6:,.1f} MB) "
              f"in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)     # already gone after a successful rename


def open_array(path, dtype, shape):
    """A read-only memmap of a flat binary file (an empty array for an empty file, which mmap refuses)."""
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


# ---------------------------------------------------------------------------------------------------
# 5. The datasets
# ---------------------------------------------------------------------------------------------------

class TokenizedJsonl(Dataset):
    """What both datasets share: build or open the token cache, then read samples from it.

    Subclasses say how one line becomes pieces (record_pieces) and name their kind (cache_kind).
    Under DDP, construct on rank 0 first (it builds the cache), barrier, then on the other ranks
    (they open it). DataLoader workers read samples from the cache files; nothing big is copied.

    build_workers: processes that tokenize when the cache is built; None = up to 8 (one per core)
    for files over 64 MB, else 1 (starting processes costs more than it saves on small files).
    """
    cache_kind = None
    record_pieces = None

    def __init__(self, data_path, tokenizer, max_length, skip_bad=False, cache_dir=None, build_workers=None):
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (X and Y are max_length - 1 long), got {max_length}")
        if not os.path.isfile(data_path):
            raise FileNotFoundError(f"data file not found: {data_path}")
        self.data_path = data_path
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id
        self.cache_path = cache_folder(data_path, self.cache_kind, tokenizer, max_length, cache_dir)
        if not os.path.exists(os.path.join(self.cache_path, "meta.json")):
            if build_workers is None:
                big = os.path.getsize(data_path) > 64 << 20
                build_workers = min(8, os.cpu_count() or 1) if big else 1
            build_cache(data_path, self.cache_path, self.record_pieces, tokenizer, max_length, skip_bad,
                        build_workers)
        self.open_cache()

        skipped = self.meta["skipped"]
        self.skipped = skipped["count"]
        if self.skipped and not skip_bad:
            # The cache was built by a run with skip_bad=True; without it, bad lines are still errors.
            raise DataError(f"{skipped['first_error']} [{self.skipped} bad lines; pass skip_bad=True to skip them]")
        if self.skipped:
            lines = ", ".join(map(str, skipped["lines"])) + (", ..." if self.skipped > len(skipped["lines"]) else "")
            print(f"skipped {self.skipped} bad lines of {data_path} (lines {lines}); "
                  f"first: {skipped['first_error']}", file=sys.stderr)
        if self.meta["no_trained_tokens"]:
            print(f"note: {self.meta['no_trained_tokens']} of {len(self)} samples in {data_path} have no "
                  f"trained token within max_length={max_length} (their loss_mask is all zero)", file=sys.stderr)

    def open_cache(self):
        """Memory-map the cache's index arrays; nothing is read until a sample is asked for."""
        with open(os.path.join(self.cache_path, "meta.json"), encoding="utf-8") as f:
            self.meta = json.load(f)
        n, path = self.meta["samples"], self.cache_path
        self.tokens_path, self.token_dtype = os.path.join(path, "tokens.bin"), np.dtype(self.meta["dtype"])
        self.offsets = open_array(os.path.join(path, "offsets.bin"), np.int64, (n + 1,))
        self.spans = open_array(os.path.join(path, "spans.bin"), np.int32, (self.meta["spans"], 2))
        self.span_offsets = open_array(os.path.join(path, "span_offsets.bin"), np.int64, (n + 1,))

    def __len__(self):
        return self.meta["samples"]

    def __getitem__(self, index):
        """-> (X, Y, loss_mask), each a LongTensor of shape (max_length - 1,); see make_example."""
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        # The ids are read from the file, not through a memmap: a memmap's pages, once touched, count as
        # this process's resident memory until the kernel takes them back, so after one epoch every
        # process would seem to hold the whole cache (nanoGPT re-creates its memmap each batch for this).
        # The index arrays are memmaps: 8 bytes a sample, 8 a span.
        ids = np.fromfile(self.tokens_path, dtype=self.token_dtype, count=end - start,
                          offset=start * self.token_dtype.itemsize)
        spans = self.spans[self.span_offsets[index]:self.span_offsets[index + 1]].tolist()
        return make_example(ids, spans, self.max_length, self.pad_id)

    def __getstate__(self):
        # DataLoader workers started with "spawn" (macOS, Windows) get a pickled copy of the dataset;
        # pickling a memmap copies the whole array, so send the cache path and reopen it there.
        state = self.__dict__.copy()
        for name in ("offsets", "spans", "span_offsets"):
            del state[name]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.open_cache()


class PretrainDataset(TokenizedJsonl):
    """{"text": ...} jsonl -> '<s>text</s>' cut/padded to max_length; loss on every non-pad target.

    ds[i] -> (X, Y, loss_mask), LongTensors of shape (max_length - 1,).
    """
    cache_kind = "pretrain"
    record_pieces = staticmethod(pretrain_record_pieces)

    def __init__(self, data_path, tokenizer, max_length=512, skip_bad=False, cache_dir=None, build_workers=None):
        super().__init__(data_path, tokenizer, max_length, skip_bad, cache_dir, build_workers)


class SFTDataset(TokenizedJsonl):
    """{"conversations": [...]} jsonl -> chat-template text; loss only on assistant replies + their '</s>'.

    ds[i] -> (X, Y, loss_mask), LongTensors of shape (max_length - 1,). Also what LoRA trains on.
    """
    cache_kind = "sft"
    record_pieces = staticmethod(sft_record_pieces)

    def __init__(self, data_path, tokenizer, max_length=1024, skip_bad=False, cache_dir=None, build_workers=None):
        super().__init__(data_path, tokenizer, max_length, skip_bad, cache_dir, build_workers)


# ---------------------------------------------------------------------------------------------------
# 6. --show: see the loss mask of one sample
# ---------------------------------------------------------------------------------------------------

def read_record(data_path, index):
    """The index-th record (0-based, blank lines not counted) of a jsonl file -> (record, "FILE:LINE")."""
    if os.path.getsize(data_path) == 0:
        raise DataError(f"{data_path}:1: the file is empty (expected one JSON object per line)")
    count = 0
    with open(data_path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if count == index:
                where = f"{data_path}:{line_number}"
                return parse_line(raw, where), where
            count += 1
    raise DataError(f"{data_path}:{line_number}: there is no record {index}, the file has {count} records "
                    "(--index counts from 0)")


def show_sample(data_path, tokenizer, index=0, max_length=512, color=False, per_token=False):
    """One sample as text, its trained targets in [[...]] (or green when color=True), plus counts.

    For '<s>user\\nHi</s>\\n<s>assistant\\nHello!</s>\\n' the output contains
      <s>user
      Hi</s>
      <s>assistant
      [[Hello!</s>]]
    per_token=True adds a table: position, X (input token), Y (target), loss_mask.
    """
    record, where = read_record(data_path, index)
    if "conversations" in record:
        kind, pieces = "SFT", sft_pieces(check_sft_record(record, where), tokenizer)
    elif "text" in record:
        kind, pieces = "pretrain", pretrain_pieces(check_pretrain_record(record, where), tokenizer)
    else:
        raise DataError(f'{where}: neither "text" (pretraining) nor "conversations" (SFT) in the record '
                        f"(keys: {', '.join(record) or 'none'})")
    [(ids, spans)] = encode_pieces([pieces], tokenizer)
    X, Y, loss_mask = make_example(ids, spans, max_length, tokenizer.pad_token_id)
    n = min(len(ids), max_length)       # real tokens in the window; the rest is padding
    trained = int(loss_mask.sum())

    # Y[p] is token p+1; group consecutive targets with the same mask value and decode each group whole
    # (a character can be split over several byte-level tokens).
    open_mark, close_mark = ("\033[1;32m", "\033[0m") if color else ("[[", "]]")
    text = [tokenizer.decode(X[:1].tolist())]
    p = 0
    while p < n - 1:
        q = p
        while q < n - 1 and loss_mask[q] == loss_mask[p]:
            q += 1
        piece = tokenizer.decode(Y[p:q].tolist())
        text.append(open_mark + piece + close_mark if loss_mask[p] else piece)
        p = q
    lines = [f"{where} ({kind}) -- {len(ids)} tokens, max_length {max_length}: "
             f"{n - 1} targets, {trained} trained" + (", the rest not" if trained < n - 1 else ""),
             f"trained = the tokens the model learns to predict, shown {'in green' if color else 'in [[...]]'}",
             "", "".join(text), ""]
    if len(ids) > max_length:
        lines.append(f"(cut at max_length: {len(ids) - max_length} more tokens dropped)")
    lines.append(f"(+ {max_length - n} padding tokens, never trained)")
    if per_token:
        lines += ["", f"{'pos':>4}  {'X (reads)':<16} {'Y (predicts)':<16} loss_mask"]
        for p in range(n - 1):
            lines.append(f"{p:>4}  {tokenizer.decode([int(X[p])])!r:<16} "
                         f"{tokenizer.decode([int(Y[p])])!r:<16} {int(loss_mask[p])}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Print one sample of a pretraining or SFT jsonl file "
                                                 "with the tokens it trains on marked.")
    parser.add_argument("--show", required=True, metavar="FILE",
                        help="jsonl file: {\"text\": ...} lines (pretraining) or {\"conversations\": [...]} (SFT)")
    parser.add_argument("--index", type=int, default=0, help="which record to show, counting from 0")
    parser.add_argument("--tokenizer", default=os.path.join(os.path.dirname(__file__), "..", "model", "demo_tokenizer"),
                        help="tokenizer directory or tokenizer.json (default: model/demo_tokenizer)")
    parser.add_argument("--max_length", type=int, default=512, help="sequence length the sample is cut/padded to")
    parser.add_argument("--tokens", action="store_true",
                        help="also print every position: the token read (X), the target (Y) and its loss_mask")
    args = parser.parse_args(argv)
    if args.max_length < 2:
        parser.error("--max_length must be at least 2")
    from model.tokenizer import Tokenizer     # imported here: the datasets work with any such tokenizer
    try:
        tokenizer = Tokenizer.load(args.tokenizer)
        print(show_sample(args.show, tokenizer, args.index, args.max_length,
                          color=sys.stdout.isatty(), per_token=args.tokens))
    except (ValueError, OSError) as e:              # DataError is a ValueError
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
