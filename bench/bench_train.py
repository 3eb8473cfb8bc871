"""How fast does this project train, against what the machine allows? Tokens/s and MFU.

Each step is the training scripts' own step, built from their own pieces: MiniMindLM, and for LoRA
model.model_lora.apply_lora + mark_only_lora_as_trainable; then training.make_optimizer (fused
AdamW), training.set_lr, training.masked_cross_entropy, backward, clip_grad_norm_, step, zero_grad.
The batches are random token ids (the data loader is benchmarked in bench_dataset.py; here it
would only add noise), with the scripts' loss masks: all ones for pretraining, the first third of
each row masked out for SFT/LoRA (the prompt, which SFT does not grade).

Each case runs in float32 and, where the CPU has native bfloat16, under bfloat16 autocast as
train_*.py --dtype bfloat16 runs it (runtime_module.Runtime.autocast; the weights and AdamW stay float32).
The precision is a column; plumbing.device.pick_dtype decides it exactly as for the scripts, so on a
CPU without native bfloat16 the bfloat16 rows are left out (the scripts would train in float32).

MFU (model FLOPs utilisation) = FLOPs the model needs per token x tokens/s / matmul peak of the
step's precision (float32 or bfloat16), each peak measured by bench/machine.py in the same run.
FLOPs per token, PaLM's formula:

    full training (pretraining, full SFT):  6 N  +  12 L d T
    LoRA (frozen base):                      4 N  +  12 L d T  +  6 N_lora

N = parameters that are multiplied in a matmul: every Linear of every block plus the output
projection (vocab x dim). MiniMind ties the embedding to the output projection: that one matrix
counts once, as the output matmul; the embedding lookup is a gather and counts 0 FLOPs. Norm
gains are not matmuls and are left out. Forward is 2 N (a multiply and an add per weight);
backward is 4 N: 2 N for the gradient of the input, 2 N for the gradient of the weight. A frozen
weight needs only the first (its input gradient still flows to the adapters below it), hence 4 N
for LoRA. 12 L d T is attention's q.k and p.v products (L layers, width d, T tokens of context),
forward plus backward, counted for the whole T x T square as PaLM does, though the causal mask
makes half of it zero. Everything else (softmax, norms, RoPE, SiLU, the optimizer) is overhead
MFU does not credit: MFU says how close the step comes to doing nothing but its matmuls at peak.

    python -m bench.bench_train                               # demo, tiny, dim256, MiniMind2-Small: a few minutes
    python -m bench.bench_train --sizes demo --steps 2        # a quick check
    python -m bench.bench_train --sizes demo MiniMind2-Small --modes pretrain   # float32 against bfloat16
    python -m bench.bench_train --sizes MiniMind2-Small --modes full_sft --profile   # where the time goes

Warm-up steps are not timed; the figure is the median of the timed steps. The stages (and
precisions) of one size take turns step by step, and the matmul peaks are measured again before
each size, the best kept: a shared virtual machine has slow moments, and they must not decide a
ratio or flatter an MFU.
"""
import argparse
import statistics
import sys
import time

import torch

import training
from bench.machine import (add_dtypes_arg, add_quiet_args, add_step_args, add_threads_arg, cpu_dtypes, dtype_name, measure_machine,
                           measure_quietly, wait_until_quiet)
from plumbing.errors import UserError, run_main
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from model.model_lora import apply_lora, mark_only_lora_as_trainable
from plumbing import runtime as runtime_module

# name -> (LMConfig fields, max_seq_len, batch size). Each sequence trains max_seq_len - 1 tokens
# (X = ids[:-1], Y = ids[1:], as the datasets make them).
SIZES = {
    # the model run_demo.py trains: the training scripts' defaults (4 heads of 32, 4 key/value heads)
    "demo": (dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, vocab_size=2048), 256, 16),
    # MiniMind2's head layout at the demo's width: the size the benchmark issue compares with
    # MiniMind2's own code (about 11,900 tokens/s, 49% MFU)
    "tiny": (dict(dim=128, n_layers=4, n_heads=8, n_kv_heads=2, vocab_size=2048), 256, 16),
    # twice as wide: the benchmark issue's MFU goal for a small model (an earlier demo model)
    "dim256": (dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=2, vocab_size=2048), 256, 16),
    "MiniMind2-Small": (dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=2, vocab_size=6400), 512, 8),
}
MODES = ("pretrain", "full_sft", "lora")
# The issues' goals: MFU at each size (full training, float32), LoRA's speed-up over full SFT, and
# bfloat16's speed-up over float32 on a CPU with native bfloat16.
MFU_GOALS = {"dim256": 0.60, "MiniMind2-Small": 0.75}
LORA_SPEEDUP_GOAL = 1.4
BF16_SPEEDUP_GOALS = {"MiniMind2-Small": 1.6}


def matmul_params(model) -> int:
    """N of the FLOPs formula: weights of every nn.Linear (the LoRA adapters' own excepted).

    The tied output/embedding matrix is one Parameter and is counted once (model.parameters()
    yields it once); norm gains are 1-D and are not Linears."""
    linears = {id(m.weight): m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".lora." not in name}
    return sum(linears.values())


def lora_params(model) -> int:
    """N_lora: the adapters' A and B weights."""
    return sum(p.numel() for name, p in model.named_parameters() if ".lora." in name)


def flops_per_token(config: LMConfig, seq: int, n_matmul: int, n_lora: int, mode: str) -> int:
    """Training FLOPs per token (see the module docstring).

    >>> flops_per_token(LMConfig(dim=64, n_layers=2, vocab_size=256), 32, 1000, 0, "pretrain")
    55152
    """
    attention = 12 * config.n_layers * config.dim * seq
    if mode == "lora":
        return 4 * n_matmul + attention + 6 * n_lora
    return 6 * n_matmul + attention


def make_batch(vocab_size: int, batch: int, seq: int, mode: str, generator):
    """Random (X, Y, loss_mask), each (batch, seq - 1), like a DataLoader batch from lm_dataset.

    Pretraining grades every position; SFT (and LoRA, which fine-tunes on SFT data) masks out the
    first third of each row, as the prompt of a conversation is masked."""
    ids = torch.randint(3, vocab_size, (batch, seq), generator=generator)
    X, Y = ids[:, :-1], ids[:, 1:]  # (batch, seq - 1) each
    mask = torch.ones_like(Y)
    if mode != "pretrain":
        mask[:, : (seq - 1) // 3] = 0
    return X.contiguous(), Y.contiguous(), mask


def build(size: str, mode: str, lora_rank: int, seed: int = 0):
    """(model, trainable params, optimizer) as the stage's script builds them."""
    fields, seq, _ = SIZES[size]
    torch.manual_seed(seed)
    model = MiniMindLM(LMConfig(**fields, max_seq_len=seq))
    if mode == "lora":
        apply_lora(model, rank=lora_rank)  # MiniMind2's default targets: the square Linears, wq and wo
        mark_only_lora_as_trainable(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = training.make_optimizer([{"params": params, "lr_scale": 1.0}], 5e-4, torch.device("cpu"))
    model.train()
    return model, params, optimizer


def train_step(model, optimizer, params, X, Y, loss_mask, lr=5e-4, grad_clip=1.0, dtype=torch.float32):
    """One optimizer step of train_*.py (one micro-batch on the CPU, the forward under autocast when
    dtype is bfloat16): set lr -> forward -> masked loss -> backward -> clip -> step -> zero_grad.
    Returns the loss tensor."""
    training.set_lr(optimizer, lr)
    rt = runtime_module.Runtime(torch.device("cpu"), None if dtype == torch.float32 else dtype)
    with rt.autocast():
        logits = model(X).logits  # (B, T, vocab_size)
        loss = training.masked_cross_entropy(logits, Y, loss_mask)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def time_size(size: str, modes, steps: int, warmup: int, lora_rank: int, dtypes=(torch.float32,)) -> dict:
    """{(mode, dtype): timings and FLOPs} for one size: every case's model is built first, then their
    steps run in turn (pretrain fp32, pretrain bf16, full SFT fp32, ..., pretrain fp32, ...), so a slow
    moment of a shared machine falls on all cases alike and their ratios (LoRA vs full SFT, bfloat16
    vs float32) stay fair. Each case starts from the same weights and batch as the other precision's."""
    fields, seq, batch = SIZES[size]
    g = torch.Generator().manual_seed(0)
    batches = {mode: make_batch(fields["vocab_size"], batch, seq, mode, g) for mode in modes}
    cases = {(mode, dtype): (build(size, mode, lora_rank), batches[mode]) for mode in modes for dtype in dtypes}
    seconds = {case: [] for case in cases}
    for i in range(warmup + steps):
        for (mode, dtype), ((model, params, optimizer), (X, Y, mask)) in cases.items():
            start = time.perf_counter()
            train_step(model, optimizer, params, X, Y, mask, dtype=dtype)
            if i >= warmup:
                seconds[mode, dtype].append(time.perf_counter() - start)
    results = {}
    for (mode, dtype), ((model, params, _), (X, _, _)) in cases.items():
        step_s = statistics.median(seconds[mode, dtype])
        n_matmul, n_lora = matmul_params(model), lora_params(model)
        results[mode, dtype] = {
            "size": size, "mode": mode, "dtype": dtype, "batch": batch, "seq": seq - 1, "step_s": step_s,
            "spread": (min(seconds[mode, dtype]), max(seconds[mode, dtype])), "tokens_per_s": X.numel() / step_s,
            "n_matmul": n_matmul, "n_lora": n_lora, "trainable": sum(p.numel() for p in params),
            "flops_per_token": flops_per_token(model.config, seq - 1, n_matmul, n_lora, mode),
        }
    return results


def profile_step(size: str, mode: str, lora_rank: int, dtype=torch.float32, rows: int = 18) -> str:
    """torch.profiler over one (warm) step: the ops that take the time, by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    fields, seq, batch = SIZES[size]
    model, params, optimizer = build(size, mode, lora_rank)
    X, Y, mask = make_batch(fields["vocab_size"], batch, seq, mode, torch.Generator().manual_seed(0))
    train_step(model, optimizer, params, X, Y, mask, dtype=dtype)  # warm-up: first-call allocations, kernel choice
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(model, optimizer, params, X, Y, mask, dtype=dtype)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def goal_cells(r: dict, results: dict, mfu: float) -> tuple[str, str]:
    """('goal', 'met?') cells of a row; results: every row of its size, by (mode, dtype)."""
    goals = []
    if r["mode"] == "lora" and ("full_sft", r["dtype"]) in results:
        ratio = r["tokens_per_s"] / results["full_sft", r["dtype"]]["tokens_per_s"]
        goals.append((f"tokens/s >= {LORA_SPEEDUP_GOAL}x full SFT", f"{ratio:.2f}x: {'yes' if ratio >= LORA_SPEEDUP_GOAL else 'no'}"))
    if r["mode"] != "lora" and r["dtype"] == torch.float32 and r["size"] in MFU_GOALS:
        goal = MFU_GOALS[r["size"]]
        goals.append((f"MFU >= {goal:.0%}", "yes" if mfu >= goal else "no"))
    if r["dtype"] == torch.bfloat16 and r["size"] in BF16_SPEEDUP_GOALS and (r["mode"], torch.float32) in results:
        goal, ratio = BF16_SPEEDUP_GOALS[r["size"]], bf16_speedup(r, results)
        goals.append((f"tokens/s >= {goal}x float32", "yes" if ratio >= goal else "no"))
    if not goals:
        return "-", "-"
    return "; ".join(g for g, _ in goals), "; ".join(m for _, m in goals)


def bf16_speedup(r: dict, results: dict) -> float | None:
    """A bfloat16 row's tokens/s over the float32 row of the same size and stage (None for float32 rows)."""
    float32 = results.get((r["mode"], torch.float32))
    if r["dtype"] == torch.float32 or float32 is None:
        return None
    return r["tokens_per_s"] / float32["tokens_per_s"]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Training tokens/s and MFU of the project's own training step.")
    add_threads_arg(parser)
    add_quiet_args(parser)
    parser.add_argument("--sizes", nargs="+", default=["demo", "tiny", "dim256", "MiniMind2-Small"], choices=list(SIZES),
                        help="model sizes (default: demo tiny dim256 MiniMind2-Small)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="training stages (default: all)")
    add_dtypes_arg(parser)
    add_step_args(parser)
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table of one step per case")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        raise UserError(f"--steps must be at least 1 and --warmup at least 0, got {args.steps} and {args.warmup}")
    dtypes = cpu_dtypes(args.dtypes)

    if args.wait > 0:
        wait_until_quiet(args.wait)
    machine = measure_machine(args.threads)
    measured = []  # (size, {(mode, dtype): result}, others' CPU share)
    for size in args.sizes:
        print(f"timing {size} ...", file=sys.stderr, flush=True)
        if measured:
            machine.remeasure()  # MFU divides by the best peak seen anywhere in the run
        results, others = measure_quietly(
            lambda: time_size(size, args.modes, args.steps, args.warmup, args.lora_rank, dtypes), args)
        measured.append((size, results, others))

    # The table comes last: only now are the peaks final (the best seen in the whole run).
    print(machine.header())
    print(f"\n{args.warmup} warm-up + {args.steps} timed steps per row, the stages and precisions of a size taking turns "
          "step by step; bfloat16 = the forward under bfloat16 autocast (weights and AdamW float32); MFU = FLOPs/token "
          "x tokens/s / the matmul peak of the row's precision\n")
    print("| size | stage | precision | batch x tokens | matmul params N | FLOPs/token | step s (median; min-max) | tokens/s "
          "| vs float32 | MFU | goal | met? | others' CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size, results, others in measured:
        for (mode, dtype), r in results.items():
            mfu = r["flops_per_token"] * r["tokens_per_s"] / (machine.peak_gflops(dtype) * 1e9)
            goal, met = goal_cells(r, results, mfu)
            speedup = bf16_speedup(r, results)
            lo, hi = r["spread"]
            print(f"| {size} | {mode} | {dtype_name(dtype)} | {r['batch']} x {r['seq']} | {r['n_matmul'] / 1e6:.2f}M | "
                  f"{r['flops_per_token'] / 1e6:.1f}M | {r['step_s']:.3f} ({lo:.3f}-{hi:.3f}) | "
                  f"{r['tokens_per_s']:,.0f} | {'-' if speedup is None else f'{speedup:.2f}x'} | {mfu:.0%} | {goal} | "
                  f"{met} | {others:.0%} |")  # fmt: skip
    print(f"\n{machine.footer()}")
    if args.profile:
        for size in args.sizes:
            for mode in args.modes:
                for dtype in dtypes:
                    table = profile_step(size, mode, args.lora_rank, dtype)
                    print(f"\n### profile: {size}, {mode}, {dtype_name(dtype)} (one step, ops by self CPU time)\n\n```\n{table}```")


if __name__ == "__main__":
    sys.exit(run_main(main))
