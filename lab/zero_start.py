"""With B = 0 a new adapter starts exactly at the base model (001 under LoRA 整体架构, A 和 B 的初始化方法;
003 LoRA 矩阵初始化方式).

The demo's SFT model answers 8 questions of eval_general; each initialisation of model/lora_variants.py's
INITS adds adapters (the demo's targets, rank 16), and the largest change of any logit is printed.
B = 0 (or A = 0) makes B·A·x a sum of exact zeros, so the change must be exactly 0.0, not merely
small; PiSSA moves W's top singular directions into the adapter, so its start is equal only up to
float rounding (reported, not judged: PiSSA does not claim B = 0).

Rule (set before the run): holds if every initialisation with a zero factor (standard, swapped, zeros,
gauss_r, kaiming) changes no logit at all; with a caveat if the largest change is at most 1e-5 (float
rounding) but not zero; does not hold otherwise.

    python -m lab.zero_start
"""
import copy
import sys

import torch

from evaluation import prompt_ids
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, run_alone, table
from model.lora_variants import INITS
from model.model_lora import apply_lora
from plot import bar_chart
from plumbing.errors import run_main
from plumbing.flags import LORA_RANK, LORA_TARGETS

TITLE = "B = 0: the adapted model starts as the base"
CLAIM = "Initialising B to zero makes the adapted model start exactly as the pretrained one."
SOURCE = "001 LoRA 整体架构 (A 和 B 的初始化方法); 003 LoRA 矩阵初始化方式"
ROUNDING = 1e-5  # float32 rounding of logits of size ~10: anything below is not a change
RULE = ("holds if every initialisation with a zero factor (B = 0, or A = 0) changes no logit at all; with a caveat if the "
        f"largest change is at most {ROUNDING:g} (float rounding); does not hold otherwise.")
WHY = {"standard": "B = 0", "swapped": "A = 0", "zeros": "A = B = 0", "gauss_r": "B = 0", "kaiming": "B = 0",
       "pissa": "W_res + B·A = W, rounded"}
ZERO_FACTOR = [init for init in WHY if init != "pissa"]


def verdict(changes: list) -> str:
    """changes: the largest logit change of each zero-factor initialisation."""
    worst = max(changes)
    return HOLDS if worst == 0 else CAVEAT if worst <= ROUNDING else FAILS


@torch.no_grad()
def logits(model, tok, questions) -> torch.Tensor:
    """The logits at every position of each question's chat prompt, concatenated: (positions, vocab)."""
    rows = [torch.tensor([prompt_ids(tok, [{"role": "user", "content": q}], model.config.max_seq_len, 48)]) for q in questions]
    return torch.cat([model(ids).logits[0] for ids in rows])


def run(lab) -> Finding:
    model, tok = lab.load(lab.base()["sft"])
    questions = [it["question"] for it in lab.eval_items("eval_general")[:8]]
    base = logits(model, tok, questions)
    rows, changes = [], {}
    for init in INITS:
        adapted = copy.deepcopy(model)
        apply_lora(adapted, LORA_RANK, target_modules=LORA_TARGETS.split(","), layer_class=INITS[init])
        changes[init] = (logits(adapted.eval(), tok, questions) - base).abs().max().item()
        rows.append([init, WHY[init], f"{changes[init]:.3g}", "yes, exactly" if changes[init] == 0 else "to rounding"])
    bar_chart({init: (changes[init] / ROUNDING,) * 3 for init in INITS}, lab.figure("lora_zero_start.svg"),
              "The largest change of any logit when fresh adapters are added", f"largest |change| in units of {ROUNDING:g}",
              refs=[(1.0, f"{ROUNDING:g}: float rounding")])
    details = (f"The demo's SFT model on {len(questions)} eval_general prompts ({base.shape[0]} positions, largest |logit| "
               f"{base.abs().max().item():.1f}), adapters of rank {LORA_RANK} on {LORA_TARGETS}:\n\n"
               + table(["init", "why", "largest change of a logit", "starts at the base"], rows))
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"Largest change of a logit: {max(changes[i] for i in ZERO_FACTOR):g} with a zero factor (B = 0, A = 0, "
                   f"both); PiSSA: {changes['pissa']:.1g} (rounding).",
                   [("", verdict([changes[i] for i in ZERO_FACTOR]))], details, ["lora_zero_start.svg"], "zero_start")


def main(argv=None):
    run_alone("zero_start", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
