"""
The token cache: a jsonl file tokenized once, streaming, into flat binary arrays read a sample at a time.

MiniMind reads a whole data file into RAM on every process; its users report 24 GB peaks for a 4.4 GB
file. Here the file is read once, a few MB at a time (by several processes for a big file), and each
sample's token ids and trained spans are appended to binary files. Training then reads one sample at
a time from those files, so memory does not grow with the data, and every DDP process shares one copy.

What a line *means* (its format, its loss mask) is dataset/lm_dataset.py's business: the builder here
is handed two functions, `parse(raw line, "FILE:LINE", tokenizer) -> record` (raising DataError for a
bad line) and `encode([record, ...], tokenizer) -> [(ids, trained token spans), ...]`.

Layout of one cache folder (N samples, T tokens, K spans); every .bin file is a flat binary array:
    tokens.bin        (T,)    uint16 (uint32 if the vocab has more than 65536 tokens): all ids, end to end
    offsets.bin       (N+1,)  int64: sample i is tokens[offsets[i]:offsets[i+1]]
    spans.bin         (K, 2)  int32: trained (start, end) token positions, relative to the sample's start
    span_offsets.bin  (N+1,)  int64: sample i's spans are spans[span_offsets[i]:span_offsets[i+1]]
    meta.json         counts, dtype, skipped lines, what the cache was built from, and each .bin file's
                      size and sha256
Samples are stored already cut to max_length, so the cache holds at most N * max_length tokens.

A cache is checked every time it is opened (open_cache): every .bin file must have the size and the
sha256 its meta.json records. A cut or damaged file (a full disk, a bad copy, `truncate`) would
otherwise be read without a word -- a short tokens.bin gives samples of padding with trained targets
-- or fail deep inside numpy. A cache that fails the check is rebuilt, with one line on stderr saying
so; where it cannot be (a read-only folder), the error names the folder to delete. Hashing costs
one to two seconds per GB of cache (docs/data.md has the measurement).

Builders work in temporary folders named `FOLDER.tmp-HOST-PID-xxxxxxxx`; one killed on the way
(kill -9) leaves its folder behind, and the next build in the same place removes the folders of
builders on this host that are no longer running (remove_dead_builders).
"""
import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time

import numpy as np
from tqdm import tqdm

from plumbing.errors import UserError
from plumbing.untrusted_json import JSONError, loads

# Bump when the layout or the meaning of the cached arrays changes: old caches are then never read.
# 2: SFT conversations are tokenized whole (a reply starting with whitespace used to be tokenized apart
#    from the prompt before it, giving other ids than the chat template does).
CACHE_FORMAT = 2


class DataError(UserError, ValueError):
    """A bad data file or record. The message reads "FILE:LINE: problem (how to fix)".

    Defined here, in the lowest of the two dataset modules, because the cache builder counts and skips
    bad lines; dataset.lm_dataset, which finds them, re-exports it.
    """


# ---------------------------------------------------------------------------------------------------
# Which cache belongs to which (file, tokenizer, kind, max_length)
# ---------------------------------------------------------------------------------------------------

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


def cache_folder(data_path, kind, tokenizer, max_length, cache_dir):
    """Where the cache for this (file, tokenizer, kind, max_length) lives; a change to any of them gives
    a different folder, so a stale cache is never read.
    -> e.g. 'dataset/.cache/sft_demo.jsonl.sft.len512.3f2a9c0d1b7e4a55'

    The folder's name is also the data's identity for a training run's --resume (see plumbing/resume.py: run_plan).
    """
    key = {"format": CACHE_FORMAT, "kind": kind, "max_length": max_length,
           "file": file_fingerprint(data_path), "tokenizer": tokenizer.fingerprint()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    if cache_dir is None:
        cache_dir = os.path.join(os.path.dirname(os.path.abspath(data_path)), ".cache")
    name = os.path.basename(data_path)[:100]  # a file name may have 255 bytes; the folder's must fit too
    return os.path.join(os.fspath(cache_dir), f"{name}.{kind}.len{max_length}.{digest}")


# ---------------------------------------------------------------------------------------------------
# Building: split the file, tokenize each part streaming (in parallel for big files), merge
# ---------------------------------------------------------------------------------------------------

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


def tokenize_range(data_path, start, end, first_line, parse, encode, tokenizer, max_length, skip_bad,
                   out_dir, progress, chunk_bytes=4 << 20):
    """Tokenize the lines starting in bytes [start, end) of data_path into out_dir, streaming.

    Memory holds one chunk (~4 MB of text) at a time. Writes tokens.bin, spans.bin and, without the
    leading 0, offsets.bin and span_offsets.bin (merge_parts adds it). parse(line, "FILE:LINE",
    tokenizer) gives a record or raises DataError; with skip_bad=False the first one stops the work.
    progress(n) is called with the bytes read. Returns counts and the bad lines seen.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    summary = {"samples": 0, "tokens": 0, "spans": 0, "no_trained_tokens": 0,
               "bad": 0, "bad_lines": [], "first_error": None}
    with contextlib.ExitStack() as stack:
        out = {name: stack.enter_context(open(os.path.join(out_dir, name + ".bin"), "wb"))
               for name in ("tokens", "offsets", "spans", "span_offsets")}

        def write(chunk):
            for ids, spans in encode(chunk, tokenizer):
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
                chunk.append(parse(raw, f"{data_path}:{line_number}", tokenizer))
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
    # Ctrl-C reaches every process of the terminal's process group; the parent alone handles it (and
    # stops the workers), so that one Ctrl-C gives one line, not a traceback from every worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        summary = tokenize_range(**job, progress=functools.partial(_add_to_counter, counter))
        with open(os.path.join(job["out_dir"], "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f)
    except OSError as e:  # e.g. the disk filled up: one line, the parent then stops the build
        print(f"{job['data_path']}: cannot write its token cache into {job['out_dir']} ({e.strerror})", file=sys.stderr)
        sys.exit(1)


def tokenize_in_processes(jobs, bar):
    """Run tokenize_range jobs, one process each, moving the progress bar -> their summaries."""
    context = multiprocessing.get_context()
    counter = context.Value("q", 0)
    processes = [context.Process(target=_tokenize_range_process, args=(job, counter)) for job in jobs]
    for process in processes:
        process.start()
    try:
        while any(process.is_alive() for process in processes):
            time.sleep(0.2)
            bar.update(counter.value - bar.n)
    finally:  # Ctrl-C (or any error) here: stop the workers rather than wait for them
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
    bar.update(counter.value - bar.n)
    if any(process.exitcode != 0 for process in processes):
        raise DataError(f"{jobs[0]['data_path']}: a tokenizing process failed (its error is printed above)")
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


# A builder's temporary folder: FOLDER.tmp-HOST-PID-xxxxxxxx (8 characters that mkdtemp or
# secrets.token_hex choose), so that a later builder can tell whether the one that made it still runs.
TEMPORARY_FOLDER = re.compile(r"(?P<cache>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]{8}")


def _temporary_prefix(folder):
    return f"{os.path.basename(folder)}.tmp-{socket.gethostname()}-{os.getpid()}-"


def _is_running(pid):
    """Is there a process `pid` on this machine? (os.kill with signal 0 only asks.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to another user
        return True
    return True


def remove_dead_builders(parent):
    """Remove the temporary folders in `parent` left by builders on this host that no longer run
    (killed with kill -9, or by a power cut). A folder of another host, or of a running builder, stays."""
    host = socket.gethostname()
    for name in os.listdir(parent):
        match = TEMPORARY_FOLDER.fullmatch(name)
        if match and match["host"] == host and int(match["pid"]) != os.getpid() and not _is_running(int(match["pid"])):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def make_temporary_folder(data_path, folder):
    """An empty folder beside `folder` to build in, or DataError saying where a cache can go instead.

    The default cache lives beside the data file, which may be read-only (a shared data set, a
    mounted disk): that is a user's choice to fix with a flag, not a traceback.
    """
    parent = os.path.dirname(folder)
    try:
        os.makedirs(parent, exist_ok=True)
        remove_dead_builders(parent)
        return tempfile.mkdtemp(prefix=_temporary_prefix(folder), dir=parent)
    except OSError as e:
        raise DataError(f"{data_path}: cannot write its token cache into {parent} ({e.strerror}) "
                        "(pass --cache_dir DIR, a folder you can write to)") from None


def build_cache(data_path, folder, tokenizer, max_length, *, parse, encode, skip_bad=False, workers=1,
                verbose=True):
    """Tokenize a jsonl file into a cache folder, with `workers` processes, each streaming one byte range.

    The folder is written under a temporary name and renamed into place at the end, so a reader sees
    either no cache or a whole one, and two processes building at once cannot corrupt it (the second
    rename fails and its copy is dropped). verbose=False prints nothing (DDP ranks other than 0).
    """
    if os.path.getsize(data_path) == 0:
        raise DataError(f"{data_path}:1: the file is empty (expected one JSON object per line)")
    tmp = make_temporary_folder(data_path, folder)
    started = time.perf_counter()
    try:
        jobs = []
        for k, (start, end, first_line) in enumerate(split_lines(data_path, workers)):
            os.mkdir(os.path.join(tmp, f"part{k}"))
            jobs.append({"data_path": data_path, "start": start, "end": end, "first_line": first_line,
                         "parse": parse, "encode": encode, "tokenizer": tokenizer, "max_length": max_length,
                         "skip_bad": skip_bad, "out_dir": os.path.join(tmp, f"part{k}")})
        if verbose:
            print(f"tokenizing {data_path} into {folder} ({len(jobs)} process{'es' if len(jobs) > 1 else ''}); "
                  "this happens once", file=sys.stderr)
        with tqdm(total=os.path.getsize(data_path), unit="B", unit_scale=True, disable=None if verbose else True,
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
                "max_length": max_length, **counts, "skipped": skipped, "source": file_fingerprint(data_path),
                "files": {name: {"size": os.path.getsize(os.path.join(tmp, name)), "sha256": file_sha256(os.path.join(tmp, name))}
                          for name in CACHE_FILES}}
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, ensure_ascii=False)
        os.chmod(tmp, 0o755)                       # mkdtemp makes it private; other users may share the cache
        try:
            os.replace(tmp, folder)
        except OSError:
            if not os.path.exists(os.path.join(folder, "meta.json")):
                raise
            # Another process finished the same cache first; it is identical, so use it.
        if verbose:
            print(f"cached {counts['samples']:,} samples, {counts['tokens']:,} tokens "
                  f"({os.path.getsize(os.path.join(folder, 'tokens.bin')) / 1e6:,.1f} MB) "
                  f"in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    except OSError as e:  # a full disk, most likely: the finished part is removed below
        raise DataError(f"{data_path}: building its token cache in {os.path.dirname(folder)} failed ({e.strerror}) "
                        "(a full disk? free some space, or pass --cache_dir DIR)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)     # already gone after a successful rename


# ---------------------------------------------------------------------------------------------------
# Checking: sizes and checksums, recorded when built, compared when opened
# ---------------------------------------------------------------------------------------------------

CACHE_FILES = ("tokens.bin", "offsets.bin", "spans.bin", "span_offsets.bin")


def file_sha256(path, block=16 << 20):
    """sha256 (hex) of a file's bytes, read 16 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_problem(folder, checksums=True):
    """What is wrong with a cache folder, in a few words, or None when it is whole.

    Every .bin file must have the size meta.json records and, with checksums=True, its sha256: a
    size check alone costs nothing and catches a cut file; the hash also catches changed bytes.
    cache_problem(folder) -> None, or e.g. 'tokens.bin has 1,000 bytes, 25,594 expected'
    """
    try:
        meta = read_meta(folder)
        recorded = {name: (meta["files"][name]["size"], meta["files"][name]["sha256"]) for name in CACHE_FILES}
        for key in ("samples", "spans", "dtype", "skipped", "no_trained_tokens"):  # what the readers use
            meta[key]
        if not all(type(size) is int for size, _ in recorded.values()):
            raise TypeError("a size that is not a number of bytes")
        sizes = {name: os.path.getsize(os.path.join(folder, name)) for name in CACHE_FILES}
    except FileNotFoundError as e:
        return f"{os.path.basename(e.filename)} is missing"
    except (OSError, JSONError) as e:
        return f"meta.json is unreadable ({e})"
    except (KeyError, TypeError):  # a cache made before checksums were recorded, or a hand-edited meta.json
        return "meta.json lacks the sizes and checksums of the files (made by an older version?)"
    for name, (size, sha256) in recorded.items():
        if sizes[name] != size:
            return f"{name} has {sizes[name]:,} bytes, {size:,} expected"
    if checksums:
        for name, (size, sha256) in recorded.items():
            if file_sha256(os.path.join(folder, name)) != sha256:
                return f"{name} does not have the sha256 recorded in meta.json"
    return None


def read_meta(folder) -> dict:
    """A cache folder's meta.json, parsed with limits (plumbing/untrusted_json.py): like every file in the cache,
    anyone may have changed it, and a deeply nested one must be a damaged cache, not a RecursionError."""
    with open(os.path.join(folder, "meta.json"), "rb") as f:
        return loads(f.read(), "meta.json")


def discard_cache(folder, problem):
    """Move a damaged cache out of the way (renamed like a dead builder's temporary folder, then deleted),
    or a DataError naming the folder to delete by hand when this process cannot."""
    aside = os.path.join(os.path.dirname(folder), _temporary_prefix(folder) + secrets.token_hex(4))
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # another process (a DDP rank, a second run) moved it first
        return
    except OSError as e:
        raise DataError(f"token cache {folder} is damaged ({problem}) and cannot be rebuilt here ({e.strerror}): "
                        "delete that folder and run again") from None
    shutil.rmtree(aside, ignore_errors=True)


def open_cache(folder, build, checksums=True, verbose=True):
    """The cache in `folder`, checked (cache_problem); built by calling build() if it is missing, and
    rebuilt, with one line on stderr, if it is damaged -> a TokenCache.

    checksums=False checks the sizes only: for the DDP ranks that open a cache rank 0 has just checked.
    """
    if os.path.exists(folder):
        problem = cache_problem(folder, checksums)
        if problem is None:
            return TokenCache(folder)
        if verbose:
            print(f"token cache {folder} is damaged ({problem}); rebuilding it", file=sys.stderr)
        discard_cache(folder, problem)
    build()
    return TokenCache(folder)


# ---------------------------------------------------------------------------------------------------
# Reading: one sample at a time
# ---------------------------------------------------------------------------------------------------

def open_array(path, dtype, shape):
    """A read-only memmap of a flat binary file (an empty array for an empty file, which mmap refuses)."""
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


class TokenCache:
    """A built cache folder, read a sample at a time: cache.sample(i) -> (ids, trained spans).

    Opening it memory-maps the index arrays only (8 bytes a sample, 8 a span); nothing is read until
    a sample is asked for. DataLoader workers get a pickled copy that reopens the folder.
    """

    def __init__(self, folder):
        self.folder = folder
        self._open()

    def _open(self):
        self.meta = read_meta(self.folder)
        n, path = self.meta["samples"], self.folder
        self.tokens_path, self.token_dtype = os.path.join(path, "tokens.bin"), np.dtype(self.meta["dtype"])
        self.offsets = open_array(os.path.join(path, "offsets.bin"), np.int64, (n + 1,))
        self.spans = open_array(os.path.join(path, "spans.bin"), np.int32, (self.meta["spans"], 2))
        self.span_offsets = open_array(os.path.join(path, "span_offsets.bin"), np.int64, (n + 1,))

    def __len__(self):
        return self.meta["samples"]

    def sample(self, index):
        """Sample `index` -> (ids as a numpy array, [(start, end), ...] trained token spans)."""
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        # The ids are read from the file, not through a memmap: a memmap's pages, once touched, count as
        # this process's resident memory until the kernel takes them back, so after one epoch every
        # process would seem to hold the whole cache (nanoGPT re-creates its memmap each batch for this).
        ids = np.fromfile(self.tokens_path, dtype=self.token_dtype, count=end - start,
                          offset=start * self.token_dtype.itemsize)
        spans = self.spans[self.span_offsets[index]:self.span_offsets[index + 1]].tolist()
        return ids, spans

    def __getstate__(self):
        # DataLoader workers started with "spawn" (macOS, Windows) get a pickled copy of the dataset;
        # pickling a memmap copies the whole array, so send the folder and reopen it there.
        return {"folder": self.folder}

    def __setstate__(self, state):
        self.folder = state["folder"]
        self._open()
