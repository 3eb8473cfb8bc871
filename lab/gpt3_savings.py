"""The LoRA paper's GPT-3 figures (001, LoRA 的训练和推理过程, 训练): fine-tuning GPT-3 175B, LoRA cut the
training memory from 1.2 TB to 350 GB, and at r = 4 the checkpoint from 350 GB to 35 MB.

Measured at MiniMind2's sizes with the paper's GPT-3 adapter (r = 4 on wq and wv):
  memory      one training step counted as lab/memory.py counts it (weights, gradients, AdamW's
              moments, the activations of a real forward pass), float32, batch 1 x 512, full
              fine-tuning against LoRA, at MiniMind2 (104M)
  checkpoint  the bytes of a whole model against an adapter's, in 16-bit floats as the paper's 350 GB
              (175B x 2 bytes), counted on the meta device; the same arithmetic at GPT-3's own shapes
              (96 layers, width 12,288, vocabulary 50,257) checks that it reproduces the paper's figure
The checkpoint ratio is (12 L d^2) / (4 r d L), about 3d / r: it grows with the width d, so the
paper's 10,000x is a property of GPT-3's size.

Rule (set before the run), one verdict per half, at MiniMind2 (104M):
  memory      holds if LoRA needs at most a third of full fine-tuning's memory (the paper's 350 / 1,200
              rounded); with a caveat if at most half; does not hold otherwise
  checkpoint  holds if the adapter is at least 5,000x smaller than the model (within 2x of the paper's
              10,000x); with a caveat if at least 100x; does not hold otherwise

    python -m lab.gpt3_savings
"""
import sys

import torch

from lab.lab import CAVEAT, FAILS, HOLDS, Finding, run_alone, table
from lab.memory import TINY, counted
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from model.model_lora import apply_lora, mark_only_lora_as_trainable
from plot import panels
from plumbing.errors import run_main

TITLE = "GPT-3's savings: memory 1.2 TB -> 350 GB, checkpoint 350 GB -> 35 MB"
CLAIM = ("Fine-tuning GPT-3 175B with LoRA cut training memory from 1.2 TB to 350 GB, and at r = 4 the checkpoint from "
         "350 GB to 35 MB.")
SOURCE = "001 LoRA 的训练和推理过程 (训练); paper: Hu et al. 2021"
THIRD, HALF = 1 / 3, 1 / 2  # LoRA's memory over full fine-tuning's
FAR, SMALLER = 5000, 100  # how many times smaller the checkpoint: the paper's order of magnitude, and merely "much"
RULE = ("at MiniMind2 (104M) with r = 4 on wq, wv: memory holds if LoRA needs at most a third of full fine-tuning's "
        "(counted, batch 1 x 512), with a caveat if at most half, does not hold otherwise; checkpoint holds if the "
        f"adapter is at least {FAR:,}x smaller than the model, with a caveat if at least {SMALLER}x, does not hold otherwise.")
RANK, TARGETS = 4, ["wq", "wv"]  # the paper's GPT-3 adapter
SIZES = {"demo (1.1M)": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, vocab_size=2048),
         "MiniMind2-Small (25.8M)": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=2, vocab_size=6400),
         "MiniMind2 (104M)": dict(dim=768, n_layers=16, n_heads=8, n_kv_heads=2, vocab_size=6400)}
GPT3 = dict(layers=96, width=12288, vocab=50257)


def verdict(memory_ratio: float, checkpoint_reduction: float) -> list:
    memory = HOLDS if memory_ratio <= THIRD else CAVEAT if memory_ratio <= HALF else FAILS
    checkpoint = HOLDS if checkpoint_reduction >= FAR else CAVEAT if checkpoint_reduction >= SMALLER else FAILS
    return [("memory", memory), ("checkpoint", checkpoint)]


def counts(fields) -> tuple:
    """(all parameters, the adapter's) of a MiniMindLM with r=4 LoRA on wq, wv, counted on the meta device."""
    with torch.device("meta"):
        model = MiniMindLM(LMConfig(**fields))
    total = sum(p.numel() for p in model.parameters())
    apply_lora(model, RANK, target_modules=TARGETS)
    mark_only_lora_as_trainable(model)
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


def gpt3_counts() -> tuple:
    """GPT-3 175B from its shapes: 12 d^2 per layer (attention 4 d^2, MLP 8 d^2) plus the embedding; the adapter
    2 r (d + d) per adapted matrix, two a layer."""
    d, layers = GPT3["width"], GPT3["layers"]
    return 12 * layers * d * d + GPT3["vocab"] * d, layers * len(TARGETS) * RANK * 2 * d


def run(lab) -> Finding:
    rows, widths = [], {}
    for name, fields in SIZES.items():
        total, adapter = counts(fields)
        widths[name] = (fields["dim"], total / adapter)
        rows.append([name, f"{2 * total / 1e6:,.1f} MB", f"{2 * adapter / 1e6:,.3f} MB", f"{total / adapter:,.0f}x"])
    total, adapter = gpt3_counts()
    widths["GPT-3 175B"] = (GPT3["width"], total / adapter)
    rows.append(["GPT-3 175B (from its shapes)", f"{2 * total / 1e9:,.0f} GB", f"{2 * adapter / 1e6:,.1f} MB",
                 f"{total / adapter:,.0f}x"])
    big = "MiniMind2 (104M)"
    fields, seq = (TINY, 32) if lab.quick else (SIZES[big], 512)
    mem = {mode: counted(fields, mode, 1, seq, rank=RANK, targets=TARGETS) for mode in ("full", "LoRA")}
    ratio = mem["LoRA"]["sum"] / mem["full"]["sum"]
    reduction = widths[big][1]
    mem_rows = [[part, f"{mem['full'][part] / 1e6:,.0f} MB", f"{mem['LoRA'][part] / 1e6:,.1f} MB"]
                for part in ("weights", "gradients", "optimizer", "activations", "sum")]
    panels([("line", dict(title="checkpoint: whole model / adapter (r = 4 on wq, wv)",
                          series={"counted": [widths[n] for n in widths]}, x_label="model width d", y_label="times smaller",
                          notes=[(*widths[n], n.split(" (")[0]) for n in widths],
                          log_x=True, log_y=True, refs=[(FAR, f"{FAR:,}x: the rule's 'holds'"),
                                                        (SMALLER, f"{SMALLER}x: its caveat")])),
            ("bar", dict(title=f"{big}: training memory, counted", x_label="MB (batch 1 x 512, float32, AdamW)",
                         bars={mode: (mem[mode]["sum"] / 1e6,) * 3 for mode in mem}))],
           lab.figure("lora_gpt3_savings.svg"), "The LoRA paper's GPT-3 savings, at MiniMind2's sizes", columns=2, width=470)
    details = ("Checkpoints in 16-bit floats, the whole model against the adapter (r = 4 on wq and wv), counted:\n\n"
               + table(["model", "whole model", "adapter", "smaller by"], rows)
               + f"\n\nThe arithmetic gives GPT-3's adapter as {2 * adapter / 1e6:,.0f} MB against {2 * total / 1e9:,.0f} GB, "
               "the paper's 35 MB and 350 GB, so the ratio is a matter of width: a d x d matrix against r x 2d "
               "numbers.\n\nTraining memory, " + big + ", batch 1 x 512, full / LoRA (r = 4 on wq, wv), counted:\n\n"
               + table(["part", "full", "LoRA"], mem_rows)
               + f"\n\nLoRA needs {ratio:.2f}x of full fine-tuning's memory here; the paper's 350 / 1,200 = 0.29 holds for "
               "GPT-3 in 16 bits with Adam, where the activations of a batch are small beside 175B weights' optimizer "
               "state. The frozen weights stay whatever the method: they set the floor.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"{big}, r = 4 on wq, wv: training memory {ratio:.2f}x of full fine-tuning's (counted, batch 1 x 512); "
                   f"checkpoint {reduction:,.0f}x smaller (GPT-3's shapes give {widths['GPT-3 175B'][1]:,.0f}x).",
                   verdict(ratio, reduction), details, ["lora_gpt3_savings.svg"], "gpt3_savings")


def main(argv=None):
    run_alone("gpt3_savings", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
