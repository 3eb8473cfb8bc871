"""DoRA (Liu et al. 2024): splitting W into a magnitude and a direction, with LoRA on the direction only,
learns more than LoRA at the same rank, the gap largest at low rank.

On the sweep task (48 steps), every seed, at ranks 1, 4 and 16 (the demo's targets, LoRA+, alpha = r): LoRA
at the demo's best learning rate (lab/sweeps.py; the rank table's runs, lab/rank_table.py) and DoRA
(`train_lora.py --method dora`, model/lora_variants.py's DoRALinear) at its own best rate, swept at rank 16
the same way. DoRA trains one number more per output row of each adapted matrix (its magnitude), a few
percent more than LoRA at rank 16 and more at rank 1 (the table says how many).

Rule (set before the run), one verdict per half:
  beats LoRA at equal rank     holds if DoRA's validation loss is lower than LoRA's at every rank, the ranges
                               over seeds apart; with a caveat if lower at some rank and within noise at the
                               others; does not hold if lower at none
  the gap is largest at low    holds if LoRA's loss minus DoRA's (means) is largest at rank 1 and the ranges
  rank                         there are apart; with a caveat if largest at rank 1 only in the means; does not
                               hold otherwise

    python -m lab.dora
"""
import sys

from lab import sweeps
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, below, loss_spread, mean, run_alone, table
from lab.rank_table import RANKS as TABLE_RANKS
from plot import line_chart
from plumbing.errors import run_main

TITLE = "DoRA: magnitude and direction beat LoRA, most at low rank"
CLAIM = ("Splitting W into a magnitude and a direction, with LoRA on the direction, learns more than LoRA at equal rank; "
         "the gap is largest at low rank.")
SOURCE = "001 (PEFT's LoRA layer branches on use_dora); Liu et al. 2024, DoRA §4-5"
RANKS = (1, 4, 16)  # the rank table's (its LoRA runs are these): low, middle, the demo's
RULE = ("Beats LoRA at equal rank: holds if DoRA's validation loss is below LoRA's at every rank (ranges over seeds "
        "apart); with a caveat if below at some and within noise at the others; does not hold if below at none. The gap "
        "is largest at low rank: holds if LoRA's mean loss minus DoRA's is largest at rank 1 and the ranges there are "
        "apart; with a caveat if largest at rank 1 in the means only; does not hold otherwise.")
DORA = sweeps.lora("DoRA (r=16, the demo's targets, LoRA+)", 4e-3, method="dora")
assert set(RANKS) <= set(TABLE_RANKS)


def verdict(lora: dict, dora: dict) -> list:
    """lora, dora: {rank: [validation loss per seed]}, the same ranks."""
    ranks = sorted(lora)
    lower = [r for r in ranks if below(dora[r], lora[r])]
    higher = [r for r in ranks if below(lora[r], dora[r])]
    beats = HOLDS if len(lower) == len(ranks) else CAVEAT if lower and not higher else FAILS
    gap = {r: mean(lora[r]) - mean(dora[r]) for r in ranks}
    largest_low = max(ranks, key=gap.get) == ranks[0] and gap[ranks[0]] > 0
    low = HOLDS if largest_low and ranks[0] in lower else CAVEAT if largest_low else FAILS
    return [("beats LoRA at equal rank", beats), ("the gap is largest at low rank", low)]


def run(lab) -> Finding:
    demo, dora_sweep = sweeps.sweep_all(lab, [sweeps.DEMO, DORA])
    jobs = [(lab.lora_job(lab.sweep_task(), learning_rate=rate, lora_rank=r, seed=s, **extra))
            for rate, extra in ((demo.best, {}), (dora_sweep.best, {"method": "dora"})) for r in RANKS for s in lab.seeds]
    made = lab.train_all(jobs)
    k, n = len(lab.seeds), len(RANKS) * len(lab.seeds)
    lora = {r: [run.final() for run in made[i * k:(i + 1) * k]] for i, r in enumerate(RANKS)}
    dora = {r: [run.final() for run in made[n + i * k:n + (i + 1) * k]] for i, r in enumerate(RANKS)}
    start = demo.best_runs[0].curve()[0][1]
    trainable = {(name, r): sweeps.lora("", 0, lora_rank=r, **extra).trainable(lab)
                 for name, extra in (("LoRA", {}), ("DoRA", {"method": "dora"})) for r in RANKS}
    verdicts = verdict(lora, dora)
    rows = [[f"r={r}", f"{trainable['LoRA', r]:,}", loss_spread(lora[r]), f"{trainable['DoRA', r]:,}", loss_spread(dora[r]),
             f"{mean(lora[r]) - mean(dora[r]):+.3f}"] for r in RANKS]
    series = {"LoRA": [(r, mean(lora[r])) for r in RANKS], "DoRA": [(r, mean(dora[r])) for r in RANKS]}
    line_chart(series, lab.figure("lora_dora.svg"), "Validation loss after the sweep task: LoRA and DoRA at equal rank",
               "rank r", "validation loss (mean over seeds)", log_x=True, x_ticks=list(RANKS),
               spread={"LoRA": [(r, min(lora[r]), max(lora[r])) for r in RANKS],
                       "DoRA": [(r, min(dora[r]), max(dora[r])) for r in RANKS]},
               refs=[(start, "the SFT model (step 0)")])
    details = (f"Sweep task, seeds {', '.join(map(str, lab.seeds))}, each method at its own best learning rate (LoRA "
               f"{demo.describe()}, DoRA {dora_sweep.describe()}, swept at rank 16); trainable parameters and final "
               f"validation loss (mean, range; the SFT model: {start:.3f}):\n\n"
               + table(["rank", "LoRA: trainable", "LoRA: loss", "DoRA: trainable", "DoRA: loss", "LoRA - DoRA"], rows)
               + "\n\nDoRA's extra parameters are its magnitudes, one per output row of each adapted matrix; its extra "
               "cost per step is W + ΔW, built for the norm, the full matrix LoRA never builds.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   "Validation loss, LoRA vs DoRA: " + "; ".join(f"r={r}: {mean(lora[r]):.3f} vs {mean(dora[r]):.3f}"
                                                                 for r in RANKS) + ".",
                   verdicts, details, ["lora_dora.svg"], "dora")


def main(argv=None):
    run_alone("dora", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
