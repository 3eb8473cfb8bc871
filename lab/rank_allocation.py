"""Rank by layer importance (002 §七 1; AdaLoRA, Zhang et al. 2023): at a small budget of trainable
parameters, rank spread over the matrices by their importance beats the same rank everywhere.

Importance here is the SVD energy of a short full fine-tuning's update (not AdaLoRA's sensitivity
scores): full fine-tuning on the sweep task at its best learning rate (lab/sweeps.py), seed 1337, gives
ΔW = W_after - W_before for each matrix LoRA adapts (the demo's targets: every Linear and the tied
embedding). Each direction k of a matrix l is worth its energy σ²_{l,k} and costs in_l + out_l
parameters (a row of A and a column of B); the budget of uniform rank 4 goes, one direction at a time,
to the direction worth the most per parameter (greedy water-filling, every matrix at least rank 1).
The pattern (allocate()) is written as a --rank_pattern file, and LoRA trains with it on the sweep task
beside uniform rank 4, each at the demo's best learning rate, every seed; the same parameters within 10%.

Rule (set before the run):
  holds if the allocated ranks' validation loss is below uniform rank 4's, the ranges over seeds apart;
  with a caveat if below in the mean only; does not hold otherwise

    python -m lab.rank_allocation
"""
import json
import sys

import torch

from formats.checkpoint import read_checkpoint
from lab import sweeps
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, below, loss_spread, mean, run_alone, table
from plot import bar_chart
from plumbing.atomic import atomic_write_text
from plumbing.errors import run_main
from plumbing.flags import LORA_TARGETS

TITLE = "Rank by importance beats uniform rank at a small budget"
CLAIM = "At a small parameter budget, LoRA rank allocated to the matrices by importance beats the same rank everywhere."
SOURCE = "002 §七 1 根据层的重要性动态分配不同的秩; Zhang et al. 2023 (AdaLoRA)"
RANK = 4  # the budget: this rank on every adapted matrix
RULE = (f"Holds if LoRA with the ranks allocated by the energy of full fine-tuning's update reaches a validation loss below "
        f"uniform rank {RANK}'s at the same parameter budget, the ranges over seeds apart; with a caveat if below in the "
        "mean only; does not hold otherwise.")


def verdict(allocated: list, uniform: list) -> str:
    """allocated, uniform: validation losses over seeds."""
    return HOLDS if below(allocated, uniform) else CAVEAT if mean(allocated) < mean(uniform) else FAILS


def allocate(deltas: dict, budget: int) -> dict:
    """{matrix name: rank} spending `budget` parameters (each rank costs in + out of its matrix) on the directions
    of the largest energy per parameter, every matrix at least rank 1: deltas {name: ΔW (out, in)}."""
    energy = {name: (torch.linalg.svdvals(d.float()) ** 2).tolist() for name, d in deltas.items()}
    cost = {name: sum(d.shape) for name, d in deltas.items()}
    ranks = {name: 1 for name in deltas}
    spent = sum(cost.values())
    while True:
        open_ = [n for n in deltas if ranks[n] < len(energy[n]) and spent + cost[n] <= budget]
        if not open_:
            return ranks
        best = max(open_, key=lambda n: energy[n][ranks[n]] / cost[n])  # the next direction's worth per parameter
        ranks[best] += 1
        spent += cost[best]


def update_of(after, before, names) -> dict:
    """{LoRA layer name: ΔW} from two checkpoints (the output layer: the tied embedding matrix)."""
    a, b = read_checkpoint(after), read_checkpoint(before)
    return {name: (a[f"{name}.weight"] - b[f"{name}.weight"]).float() for name in names}


def run(lab) -> Finding:
    demo, full = sweeps.sweep_all(lab, [sweeps.DEMO, sweeps.FULL])
    model, _ = lab.load(lab.base()["sft"])
    targets = LORA_TARGETS.split(",")
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in targets]
    shapes = {n: tuple(model.get_submodule(n).weight.shape) for n in names}
    budget = sum(RANK * sum(shape) for shape in shapes.values())
    ranks = allocate(update_of(full.best_runs[0].weights, lab.base()["sft"], names), budget)
    pattern = {name: r for name, r in ranks.items() if r != RANK}
    path = lab.out / "data" / "rank_pattern.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(pattern, indent=1, sort_keys=True) + "\n")
    jobs = [lab.lora_job(lab.sweep_task(), learning_rate=demo.best, lora_rank=RANK, seed=s, **extra)
            for extra in ({}, {"rank_pattern": str(path)}) for s in lab.seeds]
    made = lab.train_all(jobs)
    k = len(lab.seeds)
    uniform, allocated = [r.final() for r in made[:k]], [r.final() for r in made[k:]]
    spent = sum(ranks[n] * sum(shapes[n]) for n in names)
    by_kind = {}
    for name in names:
        by_kind.setdefault(name.rsplit(".", 1)[-1], []).append(ranks[name])
    start = demo.best_runs[0].curve()[0][1]
    bar_chart({"uniform rank 4": (mean(uniform), min(uniform), max(uniform)),
               "ranks by importance": (mean(allocated), min(allocated), max(allocated))},
              lab.figure("lora_rank_allocation.svg"), f"The same budget ({budget:,} parameters), spread two ways",
              "validation loss after the sweep task (mean; line: range over seeds)", zero=False)
    details = (f"The budget: rank {RANK} on each of the {len(names)} adapted matrices, {budget:,} parameters; the "
               f"allocation spends {spent:,} ({spent / budget:.0%}). Ranks by matrix kind, layer by layer (from the "
               f"energy of full fine-tuning's update at {full.best:g}, seed {lab.seeds[0]}):\n\n"
               + table(["matrix", "ranks (layer 0, 1, ...)"], [[kind, ", ".join(map(str, r))] for kind, r in by_kind.items()])
               + f"\n\nSweep task at the demo's best rate {demo.best:g}, every seed (the SFT model: {start:.3f}): uniform "
               f"{loss_spread(uniform)}, allocated {loss_spread(allocated)}. The pattern file is the one train_lora.py "
               "--rank_pattern reads; the adapter records each layer's rank (docs/lora.md).")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"Validation loss: allocated {loss_spread(allocated)} vs uniform rank {RANK} {loss_spread(uniform)}, "
                   f"{spent:,} vs {budget:,} parameters.", [("", verdict(allocated, uniform))], details,
                   ["lora_rank_allocation.svg"], "rank_allocation")


def main(argv=None):
    run_alone("rank_allocation", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
