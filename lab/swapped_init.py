"""Swapping the initialisation (A = 0, B random, instead of A random, B = 0) makes no difference: the
LoRA author's answer quoted in 001 (LoRA 整体架构, A 和 B 的初始化方法).

Both start at the base (lab/zero_start.py). They differ in which factor gets the first gradient
(dL/dB = g·(Ax)ᵀ, dL/dA = Bᵀ·g·xᵀ): with B = 0 only B moves at first, with A = 0 only A. The author
compared them with one learning rate for both factors, so this does too: plain LoRA (--lora_plus_ratio
1) with each initialisation (`python -m lab.train_variant --variant swapped`) at its own best learning
rate (lab/sweeps.py), every seed. Beside it, at the demo's LoRA+ (B at 16x A's rate, which favours
the init that moves B first), both at the demo's best rate.

Rule (set before the run): holds if the two end within noise of each other at their best rates (ranges
over seeds overlap); does not hold if the ranges are apart (either way).

    python -m lab.swapped_init
"""
import sys

from lab import sweeps
from lab.lab import FAILS, HOLDS, Finding, compare, loss_spread, run_alone
from plot import line_chart
from plumbing.errors import run_main

TITLE = "Swapped initialisation makes no difference"
CLAIM = "Starting A at zero and B at random instead makes no noticeable difference."
SOURCE = "001 LoRA 整体架构 (A 和 B 的初始化方法, the LoRA author's reply)"
RULE = ("with plain LoRA (one learning rate for A and B), each initialisation at its own best rate: holds if they end "
        "within noise of each other (ranges over seeds overlap); does not hold if the ranges are apart.")
SWAPPED = sweeps.lora("swapped: A = 0, B random (plain LoRA)", 1.6e-2, variant="swapped", lora_plus_ratio=1)


def verdict(standard: list, swapped: list) -> str:
    return HOLDS if compare(standard, swapped) == "within noise" else FAILS


def run(lab) -> Finding:
    standard, swapped, demo = sweeps.sweep_all(lab, [sweeps.PLAIN, SWAPPED, sweeps.DEMO])
    with_plus = [r.final() for r in lab.train_all([lab.lora_job(lab.sweep_task(), variant="swapped", learning_rate=demo.best,
                                                                seed=s) for s in lab.seeds])]
    series, spread = sweeps.sweep_series([standard, swapped])
    line_chart(series, lab.figure("lora_swapped_init.svg"), "Standard (B = 0) and swapped (A = 0) initialisation, plain LoRA",
               "learning rate", "final validation loss", log_x=True, spread=spread)
    details = (f"Sweep task, plain LoRA, each at its own best rate: standard {standard.describe()}: "
               f"{loss_spread(standard.at_best)}; swapped {swapped.describe()}: {loss_spread(swapped.at_best)} "
               f"({compare(swapped.at_best, standard.at_best)}).\n\nWith the demo's LoRA+ (B's rate 16x A's) at its best "
               f"rate {demo.best:g}: standard {loss_spread(demo.at_best)}, swapped {loss_spread(with_plus)} "
               f"({compare(with_plus, demo.at_best)}). LoRA+ gives the larger step to B, which in the swapped start is "
               "the factor that is already random, while A has to grow from zero at the small rate: with LoRA+ the two "
               "starts are not symmetric, which is why the claim is judged with one rate for both factors.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"Plain LoRA at each one's best rate: standard {loss_spread(standard.at_best)}, swapped "
                   f"{loss_spread(swapped.at_best)} ({compare(swapped.at_best, standard.at_best)}); with LoRA+ 16 at one "
                   f"rate: {loss_spread(demo.at_best)} vs {loss_spread(with_plus)}.",
                   [("", verdict(standard.at_best, swapped.at_best))], details, ["lora_swapped_init.svg"], "swapped_init")


def main(argv=None):
    run_alone("swapped_init", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
