"""Tests for model/LMConfig.py, model/model.py and formats/checkpoint.py.

Known answers come from tests/fixtures/minimind2/ (made by MiniMind2's own code); everything
else compares two ways of computing the same thing (cached vs full, batched vs alone, SDPA vs
explicit). Tiny models on CPU: the whole file runs in seconds.
"""

import ast
import doctest
import importlib
import json
import math
import os
import re
import tempfile

import pytest
import torch
from conftest import MINIMIND2, ROOT, fixture_model, tiny_model

from formats.checkpoint import CheckpointError, clean_state_dict, load_model, load_weights, save_model
from model.LMConfig import LMConfig
from model.model import KVCache, MiniMindLM, apply_rope, count_parameters, rope_table, sample_next_token


@pytest.fixture(scope="module")
def golden():
    return torch.load(MINIMIND2 / "golden.pth", weights_only=True)


# ---- MiniMind2 compatibility ------------------------------------------------------------------


@pytest.mark.parametrize("flash_attn", [True, False])
def test_golden_logits(golden, flash_attn):
    """Guards against any numeric drift from MiniMind2 (RoPE layout, GQA head order, norm, FFN)."""
    logits = fixture_model(flash_attn=flash_attn)(golden["input_ids"]).logits
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
    theirs = torch.load(MINIMIND2 / "model.pth", weights_only=True)
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


def test_every_dropout_attribute_is_a_module():
    """Guards against a module attribute named `dropout` that is a float in one class (Attention) and
    an nn.Dropout in the others: a reader (or code calling self.dropout(x)) would be misled."""
    model = tiny_model(dropout=0.1)
    for name, module in model.named_modules():
        if hasattr(module, "dropout"):
            assert isinstance(module.dropout, torch.nn.Module), name
    assert model.layers[0].attention.attn_dropout_p == 0.1


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


@pytest.mark.parametrize("bad, match", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=-0.5), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_p=math.nan), "top_p"), (dict(top_k=-1), "top_k"), (dict(top_k=2.5), "top_k"),
    (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(repetition_penalty=-1.2), "repetition_penalty"),
    (dict(temperature=math.inf), "temperature"), (dict(temperature=math.nan), "temperature"),
])  # fmt: skip
def test_generate_rejects_bad_sampling_settings(bad, match):
    """Guards against top_p=0 crashing inside torch.multinomial, and nonsense settings (a negative
    penalty flips the logits' order, inf temperature = uniform noise) running silently."""
    model = tiny_model()
    with pytest.raises(ValueError, match=match) as err:
        model.generate(torch.randint(3, 97, (1, 4)), max_new_tokens=3, **bad)
    assert "\n" not in str(err.value)


def test_top_p_at_or_below_zero_keeps_the_best_token():
    """Guards against top_p <= 0 masking every token (softmax of all -inf = NaN -> multinomial crash)."""
    logits = torch.tensor([[0.5, 2.0, -1.0], [3.0, 0.0, 0.1]])
    for top_p in (0.0, -1.0, 1e-9):
        got = sample_next_token(logits, 1.0, top_p, 0, 1.0, None, torch.Generator().manual_seed(0))
        assert got.tolist() == [1, 0]


def test_prompt_at_max_seq_len_returns_without_running_the_model():
    """Guards against a prefill of the whole prompt whose logits are thrown away (no room for a new token)."""
    model = tiny_model(max_seq_len=16)
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    prompt = torch.randint(3, 97, (2, 16))
    assert torch.equal(model.generate(prompt, max_new_tokens=5), prompt)
    assert list(model.generate(prompt, max_new_tokens=5, stream=True)) == []
    assert calls == []
    assert model.generate(prompt[:, :14], max_new_tokens=5, temperature=0).shape == (2, 16)  # fills up to 16


def test_kv_cache_growth_is_as_documented(monkeypatch):
    """Guards against KVCache.reserve's docstring drifting from the code: generate never grows its
    cache; a hand-driven cache starts at exactly T slots and grows to at least twice that."""
    model = tiny_model()
    ids = torch.randint(3, 97, (1, 10))
    out = model(ids[:, :6], use_cache=True)
    assert out.past_key_values.capacity == 6
    out = model(ids[:, 6:7], past_key_values=out.past_key_values, use_cache=True)
    assert out.past_key_values.capacity == 12 and out.past_key_values.length == 7

    grown = []
    original = KVCache.reserve
    def spy(self, n_new):
        result = original(self, n_new)
        grown.append(result is not self)
        return result
    monkeypatch.setattr(KVCache, "reserve", spy)
    model.generate(ids, max_new_tokens=6, temperature=0, eos_token_id=-1)
    assert len(grown) == 6 and not any(grown)  # prefill + 5 steps, all in the preallocated buffers


# ---- config -----------------------------------------------------------------------------------


def test_config_round_trip_and_errors():
    """Guards against typos silently building a default model, and configs that don't survive to_dict/from_dict."""
    config = LMConfig(dim=768, n_layers=16)
    d = config.to_dict()
    assert json.loads(json.dumps(d)) == d and LMConfig.from_dict(d) == config
    assert LMConfig().hidden_dim == 1408 and LMConfig(dim=64).hidden_dim == 192  # MiniMind2's rule
    with pytest.raises(TypeError, match="n_layer"):
        LMConfig(n_layer=16)
    with pytest.raises(TypeError, match="n_layer.*valid fields are.*n_layers"):
        LMConfig.from_dict({**d, "n_layer": 16})
    with pytest.raises(ValueError, match="n_kv_heads"):
        LMConfig(n_heads=8, n_kv_heads=3)


MINIMIND2_FIELDS = [
    "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "multiple_of", "norm_eps",
    "max_seq_len", "rope_theta", "dropout", "flash_attn", "use_moe", "num_experts_per_tok",
    "n_routed_experts", "n_shared_experts", "scoring_func", "aux_loss_alpha", "seq_aux", "norm_topk_prob",
]  # fmt: skip


def test_config_fields_are_minimind2s():
    """Guards against a field list that drifts from MiniMind2's names/order (sidecars, to_dict, errors)."""
    assert LMConfig.field_names() == MINIMIND2_FIELDS
    assert list(LMConfig().to_dict()) == MINIMIND2_FIELDS
    assert LMConfig(n_kv_heads=None).n_kv_heads == 8  # None = plain multi-head attention


@pytest.mark.parametrize("field", ["dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len"])
@pytest.mark.parametrize("value", [0, -4])
def test_config_rejects_sizes_below_one(field, value):
    """Guards against n_heads=0 dying in a ZeroDivisionError, or n_layers=0 / dim=0 building a useless model."""
    with pytest.raises(ValueError, match=f"^LMConfig: {field} must be a positive integer, got {value}$"):
        LMConfig(**{field: value})


# ---- checkpoints ------------------------------------------------------------------------------


def test_clean_state_dict():
    """Guards against DDP/compile prefixes and stale mask buffers breaking a strict load."""
    sd = torch.load(MINIMIND2 / "model.pth", weights_only=True)
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
    with pytest.raises(CheckpointError, match="nope.pth not found"):
        load_model(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="--dim 64 --n_layers 2"):
        load_model(MINIMIND2 / "model.pth")  # MiniMind2 file: no sidecar
    model, meta = load_model(MINIMIND2 / "model.pth", config=fixture_model().config)
    assert meta == {}


class NotATensor:
    """A class torch.load(weights_only=True) refuses to unpickle."""


def bad_checkpoints(tmp_path):
    """{kind: path} of files that are not usable checkpoints."""
    good = tmp_path / "good.pth"
    torch.save(tiny_model().state_dict(), good)
    files = {
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "empty": b"",
        "text": b"hello, this is not a checkpoint\n",
        "json": b'{"dim": 64}',
    }
    paths = {}
    for kind, data in files.items():
        paths[kind] = tmp_path / f"{kind}.pth"
        paths[kind].write_bytes(data)
    paths["python_object"] = tmp_path / "python_object.pth"
    torch.save({"w": torch.ones(1), "obj": NotATensor()}, paths["python_object"])
    paths["list"] = tmp_path / "list.pth"
    torch.save([torch.ones(1)], paths["list"])
    return paths


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "json", "python_object", "list"])
def test_unusable_checkpoint_is_a_one_line_error(tmp_path, kind):
    """Guards against a torch traceback (or its "set weights_only=False" advice, i.e. run the file's
    code) when a user names a truncated, empty or foreign file as a checkpoint."""
    path = bad_checkpoints(tmp_path)[kind]
    with pytest.raises(CheckpointError) as err:
        load_model(path, config=tiny_model().config)
    msg = str(err.value)
    assert msg.startswith(f"{path} is not a usable checkpoint: ") and "\n" not in msg
    assert "weights_only" not in msg


def test_unreadable_sidecar_is_a_one_line_error(tmp_path):
    """Guards against a JSONDecodeError traceback from a damaged sidecar, or a bad config in it."""
    path = tmp_path / "pretrain_64.pth"
    save_model(tiny_model(), path)
    (tmp_path / "pretrain_64.json").write_text('{"config": {"dim": 64,')  # cut short
    with pytest.raises(CheckpointError, match="pretrain_64.json is not a readable checkpoint sidecar"):
        load_model(path)
    (tmp_path / "pretrain_64.json").write_text('{"config": {"dim": 64, "n_layer": 2}}')
    with pytest.raises(CheckpointError, match="pretrain_64.json: its config is not valid.*n_layer"):
        load_model(path)


@pytest.mark.parametrize("overrides", [{"n_kv_heads": 4}, {"n_heads": 8}])
def test_mismatched_heads_state_the_ratio_and_suggest_no_count(overrides):
    """Guards against a wk/wv shape mismatch that only says "--dim ..." (dim is right: the heads are not),
    and against a hint that names head counts: wk's shape fixes only n_kv_heads / n_heads, and following
    "--n_kv_heads 8 (with n_heads 8)" loaded the demo model (4 and 4 heads) without an error, answering garbage."""
    state_dict = tiny_model().state_dict()  # dim 64, n_heads 4, n_kv_heads 2: wk is (32, 64)
    with pytest.raises(CheckpointError) as err:
        load_weights(tiny_model(**overrides), state_dict)
    msg = str(err.value)
    assert "its wk/wv are (32, 64), i.e. n_kv_heads/n_heads = 1/2" in msg and "--dim" not in msg
    assert "pass the --n_heads and --n_kv_heads it was trained with" in msg
    assert not re.search(r"--n_(kv_)?heads \d", msg)  # no count is offered


def test_kill_between_weights_and_sidecar(tmp_path, monkeypatch):
    """Guards against the module docstring's promise breaking: a save killed after the weights' rename
    but before the sidecar's leaves new weights + old sidecar, which load (same shapes) or are refused
    (other shapes) -- never loaded into the wrong model."""
    import formats.checkpoint as checkpoint

    path = tmp_path / "pretrain_64.pth"
    save_model(tiny_model(seed=0), path, {"step": 1})

    def killed(*args):
        raise KeyboardInterrupt  # the run dies just before the sidecar is written
    monkeypatch.setattr(checkpoint, "atomic_write_text", killed)
    newer = tiny_model(seed=1)
    with pytest.raises(KeyboardInterrupt):
        save_model(newer, path, {"step": 2})
    loaded, meta = load_model(path)
    assert meta == {"step": 1}  # the old sidecar
    assert torch.equal(loaded.norm.weight, newer.norm.weight) and torch.equal(loaded.output.weight, newer.output.weight)

    with pytest.raises(KeyboardInterrupt):
        save_model(tiny_model(n_layers=3), path, {"step": 3})  # a different shape under the same name
    with pytest.raises(CheckpointError, match="--n_layers 3"):
        load_model(path)


# ---- atomic writes (plumbing/atomic.py) ------------------------------------------------------------


def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path):
    """Guards against a crash mid-write destroying the last good file (or leaving temp files)."""
    from plumbing.atomic import atomic_write, atomic_write_bytes

    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def crash(f):
        f.write(b"half of the new")
        raise KeyboardInterrupt  # a Ctrl-C is not an Exception, and must still clean up

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_save_keeps_the_old_checkpoint_when_a_save_fails(tmp_path):
    """Guards against atomic_save (torch.save on top of atomic_write) losing the last good checkpoint."""
    from formats.checkpoint import atomic_save

    path = tmp_path / "ckpt.pth"
    atomic_save({"w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("simulated crash while writing")

    with pytest.raises(RuntimeError, match="simulated crash"):
        atomic_save({"w": torch.zeros(3), "bad": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_ordinary_file_permissions(tmp_path, umask):
    """Guards against files created owner-only (mkstemp's 0600) or ignoring the umask, unlike open()."""
    from plumbing.atomic import atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "sub" / "a.txt", "héllo\n")  # also: creates the directory
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "a.txt").read_bytes() == "héllo\n".encode("utf-8")
    assert (tmp_path / "sub" / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "sub" / "a.txt").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


# ---- the code as course material --------------------------------------------------------------

MODEL_MODULES = ["model.LMConfig", "model.model", "formats.checkpoint", "model.model_lora", "model.tokenizer", "plumbing.atomic"]


@pytest.mark.parametrize("name", MODEL_MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    """Guards against docstring examples (the course's worked examples) going stale as the code changes."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # examples that write files write here
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_model_py_reads_top_to_bottom():
    """Guards against forward jumps in model/model.py: a top-level function or class that uses one
    defined further down the file, so a reader meets a name before its definition."""
    tree = ast.parse((ROOT / "model" / "model.py").read_text(encoding="utf-8"))
    defined_at = {node.name: i for i, node in enumerate(tree.body)
                  if isinstance(node, (ast.FunctionDef, ast.ClassDef))}  # fmt: skip
    jumps = []
    for i, node in enumerate(tree.body):
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and defined_at.get(sub.id, -1) > i:
                jumps.append(f"{getattr(node, 'name', '?')} uses {sub.id}")
    assert jumps == []


def test_count_parameters_counts_tied_weights_once():
    """Guards against a tied matrix (tok_embeddings = output) being counted twice."""
    model = tiny_model()
    total, trainable = count_parameters(model)
    assert total == trainable == sum(t.numel() for k, t in model.state_dict().items() if k != "tok_embeddings.weight")
