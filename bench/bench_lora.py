"""LoRA against full SFT: what the adapter saves, measured rather than claimed.

For each model size, two configurations of the SFT training step (the step of train_full_sft.py
and train_lora.py, built by bench/bench_train.py from the project's own code):

    full SFT   every weight trained: a gradient and two AdamW moments per parameter
    LoRA       the base frozen, rank-16 adapters on wq and wo (MiniMind2's default) trained

and for each: trainable parameters, the bytes of the optimizer's state (read from
optimizer.state after a step, not computed from a formula), the bytes of the gradients, the peak
resident memory of the process, and step time / tokens/s.

Memory. A peak is honest only if nothing else lived in the process before, so each configuration
runs in a fresh process (multiprocessing "spawn") and reports its kernel-kept high-water mark
(VmHWM in /proc/self/status): everything it ever held, torch itself, the model, activations,
gradients, optimizer state, allocator caching included. "After build" is the same process's RSS
once the model and optimizer exist, before the first step, so "peak - after build" is what
training itself adds. Activations (kept for the backward pass) are the same in both
configurations; the gradients and optimizer state are where LoRA saves.

Speed. The two configurations are timed in this process, their steps taking turns (full, LoRA,
full, ...), as bench_train.py does: a shared machine's slow moments then fall on both alike.

Precision: float32 by default; --dtypes float32 bfloat16 measures both (bfloat16 autocast, as the
scripts' --dtype bfloat16 on a CPU with native bfloat16), side by side.

    python -m bench.bench_lora                         # demo and MiniMind2-Small, ~2 minutes
    python -m bench.bench_lora --sizes demo --steps 2  # a quick check
"""
import argparse
import sys

import torch

from bench.bench_train import SIZES, build, make_batch, time_size, train_step
from bench.machine import (add_dtypes_arg, add_quiet_args, add_step_args, add_threads_arg, cpu_dtypes, dtype_name,
                           measure_machine, measure_quietly, run_in_fresh_process, wait_until_quiet)
from plumbing.errors import UserError, run_main

MODES = ("full_sft", "lora")


def rss_mb() -> dict:
    """{'VmHWM': peak, 'VmRSS': current} resident memory of this process in MB (Linux /proc)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) / 1e3  # kB -> MB (10^6 bytes, as everywhere in the table)
    return out


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of every tensor in optimizer.state: for AdamW exp_avg, exp_avg_sq (and a step count)."""
    return sum(tensor_bytes(v for v in state.values() if torch.is_tensor(v)) for state in optimizer.state.values())


def memory_of_configuration(size, mode, steps, lora_rank, threads, dtype, results):
    """In a fresh process: build, train `steps` steps, put what it held on the `results` queue."""
    torch.set_num_threads(threads)
    fields, seq, batch = SIZES[size]
    model, params, optimizer = build(size, mode, lora_rank)
    X, Y, mask = make_batch(fields["vocab_size"], batch, seq, mode, torch.Generator().manual_seed(0))
    after_build = rss_mb()["VmRSS"]
    for _ in range(steps):  # the first step creates the optimizer state; the peak is reached by the second
        train_step(model, optimizer, params, X, Y, mask, dtype=dtype)
    results.put({
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in params),
        "optimizer_bytes": optimizer_state_bytes(optimizer),
        # zero_grad(set_to_none=True) frees the gradients at the end of each step; while the step ran,
        # every trainable parameter had one of its own size and dtype
        "grad_bytes": tensor_bytes(params),
        "after_build_mb": after_build,
        "peak_mb": rss_mb()["VmHWM"],
    })


def measure_memory(size, mode, lora_rank, threads, dtype) -> dict:
    """Run one configuration in its own process and return what it reported."""
    return run_in_fresh_process(memory_of_configuration, (size, mode, 2, lora_rank, threads, dtype))


def main(argv=None):
    parser = argparse.ArgumentParser(description="LoRA vs full SFT: parameters, optimizer state, peak memory, speed.")
    add_threads_arg(parser)
    add_quiet_args(parser)
    parser.add_argument("--sizes", nargs="+", default=["demo", "MiniMind2-Small"], choices=list(SIZES),
                        help="model sizes (default: %(default)s)")
    add_dtypes_arg(parser, default=("float32",))
    add_step_args(parser)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        raise UserError(f"--steps must be at least 1 and --warmup at least 0, got {args.steps} and {args.warmup}")
    dtypes = cpu_dtypes(args.dtypes)

    if args.wait > 0:
        wait_until_quiet(args.wait)
    machine = measure_machine(args.threads)
    measured = []  # (size, {(mode, dtype): memory}, {(mode, dtype): timing}, others' CPU share while timing)
    for size in args.sizes:
        print(f"measuring {size} ...", file=sys.stderr, flush=True)
        memory = {(mode, dtype): measure_memory(size, mode, args.lora_rank, args.threads, dtype)
                  for mode in MODES for dtype in dtypes}
        timing, others = measure_quietly(lambda: time_size(size, MODES, args.steps, args.warmup, args.lora_rank, dtypes), args)
        measured.append((size, memory, timing, others))

    print(machine.header())
    print(f"\npeak memory: each configuration in a fresh process, 2 steps; speed: {args.warmup} warm-up + "
          f"{args.steps} timed steps, full SFT and LoRA taking turns; MB = 10^6 bytes\n")
    print("| size | stage | precision | trainable params | optimizer state | gradients | peak RSS | RSS after build | "
          "training adds | step s (median) | tokens/s | others' CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    mb = 1e6
    for size, memory, timing, others in measured:
        for dtype in dtypes:
            for mode in MODES:
                m, t = memory[mode, dtype], timing[mode, dtype]
                name = "full SFT" if mode == "full_sft" else f"LoRA r={args.lora_rank} (wq, wo)"
                print(f"| {size} | {name} | {dtype_name(dtype)} | {m['trainable']:,} ({m['trainable'] / m['total']:.2%}) | "
                      f"{m['optimizer_bytes'] / mb:,.2f} MB | {m['grad_bytes'] / mb:,.2f} MB | {m['peak_mb']:,.0f} MB | "
                      f"{m['after_build_mb']:,.0f} MB | {m['peak_mb'] - m['after_build_mb']:,.0f} MB | "
                      f"{t['step_s']:.3f} | {t['tokens_per_s']:,.0f} | {others:.0%} |")  # fmt: skip
            full, lora = memory["full_sft", dtype], memory["lora", dtype]
            fast = timing["lora", dtype]["tokens_per_s"] / timing["full_sft", dtype]["tokens_per_s"]
            print(f"| {size} | **LoRA / full SFT** | {dtype_name(dtype)} | {lora['trainable'] / full['trainable']:.2%} | "
                  f"{lora['optimizer_bytes'] / full['optimizer_bytes']:.2%} | {lora['grad_bytes'] / full['grad_bytes']:.2%} | "
                  f"{lora['peak_mb'] / full['peak_mb']:.2f}x | | "
                  f"{(lora['peak_mb'] - lora['after_build_mb']) / (full['peak_mb'] - full['after_build_mb']):.2f}x | | "
                  f"{fast:.2f}x | |")  # fmt: skip
    print(f"\n{machine.footer()}")


if __name__ == "__main__":
    sys.exit(run_main(main))
