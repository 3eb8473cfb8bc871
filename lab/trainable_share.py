"""Claim 1: LoRA trains "0.1% to 1% of the parameters". Which ranks and targets give that, at which size?

Counted, not estimated: each model is built on PyTorch's "meta" device (shapes only, no memory),
apply_lora adds the adapters, and the trainable share is read off the parameters themselves, the
number trainable_parameters_report prints during training.

    python -m lab.trainable_share
"""
import sys

import torch

from plumbing.errors import run_main
from lab.lab import Finding, run_alone, table
from model.LMConfig import LMConfig
from model.model import MiniMindLM, count_parameters
from model.model_lora import apply_lora, mark_only_lora_as_trainable
from plot import line_chart

MODELS = {  # LMConfig fields; the demo's is the training scripts' defaults
    "demo (1.1M)": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, vocab_size=2048),
    "MiniMind2-Small (25.8M)": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=2, vocab_size=6400),
    "MiniMind2 (104M)": dict(dim=768, n_layers=16, n_heads=8, n_kv_heads=2, vocab_size=6400),
}
RANKS = (1, 2, 4, 8, 16, 32, 64)
TARGETS = {  # the label -> target_modules
    "wq,wo (MiniMind2)": ["wq", "wo"],
    "wq,wk,wv,wo": ["wq", "wk", "wv", "wo"],
    "every Linear": ["wq", "wk", "wv", "wo", "w1", "w2", "w3"],
    "every Linear + embedding (demo)": ["wq", "wk", "wv", "wo", "w1", "w2", "w3", "output"],
}


def share(fields: dict, rank: int, targets: list) -> float:
    """Trainable parameters / all parameters (adapters included), as trainable_parameters_report says."""
    with torch.device("meta"):
        model = MiniMindLM(LMConfig(**fields))
    apply_lora(model, rank, target_modules=targets)
    mark_only_lora_as_trainable(model)
    total, trainable = count_parameters(model)
    return trainable / total


def run(lab) -> Finding:
    shares = {(m, t, r): share(MODELS[m], r, TARGETS[t]) for m in MODELS for t in TARGETS for r in RANKS}
    rows = [[m, t, *(f"{shares[m, t, r]:.2%}" for r in RANKS)] for m in MODELS for t in TARGETS]
    in_band = {m: {t: [r for r in RANKS if 0.001 <= shares[m, t, r] <= 0.01] for t in TARGETS} for m in MODELS}
    small, big = "MiniMind2-Small (25.8M)", "MiniMind2 (104M)"
    MM2, DEMO = "wq,wo (MiniMind2)", "every Linear + embedding (demo)"
    series = {t: [(r, 100 * shares[small, t, r]) for r in RANKS] for t in TARGETS}
    series["0.1% and 1%"] = [(1, 0.1), (64, 0.1)]
    line_chart(series, lab.figure("lora_trainable_share.svg"), "Trainable share of MiniMind2-Small (25.8M) vs rank",
               "LoRA rank r", "trainable parameters (%)", log_x=True, log_y=True)
    demo_least = min(shares["demo (1.1M)", t, 1] for t in TARGETS)
    details = (table(["model", "targets", *(f"r={r}" for r in RANKS)], rows) + "\n\n"
               "Ranks inside 0.1%-1%: " + "; ".join(
                   f"**{m}**: " + ", ".join(f"{t} r={ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else f"{t} r={ranks[0]}"
                                            for t, ranks in in_band[m].items() if ranks) for m in MODELS) + ".\n\n"
               "The share is rank x (in + out) per adapted matrix over the model's size, so it shrinks as the model "
               "widens: the same rank is a smaller share of a bigger model. The demo model is so narrow (dim 128) "
               f"that even rank 1 is {demo_least:.2%} of it; its default (rank 16 on every Linear and the embedding) "
               f"is {shares['demo (1.1M)', DEMO, 16]:.1%}.")
    return Finding(1, "Trainable share", "LoRA trains only 0.1%-1% of the model's parameters.",
                   f"MiniMind2 (104M) with MiniMind2's wq,wo at r=16: {shares[big, MM2, 16]:.2%}; "
                   f"MiniMind2-Small: {shares[small, MM2, 16]:.2%}; the demo's own adapter: "
                   f"{shares['demo (1.1M)', DEMO, 16]:.1%} (the smallest share of the 1.1M demo model, rank 1 on wq,wo, "
                   f"is {demo_least:.2%}).",
                   "holds with a caveat", details, ["lora_trainable_share.svg"], "trainable_share")


def main(argv=None):
    run_alone("trainable_share", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
