"""A and B cannot both start at zero (their gradients would stay zero); either may be the zero one,
but a non-zero A (the standard start) trains better (003 LoRA 矩阵初始化方式, citing "The Impact of
Initialization on LoRA Finetuning Dynamics").

Two measurements:
  step 0    one batch of the sweep task through the demo's SFT model with fresh adapters of every
            initialisation: the gradient norms of all A's and all B's (dL/dB = g·(A x)ᵀ and
            dL/dA = Bᵀ·g·xᵀ: with both zero, neither ever moves)
  training  both-zero adapters (`python -m lab.train_variant --variant zeros`) on the sweep task at
            the demo's best rate, every seed; and lab/swapped_init.py's plain-LoRA sweeps of the
            standard and the swapped start, each at its own best rate

Rule (set before the run), one verdict per half:
  both zero cannot learn     holds if both gradients are exactly zero at step 0 and every seed's final
                             validation loss equals its loss at step 0; does not hold otherwise
  swapped works, A != 0 better  holds if the swapped start learns (ends below its step-0 loss, every
                             seed) and the standard start ends below it, ranges over seeds apart; does
                             not hold otherwise (within noise included)

    python -m lab.zero_init
"""
import sys

import torch

import training
from dataset.lm_dataset import SFTDataset
from lab import sweeps
from lab.lab import FAILS, HOLDS, Finding, below, compare, loss_spread, run_alone, table
from lab.swapped_init import SWAPPED
from model.lora_variants import INITS
from model.model_lora import apply_lora, mark_only_lora_as_trainable
from plot import panels
from plumbing.errors import run_main
from plumbing.flags import LORA_RANK, LORA_TARGETS

TITLE = "Both zero never learns; a non-zero A trains better"
CLAIM = ("A and B cannot both start at zero (no gradient would ever flow); swapping which one is zero works, but a "
         "non-zero A trains better.")
SOURCE = "003 LoRA 矩阵初始化方式"
RULE = ("both zero cannot learn: holds if both gradients are exactly 0 at step 0 and no seed's validation loss moves; "
        "does not hold otherwise. Swapped works, A != 0 better (plain LoRA, each at its own best rate): holds if the "
        "swapped start learns and the standard one ends below it, ranges over seeds apart; does not hold otherwise.")


def verdict(zero_norms: tuple, zero_start_losses: list, zero_final_losses: list, standard: list, swapped: list,
            swapped_start: float) -> list:
    frozen = zero_norms == (0.0, 0.0) and zero_start_losses == zero_final_losses
    works_but_worse = max(swapped) < swapped_start and below(standard, swapped)
    return [("both zero cannot learn", HOLDS if frozen else FAILS),
            ("swapped works, A != 0 better", HOLDS if works_but_worse else FAILS)]


def step0_gradient_norms(lab, init) -> tuple:
    """(‖∇A‖, ‖∇B‖) over all adapters, on the first 16 samples of the sweep task, for fresh adapters of `init`."""
    model, tok = lab.load(lab.base()["sft"])
    torch.manual_seed(1337)
    apply_lora(model, LORA_RANK, target_modules=LORA_TARGETS.split(","), layer_class=INITS[init])
    mark_only_lora_as_trainable(model)
    data = SFTDataset(lab.sweep_task()["data_path"], tok, max_length=64 if lab.quick else 224, verbose=False)
    X, Y, mask = training.collate_trimmed([data[i] for i in range(min(16, len(data)))])
    model.train()
    training.masked_cross_entropy(model(X).logits, Y, mask).backward()
    norm = {ab: torch.linalg.vector_norm(torch.stack([p.grad.norm() for n, p in model.named_parameters()
                                                      if n.endswith(f".lora.{ab}.weight")])).item() for ab in "AB"}
    return norm["A"], norm["B"]


def run(lab) -> Finding:
    norms = {init: step0_gradient_norms(lab, init) for init in INITS}
    demo, standard, swapped = sweeps.sweep_all(lab, [sweeps.DEMO, sweeps.PLAIN, SWAPPED])
    zeros = lab.train_all([lab.lora_job(lab.sweep_task(), variant="zeros", learning_rate=demo.best, seed=s) for s in lab.seeds])
    zero_start, zero_final = [r.curve()[0][1] for r in zeros], [r.final() for r in zeros]
    swapped_start = swapped.best_runs[0].curve()[0][1]
    verdicts = verdict(norms["zeros"], zero_start, zero_final, standard.at_best, swapped.at_best, swapped_start)
    panels([("bar", dict(title="gradient norms at step 0", x_label="‖∇‖ over all adapters",
                         bars={f"{init}, {ab}": (norms[init][i],) * 3 for init in INITS for i, ab in enumerate("AB")})),
            ("bar", dict(title="final validation loss (plain LoRA, best rates)", x_label="validation loss (mean; line: range)", zero=False,
                         bars={"standard (A random, B = 0)": (sum(standard.at_best) / len(standard.at_best),
                                                              min(standard.at_best), max(standard.at_best)),
                               "swapped (A = 0, B random)": (sum(swapped.at_best) / len(swapped.at_best),
                                                             min(swapped.at_best), max(swapped.at_best)),
                               "both zero": (sum(zero_final) / len(zero_final), min(zero_final), max(zero_final))},
                         refs=[(swapped_start, "the SFT model (step 0)")]))],
           lab.figure("lora_zero_init.svg"), "Which factor starts at zero", columns=2, width=470)
    rows = [[init, f"{norms[init][0]:.3g}", f"{norms[init][1]:.3g}"] for init in INITS]
    details = (f"Gradient norms at step 0 (the first 16 samples of the sweep task, rank {LORA_RANK} on {LORA_TARGETS}):\n\n"
               + table(["init", "‖∇A‖ at step 0", "‖∇B‖ at step 0"], rows)
               + f"\n\nBoth zero, at the demo's best rate {demo.best:g}: validation loss {loss_spread(zero_start)} at step "
               f"0 and {loss_spread(zero_final)} at the end. Plain LoRA at each one's best rate: standard "
               f"{loss_spread(standard.at_best)}, swapped {loss_spread(swapped.at_best)} "
               f"({compare(standard.at_best, swapped.at_best)} for the standard start), from {swapped_start:.3f}. "
               "The lab/swapped_init.py claim (001: no difference) reads the same runs; the two cannot both hold when "
               "the ranges are apart.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"Both zero: gradients {norms['zeros'][0]:g} and {norms['zeros'][1]:g}, loss {loss_spread(zero_final)} "
                   f"(from {loss_spread(zero_start)}); plain LoRA standard {loss_spread(standard.at_best)} vs swapped "
                   f"{loss_spread(swapped.at_best)}.", verdicts, details, ["lora_zero_init.svg"], "zero_init")


def main(argv=None):
    run_alone("zero_init", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
