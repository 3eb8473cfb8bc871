"""With alpha fixed, scaling the update by alpha / r lets you change the rank without retuning the learning
rate (001, 超参 α, reading the LoRA paper: set alpha to the first r tried, then only vary r).

The demo's LoRA (LoRA+ 16) with alpha = 16 fixed, so its scale is 16 / r: its best learning rate at
r = 16 (lab/sweeps.py, where alpha / r = 1, the demo's own) is taken as tuned, then the rank moves to
4 and to 64 and the learning rate is tried at that rate, half of it and twice it, every seed, on the
sweep task. "Without retuning" means the tuned rate is still as good as its neighbours at the new rank.

Rule (set before the run): holds if at both ranks no neighbouring rate ends below the tuned one with the
ranges over seeds apart; with a caveat if that is so at one of the two ranks; does not hold if at
neither (both ranks want another rate).

    python -m lab.alpha_scaling
"""
import sys

from lab import sweeps
from lab.lab import Finding, below, loss_spread, mean, run_alone, table, verdict_of
from plot import line_chart
from plumbing.errors import run_main
from plumbing.flags import LORA_RANK

TITLE = "alpha / r frees the rank"
CLAIM = "With alpha fixed, scaling by alpha / r lets you change the rank without retuning the learning rate."
SOURCE = "001 超参 α"
ALPHA = LORA_RANK  # fixed: scale 1 at the demo's rank, where the learning rate was tuned
RANKS = (4, 64)
RULE = (f"alpha = {ALPHA} fixed, the learning rate tuned at r = {LORA_RANK}: holds if at r = 4 and at r = 64 neither half nor twice "
        "that rate ends below it, ranges over seeds apart; with a caveat if so at one rank; does not hold if at neither.")


def verdict(by_rank: dict, tuned: float) -> str:
    """by_rank: {rank: {learning rate: [final validation loss per seed]}}, each with `tuned` among the rates."""
    keeps = [not any(below(losses[lr], losses[tuned]) for lr in losses if lr != tuned) for losses in by_rank.values()]
    return verdict_of(sum(keeps), len(keeps))


def rank_runs(lab) -> tuple:
    """(the demo's sweep, {rank: {rate: [loss per seed]}}) under alpha / r with alpha = 16, rates around the tuned one."""
    demo = sweeps.sweep(lab, sweeps.DEMO)
    rates = [demo.best / sweeps.GRID_STEP, demo.best, demo.best * sweeps.GRID_STEP]
    configs = [(r, lr, s) for r in RANKS for lr in rates for s in lab.seeds]
    made = lab.train_all([lab.lora_job(lab.sweep_task(), lora_rank=r, lora_alpha=ALPHA, learning_rate=lr, seed=s)
                          for r, lr, s in configs])
    by_rank = {r: {lr: [run.final() for (r2, lr2, _), run in zip(configs, made) if (r2, lr2) == (r, lr)] for lr in rates}
               for r in RANKS}
    return demo, by_rank


def run(lab) -> Finding:
    demo, by_rank = rank_runs(lab)
    curves = {f"r={r} (scale {ALPHA / r:g})": by_rank[r] for r in RANKS}
    curves[f"r={LORA_RANK} (scale 1, the demo's sweep)"] = demo.losses
    line_chart({k: [(lr, mean(v)) for lr, v in sorted(c.items())] for k, c in curves.items()}, lab.figure("lora_alpha_scaling.svg"),
               f"alpha / r with alpha = {ALPHA} fixed: does the rank move the best learning rate?", "learning rate",
               "final validation loss", log_x=True,
               spread={k: [(lr, min(v), max(v)) for lr, v in c.items() if len(v) > 1] for k, c in curves.items()})
    rows = [[f"r={r}", f"{ALPHA / r:g}", *(loss_spread(by_rank[r][lr]) for lr in sorted(by_rank[r]))] for r in RANKS]
    rates = sorted(by_rank[RANKS[0]])
    best = {r: min(by_rank[r], key=lambda lr: mean(by_rank[r][lr])) for r in RANKS}
    details = (f"Sweep task, seeds {', '.join(map(str, lab.seeds))}, the demo's LoRA with alpha = {ALPHA}; final validation "
               f"loss at the rate tuned at r = {LORA_RANK} ({demo.best:g}, {demo.describe()}) and its neighbours:\n\n"
               + table(["rank", "scale alpha / r", *(f"{lr:g}" + (" (tuned)" if lr == demo.best else "") for lr in rates)], rows)
               + "\n\nWith Adam every entry of A and B moves by about the learning rate per step whatever its gradient's "
               "size, so the scale sets how far B·A moves per step while a larger rank has more entries moving at once. "
               "alpha / r shrinks the scale as 1 / r; whether that is the right amount is lab/rslora.py's question.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   "Best of the tuned rate and its neighbours: " + ", ".join(f"r={r}: {best[r]:g}" for r in RANKS)
                   + f" (tuned at r={LORA_RANK}: {demo.best:g}).", [("", verdict(by_rank, demo.best))], details,
                   ["lora_alpha_scaling.svg"], "alpha_scaling")


def main(argv=None):
    run_alone("alpha_scaling", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
