"""rsLoRA (Kalajdzievski 2023): under alpha / r a larger rank learns no better (the update's scale
shrinks faster than B·A grows), while alpha / sqrt(r) keeps larger ranks improving.

At the demo's best learning rate (lab/sweeps.py, tuned at r = 16), every seed, on the sweep task, three
rules that all give scale 1 at r = 16 (so r = 16 is the demo's own runs for all three):
  alpha = r             scale 1 at every rank (MiniMind2: no scaling; lab/rank_table.py's runs)
  alpha / r             alpha = 16 fixed: scale 16 / r (Hu et al.; lab/alpha_scaling.py's runs)
  rsLoRA                alpha = 4 fixed: scale 4 / sqrt(r) (`python -m lab.train_variant --variant rslora`)
at ranks 4, 16 and 64.

Rule (set before the run): holds if rsLoRA at r = 64 ends below rsLoRA at r = 16 and below alpha / r at
r = 64, both with the ranges over seeds apart; with a caveat if only the first (larger ranks improve,
but alpha / r does as well); does not hold if rsLoRA's r = 64 does not end below its r = 16.

    python -m lab.rslora
"""
import sys

from lab import sweeps
from lab.alpha_scaling import ALPHA
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, below, loss_spread, mean, run_alone, table
from plot import line_chart
from plumbing.errors import run_main
from plumbing.flags import LORA_RANK

TITLE = "rsLoRA: alpha / sqrt(r) keeps larger ranks learning"
CLAIM = "Under alpha / r larger ranks stop paying off; scaling by alpha / sqrt(r) lets them keep improving."
SOURCE = "paper: Kalajdzievski 2023"
RANKS = tuple(sorted({4, LORA_RANK, 64}))
RS_ALPHA = LORA_RANK ** 0.5  # scale 1 at the demo's rank, as the other two rules
RULES = {  # label -> the settings at rank r (at the demo's rank all three are scale 1: its runs for every rule)
    "alpha = r (scale 1)": lambda r: dict(lora_rank=r),
    f"alpha / r, alpha = {ALPHA}": lambda r: dict(lora_rank=r, lora_alpha=ALPHA),
    f"rsLoRA alpha / sqrt(r), alpha = {RS_ALPHA:g}": lambda r: dict(lora_rank=r, lora_alpha=RS_ALPHA, variant="rslora"),
}
RULE = (f"at the learning rate tuned at r = {LORA_RANK}: holds if rsLoRA at r = 64 ends below rsLoRA at r = {LORA_RANK} and "
        f"below alpha / r at r = 64, ranges over seeds apart; with a caveat if only below its own r = {LORA_RANK}; does not "
        "hold otherwise.")


def verdict(rs16: list, rs64: list, over_r64: list) -> str:
    if not below(rs64, rs16):
        return FAILS
    return HOLDS if below(rs64, over_r64) else CAVEAT


def run(lab) -> Finding:
    demo = sweeps.sweep(lab, sweeps.DEMO)
    configs = [(rule, r, s) for rule in RULES for r in RANKS if r != LORA_RANK for s in lab.seeds]
    made = lab.train_all([lab.lora_job(lab.sweep_task(), learning_rate=demo.best, seed=s, **RULES[rule](r))
                          for rule, r, s in configs])
    loss = {(rule, r): [run.final() for (q, r2, _), run in zip(configs, made) if (q, r2) == (rule, r)]
            for rule in RULES for r in RANKS if r != LORA_RANK}
    for rule in RULES:
        loss[rule, LORA_RANK] = demo.at_best
    rs, over_r = list(RULES)[2], list(RULES)[1]
    line_chart({rule: [(r, mean(loss[rule, r])) for r in RANKS] for rule in RULES}, lab.figure("lora_rslora.svg"),
               f"Validation loss after the sweep task vs rank, by scaling rule (learning rate {demo.best:g})", "LoRA rank r",
               "final validation loss", log_x=True, x_ticks=list(RANKS),
               spread={rule: [(r, min(loss[rule, r]), max(loss[rule, r])) for r in RANKS] for rule in RULES})
    rows = [[f"r={r}", *(loss_spread(loss[rule, r]) for rule in RULES)] for r in RANKS]
    details = (f"Sweep task, seeds {', '.join(map(str, lab.seeds))}, the demo's LoRA at {demo.best:g}; final validation loss "
               "(mean, range):\n\n" + table(["rank", *RULES], rows)
               + "\n\nB·A·x sums r terms that are not all aligned, so it grows about like sqrt(r): alpha / r shrinks it "
               "faster than it grows, alpha / sqrt(r) keeps its size steady, and alpha = r lets it grow with r (which, at "
               f"a learning rate tuned at r = {LORA_RANK}, is also a larger step).")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"rsLoRA: r={LORA_RANK} {loss_spread(loss[rs, LORA_RANK])}, r=64 {loss_spread(loss[rs, 64])}; alpha / r at "
                   f"r=64 {loss_spread(loss[over_r, 64])}.", [("", verdict(loss[rs, LORA_RANK], loss[rs, 64], loss[over_r, 64]))],
                   details, ["lora_rslora.svg"], "rslora")


def main(argv=None):
    run_alone("rslora", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
