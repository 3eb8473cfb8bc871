"""
Benchmark: does PretrainDataset keep memory flat on a gigabyte of jsonl, and how soon is the first batch?

MiniMind reads a whole data file into RAM on every process (its users report 24 GB peaks for a 4.4 GB
file). Here the file is tokenized once, streaming, into a memory-mapped cache. This script generates a
pretraining-like jsonl file (mixed English/Chinese text, ~1 KB a line, like pretrain_hq.jsonl), then,
each phase in a fresh process so its peak memory is its own:
  1. build:   PretrainDataset(...) on the new file (tokenizes it into the cache)
  2. iterate: PretrainDataset(...) again (opens the cache), a shuffled DataLoader, every batch once
  3. (--minimind_baseline) MiniMind's way: json.loads every line into one list
and prints a markdown table. Peak RSS while iterating must stay under --rss_limit_mb (exit 1 if not).

    python -m bench.bench_dataset                    # ~1 GB file in a temporary folder
    python -m bench.bench_dataset --size_mb 50       # a quick check
"""
import argparse
import itertools
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from bench.machine import measure_machine, run_in_fresh_process
from dataset.lm_dataset import PretrainDataset
from plumbing.errors import run_main
from model.tokenizer import Tokenizer


def make_vocabulary(rng, n_english=3000, n_chinese=3000):
    """Made-up English-like words and Chinese words, most frequent first (used with Zipf weights)."""
    syllables = ["ka", "lo", "mi", "ter", "an", "is", "the", "on", "re", "st", "pro", "ing", "tion", "al",
                 "com", "de", "ex", "un", "ver", "sa", "ni", "po", "ru", "vo"]
    english = [(" " + "".join(rng.choices(syllables, k=rng.randint(1, 4)))) for _ in range(n_english)]
    common_hanzi = [chr(c) for c in rng.sample(range(0x4E00, 0x9FA5), 2500)]
    chinese = ["".join(rng.choices(common_hanzi[:1 + rng.randint(0, 2499)], k=rng.randint(1, 3)))
               for _ in range(n_chinese)]
    return english, chinese


def generate_jsonl(path, size_bytes, seed):
    """Write {"text": ...} lines until the file reaches size_bytes -> number of lines.

    Each line is one "document" of sentences, English or Chinese, with numbers and punctuation; words
    follow a Zipf distribution so the tokenizer sees a realistic mix of frequent and rare chunks."""
    rng = random.Random(seed)
    english, chinese = make_vocabulary(rng)
    # cumulative Zipf weights (word of rank r has weight 1/r), computed once: random.choices would
    # otherwise re-add all the weights on every call
    zipf_en = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(english))))
    zipf_zh = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(chinese))))
    written, lines = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size_bytes:
            zh = rng.random() < 0.5
            sentences = []
            for _ in range(rng.randint(2, 20)):
                words = rng.choices(chinese if zh else english, cum_weights=zipf_zh if zh else zipf_en,
                                    k=rng.randint(5, 25))
                if rng.random() < 0.2:
                    words.insert(rng.randrange(len(words)), f" {rng.randint(0, 9999)}")
                sentence = "".join(words).strip()
                sentences.append(sentence + ("。" if zh else ". "))
            line = json.dumps({"text": "".join(sentences).strip()}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode("utf-8"))
            lines += 1
    return lines


def memory_mb():
    """This process's peak and current resident memory in MB, from /proc/self/status (Linux).

    VmHWM = peak RSS. RssFile counts pages of memory-mapped files (the cache), which the kernel can
    drop at any time; RssAnon is the process's own memory."""
    fields = {}
    if os.path.exists("/proc/self/status"):
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    fields[key] = int(value.split()[0]) / 1024          # kB -> MB
    else:                                                              # macOS: only the peak, in bytes
        fields["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return fields


def phase_build(args, data_path, cache_dir, results):
    torch.set_num_threads(1)
    tokenizer = Tokenizer.load(args.tokenizer)
    start = time.perf_counter()
    ds = PretrainDataset(data_path, tokenizer, args.max_length, cache_dir=cache_dir, build_workers=args.build_workers)
    seconds = time.perf_counter() - start
    cache_bytes = sum(os.path.getsize(os.path.join(ds.cache_path, n)) for n in os.listdir(ds.cache_path))
    results.put({"build_s": seconds, "samples": len(ds), "tokens": ds.meta["tokens"], "cache_bytes": cache_bytes,
                 "build_memory": memory_mb(),
                 # tokenizing processes (if any) have ended: the largest of their peaks, kB on Linux
                 "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024})


def phase_iterate(args, data_path, cache_dir, results):
    torch.set_num_threads(1)
    tokenizer = Tokenizer.load(args.tokenizer)
    start = time.perf_counter()
    ds = PretrainDataset(data_path, tokenizer, args.max_length, cache_dir=cache_dir)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.loader_workers,
                        generator=torch.Generator().manual_seed(0))
    batches = iter(loader)
    X, Y, mask = next(batches)
    first_batch_s = time.perf_counter() - start
    trained, samples = int(mask.sum()), len(X)
    for X, Y, mask in batches:                                        # every sample once, shuffled
        trained += int(mask.sum())
        samples += len(X)
    results.put({"first_batch_s": first_batch_s, "iterate_s": time.perf_counter() - start,
                 "iterated_samples": samples, "trained_tokens": trained, "iterate_memory": memory_mb()})


def phase_minimind(args, data_path, cache_dir, results):
    """MiniMind's PretrainDataset.load_data: every line parsed into one in-memory list."""
    start = time.perf_counter()
    samples = []
    with open(data_path, "r", encoding="utf-8") as f:
        for line in f:
            samples.append(json.loads(line.strip()))
    results.put({"minimind_s": time.perf_counter() - start, "minimind_memory": memory_mb()})


def run_phase(target, args, data_path, cache_dir):
    """Run one phase in a fresh process (spawn: nothing inherited), so its peak memory is its own."""
    return run_in_fresh_process(target, (args, data_path, cache_dir))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--size_mb", type=float, default=1024, help="size of the generated jsonl file in MB")
    parser.add_argument("--dir", default=None,
                        help="folder for the file and its cache (default: a temporary folder, deleted afterwards)")
    parser.add_argument("--tokenizer", default="tests/fixtures/minimind2/tokenizer.json",
                        help="tokenizer directory or tokenizer.json (default: the MiniMind2-style test fixture)")
    parser.add_argument("--max_length", type=int, default=512, help="sequence length, as in train_pretrain.py")
    parser.add_argument("--batch_size", type=int, default=32, help="DataLoader batch size")
    parser.add_argument("--build_workers", type=int, default=None,
                        help="processes tokenizing the file (default: PretrainDataset's choice)")
    parser.add_argument("--loader_workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--rss_limit_mb", type=float, default=1536, help="fail if peak RSS while iterating exceeds this")
    parser.add_argument("--minimind_baseline", action="store_true",
                        help="also measure MiniMind's way of loading (the whole file as a list of dicts in RAM)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the generated text")
    args = parser.parse_args(argv)

    machine = measure_machine(threads=1)
    print(machine.header() + "\n")
    folder = args.dir or tempfile.mkdtemp(prefix="bench_dataset_")
    os.makedirs(folder, exist_ok=True)
    data_path, cache_dir = os.path.join(folder, "pretrain_bench.jsonl"), os.path.join(folder, ".cache")
    try:
        start = time.perf_counter()
        lines = generate_jsonl(data_path, int(args.size_mb * 1e6), args.seed)
        generate_s = time.perf_counter() - start
        size = os.path.getsize(data_path)
        shutil.rmtree(cache_dir, ignore_errors=True)                  # always measure a cold build
        r = {"lines": lines, "generate_s": generate_s}
        r.update(run_phase(phase_build, args, data_path, cache_dir))
        r.update(run_phase(phase_iterate, args, data_path, cache_dir))
        if args.minimind_baseline:
            r.update(run_phase(phase_minimind, args, data_path, cache_dir))
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)

    peak = r["iterate_memory"]["VmHWM"]
    mem = r["iterate_memory"]
    rows = [
        ("data file", f"{size / 1e6:,.0f} MB, {lines:,} lines (generated in {generate_s:.0f} s)"),
        ("tokenizer", f"{args.tokenizer} (vocab {Tokenizer.load(args.tokenizer).vocab_size})"),
        ("cache build (cold)", f"{r['build_s']:.1f} s = {size / 1e6 / r['build_s']:.2f} MB/s"),
        ("cache size", f"{r['cache_bytes'] / 1e6:,.0f} MB ({r['samples']:,} samples, {r['tokens']:,} tokens "
                       f"after cutting to max_length {args.max_length})"),
        ("peak RSS while building", f"{r['build_memory']['VmHWM']:,.0f} MB main process"
                                    + (f", {r['worker_peak_mb']:,.0f} MB largest tokenizing process"
                                       if r["worker_peak_mb"] else "")),
        ("time to first batch (cache built)", f"{r['first_batch_s']:.2f} s (open the cache + one batch of "
                                              f"{args.batch_size})"),
        ("iterate every sample once (shuffled)", f"{r['iterate_s']:.1f} s = {r['iterated_samples'] / r['iterate_s']:,.0f} "
                                                 f"samples/s, {r['trained_tokens'] / r['iterate_s'] / 1e6:.2f} M "
                                                 f"trained tokens/s ({args.loader_workers} loader workers)"),
        ("peak RSS while iterating", f"{peak:,.0f} MB (at the end: {mem.get('RssAnon', 0):,.0f} MB own memory + "
                                     f"{mem.get('RssFile', 0):,.0f} MB mapped files: libraries, cache index)"),
        (f"peak RSS < {args.rss_limit_mb:,.0f} MB", "PASS" if peak < args.rss_limit_mb else "FAIL"),
    ]
    if args.minimind_baseline:
        rows.append(("MiniMind-style load (list of dicts)", f"{r['minimind_s']:.1f} s, peak RSS "
                                                            f"{r['minimind_memory']['VmHWM']:,.0f} MB, per process"))
    print("| measurement | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\n{machine.footer()}")
    if peak >= args.rss_limit_mb:
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(run_main(main))
