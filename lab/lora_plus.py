"""LoRA+ (Hayou et al. 2024; 000 §5.1): B should learn faster than A; a ratio lr_B / lr_A of about 16
trains better than plain LoRA in the same steps.

The demo's LoRA (ratio 16) against plain LoRA (ratio 1), each at its own best learning rate from
lab/learning_rate.py's sweeps, every seed; and both at the same A rate (the demo's best), which is
where LoRA+'s paper measures its gain: plain LoRA there is LoRA+ with B's rate cut 16x.

Rule (set before the run): holds if LoRA+ at its best rate ends below plain LoRA at its best, the
ranges over seeds apart; with a caveat if they overlap there but LoRA+ is below plain LoRA at the same
A rate (ranges apart): it saves a learning-rate search, not loss; does not hold otherwise.

    python -m lab.lora_plus
"""
import sys

from lab import sweeps
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, below, compare, loss_spread, run_alone
from plot import line_chart
from plumbing.errors import run_main

TITLE = "LoRA+: B learns faster"
CLAIM = "Giving B a larger learning rate than A (LoRA+, ratio about 16) trains better than plain LoRA in the same steps."
SOURCE = "000 §5.1 LoRA+; paper: Hayou et al. 2024"
RULE = ("holds if LoRA+ (ratio 16) at its best learning rate ends below plain LoRA at its own best, ranges over seeds "
        "apart; with a caveat if they overlap there but LoRA+ is below plain LoRA at the same A rate; does not hold "
        "otherwise.")


def verdict(plus_best: list, plain_best: list, plus_shared: list, plain_shared: list) -> str:
    if below(plus_best, plain_best):
        return HOLDS
    return CAVEAT if below(plus_shared, plain_shared) else FAILS


def run(lab) -> Finding:
    plain, demo = sweeps.sweep_all(lab, [sweeps.PLAIN, sweeps.DEMO])
    shared = lab.train_all([sweeps.PLAIN.job(lab, lab.sweep_task(), demo.best, s) for s in lab.seeds])
    plain_shared = [r.final() for r in shared]
    series, spread = sweeps.sweep_series([plain, demo])
    line_chart(series, lab.figure("lora_plus.svg"), "LoRA+ (B at 16x A's rate) and plain LoRA: loss vs A's learning rate",
               "learning rate of A", "final validation loss", log_x=True, spread=spread)
    details = (f"Sweep task, seeds of lab/learning_rate.py's sweeps. At each one's best rate: LoRA+ {demo.describe()}: "
               f"{loss_spread(demo.at_best)}; plain LoRA {plain.describe()}: {loss_spread(plain.at_best)} "
               f"({compare(demo.at_best, plain.at_best)}). At the same A rate {demo.best:g}: LoRA+ {loss_spread(demo.at_best)}, "
               f"plain {loss_spread(plain_shared)} ({compare(demo.at_best, plain_shared)}).\n\n"
               "Why B: it starts at zero while A starts random, and with Adam both move by about the learning rate per "
               "step; B is the factor that has to grow from nothing, so a larger step for it makes B·A grow sooner. Plain "
               "LoRA gets there too with a larger rate for both factors, which is what each one's own best rate gives it.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"At each one's best rate: LoRA+ {loss_spread(demo.at_best)} vs plain {loss_spread(plain.at_best)} "
                   f"({compare(demo.at_best, plain.at_best)}); at the same A rate {demo.best:g}: plain "
                   f"{loss_spread(plain_shared)} ({compare(demo.at_best, plain_shared)} for LoRA+).",
                   [("", verdict(demo.at_best, plain.at_best, demo.at_best, plain_shared))], details, ["lora_plus.svg"],
                   "lora_plus")


def main(argv=None):
    run_alone("lora_plus", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
