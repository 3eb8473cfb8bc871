"""Which matrices to adapt (001, 技术原理, after Hu et al. 2021, Table 5): at the same number of trainable
parameters, wq and wv together beat wq or wv alone, and spreading a small rank over more kinds of
matrix beats a large rank on few.

Five target sets on the sweep task, each at the rank that brings its adapter nearest the budget of
20,480 trainable parameters (wq alone at r = 20 on the demo model), each at its own best learning rate
(lab/sweeps.py, LoRA+ 16 as the demo), every seed. The demo model has 4 key/value heads for 4 query
heads, so its wk and wv are square like wq; MiniMind2's have 2 for 8 (grouped-query attention), which
changes what an adapter on them costs (below).

Rule (set before the run), one verdict per half:
  wq+wv beats wq or wv alone     holds if wq,wv ends below both wq and wv, ranges over seeds apart; does
                                 not hold otherwise
  more kinds at a lower rank     holds if every Linear (rank 2) ends below wq,wv (rank 10), ranges
                                 apart; does not hold otherwise

    python -m lab.which_matrices
"""
import sys

import torch

from lab import sweeps
from lab.lab import FAILS, HOLDS, Finding, below, loss_spread, mean, run_alone, table
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from model.model_lora import apply_lora, mark_only_lora_as_trainable
from plot import bar_chart
from plumbing.errors import run_main

TITLE = "Which matrices"
CLAIM = ("At the same parameter budget, adapting more kinds of matrix at a lower rank beats a higher rank on fewer; wq "
         "and wv together beat either alone.")
SOURCE = "001 技术原理; paper: Hu et al. 2021"
RULE = ("each target set at the rank nearest 20,480 trainable parameters and at its own best learning rate: wq+wv holds if "
        "it ends below both wq and wv, ranges over seeds apart, else does not hold; more kinds at a lower rank holds if every "
        "Linear ends below wq,wv, ranges apart, else does not hold.")
TARGETS = {"wq": "wq", "wv": "wv", "wq,wv": "wq,wv", "every Linear": sweeps.EVERY_LINEAR,
           "every Linear + embedding": sweeps.EVERY_LINEAR + ",output"}
BUDGET = 20_480


def verdict(loss: dict) -> list:
    """loss: {target set: [final validation loss per seed]}."""
    pair = below(loss["wq,wv"], loss["wq"]) and below(loss["wq,wv"], loss["wv"])
    return [("wq+wv beats wq or wv alone", HOLDS if pair else FAILS),
            ("more kinds at a lower rank", HOLDS if below(loss["every Linear"], loss["wq,wv"]) else FAILS)]


def adapter_size(config: LMConfig, targets: str, rank: int) -> int:
    with torch.device("meta"):
        model = MiniMindLM(config)
    apply_lora(model, rank, target_modules=targets.split(","))
    mark_only_lora_as_trainable(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def methods(config, budget) -> dict:
    """{target set: Method} at the rank nearest the budget."""
    out = {}
    for name, targets in TARGETS.items():
        rank = max(1, round(budget / adapter_size(config, targets, 1)))
        out[name] = sweeps.lora(f"{name} (r={rank})", 4e-3, lora_targets=targets, lora_rank=rank)
    return out


def run(lab) -> Finding:
    config = lab.load(lab.base()["sft"])[0].config
    chosen = methods(config, 2_000 if lab.quick else BUDGET)
    found = dict(zip(chosen, sweeps.sweep_all(lab, list(chosen.values()))))
    loss = {name: s.at_best for name, s in found.items()}
    rows = [[name, m.settings["lora_rank"], f"{adapter_size(config, m.settings['lora_targets'], m.settings['lora_rank']):,}",
             found[name].describe(), loss_spread(loss[name])] for name, m in chosen.items()]
    bar_chart({m.label: (mean(loss[n]), min(loss[n]), max(loss[n])) for n, m in chosen.items()},
              lab.figure("lora_targets.svg"), f"Validation loss by adapted matrices, ~{BUDGET:,} trainable parameters each",
              "final validation loss at each one's best rate (mean; line: range over seeds)", zero=False)
    small = LMConfig(dim=512, n_layers=8, n_heads=8, n_kv_heads=2, vocab_size=6400)
    gqa = {t: adapter_size(small, t, 1) // small.n_layers for t in ("wq", "wk", "wv")}
    best = min(loss, key=lambda n: mean(loss[n]))
    details = (f"Sweep task, seeds {', '.join(map(str, lab.seeds))}, LoRA+ 16; final validation loss (mean, range) at each "
               "set's own best rate:\n\n" + table(["targets", "rank", "trainable", "best learning rate", "validation loss"], rows)
               + f"\n\nGrouped-query attention: in MiniMind2-Small (8 query heads, 2 key/value heads, dim 512) wq is "
               f"512 x 512 but wk and wv are 128 x 512, so a rank-1 adapter costs {gqa['wq']:,} parameters on wq and "
               f"{gqa['wk']:,} on wk or wv, and each key/value head's update is shared by the 4 query heads that read it. "
               "At a fixed budget, wk and wv therefore take a higher rank than wq. The demo model has no grouping (4 and "
               "4), so its sets compare matrices of one shape.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"Best: {best} ({loss_spread(loss[best])}); wq+wv {loss_spread(loss['wq,wv'])} vs wq "
                   f"{loss_spread(loss['wq'])} and wv {loss_spread(loss['wv'])}; every Linear {loss_spread(loss['every Linear'])}.",
                   verdict(loss), details, ["lora_targets.svg"], "which_matrices")


def main(argv=None):
    run_alone("which_matrices", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
