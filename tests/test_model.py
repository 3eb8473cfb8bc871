"""Tests for model/LMConfig.py, model/model.py and model/checkpoint.py.

Known answers come from tests/fixtures/minimind2/ (made by MiniMind2's own code); everything
else compares two ways of computing the same thing (cached vs full, batched vs alone, SDPA vs
explicit). Tiny models on CPU: the whole file runs in seconds.
"""

import json
import os
from pathlib import Path

import pytest
import torch

from model.checkpoint import CheckpointError, clean_state_dict, load_model, load_weights, save_model
from model.LMConfig import LMConfig
from model.model import MiniMindLM, apply_rope, rope_table, sample_next_token

FIXTURES = Path(__file__).parent / "fixtures" / "minimind2"


@pytest.fixture(scope="module")
def golden():
    return torch.load(FIXTURES / "golden.pth", weights_only=True)


def fixture_model(flash_attn=True):
    config = LMConfig.from_dict({**json.loads((FIXTURES / "model_config.json").read_text()), "flash_attn": flash_attn})
    model = MiniMindLM(config).eval()
    model.load_state_dict(torch.load(FIXTURES / "model.pth", weights_only=True), strict=True)
    return model


def tiny_model(seed=0, **overrides):
    """A random model with larger-than-default init, so logits differ clearly between tokens."""
    torch.manual_seed(seed)
    config = LMConfig(**{"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 97, **overrides})
    model = MiniMindLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    return model


# ---- MiniMind2 compatibility ------------------------------------------------------------------


@pytest.mark.parametrize("flash_attn", [True, False])
def test_golden_logits(golden, flash_attn):
    """Guards against any numeric drift from MiniMind2 (RoPE layout, GQA head order, norm, FFN)."""
    logits = fixture_model(flash_attn)(golden["input_ids"]).logits
    assert logits.shape == golden["logits"].shape
    torch.testing.assert_close(logits, golden["logits"], atol=1e-5, rtol=0)


def test_greedy_continuation_matches_fixture(golden):
    """Guards against a cached decode that drifts from MiniMind2's greedy generation."""
    prompt = golden["greedy_prompt"]
    want = golden["greedy_continuation"]
    out = fixture_model().generate(prompt, max_new_tokens=want.shape[1], temperature=0, eos_token_id=-1)
    assert torch.equal(out[:, : prompt.shape[1]], prompt)
    assert torch.equal(out[:, prompt.shape[1] :], want)


def test_state_dict_keys_and_tied_weights():
    """Guards against renamed parameters (MiniMind2 checkpoints would not load) and lost weight tying."""
    model = fixture_model()
    theirs = torch.load(FIXTURES / "model.pth", weights_only=True)
    assert list(model.state_dict()) == list(theirs)
    assert model.tok_embeddings.weight is model.output.weight
    # one tensor, so a gradient from both uses lands in the same place
    ids = torch.tensor([[3, 4, 5]])
    model(ids).logits.sum().backward()
    assert model.output.weight.grad[ids[0]].abs().sum() > 0
    assert sum(p.numel() for p in model.parameters()) == sum(
        t.numel() for k, t in theirs.items() if k != "tok_embeddings.weight"
    )


def test_rope_is_interleaved_pairs_in_float32():
    """Guards against the "rotate half" layout (Hugging Face Llama's), which MiniMind2 checkpoints do not use."""
    x = torch.randn(1, 3, 2, 8)  # (B, T, heads, D)
    pos = torch.tensor([[0, 5, 11]])
    theta = 1e6
    rotations = lambda: torch.view_as_complex(rope_table(8, 16, theta)[pos]).unsqueeze(2)  # (1, T, 1, D/2)
    got = apply_rope(x, rotations())
    want = torch.empty_like(x)
    for t in range(3):
        for i in range(4):
            a = pos[0, t].item() * theta ** (-2 * i / 8)
            c, s = torch.tensor(a).cos(), torch.tensor(a).sin()
            x0, x1 = x[0, t, :, 2 * i], x[0, t, :, 2 * i + 1]
            want[0, t, :, 2 * i], want[0, t, :, 2 * i + 1] = x0 * c - x1 * s, x0 * s + x1 * c
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert apply_rope(x.bfloat16(), rotations()).dtype == torch.bfloat16


def test_rope_depends_on_relative_position_only():
    """Guards against position ids being ignored or applied inconsistently to q and k."""
    model = tiny_model()
    ids = torch.randint(0, 97, (1, 10))
    base = model(ids).logits
    shifted = model(ids, position_ids=torch.arange(7, 17)[None]).logits
    torch.testing.assert_close(shifted, base, atol=1e-4, rtol=0)
    assert not torch.allclose(model(ids, position_ids=torch.zeros(1, 10, dtype=torch.long)).logits, base, atol=1e-3)


# ---- attention paths, cache, padding ----------------------------------------------------------


def test_sdpa_path_equals_explicit_path():
    """Guards against the fused and the teaching attention paths drifting apart (mask, scale, GQA order)."""
    fused = tiny_model(flash_attn=True)
    explicit = tiny_model(flash_attn=False)
    ids = torch.randint(0, 97, (2, 12))
    torch.testing.assert_close(fused(ids).logits, explicit(ids).logits, atol=1e-5, rtol=0)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :4] = 0
    torch.testing.assert_close(
        fused(ids, attention_mask=mask).logits, explicit(ids, attention_mask=mask).logits, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("flash_attn", [True, False])
def test_cached_decode_equals_full_forward(flash_attn):
    """Guards against KV-cache bugs: wrong write position, wrong RoPE offset, causal mask misaligned after a prefix."""
    model = tiny_model(flash_attn=flash_attn)
    ids = torch.randint(0, 97, (2, 14))
    full = model(ids).logits
    # prefill 6 tokens (the cache gets exactly 6 slots, so the steps below make it grow),
    # then one token at a time, then a chunk of 3 at once (needs an explicit causal mask)
    out = model(ids[:, :6], use_cache=True)
    pieces = [out.logits]
    for t in range(6, 11):
        out = model(ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
        pieces.append(out.logits)
    out = model(ids[:, 11:14], past_key_values=out.past_key_values, use_cache=True)
    pieces.append(out.logits)
    assert out.past_key_values.length == 14
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


def test_forward_does_not_mutate_state():
    """Guards against hidden state: module buffers changed by forward, or a cache object advanced in place."""
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 97, (1, 8))
    prefix = model(ids[:, :5], use_cache=True).past_key_values
    a = model(ids[:, 5:], past_key_values=prefix, use_cache=True)
    b = model(ids[:, 5:], past_key_values=prefix, use_cache=True)  # same cache object again
    assert prefix.length == 5 and a.past_key_values.length == 8
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert a.aux_loss.item() == 0.0


def left_pad(prompts, pad=0):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@pytest.mark.parametrize("flash_attn", [True, False])
def test_left_padded_batch_rows_equal_each_alone(flash_attn):
    """Guards against padding leaking into real rows (unmasked pad keys, RoPE positions counted from the pad)."""
    model = tiny_model(flash_attn=flash_attn)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 97, (n,), generator=g).tolist() for n in (3, 9, 6)]
    ids, mask = left_pad(prompts)
    batch_logits = model(ids, attention_mask=mask).logits
    batch_out = model.generate(ids, attention_mask=mask, max_new_tokens=8, temperature=0, eos_token_id=-1,
                               repetition_penalty=1.3)  # fmt: skip
    width = ids.shape[1]
    for row, prompt in enumerate(prompts):
        alone = torch.tensor([prompt])
        torch.testing.assert_close(batch_logits[row, width - len(prompt) :], model(alone).logits[0], atol=1e-5, rtol=0)
        alone_out = model.generate(alone, max_new_tokens=8, temperature=0, eos_token_id=-1, repetition_penalty=1.3)
        assert batch_out[row, width:].tolist() == alone_out[0, len(prompt) :].tolist()


# ---- generate ---------------------------------------------------------------------------------


def test_max_new_tokens_counts_new_tokens():
    """Guards against MiniMind's confusion where max_new_tokens bounded the total length (prompt included)."""
    model = tiny_model()
    prompt = torch.randint(3, 97, (2, 11))
    out = model.generate(prompt, max_new_tokens=5, temperature=0, eos_token_id=-1)
    assert out.shape == (2, 16)
    steps = list(model.generate(prompt, max_new_tokens=5, temperature=0, eos_token_id=-1, stream=True))
    assert len(steps) == 5 and all(s.shape == (2, 1) for s in steps)
    assert torch.equal(torch.cat(steps, dim=1), out[:, 11:])
    assert torch.equal(model.generate(prompt, max_new_tokens=0), prompt)


def test_stops_at_eos_per_row():
    """Guards against rows running past their eos, or generation continuing once every row is done."""
    model = tiny_model()
    prompts = torch.randint(3, 97, (2, 5), generator=torch.Generator().manual_seed(3))
    free = model.generate(prompts, max_new_tokens=10, temperature=0, eos_token_id=-1)[:, 5:].tolist()
    eos = free[0][2]  # row 0 produces this at its 3rd step
    assert eos not in free[0][:2]
    # what each row should show: its tokens up to and including the first eos, then padding
    ends = [row.index(eos) + 1 if eos in row else 10 for row in free]
    want = [row[:end] + [-7] * (max(ends) - end) for row, end in zip(free, ends)]
    out = model.generate(prompts, max_new_tokens=10, temperature=0, eos_token_id=eos, pad_token_id=-7)
    assert out[:, 5:].tolist() == want


def test_sampling_is_deterministic_under_seed():
    """Guards against sampling that ignores seed/generator (irreproducible demos and tests)."""
    model = tiny_model()
    prompt = torch.randint(3, 97, (2, 4))
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=1.0, eos_token_id=-1)
    a = model.generate(prompt, seed=123, **kw)
    assert torch.equal(a, model.generate(prompt, seed=123, **kw))
    assert torch.equal(a, model.generate(prompt, generator=torch.Generator().manual_seed(123), **kw))
    assert not torch.equal(a, model.generate(prompt, seed=124, **kw))


def test_repetition_penalty_covers_prompt_and_generated_tokens():
    """Guards against a penalty that forgets the prompt or the tokens generated so far."""
    model = tiny_model()
    prompt = torch.randint(3, 97, (1, 6), generator=torch.Generator().manual_seed(5))
    plain = model.generate(prompt, max_new_tokens=8, temperature=0, eos_token_id=-1)[0].tolist()
    assert len(set(plain)) < len(plain)  # without a penalty this model repeats itself
    out = model.generate(prompt, max_new_tokens=8, temperature=0, eos_token_id=-1, repetition_penalty=1e4)[0]
    assert len(set(out[6:].tolist()) | set(prompt[0].tolist())) == 8 + len(set(prompt[0].tolist()))


def test_sampling_filters():
    """Guards against top_k / top_p / repetition penalty / temperature doing nothing or the wrong thing."""
    logits = torch.tensor([[2.0, 1.9, -1.0, 0.5]])
    g = torch.Generator().manual_seed(0)

    def draw(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seen=None):
        """The set of tokens drawn in 200 samples."""
        args = (temperature, top_p, top_k, repetition_penalty, seen, g)
        return {sample_next_token(logits, *args).item() for _ in range(200)}

    assert draw() == {0, 1, 2, 3}
    assert draw(top_k=2) == {0, 1}
    assert draw(top_p=0.3) == {0}  # token 0 alone has ~43% of the mass
    assert draw(temperature=0) == {0}
    seen = torch.tensor([[True, False, False, False]])
    assert draw(temperature=0, repetition_penalty=1.2, seen=seen) == {1}  # 2.0/1.2 < 1.9
    neg = torch.tensor([[-1.0, -1.1]])  # a negative logit must get MORE negative, not less
    assert sample_next_token(neg, 0, 1.0, 0, 1.5, torch.tensor([[True, False]]), None).item() == 1


# ---- config -----------------------------------------------------------------------------------


def test_config_round_trip_and_errors():
    """Guards against typos silently building a default model, and configs that don't survive to_dict/from_dict."""
    config = LMConfig(dim=768, n_layers=16)
    d = config.to_dict()
    assert json.loads(json.dumps(d)) == d and LMConfig.from_dict(d) == config
    assert LMConfig().hidden_dim == 1408 and LMConfig(dim=64).hidden_dim == 192  # MiniMind2's rule
    with pytest.raises(TypeError, match="n_layer.*valid fields are.*n_layers"):
        LMConfig(n_layer=16)
    with pytest.raises(TypeError, match="bogus"):
        LMConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(NotImplementedError, match="use_moe"):
        LMConfig(use_moe=True)
    with pytest.raises(ValueError, match="n_kv_heads"):
        LMConfig(n_heads=8, n_kv_heads=3)


# ---- checkpoints ------------------------------------------------------------------------------


def test_clean_state_dict():
    """Guards against DDP/compile prefixes and stale mask buffers breaking a strict load."""
    sd = torch.load(FIXTURES / "model.pth", weights_only=True)
    dirty = {f"module._orig_mod.{k}": v for k, v in sd.items()}
    dirty["module.layers.0.attention.mask"] = torch.zeros(1, 1, 4, 4)
    assert list(clean_state_dict(dirty)) == list(sd)
    model = MiniMindLM(fixture_model().config)
    load_weights(model, dirty)
    assert torch.equal(model.norm.weight, sd["norm.weight"])


def test_mismatched_checkpoint_is_refused_with_flags():
    """Guards against a cryptic load_state_dict traceback when the config does not fit the file."""
    small = tiny_model(dim=64, n_layers=2)
    wrong = MiniMindLM(LMConfig(dim=128, n_layers=3, n_heads=4, vocab_size=97))
    with pytest.raises(CheckpointError) as err:
        load_weights(wrong, small.state_dict())
    msg = str(err.value)
    assert "layers.0.attention.wq.weight: model expects (128, 128), file has (64, 64)" in msg
    assert "--dim 64 --n_layers 2" in msg and "\n" not in msg


def test_save_load_round_trip(tmp_path):
    """Guards against checkpoints that lose the config, carry prefixes/extras, or do not load into plain MiniMind2 code."""
    model = tiny_model()
    path = tmp_path / "out" / "pretrain_64.pth"
    save_model(model, path, {"stage": "pretrain", "tokenizer": "model/demo_tokenizer"})
    sidecar = json.loads((tmp_path / "out" / "pretrain_64.json").read_text())
    assert sidecar["config"] == model.config.to_dict() and sidecar["stage"] == "pretrain"
    assert sorted(os.listdir(tmp_path / "out")) == ["pretrain_64.json", "pretrain_64.pth"]  # no temp files left

    # the .pth is a plain tensor dict that loads strictly, as MiniMind2's eval script does
    raw = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in raw.values())
    plain = MiniMindLM(model.config)
    plain.load_state_dict(raw, strict=True)

    loaded, meta = load_model(path)
    assert meta == {"stage": "pretrain", "tokenizer": "model/demo_tokenizer"}
    assert loaded.config == model.config
    ids = torch.randint(0, 97, (1, 6))
    assert torch.equal(loaded.eval()(ids).logits, model(ids).logits)
    assert loaded.tok_embeddings.weight is loaded.output.weight


def test_load_model_errors(tmp_path):
    """Guards against a missing file or a config-less MiniMind2 file failing with an unhelpful message."""
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="--dim 64 --n_layers 2"):
        load_model(FIXTURES / "model.pth")  # MiniMind2 file: no sidecar
    model, meta = load_model(FIXTURES / "model.pth", config=fixture_model().config)
    assert meta == {}


def test_atomic_save_keeps_the_old_file_when_a_save_fails(tmp_path):
    """Guards against a crash mid-save destroying the last good checkpoint (or leaving temp files)."""
    from model.checkpoint import atomic_save

    path = tmp_path / "ckpt.pth"
    atomic_save({"w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("simulated crash while writing")

    with pytest.raises(RuntimeError, match="simulated crash"):
        atomic_save({"w": torch.zeros(3), "bad": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_atomic_save_gives_ordinary_file_permissions(tmp_path):
    """Guards against checkpoints created owner-only (mkstemp's 0600) when they are meant to be shared."""
    from model.checkpoint import atomic_save

    old = os.umask(0o022)
    try:
        atomic_save({"w": torch.ones(1)}, tmp_path / "ckpt.pth")
    finally:
        os.umask(old)
    assert (tmp_path / "ckpt.pth").stat().st_mode & 0o777 == 0o644
