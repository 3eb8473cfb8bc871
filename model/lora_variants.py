"""LoRA's variants and predecessors, beside model/model_lora.py: what the LoRA lab compares LoRA with.

model_lora.py teaches plain LoRA. Everything else plugs in here, through one seam: VARIANTS, a table
of name -> how to put that kind of adapter on a model and how to save it. The lab's trainer
(`python -m lab.train_variant --variant NAME`) and its measurements take a variant by name from it:

    "lora"      plain LoRA, train_lora.py's own (A random, B = 0; scale alpha / rank)
    "rslora"    rsLoRA's scale alpha / sqrt(rank) (model_lora.SCALINGS says why)
    "swapped"   A = 0, B random: also starts at the base; A is trained first instead
    "zeros"     A = B = 0: both gradients are zero (see model_lora.LoRA), so nothing ever trains
    "gauss_r"   A ~ normal(0, 1/r) instead of MiniMind2's normal(0, 0.02) (a write-up's code)
    "kaiming"   A ~ kaiming_uniform(a=sqrt(5)), PEFT's and nn.Linear's default (another write-up's code)
    "pissa"     A and B start on W's top singular directions, W keeps the rest (Meng et al. 2024)
    "int8_base" plain LoRA on a base whose Linear weights are rounded to 8 bits (a PEFT example's
                load_in_8bit): what a LoRA learns on a quantized base
    "adapter"   Houlsby's bottleneck adapters, LoRA's predecessor (model/predecessors.py)
    "prefix"    Li & Liang's prefix tuning, the other predecessor (model/predecessors.py)

Every LoRA variant is a subclass of LoRALinear given to apply_lora(layer_class=...), and saves an
ordinary adapter file (PiSSA's as the rank-2r adapter it amounts to), which model_lora.load_lora
reads with no knowledge of the variant. A predecessor's file is its own kind: load_adapter tells them
apart.
"""
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from formats.checkpoint import read_checkpoint
from formats.quantize import quantize
from model.model_lora import LoRALinear, apply_lora, load_lora, mark_only_lora_as_trainable, save_lora
from model.predecessors import apply_method, load_method, save_method


class SwappedLoRALinear(LoRALinear):
    """A = 0, B ~ normal(0, 0.02): B·A = 0 as in LoRA, but A gets the first gradient instead of B.
    (The LoRA author's reply to "why not the other way round?": it makes no difference; the lab measures it.)"""

    init = "swapped"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            nn.init.zeros_(self.lora.A.weight)
            nn.init.normal_(self.lora.B.weight, mean=0.0, std=0.02)


class ZerosLoRALinear(LoRALinear):
    """A = B = 0: dLoss/dB = g·(A x)ᵀ = 0 and dLoss/dA = Bᵀ·g·xᵀ = 0, so neither ever moves. A demonstration
    of why LoRA starts A at random."""

    init = "zeros"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            nn.init.zeros_(self.lora.A.weight)


class GaussRLoRALinear(LoRALinear):
    """A ~ normal(0, 1/r) (std 1/sqrt(rank)), B = 0: the LoRA layer of one write-up's from-scratch code.
    At rank 16 A starts 12.5x larger than MiniMind2's normal(0, 0.02), so B·A grows 12.5x faster per step
    of B: the same run as a larger learning rate for B."""

    init = "gauss_r"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            nn.init.normal_(self.lora.A.weight, mean=0.0, std=1.0 / math.sqrt(self.rank))


class KaimingLoRALinear(LoRALinear):
    """A ~ kaiming_uniform(a=sqrt(5)), i.e. uniform(-1/sqrt(in), 1/sqrt(in)) (nn.Linear's own default, which
    PEFT keeps), B = 0: another write-up's from-scratch code."""

    init = "kaiming"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora.A.weight, a=math.sqrt(5))


class PiSSALinear(LoRALinear):
    """PiSSA (Meng et al. 2024): the adapter starts on the top-`rank` singular directions of W itself.

    W = U S Vᵀ; scale·B·A = U_r S_r V_rᵀ and W keeps only the rest, W_res = W - scale·B·A. The output is
    unchanged at step 0, but training moves W's principal part instead of an update that starts at 0.
    W was changed (changes_base), so the file must say how to get from the *untouched* W to the trained
    model: scale·(B·A - B0·A0), one adapter of rank 2r, A' = [A; A0], B' = [B, -B0] (PEFT saves PiSSA
    the same way). remove_lora puts W's principal part back.
    """

    init = "pissa"
    changes_base = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            U, S, Vh = torch.linalg.svd(self.weight.float(), full_matrices=False)  # W (out, in) = U diag(S) Vh
            root = (S[: self.rank] / self.scale).sqrt()  # scale·B·A = U_r diag(S_r) Vh_r
            self.lora.A.weight.copy_(root[:, None] * Vh[: self.rank])  # (r, in)
            self.lora.B.weight.copy_(U[:, : self.rank] * root[None, :])  # (out, r)
            self.start = (self.lora.A.weight.clone(), self.lora.B.weight.clone())  # (A0, B0)
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))  # W <- W_res: the output is unchanged

    def saved_factors(self) -> tuple:
        A, B, _, _ = super().saved_factors()
        A0, B0 = self.start
        rank = 2 * self.rank
        alpha = self.scale * (math.sqrt(rank) if self.scaling == "rslora" else rank)  # the same scale at rank 2r
        return torch.cat([A, A0]), torch.cat([B, -B0], dim=1), rank, alpha

    def to_linear(self) -> nn.Linear:
        if not self.merged:  # unmerged, W is W_res: put the principal part back, so W is the base again
            with torch.no_grad():
                A0, B0 = self.start
                self.weight.add_((self.scale * (B0 @ A0)).to(self.weight.dtype))
        return super().to_linear()


@dataclass
class Variant:
    """One kind of adapter: `apply(model, rank, alpha, dropout, targets)` puts it on the model with only
    its own parameters trainable; `save(model, path)` writes its file."""

    apply: Callable
    save: Callable


def _lora(layer_class=LoRALinear, scaling="standard"):
    def apply(model, rank, alpha, dropout, targets):
        apply_lora(model, rank, alpha, dropout, targets, scaling=scaling, layer_class=layer_class)
        mark_only_lora_as_trainable(model)
    return Variant(apply, save_lora)


def round_to_int8(model: nn.Module) -> None:
    """Round every block's Linear weight to 8 bits, in place (formats/quantize.py): W <- round(W / s) * s with one
    scale per output row, s = max|W_row| / 127 (LLM.int8's absmax rows, without its float16 outlier columns). The
    tied embedding/output matrix stays as it is, as bitsandbytes leaves lm_head. The weights then hold
    the numbers an 8-bit base computes with; they are still stored in float32 here (the lab counts what
    8 bits would save, lab/int8_base.py)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.startswith("layers."):
            with torch.no_grad():
                module.weight.copy_(quantize(module.weight, "int8").dequantize())


def _int8_base():
    plain = _lora()

    def apply(model, rank, alpha, dropout, targets):
        round_to_int8(model)  # before the adapters: they record the rounded weights as their base
        plain.apply(model, rank, alpha, dropout, targets)
    return Variant(apply, save_lora)


def _predecessor(method):
    return Variant(lambda model, rank, alpha, dropout, targets: apply_method(model, method, rank), save_method)


VARIANTS = {
    "lora": _lora(),
    "rslora": _lora(scaling="rslora"),
    "swapped": _lora(SwappedLoRALinear),
    "zeros": _lora(ZerosLoRALinear),
    "gauss_r": _lora(GaussRLoRALinear),
    "kaiming": _lora(KaimingLoRALinear),
    "pissa": _lora(PiSSALinear),
    "int8_base": _int8_base(),
    "adapter": _predecessor("adapter"),
    "prefix": _predecessor("prefix"),
}
INITS = {"standard": LoRALinear, "swapped": SwappedLoRALinear, "zeros": ZerosLoRALinear, "gauss_r": GaussRLoRALinear,
         "kaiming": KaimingLoRALinear, "pissa": PiSSALinear}


def load_adapter(model: nn.Module, path) -> None:
    """Put any adapter file on `model`: a predecessor's (it carries a "method_config") with its own
    loader, every LoRA variant's with model_lora.load_lora."""
    if "method_config" in read_checkpoint(path):
        load_method(model, path)
    else:
        load_lora(model, path)
