"""Initialise A with kaiming_uniform(a=sqrt(5)) (004's LoRA code, Step 2; nn.Linear's default, which
PEFT keeps): A ~ uniform(-1/sqrt(in), 1/sqrt(in)), B = 0.

Measured as lab/gauss_init.py measures A ~ N(0, 1/r): plain LoRA with each initialisation at its own
best learning rate (lab/sweeps.py), every seed, on the sweep task
(`python -m lab.train_variant --variant kaiming`).

Rule (set before the run): holds if kaiming-uniform A ends within noise of MiniMind2's N(0, 0.02^2) start
or below it; does not hold if above, the ranges over seeds apart.

    python -m lab.kaiming_init
"""
import sys

from lab import gauss_init, sweeps
from lab.lab import Finding, run_alone
from plumbing.errors import run_main

TITLE = "Kaiming-uniform A"
CLAIM = "Initialise A with kaiming_uniform (and B at zero)."
SOURCE = "004 §2, Step 2 (its code)"
RULE = ("plain LoRA, each initialisation at its own best learning rate: holds if kaiming-uniform A ends within noise of "
        "MiniMind2's N(0, 0.02^2) or below; does not hold if above, ranges over seeds apart.")
KAIMING = sweeps.lora("A ~ kaiming_uniform (plain LoRA)", 8e-3, variant="kaiming", lora_plus_ratio=1)
verdict = gauss_init.verdict  # the same rule: no worse than MiniMind2's start beyond noise


def run(lab) -> Finding:
    return gauss_init.init_finding(lab, KAIMING, TITLE, CLAIM, SOURCE, RULE, "kaiming_init")


def main(argv=None):
    run_alone("kaiming_init", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
