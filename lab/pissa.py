"""PiSSA converges faster than LoRA's standard start (Meng et al. 2024): A and B start on W's top
singular directions, and W keeps the rest.

PiSSA's adapter starts large (W's principal part), the standard one at zero, so one learning rate
cannot suit both: each is trained at its own best rate (lab/sweeps.py), plain LoRA (one rate for A and
B, as the paper), every seed, on the sweep task (`python -m lab.train_variant --variant pissa`). Faster
convergence shows as a lower loss after the same 48 steps.

Rule (set before the run): holds if PiSSA ends below the standard start, the ranges over seeds apart;
does not hold otherwise (within noise included).

    python -m lab.pissa
"""
import sys

from lab import sweeps
from lab.lab import FAILS, HOLDS, Finding, below, compare, loss_spread, run_alone
from plot import line_chart
from plumbing.errors import run_main

TITLE = "PiSSA converges faster"
CLAIM = "Starting A and B on W's principal singular directions (PiSSA) converges faster than LoRA's standard start."
SOURCE = "paper: Meng et al. 2024"
RULE = ("plain LoRA, each at its own best learning rate: holds if PiSSA ends below the standard start, ranges over seeds "
        "apart; does not hold otherwise.")
PISSA = sweeps.lora("PiSSA (plain LoRA)", 2e-3, variant="pissa", lora_plus_ratio=1)


def verdict(pissa: list, standard: list) -> str:
    return HOLDS if below(pissa, standard) else FAILS


def run(lab) -> Finding:
    standard, pissa = sweeps.sweep_all(lab, [sweeps.PLAIN, PISSA])
    series, spread = sweeps.sweep_series([standard, pissa])
    line_chart(series, lab.figure("lora_pissa.svg"), "PiSSA and the standard start, plain LoRA", "learning rate",
               "final validation loss", log_x=True, spread=spread)
    seed0 = {"standard": standard.best_runs[0].curve("loss"), "PiSSA": pissa.best_runs[0].curve("loss")}
    details = (f"Sweep task, plain LoRA, seeds {', '.join(map(str, lab.seeds))}: standard {standard.describe()}: "
               f"{loss_spread(standard.at_best)}; PiSSA {pissa.describe()}: {loss_spread(pissa.at_best)} "
               f"({compare(pissa.at_best, standard.at_best)}). First logged training loss (seed {lab.seeds[0]}): standard "
               f"{seed0['standard'][0][1]:.3f}, PiSSA {seed0['PiSSA'][0][1]:.3f}.\n\nPiSSA's first steps move W's "
               "strongest directions, so its gradients are large at once; the standard start's B has to grow from zero.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"At each one's best rate: PiSSA {loss_spread(pissa.at_best)} vs standard {loss_spread(standard.at_best)} "
                   f"({compare(pissa.at_best, standard.at_best)}).",
                   [("", verdict(pissa.at_best, standard.at_best))], details, ["lora_pissa.svg"], "pissa")


def main(argv=None):
    run_alone("pissa", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
