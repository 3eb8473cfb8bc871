"""Tests for formats/quantize.py: the codebooks as their papers define them, the packing, and what a
quantized matrix gives back."""
import pytest
import torch

from formats.quantize import BLOCK, KINDS, error, fp4_codebook, int4_codebook, nf4_codebook, pack_4bit, quantize, unpack_4bit

# NF4's sixteen values as bitsandbytes ships them (functional.py, the table QLoRA's Appendix E prints)
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]


def test_nf4_computed_from_normal_quantiles_is_the_published_table():
    """Guards a NormalFloat built wrong (quantiles of the wrong slices, no exact zero, not scaled to [-1, 1]):
    computed from N(0, 1)'s quantiles as QLoRA describes, it must be the table bitsandbytes uses."""
    assert nf4_codebook().tolist() == pytest.approx(PUBLISHED_NF4, abs=1e-6)


def test_fp4_and_int4_are_their_formats():
    """Guards the two codebooks NF4 is compared with: FP4 must be e2m1's values (a 4-bit float, subnormals
    included) and int4 an even grid; neither may exceed [-1, 1]."""
    e2m1 = {0, 0.5, 1, 1.5, 2, 3, 4, 6}
    assert sorted(set(fp4_codebook().tolist())) == pytest.approx(sorted({s * v / 6 for v in e2m1 for s in (1, -1)}))
    assert len(fp4_codebook()) == len(int4_codebook()) == 16
    assert sorted(set(int4_codebook().tolist())) == pytest.approx([k / 7 for k in range(-7, 8)])


def test_packing_two_codes_a_byte_round_trips():
    """Guards the 4-bit layout: two codes a byte, the first in the low half, an odd count padded."""
    codes = torch.randint(0, 16, (1001,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    packed = pack_4bit(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == 501
    assert torch.equal(unpack_4bit(packed)[:1001], codes)
    assert pack_4bit(torch.tensor([3, 12, 5], dtype=torch.uint8)).tolist() == [0xC3, 0x05]


@pytest.mark.parametrize("kind", KINDS)
def test_weights_on_the_grid_come_back_exactly_and_zeros_stay_zero(kind):
    """Guards dequantize losing its place (a block's scale applied to another block, the padding of a last
    partial block read as weights): a matrix made of codebook values times a per-block (or per-row) scale,
    with a block's worth of zeros, must come back bit for bit, in its shape."""
    out, inp = 6, 100  # 600 weights: nine full blocks of 64 and a partial one
    g = torch.Generator().manual_seed(1)
    if kind == "int8":
        k = torch.randint(-127, 128, (out, inp), generator=g).float()
        k[:, 0] = 127  # each row reaches its scale
        w = k * (torch.rand(out, 1, generator=g) + 0.1) / 127
    else:
        book = {"nf4": nf4_codebook, "fp4": fp4_codebook, "int4": int4_codebook}[kind]()
        flat = book[torch.randint(0, 16, (out * inp,), generator=g)]
        flat[::BLOCK] = 1.0  # every block reaches its scale, so scale x value is exact
        blocks = -(-out * inp // BLOCK)  # ceil: the last block partial
        scales = torch.repeat_interleave(torch.rand(blocks, generator=g) + 0.5, BLOCK)[:out * inp]
        w = (flat * scales).view(out, inp)
    w[2] = 0.0
    back = quantize(w, kind).dequantize()
    assert back.shape == w.shape and torch.allclose(back, w, rtol=1e-6, atol=0) and not back[2].any()
    assert not quantize(torch.zeros(3, 5), kind).dequantize().isnan().any()


def test_stored_bytes_are_the_layouts_and_nf4_errs_least_on_normal_weights():
    """Guards the memory a quantized base claims (1 byte a weight + a scale a row; half a byte + a scale a
    block of 64) and the point of NF4: on normally distributed weights, whose quantiles it is made of, its
    error is below FP4's and int4's at the same 4 bits; int8's is far below all three."""
    w = torch.randn(512, 1408, generator=torch.Generator().manual_seed(2)) * 0.02
    assert quantize(w, "int8").nbytes() == 512 * 1408 + 512 * 4
    assert quantize(w, "nf4").nbytes() == 512 * 1408 // 2 + 512 * 1408 // BLOCK * 4
    errors = {kind: error(w, kind) for kind in KINDS}
    assert errors["int8"] < errors["nf4"] / 5 and errors["nf4"] < min(errors["fp4"], errors["int4"])


def test_an_unknown_kind_says_which_exist():
    """Guards a typo quantizing with nothing: the error names the kinds."""
    with pytest.raises(ValueError, match="unknown quantization 'nf3': choose one of int8, int4, fp4, nf4"):
        quantize(torch.ones(2, 2), "nf3")
