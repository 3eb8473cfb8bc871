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
  beats LoRA at matched        the same as the first half, DoRA at rank r against LoRA at rank r + 1, which
  parameters                   trains at least as many parameters (24% more at r = 1, 2% more at r = 16): what
                               DoRA's magnitudes buy beyond their own parameter count
                               (added after the first run, which measured the first two halves, before its own)

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
        "apart; with a caveat if largest at rank 1 in the means only; does not hold otherwise. Beats LoRA at matched "
        "parameters: the first half's rule, DoRA at rank r against LoRA at rank r + 1 (at least as many parameters).")
DORA = sweeps.lora("DoRA (r=16, the demo's targets, LoRA+)", 4e-3, method="dora")
assert set(RANKS) <= set(TABLE_RANKS)


def beats(lora: dict, dora: dict) -> str:
    """DoRA below LoRA at every rank of `dora` (ranges apart), at some (and above at none), or at none."""
    lower = [r for r in dora if below(dora[r], lora[r])]
    higher = [r for r in dora if below(lora[r], dora[r])]
    return HOLDS if len(lower) == len(dora) else CAVEAT if lower and not higher else FAILS


def verdict(lora: dict, dora: dict, lora_next: dict) -> list:
    """lora, dora: {rank: [validation loss per seed]}, the same ranks; lora_next: {rank r: LoRA's losses at r + 1}."""
    ranks = sorted(lora)
    gap = {r: mean(lora[r]) - mean(dora[r]) for r in ranks}
    largest_low = max(ranks, key=gap.get) == ranks[0] and gap[ranks[0]] > 0
    low = HOLDS if largest_low and below(dora[ranks[0]], lora[ranks[0]]) else CAVEAT if largest_low else FAILS
    return [("beats LoRA at equal rank", beats(lora, dora)), ("the gap is largest at low rank", low),
            ("beats LoRA at matched parameters", beats(lora_next, dora))]


def run(lab) -> Finding:
    demo, dora_sweep = sweeps.sweep_all(lab, [sweeps.DEMO, DORA])
    configurations = [(demo.best, {}, r) for r in RANKS] + [(dora_sweep.best, {"method": "dora"}, r) for r in RANKS] + \
        [(demo.best, {}, r + 1) for r in RANKS]  # LoRA one rank up: at least DoRA's parameters
    made = lab.train_all([lab.lora_job(lab.sweep_task(), learning_rate=rate, lora_rank=r, seed=s, **extra)
                          for rate, extra, r in configurations for s in lab.seeds])
    k, n = len(lab.seeds), len(RANKS)
    losses = [[run.final() for run in made[i * k:(i + 1) * k]] for i in range(len(configurations))]
    lora, dora, lora_next = ({r: losses[part * n + i] for i, r in enumerate(RANKS)} for part in range(3))
    start = demo.best_runs[0].curve()[0][1]
    trainable = {(name, r): sweeps.lora("", 0, lora_rank=r, **extra).trainable(lab)
                 for name, extra in (("LoRA", {}), ("DoRA", {"method": "dora"})) for r in RANKS}
    trainable |= {("LoRA", r + 1): sweeps.lora("", 0, lora_rank=r + 1).trainable(lab) for r in RANKS}
    verdicts = verdict(lora, dora, lora_next)
    rows = [[f"r={r}", f"{trainable['LoRA', r]:,}", loss_spread(lora[r]), f"{trainable['DoRA', r]:,}", loss_spread(dora[r]),
             f"{trainable['LoRA', r + 1]:,}", loss_spread(lora_next[r])] for r in RANKS]
    series = {"LoRA": [(r, mean(lora[r])) for r in RANKS], "DoRA": [(r, mean(dora[r])) for r in RANKS],
              "LoRA one rank up (drawn at r)": [(r, mean(lora_next[r])) for r in RANKS]}
    line_chart(series, lab.figure("lora_dora.svg"), "Validation loss after the sweep task: LoRA and DoRA at equal rank",
               "rank r", "validation loss (mean over seeds)", log_x=True, x_ticks=list(RANKS),
               spread={"LoRA": [(r, min(lora[r]), max(lora[r])) for r in RANKS],
                       "DoRA": [(r, min(dora[r]), max(dora[r])) for r in RANKS]})  # the SFT model's 8.5 would flatten them
    details = (f"Sweep task, seeds {', '.join(map(str, lab.seeds))}, each method at its own best learning rate (LoRA "
               f"{demo.describe()}, DoRA {dora_sweep.describe()}, swept at rank 16); trainable parameters and final "
               f"validation loss (mean, range; the SFT model: {start:.3f}):\n\n"
               + table(["rank r", "LoRA: trainable", "LoRA: loss", "DoRA: trainable", "DoRA: loss", "LoRA at r + 1: trainable",
                        "LoRA at r + 1: loss"], rows)
               + "\n\nDoRA's extra parameters are its magnitudes, one per output row of each adapted matrix; its extra "
               "cost per step is W + ΔW, built for the norm, the full matrix LoRA never builds.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   "Validation loss, LoRA vs DoRA (LoRA one rank up): " + "; ".join(
                       f"r={r}: {mean(lora[r]):.3f} vs {mean(dora[r]):.3f} ({mean(lora_next[r]):.3f})" for r in RANKS) + ".",
                   verdicts, details, ["lora_dora.svg"], "dora")


def main(argv=None):
    run_alone("dora", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
