"""LoRA learns less and forgets less than full fine-tuning (Biderman et al. 2024).

From the demo's SFT model on the sweep task (the task's validation loss: what was learnt; the loss on
64 general conversations SFT held out, logged beside it: what was forgotten; and accuracy on both
general sets, eval_general and eval_general_unseen), every seed, each method at its own best learning
rate (lab/sweeps.py):
  LoRA, the demo's            rank 16 on every Linear and the tied embedding, LoRA+ 16
  LoRA without the embedding  rank 19 on every Linear, the same parameters (Biderman et al.'s LoRA
                              does not touch the embedding, which changes what every token means)
  full fine-tuning            every weight, train_full_sft.py on the same data and steps

Rule (set before the run), one verdict per half, each judged for both LoRA configurations:
  learns less    holds for a configuration if its task loss ends above full fine-tuning's, ranges over
                 seeds apart
  forgets less   holds for a configuration if its general loss ends below full fine-tuning's, ranges apart
Each half holds if it holds for both configurations, with a caveat if for one, and does not hold if for
neither.

    python -m lab.learns_less
"""
import sys

from lab import sweeps
from lab.lab import Finding, below, compare, loss_spread, mean, run_alone, spread, table, verdict_of
from plot import line_chart
from plumbing.errors import run_main

TITLE = "LoRA learns less and forgets less"
CLAIM = "LoRA learns less of the new task than full fine-tuning, and forgets less of what the model knew."
SOURCE = "paper: Biderman et al. 2024"
RULE = ("each method at its own best learning rate: learns less holds for a LoRA configuration if its task loss ends above "
        "full fine-tuning's, forgets less if its general loss ends below, ranges over seeds apart; each half holds if so "
        "for LoRA both with and without the embedding, with a caveat if for one, and does not hold if for neither.")


def loras(lab) -> tuple:
    """The demo's LoRA, and LoRA without the embedding at the same parameters."""
    return sweeps.DEMO, sweeps.matched(lab)["without the embedding"]
SETS = ("eval_general", "eval_general_unseen")


def verdict(task: dict, general: dict) -> list:
    """task, general: {"full": [losses], and each LoRA configuration's}."""
    loras = [k for k in task if k != "full"]
    learns_less = sum(below(task["full"], task[k]) for k in loras)
    forgets_less = sum(below(general[k], general["full"]) for k in loras)
    return [("learns less", verdict_of(learns_less, len(loras))), ("forgets less", verdict_of(forgets_less, len(loras)))]


def run(lab) -> Finding:
    sft = lab.base()["sft"]
    lora, without = loras(lab)
    found = dict(zip(("full", "LoRA", "LoRA without the embedding"), sweeps.sweep_all(lab, [sweeps.FULL, lora, without])))
    task = {k: s.at_best for k, s in found.items()}
    general = {k: [r.final("val_also_loss") for r in s.best_runs] for k, s in found.items()}
    alone = lab.score(sft, sets=SETS)
    scores = {k: [lab.score(r.weights, None, SETS) if k == "full" else lab.score(sft, r.weights, SETS) for r in s.best_runs]
              for k, s in found.items()}
    verdicts = verdict(task, general)
    trained, base = lora.trainable(lab), sweeps.FULL.trainable(lab)
    start = found["full"].best_runs[0].curve("val_also_loss")[0][1]
    line_chart({found[k].method.label: [(t, g) for t, g in zip(task[k], general[k])] for k in found},
               lab.figure("lora_learns_less.svg"), "Learning and forgetting, each method at its best rate (one dot per seed)",
               "the task's validation loss (lower: learnt more)", "general validation loss (lower: forgot less)",
               connect=False)
    rows = [[found[k].method.label, found[k].describe(), loss_spread(task[k]), loss_spread(general[k]),
             *(spread([x[s] for x in scores[k]]) for s in SETS)] for k in found]
    details = (f"Sweep task, seeds {', '.join(map(str, lab.seeds))}; at each method's best rate, the final validation loss on "
               f"the task and on the general conversations (SFT alone: {start:.3f}), and general accuracy (SFT alone: "
               + ", ".join(f"{s} {alone[s]:.1%}" for s in SETS) + "):\n\n"
               + table(["method", "best learning rate", "task loss", "general loss", *SETS], rows)
               + "\n\nBiderman et al. fine-tuned 7B-parameter models with adapters far below 1% of their weights, for "
               f"thousands of steps. The demo's adapter trains {trained:,} parameters, {trained / base:.1%} as many as the "
               "1.1M-parameter model has; LoRA without the embedding is the closer match to theirs. " + "; ".join(
                   f"{k}: task {compare(task[k], task['full'])}, general {compare(general[k], general['full'])} than full "
                   "fine-tuning" for k in found if k != "full") + ".")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   "Task loss " + ", ".join(f"{(k if k != 'full' else 'full')} {mean(task[k]):.3f}" for k in found)
                   + "; general loss " + ", ".join(f"{mean(general[k]):.3f}" for k in found) + " (same order).",
                   verdicts, details, ["lora_learns_less.svg"], "learns_less")


def main(argv=None):
    run_alone("learns_less", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
