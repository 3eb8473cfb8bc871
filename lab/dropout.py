"""LoRA dropout 0.05 (000 §3.3's PEFT example and every configuration of §4.1 set lora_dropout=0.05):
the recommended setting, against the demo's 0.

Dropout on the adapter's input regularises: it can only help where a model starts to fit its
training samples rather than the task. So it is measured where that can happen: the sweep task's
samples seen REPEAT_EPOCHS times (lab.sweep_task(epochs=3)), the demo's LoRA at its best one-epoch
learning rate (lab/sweeps.py), every seed, with --lora_dropout 0.05 and without. The final validation
loss on the task's held-out samples says which generalises better.

Rule (set before the run): holds if dropout 0.05 ends below no dropout with the ranges over seeds
apart; with a caveat if they overlap (harmless, no measured gain); does not hold if it ends above.

    python -m lab.dropout
"""
import sys

from lab import sweeps
from lab.lab import CAVEAT, FAILS, HOLDS, REPEAT_EPOCHS, Finding, compare, loss_spread, mean, run_alone
from plot import bar_chart
from plumbing.errors import run_main

TITLE = "LoRA dropout 0.05"
CLAIM = "Set the adapter's dropout to 0.05 (the recommended configurations all do)."
SOURCE = "000 §3.3 使用 PEFT 库, §4.1 超参数推荐"
DROPOUT = 0.05
RULE = (f"holds if dropout {DROPOUT} ends below no dropout, the ranges over seeds apart; with a caveat if they overlap "
        "(harmless, no measured gain); does not hold if it ends above.")


def verdict(with_dropout: list, without: list) -> str:
    return {"lower": HOLDS, "within noise": CAVEAT, "higher": FAILS}[compare(with_dropout, without)]


def run(lab) -> Finding:
    demo = sweeps.sweep(lab, sweeps.DEMO)
    task = lab.sweep_task(epochs=REPEAT_EPOCHS)
    made = lab.train_all([lab.lora_job(task, learning_rate=demo.best, lora_dropout=d, seed=s)
                          for d in (0.0, DROPOUT) for s in lab.seeds])
    n = len(lab.seeds)
    loss = {0.0: [r.final() for r in made[:n]], DROPOUT: [r.final() for r in made[n:]]}
    general = {0.0: [r.final("val_also_loss") for r in made[:n]], DROPOUT: [r.final("val_also_loss") for r in made[n:]]}
    bar_chart({f"dropout {d:g}": (mean(v), min(v), max(v)) for d, v in loss.items()}, lab.figure("lora_dropout.svg"),
              f"The sweep task's samples seen {REPEAT_EPOCHS} times: LoRA with and without dropout",
              "final validation loss (mean; line: range over seeds)", zero=False)
    details = (f"The sweep task's 768 training samples for {REPEAT_EPOCHS} epochs ({made[0].curve('loss')[-1][0]} steps), "
               f"the demo's LoRA at {demo.best:g}, seeds {', '.join(map(str, lab.seeds))}: final validation loss on the "
               f"task's held-out samples, no dropout {loss_spread(loss[0.0])}, dropout {DROPOUT} {loss_spread(loss[DROPOUT])}; "
               f"on the general conversations {loss_spread(general[0.0])} and {loss_spread(general[DROPOUT])}.\n\n"
               "Dropout zeroes a share of the adapter's inputs at each step (the frozen path sees them all), so the "
               "adapter cannot lean on any one feature; the price is a noisier gradient. Which wins depends on whether "
               "the adapter overfits at all: on the demo's templated data the held-out samples are close kin of the "
               "training ones.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"Validation loss after {REPEAT_EPOCHS} epochs: dropout {DROPOUT} {loss_spread(loss[DROPOUT])} vs none "
                   f"{loss_spread(loss[0.0])} ({compare(loss[DROPOUT], loss[0.0])}).",
                   [("", verdict(loss[DROPOUT], loss[0.0]))], details, ["lora_dropout.svg"], "dropout")


def main(argv=None):
    run_alone("dropout", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
