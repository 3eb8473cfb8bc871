"""How fast does MiniMindLM decode with its KV cache, against what the machine allows?

At batch 1 each decode step is a chain of matrix-VECTOR products: every weight is read once to
produce one token, and reading memory is slow next to multiplying. So the ceiling is

    tokens/s <= batch * read bandwidth / bytes read per step

where a step reads every weight once (the tied embedding/output matrix counts once, read by the
output projection; in the precision they are stored in: 4 bytes each in float32, 2 in bfloat16)
and each row's KV cache up to its position (averaged over the timed steps; small next to the
weights at these lengths). The bandwidth is measured in the same run by bench/machine.py. Times
greedy decoding after a prefilled prompt, at batch 1 and 8, for the demo size and MiniMind2-Small,
with float32 weights and with bfloat16 weights (load_checkpoint(dtype=torch.bfloat16), which
eval_model.py and the server use with --dtype bfloat16; left out on a CPU without native bfloat16).

That bound assumes the matrix products stream the weights as fast as a plain sum() reads memory.
Whether the kernels do is measured too: one model.linear per weight matrix (the path every Linear
takes: F.linear, or torch.mv for one bfloat16 row), cycling through 256 MB of MiniMind2-Small-
shaped matrices so that none sits in a cache (the "kernel streams" figure, and a second bound
computed from it). The gap between the two bounds is the kernel's; the gap between the second
bound and the decode rate is everything else a step does (attention, norms, RoPE, sampling,
Python and op-dispatch overhead): --profile times a step's matrix products alone, back to back,
to split its time between the two, and counts its op calls.

A second table asks what a LoRA adapter costs at decode time (batch 1): the base model, the same
model with a rank-16 adapter on wq and wo left unmerged (each adapted layer does three matmuls:
W x, A x, B(A x)), and merged (W + B A folded into W once, a single matmul again). Merged should
cost exactly what the base costs; the three are timed in interleaved rounds so that a slow
moment of the machine does not land on one of them only.

    python -m bench.bench_generate                         # both sizes and precisions, batch 1 and 8
    python -m bench.bench_generate --sizes demo --new_tokens 32 --repeats 1   # a quick check
    python -m bench.bench_generate --sizes MiniMind2-Small --batches 1 --profile   # where a step's time goes
"""

import argparse
import copy
import sys
import time

import torch

from bench.machine import add_dtypes_arg, add_threads_arg, cpu_dtypes, dtype_name, measure_machine
from plumbing.errors import UserError, run_main
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from speed.matvec import linear, prepare_for_decoding
from model.model_lora import apply_lora, merge_lora

# The issues' goals: decode at batch 1 reaches this share of the bound of the bytes it reads, at
# MiniMind2-Small size (at the demo size per-token overhead dominates): 80% in float32 (the
# benchmark issue), 60% with bfloat16 weights on a CPU with native bfloat16 (issue 18). And a
# merged adapter decodes at least this fast relative to the base model.
BOUND_GOAL = {("MiniMind2-Small", torch.float32): 0.80, ("MiniMind2-Small", torch.bfloat16): 0.60}
MERGED_GOAL = 0.98


def model_sizes() -> dict:
    """name -> LMConfig fields of the sizes this benchmark times."""
    return {
        "demo": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, vocab_size=2048),  # run_demo.py's model
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


def bytes_per_step(model, batch: int, prompt_len: int, new_tokens: int) -> float:
    """Bytes a timed decode step reads: every weight once, plus each row's KV cache up to its position,
    averaged over the timed steps (positions prompt_len + 1 .. prompt_len + new_tokens - 1).

    MiniMind2-Small, float32, batch 1, 64 + 64 tokens: 103.3 MB of weights + 0.8 MB of cache."""
    config = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # distinct tensors: tied matrix once
    positions = prompt_len + new_tokens / 2  # the mean number of cached positions a timed step reads
    per_position = 2 * config.n_layers * config.n_kv_heads * config.head_dim * model.output.weight.element_size()  # K and V
    return weights + batch * positions * per_position


def kernel_stream_gbs(batch: int, dtype, shape=(1408, 512), mbytes: int = 256, repeats: int = 3) -> float:
    """GB/s of weights model.linear gets through for `batch` tokens in `dtype`, best of `repeats` passes
    over `mbytes` MB of (out, in) = `shape` matrices (MiniMind2-Small's w1), far more than any cache holds."""
    count = mbytes * 2**20 // (torch.finfo(dtype).bits // 8 * shape[0] * shape[1])
    weights = [torch.randn(shape).to(dtype) for _ in range(count)]
    x = torch.randn(batch, 1, shape[1]).to(dtype)  # (B, T=1, in): one decode step
    best = float("inf")
    for _ in range(repeats + 1):  # the first pass is a warm-up
        start = time.perf_counter()
        for w in weights:
            linear(x, w)
        best = min(best, time.perf_counter() - start)
    return sum(w.numel() * w.element_size() for w in weights) / best / 1e9


def matmuls_alone_ms(model, batch: int, repeats: int) -> float:
    """ms for the matrix products of one decode step alone: model.linear on every Linear weight of the
    model, in the model's order, with a (batch, 1, in) input, best of `repeats`. What a step would cost
    if it did nothing else; the rest of a step (attention, norms, RoPE, sampling, Python and op
    dispatch) is the step's time minus this."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(batch, 1, w.shape[1]).to(w.dtype) for w in weights]
    best = float("inf")
    for _ in range(repeats + 1):  # the first pass is a warm-up
        start = time.perf_counter()
        for x, w in zip(inputs, weights):
            linear(x, w)
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def op_calls_per_step(model, batch: int, prompt_len: int, new_tokens: int) -> float:
    """How many torch ops (aten calls, nested ones included) one decode step makes: torch.profiler,
    prefill excluded. Only the count is taken: the profiler's own overhead distorts its timings."""
    from torch.profiler import ProfilerActivity, profile

    prompt = torch.randint(3, model.config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(0))
    steps = model.generate(prompt, max_new_tokens=new_tokens, temperature=0, eos_token_id=-1, stream=True)
    next(steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        n = sum(1 for _ in steps)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::")) / n


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
    add_dtypes_arg(parser)
    parser.add_argument("--lora_rank", type=int, default=16, help="rank of the adapter in the adapter-cost table (default: %(default)s)")
    parser.add_argument("--profile", action="store_true", help="also split a step's time: matrix products against the rest")
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        raise UserError(f"--new_tokens must be at least 2 (the first token is not timed), got {args.new_tokens}")
    dtypes = cpu_dtypes(args.dtypes)

    machine = measure_machine(args.threads)
    print(machine.header())
    stream = {(dtype, batch): kernel_stream_gbs(batch, dtype) for dtype in dtypes for batch in args.batches}
    print(f"\ngreedy, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, best of {args.repeats}. "
          "The kernels stream weights from memory at " + ", ".join(
              f"{gbs:.1f} GB/s ({dtype_name(d)}, batch {b})" for (d, b), gbs in stream.items())
          + f"; sum() reads {machine.read_gbs:.1f} GB/s\n")
    print("| model | precision | batch | MB read per step (weights + KV cache) | decode tokens/s | bound tokens/s "
          "(read bandwidth) | % of bound | bound at the kernel's rate | % of that | goal | met? |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    models = {}  # (size, dtype) -> model: the same weights, stored in each precision
    rates = {}  # (size, dtype, batch) -> decode tokens/s
    for name in args.sizes:
        config = LMConfig(**sizes[name], max_seq_len=args.prompt_len + args.new_tokens)
        base = MiniMindLM(config).eval()
        for dtype in dtypes:
            # stored in dtype, with the loader's speed paths for it (speed/matvec.py), as eval_model.py runs it
            model = models[name, dtype] = prepare_for_decoding(copy.deepcopy(base).cast_weights(dtype), "cpu", dtype)
            for batch in args.batches:
                rate = rates[name, dtype, batch] = decode_tokens_per_s(model, batch, args.prompt_len, args.new_tokens,
                                                                       args.repeats)
                n_bytes = bytes_per_step(model, batch, args.prompt_len, args.new_tokens)
                bound = batch * machine.read_gbs * 1e9 / n_bytes
                kernel_bound = batch * stream[dtype, batch] * 1e9 / n_bytes
                goal = BOUND_GOAL.get((name, dtype)) if batch == 1 else None
                goal_cells = f"| >= {goal:.0%} of bound | {'yes' if rate >= goal * bound else 'no'} |" if goal else "| - | - |"
                print(f"| {name} | {dtype_name(dtype)} | {batch} | {n_bytes / 1e6:.1f} | {rate:,.0f} | {bound:,.0f} | "
                      f"{100 * rate / bound:.0f}% | {kernel_bound:,.0f} | {100 * rate / kernel_bound:.0f}% "
                      f"{goal_cells}", flush=True)  # fmt: skip

    if args.profile:
        print("\nWhere a decode step's time goes: the step (from the table above) against its matrix products "
              "run alone, back to back (model.linear on every weight, in order)\n")
        print("| model | precision | batch | ms per step | matrix products alone | everything else | op calls per step |")
        print("|---|---|---|---|---|---|---|")
        for (name, dtype, batch), rate in rates.items():
            model = models[name, dtype]
            step_ms = 1e3 * batch / rate
            alone = matmuls_alone_ms(model, batch, args.repeats)
            calls = op_calls_per_step(model, batch, args.prompt_len, args.new_tokens)
            print(f"| {name} | {dtype_name(dtype)} | {batch} | {step_ms:.2f} | {alone:.2f} ms ({alone / step_ms:.0%}) | "
                  f"{step_ms - alone:.2f} ms | {calls:,.0f} |", flush=True)

    print(f"\nWhat an adapter costs at decode time: batch 1, best of {args.repeats} interleaved rounds\n")
    print("| model | precision | weights | decode tokens/s | vs base | goal | met? |")
    print("|---|---|---|---|---|---|---|")
    for (name, dtype), model in models.items():
        variants = adapted_copies(model, args.lora_rank)
        best = {label: 0.0 for label in variants}
        for _ in range(args.repeats):  # interleaved: base, unmerged, merged, base, ...
            for label, variant in variants.items():
                rate = decode_tokens_per_s(variant, 1, args.prompt_len, args.new_tokens, repeats=1)
                best[label] = max(best[label], rate)
        base = best["base"]
        for label, rate in best.items():
            weights = "base" if label == "base" else f"LoRA r={args.lora_rank} (wq, wo), {label}"
            goal_cells = f"| >= {MERGED_GOAL:.0%} of base | {'yes' if rate >= MERGED_GOAL * base else 'no'} |" if label == "merged" else "| - | - |"
            print(f"| {name} | {dtype_name(dtype)} | {weights} | {rate:,.0f} | {rate / base:.1%} {goal_cells}", flush=True)
    print(f"\n{machine.footer()}")


if __name__ == "__main__":
    sys.exit(run_main(main))
