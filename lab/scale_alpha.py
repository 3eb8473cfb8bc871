"""The update is scaled by alpha, not by alpha / r (004's LoRA code, Step 2: W x + alpha·B(A x), alpha = 32).

At rank 16, 004's rule gives scale 32 where the demo's alpha / r (alpha = r) gives scale 1. With Adam,
the scale multiplies how far B·A moves per step, so a scale-32 adapter at the demo's learning rate takes
32x larger steps; compared fairly, each is trained at its own best learning rate (lab/sweeps.py), the
demo's LoRA (LoRA+ 16) with --lora_alpha 512 (scale 512 / 16 = 32), every seed, on the sweep task.

Rule (set before the run): holds if scale 32 at its best rate ends within noise of scale 1 at its best,
or below (ranges over seeds overlap, or below); does not hold if above, ranges apart.

    python -m lab.scale_alpha
"""
import sys

from lab import sweeps
from lab.lab import FAILS, HOLDS, Finding, below, compare, loss_spread, run_alone
from plot import line_chart
from plumbing.errors import run_main
from plumbing.flags import LORA_RANK

TITLE = "The scale is alpha, not alpha / r"
CLAIM = "Scale the adapter's output by alpha itself (alpha = 32 in the example), not by alpha / r."
SOURCE = "004 §2, Step 2 (its code)"
SCALE = 32  # 004's alpha, used as the scale itself
RULE = (f"each at its own best learning rate: holds if scale {SCALE} (alpha used as the scale) ends within noise of scale 1 "
        "(the demo's alpha / r with alpha = r) or below; does not hold if above, ranges over seeds apart.")
SCALE_ALPHA = sweeps.lora(f"scale {SCALE} (alpha = {SCALE}, not divided by r)", 1.25e-4, lora_alpha=SCALE * LORA_RANK)


def verdict(scaled: list, demo: list) -> str:
    return FAILS if below(demo, scaled) else HOLDS


def run(lab) -> Finding:
    demo, scaled = sweeps.sweep_all(lab, [sweeps.DEMO, SCALE_ALPHA])
    series, spread = sweeps.sweep_series([demo, scaled])
    line_chart(series, lab.figure("lora_scale_alpha.svg"), f"Scale 1 (alpha / r, alpha = r) and scale {SCALE} (alpha alone)",
               "learning rate", "final validation loss", log_x=True, spread=spread)
    details = (f"Sweep task, seeds {', '.join(map(str, lab.seeds))}, rank {LORA_RANK}: scale 1 {demo.describe()}: "
               f"{loss_spread(demo.at_best)}; scale {SCALE} {scaled.describe()}: {loss_spread(scaled.at_best)} "
               f"({compare(scaled.at_best, demo.at_best)}). With Adam the scale multiplies how far B·A moves per step, so "
               "a scale of alpha alone moves the best learning rate by the factor that alpha / r divides out, and with "
               "it every change of rank changes the best learning rate.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"At each one's best rate: scale {SCALE} {loss_spread(scaled.at_best)} ({scaled.best:g}) vs scale 1 "
                   f"{loss_spread(demo.at_best)} ({demo.best:g}): {compare(scaled.at_best, demo.at_best)}.",
                   [("", verdict(scaled.at_best, demo.at_best))], details, ["lora_scale_alpha.svg"], "scale_alpha")


def main(argv=None):
    run_alone("scale_alpha", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
