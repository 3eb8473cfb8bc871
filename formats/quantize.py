"""Quantizing a frozen weight matrix by hand: 8-bit rows, and the three 4-bit formats QLoRA compares.

A quantized matrix keeps small integer *codes* and a few float *scales*; the weights it stands for,
codebook[code] x scale, are computed when they are needed (Quantized.dequantize). Two layouts:

    int8    one scale per output row, s = max|row| / 127, code = round(w / s) in -127..127: LLM.int8's
            absmax rows (Dettmers et al. 2022) without its float16 outlier columns. 1 byte a weight,
            plus 4 bytes a row.
    4-bit   one scale per block of BLOCK consecutive weights, s = max|block|; the code is the index
            (0..15) of the codebook value nearest w / s, two codes packed in a byte (QLoRA's blockwise
            layout, Dettmers et al. 2023). 0.5 byte a weight, plus 4 bytes a block of 64.

The 4-bit codebooks, 16 values each in [-1, 1], differ in where they put their values:
    int4    evenly spaced, k / 7 for k = -7..7 (a grid symmetric about 0 has an odd count: code 15 unused)
    fp4     a 4-bit float, 1 sign, 2 exponent and 1 mantissa bits (e2m1): ±{0, 0.5, 1, 1.5, 2, 3, 4, 6} / 6,
            dense near 0, sparse at the edges
    nf4     NormalFloat (QLoRA §3): trained weights are close to normally distributed, so the values sit at
            quantiles of N(0, 1) and each code is about equally likely for such weights; computed below
            as the paper builds it, not pasted (tests/test_quantize.py checks it against the published table)

    q = quantize(layer.weight, "nf4")      # codes and scales; q.nbytes() is what it stores
    w = q.dequantize()                     # float32, the weight's shape: what a quantized base computes with

A quantized *model* (QLoRA's frozen base): quantize_model(model, "nf4") replaces every Linear of the
transformer blocks by a QuantizedLinear, which keeps only the codes and scales and rebuilds its float
weight for each product, forward and backward (the float matrix lives for one matmul at a time). The
tied embedding/output matrix stays in float32, as bitsandbytes leaves lm_head. LoRA then goes on top
as on any model (apply_lora puts a QLoRALinear beside each quantized Linear it adapts), and the
adapter file is the ordinary one, recording the full-precision base: it loads there too.

    quantize_model(model, "nf4"); apply_lora(model, 16); mark_only_lora_as_trainable(model)   # QLoRA

The LoRA lab measures both: lab/int8_base.py (8 bits) and lab/qlora.py (the three 4-bit formats).
"""
import functools
from dataclasses import dataclass

import torch
import torch.nn as nn

from formats.checkpoint import weights_fingerprint
from model.model_lora import SCALINGS, LoRA, LoRALinear

BLOCK = 64  # weights per scale in the 4-bit layout (QLoRA's)
INT8_MAX = 127  # codes -127..127: symmetric, so -128 is never used and 0 stays exactly 0


def int4_codebook() -> torch.Tensor:
    """k / 7 for k = -7..7, and a 16th code equal to the largest value (never nearest to anything new)."""
    grid = torch.arange(-7, 8, dtype=torch.float64) / 7
    return torch.cat([grid, grid[-1:]]).float()


def fp4_codebook() -> torch.Tensor:
    """Every e2m1 bit pattern's value, divided by the largest (6): sign, 2 exponent bits (bias 1), 1 mantissa bit;
    exponent 0 is subnormal (0 and 0.5), as in the OCP microscaling formats' FP4."""
    values = []
    for sign in (1, -1):
        for exponent in range(4):
            for mantissa in range(2):
                magnitude = mantissa * 0.5 if exponent == 0 else 2.0 ** (exponent - 1) * (1 + mantissa / 2)
                values.append(sign * magnitude)
    return (torch.tensor(values, dtype=torch.float64) / 6).float()  # 0 appears twice (+0 and -0), as in the format


def nf4_codebook() -> torch.Tensor:
    """NormalFloat4, as QLoRA builds it: 8 values from quantiles of N(0, 1) for the positive half, 7 for the
    negative half, and an exact zero (a zero weight, padding for instance, stays zero), scaled to [-1, 1].

    The quantiles are taken between 0.5 and `offset` rather than up to 1, whose quantile is infinite:
    offset = 1 - (1/(2·15) + 1/(2·16)) / 2 = 0.9677, the middle of where the last of 15 and of 16 equal
    slices of probability would sit. Sorted, from -1 to 1."""
    offset = 1 - (1 / (2 * 15) + 1 / (2 * 16)) / 2
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8 values > 0
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 values < 0
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive])
    return (values / values.abs().max()).sort().values.float()


CODEBOOKS = {"int4": int4_codebook, "fp4": fp4_codebook, "nf4": nf4_codebook}
KINDS = ("int8", *CODEBOOKS)


@functools.cache
def codebook(kind: str) -> torch.Tensor:
    """CODEBOOKS[kind](), computed once: a quantized layer reads it at every product."""
    return CODEBOOKS[kind]()


@dataclass
class Quantized:
    """A weight matrix in `kind`: its codes (int8 per weight, or uint8 holding two 4-bit codes), its float32
    scales (one per row, or one per block), and what dequantize needs to rebuild it."""

    kind: str
    codes: torch.Tensor
    scales: torch.Tensor
    shape: tuple

    def dequantize(self) -> torch.Tensor:
        """The weights the codes stand for, float32, in the original shape."""
        if self.kind == "int8":
            return self.codes.float() * self.scales  # (out, in) x (out, 1)
        count = self.shape[0] * self.shape[1]
        codes = unpack_4bit(self.codes)[:count + (-count) % BLOCK]  # the padded blocks, as quantized
        values = codebook(self.kind).to(self.scales.device)[codes.long()].view(-1, BLOCK) * self.scales
        return values.flatten()[:count].view(self.shape)

    def nbytes(self) -> int:
        """What it stores: the codes and the scales."""
        return self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size()


def quantize(weight: torch.Tensor, kind: str) -> Quantized:
    """`weight` (out, in) quantized as `kind`, one of KINDS (see the module's docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown quantization {kind!r}: choose one of {', '.join(KINDS)}")
    w = weight.detach().float()
    if kind == "int8":
        scales = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / INT8_MAX  # (out, 1): one per row
        codes = (w / scales).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        return Quantized(kind, codes, scales, tuple(w.shape))
    flat = w.flatten()
    blocks = torch.cat([flat, flat.new_zeros((-flat.numel()) % BLOCK)]).view(-1, BLOCK)  # the last block padded with 0
    scales = blocks.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)  # (blocks, 1): one per block
    values = codebook(kind).to(w.device)
    codes = ((blocks / scales).unsqueeze(-1) - values).abs().argmin(dim=-1)  # the nearest value's index, 0..15
    return Quantized(kind, pack_4bit(codes.flatten().to(torch.uint8)), scales, tuple(w.shape))


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes a byte, the first in the low half: [3, 12, 5] -> [0xC3, 0x05]."""
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    pairs = codes.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_4bit(packed: torch.Tensor) -> torch.Tensor:
    """pack_4bit's inverse (with the padding code, if one was added, at the end)."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=1).flatten()


def error(weight: torch.Tensor, kind: str) -> float:
    """The quantization's relative error on `weight`: ‖W - dequantize(quantize(W))‖ / ‖W‖ (Frobenius)."""
    w = weight.detach().float()
    return ((w - quantize(w, kind).dequantize()).norm() / w.norm().clamp(min=1e-12)).item()


# ---- a quantized base, and LoRA on it (QLoRA)


class _DequantizedMatmul(torch.autograd.Function):
    """y = x Wᵀ with W rebuilt from the codes, in the forward pass and again in the backward pass
    (dL/dx = g W). Autograd would otherwise keep every layer's float W until the backward pass, the
    memory quantizing saved; W gets no gradient (frozen), so nothing else needs keeping."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return x @ layer.dequantized(x.dtype).T

    @staticmethod
    def backward(ctx, grad):
        return grad @ ctx.layer.dequantized(grad.dtype), None


class QLoRALinear(LoRALinear):
    """LoRA beside a frozen QuantizedLinear, QLoRA's layer (Dettmers et al. 2023):

        y = dequantize(codes) x  +  scale · B(A(dropout(x)))

    A and B are float32 and train as in LoRALinear (the gradient reaches them through the quantized
    product); the base is the quantized layer itself, a submodule here (its codes move with the model).
    Merging is refused: W + ΔW would have to be rounded to the codes again, changing what was trained.
    Merge on the full-precision base instead: the adapter file loads there."""

    def __init__(self, base: "QuantizedLinear", rank: int, alpha: float = None, dropout: float = 0.0,
                 scaling: str = "standard"):
        nn.Linear.__init__(self, base.in_features, base.out_features, bias=False, device="meta")
        self.weight = None  # no float W anywhere: the base computes from its codes
        self.rank, self.alpha, self.scaling = rank, rank if alpha is None else alpha, scaling
        self.scale = SCALINGS[scaling](self.alpha, rank)
        self.lora = LoRA(base.in_features, base.out_features, rank).to(base.scales.device)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.base_layer = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.scale * self.lora(self.dropout(x))

    def merge(self) -> None:
        raise ValueError("an adapter on a quantized base cannot be merged into it (W + B·A would be rounded to "
                         f"{self.base_layer.kind} again); load the adapter on the full-precision base and merge there")

    def to_linear(self) -> "QuantizedLinear":
        return self.base_layer


class QuantizedLinear(nn.Linear):
    """A frozen Linear stored as `kind` codes and scales (buffers: they move with .to() and appear in the
    state dict as ...codes and ...scales); its float weight is rebuilt for each product (_DequantizedMatmul).
    An nn.Linear with no weight, so apply_lora finds it by name like any Linear and wraps it in lora_layer's."""

    def __init__(self, linear: nn.Linear, kind: str):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        q = quantize(linear.weight, kind)
        self.weight, self.bias, self.kind, self.shape = None, linear.bias, kind, q.shape
        self.register_buffer("codes", q.codes)
        self.register_buffer("scales", q.scales)

    def lora_layer(self, layer_class) -> type:
        """The LoRA layer apply_lora puts beside this one: QLoRALinear, for plain LoRA (a variant that changes W,
        or rescales it as DoRA does, cannot go on codes)."""
        if layer_class is not LoRALinear:
            raise ValueError(f"a quantized Linear takes plain LoRA only, not {layer_class.__name__}")
        return QLoRALinear

    def dequantized(self, dtype=torch.float32) -> torch.Tensor:
        """The weight the codes stand for, (out, in), in `dtype`."""
        return Quantized(self.kind, self.codes, self.scales, self.shape).dequantize().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _DequantizedMatmul.apply(x, self)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kind={self.kind}"


def quantize_model(model: nn.Module, kind: str) -> None:
    """Replace every Linear of the transformer blocks (the names starting "layers.") by a QuantizedLinear of
    `kind`, in place, before any adapter goes on. The tied embedding/output stays as it is. The model
    remembers the fingerprint of its float32 weights, so adapters trained on it record (and load on)
    that full-precision base, and its `quantized` says how (training's --resume compares it)."""
    if kind not in KINDS:
        raise ValueError(f"unknown quantization {kind!r}: choose one of {', '.join(KINDS)}")
    if any(isinstance(m, (LoRALinear, QuantizedLinear)) for m in model.modules()):
        raise ValueError("quantize the base before putting adapters on it, and only once (remove_lora(model) first)")
    model.float32_fingerprint = weights_fingerprint(model)
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and name.startswith("layers."):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, QuantizedLinear(module, kind).train(module.training))
    model.quantized = kind

