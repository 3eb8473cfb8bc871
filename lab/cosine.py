"""A cosine learning-rate schedule improves the result further (002 §六.3, 训练技巧).

The demo's LoRA (warm-up, then cosine decay to a tenth of the peak: training.get_lr) against the same
warm-up followed by a constant rate (`python -m lab.train_variant --lr_schedule constant`), each at its
own best peak rate (lab/sweeps.py: a constant rate spends more of the run at the peak, so its best peak
is lower), every seed, on the sweep task.

Rule (set before the run): holds if the cosine schedule ends below the constant one, the ranges over
seeds apart; does not hold otherwise (within noise included).

    python -m lab.cosine
"""
import sys

from lab import sweeps
from lab.lab import FAILS, HOLDS, Finding, below, compare, loss_spread, run_alone
from lab.train_variant import SCHEDULES
from plot import panels
from plumbing.errors import run_main
from plumbing.flags import STAGES

TITLE = "A cosine schedule helps"
CLAIM = "Using a cosine learning-rate schedule improves the result further."
SOURCE = "002 §六.3 训练技巧"
RULE = ("each schedule at its own best peak learning rate: holds if cosine decay ends below a constant rate, ranges over "
        "seeds apart; does not hold otherwise.")
CONSTANT = sweeps.lora("the demo's LoRA, constant rate after warm-up", 2e-3, lr_schedule="constant")


def verdict(cosine: list, constant: list) -> str:
    return HOLDS if below(cosine, constant) else FAILS


def run(lab) -> Finding:
    cosine, constant = sweeps.sweep_all(lab, [sweeps.DEMO, CONSTANT])
    steps = cosine.best_runs[0].curve("loss")[-1][0]
    warmup = STAGES["lora"]["warmup_iters"]  # train_lora.py's --warmup_iters
    shapes = {name: [(s, fn(s, steps, 1.0, warmup)) for s in range(steps)] for name, fn in SCHEDULES.items()}
    series, spread = sweeps.sweep_series([cosine, constant])
    panels([("line", dict(title="the two schedules (peak = 1)", series=shapes, x_label="optimizer step",
                          y_label="learning rate / peak", markers=False)),
            ("line", dict(title="validation loss vs peak rate", series=series, spread=spread, x_label="peak learning rate",
                          y_label="final validation loss", log_x=True))],
           lab.figure("lora_cosine.svg"), "Cosine decay against a constant learning rate, the demo's LoRA", columns=2, width=470)
    details = (f"Sweep task ({steps} steps, {warmup} of warm-up), seeds {', '.join(map(str, lab.seeds))}: cosine "
               f"{cosine.describe()}: {loss_spread(cosine.at_best)}; constant {constant.describe()}: "
               f"{loss_spread(constant.at_best)} ({compare(cosine.at_best, constant.at_best)} for cosine).\n\n"
               "The decay's gain is the end of the run: small steps let the weights settle into the minimum the large "
               "ones found.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"At each one's best peak rate: cosine {loss_spread(cosine.at_best)}, constant "
                   f"{loss_spread(constant.at_best)} ({compare(cosine.at_best, constant.at_best)} for cosine).",
                   [("", verdict(cosine.at_best, constant.at_best))], details, ["lora_cosine.svg"], "cosine")


def main(argv=None):
    run_alone("cosine", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
