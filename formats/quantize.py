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

model/lora_variants.py's int8_base (the LoRA lab's 8-bit base) rounds with quantize(.., "int8").
"""
from dataclasses import dataclass

import torch

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
        values = CODEBOOKS[self.kind]()[codes.long()].view(-1, BLOCK) * self.scales
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
    codebook = CODEBOOKS[kind]()
    codes = ((blocks / scales).unsqueeze(-1) - codebook).abs().argmin(dim=-1)  # the nearest value's index, 0..15
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
