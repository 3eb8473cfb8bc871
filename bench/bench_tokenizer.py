"""
How fast is the hand-written tokenizer? Encoding MB/s on mixed Chinese/English text, one process and
the multiprocess batch encoder, and the time to train a 6400-token vocabulary on ~10 MB of text.

    python -m bench.bench_tokenizer                   # ~10 MB train + 4 MB encode, a few minutes
    python -m bench.bench_tokenizer --train_mb 2 --encode_mb 1   # a quick look

The text is generated (no data set is needed, the run is reproducible): Chinese sentences of
Zipf-distributed 1-3 character words with Chinese punctuation, English sentences of Zipf-distributed
made-up words, numbers, and English terms inside Chinese sentences ("大模型LoRA微调"). Like real
text, frequent words repeat (the chunk cache helps) while Chinese clauses, which the split pattern
keeps whole, are mostly unique (every one runs through BPE). Prints a markdown table.

Training is timed as the command a student runs: the text is written to a jsonl file and
`python train_tokenizer.py --data_path FILE --vocab_size 6400 --max_token_length 0` runs as a
process of its own (no limit on a token's length, as MiniMind2). Its wall and CPU times cover the
whole command -- reading the file, counting chunks, the merges, saving, the compression it prints --
and its Python start-up, measured apart (`python train_tokenizer.py --help`) and shown beside it.
train_tokenizer.py is an entry script (the course's lesson on learning merges), so the benchmark
runs it rather than importing it; encoding is timed on the tokenizer it wrote, loaded the way the
training scripts load one.
"""
import argparse
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import measure_machine
from plumbing.errors import UserError, run_main
from model.tokenizer import Tokenizer, split_chunks

ROOT = Path(__file__).resolve().parent.parent


def make_mixed_text(n_bytes, seed):
    """Deterministic mixed zh/en paragraphs totalling about n_bytes of UTF-8; returns a list of str."""
    rng = random.Random(seed)
    hanzi = [chr(cp) for cp in rng.sample(range(0x4E00, 0x9FA6), 3500)]
    # Zipf weights as cumulative sums (computed once: random.choices would redo it every call)
    hanzi_cum = list(itertools.accumulate(1 / (k + 1) for k in range(len(hanzi))))
    zh_words = ["".join(rng.choices(hanzi, cum_weights=hanzi_cum, k=rng.choice((1, 2, 2, 2, 3))))
                for _ in range(20000)]
    syllables = [a + b for a in "bcdfghjklmnprstvwz" for b in ("a", "e", "i", "o", "u", "ai", "ou", "er")]
    en_words = ["".join(rng.choices(syllables, k=rng.choice((1, 1, 2, 2, 3)))) for _ in range(20000)]
    zipf_cum = list(itertools.accumulate(1 / (k + 1) for k in range(20000)))
    zh_punct, en_punct = ["，", "，", "、", "；"], [",", ",", ";", " -"]

    def sentence(zh):
        n = rng.randint(6, 24)
        words = rng.choices(zh_words if zh else en_words, cum_weights=zipf_cum, k=n)
        if zh and rng.random() < 0.3:  # an English term inside a Chinese sentence
            words.insert(rng.randrange(n), rng.choice(en_words[:200]).capitalize())
        if rng.random() < 0.2:
            words.insert(rng.randrange(n), str(rng.randint(0, 3000)))
        parts = []
        for k, w in enumerate(words):
            parts.append(w)
            if k < n - 1 and rng.random() < 0.15:
                parts.append(rng.choice(zh_punct if zh else en_punct))
        return ("" if zh else " ").join(parts) + (rng.choice("。！？") if zh else rng.choice(".!?"))

    texts, size = [], 0
    while size < n_bytes:
        zh = rng.random() < 0.6
        paragraph = ("" if zh else " ").join(sentence(zh) for _ in range(rng.randint(2, 8)))
        texts.append(paragraph)
        size += len(paragraph.encode("utf-8")) + 1
    return texts


def run_timed(command) -> tuple:
    """Run `python COMMAND` from the repository -> (wall seconds, CPU seconds of the process and its
    children); a failure is a UserError with the command's own error line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *command], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"python {' '.join(command[:1])} failed (exit {result.returncode}): {last}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--train_mb", type=float, default=10.0, help="MB of generated text to train on")
    parser.add_argument("--vocab_size", type=int, default=6400, help="vocabulary to train (MiniMind2: 6400)")
    parser.add_argument("--encode_mb", type=float, default=4.0, help="MB of (different) text to encode")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes for encode_batch")
    args = parser.parse_args(argv)

    machine = measure_machine()  # torch threads left alone: the tokenizer does not use torch
    train_texts = make_mixed_text(int(args.train_mb * 1e6), seed=0)
    encode_texts = make_mixed_text(int(args.encode_mb * 1e6), seed=1)
    encode_bytes = sum(len(t.encode("utf-8")) for t in encode_texts)
    chunks = len({chunk for text in train_texts for chunk in split_chunks(text)})

    def timed(fn):
        """Run fn(); return (result, wall seconds, CPU seconds of this process)."""
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        return result, time.perf_counter() - wall, time.process_time() - cpu

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in train_texts), encoding="utf-8")
        startup_wall, _ = run_timed(["train_tokenizer.py", "--help"])
        train_wall, train_cpu = run_timed(["train_tokenizer.py", "--data_path", str(data), "--vocab_size",
                                           str(args.vocab_size), "--max_token_length", "0",
                                           "--tokenizer", str(Path(tmp) / "tokenizer")])
        # encode through the saved tokenizer, loaded the way training scripts load it
        tokenizer = Tokenizer.load(Path(tmp) / "tokenizer")
    ids, cold_wall, cold_cpu = timed(lambda: [tokenizer.encode(t) for t in encode_texts])
    # second pass over the same text: every chunk is now cached
    ids_warm, warm_wall, warm_cpu = timed(lambda: [tokenizer.encode(t) for t in encode_texts])
    ids_batch, batch_wall, _ = timed(lambda: tokenizer.encode_batch(encode_texts, num_workers=args.workers))
    assert ids == ids_warm == ids_batch, "the encoders disagree"
    n_tokens = sum(map(len, ids))

    mb = encode_bytes / 1e6
    print(machine.header())
    print(f"\n{machine.footer()}. Wall-clock figures suffer when the machine is "
          "shared; per-CPU-second figures are what one core delivered to this process.\n")
    print("| measurement | wall clock | per CPU-second |")
    print("| --- | --- | --- |")
    print(f"| train vocab {tokenizer.vocab_size} on {args.train_mb:g} MB ({chunks:,} distinct chunks): `python "
          f"train_tokenizer.py` | {train_wall:.1f} s (its Python start-up {startup_wall:.1f} s) | {train_cpu:.1f} s CPU |")
    print(f"| encode {mb:.1f} MB, 1 process, cold cache | {mb / cold_wall:.2f} MB/s "
          f"| {mb / cold_cpu:.2f} MB/s |")
    print(f"| same text again, every chunk cached | {mb / warm_wall:.2f} MB/s | {mb / warm_cpu:.2f} MB/s |")
    print(f"| encode_batch, {args.workers} processes, cold (incl. start-up) | {mb / batch_wall:.2f} MB/s | |")
    print(f"| compression on the encoded text | {encode_bytes / n_tokens:.2f} bytes/token | |")


if __name__ == "__main__":
    sys.exit(run_main(main))
