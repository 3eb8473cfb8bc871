""""Set alpha to 1-2 times the rank" (000 §4.2; its §4.1 configurations use alpha = 2r).

The demo's LoRA (rank 16, LoRA+ 16) at its best learning rate (lab/sweeps.py, found with alpha = r)
with alpha = 8, 16, 32 and 64 (0.5, 1, 2 and 4 times r), every seed, on the sweep task. With Adam,
alpha / r multiplies how far B·A moves per step, so at a fixed learning rate alpha acts as a second
learning rate: the claim is read as "keep your learning rate, pick alpha in r..2r".

Rule (set before the run): holds if alpha = r and alpha = 2r are both within noise of the best alpha
(ranges over seeds overlap, or one is the best); with a caveat if only one of them is; does not hold
if neither.

    python -m lab.alpha_choice
"""
import sys

from lab import sweeps
from lab.lab import Finding, below, loss_spread, mean, run_alone, table, verdict_of
from plot import line_chart
from plumbing.errors import run_main
from plumbing.flags import LORA_RANK

TITLE = "alpha = 1-2x r"
CLAIM = "Set alpha to one or two times the rank."
SOURCE = "000 §4.2 训练技巧, §4.1"
MULTIPLES = (0.5, 1, 2, 4)  # alpha / r
RULE = ("holds if alpha = r and alpha = 2r are both within noise of the best of alpha = 0.5r, r, 2r, 4r (at the learning "
        "rate tuned with alpha = r); with a caveat if only one is; does not hold if neither.")


def verdict(loss: dict) -> str:
    """loss: {alpha / r: [final validation loss per seed]} with 1 and 2 among the keys."""
    best = min(loss, key=lambda m: mean(loss[m]))
    return verdict_of(sum(not below(loss[best], loss[m]) for m in (1, 2)), 2)


def run(lab) -> Finding:
    demo = sweeps.sweep(lab, sweeps.DEMO)
    made = lab.train_all([lab.lora_job(lab.sweep_task(), learning_rate=demo.best, lora_alpha=m * LORA_RANK, seed=s)
                          for m in MULTIPLES for s in lab.seeds])  # alpha = r: the demo's sweep's runs again
    n = len(lab.seeds)
    loss = {m: [r.final() for r in made[i * n:(i + 1) * n]] for i, m in enumerate(MULTIPLES)}
    line_chart({"LoRA r=16": [(m, mean(v)) for m, v in loss.items()]}, lab.figure("lora_alpha_choice.svg"),
               f"Validation loss after the sweep task vs alpha / r (learning rate {demo.best:g})", "alpha / r",
               "final validation loss", log_x=True, x_ticks=list(MULTIPLES),
               spread={"LoRA r=16": [(m, min(v), max(v)) for m, v in loss.items()]})
    best = min(loss, key=lambda m: mean(loss[m]))
    rows = [[f"{m * LORA_RANK:g} ({m:g}r)", f"{m:g}", loss_spread(v)] for m, v in loss.items()]
    details = (f"Sweep task, seeds {', '.join(map(str, lab.seeds))}, rank {LORA_RANK}, learning rate {demo.best:g} (the best "
               "with alpha = r); final validation loss (mean, range):\n\n" + table(["alpha", "scale alpha / r", "validation loss"], rows)
               + "\n\nalpha only rescales B·A, so with Adam (whose steps are about the learning rate whatever the "
               "gradient's size) it moves the update as a learning rate would: a best alpha above r says the learning "
               "rate tuned at alpha = r was still on the small side for B·A, and the two are one knob.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"Best alpha = {best * LORA_RANK:g} ({best:g}r): {loss_spread(loss[best])}; alpha = r {loss_spread(loss[1])}, "
                   f"alpha = 2r {loss_spread(loss[2])}.", [("", verdict(loss))], details, ["lora_alpha_choice.svg"],
                   "alpha_choice")


def main(argv=None):
    run_alone("alpha_choice", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
