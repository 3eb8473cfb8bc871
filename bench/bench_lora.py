"""LoRA against full SFT: what the adapter saves, measured rather than claimed.

For each model size, two configurations of the SFT training step (the step of train_full_sft.py
and train_lora.py, built by bench/bench_train.py from the project's own code):

    full SFT   every weight trained: a gradient and two AdamW moments per parameter
    LoRA       the base frozen, rank-16 adapters on wq and wo (MiniMind2's default) trained

and for each: trainable parameters, the bytes of the optimizer's state (read from
optimizer.state after a step, not computed from a formula), the bytes of the gradients, the peak
resident memory of the process, and step time / tokens/s.

Peak memory is honest only if nothing else lived in the process before, so every configuration
runs in a fresh process (multiprocessing "spawn") and reports its kernel-kept high-water mark
(VmHWM in /proc/self/status): everything it ever held, torch itself, the model, activations,
gradients, optimizer state, allocator caching included. "After build" is the same process's RSS
once the model and optimizer exist, before the first step, so "peak - after build" is what
training itself adds.

    python -m bench.bench_lora                         # demo and MiniMind2-Small, ~2 minutes
    python -m bench.bench_lora --sizes demo --steps 2  # a quick check
"""
import argparse
import multiprocessing
import statistics
import sys
import time

import torch

from bench.bench_train import SIZES, build, make_batch, train_step
from bench.machine import OthersWatch, add_threads_arg, measure_machine


def rss_mb() -> dict:
    """{'VmHWM': peak, 'VmRSS': current} resident memory of this process in MB (Linux /proc)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) / 1024  # kB -> MB
    return out


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of every tensor in optimizer.state: for AdamW exp_avg, exp_avg_sq (and a step count)."""
    return sum(tensor_bytes(v for v in state.values() if torch.is_tensor(v)) for state in optimizer.state.values())


def run_configuration(size, mode, steps, warmup, lora_rank, threads, results):
    """In a fresh process: build, train warmup + steps steps, report memory and timings."""
    torch.set_num_threads(threads)
    fields, seq, batch = SIZES[size]
    model, params, optimizer = build(size, mode, lora_rank)
    X, Y, mask = make_batch(fields["vocab_size"], batch, seq, mode, torch.Generator().manual_seed(0))
    after_build = rss_mb()["VmRSS"]
    seconds = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        train_step(model, optimizer, params, X, Y, mask)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    # gradients are freed by zero_grad(set_to_none=True) inside the step; each trainable parameter
    # had one of its own size and dtype while the step ran
    grad_bytes = tensor_bytes(params)
    results.put({
        "size": size, "mode": mode, "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in params), "optimizer_bytes": optimizer_state_bytes(optimizer),
        "grad_bytes": grad_bytes, "after_build_mb": after_build, "peak_mb": rss_mb()["VmHWM"],
        "step_s": statistics.median(seconds), "tokens": X.numel(),
    })


def measure(size, mode, args):
    """Run one configuration in its own process and return what it reported."""
    context = multiprocessing.get_context("spawn")  # nothing inherited: the peak is this configuration's
    results = context.Queue()
    process = context.Process(target=run_configuration,
                              args=(size, mode, args.steps, args.warmup, args.lora_rank, args.threads, results))
    process.start()
    out = results.get()
    process.join()
    if process.exitcode != 0:
        sys.exit(f"error: the {size} {mode} process failed (see above)")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description="LoRA vs full SFT: parameters, optimizer state, peak memory, speed.")
    add_threads_arg(parser)
    parser.add_argument("--sizes", nargs="+", default=["demo", "MiniMind2-Small"], choices=list(SIZES),
                        help="model sizes (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration; the median is reported (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--lora_rank", type=int, default=16, help="LoRA rank, on wq and wo as MiniMind2 (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")

    machine = measure_machine(args.threads)
    print(machine.header())
    print()
    print("| size | stage | trainable params | optimizer state | gradients | peak RSS | RSS after build | "
          "training adds | step s | tokens/s | LoRA / full SFT | others' CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    mb = 1e6
    for size in args.sizes:
        watch = OthersWatch()
        full = measure(size, "full_sft", args)
        lora = measure(size, "lora", args)
        others = watch.share()
        for r in (full, lora):
            added = r["peak_mb"] - r["after_build_mb"]
            if r is lora:
                ratio = (f"{r['trainable'] / full['trainable']:.2%} of the params, "
                         f"{r['optimizer_bytes'] / full['optimizer_bytes']:.2%} of the optimizer state, "
                         f"{r['peak_mb'] / full['peak_mb']:.2f}x peak RSS, "
                         f"{full['step_s'] / r['step_s']:.2f}x tokens/s")  # fmt: skip
            else:
                ratio = ""
            name = "full SFT" if r is full else f"LoRA r={args.lora_rank} (wq, wo)"
            print(f"| {size} | {name} | {r['trainable']:,} ({r['trainable'] / r['total']:.2%}) | "
                  f"{r['optimizer_bytes'] / mb:,.2f} MB | {r['grad_bytes'] / mb:,.2f} MB | {r['peak_mb']:,.0f} MB | "
                  f"{r['after_build_mb']:,.0f} MB | {added:,.0f} MB | {r['step_s']:.3f} | "
                  f"{r['tokens'] / r['step_s']:,.0f} | {ratio} | {others:.0%} |", flush=True)  # fmt: skip
    print(f"\n{machine.footer()}; {args.warmup} warm-up + {args.steps} timed steps, "
          "each configuration in a fresh process; MB = 10^6 bytes")


if __name__ == "__main__":
    sys.exit(main())
