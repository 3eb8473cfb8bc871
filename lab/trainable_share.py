"""LoRA trains "0.1% to 1% of the parameters" (000 §1.1; 002 §一 says the same). Which ranks and
targets give that, at which size?

Counted, not estimated: each model is built on PyTorch's "meta" device (shapes only, no memory),
apply_lora adds the adapters, and the trainable share is read off the parameters themselves, the
number trainable_parameters_report prints during training. The write-ups mean models like
MiniMind2's, with MiniMind2's own LoRA (rank 16 on wq and wo); the demo's model is 100x smaller and
its adapter adapts every Linear and the tied embedding.

Rule (set before the run): holds if MiniMind2's own LoRA trains between 0.1% and 1% of both
MiniMind2 models and the demo's adapter is inside the band too; with a caveat if MiniMind2's LoRA is
inside it for at least one of the two (the share depends on the model and the targets); does not
hold if for neither. A count has no seed noise: the band's edges are the claim's own.

    python -m lab.trainable_share
"""
import sys

import torch

from lab.lab import CAVEAT, FAILS, HOLDS, Finding, run_alone, table
from model.LMConfig import LMConfig
from model.model import MiniMindLM, count_parameters
from model.model_lora import apply_lora, mark_only_lora_as_trainable
from plot import panels
from plumbing.errors import run_main
from plumbing.flags import LORA_RANK, LORA_TARGETS

TITLE = "Trainable share"
CLAIM = "LoRA trains only 0.1%-1% of the model's parameters."
SOURCE = "000 §1.1 LoRA 的核心优势; 002 §一"
BAND = (0.001, 0.01)  # the claim's own "0.1%-1%"
RULE = ("holds if MiniMind2's own LoRA (r=16 on wq, wo) trains 0.1%-1% of both MiniMind2 models and the demo's adapter "
        "is inside the band too; with a caveat if MiniMind2's LoRA is inside it for one or both models but the demo's "
        "adapter is not, or for only one model; does not hold if for neither.")

MODELS = {  # LMConfig fields; the demo's is the training scripts' defaults
    "demo (1.1M)": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, vocab_size=2048),
    "MiniMind2-Small (25.8M)": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=2, vocab_size=6400),
    "MiniMind2 (104M)": dict(dim=768, n_layers=16, n_heads=8, n_kv_heads=2, vocab_size=6400),
}
RANKS = (1, 2, 4, 8, 16, 32, 64)
MM2, DEMO = "wq,wo (MiniMind2)", "every Linear + embedding (demo)"
TARGETS = {  # the label -> target_modules
    MM2: ["wq", "wo"],
    "wq,wk,wv,wo": ["wq", "wk", "wv", "wo"],
    "every Linear": ["wq", "wk", "wv", "wo", "w1", "w2", "w3"],
    DEMO: LORA_TARGETS.split(","),
}


def in_band(share) -> bool:
    return BAND[0] <= share <= BAND[1]


def verdict(minimind2_shares: list, demo_share: float) -> str:
    """minimind2_shares: MiniMind2's own LoRA's share of each MiniMind2 model; demo_share: the demo adapter's."""
    inside = [in_band(s) for s in minimind2_shares]
    if all(inside) and in_band(demo_share):
        return HOLDS
    return CAVEAT if any(inside) else FAILS


def share(fields: dict, rank: int, targets: list) -> float:
    """Trainable parameters / all parameters (adapters included), as trainable_parameters_report says."""
    with torch.device("meta"):
        model = MiniMindLM(LMConfig(**fields))
    apply_lora(model, rank, target_modules=targets)
    mark_only_lora_as_trainable(model)
    total, trainable = count_parameters(model)
    return trainable / total


def run(lab) -> Finding:
    ranks = (1, LORA_RANK) if lab.quick else RANKS
    shares = {(m, t, r): share(MODELS[m], r, TARGETS[t]) for m in MODELS for t in TARGETS for r in ranks}
    rows = [[m, t, *(f"{shares[m, t, r]:.3%}" for r in ranks)] for m in MODELS for t in TARGETS]
    in_ranks = {m: {t: [r for r in ranks if in_band(shares[m, t, r])] for t in TARGETS} for m in MODELS}
    small, big, demo = list(MODELS)[1], list(MODELS)[2], list(MODELS)[0]
    panels([("line", dict(title=m, series={t: [(r, shares[m, t, r]) for r in ranks] for t in TARGETS}, x_label="LoRA rank r",
                          y_label="trainable share", log_x=True, log_y=True, percent=True, x_ticks=list(ranks),
                          refs=[(BAND[0], "0.1%: the claim's lower bound"), (BAND[1], "1%: its upper bound")]))
            for m in MODELS], lab.figure("lora_trainable_share.svg"), "Trainable share of the model vs rank, by target set",
           columns=3, width=360)
    mm2 = [shares[small, MM2, LORA_RANK], shares[big, MM2, LORA_RANK]]
    demo_share = shares[demo, DEMO, LORA_RANK]
    details = (table(["model", "targets", *(f"r={r}" for r in ranks)], rows) + "\n\n"
               "Ranks inside 0.1%-1%: " + "; ".join(
                   f"**{m}**: " + (", ".join(f"{t} r={rs[0]}-{rs[-1]}" if len(rs) > 1 else f"{t} r={rs[0]}"
                                             for t, rs in in_ranks[m].items() if rs) or "none") for m in MODELS) + ".\n\n"
               "The share is rank x (in + out) per adapted matrix over the model's size, so it shrinks as the model "
               "widens: the same rank is a smaller share of a bigger model. MiniMind2-Small with MiniMind2's LoRA sits a "
               f"hair above the band ({mm2[0]:.3%}); the demo model is so narrow (dim 128) that even rank 1 on wq, wo is "
               f"{shares[demo, MM2, 1]:.2%} of it, and its own adapter (rank {LORA_RANK} on every Linear and the embedding) "
               f"is {demo_share:.1%}. The shares are trainable / all parameters of the adapted model, adapters included, "
               "as trainable_parameters_report prints them.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"MiniMind2's LoRA (r={LORA_RANK} on wq, wo): {mm2[1]:.3%} of MiniMind2 (104M), {mm2[0]:.3%} of "
                   f"MiniMind2-Small; the demo's own adapter: {demo_share:.1%} of the adapted demo model's parameters "
                   f"({demo_share / (1 - demo_share):.1%} of the base's).",
                   [("", verdict(mm2, demo_share))], details, ["lora_trainable_share.svg"], "trainable_share")


def main(argv=None):
    run_alone("trainable_share", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
