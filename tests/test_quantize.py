"""Tests for formats/quantize.py: the codebooks as their papers define them, the packing, what a
quantized matrix gives back, and a quantized base under LoRA (QLoRA)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import fill_B, logits_of, tiny_model
from formats.checkpoint import CheckpointError, weights_fingerprint
from formats.quantize import (BLOCK, KINDS, QLoRALinear, QuantizedLinear, error, fp4_codebook, int4_codebook,
                              nf4_codebook, pack_4bit, quantize, quantize_model, unpack_4bit)
from model.lora_variants import PiSSALinear
from model.model_lora import apply_lora, load_lora, merge_lora, remove_lora, save_lora

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


# ---- a quantized base, and LoRA on it


@pytest.mark.parametrize("kind", KINDS)
def test_a_quantized_linear_computes_with_the_weight_its_codes_stand_for(kind):
    """Guards the on-the-fly path (the hand-written backward included): a QuantizedLinear's output and the
    gradient it passes back must be those of F.linear with the dequantized weight, and it stores codes and
    scales, no float weight."""
    torch.manual_seed(0)
    linear = nn.Linear(70, 40)  # 2,800 weights: 43.75 blocks of 64, the last one padded
    layer = QuantizedLinear(linear, kind)
    x = torch.randn(3, 5, 70, requires_grad=True)
    reference_x = x.detach().clone().requires_grad_()
    y, reference = layer(x), F.linear(reference_x, quantize(linear.weight, kind).dequantize(), linear.bias)
    torch.testing.assert_close(y, reference, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g), reference.backward(g)
    torch.testing.assert_close(x.grad, reference_x.grad, rtol=1e-6, atol=1e-6)
    assert sorted(layer.state_dict()) == ["bias", "codes", "scales"] and layer.weight is None


def test_a_quantized_linear_keeps_no_float_weight_for_the_backward_pass():
    """Guards QLoRA's memory saving undone by autograd: with F.linear on the dequantized weight, every layer's
    float W would be kept until the backward pass (what quantizing saves); the product rebuilds it instead."""
    layer = QuantizedLinear(nn.Linear(96, 48), "nf4")
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        layer(torch.randn(2, 96, requires_grad=True)).sum().backward()
        F.linear(torch.randn(2, 96, requires_grad=True), layer.dequantized()).sum()  # what it must not do
    assert saved == [48 * 96]  # the F.linear line's W (as Wᵀ), and nothing of the layer's


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_an_adapter_trained_on_a_quantized_base_is_an_ordinary_file_for_the_full_precision_base(tmp_path, kind):
    """Guards the QLoRA adapter file: made on a quantized base it must record the full-precision base (and load
    there, and nowhere else), and on a quantized base its output must be the dequantized weights' plus the
    adapter's; LoRA layers sit beside the block Linears only, the tied embedding/output staying float."""
    base, ids = tiny_model(), torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    quantized = copy.deepcopy(base)
    quantize_model(quantized, kind)
    apply_lora(quantized, 4, target_modules=["wq", "w2", "output"])
    fill_B(quantized, seed=1, std=0.1)
    assert type(quantized.layers[1].feed_forward.w2) is QLoRALinear and type(quantized.output.base_layer) is nn.Linear
    assert quantized.tok_embeddings.weight is quantized.output.weight  # the tie survives
    save_lora(quantized, tmp_path / "a.pth")

    assert torch.load(tmp_path / "a.pth", weights_only=True)["lora_config"]["base"] == weights_fingerprint(base)
    load_lora(copy.deepcopy(base), tmp_path / "a.pth")  # the full-precision base: accepted
    with pytest.raises(CheckpointError, match="another base"):
        load_lora(tiny_model(seed=1), tmp_path / "a.pth")
    # the reference: the float model holding the dequantized block weights, the adapter on it
    rounded = copy.deepcopy(base)
    with torch.no_grad():
        for name, module in rounded.named_modules():
            if type(module) is nn.Linear and name.startswith("layers."):
                module.weight.copy_(quantize(module.weight, kind).dequantize())
    load_lora(rounded, tmp_path / "a.pth", allow_other_base=True)
    again = copy.deepcopy(base)
    quantize_model(again, kind)
    load_lora(again, tmp_path / "a.pth")  # a quantized base says which float base it was made from
    torch.testing.assert_close(logits_of(quantized, ids), logits_of(rounded, ids), rtol=1e-5, atol=1e-5)
    assert torch.equal(logits_of(again, ids), logits_of(quantized, ids))


def test_a_quantized_base_refuses_what_would_change_it_silently():
    """Guards the silent ways a quantized base could go wrong: merging (W + B·A rounded to the codes again),
    another variant's layer on it, quantizing twice or under an adapter; remove_lora gives the quantized base."""
    model = tiny_model()
    quantize_model(model, "nf4")
    plain = logits_of(model, torch.arange(10)[None])
    with pytest.raises(ValueError, match="plain LoRA only"):
        apply_lora(model, 4, target_modules=["wq"], layer_class=PiSSALinear)
    with pytest.raises(ValueError, match="quantize the base before"):
        quantize_model(model, "int8")
    apply_lora(model, 4, target_modules=["wq"])
    fill_B(model, seed=1)
    with pytest.raises(ValueError, match="cannot be merged"):
        merge_lora(model)
    with pytest.raises(ValueError, match="unknown quantization"):
        quantize_model(tiny_model(), "nf3")
    remove_lora(model)
    assert type(model.layers[0].attention.wq) is QuantizedLinear
    assert torch.equal(logits_of(model, torch.arange(10)[None]), plain)


def test_quantize_model_rounds_every_block_linear_and_leaves_the_embedding():
    """Guards lab/int8_base.py and lab/qlora.py measuring a base that was not quantized (or quantized so coarsely it
    is not LLM.int8's): every block Linear must hold int8 codes whose weights lie within half a step of the
    original's, the tied embedding/output untouched and still one matrix."""
    model, base = tiny_model(), tiny_model()
    quantize_model(model, "int8")
    blocks = {name: m for name, m in base.named_modules() if type(m) is nn.Linear and name.startswith("layers.")}
    for name, original in blocks.items():
        layer = model.get_submodule(name)
        assert type(layer) is QuantizedLinear and layer.codes.dtype == torch.int8, name
        step = original.weight.abs().amax(dim=1, keepdim=True) / 127
        assert ((layer.dequantized() - original.weight).abs() <= step / 2 + 1e-7).all(), name
    assert len(blocks) == 14 and model.quantized == "int8"
    assert torch.equal(model.tok_embeddings.weight, base.tok_embeddings.weight)
    assert model.tok_embeddings.weight is model.output.weight
