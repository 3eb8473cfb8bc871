"""Decoding one token at a time with bfloat16 weights on a CPU: the matrix-vector kernel.

A decode step feeds ONE token: every Linear then computes a matrix-vector product. F.linear hands it
to oneDNN's matrix-matrix kernel, which treats the row as a 1-row matrix; torch.mv runs a kernel made
for it, which reads a bfloat16 weight up to ~1.4x faster (MiniMind2-Small's w1, 2 Sapphire Rapids
cores). float32 keeps F.linear: its kernel is no slower there, and on some CPUs faster. (Even so, a
bfloat16 row is no faster than a float32 one on that CPU: docs/benchmarks.md.)

The course's transformer (model/model.py) uses plain nn.Linear; this path plugs in where a model is
loaded for inference (formats/loader.py's load_checkpoint calls prepare_for_decoding), replacing each
plain Linear by a MatVecLinear holding the same weight: same state-dict keys, same files.
"""
import torch
import torch.nn.functional as F
from torch import nn


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., in) @ weight (out, in)^T -> (..., out): F.linear(x, weight), but one bfloat16 row on the
    CPU goes through torch.mv. The two add the same products in another order: equal up to rounding.

    >>> linear(torch.ones(1, 1, 3), torch.tensor([[1., 2., 3.], [0., 0., 1.]]))
    tensor([[[6., 1.]]])
    """
    if weight.dtype == x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.numel() == x.shape[-1]:
        return torch.mv(weight, x.reshape(-1)).view(*x.shape[:-1], weight.shape[0])  # (1, ..., 1, out)
    return F.linear(x, weight)


class MatVecLinear(nn.Linear):
    """A bias-free nn.Linear whose forward is `linear` above: still an nn.Linear (LoRA's apply_lora finds
    it, its weight is `...weight`), only faster to decode in bfloat16 on a CPU."""

    def __init__(self, base: nn.Linear):
        super().__init__(base.in_features, base.out_features, bias=False, device="meta")
        self.weight = base.weight  # the very same Parameter: a tie (the output layer's) survives

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight)


def prepare_for_decoding(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Give `model` the fastest decoding path for its device and weights' dtype -> the model: with bfloat16
    weights on a CPU, every plain bias-free nn.Linear becomes a MatVecLinear; elsewhere nothing changes."""
    if not (torch.device(device).type == "cpu" and dtype == torch.bfloat16):
        return model
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and module.bias is None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, MatVecLinear(module).train(module.training))
    return model
