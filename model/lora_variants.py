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
    "dora"      W as a trained magnitude times a direction, LoRA on the direction (Liu et al. 2024);
                its file adds the magnitudes (save_adapter), load_adapter reads it
    "adapter"   Houlsby's bottleneck adapters, LoRA's predecessor (model/predecessors.py)
    "prefix"    Li & Liang's prefix tuning, the other predecessor (model/predecessors.py)

Every LoRA variant is a subclass of LoRALinear given to apply_lora(layer_class=...), and saves an
ordinary adapter file (PiSSA's as the rank-2r adapter it amounts to), which model_lora.load_lora
reads with no knowledge of the variant; DoRA's adds a magnitude vector a layer. A predecessor's file
is its own kind: load_adapter tells them apart. (A quantized base is not a variant: any LoRA goes on
one, formats/quantize.py.)
"""
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from formats.adapter_file import few
from formats.checkpoint import CheckpointError, read_checkpoint, save_weights
from model.model_lora import (LoRAEmbedding, LoRALinear, adapter_state, apply_lora, load_lora, lora_layers,
                              mark_only_lora_as_trainable, remove_lora, save_lora)
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


class DoRALinear(LoRALinear):
    """DoRA (Liu et al. 2024): W split into a magnitude and a direction, LoRA on the direction only.

        W' = m · (W + ΔW) / ‖W + ΔW‖        ‖·‖: each output row's norm; m (out,) starts at ‖W‖, trained

    so y = (m / ‖W + ΔW‖) · (W x + scale·B(A(dropout(x)))) + b. At the start ΔW = 0 and m = ‖W‖: the base
    exactly. The norm is treated as a constant in the backward pass (the paper's §4.3, as PEFT does): it saves
    keeping the (out, in) matrix W + ΔW for the gradient, at a change the paper measured as negligible.
    m lives in the adapter module (`...wq.lora.magnitude`), so mark_only_lora_as_trainable trains it and
    save_adapter writes it. Merged, W holds W' itself; unmerging divides the row factor back out."""

    init = "dora"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lora.magnitude = nn.Parameter(self.weight.detach().float().norm(dim=1).to(self.weight.dtype))

    def row_factor(self) -> torch.Tensor:
        """m / ‖W + ΔW‖ per output row, the norm detached (see the class's docstring)."""
        norm = (self.weight + self.delta_weight().to(self.weight.dtype)).norm(dim=1).detach()
        return self.lora.magnitude / norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return super().forward(x)  # W' = m (W + ΔW) / ‖W + ΔW‖ is in W; also refuses training it
        y = F.linear(x, self.weight) + self.scale * self.lora(self.dropout(x))
        y = y * self.row_factor()
        return y if self.bias is None else y + self.bias

    @torch.no_grad()
    def merge(self) -> None:
        """W <- m (W + ΔW) / ‖W + ΔW‖, the factor kept so that unmerge can take it out again."""
        if not self.merged:
            self.merged_factor = self.row_factor()
            self.weight.copy_(self.merged_factor[:, None] * (self.weight + self.delta_weight()))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W' / factor - ΔW: the base weight again, up to rounding."""
        if self.merged:
            self.weight.copy_(self.weight / self.merged_factor[:, None] - self.delta_weight())
            self.merged = False


class DoRAEmbedding(LoRAEmbedding):
    """The tied embedding of a DoRA output layer: it reads the rows of the same W' = m (E + ΔE) / ‖E + ΔE‖ the
    output scores with, so that merged (W' inside E) equals unmerged here too."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tied_output.merged:
            return super().forward(ids)
        return super().forward(ids) * F.embedding(ids, self.tied_output.row_factor()[:, None])


def apply_dora(model, rank, alpha=None, dropout=0.0, targets=None, scaling="standard", rank_pattern=None) -> None:
    """apply_lora with DoRALinear layers, the embedding tied to a DoRA output made a DoRAEmbedding."""
    apply_lora(model, rank, alpha, dropout, targets, scaling, layer_class=DoRALinear, rank_pattern=rank_pattern)
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRAEmbedding) and isinstance(module.tied_output, DoRALinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, DoRAEmbedding(module.to_embedding(), module.tied_output))


def adapter_file_contents(model: nn.Module) -> dict:
    """model_lora.adapter_state, with each DoRA layer's magnitude vector beside its A and B (the file's init then
    says "dora"): what save_adapter writes and the PEFT export reads."""
    contents = adapter_state(model)
    for name, layer in lora_layers(model):
        if isinstance(layer, DoRALinear):
            contents[f"{name}.lora.magnitude"] = layer.lora.magnitude.detach().cpu()
    return contents


def save_adapter(model: nn.Module, path) -> None:
    """save_lora, DoRA's magnitudes included (adapter_file_contents)."""
    save_weights(adapter_file_contents(model), path)


def load_dora(model: nn.Module, path, dropout: float = 0.0, allow_other_base: bool = False) -> None:
    """A DoRA file onto `model`: its A and B read and checked as any LoRA file's (load_lora), then the layers made
    DoRA ones holding them and the file's magnitudes."""
    contents = dict(read_checkpoint(path) if not isinstance(path, dict) else path)
    magnitudes = {k: contents.pop(k) for k in [k for k in contents if k.endswith(".lora.magnitude")]}
    config = dict(contents["lora_config"], init="standard")  # the rest is an ordinary adapter: checked as one
    load_lora(model, {**contents, "lora_config": config}, dropout, allow_other_base)
    layers = lora_layers(model)
    expected = {f"{name}.lora.magnitude": layer.out_features for name, layer in layers}
    wrong = sorted(k for k in expected.keys() | magnitudes.keys()
                   if k not in magnitudes or k not in expected or tuple(magnitudes[k].shape) != (expected[k],))
    if wrong:
        raise CheckpointError(f"{path if not isinstance(path, dict) else 'the adapter'}: its DoRA magnitudes do not fit "
                              f"this model ({few(wrong)} missing, extra or misshapen)")
    factors = {name: (layer.lora.A.weight.detach().clone(), layer.lora.B.weight.detach().clone()) for name, layer in layers}
    remove_lora(model)
    apply_dora(model, config["rank"], config["alpha"], dropout, config["targets"], config["scaling"], config.get("rank_pattern"))
    with torch.no_grad():
        for name, layer in lora_layers(model):
            A, B = factors[name]
            layer.lora.A.weight.copy_(A)
            layer.lora.B.weight.copy_(B)
            layer.lora.magnitude.copy_(magnitudes[f"{name}.lora.magnitude"])


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


def _dora_variant(model, rank, alpha, dropout, targets):
    apply_dora(model, rank, alpha, dropout, targets)
    mark_only_lora_as_trainable(model)


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
    "dora": Variant(_dora_variant, save_adapter),
    "adapter": _predecessor("adapter"),
    "prefix": _predecessor("prefix"),
}
INITS = {"standard": LoRALinear, "swapped": SwappedLoRALinear, "zeros": ZerosLoRALinear, "gauss_r": GaussRLoRALinear,
         "kaiming": KaimingLoRALinear, "pissa": PiSSALinear}


def load_adapter(model: nn.Module, path, dropout: float = 0.0, allow_other_base: bool = False) -> None:
    """Put any adapter file (or such a dict) on `model`: a predecessor's (it carries a "method_config") with its own
    loader, every LoRA file with load_lora_or_dora."""
    if "method_config" in _contents(path):
        load_method(model, path)
    else:
        load_lora_or_dora(model, path, dropout, allow_other_base)


def load_lora_or_dora(model: nn.Module, path, dropout: float = 0.0, allow_other_base: bool = False) -> None:
    """A LoRA file with model_lora.load_lora, a DoRA file (its lora_config's init is "dora") with load_dora: what the
    scripts load (formats.loader.load_checkpoint); a predecessor's file is refused there, as load_lora refuses it."""
    config = _contents(path).get("lora_config")
    if isinstance(config, dict) and config.get("init") == "dora":
        load_dora(model, path, dropout, allow_other_base)
    else:
        load_lora(model, path, dropout, allow_other_base)


def _contents(path) -> dict:
    """An adapter file's dict, to see what kind it is; {} for a missing file (the loader then says it is missing)."""
    return path if isinstance(path, dict) else read_checkpoint(path) if os.path.isfile(path) else {}
