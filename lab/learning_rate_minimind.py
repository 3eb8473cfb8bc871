"""LoRA's learning rate should be 3-5x full fine-tuning's (002 §六.3), judged on lab/learning_rate.py's
sweeps (the same runs: plain LoRA's best rate over full fine-tuning's, each inside its grid).

Rule (set before the run): holds if the ratio lies in 3-5 and both best rates are inside their grids;
with a caveat if within one grid step (2x) of that band, or in it with a best rate at its grid's edge;
does not hold otherwise.

    python -m lab.learning_rate_minimind
"""
import sys

from lab.lab import Finding, run_alone
from lab.learning_rate import details, rate_sweeps, ratio_verdict
from plumbing.errors import run_main

TITLE = "Learning rate: 3-5x full fine-tuning's"
CLAIM = "Use a higher learning rate than full fine-tuning: 3-5 times as high."
SOURCE = "002 §六.3 训练技巧"
BAND = (3, 5)
RULE = (f"with r = plain LoRA's best rate / full fine-tuning's (lab/learning_rate.py's sweeps): holds if {BAND[0]} <= r <= "
        f"{BAND[1]}; with a caveat if within one grid step (2x) of that band, or in it with a best rate at its grid's "
        "edge; does not hold otherwise.")


def verdict(ratio: float, inside: bool) -> str:
    return ratio_verdict(ratio, BAND, inside)


def run(lab) -> Finding:
    plain, demo, full = rate_sweeps(lab)
    ratio = plain.best / full.best
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"Best learning rate: plain LoRA {plain.describe()}, full fine-tuning {full.describe()}: {ratio:g}x.",
                   [("", verdict(ratio, plain.inside and full.inside))], details(lab, plain, demo, full),
                   ["lora_learning_rate.svg"], "learning_rate_minimind")


def main(argv=None):
    run_alone("learning_rate_minimind", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
