"""Decoding one token at a time with bfloat16 weights on a CPU: the matrix-vector kernel.

A decode step feeds ONE token: every Linear then computes a matrix-vector product. F.linear hands it
to oneDNN's matrix-matrix kernel, which treats the row as a 1-row matrix; torch.mv runs a kernel made
for it. Which is faster depends on the CPU, so the choice is made once, from its flags (MV_IS_FASTER):
- with AMX (Sapphire Rapids and later Xeons): torch.mv reads a bfloat16 weight up to ~1.4x faster
  (MiniMind2-Small's w1, 2 cores); so it is taken there.
- without (AMD Zen 4: avx512_bf16, no AMX): torch.mv is 1.5-2x *slower* than F.linear on every
  MiniMind2-Small matrix, and a whole bfloat16 decode step 1.15-1.3x slower (87-102 against 103-132
  tokens/s on 2 cores, two runs in either order, 2026-12-08); F.linear is kept there, models as they are.
float32 keeps F.linear everywhere: its kernel is no slower. (Even on the Xeon a bfloat16 row is no
faster than a float32 one: docs/benchmarks.md.)

The course's transformer (model/model.py) uses plain nn.Linear; this path plugs in where a model is
loaded for inference (formats/loader.py's load_checkpoint calls prepare_for_decoding), replacing each
plain Linear by a MatVecLinear holding the same weight: same state-dict keys, same files.
"""
import torch
import torch.nn.functional as F
from torch import nn

from plumbing.device import cpu_flags


def mv_is_faster(flags: set) -> bool:
    """Does torch.mv decode a bfloat16 row faster than F.linear on a CPU with these flags? Where it has AMX (the
    docstring's measurements): a flag read in a millisecond and the same every time, not a timing that could
    flip on a busy machine (and with it the rounding of a model's answers)."""
    return "amx_bf16" in flags


MV_IS_FASTER = mv_is_faster(cpu_flags())


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., in) @ weight (out, in)^T -> (..., out): F.linear(x, weight), but one bfloat16 row on a CPU
    where it is faster (MV_IS_FASTER) goes through torch.mv. The two add the same products in another
    order: equal up to rounding.

    >>> linear(torch.ones(1, 1, 3), torch.tensor([[1., 2., 3.], [0., 0., 1.]]))
    tensor([[[6., 1.]]])
    """
    if MV_IS_FASTER and weight.dtype == x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.numel() == x.shape[-1]:
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
    weights on a CPU whose torch.mv is the faster (MV_IS_FASTER), every plain bias-free nn.Linear becomes a
    MatVecLinear; elsewhere nothing changes."""
    if not (torch.device(device).type == "cpu" and dtype == torch.bfloat16 and MV_IS_FASTER):
        return model
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and module.bias is None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, MatVecLinear(module).train(module.training))
    return model
