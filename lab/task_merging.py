"""Merging task adapters (002 §七 3; TIES-merging, Yadav et al. 2023; DARE, Yu et al. 2023): sign election
(TIES) or random drop-and-rescale (DARE) keeps more of each task than plain averaging, and DARE can drop
90% of an update's entries and keep the task.

For every seed: the demo's lora_medical and lora_identity (its full settings, 400 and 200 steps) merged
by merging/merge.py (merge_lora.py's methods) into one adapter: the average (Σ ΔW_i / 2, exact: cat with
weights 0.5), the sum (task arithmetic, weights 1), TIES (trim to the largest 50% of each update's
entries, elect signs, disjoint mean) and DARE (each entry kept with probability 0.5, rescaled, then
summed), the last two at each one's best weight w of 0.5, 0.75 and 1 (the papers' lambda) and cut back to
the adapters' rank 16 by SVD as their files must be. Each merge is
measured by its loss on the reference answers (nats per answer token) of eval_medical and eval_identity,
as a share of what each adapter alone gains there over the SFT model: kept = (L_sft - L_merged) /
(L_sft - L_alone), the mean of the two tasks. And DARE alone: each adapter with 90% of the entries of its
ΔW dropped (density 0.1, the rest rescaled, cut to rank 16), the share of its own task's gain it keeps.

Rule (set before the run), one verdict per half:
  TIES / DARE keep more than averaging   holds if TIES's and DARE's kept shares are both above the average's,
                                         the ranges over seeds apart; with a caveat if one of them is, or
                                         both only in the means; does not hold otherwise
  DARE can drop 90%                      holds if every adapter at density 0.1 keeps at least 90% of its
                                         task's gain on every seed; with a caveat if at least 50%; does not
                                         hold otherwise

    python -m lab.task_merging
"""
import sys

from formats.adapter_file import read_lora_file
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, below, mean, run_alone, spread, table
from merging.merge import merge_adapters
from plot import bar_chart
from plumbing.errors import run_main

TITLE = "Merging task adapters: TIES and DARE against averaging"
CLAIM = ("Merging task adapters with sign election (TIES) or random drop-and-rescale (DARE) keeps more of each task than "
         "plain averaging, and DARE can drop 90% of an update and keep its task.")
SOURCE = "002 §七 3 多任务LoRA融合; Yadav et al. 2023 (TIES); Yu et al. 2023 (DARE)"
TASKS = {"lora_medical": "eval_medical", "lora_identity": "eval_identity"}
WEIGHTS = (0.5, 0.75, 1.0)  # TIES's and DARE's weight (the papers' lambda), each method at its best (the mean kept share)
TUNED = {"TIES (density 0.5)": ("ties", {"density": 0.5}), "DARE (density 0.5)": ("dare", {"density": 0.5})}
MERGES = {"average": ("cat", 0.5, {}), "sum (task arithmetic)": ("cat", 1.0, {}),
          **{f"{name}, w={w:g}": (method, w, extra) for name, (method, extra) in TUNED.items() for w in WEIGHTS}}
# The same two at full rank (the file then holds the whole matrix): not in the rule, which was written for the rank-16
# files; shown beside it, to tell what the cut to rank 16 costs from what TIES and DARE do themselves.
UNCUT = {"TIES, uncut": ("ties", 1.0, {"density": 0.5}), "DARE, uncut": ("dare", 1.0, {"density": 0.5})}
KEEP, SOME = 0.9, 0.5  # of a task's gain: "keeps the task", and keeps most of it
RULE = ("TIES / DARE keep more than averaging: holds if both TIES's and DARE's kept share of the two tasks' gains (mean of "
        f"the tasks; each at its best weight of {', '.join(map(str, WEIGHTS))}) is above the average's, ranges over seeds apart; with a caveat if one of them is, or both in the means "
        f"only; does not hold otherwise. DARE can drop 90%: holds if each adapter at density 0.1 keeps at least {KEEP:.0%} "
        f"of its task's gain on every seed; with a caveat if at least {SOME:.0%}; does not hold otherwise.")


def verdict(kept: dict, dare_alone: list) -> list:
    """kept: {merge name: [kept share per seed]}; dare_alone: each adapter's kept share at density 0.1, every seed."""
    average, others = kept["average"], [kept["TIES (density 0.5)"], kept["DARE (density 0.5)"]]
    apart = sum(below(average, k) for k in others)
    in_means = all(mean(k) > mean(average) for k in others)
    more = HOLDS if apart == 2 else CAVEAT if apart == 1 or in_means else FAILS
    drop = HOLDS if min(dare_alone) >= KEEP else CAVEAT if min(dare_alone) >= SOME else FAILS
    return [("TIES / DARE keep more than averaging", more), ("DARE can drop 90%", drop)]


def losses(lab, contents) -> dict:
    """{eval set: nats per reference-answer token} of the SFT model wearing `contents` (None: bare)."""
    return lab.answer_losses(TASKS.values(), contents)


def run(lab) -> Finding:
    runs = lab.train_all([lab.lora_job(lab.full_task(task), seed=s) for s in lab.seeds for task in TASKS])
    sft = losses(lab, None)
    full_rank = lab.load(lab.base()["sft"])[0].config.dim  # no matrix here has a larger rank
    kept = {name: [] for name in (*MERGES, *UNCUT)}
    dare_alone, dare_uncut = [], []  # per seed: lora_medical's, then lora_identity's
    for i, seed in enumerate(lab.seeds):
        pair = [read_lora_file(runs[2 * i + j].weights) for j in range(2)]
        alone = {task: losses(lab, runs[2 * i + j].weights) for j, task in enumerate(TASKS)}

        def share(result, task):  # of the task's gain with its own adapter alone
            s = TASKS[task]
            return (sft[s] - result[s]) / (sft[s] - alone[task][s])

        for name, (method, w, extra) in (MERGES | UNCUT).items():
            rank = full_rank if name in UNCUT else None
            merged = losses(lab, merge_adapters(pair, [w, w], method, rank=rank, seed=seed, **extra))
            kept[name].append(mean(share(merged, task) for task in TASKS))
        for j, task in enumerate(TASKS):
            zero = ({k: 0 * v for k, v in pair[j][0].items()}, pair[j][1])  # DARE on one adapter: merge it with nothing
            dropped = losses(lab, merge_adapters([pair[j], zero], [1.0, 1.0], "dare", density=0.1, seed=seed))
            dare_alone.append(share(dropped, task))
            uncut = losses(lab, merge_adapters([pair[j], zero], [1.0, 1.0], "dare", rank=full_rank, density=0.1, seed=seed))
            dare_uncut.append(share(uncut, task))
    best = {name: max(WEIGHTS, key=lambda w: mean(kept[f"{name}, w={w:g}"])) for name in TUNED}
    verdicts = verdict({"average": kept["average"], **{name: kept[f"{name}, w={best[name]:g}"] for name in TUNED}}, dare_alone)
    shown = ["average", "sum (task arithmetic)", *(f"{name}, w={best[name]:g}" for name in TUNED), *UNCUT]
    bar_chart({name: (mean(kept[name]), min(kept[name]), max(kept[name])) for name in shown}
              | {"DARE 0.1, one adapter": (mean(dare_alone), min(dare_alone), max(dare_alone)),
                 "DARE 0.1, one adapter, uncut": (mean(dare_uncut), min(dare_uncut), max(dare_uncut))},
              lab.figure("lora_task_merging.svg"), "lora_medical + lora_identity in one adapter: each task's gain kept",
              "share of the adapter-alone gain kept (mean of the two tasks; line: range over seeds)", percent=True,
              refs=[(KEEP, f"{KEEP:.0%}: the rule's 'keeps'")])
    details = (f"Each at its best weight: TIES w={best['TIES (density 0.5)']:g}, DARE w={best['DARE (density 0.5)']:g}. "
               f"Kept share of each task's gain over the SFT model (loss on the reference answers: SFT "
               f"{sft['eval_medical']:.3f} on eval_medical, {sft['eval_identity']:.3f} on eval_identity), the mean of the two "
               "tasks, per seed; and each adapter alone with 90% of its update dropped (its own task's share):\n\n"
               + table(["merge", *(f"seed {seed}" for seed in lab.seeds)],
                       [[name, *(f"{k:.1%}" for k in kept[name])] for name in (*MERGES, *UNCUT)]
                       + [[f"DARE 0.1{label}, {task} alone", *(f"{d:.1%}" for d in values[j::2])]
                          for label, values in (("", dare_alone), (", uncut", dare_uncut)) for j, task in enumerate(TASKS)])
               + "\n\nThe sum keeps both updates whole but lets each disturb the other's task; the average halves both. "
               f"TIES and DARE give a full matrix that the file holds at rank 16 (SVD), which costs them what lies beyond "
               f"it; 'uncut' is the same merge held at full rank ({full_rank}), outside the rule, to tell the two apart. "
               "A LoRA update is already low-rank and dense: dropping entries at random adds noise in every direction, "
               "where DARE's 90% was measured on full fine-tuning's deltas.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   "Kept share of the two tasks' gains: " + "; ".join(f"{name} {spread(kept[name])}" for name in shown)
                   + f"; one adapter with 90% dropped: {spread(dare_alone)}.",
                   verdicts, details, ["lora_task_merging.svg"], "task_merging")


def main(argv=None):
    run_alone("task_merging", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
