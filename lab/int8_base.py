"""LoRA on a base loaded in 8 bits (000 §3.3: its PEFT example loads LLaMA-7B with load_in_8bit and
trains LoRA on it): the adapter learns as well, and the base takes far less memory.

Two measurements:
  learning   the demo's LoRA on the sweep task at its best learning rate (lab/sweeps.py), every seed,
             on the SFT model as it is and on the same model with every block's Linear stored in 8 bits
             (`train_lora.py --quantize_base int8`, formats/quantize.py: int8 codes and one scale per
             output row, as LLM.int8 stores them, the weight rebuilt for each product; the tied
             embedding stays, as bitsandbytes leaves lm_head)
  memory     what LoRA training holds at MiniMind2's size (104M) with the example's adapter (r=16 on
             wq, wk, wv, wo), batch 1 x 512, counted as lab/memory.py counts: the base's weights in
             32 bits or in 8 (1 byte per weight and a 4-byte scale per row), the adapter's weights,
             gradients and AdamW moments, and the activations of a real forward pass

Rule (set before the run), one verdict per half:
  learns as well   holds if the 8-bit base's loss is within noise of the float base's, or lower; with
                   a caveat if worse but within 90% of its gain; does not hold otherwise
  far less memory  holds if the 8-bit base cuts the counted training memory at least in half; with a
                   caveat if by at least a quarter; does not hold otherwise

    python -m lab.int8_base
"""
import sys

import torch

from bench.bench_train import make_batch
from lab import sweeps
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, as_good, loss_spread, mean, run_alone, table
from lab.memory import TINY, activation_bytes
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from model.model_lora import apply_lora, mark_only_lora_as_trainable
from plot import panels
from plumbing.errors import run_main

TITLE = "LoRA on an 8-bit base"
CLAIM = "A LoRA adapter can be trained on a base model loaded in 8 bits (the PEFT example's load_in_8bit)."
SOURCE = "000 §3.3 使用 PEFT 库"
HALF, QUARTER = 0.5, 0.75  # counted memory with the 8-bit base over the 32-bit one: "far less" and "less"
RULE = ("learns as well: holds if the 8-bit base's validation loss is within noise of the float base's or lower; with a "
        "caveat if worse but within 90% of its gain; does not hold otherwise. Far less memory (MiniMind2, 104M, the "
        f"example's r=16 on wq, wk, wv, wo, batch 1 x 512, counted): holds if the 8-bit base needs at most {HALF:.0%} of "
        f"the 32-bit base's training memory; with a caveat if at most {QUARTER:.0%}; does not hold otherwise.")
MINIMIND2 = dict(dim=768, n_layers=16, n_heads=8, n_kv_heads=2, vocab_size=6400)
TARGETS = ["wq", "wk", "wv", "wo"]  # the PEFT example's q_proj, k_proj, v_proj, o_proj
INT8 = sweeps.lora("LoRA on the 8-bit base", 4e-3, quantize_base="int8")


def verdict(int8: list, fp32: list, start: float, memory_ratio: float) -> list:
    memory = HOLDS if memory_ratio <= HALF else CAVEAT if memory_ratio <= QUARTER else FAILS
    return [("learns as well", as_good(int8, fp32, start)), ("far less memory", memory)]


def counted_memory(fields, batch, seq) -> dict:
    """{"fp32": bytes, "int8": bytes, ...}: LoRA training's counted memory with the base in 32 or 8 bits."""
    torch.manual_seed(0)
    model = MiniMindLM(LMConfig(**fields, max_seq_len=seq)).train()
    apply_lora(model, 16, target_modules=TARGETS)
    mark_only_lora_as_trainable(model)
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    quantized = [m.weight for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name.startswith("layers.")]
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    in_8_bits = sum(w.numel() for w in quantized)
    X, Y, mask = make_batch(fields["vocab_size"], batch, seq, "sft", torch.Generator().manual_seed(0))
    parts = {"adapter": 4 * 4 * lora,  # its weights, gradients and AdamW's two moments, float32
             "activations": activation_bytes(model, X, Y, mask)}
    base = {"fp32": 4 * frozen, "int8": 4 * (frozen - in_8_bits) + in_8_bits + 4 * sum(w.shape[0] for w in quantized)}
    return {**{k: v + sum(parts.values()) for k, v in base.items()}, **parts, "base_fp32": base["fp32"], "base_int8": base["int8"]}


def run(lab) -> Finding:
    demo = sweeps.sweep(lab, sweeps.DEMO)
    made = lab.train_all([INT8.job(lab, lab.sweep_task(), demo.best, s) for s in lab.seeds])
    int8 = [r.final() for r in made]
    start = demo.best_runs[0].curve()[0][1]
    fields = TINY if lab.quick else MINIMIND2
    mem = counted_memory(fields, 1, 32 if lab.quick else 512)
    ratio = mem["int8"] / mem["fp32"]
    verdicts = verdict(int8, demo.at_best, start, ratio)
    mb = {k: f"{v / 1e6:,.0f} MB" for k, v in mem.items()}
    panels([("bar", dict(title="sweep task, every seed", x_label="validation loss (mean; line: range over seeds)", zero=False,
                         bars={"float base": (mean(demo.at_best), min(demo.at_best), max(demo.at_best)),
                               "8-bit base": (mean(int8), min(int8), max(int8))})),
            ("bar", dict(title="MiniMind2 (104M), LoRA training, counted", x_label="MB",
                         bars={"32-bit base": (mem["fp32"] / 1e6,) * 3, "8-bit base": (mem["int8"] / 1e6,) * 3}))],
           lab.figure("lora_int8_base.svg"), "LoRA on a base stored in 8 bits", columns=2, width=470)
    details = (f"Learning: the sweep task, every seed, at the demo's best rate {demo.best:g}: float base "
               f"{loss_spread(demo.at_best)}, 8-bit base {loss_spread(int8)} (the SFT model: {start:.3f}).\n\n"
               "Memory, MiniMind2 (104M), LoRA r=16 on wq, wk, wv, wo, batch 1 x 512, counted:\n\n"
               + table(["part", "32-bit base", "8-bit base"],
                       [["the base's weights", mb["base_fp32"], mb["base_int8"]],
                        ["the adapter (weights, gradients, AdamW)", mb["adapter"], mb["adapter"]],
                        ["activations (a real forward pass)", mb["activations"], mb["activations"]],
                        ["sum", mb["fp32"], mb["int8"]]])
               + f"\n\nStoring the frozen base in 8 bits shrinks its weights only; the adapter's state and the activations "
               f"stay, so the whole comes to {ratio:.2f}x. The 8-bit run holds its block Linears as int8 codes and computes with "
               "the numbers they stand for (formats/quantize.py); the memory at MiniMind2's size is counted, as lab/memory.py "
               "counts it. lab/qlora.py goes on to 4 bits.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"Validation loss {loss_spread(int8)} on the 8-bit base vs {loss_spread(demo.at_best)} on the float "
                   f"one; counted training memory at MiniMind2's size {ratio:.2f}x of the 32-bit base's.",
                   verdicts, details, ["lora_int8_base.svg"], "int8_base")


def main(argv=None):
    run_alone("int8_base", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
