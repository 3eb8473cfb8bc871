"""The write-ups' rank table (000 §2.3; 002 §六.1 says the same): rank 1-4 for simple tasks, 8-16 a
good default, 32-64 for complex tasks, 128 and more close to full fine-tuning.

On the sweep task (48 steps), every seed: the demo's LoRA (every Linear and the tied embedding,
LoRA+ 16, alpha = r) at ranks 1, 4, 16 and 64, at the best learning rate of the demo's rank 16
(lab/sweeps.py); rank 128 at its own best rate (on the dim-128 demo model, rank 128 is full rank:
the adapter can express any update, with more parameters than the model has); full fine-tuning at
its own best rate. Each configuration's gain is how far it brings the task's validation loss down
from the SFT model's (the loss at step 0).

Rule (set before the run), one verdict per half:
  r = 8-16 is a good default   holds if rank 16 is within noise of the best rank (ranges over seeds
                               overlap, or it is the best); with a caveat if it is not but gets at
                               least 90% of the best rank's gain; does not hold otherwise
  r >= 128 ~ full fine-tuning  holds if rank 128 is within noise of full fine-tuning or better; with
                               a caveat if not, but it gets at least 90% of full fine-tuning's gain;
                               does not hold otherwise
90%: "close to" read as a gap of a tenth at most, where the noise does not settle it.

    python -m lab.rank_table
"""
import sys

from lab import sweeps
from lab.lab import Finding, as_good, loss_spread, mean, run_alone, table
from plot import line_chart
from plumbing.errors import run_main

TITLE = "Rank table: 8-16 a good default, 128+ close to full fine-tuning"
CLAIM = ("Rank 1-4 serves basic tasks, 8-16 is the recommended default, 32-64 suits complex tasks, and 128 or more comes "
         "close to full fine-tuning.")
SOURCE = "000 §2.3 秩 (Rank) 的选择; 002 §六.1"
CLOSE = 0.9  # share of the better one's gain that counts as "close" when the ranges do not overlap
RULE = ("r = 8-16 a good default: holds if rank 16 is within noise of the best rank; with a caveat if not but it reaches "
        f"{CLOSE:.0%} of the best rank's gain (loss drop from the SFT model); does not hold otherwise. r >= 128 close to "
        "full fine-tuning: holds if rank 128 (at its own best learning rate) is within noise of full fine-tuning (at its "
        f"own) or better; with a caveat if not but it reaches {CLOSE:.0%} of full fine-tuning's gain; does not hold otherwise.")
RANKS = (1, 4, 16, 64)
RANK_128 = sweeps.lora("LoRA r=128 (full rank on the demo model)", 2e-3, lora_rank=128)


def verdict(by_rank: dict, full: list, start: float) -> list:
    """by_rank: {rank: [loss per seed]} (with 16 and 128); full: full fine-tuning's losses; start: the SFT model's."""
    best = min(by_rank, key=lambda r: mean(by_rank[r]))
    return [("r = 8-16 a good default", as_good(by_rank[16], by_rank[best], start, CLOSE)),
            ("r >= 128 close to full fine-tuning", as_good(by_rank[128], full, start, CLOSE))]


def run(lab) -> Finding:
    demo, full, r128 = sweeps.sweep_all(lab, [sweeps.DEMO, sweeps.FULL, RANK_128])
    made = lab.train_all([lab.lora_job(lab.sweep_task(), learning_rate=demo.best, lora_rank=r, seed=s)
                          for r in RANKS for s in lab.seeds])  # the demo's own rank: its sweep's runs again
    k = len(lab.seeds)
    by_rank = {r: [run.final() for run in made[i * k:(i + 1) * k]] for i, r in enumerate(RANKS)}
    by_rank[128] = r128.at_best
    start = demo.best_runs[0].curve()[0][1]
    trainable = {r: sweeps.lora("", 0, lora_rank=r).trainable(lab) for r in (*RANKS, 128)}
    rows = [[f"r={r}", f"{trainable[r]:,}", f"{demo.best:g}" if r != 128 else r128.describe(), loss_spread(by_rank[r]),
             f"{start - mean(by_rank[r]):.3f}"] for r in sorted(by_rank)]
    rows.append(["full fine-tuning", f"{sweeps.FULL.trainable(lab):,}", full.describe(), loss_spread(full.at_best),
                 f"{start - mean(full.at_best):.3f}"])
    verdicts = verdict(by_rank, full.at_best, start)
    ranks = sorted(by_rank)
    line_chart({"LoRA (r=128 at its own rate)": [(r, mean(by_rank[r])) for r in ranks]}, lab.figure("lora_rank_table.svg"),
               "Validation loss after the sweep task vs LoRA rank", "LoRA rank r", "validation loss (mean over seeds)",
               log_x=True, x_ticks=list(ranks), spread={"LoRA (r=128 at its own rate)": [(r, min(by_rank[r]), max(by_rank[r]))
                                                                                     for r in ranks]},
               refs=[(mean(full.at_best), "full fine-tuning (its best rate)"), (start, "the SFT model (step 0)")])
    details = (f"Sweep task ({demo.best_runs[0].curve('loss')[-1][0]} steps), seeds {', '.join(map(str, lab.seeds))}: "
               "final validation loss (mean, range) and the gain over the SFT model's "
               f"{start:.3f}. Ranks 1-64 at the demo's rank-16 best learning rate, alpha = r (scale 1):\n\n"
               + table(["configuration", "trainable", "learning rate", "validation loss", "gain"], rows)
               + "\n\nThe rank table's rows are about what a rank can learn; at 48 steps they are also about how fast: a "
               "larger rank moves more numbers per step. Rank 128 has more trainable parameters than the model itself, "
               "since every adapted matrix is at most 128 wide, and it still trains only through B·A.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"Rank 16: {loss_spread(by_rank[16])}, best rank r={min(by_rank, key=lambda r: mean(by_rank[r]))}; "
                   f"rank 128 {loss_spread(by_rank[128])} vs full fine-tuning {loss_spread(full.at_best)} (from "
                   f"{start:.3f}).", verdicts, details, ["lora_rank_table.svg"], "rank_table")


def main(argv=None):
    run_alone("rank_table", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
