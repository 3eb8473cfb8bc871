"""Initialise A ~ N(0, 1/r) (003's LoRA code: A = randn / sqrt(rank), B = 0).

At rank 16 that A starts 12.5x larger than MiniMind2's normal(0, 0.02). With B = 0, B·A grows as fast
as B moves times A's size, so a larger A acts as a larger learning rate for B: compared at one rate
the two would differ for that reason alone. So each is trained at its own best learning rate
(lab/sweeps.py), plain LoRA (one rate for A and B, as the write-up's code), every seed, on the sweep
task (`python -m lab.train_variant --variant gauss_r`).

Rule (set before the run): holds if N(0, 1/r) ends within noise of MiniMind2's start or below it (ranges
over seeds overlap, or below); does not hold if above, the ranges apart.

    python -m lab.gauss_init
"""
import sys

from lab import sweeps
from lab.lab import FAILS, HOLDS, Finding, below, compare, loss_spread, run_alone
from plot import line_chart
from plumbing.errors import run_main

TITLE = "A ~ N(0, 1/r)"
CLAIM = "Initialise A from a normal distribution with variance 1/r (and B at zero)."
SOURCE = "003 lora代码实现"
RULE = ("plain LoRA, each initialisation at its own best learning rate: holds if A ~ N(0, 1/r) ends within noise of "
        "MiniMind2's N(0, 0.02^2) or below; does not hold if above, ranges over seeds apart.")
GAUSS_R = sweeps.lora("A ~ N(0, 1/r) (plain LoRA)", 2e-3, variant="gauss_r", lora_plus_ratio=1)


def verdict(candidate: list, standard: list) -> str:
    """An initialisation against MiniMind2's, each at its best rate: no worse beyond noise."""
    return FAILS if below(standard, candidate) else HOLDS


def init_finding(lab, method, title, claim, source, rule, module) -> Finding:
    """The comparison of one initialisation with MiniMind2's (plain LoRA, own best rates), as a Finding."""
    standard, other = sweeps.sweep_all(lab, [sweeps.PLAIN, method])
    series, spread = sweeps.sweep_series([standard, other])
    figure = f"lora_{module}.svg"
    line_chart(series, lab.figure(figure), f"{method.label.split(' (')[0]} against MiniMind2's A ~ N(0, 0.02^2)",
               "learning rate", "final validation loss", log_x=True, spread=spread)
    details = (f"Sweep task, plain LoRA, seeds {', '.join(map(str, lab.seeds))}. MiniMind2's start {standard.describe()}: "
               f"{loss_spread(standard.at_best)}; {method.label} {other.describe()}: {loss_spread(other.at_best)}. With B = 0, "
               "B·A grows as fast as B moves times A's size, so A's starting size and the learning rate are one knob: "
               f"here the best rates are {other.best:g} and {standard.best:g}.")
    return Finding(title, claim, source, rule,
                   f"At each one's best rate: {loss_spread(other.at_best)} against MiniMind2's {loss_spread(standard.at_best)} "
                   f"({compare(other.at_best, standard.at_best)}); its best rate {other.best:g}, MiniMind2's {standard.best:g}.",
                   [("", verdict(other.at_best, standard.at_best))], details, [figure], module)


def run(lab) -> Finding:
    return init_finding(lab, GAUSS_R, TITLE, CLAIM, SOURCE, RULE, "gauss_init")


def main(argv=None):
    run_alone("gauss_init", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
