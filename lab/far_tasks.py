"""On tasks far from the pretraining data, LoRA may fall short of full fine-tuning (002 §五.3, 性能权衡).

Two tasks of the demo, each as a sweep task (its first 832 samples, one epoch): lora_medical (a new
reply format and a mapping pretraining never saw) and lora_identity (the model's name and maker). How
far a task is from what the model knows is measured, not assumed: the SFT model's validation loss on
the task before training (step 0). On each: the demo's LoRA, LoRA without the embedding (matched
parameters) and full fine-tuning, each at its own best learning rate on that task (lab/sweeps.py),
every seed. LoRA's shortfall is the share of full fine-tuning's gain it misses,
(L_LoRA - L_full) / (L_start - L_full), per seed (seeds paired in order).

Rule (set before the run), for each LoRA configuration: holds if on the farther task LoRA ends above
full fine-tuning (ranges over seeds apart) and its shortfall there is above its shortfall on the
nearer task (ranges apart); with a caveat if it ends above full fine-tuning on the farther task but the
shortfalls are within noise; does not hold if it does not end above full fine-tuning there. The
claim's verdict: holds if it holds for both configurations, does not hold if for neither, with a
caveat otherwise.

    python -m lab.far_tasks
"""
import sys

from lab import sweeps
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, below, loss_spread, mean, run_alone, spread, table
from plot import panels
from plumbing.errors import run_main

TITLE = "LoRA falls short on tasks far from pretraining"
CLAIM = "On tasks whose data differ greatly from the pretraining distribution, LoRA may do worse than full fine-tuning."
SOURCE = "002 §五.3 性能权衡"
RULE = ("per LoRA configuration (with and without the embedding), each method at its own best rate per task: holds if on the "
        "farther task (higher SFT loss at step 0) LoRA ends above full fine-tuning and misses more of full fine-tuning's "
        "gain than on the nearer task, ranges over seeds apart; with a caveat if it ends above full fine-tuning there but "
        "the shortfalls are within noise; does not hold otherwise. Both configurations hold: holds; neither: does not hold; "
        "else a caveat.")
TASKS = ("lora_medical", "lora_identity")


def loras(lab) -> tuple:
    """The demo's LoRA, and LoRA without the embedding at the same parameters."""
    return sweeps.DEMO, sweeps.matched(lab)["without the embedding"]


def shortfalls(lora: list, full: list, start: float) -> list:
    """Per seed, the share of full fine-tuning's gain from `start` that LoRA misses."""
    return [(a - b) / max(start - b, 1e-9) for a, b in zip(lora, full)]


def config_verdict(far_lora: list, far_full: list, far_short: list, near_short: list) -> str:
    if not below(far_full, far_lora):
        return FAILS
    return HOLDS if below(near_short, far_short) else CAVEAT


def verdict(per_config: list) -> str:
    """per_config: config_verdict of each LoRA configuration."""
    if all(v == HOLDS for v in per_config):
        return HOLDS
    return FAILS if all(v == FAILS for v in per_config) else CAVEAT


def run(lab) -> Finding:
    LORAS = loras(lab)
    found = {(task, m.label): s for task in TASKS
             for m, s in zip((*LORAS, sweeps.FULL), sweeps.sweep_all(lab, [*LORAS, sweeps.FULL], lab.sweep_task(task)))}
    start = {task: found[task, sweeps.FULL.label].best_runs[0].curve()[0][1] for task in TASKS}
    far, near = sorted(TASKS, key=start.get, reverse=True)
    short = {(task, m.label): shortfalls(found[task, m.label].at_best, found[task, sweeps.FULL.label].at_best, start[task])
             for task in TASKS for m in LORAS}
    per_config = [config_verdict(found[far, m.label].at_best, found[far, sweeps.FULL.label].at_best, short[far, m.label],
                                 short[near, m.label]) for m in LORAS]
    rows = [[task, f"{start[task]:.3f}", *(f"{loss_spread(found[task, m.label].at_best)} at {found[task, m.label].best:g}"
                                          for m in (*LORAS, sweeps.FULL)),
             *(spread(short[task, m.label], "{:.0%}") for m in LORAS)] for task in TASKS]
    panels([("bar", dict(title=f"{task} (SFT loss at step 0: {start[task]:.2f})", x_label="final validation loss (mean; line: range)", zero=False,
                         bars={m.label.split(" (")[0]: (mean(found[task, m.label].at_best), min(found[task, m.label].at_best),
                                                        max(found[task, m.label].at_best)) for m in (*LORAS, sweeps.FULL)}))
            for task in TASKS], lab.figure("lora_far_tasks.svg"),
           "LoRA and full fine-tuning on a far task and a near one, each at its best rate", columns=2, width=470)
    details = (f"Each task's sweep task (832 samples, one epoch), seeds {', '.join(map(str, lab.seeds))}; the SFT model's loss "
               "at step 0 (how far the task is), each method's final validation loss at its own best rate, and LoRA's "
               "shortfall (the share of full fine-tuning's gain it misses; mean, range):\n\n"
               + table(["task", "SFT loss at step 0", *(m.label for m in (*LORAS, sweeps.FULL)),
                        *(f"shortfall, {m.label.split(' (')[0]}" for m in LORAS)], rows)
               + f"\n\nThe farther task here is {far}. Per configuration: " + "; ".join(
                   f"{m.label.split(' (')[0]}: {v}" for m, v in zip(LORAS, per_config)) + ".")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"On {far} (the farther task) LoRA's shortfall is " + ", ".join(
                       f"{spread(short[far, m.label], '{:.0%}')} ({m.label.split(' (')[0]})" for m in LORAS)
                   + f"; on {near} " + ", ".join(spread(short[near, m.label], "{:.0%}") for m in LORAS) + ".",
                   [("", verdict(per_config))], details, ["lora_far_tasks.svg"], "far_tasks")


def main(argv=None):
    run_alone("far_tasks", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
