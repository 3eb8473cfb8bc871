"""Switch tasks by subtracting B·A from W: merge task A's adapter for serving, subtract it again, merge task
B's (001, LoRA 的训练和推理过程, 推理).

The demo's two adapters (lora_medical and lora_identity, seed 1337) take turns on the SFT model, CYCLES
times each: load, merge_lora (W <- W + scale·B·A), unmerge_lora (W <- W - scale·B·A), remove. Each add
and subtract rounds, so W drifts; afterwards the model is compared with the SFT model it started as:
the largest change of a weight and of a logit on 8 eval_general prompts, and the greedy answers to
eval_general. In float32 (the lab's and the demo's dtype) and in bfloat16 (a model served in 16 bits),
where each rounding is 65,536 times coarser.

Rule (set before the run): holds if in float32 every answer after the cycles is the SFT model's and no
logit moved by more than 1e-3; with a caveat if float32 is exact in that sense but bfloat16 changes an
answer (subtracting is safe only at full precision: keep the base, or the adapters unmerged); does not
hold if float32 changes an answer or a logit by more than 1e-3.

    python -m lab.subtract_switch
"""
import copy
import sys

import torch

from evaluation import generate_answers
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, run_alone, table
from lab.zero_start import logits
from model.model_lora import load_lora, merge_lora, remove_lora, unmerge_lora
from plot import line_chart
from plumbing.errors import run_main

TITLE = "Switch tasks by subtracting B·A"
CLAIM = "Merged adapters can be switched by subtracting one task's B·A from W and adding the next one's."
SOURCE = "001 LoRA 的训练和推理过程 (推理)"
CYCLES = 50  # each adapter merged and subtracted this often: a day of switching
LOGIT_TOLERANCE = 1e-3  # a logit change below this cannot change a greedy answer except at an exact tie
RULE = (f"after {CYCLES} merge-and-subtract cycles of each adapter: holds if in float32 every greedy answer is the SFT "
        f"model's and no logit moved by more than {LOGIT_TOLERANCE:g}; with a caveat if float32 is exact in that sense but "
        "bfloat16 changes an answer; does not hold if float32 changes an answer or a logit beyond that.")


def verdict(fp32_same_answers: bool, fp32_logit_change: float, bf16_same_answers: bool) -> str:
    if not fp32_same_answers or fp32_logit_change > LOGIT_TOLERANCE:
        return FAILS
    return HOLDS if bf16_same_answers else CAVEAT


def switch(model, adapters, cycles, checkpoints) -> list:
    """[(cycle, largest |W - W0|)] at each cycle in `checkpoints`, switching `adapters` in turn `cycles` times each.
    allow_other_base: after the first subtraction W is the base only up to rounding, and load_lora can tell."""
    start = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    drift = []
    for cycle in range(1, cycles + 1):
        for adapter in adapters:
            load_lora(model, adapter, allow_other_base=True)
            merge_lora(model)
            unmerge_lora(model)
            remove_lora(model)
        if cycle in checkpoints:
            now = model.state_dict()
            drift.append((cycle, max((now[k].float() - start[k]).abs().max().item() for k in start)))
    return drift


def run(lab) -> Finding:
    sft = lab.base()["sft"]
    adapters = [run.weights for run in lab.train_all([lab.lora_job(lab.full_task(n)) for n in ("lora_medical", "lora_identity")])]
    cycles = 3 if lab.quick else CYCLES
    checkpoints = sorted({1, 2, 5, 10, 20, cycles} & set(range(1, cycles + 1)))
    questions = [it["question"] for it in lab.eval_items("eval_general")]
    results, drifts = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        model, tok = lab.load(sft)
        model = copy.deepcopy(model).to(dtype)
        prompts = questions[:8]
        before_logits = logits(model, tok, prompts).float()
        before = generate_answers(model, tok, questions, 32, 16, model.config.max_seq_len)
        drifts[dtype] = switch(model, adapters, cycles, checkpoints)
        after = generate_answers(model, tok, questions, 32, 16, model.config.max_seq_len)
        changed = sum(a != b for a, b in zip(before, after))
        results[dtype] = {"changed": changed, "logit": (logits(model, tok, prompts).float() - before_logits).abs().max().item(),
                          "weight": drifts[dtype][-1][1]}
    fp32, bf16 = results[torch.float32], results[torch.bfloat16]
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}
    line_chart({name[d]: [(c, max(w, 1e-12)) for c, w in drifts[d]] for d in drifts}, lab.figure("lora_subtract_switch.svg"),
               "How far W drifts when two adapters are merged and subtracted in turn", "switch cycles (each adapter once)",
               "largest |W - W_start|", log_x=True, log_y=True, x_ticks=checkpoints)
    rows = [[name[d], f"{r['weight']:.2g}", f"{r['logit']:.2g}", f"{r['changed']} of {len(questions)}"] for d, r in results.items()]
    details = (f"The demo's two adapters (seed 1337), {cycles} cycles each, on the SFT model; against the SFT model before "
               f"the cycles (in the same dtype), on eval_general's {len(questions)} questions (greedy, 32 new tokens):\n\n"
               + table(["dtype", "largest weight change", "largest logit change", "answers changed"], rows)
               + "\n\nEach merge adds and each subtraction removes a rounded copy of scale·B·A, so the error is a random "
               "walk of one rounding per step: about 1e-7 relative in float32, 4e-3 in bfloat16. load_lora notices the "
               "drift (the base's fingerprint no longer matches after the first subtraction, so the cycles pass "
               "allow_other_base). The alternative is exact: keep the adapters unmerged and swap them "
               "(lab/adapter_swap.py), or keep a copy of W.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"After {cycles} cycles of each adapter: float32 moved a logit by {fp32['logit']:.1g} and changed "
                   f"{fp32['changed']} answers; bfloat16 by {bf16['logit']:.1g} and {bf16['changed']} answers.",
                   [("", verdict(fp32["changed"] == 0, fp32["logit"], bf16["changed"] == 0))], details,
                   ["lora_subtract_switch.svg"], "subtract_switch")


def main(argv=None):
    run_alone("subtract_switch", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
