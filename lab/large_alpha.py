"""A large alpha adapts to the new task quickly, but may overfit (003, LoRA 是什么).

The demo's LoRA (rank 16, LoRA+ 16) at its best one-epoch learning rate (lab/sweeps.py, tuned with
alpha = r = 16), with alpha = 16, 64 and 256 (scale 1, 4 and 16), on the sweep task's samples seen
REPEAT_EPOCHS times (where a model can start fitting its samples rather than the task), every seed.
Quickly: the task's validation loss at the first validation after the start (step 26). Overfitting:
at the end, a lower training loss together with a higher validation loss than alpha = r's.
A run that diverges (its loss became inf or NaN) counts as an infinite loss.

Rule (set before the run), one verdict per half, alpha = 256 against alpha = 16:
  adapts quickly  holds if its validation loss at step 26 is below, ranges over seeds apart; does not
                  hold otherwise
  overfits        holds if at the end its training loss is below and its validation loss above, both
                  with the ranges apart; does not hold otherwise

    python -m lab.large_alpha
"""
import math
import sys

from lab import sweeps
from lab.lab import FAILS, HOLDS, REPEAT_EPOCHS, Finding, below, loss_spread, mean, run_alone, table
from plot import panels
from plumbing.errors import run_main

TITLE = "A large alpha adapts fast but overfits"
CLAIM = "A large alpha makes the model adapt to the new task quickly, but may make it overfit."
SOURCE = "003 LoRA 是什么？"
ALPHAS = (16, 64, 256)  # 1, 4 and 16 times the rank
RULE = (f"alpha = {ALPHAS[-1]} against alpha = {ALPHAS[0]} (= r), {REPEAT_EPOCHS} epochs of the sweep task's samples at the "
        "rate tuned with alpha = r: adapts quickly holds if its validation loss at the first validation (step 26) is below, "
        "ranges over seeds apart; overfits holds if at the end its training loss is below and its validation loss above, "
        "both ranges apart; otherwise each does not hold.")


def verdict(early: dict, train: dict, val: dict) -> list:
    """early, train, val: {alpha: [per seed]} of the first validation loss, and the final training and validation losses."""
    big, base = ALPHAS[-1], ALPHAS[0]
    quick = HOLDS if below(early[big], early[base]) else FAILS
    overfits = HOLDS if below(train[big], train[base]) and below(val[base], val[big]) else FAILS
    return [("adapts quickly", quick), ("overfits", overfits)]


def at_step(run, key, index) -> float:
    """The metric's value at the index-th logged point (-1: the last); inf for a run that diverged."""
    curve = run.curve(key)
    return curve[index][1] if curve and not run.diverged else math.inf


def run(lab) -> Finding:
    demo = sweeps.sweep(lab, sweeps.DEMO)
    task = lab.sweep_task(epochs=REPEAT_EPOCHS)
    configs = [(a, s) for a in ALPHAS for s in lab.seeds]
    made = dict(zip(configs, lab.train_all([lab.lora_job(task, learning_rate=demo.best, lora_alpha=a, seed=s) for a, s in configs])))
    early = {a: [at_step(made[a, s], "val_loss", 1) for s in lab.seeds] for a in ALPHAS}
    train = {a: [at_step(made[a, s], "loss", -1) for s in lab.seeds] for a in ALPHAS}
    val = {a: [at_step(made[a, s], "val_loss", -1) for s in lab.seeds] for a in ALPHAS}
    seed = lab.seeds[0]
    panels([("line", dict(title=f"{name} (seed {seed})", x_label="optimizer step", y_label=f"{name}", markers=key == "val_loss",
                          series={f"alpha = {a} (scale {a / 16:g})": made[a, seed].curve(key) for a in ALPHAS}))
            for name, key in (("validation loss", "val_loss"), ("training loss", "loss"))],
           lab.figure("lora_large_alpha.svg"), f"LoRA with a larger alpha, {REPEAT_EPOCHS} epochs of the sweep task's samples",
           columns=2, width=470)
    rows = [[a, f"{a / 16:g}", loss_spread(early[a]), loss_spread(train[a]), loss_spread(val[a])] for a in ALPHAS]
    details = (f"Rank 16, learning rate {demo.best:g} (the best with alpha = 16), seeds {', '.join(map(str, lab.seeds))}; "
               "mean and range over seeds (inf: diverged):\n\n"
               + table(["alpha", "scale alpha / r", "validation loss at step 26", "final training loss",
                        "final validation loss"], rows)
               + "\n\nalpha scales B·A, so with Adam it scales how far the update moves per step: a larger alpha is a "
               "larger learning rate for the adapter's output. Overfitting is the training loss falling while the "
               "held-out loss rises; a larger step can instead just overshoot, which raises both.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"alpha = {ALPHAS[-1]} vs {ALPHAS[0]}: validation loss at step 26 {mean(early[ALPHAS[-1]]):.3f} vs "
                   f"{mean(early[ALPHAS[0]]):.3f}; at the end training {mean(train[ALPHAS[-1]]):.3f} vs {mean(train[ALPHAS[0]]):.3f}, "
                   f"validation {mean(val[ALPHAS[-1]]):.3f} vs {mean(val[ALPHAS[0]]):.3f}.",
                   verdict(early, train, val), details, ["lora_large_alpha.svg"], "large_alpha")


def main(argv=None):
    run_alone("large_alpha", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
