"""How fast does MiniMindLM decode with its KV cache, against what the machine allows?

At batch 1 each decode step is a chain of matrix-VECTOR products: every weight is read once to
produce one token, and reading memory is slow next to multiplying. So the ceiling is

    tokens/s <= batch * read bandwidth / bytes of all weights

(KV-cache reads are left out: at these lengths they are small next to the weights; the tied
embedding/output matrix counts once, read by the output projection). The bandwidth is measured
in the same run by bench/machine.py. Times greedy decoding after a prefilled prompt, at batch 1
and 8, for the demo size and MiniMind2-Small, and prints markdown tables.

That bound assumes the matrix products stream the weights as fast as a plain sum() reads memory.
Whether the BLAS library's matrix-vector kernel does is measured too: one F.linear per weight
matrix, cycling through 256 MB of MiniMind2-Small-shaped matrices so that none sits in a cache
(the "F.linear streams" figure, and a second bound computed from it). The gap between the two
bounds is the BLAS kernel's; the gap between the second bound and the decode rate is everything
else a step does (attention, norms, RoPE, sampling, Python and op-dispatch overhead).

A second table asks what a LoRA adapter costs at decode time (batch 1): the base model, the same
model with a rank-16 adapter on wq and wo left unmerged (each adapted layer does three matmuls:
W x, A x, B(A x)), and merged (W + B A folded into W once, a single matmul again). Merged should
cost exactly what the base costs; the three are timed in interleaved rounds so that a slow
moment of the machine does not land on one of them only.

    python -m bench.bench_generate                         # both sizes, batch 1 and 8
    python -m bench.bench_generate --sizes demo --new_tokens 32 --repeats 1   # a quick check
"""

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from bench.machine import add_threads_arg, measure_machine
from model.errors import UserError, run_main
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from model.model_lora import apply_lora, merge_lora

# The goals: decode at batch 1 reaches this share of the weight-reading bound (at
# MiniMind2-Small size; at the demo size per-token overhead dominates), and a merged adapter
# decodes at least this fast relative to the base model.
BOUND_GOAL = {"MiniMind2-Small": 0.80}
MERGED_GOAL = 0.98


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


def linear_stream_gbs(batch: int, shape=(1408, 512), mbytes: int = 256, repeats: int = 3) -> float:
    """GB/s of weights F.linear gets through for `batch` tokens, best of `repeats` passes over
    `mbytes` MB of (out, in) = `shape` matrices (MiniMind2-Small's w1), far more than any cache holds."""
    weights = [torch.randn(shape) for _ in range(mbytes * 2**20 // (4 * shape[0] * shape[1]))]
    x = torch.randn(batch, 1, shape[1])  # (B, T=1, in): one decode step
    best = float("inf")
    for _ in range(repeats + 1):  # the first pass is a warm-up
        start = time.perf_counter()
        for w in weights:
            F.linear(x, w)
        best = min(best, time.perf_counter() - start)
    return sum(w.numel() * 4 for w in weights) / best / 1e9


def adapted_copies(model, rank: int) -> dict:
    """{"base", "unmerged", "merged"} copies of `model` for the adapter-cost table.

    B is drawn at random (normal, std 0.02) instead of starting at zero, as after training: then
    merging really changes the weights and the unmerged path really computes something."""
    adapted = copy.deepcopy(model)
    apply_lora(adapted, rank=rank)  # MiniMind2's default targets: wq and wo
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if name.endswith(".lora.B.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    merged = copy.deepcopy(adapted)
    merge_lora(merged)
    return {"base": model, "unmerged": adapted, "merged": merged}


def main(argv=None):
    sizes = model_sizes()
    parser = argparse.ArgumentParser(description="Decode tokens/s with the KV cache vs the weight-reading bound.")
    add_threads_arg(parser)
    parser.add_argument("--prompt_len", type=int, default=64, help="prompt tokens prefilled before timing")
    parser.add_argument("--new_tokens", type=int, default=64, help="tokens decoded per timed run (the first is untimed)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per row; the fastest is reported")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes to time")
    parser.add_argument("--sizes", nargs="+", default=list(sizes), choices=list(sizes), help="model sizes to time")
    parser.add_argument("--lora_rank", type=int, default=16, help="rank of the adapter in the adapter-cost table (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        raise UserError(f"--new_tokens must be at least 2 (the first token is not timed), got {args.new_tokens}")

    machine = measure_machine(args.threads)
    print(machine.header())
    stream = {batch: linear_stream_gbs(batch) for batch in args.batches}
    print(f"\nfloat32, greedy, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, best of {args.repeats}. "
          "F.linear streams weights from memory at " + ", ".join(f"{gbs:.1f} GB/s for batch {b}" for b, gbs in stream.items())
          + f" ({100 * stream[args.batches[0]] / machine.read_gbs:.0f}% of the read bandwidth at batch {args.batches[0]})\n")
    print("| model | params | weights MB | batch | decode tokens/s | bound tokens/s (read bandwidth) | % of bound "
          "| bound at F.linear's rate | % of that | goal | met? |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    models = {}
    for name in args.sizes:
        config = LMConfig(**sizes[name], max_seq_len=args.prompt_len + args.new_tokens)
        model = models[name] = MiniMindLM(config).eval()
        n_params = sum(p.numel() for p in model.parameters())  # distinct tensors: tied matrix once
        n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for batch in args.batches:
            rate = decode_tokens_per_s(model, batch, args.prompt_len, args.new_tokens, args.repeats)
            bound = batch * machine.read_gbs * 1e9 / n_bytes
            linear_bound = batch * stream[batch] * 1e9 / n_bytes
            goal = BOUND_GOAL.get(name) if batch == 1 else None
            goal_cells = f"| >= {goal:.0%} of bound | {'yes' if rate >= goal * bound else 'no'} |" if goal else "| - | - |"
            print(f"| {name} | {n_params / 1e6:.1f}M | {n_bytes / 1e6:.1f} | {batch} | {rate:,.0f} | "
                  f"{bound:,.0f} | {100 * rate / bound:.0f}% | {linear_bound:,.0f} | {100 * rate / linear_bound:.0f}% "
                  f"{goal_cells}", flush=True)  # fmt: skip

    print(f"\nWhat an adapter costs at decode time: batch 1, best of {args.repeats} interleaved rounds\n")
    print("| model | weights | decode tokens/s | vs base | goal | met? |")
    print("|---|---|---|---|---|---|")
    for name in args.sizes:
        variants = adapted_copies(models[name], args.lora_rank)
        best = {label: 0.0 for label in variants}
        for _ in range(args.repeats):  # interleaved: base, unmerged, merged, base, ...
            for label, model in variants.items():
                rate = decode_tokens_per_s(model, 1, args.prompt_len, args.new_tokens, repeats=1)
                best[label] = max(best[label], rate)
        base = best["base"]
        for label, rate in best.items():
            weights = "base" if label == "base" else f"LoRA r={args.lora_rank} (wq, wo), {label}"
            goal_cells = f"| >= {MERGED_GOAL:.0%} of base | {'yes' if rate >= MERGED_GOAL * base else 'no'} |" if label == "merged" else "| - | - |"
            print(f"| {name} | {weights} | {rate:,.0f} | {rate / base:.1%} {goal_cells}", flush=True)
    print(f"\n{machine.footer()}")


if __name__ == "__main__":
    sys.exit(run_main(main))
