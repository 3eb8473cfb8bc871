"""LoRA's learning rate is 10-100x that of full fine-tuning (000 §4.2; 002 §六.3 says 3-5x, which
lab/learning_rate_minimind.py judges on these same runs).

Learning-rate sweeps on the sweep task from the demo's SFT model (lab/sweeps.py), every rate at
every seed: plain LoRA (A and B at the same rate, as the rule of thumb assumes: --lora_plus_ratio 1)
and full fine-tuning (train_full_sft.py on the same data and steps); and, for reference, the demo's
LoRA (LoRA+: B at 16x the rate given, which is A's). Each best rate is the one with the lowest mean
final validation loss, checked to lie inside its grid (the grid grows until it does). The claim is
the ratio of plain LoRA's best rate to full fine-tuning's. The grids step by 2x, so a best rate is
known to a factor of 2 and the ratio to a factor of 2 either way.

Rule (set before the run): holds if the ratio lies in the claimed band and both best rates are inside
their grids; with a caveat if it lies within one grid step (2x) of the band, or in it but a best rate
is at its grid's edge; does not hold otherwise.

    python -m lab.learning_rate
"""
import sys

from lab import sweeps
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, loss_spread, run_alone, table
from plot import line_chart
from plumbing.errors import run_main

TITLE = "Learning rate: 10-100x full fine-tuning's"
CLAIM = "LoRA's learning rate should be 10-100 times that of full fine-tuning."
SOURCE = "000 §4.2 训练技巧"
BAND = (10, 100)
RULE = (f"with r = plain LoRA's best rate / full fine-tuning's (sweeps inside their grids): holds if {BAND[0]} <= r <= "
        f"{BAND[1]}; with a caveat if r is within one grid step (2x) of that band, or in it with a best rate at its "
        "grid's edge; does not hold otherwise.")


def ratio_verdict(ratio: float, band: tuple, inside: bool) -> str:
    """A ratio of best rates against a claimed band, with the grid's resolution (sweeps.GRID_STEP) as the margin."""
    if band[0] <= ratio <= band[1]:
        return HOLDS if inside else CAVEAT
    near = band[0] / sweeps.GRID_STEP <= ratio <= band[1] * sweeps.GRID_STEP
    return CAVEAT if near else FAILS


def verdict(ratio: float, inside: bool) -> str:
    return ratio_verdict(ratio, BAND, inside)


def rate_sweeps(lab) -> tuple:
    """(plain LoRA, the demo's LoRA, full fine-tuning): their sweeps, and the figure of all three."""
    plain, demo, full = sweeps.sweep_all(lab, [sweeps.PLAIN, sweeps.DEMO, sweeps.FULL])
    series, spread = sweeps.sweep_series([plain, demo, full])
    line_chart(series, lab.figure("lora_learning_rate.svg"), "Validation loss after the sweep task vs learning rate",
               "learning rate (A's for LoRA)", "final validation loss", log_x=True, spread=spread)
    return plain, demo, full


def details(lab, plain, demo, full) -> str:
    header, rows = sweeps.rate_table([plain, demo, full])
    return (f"Sweep task ({plain.best_runs[0].curve('loss')[-1][0]} steps), seeds {', '.join(map(str, lab.seeds))}; final "
            "validation loss, the mean over the seeds trained at each rate (their number in brackets). LoRA: rank 16 on "
            "every Linear + embedding; with LoRA+ the rate is A's and B's is 16x it; full: every weight:\n\n"
            + table(header, rows)
            + f"\n\nAt the best rates: plain LoRA {loss_spread(plain.at_best)}, the demo's LoRA {loss_spread(demo.at_best)}, "
            f"full fine-tuning {loss_spread(full.at_best)}. Why LoRA can want a larger rate: B starts at zero and the "
            "update is a product of two small factors, so one step moves the model less than the same step on W does."
            + (" LoRA+ gets there by raising B's rate alone, so its best rate for A is lower than plain LoRA's."
               if demo.best < plain.best else ""))


def run(lab) -> Finding:
    plain, demo, full = rate_sweeps(lab)
    ratio = plain.best / full.best
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"Best learning rate: plain LoRA {plain.describe()}, full fine-tuning {full.describe()}: {ratio:g}x "
                   f"(the demo's LoRA+: {demo.best:g} for A, {16 * demo.best:g} for B).",
                   [("", verdict(ratio, plain.inside and full.inside))], details(lab, plain, demo, full),
                   ["lora_learning_rate.svg"], "learning_rate")


def main(argv=None):
    run_alone("learning_rate", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
