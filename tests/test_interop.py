"""Hugging Face interop (interop/hf_llama.py, convert_model.py), proven against golden files that
transformers 4.57 and PEFT 0.21 wrote themselves (tests/fixtures/hf_llama/), so neither is needed here."""
import doctest
import json
import re
import runpy
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import DEMO_TOKENIZER, MINIMIND2, ROOT

import convert_model
import eval_model
import interop.hf_llama as hf_llama
from plumbing import errors
from formats.checkpoint import load_weights, read_checkpoint, save_model
from interop.hf_llama import (ConversionError, adapter_from_peft, peft_config, halves_order, halves_to_interleaved,
                            interleaved_to_halves, lm_config_from_hf, read_llama_folder, read_peft_folder,
                            save_llama_folder, save_peft_folder)
from model.LMConfig import LMConfig
from formats.loader import checkpoint_meta, load_checkpoint
from model.model import MiniMindLM, apply_rope, rope_table
from model.model_lora import adapter_state, apply_lora, load_lora, mark_only_lora_as_trainable, merge_lora, save_lora
from formats.safetensors import load_file, save_file
from model.tokenizer import Tokenizer

FIXTURE = ROOT / "tests" / "fixtures" / "hf_llama"
HF_MODEL, HF_ADAPTER = FIXTURE / "model", FIXTURE / "peft_adapter"


@pytest.fixture(scope="module")
def golden():
    return torch.load(FIXTURE / "golden.pth", weights_only=True)


def imported_model(folder=HF_MODEL, flash_attn=True) -> MiniMindLM:
    """A Hugging Face Llama folder (by default the fixture's, whose golden.pth transformers wrote) read as
    a MiniMindLM, in eval mode."""
    config, state = read_llama_folder(folder)
    config.flash_attn = flash_attn
    model = MiniMindLM(config)
    load_weights(model, state)
    return model.eval()


def tokenizer_320(folder: Path) -> Path:
    """A byte-level BPE with the fixture model's 320 tokens: the MiniMind2 fixture tokenizer's first 320 ids
    (3 specials, 256 bytes and the 61 merges that make ids 259..319). The HF fixture has no tokenizer."""
    spec = json.loads((MINIMIND2 / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = {token: i for token, i in spec["model"]["vocab"].items() if i < 320}
    merges = [m for m in spec["model"]["merges"] if "".join(m) in vocab]
    Tokenizer(vocab, merges, spec["added_tokens"]).save(folder)
    return folder


def test_docstring_examples_run(tmp_path, monkeypatch):
    """Guards against the worked examples (key names, the row order) going stale."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert doctest.testmod(hf_llama).failed == 0


# ------------------------------------------------------------------------------------------------
# Hugging Face -> here: the golden files


@pytest.mark.parametrize("flash_attn", [True, False], ids=["sdpa", "explicit"])
def test_imported_llama_gives_the_golden_logits_and_greedy_continuation(flash_attn, golden):
    """Guards against a wrong name mapping, a missing q/k row permutation, a norm weight put in the wrong
    place or a config field read with our default instead of transformers' (the fixture's norms are
    random, so each of these shows): the imported model reproduces transformers' logits and generate()."""
    model = imported_model(flash_attn=flash_attn)
    with torch.no_grad():
        logits = model(golden["input_ids"]).logits
    assert (logits - golden["logits"]).abs().max().item() < 1e-5
    out = model.generate(golden["greedy_prompt"], max_new_tokens=12, temperature=0.0, eos_token_id=2)
    assert torch.equal(out[:, golden["greedy_prompt"].shape[1]:], golden["greedy_continuation"])


def test_the_golden_check_would_catch_a_missing_permutation(golden):
    """Guards against a golden test too weak to notice the RoPE layout: with q/k rows left in Llama's order
    the logits miss by 4e-3, hundreds of times the 1e-5 tolerance above (the fixture's weights are small,
    so attention is nearly uniform and RoPE moves the logits little; still far more than rounding)."""
    config, state = read_llama_folder(HF_MODEL)
    for key in [k for k in state if ".wq." in k or ".wk." in k]:  # undo the import's permutation
        state[key] = interleaved_to_halves(state[key], config.n_heads if ".wq." in key else config.n_kv_heads)
    model = MiniMindLM(config)
    load_weights(model, state)
    with torch.no_grad():
        assert (model.eval()(golden["input_ids"]).logits - golden["logits"]).abs().max().item() > 100 * 1e-5


def test_imported_peft_adapter_gives_the_golden_adapted_logits(golden):
    """Guards against a wrong scale (alpha / r), a lora_B of q_proj/k_proj not permuted like its weight, A and
    B swapped, or a non-square target (k/v/gate/up/down) oriented the wrong way: PEFT's own output."""
    model = imported_model()
    adapter = read_peft_folder(HF_ADAPTER, model.config)
    assert adapter["lora_config"] == {"rank": 4, "alpha": 8, "dim": 64, "targets": ["w1", "w2", "w3", "wk", "wo", "wq", "wv"],
                                      "scaling": "standard", "init": "standard"}
    load_lora(model, adapter)
    with torch.no_grad():
        assert (model(golden["input_ids"]).logits - golden["logits_with_peft_lora"]).abs().max().item() < 1e-5
        merge_lora(model)
        assert (model(golden["input_ids"]).logits - golden["logits_with_peft_lora"]).abs().max().item() < 1e-5


def test_a_peft_rank_pattern_is_imported_and_exported_layer_by_layer(tmp_path):
    """Guards per-layer ranks through PEFT: an adapter PEFT made with rank_pattern (every q_proj at 2, one down_proj
    at 8, the rest at r=4; scale lora_alpha / each rank) must import with those ranks and give PEFT's logits, and
    export with a rank_pattern that imports back to the same tensors."""
    golden = torch.load(FIXTURE / "golden_rank_pattern.pth", weights_only=True)
    model = imported_model()
    adapter = read_peft_folder(FIXTURE / "peft_rank_pattern", model.config)
    assert adapter["lora_config"]["rank"] == 4 and adapter["lora_config"]["rank_pattern"] == {
        "layers.0.attention.wq": 2, "layers.1.attention.wq": 2, "layers.1.feed_forward.w2": 8}
    load_lora(model, adapter)
    assert model.layers[1].feed_forward.w2.scale == 1.0 and model.layers[0].attention.wq.scale == 4.0  # 8 / 8, 8 / 2
    with torch.no_grad():
        assert (model(golden["input_ids"]).logits - golden["logits_with_peft_rank_pattern"]).abs().max().item() < 1e-5
    save_peft_folder(tmp_path / "peft", adapter_state(model), model.config)
    exported = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert exported["rank_pattern"] == {"layers.0.self_attn.q_proj": 2, "layers.1.self_attn.q_proj": 2,
                                        "layers.1.mlp.down_proj": 8}
    again = read_peft_folder(tmp_path / "peft", model.config)
    assert all(torch.equal(again[k], adapter[k]) for k in adapter if k != "lora_config")


def test_a_peft_dora_adapter_is_imported_and_exported_with_its_magnitudes(tmp_path):
    """Guards DoRA through PEFT: an adapter PEFT made with use_dora (its magnitudes moved off |W|) must import as our
    DoRA file (the magnitudes of q_proj/k_proj permuted like B's rows) and give PEFT's logits, unmerged and merged,
    and export with use_dora and magnitudes that import back to the same tensors."""
    from model.lora_variants import adapter_file_contents, load_lora_or_dora
    golden = torch.load(FIXTURE / "golden_dora.pth", weights_only=True)
    model = imported_model()
    adapter = read_peft_folder(FIXTURE / "peft_dora", model.config)
    assert adapter["lora_config"]["init"] == "dora" and sum(k.endswith(".lora.magnitude") for k in adapter) == 14
    load_lora_or_dora(model, adapter)
    with torch.no_grad():
        assert (model(golden["input_ids"]).logits - golden["logits_with_peft_dora"]).abs().max().item() < 1e-5
        save_peft_folder(tmp_path / "peft", adapter_file_contents(model), model.config)
        merge_lora(model)
        assert (model(golden["input_ids"]).logits - golden["logits_with_peft_dora"]).abs().max().item() < 1e-5
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["use_dora"] is True
    again = read_peft_folder(tmp_path / "peft", model.config)
    assert again.keys() == adapter.keys() and all(torch.equal(again[k], adapter[k]) for k in adapter if k != "lora_config")


def test_rslora_scale_is_expressed_exactly(golden):
    """Guards against rsLoRA adapters imported with PEFT's plain scale: use_rslora means lora_alpha / sqrt(r),
    our scaling "rslora" with the same alpha. The fixture's scale is 8 / 4 = 2; rsLoRA gets the same 2 from
    lora_alpha = 4 (4 / sqrt(4)), so it must give the same golden logits, and export must say use_rslora again."""
    model = imported_model()
    cfg = json.loads((HF_ADAPTER / "adapter_config.json").read_text())
    cfg.update(use_rslora=True, lora_alpha=4)
    adapter = adapter_from_peft(cfg, load_file(HF_ADAPTER / "adapter_model.safetensors")[0], model.config, "cfg")
    assert (adapter["lora_config"]["alpha"], adapter["lora_config"]["scaling"]) == (4, "rslora")
    assert peft_config(adapter["lora_config"])["use_rslora"] is True
    load_lora(model, adapter)
    with torch.no_grad():
        assert (model(golden["input_ids"]).logits - golden["logits_with_peft_lora"]).abs().max().item() < 1e-5


# ------------------------------------------------------------------------------------------------
# The RoPE layout


def llama_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Hugging Face Llama's RoPE, written out (LlamaRotaryEmbedding + rotate_half): x (B, T, heads, D)."""
    D, T = x.shape[-1], x.shape[1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2).float() / D))  # (D/2,)
    freqs = torch.outer(torch.arange(T).float(), inv_freq)  # (T, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)[None, :, None]  # (1, T, 1, D): the angle of x[i] and x[i + D/2]
    rotate_half = torch.cat([-x[..., D // 2:], x[..., : D // 2]], dim=-1)
    return x * emb.cos() + rotate_half * emb.sin()


def our_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Our RoPE (model.model.apply_rope) at positions 0..T-1, as MiniMindLM.forward calls it."""
    table = rope_table(x.shape[-1], x.shape[1], theta)  # (T, D/2, 2)
    return apply_rope(x, torch.view_as_complex(table).unsqueeze(0).unsqueeze(2))  # rotations (1, T, 1, D/2)


def test_permuted_rows_make_llamas_rotation_ours():
    """Guards against the permutation being wrong (or its direction inverted): a rotation applied both ways
    -- ours on our rows, Llama's on the permuted rows -- gives the same vectors up to the relabelling, and
    the same attention scores; without the permutation the scores differ."""
    torch.manual_seed(0)
    B, T, H, D, C, theta = 2, 9, 3, 16, 24, 1e4
    x = torch.randn(B, T, C)
    wq, wk = torch.randn(H * D, C), torch.randn(H * D, C)  # our layout
    q, k = (x @ wq.T).view(B, T, H, D), (x @ wk.T).view(B, T, H, D)
    q_llama = (x @ interleaved_to_halves(wq, H).T).view(B, T, H, D)  # what Llama computes from exported rows
    k_llama = (x @ interleaved_to_halves(wk, H).T).view(B, T, H, D)
    order = halves_order(D)
    assert torch.equal(q_llama, q[..., order])  # exporting relabels coordinates, nothing else

    ours_q, ours_k = our_rope(q, theta), our_rope(k, theta)
    llama_q, llama_k = llama_rope(q_llama, theta), llama_rope(k_llama, theta)
    torch.testing.assert_close(llama_q, ours_q[..., order], atol=1e-5, rtol=1e-5)

    def scores(a, b):
        return torch.einsum("bthd,bshd->bhts", a, b)  # (B, H, T, T)

    torch.testing.assert_close(scores(llama_q, llama_k), scores(ours_q, ours_k), atol=1e-4, rtol=1e-5)
    unpermuted = scores(llama_rope(q, theta), llama_rope(k, theta))
    assert (unpermuted - scores(ours_q, ours_k)).abs().max() > 1.0


@pytest.mark.parametrize("rows, cols, heads", [(64, 64, 4), (32, 64, 2), (32, 3, 2)], ids=["wq", "wk (GQA)", "lora_B"])
def test_the_permutation_is_undone_exactly(rows, cols, heads):
    """Guards against an import that is not the export's exact inverse (a re-import must be bit-exact)."""
    w = torch.randn(rows, cols)
    assert torch.equal(halves_to_interleaved(interleaved_to_halves(w, heads), heads), w)
    assert not torch.equal(interleaved_to_halves(w, heads), w)


# ------------------------------------------------------------------------------------------------
# Here -> Hugging Face, and back


def model_with_random_norms(**fields) -> MiniMindLM:
    """A small MiniMindLM whose norms are random too, so a misplaced norm weight would show."""
    torch.manual_seed(0)
    config = LMConfig(**{"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 2048,
                         "max_seq_len": 256, "rope_theta": 5e5, "norm_eps": 1e-6, **fields})
    model = MiniMindLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def test_import_then_export_gives_back_transformers_own_files(tmp_path):
    """Guards against an export that transformers/PEFT would read differently from what they wrote: the
    fixture imported and exported again is the same model.safetensors and adapter_model.safetensors, byte
    for byte, and a config.json with the same values for every key transformers wrote."""
    model = imported_model()
    adapter = read_peft_folder(HF_ADAPTER, model.config)
    save_llama_folder(tmp_path / "hf", model, Tokenizer.load(tokenizer_320(tmp_path / "tok")))
    save_peft_folder(tmp_path / "hf" / "adapter", adapter, model.config)
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == (HF_MODEL / "model.safetensors").read_bytes()
    assert ((tmp_path / "hf" / "adapter" / "adapter_model.safetensors").read_bytes()
            == (HF_ADAPTER / "adapter_model.safetensors").read_bytes())

    ours, theirs = (json.loads((d / "config.json").read_text()) for d in (tmp_path / "hf", HF_MODEL))
    differing = {k: (ours.get(k), v) for k, v in theirs.items() if ours.get(k) != v}
    assert differing == {"transformers_version": (None, "4.57.6"), "dtype": (None, "float32")}  # we write torch_dtype
    assert ours["torch_dtype"] == "float32"
    ours, theirs = (json.loads((d / "adapter_config.json").read_text()) for d in (tmp_path / "hf" / "adapter", HF_ADAPTER))
    for key in ("peft_type", "r", "lora_alpha", "bias", "use_rslora", "use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern"):
        assert ours[key] == theirs[key], key
    assert sorted(ours["target_modules"]) == sorted(theirs["target_modules"])


def test_export_then_import_is_bit_exact(tmp_path):
    """Guards against an export/import pair that is not each other's inverse (a permutation applied one way
    only, a config field lost: rope_theta, norm_eps, max_seq_len, hidden_dim, n_kv_heads)."""
    model = model_with_random_norms(hidden_dim=160)  # not the default 8/3 rule: must travel as intermediate_size
    save_llama_folder(tmp_path / "hf", model, Tokenizer.load(DEMO_TOKENIZER))
    config, state = read_llama_folder(tmp_path / "hf")
    for field in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "norm_eps", "max_seq_len", "rope_theta"):
        assert getattr(config, field) == getattr(model.config, field), field
    original = model.state_dict()
    assert state.keys() == original.keys() - {"output.weight"}
    assert all(torch.equal(state[k], original[k]) for k in state)
    assert "lm_head.weight" not in load_file(tmp_path / "hf" / "model.safetensors")[0]  # tied: stored once


@pytest.mark.parametrize("targets, rank, alpha", [(["wq", "wk", "wv", "wo", "w1", "w2", "w3"], 3, 6.5), (["wq", "wo"], 2, None)],
                         ids=["every Linear, odd rank, alpha 6.5", "MiniMind2's wq/wo, scale 1"])
def test_adapter_export_then_import_is_bit_exact(targets, rank, alpha, tmp_path):
    """Guards against an adapter that changes on the way out and back: lora_B of wq/wk permuted one way only,
    a non-square target transposed, the scale or the targets lost."""
    model = model_with_random_norms()
    apply_lora(model, rank=rank, alpha=alpha, target_modules=targets)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora." in name:
                p.normal_()
    adapter = adapter_state(model)
    save_peft_folder(tmp_path / "adapter", adapter, model.config)
    back = read_peft_folder(tmp_path / "adapter", model.config)
    exported = {k: v for k, v in adapter["lora_config"].items() if k != "base"}  # a PEFT folder names no base weights
    assert back["lora_config"] == exported
    assert back.keys() == adapter.keys()
    assert all(torch.equal(back[k], adapter[k]) for k in adapter if k != "lora_config")


def test_an_adapter_on_the_tied_embedding_is_refused_for_peft_with_a_hint_to_merge(tmp_path):
    """Guards against exporting our shared ΔE as PEFT adapters on embed_tokens and lm_head: two adapters on
    one tied matrix that PEFT's merge would add twice. Refused in one line that suggests --merge."""
    model = model_with_random_norms()
    apply_lora(model, rank=2, target_modules=["wq", "output"])
    with pytest.raises(ConversionError, match=r"tied embedding \('output' target\).*add --merge") as caught:
        save_peft_folder(tmp_path / "adapter", adapter_state(model), model.config)
    assert "\n" not in str(caught.value) and not (tmp_path / "adapter").exists()


# ------------------------------------------------------------------------------------------------
# What cannot be expressed is refused, by name

BASE_CONFIG = json.loads((HF_MODEL / "config.json").read_text())
CONFIG_REFUSALS = [
    ({"model_type": "qwen2"}, "model_type 'qwen2' is not 'llama'"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "architectures ['LlamaForSequenceClassification']"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"mlp_bias": True}, "mlp_bias=true"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "RoPE scaling {'rope_type': 'linear', 'factor': 2.0}"),
    ({"rope_scaling": None, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "RoPE scaling"),
    ({"tie_word_embeddings": False}, "untied embeddings"),
    ({"tie_word_embeddings": None}, "untied embeddings"),  # absent means false to transformers
    ({"head_dim": 32}, "head_dim 32 is not hidden_size / num_attention_heads"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantized weights"),
    ({"num_attention_heads": 3, "head_dim": None}, "dim (64) must be divisible by n_heads (3)"),
    ({"hidden_size": None}, "no integer 'hidden_size'"),
    # Fields of the wrong JSON type: "abc" was a ValueError traceback, and the string "false" is true to Python,
    # so an untied model was imported as tied (and "attention_bias": "false" refused as biases).
    ({"rope_theta": "abc"}, "rope_theta is 'abc', not a positive number"),
    ({"rope_theta": -1.0}, "rope_theta is -1.0, not a positive number"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings is 'false', not true or false"),
    ({"attention_bias": "false"}, "attention_bias is 'false', not true or false"),
    ({"rms_norm_eps": -1e-5}, "rms_norm_eps is -1e-05; RMSNorm adds it under a square root"),
    ({"num_key_value_heads": 0}, "n_kv_heads must be a positive integer, got 0"),
    ({"head_dim": "16"}, "head_dim is '16', not an integer"),
    # A RoPE table this long is allocated when the model is built, before any weight is read.
    ({"max_position_embeddings": 10**12}, "max_position_embeddings 1,000,000,000,000 is more than the 2,097,152 accepted"),
]


@pytest.mark.parametrize("change, message", CONFIG_REFUSALS, ids=[m.split()[0] for _, m in CONFIG_REFUSALS])
def test_a_llama_feature_minimind_lacks_is_refused_by_name(change, message):
    """Guards against a config silently changed into something else (a scaled RoPE read as plain, biases or
    an untied head dropped): each such config.json is one ConversionError line naming the feature."""
    hf = {k: v for k, v in {**BASE_CONFIG, **change}.items() if v is not None or k == "rope_scaling"}
    with pytest.raises(ConversionError) as caught:
        lm_config_from_hf(hf, "config.json")
    assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_config_fields_absent_from_config_json_mean_what_they_mean_to_transformers():
    """Guards against an absent rms_norm_eps or rope_theta read with our defaults (1e-5, 1e6) where
    transformers uses its own (1e-6, 1e4): the imported model would compute something else."""
    hf = {k: v for k, v in BASE_CONFIG.items() if k not in ("rms_norm_eps", "rope_theta", "max_position_embeddings",
                                                             "num_key_value_heads")}
    config = lm_config_from_hf(hf, "config.json")
    assert (config.norm_eps, config.rope_theta, config.max_seq_len, config.n_kv_heads) == (1e-6, 1e4, 2048, 4)


def _copy_fixture(tmp_path) -> Path:
    folder = tmp_path / "hf"
    shutil.copytree(HF_MODEL, folder)
    return folder


@pytest.mark.parametrize("tensor, message", [
    ("model.layers.0.self_attn.q_proj.bias", "holds biases MiniMindLM has no place for: model.layers.0.self_attn.q_proj.bias"),
    ("model.layers.0.mlp.experts.0.weight", "holds tensors MiniMindLM has no place for: model.layers.0.mlp.experts.0.weight"),
    (None, "lacks model.layers.1.mlp.down_proj.weight"),
])
def test_weights_without_a_place_here_are_refused(tensor, message, tmp_path):
    """Guards against a bias or an unknown tensor silently dropped, or a missing one left at its random init."""
    folder = _copy_fixture(tmp_path)
    tensors, metadata = load_file(folder / "model.safetensors")
    tensors = dict(tensors)
    if tensor is None:
        del tensors["model.layers.1.mlp.down_proj.weight"]
    else:
        tensors[tensor] = torch.zeros(64)
    save_file(tensors, folder / "model.safetensors", metadata)
    with pytest.raises(ConversionError, match=message.replace(".", r"\.")):
        read_llama_folder(folder)


def test_a_tied_models_stored_lm_head_copy_is_ignored_as_transformers_ignores_it(tmp_path, golden):
    """Guards against refusing (or, worse, using) an lm_head.weight that a tied model's file carries anyway:
    transformers ties lm_head to embed_tokens and never reads it, so the golden logits still hold."""
    folder = _copy_fixture(tmp_path)
    tensors, metadata = load_file(folder / "model.safetensors")
    save_file({**tensors, "lm_head.weight": torch.zeros(320, 64)}, folder / "model.safetensors", metadata)
    model = imported_model(folder)
    with torch.no_grad():
        assert (model.eval()(golden["input_ids"]).logits - golden["logits"]).abs().max().item() < 1e-5


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": 4096, "head_dim": 1024}, "model.embed_tokens.weight has shape (320, 64), but config.json's sizes make it (320, 4096)"),
    ({"intermediate_size": 10**6}, "model.layers.0.mlp.gate_proj.weight has shape (192, 64), but config.json's sizes make it (1000000, 64)"),
    ({"num_hidden_layers": 10**9}, "lacks model.layers.2.self_attn.q_proj.weight"),
    ({"num_hidden_layers": 1}, "holds model.layers.1.self_attn.k_proj.weight, but its config.json says 1 layers"),
], ids=["hidden_size", "intermediate_size", "10^9 layers", "fewer layers"])
def test_a_config_whose_sizes_disagree_with_its_weights_is_refused_before_the_model_is_built(change, message, tmp_path):
    """Guards against a config.json with absurd sizes being believed: the model was built (its memory allocated:
    a width of 10^6 is terabytes) before the weights' shapes were compared. Each is refused from the shapes."""
    folder = _copy_fixture(tmp_path)
    (folder / "config.json").write_text(json.dumps({**BASE_CONFIG, **change}))
    with pytest.raises(ConversionError) as caught:
        read_llama_folder(folder)
    assert message in str(caught.value), str(caught.value)


def _sharded_fixture(tmp_path, weight_map) -> Path:
    """The fixture as a sharded folder whose model.safetensors.index.json has this weight_map."""
    folder = _copy_fixture(tmp_path)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def test_a_sharded_folder_reads_its_shards(tmp_path, golden):
    """Guards against the index's checks refusing the ordinary case: every tensor in one listed shard."""
    names = load_file(HF_MODEL / "model.safetensors")[0].keys()
    model = imported_model(_sharded_fixture(tmp_path, {k: "model-00001-of-00001.safetensors" for k in names}))
    with torch.no_grad():
        assert (model.eval()(golden["input_ids"]).logits - golden["logits"]).abs().max().item() < 1e-5


@pytest.mark.parametrize("weight_map, message", [
    (["model-00001-of-00001.safetensors"], "its weight_map is ['model-00001-of-00001.safetensors'], not an object"),
    ({"a": 1}, "its weight_map is {'a': 1}, not an object"),
    ({"a": "../outside.safetensors"}, "names the shard '../outside.safetensors', which is not a file in its folder"),
    ({"a": "/etc/outside.safetensors"}, "names the shard '/etc/outside.safetensors', which is not a file in its folder"),
], ids=["a list", "not file names", "../", "absolute"])
def test_a_shard_index_that_is_malformed_or_points_outside_the_folder_is_refused(weight_map, message, tmp_path):
    """Guards against a weight_map that is not a dict (an AttributeError traceback) and shard names such as
    ../outside.safetensors or an absolute path, which were read from outside --hf_dir."""
    (tmp_path / "outside.safetensors").write_bytes((HF_MODEL / "model.safetensors").read_bytes())
    with pytest.raises(ConversionError) as caught:
        read_llama_folder(_sharded_fixture(tmp_path, weight_map))
    assert message in str(caught.value), str(caught.value)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors.index.json", "adapter_config.json"])
def test_deeply_nested_json_in_a_folder_is_one_line(name, tmp_path):
    """Guards against a RecursionError traceback from config.json, the shard index or adapter_config.json nested
    thousands of levels deep: each is read with plumbing/untrusted_json.py's limits, one UserError naming the file."""
    folder = _copy_fixture(tmp_path) if name != "adapter_config.json" else tmp_path / "hf"
    if name == "adapter_config.json":
        shutil.copytree(HF_ADAPTER, folder)
    elif name == "model.safetensors.index.json":
        (folder / "model.safetensors").unlink()
    (folder / name).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(errors.UserError) as caught:
        if name == "adapter_config.json":
            read_peft_folder(folder, imported_model().config)
        else:
            read_llama_folder(folder)
    assert str(caught.value) == f"{folder / name} is nested 100000 levels deep, more than the 64 accepted"


BASE_ADAPTER = json.loads((HF_ADAPTER / "adapter_config.json").read_text())
ADAPTER_REFUSALS = [
    ({"peft_type": "IA3"}, "peft_type 'IA3' is not LORA"),
    ({"use_dora": True}, "use_dora is true but 0 of the 14 adapted layers have a lora_magnitude_vector"),
    ({"use_dora": "true"}, "use_dora is 'true', not true or false"),
    ({"rank_pattern": {"q_proj": 8}}, "not (8, 64) (rank r=8"),  # the tensors are rank 4
    ({"rank_pattern": {"q_proj": "8"}}, "rank_pattern is {'q_proj': '8'}, not an object"),
    ({"alpha_pattern": {"q_proj": 16}}, "per-module alphas (alpha_pattern)"),
    ({"bias": "all"}, "trained biases"),
    ({"lora_bias": True}, "a bias on lora_B"),
    ({"modules_to_save": ["lm_head"]}, "fully trained modules (modules_to_save)"),
    ({"layers_to_transform": [0]}, "adapters on some layers only (layers_to_transform)"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out"),
    ({"target_modules": ["q_proj", "lm_head"]}, "target_modules ['lm_head'] cannot be converted"),
    ({"r": 8}, "has shape (4, 192), not (8, 192) (rank r=8"),
    ({"r": True}, "r=True and lora_alpha=8 must be positive numbers"),
    ({"use_rslora": "false"}, "use_rslora is 'false', not true or false"),  # the string was read as true: rsLoRA's scale
    ({"target_modules": 5}, "target_modules is 5, not a list of module names"),
    ({"kasa_config": {"r": 4}}, "kasa_config={'r': 4} cannot be converted: KaSA"),
    ({"velora_config": {"rank": 4}}, "velora_config={'rank': 4} cannot be converted: VeLoRA"),
    ({"monteclora_config": {"n": 1}}, "monteclora_config={'n': 1} cannot be converted: MonteCLoRA"),
    ({"arrow_config": {"top_k": 1}}, "arrow_config={'top_k': 1} cannot be converted: Arrow"),
]


@pytest.mark.parametrize("change, message", ADAPTER_REFUSALS, ids=[m.split()[0] for _, m in ADAPTER_REFUSALS])
def test_a_peft_feature_loralinear_lacks_is_refused_by_name(change, message):
    """Guards against an adapter silently imported as something else (DoRA without its magnitudes, per-module
    ranks flattened, biases dropped): each is one ConversionError line naming the option."""
    config = imported_model().config
    tensors = load_file(HF_ADAPTER / "adapter_model.safetensors")[0]
    with pytest.raises(ConversionError) as caught:
        adapter_from_peft({**BASE_ADAPTER, **change}, tensors, config, "adapter_config.json")
    assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_16", "olora", "corda", "loftq", "lora_ga", "a_future_init"])
def test_a_peft_init_that_changes_the_base_weights_is_refused_by_name(init):
    """Guards against a PiSSA/OLoRA/CorDA/LoftQ adapter imported as a plain LoRA with exit code 0: PEFT trained it
    on W - scale·B0·A0 and subtracts that again when it loads it, so the import's logits were about 0.5 away from
    PEFT's. Refused in one line naming the init and PEFT's way out (an init we do not know is refused too)."""
    config = imported_model().config
    tensors = load_file(HF_ADAPTER / "adapter_model.safetensors")[0]
    with pytest.raises(ConversionError) as caught:
        adapter_from_peft({**BASE_ADAPTER, "init_lora_weights": init}, tensors, config, "adapter_config.json")
    message = str(caught.value)
    assert f"init_lora_weights={init!r} cannot be converted" in message and "\n" not in message, message
    if init != "a_future_init":
        assert "path_initial_model_for_weight_conversion" in message


@pytest.mark.parametrize("init", [True, False, None, "gaussian", "eva", "orthogonal", "mica"])
def test_a_peft_init_that_only_chooses_the_first_a_and_b_gives_peft_logits(init, golden):
    """Guards against refusing (or mis-importing) adapters that PEFT loads as ordinary LoRAs: these inits only pick
    where A and B start, which the saved tensors replace. PEFT 0.21.2 gave the fixture's golden logits for each
    (tests/fixtures/hf_llama/README.md), so the import must too."""
    model = imported_model()
    tensors = load_file(HF_ADAPTER / "adapter_model.safetensors")[0]
    load_lora(model, adapter_from_peft({**BASE_ADAPTER, "init_lora_weights": init}, tensors, model.config, "cfg"))
    with torch.no_grad():
        assert (model(golden["input_ids"]).logits - golden["logits_with_peft_lora"]).abs().max().item() < 1e-5


@pytest.mark.parametrize("key, shape, message", [
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", (63, 4), "has shape (63, 4), not (64, 4)"),
    ("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight", (), "has shape (), not (32, 4)"),
    ("base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight", (4, 64), "is for layer 5, but the model has 2 layers"),
], ids=["rows that are not whole heads", "a scalar", "a layer the model lacks"])
def test_peft_tensors_of_the_wrong_shape_are_refused_before_they_are_permuted(key, shape, message):
    """Guards against a lora_B of q_proj/k_proj whose rows are not whole heads (or a scalar, or a layer the model
    lacks) crashing the RoPE row permutation with a reshape traceback: each is one ConversionError line."""
    config = imported_model().config
    tensors = {**load_file(HF_ADAPTER / "adapter_model.safetensors")[0], key: torch.zeros(shape)}
    with pytest.raises(ConversionError, match=re.escape(message)):
        adapter_from_peft(BASE_ADAPTER, tensors, config, "adapter_config.json")


def test_peft_tensors_with_no_counterpart_are_refused():
    """Guards against an embedding adapter or a DoRA magnitude vector in the tensors being skipped silently."""
    config = imported_model().config
    tensors = dict(load_file(HF_ADAPTER / "adapter_model.safetensors")[0])
    tensors["base_model.model.model.embed_tokens.lora_embedding_A"] = torch.zeros(4, 320)
    with pytest.raises(ConversionError, match="tensor base_model.model.model.embed_tokens.lora_embedding_A cannot be converted"):
        adapter_from_peft(BASE_ADAPTER, tensors, config, "adapter_config.json")


# ------------------------------------------------------------------------------------------------
# The command line


def convert(argv, capsys):
    """convert_model.py as its __main__ runs it -> (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = errors.run_main(convert_model.main, [str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_from_hf_writes_a_checkpoint_and_adapter_the_scripts_use(tmp_path, capsys, golden):
    """Guards against an import that only works from Python: `convert_model.py from-hf` writes a checkpoint
    whose sidecar records the tokenizer (with its fingerprint), and an adapter file that load_checkpoint,
    eval_model.py --lora_name and further LoRA training use -- all giving transformers'/PEFT's logits."""
    tok = tokenizer_320(tmp_path / "tok320")
    out = tmp_path / "out"
    code, stdout, stderr = convert(["from-hf", "--hf_dir", HF_MODEL, "--out", out / "llama_64.safetensors", "--tokenizer", tok,
                                "--peft_dir", HF_ADAPTER, "--lora_out", out / "lora" / "peft_64.pth"], capsys)
    assert code == 0, stderr
    assert "wrote" in stdout
    sidecar = json.loads((out / "llama_64.json").read_text())
    assert sidecar["stage"] == "from_hf" and sidecar["tokenizer_sha256"] == Tokenizer.load(tok).fingerprint()

    base = load_checkpoint(out / "llama_64.safetensors")
    adapted = load_checkpoint(out / "llama_64.safetensors", adapter=out / "lora" / "peft_64.pth")
    with torch.no_grad():
        assert (base.model(golden["input_ids"]).logits - golden["logits"]).abs().max().item() < 1e-5
        assert (adapted.model(golden["input_ids"]).logits - golden["logits_with_peft_lora"]).abs().max().item() < 1e-5

    eval_model.main(["--ckpt", str(out / "llama_64.safetensors"), "--out_dir", str(out), "--lora_name", "peft",
                     "--max_new_tokens", "2", "--json", "--device", "cpu"])
    assert json.loads(capsys.readouterr().out)  # the records of the built-in prompts, with the adapter on

    model = adapted.model.train()  # further training starts from the imported adapter
    mark_only_lora_as_trainable(model)
    loss = torch.nn.functional.cross_entropy(model(golden["input_ids"][:, :-1]).logits.transpose(1, 2), golden["input_ids"][:, 1:])
    loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained == {n for n, _ in model.named_parameters() if ".lora." in n}


def test_from_hf_takes_the_folders_own_tokenizer_and_writes_it_beside_the_checkpoint(tmp_path, capsys):
    """Guards against an import that points at a tokenizer inside the Hugging Face folder (which may be moved
    or deleted) or records none: the tokenizer is copied to OUT_STEM_tokenizer/ and the sidecar names it."""
    folder = _copy_fixture(tmp_path)
    tokenizer_320(folder)  # now the folder carries its tokenizer, as a real model folder does
    code, _, stderr = convert(["from-hf", "--hf_dir", folder, "--out", tmp_path / "out" / "m.pth"], capsys)
    assert code == 0, stderr
    assert (tmp_path / "out" / "m_tokenizer" / "tokenizer.json").is_file()
    loaded = load_checkpoint(tmp_path / "out" / "m.pth")
    assert Path(loaded.tokenizer_path) == tmp_path / "out" / "m_tokenizer"


@pytest.fixture()
def our_checkpoint(tmp_path):
    """A checkpoint of ours (with sidecar) and an adapter on every Linear with a non-trivial scale."""
    model = model_with_random_norms()
    save_model(model, tmp_path / "full_sft_64.pth", meta=checkpoint_meta("full_sft", DEMO_TOKENIZER, Tokenizer.load(DEMO_TOKENIZER)))
    apply_lora(model, rank=4, alpha=6, target_modules=["wq", "wk", "wv", "wo", "w1", "w2", "w3"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora." in name:
                p.normal_(0, 0.1)
    save_lora(model, tmp_path / "lora_x_64.pth")
    return tmp_path / "full_sft_64.pth", tmp_path / "lora_x_64.pth", model


def test_to_hf_then_from_hf_gives_back_the_checkpoint_and_adapter_bit_exact(our_checkpoint, tmp_path, capsys):
    """Guards against the two subcommands not being inverses: out and back in, the weights and the adapter
    are bit-identical, and the tokenizer is the very one the model was trained with (same fingerprint)."""
    ckpt, lora, _ = our_checkpoint
    code, stdout, stderr = convert(["to-hf", "--ckpt", ckpt, "--hf_dir", tmp_path / "hf", "--lora_path", lora], capsys)
    assert code == 0, stderr
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {"config.json", "generation_config.json", "model.safetensors",
                                                             "tokenizer.json", "tokenizer_config.json", "adapter"}
    assert {p.name for p in (tmp_path / "hf" / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    code, _, stderr = convert(["from-hf", "--hf_dir", tmp_path / "hf", "--out", tmp_path / "back.pth",
                           "--peft_dir", tmp_path / "hf" / "adapter", "--lora_out", tmp_path / "back_lora.pth"], capsys)
    assert code == 0, stderr
    original, back = read_checkpoint(ckpt), read_checkpoint(tmp_path / "back.pth")
    assert original.keys() == back.keys() and all(torch.equal(original[k], back[k]) for k in original)
    original, back = read_checkpoint(lora), read_checkpoint(tmp_path / "back_lora.pth")
    assert original.keys() == back.keys()
    assert all(torch.equal(original[k], back[k]) for k in original if k != "lora_config")
    assert original["lora_config"] == back["lora_config"]
    recorded = json.loads((tmp_path / "back.json").read_text())["tokenizer_sha256"]
    assert recorded == Tokenizer.load(DEMO_TOKENIZER).fingerprint()


def test_to_hf_merge_writes_the_adapted_model_as_a_plain_folder(our_checkpoint, tmp_path, capsys):
    """Guards against --merge exporting the base (adapter forgotten) or a folder that still needs PEFT: the
    merged folder alone computes what base + adapter compute here."""
    ckpt, lora, adapted = our_checkpoint
    code, _, stderr = convert(["to-hf", "--ckpt", ckpt, "--hf_dir", tmp_path / "merged", "--lora_path", lora, "--merge"], capsys)
    assert code == 0, stderr
    assert not (tmp_path / "merged" / "adapter").exists()
    model = imported_model(tmp_path / "merged")
    ids = torch.randint(0, 2048, (2, 11))
    with torch.no_grad():
        assert (model.eval()(ids).logits - adapted.eval()(ids).logits).abs().max().item() < 1e-5


def test_to_hf_reads_a_minimind2_file_with_the_shape_flags(tmp_path, capsys):
    """Guards against to-hf needing a sidecar: a plain MiniMind2 .pth exports with --dim/--n_layers/
    --n_heads/--n_kv_heads/--tokenizer, as load_checkpoint takes them."""
    model = model_with_random_norms()
    torch.save(model.state_dict(), tmp_path / "full_sft_64.pth")  # MiniMind2 style: no sidecar
    code, _, stderr = convert(["to-hf", "--ckpt", tmp_path / "full_sft_64.pth", "--hf_dir", tmp_path / "hf", "--dim", 64,
                           "--n_layers", 2, "--n_heads", 4, "--n_kv_heads", 2, "--tokenizer", DEMO_TOKENIZER], capsys)
    assert code == 0, stderr
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_key_value_heads"] == 2


def _mistakes(tmp_path, our_checkpoint):
    ckpt, lora, model = our_checkpoint
    tied = tmp_path / "tied_64.pth"
    apply_lora(tied_model := model_with_random_norms(), rank=2, target_modules=["wq", "output"])
    save_lora(tied_model, tied)
    other_template = tmp_path / "other_template"
    save_llama_folder(other_template, model_with_random_norms(), Tokenizer.load(DEMO_TOKENIZER))
    config = json.loads((other_template / "tokenizer_config.json").read_text())
    (other_template / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ messages }}"}))
    qwen = _copy_fixture(tmp_path)
    (qwen / "config.json").write_text(json.dumps({**BASE_CONFIG, "model_type": "qwen2"}))
    return [
        (["to-hf", "--ckpt", ckpt, "--hf_dir", tmp_path / "x", "--merge"], "--merge merges an adapter"),
        (["to-hf", "--ckpt", tmp_path / "none.pth", "--hf_dir", tmp_path / "x"], "none.pth not found"),
        (["to-hf", "--ckpt", ckpt, "--hf_dir", tmp_path / "x", "--lora_path", tied], "add --merge to export"),
        (["to-hf", "--ckpt", ckpt, "--hf_dir", tmp_path / "x", "--lora_path", tmp_path / "none.pth"], "adapter"),
        (["to-hf", "--ckpt", ckpt, "--hf_dir", ckpt], "is a file, not a folder"),
        (["from-hf", "--hf_dir", tmp_path / "nowhere", "--out", tmp_path / "m.pth"], "nowhere is not a folder"),
        (["from-hf", "--hf_dir", HF_MODEL, "--out", tmp_path / "m.pth"], "has no tokenizer.json: pass --tokenizer"),
        (["from-hf", "--hf_dir", HF_MODEL, "--out", tmp_path / "m.pth", "--tokenizer", DEMO_TOKENIZER],
         "the tokenizer has 2048 tokens but the model 320 embeddings"),
        (["from-hf", "--hf_dir", HF_MODEL, "--out", tmp_path / "m.pth", "--peft_dir", HF_ADAPTER], "--peft_dir and --lora_out go together"),
        (["from-hf", "--hf_dir", qwen, "--out", tmp_path / "m.pth"], "model_type 'qwen2' is not 'llama'"),
        (["from-hf", "--hf_dir", other_template, "--out", tmp_path / "m.pth"], "its chat template is not MiniMind2's"),
        (["from-hf", "--hf_dir", other_template, "--out", tmp_path / "m.pth", "--tokenizer", DEMO_TOKENIZER],
         "has its own tokenizer.json; --tokenizer is only for a folder without one"),
    ]


def test_every_mistake_is_one_line_and_exit_code_2(our_checkpoint, tmp_path, capsys):
    """Guards against a conversion mistake reported as a traceback, or a half-written output: each is
    `convert_model.py: error: MESSAGE` (one line) with exit code 2, and a refused to-hf writes nothing."""
    for argv, message in _mistakes(tmp_path, our_checkpoint):
        code, stdout, stderr = convert(argv, capsys)
        lines = stderr.strip().splitlines()
        assert code == 2, (argv, stderr)
        assert len(lines) == 1 and ": error: " in lines[0] and message in lines[0], (argv, stderr)
        assert "Traceback" not in stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "m.pth").exists()


# ------------------------------------------------------------------------------------------------
# A conversion never destroys data: nothing is overwritten without --force, and nothing is written
# before everything is checked


def _tree(folder: Path) -> dict:
    """{relative path: bytes} of every file under folder: a snapshot to compare before and after."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_from_hf_replaces_nothing_without_force(tmp_path, capsys):
    """Guards against `from-hf --out` onto an existing checkpoint replacing it (and its sidecar) silently: a second
    import is refused in one line and leaves every file as it was; with --force it replaces them."""
    out = tmp_path / "out" / "llama_64.pth"
    argv = ["from-hf", "--hf_dir", HF_MODEL, "--out", out, "--tokenizer", tokenizer_320(tmp_path / "tok")]
    assert convert(argv, capsys)[0] == 0
    out.write_bytes(b"an earlier checkpoint")
    before = _tree(tmp_path / "out")
    code, _, stderr = convert(argv, capsys)
    assert code == 2 and f"--out {out} exists; pass --force to replace it" in stderr, stderr
    assert _tree(tmp_path / "out") == before
    code, _, stderr = convert([*argv, "--force"], capsys)
    assert code == 0, stderr
    assert load_checkpoint(out).model.config.dim == 64  # a checkpoint again, not the bytes written above


def test_from_hf_refuses_a_file_name_whose_dim_is_not_the_models(tmp_path, capsys):
    """Guards against a dim-64 model written as llama_128.pth (or an adapter as NAME_128.pth), which the scripts
    would then find as a dim-128 one: --dim 128 and --lora_name look files up by NAME_DIM."""
    tok = tokenizer_320(tmp_path / "tok")
    for outputs, message in [(["--out", tmp_path / "llama_128.pth"], "--out " + str(tmp_path / "llama_128.pth") +
                               " names dim 128, but the model's dim is 64: scripts find files by NAME_DIM, so call it llama_64.pth"),
                              (["--out", tmp_path / "llama_64.pth", "--peft_dir", HF_ADAPTER, "--lora_out", tmp_path / "x_128.pth"],
                               "--lora_out " + str(tmp_path / "x_128.pth") + " names dim 128")]:
        code, _, stderr = convert(["from-hf", "--hf_dir", HF_MODEL, "--tokenizer", tok, *outputs], capsys)
        assert code == 2 and message in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_a_refused_peft_folder_leaves_every_output_unwritten(tmp_path, capsys):
    """Guards against from-hf writing the checkpoint, its sidecar and the tokenizer copy before it read --peft_dir:
    a PEFT folder it refuses (here a PiSSA adapter) used to leave them written, or overwritten."""
    folder = _copy_fixture(tmp_path)
    tokenizer_320(folder)
    peft = tmp_path / "pissa"
    shutil.copytree(HF_ADAPTER, peft)
    (peft / "adapter_config.json").write_text(json.dumps({**BASE_ADAPTER, "init_lora_weights": "pissa"}))
    code, _, stderr = convert(["from-hf", "--hf_dir", folder, "--out", tmp_path / "out" / "m.pth", "--peft_dir", peft,
                           "--lora_out", tmp_path / "out" / "lora" / "p_64.pth"], capsys)
    assert code == 2 and "init_lora_weights='pissa' cannot be converted" in stderr, stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out, lora_out, message", [
    ("x.json", None, "--out and the sidecar of --out would both be"),
    ("m.pth", "m.pth", "--out and --lora_out would both be"),
    ("m.pth", "m.json", "the sidecar of --out and --lora_out would both be"),
    ("m.pth", "m_tokenizer/tokenizer.json", "the tokenizer copied beside --out and --lora_out would both be"),
], ids=["out is its sidecar", "lora_out is out", "lora_out is the sidecar", "lora_out is in the tokenizer"])
def test_from_hf_refuses_outputs_that_would_overwrite_each_other(out, lora_out, message, tmp_path, capsys):
    """Guards against --out x.json (its sidecar x.json then replaced the weights just written) and a --lora_out
    equal to --out, to its sidecar or to a tokenizer file (the adapter replaced the model): refused, nothing written."""
    folder = _copy_fixture(tmp_path)
    tokenizer_320(folder)
    extra = ["--peft_dir", HF_ADAPTER, "--lora_out", tmp_path / "out" / lora_out] if lora_out else []
    code, _, stderr = convert(["from-hf", "--hf_dir", folder, "--out", tmp_path / "out" / out, *extra], capsys)
    assert code == 2 and message in stderr, stderr
    assert not (tmp_path / "out").exists()


def _earlier_export(folder: Path, capsys) -> None:
    """An export with an adapter, plus what transformers' save_pretrained of a bigger model leaves (shards, their
    index, chat_template.jinja), plus a file of the user's."""
    model = model_with_random_norms()
    save_model(model, folder.parent / "base_64.pth", meta=checkpoint_meta("full_sft", DEMO_TOKENIZER, Tokenizer.load(DEMO_TOKENIZER)))
    apply_lora(model, rank=2, target_modules=["wq"])
    save_lora(model, folder.parent / "wq_64.pth")
    assert convert(["to-hf", "--ckpt", folder.parent / "base_64.pth", "--hf_dir", folder, "--lora_path", folder.parent / "wq_64.pth"],
               capsys)[0] == 0
    for name in ("chat_template.jinja", "model-00001-of-00002.safetensors", "model.safetensors.index.json", "notes.txt"):
        (folder / name).write_text("from before")


def test_to_hf_refuses_a_folder_that_is_not_empty_without_force(tmp_path, capsys):
    """Guards against to-hf into a folder holding an earlier export: the stale chat_template.jinja, shards and
    adapter/ it left were then read by transformers beside the new files. Refused, the folder untouched."""
    folder = tmp_path / "hf"
    _earlier_export(folder, capsys)
    before = _tree(folder)
    code, _, stderr = convert(["to-hf", "--ckpt", tmp_path / "base_64.pth", "--hf_dir", folder, "--lora_path",
                           tmp_path / "wq_64.pth", "--merge"], capsys)
    assert code == 2 and f"--hf_dir {folder} is not empty; pass --force" in stderr, stderr
    assert _tree(folder) == before


def test_to_hf_force_replaces_an_earlier_export_and_keeps_other_files(tmp_path, capsys):
    """Guards against --force leaving an earlier export's files (which transformers would read: a chat template,
    shards, adapter/ beside a merged model) or deleting a user's file silently: what an export writes is removed
    and named, anything else is kept."""
    folder = tmp_path / "hf"
    _earlier_export(folder, capsys)
    code, _, stderr = convert(["to-hf", "--ckpt", tmp_path / "base_64.pth", "--hf_dir", folder, "--lora_path",
                           tmp_path / "wq_64.pth", "--merge", "--force"], capsys)
    assert code == 0, stderr
    assert sorted(_tree(folder)) == ["config.json", "generation_config.json", "model.safetensors", "notes.txt",
                                     "tokenizer.json", "tokenizer_config.json"]
    assert "removed 10 file(s) of an earlier export" in stderr and "chat_template.jinja" in stderr
    assert "adapter/adapter_config.json" in stderr and "notes.txt" not in stderr


def test_ctrl_c_while_convert_model_imports_is_one_line_and_exit_130(monkeypatch, capsys):
    """Guards against Ctrl-C during convert_model.py's imports (torch takes seconds, before run_main is entered)
    ending in a traceback: one line and exit code 130, as a Ctrl-C later does."""
    real_import = __import__

    def interrupted_import(name, *args, **kwargs):
        if name == "formats.checkpoint":  # the first import that brings in torch
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", interrupted_import)
    monkeypatch.setattr(sys, "argv", ["convert_model.py", "--help"])
    try:
        runpy.run_path(str(ROOT / "convert_model.py"), run_name="__main__")
        raise AssertionError("convert_model.py ran on after Ctrl-C")
    except BaseException as e:  # noqa: BLE001 -- before the fix this was the KeyboardInterrupt itself
        ended = e
    assert isinstance(ended, SystemExit) and ended.code == errors.INTERRUPTED_EXIT == 130, repr(ended)
    assert capsys.readouterr().err == "\nconvert_model.py: interrupted\n"


def test_every_flag_says_what_it_does():
    """Guards against a flag without help= (the style rule for every script) in either subcommand."""
    parser = convert_model.build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subcommands) == {"to-hf", "from-hf"}
    for name, sub in subcommands.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"

