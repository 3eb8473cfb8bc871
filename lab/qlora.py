"""QLoRA (Dettmers et al. 2023; 002 §七 names it LoRA's next step): LoRA on a base stored in 4-bit
NormalFloat (NF4) learns as well as on a 16-bit base, and NF4 keeps trained weights closer than the
other 4-bit formats, FP4 and int4, because trained weights are close to normally distributed and NF4's
sixteen values sit at a normal distribution's quantiles (formats/quantize.py builds all three).

Three measurements:
  error      every Linear of the demo SFT model's transformer blocks quantized in each format (4-bit:
             blocks of 64, one scale each, QLoRA's layout; int8 for reference): the relative error
             ‖W - Q(W)‖ / ‖W‖ of each matrix
  the base   the SFT model itself, quantized (no training): its loss on the reference answers of
             eval_general and eval_general_unseen (nats per answer token), against the float model's
  learning   the demo's LoRA on the sweep task at its best learning rate (lab/sweeps.py), every seed, on
             the float base and on the NF4 base (`train_lora.py --quantize_base nf4`: the block Linears
             hold only codes and scales and rebuild their weight for each product, forward and
             backward); the 8-bit base's runs (lab/int8_base.py) beside them. The paper's "16-bit"
             base is bfloat16; here the float base is float32, a stricter reference.

Rule (set before the run), one verdict per half:
  NF4 + LoRA matches a 16-bit base   holds if the NF4 base's validation loss is within noise of the float
                                     base's, or lower; with a caveat if worse but within 90% of its gain;
                                     does not hold otherwise
  NF4 beats FP4 and int4             holds if NF4's error is the lowest of the three 4-bit formats on every
                                     matrix; with a caveat if lowest in the mean over matrices but not on
                                     every one; does not hold otherwise

    python -m lab.qlora
"""
import sys

import torch.nn as nn

from formats.quantize import KINDS, error
from lab import sweeps
from lab.int8_base import INT8
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, as_good, loss_spread, mean, run_alone, table
from plot import panels
from plumbing.errors import run_main

TITLE = "QLoRA: LoRA on a 4-bit NormalFloat base"
CLAIM = ("LoRA on a base stored in 4-bit NormalFloat matches LoRA on a 16-bit base, and NF4 keeps trained weights closer "
         "than 4-bit floats (FP4) or integers (int4).")
SOURCE = "002 §七 2 (QLoRA); Dettmers et al. 2023, QLoRA §3 and §5"
FOUR_BIT = ("nf4", "fp4", "int4")
RULE = ("NF4 + LoRA matches a 16-bit base: holds if LoRA's validation loss on the NF4 base is within noise of the float "
        "base's or lower; with a caveat if worse but within 90% of its gain; does not hold otherwise. NF4 beats FP4 and "
        "int4: holds if NF4's relative error is the lowest of the three on every block matrix of the SFT model; with a "
        "caveat if lowest in the mean over matrices only; does not hold otherwise.")
QUANTIZED = sweeps.lora("LoRA on the NF4 base", 4e-3, quantize_base="nf4")
GENERAL_SETS = ("eval_general", "eval_general_unseen")


def verdict(nf4: list, fp32: list, start: float, errors: dict) -> list:
    """nf4, fp32: LoRA's validation losses over seeds on each base; start: the SFT model's; errors: {kind:
    [relative error of each matrix]} for the 4-bit kinds."""
    lowest = [min(FOUR_BIT, key=lambda kind: errors[kind][i]) for i in range(len(errors["nf4"]))]
    by_mean = min(FOUR_BIT, key=lambda kind: mean(errors[kind]))
    beats = HOLDS if all(k == "nf4" for k in lowest) else CAVEAT if by_mean == "nf4" else FAILS
    return [("NF4 + LoRA matches a 16-bit base", as_good(nf4, fp32, start)), ("NF4 beats FP4 and int4", beats)]


def block_matrices(model) -> dict:
    """{name: weight} of the Linears quantize_model quantizes (the transformer blocks')."""
    return {name: m.weight for name, m in model.named_modules()
            if type(m) is nn.Linear and name.startswith("layers.")}


def run(lab) -> Finding:
    demo = sweeps.sweep(lab, sweeps.DEMO)
    runs = lab.train_all([method.job(lab, lab.sweep_task(), demo.best, s) for method in (QUANTIZED, INT8) for s in lab.seeds])
    k = len(lab.seeds)
    nf4, int8 = [r.final() for r in runs[:k]], [r.final() for r in runs[k:]]
    start = demo.best_runs[0].curve()[0][1]

    model, _ = lab.load(lab.base()["sft"])
    matrices = block_matrices(model)
    errors = {kind: [error(w, kind) for w in matrices.values()] for kind in KINDS}
    losses = {kind: lab.answer_losses(GENERAL_SETS, quantize=kind if kind != "float" else None) for kind in ("float", *KINDS)}
    verdicts = verdict(nf4, demo.at_best, start, errors)

    nf4_lowest = sum(all(errors["nf4"][i] <= errors[o][i] for o in FOUR_BIT) for i in range(len(matrices)))
    panels([("bar", dict(title="relative error of each block matrix", x_label="‖W - Q(W)‖ / ‖W‖ (mean; line: range)",
                         bars={kind: (mean(errors[kind]), min(errors[kind]), max(errors[kind])) for kind in KINDS})),
            ("bar", dict(title="LoRA on the sweep task, every seed", x_label="validation loss (mean; line: range over seeds)",
                         zero=False, bars={"float base": (mean(demo.at_best), min(demo.at_best), max(demo.at_best)),
                                           "8-bit base": (mean(int8), min(int8), max(int8)),
                                           "NF4 base": (mean(nf4), min(nf4), max(nf4))}))],
           lab.figure("lora_qlora.svg"), "LoRA on a quantized base", columns=2, width=470)
    rows = [[kind, f"{mean(errors[kind]):.4f} ({min(errors[kind]):.4f}-{max(errors[kind]):.4f})",
             *(f"{losses[kind][s]:.3f}" for s in GENERAL_SETS)] for kind in KINDS]
    details = (f"The demo SFT model's {len(matrices)} block matrices, quantized (4-bit: blocks of 64; int8: one scale a "
               f"row); the relative error of each, and the SFT model so quantized on the reference answers of the general "
               f"sets (nats per answer token; float: {losses['float']['eval_general']:.3f} and "
               f"{losses['float']['eval_general_unseen']:.3f}):\n\n"
               + table(["format", "relative error, mean (range)", *(f"loss, {s}" for s in GENERAL_SETS)], rows)
               + f"\n\nNF4's error is the lowest of the 4-bit formats on {nf4_lowest} of {len(matrices)} matrices.\n\n"
               f"Learning: the sweep task, every seed, at the demo's best rate {demo.best:g} (the SFT model: {start:.3f}): "
               f"float base {loss_spread(demo.at_best)}, 8-bit base {loss_spread(int8)}, NF4 base {loss_spread(nf4)}. "
               "On the NF4 base the block Linears hold 4-bit codes and a scale per 64 weights, about 0.56 bytes a weight "
               "instead of 4; the adapter is the ordinary file and loads on the float base (tests/test_quantize.py).")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"LoRA's validation loss {loss_spread(nf4)} on the NF4 base vs {loss_spread(demo.at_best)} on the float "
                   f"one; NF4's error {mean(errors['nf4']):.3f} vs FP4 {mean(errors['fp4']):.3f} and int4 "
                   f"{mean(errors['int4']):.3f} (lowest on {nf4_lowest} of {len(matrices)} matrices).",
                   verdicts, details, ["lora_qlora.svg"], "qlora")


def main(argv=None):
    run_alone("qlora", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
