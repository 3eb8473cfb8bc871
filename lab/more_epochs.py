"""More epochs are safe with LoRA: with so few parameters it hardly overfits (002 §六.3).

The demo's LoRA on the sweep task's samples for 3 and for 6 epochs (lab/epochs.py's runs), every
seed: the final validation loss on the task's held-out samples (overfitting raises it) and on the
64 general conversations SFT held out (what more epochs cost the rest of the model).

Rule (set before the run): holds if 6 epochs end no higher than 3 on the task (ranges over seeds not
apart with 6 above) and no higher on the general conversations; with a caveat if the task is fine but
the general loss ends higher, ranges apart (more epochs forget more); does not hold if the task's
validation loss ends higher, ranges apart (overfitting).

    python -m lab.more_epochs
"""
import sys

from lab.epochs import epoch_runs
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, below, loss_spread, mean, run_alone, table
from plot import panels
from plumbing.errors import run_main

TITLE = "More epochs are safe with LoRA"
CLAIM = "Train LoRA for more epochs: with few parameters its risk of overfitting is low."
SOURCE = "002 §六.3 训练技巧"
FEWER, MORE = 3, 6
RULE = (f"holds if {MORE} epochs end no higher than {FEWER} (ranges over seeds not apart with {MORE} above) on the task's "
        "held-out samples and on the general conversations; with a caveat if the task is fine but the general loss ends "
        "higher; does not hold if the task's loss ends higher (overfitting).")


def verdict(task: dict, general: dict) -> str:
    """task, general: {epochs: [final validation loss per seed]} for FEWER and MORE."""
    if below(task[FEWER], task[MORE]):
        return FAILS
    return CAVEAT if below(general[FEWER], general[MORE]) else HOLDS


def run(lab) -> Finding:
    runs = epoch_runs(lab, (FEWER, MORE))
    task = {e: [r.final() for r in rs] for e, rs in runs.items()}
    general = {e: [r.final("val_also_loss") for r in rs] for e, rs in runs.items()}
    seed0 = {e: rs[0] for e, rs in runs.items()}
    panels([("line", dict(title=f"task, {e} epochs (seed {lab.seeds[0]})", x_label="optimizer step", y_label="validation loss",
                          series={"the task's held-out samples": seed0[e].curve(), "general conversations": seed0[e].curve("val_also_loss")},
                          markers=False))
            for e in (FEWER, MORE)], lab.figure("lora_more_epochs.svg"),
           "Validation losses while the demo's LoRA trains 3 or 6 epochs on the sweep task's samples", columns=2, width=470)
    rows = [[e, runs[e][0].curve("loss")[-1][0], loss_spread(task[e]), loss_spread(general[e])] for e in (FEWER, MORE)]
    details = ("The sweep task's samples at the demo's LoRA's best one-epoch rate; mean and range over seeds:\n\n"
               + table(["epochs", "steps", "task validation loss", "general validation loss"], rows)
               + "\n\nOverfitting would show as the task's validation loss turning up while the training loss keeps "
               "falling; what 'few parameters' does not prevent is drift on everything the task does not rehearse.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"Task validation loss {loss_spread(task[FEWER])} after {FEWER} epochs, {loss_spread(task[MORE])} after "
                   f"{MORE}; general {mean(general[FEWER]):.3f} -> {mean(general[MORE]):.3f}.",
                   [("", verdict(task, general))], details, ["lora_more_epochs.svg"], "more_epochs")


def main(argv=None):
    run_alone("more_epochs", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
