"""How fast does MiniMindLM decode with its KV cache, against what the machine allows?

At batch 1 each decode step is a chain of matrix-VECTOR products: every weight is read once to
produce one token, and reading memory is slow next to multiplying. So the ceiling is

    tokens/s <= batch * read bandwidth / bytes of all weights

(KV-cache reads are left out: at these lengths they are small next to the weights; the tied
embedding/output matrix counts once, read by the output projection). The bandwidth is measured
in the same run by bench/machine.py. Times greedy decoding after a prefilled prompt, at batch 1
and 8, for the demo size and MiniMind2-Small, and prints markdown tables.

    python -m bench.bench_generate                         # both sizes, batch 1 and 8
    python -m bench.bench_generate --sizes demo --new_tokens 32 --repeats 1   # a quick check
"""

import argparse
import time

import torch

from bench.machine import add_threads_arg, load_average, measure_machine
from model.LMConfig import LMConfig
from model.model import MiniMindLM


def model_sizes() -> dict:
    """name -> LMConfig fields of the sizes this benchmark times."""
    return {
        "demo": dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=2, vocab_size=2048),
        "MiniMind2-Small": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=2, vocab_size=6400),
    }


def decode_tokens_per_s(model, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> float:
    """Best-of-`repeats` decode rate (tokens/s summed over the batch), prefill excluded.

    stream=True yields after each step, so the clock starts once the prompt is prefilled and
    the first token is out, and stops after the last one.
    """
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, model.config.vocab_size, (batch, prompt_len), generator=g)
    best = float("inf")
    for _ in range(repeats):
        steps = model.generate(prompt, max_new_tokens=new_tokens, temperature=0, eos_token_id=-1, stream=True)
        next(steps)  # prefill + first token, untimed
        start = time.perf_counter()
        n = sum(1 for _ in steps)
        best = min(best, time.perf_counter() - start)
    return n * batch / best


def main(argv=None):
    sizes = model_sizes()
    parser = argparse.ArgumentParser(description="Decode tokens/s with the KV cache vs the weight-reading bound.")
    add_threads_arg(parser)
    parser.add_argument("--prompt_len", type=int, default=64, help="prompt tokens prefilled before timing")
    parser.add_argument("--new_tokens", type=int, default=64, help="tokens decoded per timed run (the first is untimed)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row; the fastest is reported")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes to time")
    parser.add_argument("--sizes", nargs="+", default=list(sizes), choices=list(sizes), help="model sizes to time")
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        parser.error("--new_tokens must be at least 2 (the first token is not timed)")

    machine = measure_machine(args.threads)
    print(machine.header())
    print(f"\nfloat32, greedy, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, best of {args.repeats}\n")
    print("| model | params | weights MB | batch | decode tokens/s | bound tokens/s | % of bound |")
    print("|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for name in args.sizes:
        config = LMConfig(**sizes[name], max_seq_len=args.prompt_len + args.new_tokens)
        model = MiniMindLM(config).eval()
        n_params = sum(p.numel() for p in model.parameters())  # distinct tensors: tied matrix once
        n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for batch in args.batches:
            rate = decode_tokens_per_s(model, batch, args.prompt_len, args.new_tokens, args.repeats)
            bound = batch * machine.read_gbs * 1e9 / n_bytes
            print(f"| {name} | {n_params / 1e6:.1f}M | {n_bytes / 1e6:.1f} | {batch} | {rate:,.0f} | "
                  f"{bound:,.0f} | {100 * rate / bound:.0f}% |")  # fmt: skip
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
