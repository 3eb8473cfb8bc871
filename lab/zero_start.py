"""Claim 3: with B = 0 a new adapter starts exactly at the base model.

The demo's SFT model answers 8 questions of eval_general; each initialisation of
LoRALinear.initialise adds adapters (the demo's targets, rank 16), and the largest change of any
logit is printed. B = 0 (or A = 0) makes B·A·x a sum of exact zeros, so the change must be exactly
0.0, not merely small; PiSSA moves W's top singular directions into the adapter, so its start is
equal only up to float rounding.

    python -m lab.zero_start
"""
import copy
import sys

import torch

from evaluation import prompt_ids
from plumbing.errors import run_main
from lab.lab import Finding, run_alone, table
from model.lora_variants import INITS
from model.model_lora import apply_lora
from plumbing.flags import LORA_RANK, LORA_TARGETS

WHY = {"standard": "B = 0", "swapped": "A = 0", "zeros": "A = B = 0", "pissa": "W_res + B·A = W, rounded"}


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
    exact = [init for init in INITS if changes[init] == 0]
    details = (f"The demo's SFT model on {len(questions)} eval_general prompts ({base.shape[0]} positions, largest |logit| "
               f"{base.abs().max().item():.1f}), adapters of rank {LORA_RANK} on {LORA_TARGETS}:\n\n"
               + table(["init", "why", "largest change of a logit", "starts at the base"], rows))
    verdict = "holds" if {"standard", "swapped", "zeros"} <= set(exact) else "does not hold at this scale"
    return Finding(3, "B = 0: the adapted model starts as the base", "Initialising B to zero makes the adapted model "
                   "start exactly as the pretrained one.",
                   f"largest change of a logit = {changes['standard']:g} with B = 0 (also {changes['swapped']:g} with A = 0); "
                   f"PiSSA: {changes['pissa']:.1g} (rounding).", verdict, details, [], "zero_start")


def main(argv=None):
    run_alone("zero_start", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
