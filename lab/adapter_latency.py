"""Adapter Tuning makes the model deeper, so it slows training and inference (001 §2.1 Adapter Tuning).

Houlsby's adapters (model/predecessors.py) sit in series after wo and w2 of every block; LoRA's
B·A sits beside a Linear and can be merged away. At matched trainable parameters (within 10%), on
random weights (speed does not depend on the values), taking turns so a busy moment falls on all:
  training   the median time of an optimizer step (bench/bench_train.py's train_step), LoRA against
             the adapter, at MiniMind2-Small (MiniMind2's LoRA: r=16 on wq, wo) and at the demo's size
             (the demo's LoRA against lab/sweeps.py's bottleneck-96 adapter)
  inference  decode tokens/s at batch 1 (bench/bench_generate.py): the base, LoRA unmerged, LoRA
             merged and plain, the adapter
The demo's own adapters time the other way (the first edition's 118 s for the adapter against 148 s
for LoRA): the demo's LoRA adapts every Linear and the 2,048-row tied embedding, the adapter two
Linears a block; the matched MiniMind2-Small pair is the claim's setting.

Rule (set before the run), at MiniMind2-Small, one verdict per half:
  slows training   holds if the adapter's step takes at least 5% longer than LoRA's; does not hold otherwise
  slows inference  holds if the adapter decodes at most 95% as fast as LoRA, merged or not; with a caveat
                   if only against merged LoRA (unmerged LoRA is as slow); does not hold otherwise
5%: the spread of medians and best-of-rounds on a shared 2-core machine is a few percent.

    python -m lab.adapter_latency
"""
import copy
import statistics
import sys
import time

import torch

import training
from bench.bench_generate import decode_tokens_per_s, model_sizes
from bench.bench_train import make_batch, train_step
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, run_alone, table
from lab.memory import TINY
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from model.model_lora import apply_lora, mark_only_lora_as_trainable, merge_lora, remove_lora
from model.predecessors import apply_method
from plot import panels
from plumbing.errors import run_main
from plumbing.flags import LORA_TARGETS

TITLE = "Adapters slow training and inference"
CLAIM = "Adapter layers make the model deeper, which slows both training and inference."
SOURCE = "001 §2.1 Adapter Tuning"
MARGIN = 0.05  # a gap smaller than this is within the timing noise
RULE = (f"at MiniMind2-Small, parameters matched: slows training holds if the adapter's optimizer step takes at least "
        f"{MARGIN:.0%} longer than LoRA's, else does not hold; slows inference holds if the adapter decodes at most "
        f"{1 - MARGIN:.0%} as fast as LoRA both merged and unmerged, with a caveat if only against merged LoRA, does not "
        "hold otherwise.")
SETUPS = {  # size -> (LoRA's targets, batch x sequence of a timed step)
    "MiniMind2-Small": (["wq", "wo"], (2, 128)),
    "demo": (LORA_TARGETS.split(","), (16, 224)),
}


def verdict(step_ratio: float, decode_vs_merged: float, decode_vs_unmerged: float) -> list:
    """step_ratio: adapter step time / LoRA's; decode_vs_*: adapter decode speed / LoRA's."""
    training = HOLDS if step_ratio >= 1 + MARGIN else FAILS
    if decode_vs_merged > 1 - MARGIN:
        inference = FAILS
    else:
        inference = HOLDS if decode_vs_unmerged <= 1 - MARGIN else CAVEAT
    return [("slows training", training), ("slows inference", inference)]


def matched_bottleneck(model, lora_params) -> int:
    """The adapter bottleneck whose trainable parameters come nearest LoRA's."""
    per_width = 2 * len(model.layers) * (2 * model.config.dim + 1)  # down (dim x b, + b) and up (b x dim) twice a block
    fixed = 2 * len(model.layers) * model.config.dim  # up's bias
    return max(1, round((lora_params - fixed) / per_width))


def trained_parts(fields, targets, seq) -> dict:
    """{"LoRA": model, "adapter": model} on one random base, parameters matched, and their counts."""
    torch.manual_seed(0)
    base = MiniMindLM(LMConfig(**fields, max_seq_len=max(seq, 256)))
    lora = copy.deepcopy(base)
    apply_lora(lora, 16, target_modules=targets)
    mark_only_lora_as_trainable(lora)
    count = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    adapter = copy.deepcopy(base)
    apply_method(adapter, "adapter", matched_bottleneck(base, count))
    return {"base": base, "LoRA": lora, "adapter": adapter}


def step_seconds(models: dict, fields, batch, seq, steps) -> dict:
    """Median seconds of an optimizer step of each model, the models taking turns (the first step a warm-up)."""
    X, Y, mask = make_batch(fields["vocab_size"], batch, seq, "sft", torch.Generator().manual_seed(0))
    runs = {}
    for name, model in models.items():
        params = [p for p in model.parameters() if p.requires_grad]
        runs[name] = (model.train(), params, training.make_optimizer([{"params": params, "lr_scale": 1.0}], 1e-4,
                                                                    torch.device("cpu")))
    times = {name: [] for name in models}
    for i in range(steps + 1):
        for name, (model, params, optimizer) in runs.items():
            start = time.perf_counter()
            train_step(model, optimizer, params, X, Y, mask)
            if i:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def decode_rates(parts: dict, new_tokens, rounds) -> dict:
    merged = copy.deepcopy(parts["LoRA"])
    with torch.no_grad():
        for name, p in merged.named_parameters():
            if name.endswith(".lora.B.weight"):
                p.normal_(std=0.02)  # trained-like, so merging really changes W
    unmerged = copy.deepcopy(merged)
    merge_lora(merged)
    remove_lora(merged)
    models = {"base": parts["base"], "LoRA, unmerged": unmerged, "LoRA, merged": merged, "adapter": parts["adapter"]}
    best = {name: 0.0 for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            best[name] = max(best[name], decode_tokens_per_s(model.eval(), 1, 32, new_tokens, 1))
    return best


def run(lab) -> Finding:
    steps, new_tokens, rounds = (1, 8, 1) if lab.quick else (5, 64, 5)
    results, rows = {}, []
    for size, (targets, (batch, seq)) in SETUPS.items():
        fields = TINY if lab.quick else model_sizes()[size]
        if lab.quick:
            batch, seq = 2, 32
        parts = trained_parts(fields, targets, seq)
        counts = {k: sum(p.numel() for p in parts[k].parameters() if p.requires_grad) for k in ("LoRA", "adapter")}
        step = step_seconds({k: parts[k] for k in ("LoRA", "adapter")}, fields, batch, seq, steps)
        speed = decode_rates(parts, new_tokens, rounds)
        results[size] = {"step": step, "speed": speed, "counts": counts}
        rows.append([size, f"{counts['LoRA']:,} / {counts['adapter']:,} ({counts['adapter'] / counts['LoRA'] - 1:+.1%})",
                     f"{batch} x {seq}", f"{step['LoRA'] * 1e3:.0f} / {step['adapter'] * 1e3:.0f} ms "
                     f"({step['adapter'] / step['LoRA']:.2f}x)",
                     *(f"{speed[k]:,.0f} ({speed[k] / speed['base']:.0%})" for k in ("base", "LoRA, unmerged", "LoRA, merged", "adapter"))])
    small = results["MiniMind2-Small"]
    step_ratio = small["step"]["adapter"] / small["step"]["LoRA"]
    vs_merged = small["speed"]["adapter"] / small["speed"]["LoRA, merged"]
    vs_unmerged = small["speed"]["adapter"] / small["speed"]["LoRA, unmerged"]
    panels([("bar", dict(title="training: a step's time, LoRA's = 100%", x_label="adapter step / LoRA step", percent=True,
                         bars={size: (r["step"]["adapter"] / r["step"]["LoRA"],) * 3 for size, r in results.items()},
                         refs=[(1 + MARGIN, f"{1 + MARGIN:.0%}: slower beyond noise")])),
            ("bar", dict(title="inference: decode speed, the base's = 100%", x_label="tokens/s / the base's", percent=True,
                         bars={f"{size}, {k}": (r["speed"][k] / r["speed"]["base"],) * 3 for size, r in results.items()
                               for k in ("LoRA, unmerged", "LoRA, merged", "adapter")},
                         refs=[(1 - MARGIN, f"{1 - MARGIN:.0%}")]))],
           lab.figure("lora_adapter_latency.svg"), "Adapter Tuning against LoRA at matched parameters", columns=2, width=470)
    details = ("Trainable parameters LoRA / adapter, the timed step's batch x sequence, a step's median time LoRA / adapter, "
               "and decode tokens/s at batch 1 (in brackets: of the base's):\n\n"
               + table(["model", "trainable", "step", "step time", "base", "LoRA unmerged", "LoRA merged", "adapter"], rows)
               + "\n\nIn series, the adapter adds two small matmuls and a GELU per block that every token must pass through, "
               "forward and backward, and that nothing can fold into W. LoRA's unmerged path costs two small matmuls per "
               "adapted Linear too, but beside the Linear, and merging removes it. In training, a step's time is mostly "
               "the frozen model's own forward and backward passes, which both methods pay in full.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"MiniMind2-Small, matched parameters: an adapter step takes {step_ratio:.2f}x LoRA's; the adapter "
                   f"decodes at {vs_merged:.0%} of merged LoRA's speed and {vs_unmerged:.0%} of unmerged LoRA's.",
                   verdict(step_ratio, vs_merged, vs_unmerged), details, ["lora_adapter_latency.svg"], "adapter_latency")


def main(argv=None):
    run_alone("adapter_latency", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
