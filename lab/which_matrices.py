"""Claim 11: which matrices to adapt? At a matched number of trainable parameters, Hu et al. (2021,
Table 5) found wq+wv better than wq or wv alone, and spreading a small rank over more matrices better
than a large rank on few.

Six target sets on the sweep task, every seed; each gets the rank whose adapter comes nearest to the
budget of 20,480 trainable parameters (wq alone at r = 20 on the demo model). The demo model has 4
key/value heads for 4 query heads, so its wk and wv are square like wq; MiniMind2's have 2 for 8
(grouped-query attention), which changes what an adapter on them costs (below).

    python -m lab.which_matrices
"""
import sys

import torch

from plumbing.errors import run_main
from lab.lab import Finding, mean, run_alone, spread, table
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from model.model_lora import apply_lora, mark_only_lora_as_trainable
from plot import bar_chart

TARGETS = {"wq": "wq", "wv": "wv", "wq,wv": "wq,wv", "wq,wk,wv,wo": "wq,wk,wv,wo",
           "every Linear": "wq,wk,wv,wo,w1,w2,w3", "every Linear + embedding": "wq,wk,wv,wo,w1,w2,w3,output"}
BUDGET = 20_480


def adapter_size(config: LMConfig, targets: str, rank: int) -> int:
    with torch.device("meta"):
        model = MiniMindLM(config)
    apply_lora(model, rank, target_modules=targets.split(","))
    mark_only_lora_as_trainable(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run(lab) -> Finding:
    model, _ = lab.load(lab.base()["sft"])
    config = model.config
    budget = BUDGET if not lab.quick else 2_000
    per_rank = {name: adapter_size(config, t, 1) for name, t in TARGETS.items()}
    rank = {name: max(1, round(budget / per_rank[name])) for name in TARGETS}
    configs = [(name, s) for name in TARGETS for s in lab.seeds]
    made = lab.train_all([lab.lora_job(lab.sweep_task(), lora_targets=TARGETS[name], lora_rank=rank[name], seed=s)
                          for name, s in configs])
    loss = {name: [run.final("val_loss") for (n, _), run in zip(configs, made) if n == name] for name in TARGETS}
    rows = [[name, rank[name], f"{rank[name] * per_rank[name]:,}", spread(loss[name], "{:.3f}")] for name in TARGETS]
    bar_chart({f"{n} (r={rank[n]})": (mean(loss[n]), min(loss[n]), max(loss[n])) for n in TARGETS},
              lab.figure("lora_targets.svg"), f"Validation loss by adapted matrices, ~{budget:,} trainable parameters each",
              "validation loss after the sweep task (mean; line: range over seeds)")
    small = LMConfig(dim=512, n_layers=8, n_heads=8, n_kv_heads=2, vocab_size=6400)
    gqa = {t: adapter_size(small, t, 1) // small.n_layers for t in ("wq", "wk", "wv")}
    best = min(TARGETS, key=lambda n: mean(loss[n]))
    qv_beats_single = mean(loss["wq,wv"]) < min(mean(loss["wq"]), mean(loss["wv"]))
    details = (f"Sweep task ({made[0].curve('loss')[-1][0]} steps), seeds {', '.join(map(str, lab.seeds))}, the demo's "
               "learning rate and LoRA+ ratio; final validation loss (mean, range):\n\n"
               + table(["targets", "rank", "trainable", "validation loss"], rows)
               + f"\n\nGrouped-query attention: in MiniMind2-Small (8 query heads, 2 key/value heads, dim 512) wq is "
               f"512 x 512 but wk and wv are 128 x 512, so a rank-1 adapter costs {gqa['wq']:,} parameters on wq and "
               f"{gqa['wk']:,} on wk or wv, and each key/value head's update is shared by the 4 query heads that "
               "read it. At a fixed budget, wk and wv therefore take a higher rank than wq for the same parameters. "
               "The demo model has no grouping (4 and 4), so its six sets compare matrices of one shape.")
    verdict = "holds" if qv_beats_single and best in ("every Linear", "every Linear + embedding", "wq,wk,wv,wo") else \
        "holds with a caveat"
    return Finding(11, "Which matrices", "At the same parameter budget, adapting more matrix types at a lower rank "
                   "beats a high rank on one (Hu et al. 2021: wq+wv over wq or wv alone).",
                   f"Best: {best} ({spread(loss[best], '{:.3f}')}); wq+wv {spread(loss['wq,wv'], '{:.3f}')} vs wq "
                   f"{spread(loss['wq'], '{:.3f}')} and wv {spread(loss['wv'], '{:.3f}')}.",
                   verdict, details, ["lora_targets.svg"], "which_matrices")


def main(argv=None):
    run_alone("which_matrices", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
