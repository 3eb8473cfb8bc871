"""
Benchmark: what checking a token cache costs each time a run opens it.

Every open compares each cache file's size and sha256 with those meta.json recorded when it was built
(dataset/token_cache.py: cache_problem), so a cut or damaged cache is rebuilt instead of read. The cost
is hashing the whole cache: about the speed of sha256 on this CPU, or of the disk when the cache is not
in the page cache. This script writes a cache folder of --size_gb (random token ids and a consistent
index; hashing does not care what the bytes mean), then times the check three ways and prints a
markdown table:
  - sizes only (what DDP ranks other than 0 do, after rank 0 has checked),
  - sha256, cold: the files dropped from the page cache first (a run's first start after a reboot),
  - sha256, warm: the files in the page cache (a run started again soon after).

    python -m bench.bench_cache_check                 # a 1 GB cache in a temporary folder
    python -m bench.bench_cache_check --size_gb 4 --dir /data/scratch
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from dataset.token_cache import CACHE_FILES, cache_problem, file_sha256
from plumbing.errors import UserError, run_main


def write_cache(folder, size_bytes, sample_tokens=500, seed=0):
    """A cache folder of about size_bytes: uint16 ids in samples of sample_tokens, one span each, and a
    meta.json recording each file's size and sha256 (what build_cache records)."""
    tokens = size_bytes // 2
    samples = tokens // sample_tokens
    rng = np.random.default_rng(seed)
    with open(os.path.join(folder, "tokens.bin"), "wb") as f:
        for start in range(0, tokens, 50_000_000):  # 100 MB at a time
            rng.integers(0, 6400, min(50_000_000, tokens - start), dtype=np.uint16).tofile(f)
    np.arange(0, (samples + 1) * sample_tokens, sample_tokens, dtype=np.int64).tofile(os.path.join(folder, "offsets.bin"))
    np.tile(np.array([[1, sample_tokens]], np.int32), (samples, 1)).tofile(os.path.join(folder, "spans.bin"))
    np.arange(samples + 1, dtype=np.int64).tofile(os.path.join(folder, "span_offsets.bin"))
    files = {name: {"size": os.path.getsize(os.path.join(folder, name)), "sha256": file_sha256(os.path.join(folder, name))}
             for name in CACHE_FILES}
    with open(os.path.join(folder, "meta.json"), "w", encoding="utf-8") as f:
        json.dump({"dtype": "uint16", "samples": samples, "tokens": tokens, "spans": samples, "no_trained_tokens": 0,
                   "skipped": {"count": 0, "lines": [], "first_error": None}, "files": files}, f)
    return sum(v["size"] for v in files.values())


def drop_from_page_cache(folder):
    """Ask the kernel to forget the folder's files (Linux: posix_fadvise DONTNEED), so the next read is a disk read."""
    for name in os.listdir(folder):
        fd = os.open(os.path.join(folder, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--size_gb", type=float, default=1.0, help="size of the cache to check, in GB (default: %(default)s)")
    parser.add_argument("--dir", default=None, help="where to write it (default: a temporary folder; deleted afterwards)")
    args = parser.parse_args(argv)
    if not args.size_gb > 0:
        raise UserError(f"--size_gb must be positive, got {args.size_gb}")
    if not hasattr(os, "posix_fadvise"):
        raise UserError("this benchmark needs os.posix_fadvise (Linux) to measure a cold check")
    folder = tempfile.mkdtemp(prefix="bench_cache_check_", dir=args.dir)
    try:
        size = write_cache(folder, int(args.size_gb * 1e9))
        os.sync()  # written back to disk, so that dropping the pages really forgets them
        print(f"| check ({size / 1e9:.2f} GB cache) | time | speed |\n| --- | --- | --- |")
        for label, checksums, cold in (("sizes only", False, False), ("sha256, cold", True, True),
                                       ("sha256, warm", True, False)):
            if cold:
                drop_from_page_cache(folder)
            start = time.perf_counter()
            assert cache_problem(folder, checksums=checksums) is None
            seconds = time.perf_counter() - start
            speed = f"{size / 1e9 / seconds:.2f} GB/s" if checksums else "(no data read)"
            print(f"| {label} | {seconds * 1e3:,.1f} ms | {speed} |")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run_main(main))
