"""Tests for model/model_lora.py: LoRA's maths, its adapter files, and MiniMind2 compatibility.

Most tests use the tiny fixture model made by MiniMind2's own code (conftest.fixture_model: dim 64, 2 layers,
vocab 320).
"""
import copy
import re

import pytest
import torch
import torch.nn as nn
from conftest import MINIMIND2, ROOT, fill_B, first_lines, fixture_config, fixture_model, logits_of

from formats.checkpoint import CheckpointError, load_model, save_model, weights_fingerprint
from model.LMConfig import LMConfig
from model.model import MiniMindLM, count_parameters, trainable_parameters_report
from model.model_lora import (
    LoRA,
    LoRAEmbedding,
    LoRALinear,
    adapter_state,
    apply_lora,
    load_lora,
    lora_state_dict,
    mark_only_lora_as_trainable,
    merge_lora,
    remove_lora,
    save_lora,
    unmerge_lora,
)

ALL_LINEARS = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]


@pytest.fixture(scope="module")
def golden():
    return torch.load(MINIMIND2 / "golden.pth", weights_only=True)


@pytest.fixture(scope="module")
def ids(golden):
    return golden["input_ids"]  # (2, 16)


def lora_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def toy_loss(model, ids) -> torch.Tensor:
    return model(ids).logits.float().pow(2).mean()


# --- MiniMind2 compatibility -------------------------------------------------------------------

def test_fixture_adapter_gives_golden_logits(golden, ids):
    """Guards against a LoRA whose forward, keys or file reading differ from MiniMind2's: the
    adapter MiniMind2 saved must reproduce MiniMind2's logits_with_lora, whether load_lora adds the
    adapters itself (rank inferred from the file) or they were applied first."""
    inferred = fixture_model()
    load_lora(inferred, MINIMIND2 / "lora.pth")
    torch.testing.assert_close(logits_of(inferred, ids), golden["logits_with_lora"], atol=1e-5, rtol=0)

    explicit = fixture_model()
    apply_lora(explicit, rank=4)
    load_lora(explicit, MINIMIND2 / "lora.pth")
    torch.testing.assert_close(logits_of(explicit, ids), golden["logits_with_lora"], atol=1e-5, rtol=0)
    assert set(lora_layers(inferred)) == {f"layers.{i}.attention.{n}" for i in range(2) for n in ("wq", "wo")}


def test_float16_adapter_file_loads(tmp_path, golden, ids):
    """Guards against failing on (or mis-reading) newer MiniMind adapter files saved as float16."""
    half = {k: v.half() for k, v in torch.load(MINIMIND2 / "lora.pth", weights_only=True).items()}
    torch.save(half, tmp_path / "lora_fp16.pth")
    model = fixture_model()
    load_lora(model, tmp_path / "lora_fp16.pth")
    assert model.layers[0].attention.wq.lora.A.weight.dtype == torch.float32
    torch.testing.assert_close(logits_of(model, ids), golden["logits_with_lora"], atol=1e-3, rtol=0)


def test_minimind_documentation_snippet_works_as_written(tmp_path):
    """Guards against breaking the three lines MiniMind's documentation tells people to run."""
    torch.manual_seed(0)
    trained = MiniMindLM(LMConfig(dim=512, n_layers=8))
    apply_lora(trained, rank=16)
    fill_B(trained, seed=1, std=0.02)
    path = tmp_path / "lora_medical_512.pth"
    # As MiniMind2 saves it: adapter tensors only, no lora_config.
    torch.save(lora_state_dict(trained), path)

    from model.model import MiniMindLM as DocMiniMindLM
    from model.LMConfig import LMConfig as DocLMConfig
    from model.model_lora import apply_lora as doc_apply_lora, load_lora as doc_load_lora
    torch.manual_seed(0)  # the same base weights as `trained`
    model = DocMiniMindLM(DocLMConfig(dim=512, n_layers=8)); doc_apply_lora(model, rank=16); doc_load_lora(model, path)

    for key, tensor in lora_state_dict(trained).items():
        assert torch.equal(lora_state_dict(model)[key], tensor), key
    ids = torch.tensor([[1, 20, 300, 4000, 5, 6]])
    torch.testing.assert_close(logits_of(model, ids), logits_of(trained, ids), atol=1e-5, rtol=0)


# --- the maths of an adapter -------------------------------------------------------------------

def test_init_B_zero_A_small_random_and_output_unchanged(ids):
    """Guards against the loralib mix-up (zeroing A instead of B) and any init that makes a freshly
    adapted model differ from its base: B = 0, A ~ N(0, 0.02), logits bit-identical."""
    model = fixture_model()
    before = logits_of(model, ids)
    apply_lora(model, rank=8, target_modules=ALL_LINEARS)
    for layer in lora_layers(model).values():
        assert torch.count_nonzero(layer.lora.B.weight) == 0
        assert torch.count_nonzero(layer.lora.A.weight) == layer.lora.A.weight.numel()
    all_A = torch.cat([layer.lora.A.weight.flatten() for layer in lora_layers(model).values()])
    assert abs(all_A.std().item() - 0.02) < 0.002 and abs(all_A.mean().item()) < 0.002
    assert torch.equal(logits_of(model, ids), before)


def test_A_and_B_both_zero_never_train_but_standard_init_does(ids):
    """Guards the reason one factor must start non-zero: with A = B = 0 both gradients are exactly
    zero (nothing could ever train); with the real init (A random, B = 0) B gets a gradient at once."""
    model = fixture_model()
    apply_lora(model, rank=4)
    mark_only_lora_as_trainable(model)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora.A.weight.zero_()
    toy_loss(model, ids).backward()
    for layer in lora_layers(model).values():
        assert torch.count_nonzero(layer.lora.A.weight.grad) == 0
        assert torch.count_nonzero(layer.lora.B.weight.grad) == 0

    model = fixture_model()
    apply_lora(model, rank=4)
    mark_only_lora_as_trainable(model)
    toy_loss(model, ids).backward()
    for layer in lora_layers(model).values():
        assert torch.count_nonzero(layer.lora.A.weight.grad) == 0  # dL/dA = Bᵀ g xᵀ = 0 while B = 0
        assert layer.lora.B.weight.grad.abs().max() > 0


@pytest.mark.parametrize("alpha", [None, 32])
def test_layer_forward_is_base_plus_scaled_BA(alpha):
    """Guards against a forward that drops or misplaces the alpha/rank scale or the adapter path:
    y must be W x + (alpha/rank) B A x, with alpha = rank (scale 1, MiniMind2) by default."""
    torch.manual_seed(0)
    base = nn.Linear(12, 20, bias=False)
    layer = LoRALinear(base, rank=4, alpha=alpha)
    with torch.no_grad():
        layer.lora.B.weight.normal_()
    x = torch.randn(3, 5, 12)
    scale = 1.0 if alpha is None else alpha / 4
    assert layer.scale == scale
    expected = x @ base.weight.T + scale * (x @ layer.lora.A.weight.T @ layer.lora.B.weight.T)
    torch.testing.assert_close(layer(x), expected)
    assert layer.weight is base.weight  # W is the base layer's own tensor, not a copy


def test_dropout_touches_only_the_adapter_path():
    """Guards against dropout applied to the base path (which would perturb the frozen model) or
    left on in eval mode."""
    torch.manual_seed(0)
    base = nn.Linear(16, 16, bias=False)
    layer = LoRALinear(base, rank=4, dropout=0.5).train()
    x = torch.randn(8, 16)
    assert torch.equal(layer(x), base(x))  # B = 0: dropout on the adapter input cannot show
    with torch.no_grad():
        layer.lora.B.weight.normal_()
    assert not torch.equal(layer(x), layer(x))  # training: random masks on the adapter input
    layer.eval()
    expected = base(x) + layer.lora(x)
    torch.testing.assert_close(layer(x), expected)


def test_training_step_changes_only_the_adapter(ids):
    """Guards against base weights leaking into the optimizer or receiving gradients: after real
    optimizer steps every A and B has moved and every base tensor is bit-identical."""
    model = fixture_model()
    apply_lora(model, rank=4, target_modules=ALL_LINEARS)
    base_before = {k: v.clone() for k, v in model.state_dict().items() if ".lora." not in k}
    lora_before = {k: v.clone() for k, v in lora_state_dict(model).items()}
    mark_only_lora_as_trainable(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == sum(v.numel() for v in lora_before.values())
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    for _ in range(2):  # A's first gradient is zero (B = 0), so A moves from the second step on
        optimizer.zero_grad()
        toy_loss(model, ids).backward()
        optimizer.step()
    for key, value in model.state_dict().items():
        if ".lora." in key:
            assert not torch.equal(value, lora_before[key]), f"{key} did not train"
        else:
            assert torch.equal(value, base_before[key]), f"base tensor {key} changed"
    assert all(p.grad is None for name, p in model.named_parameters() if ".lora." not in name)


@pytest.mark.parametrize("name", ["wq", "w1", "w2"])
def test_update_has_rank_at_most_r(name):
    """Guards against an update that is not low-rank (e.g. a full delta matrix): rank(B·A) <= r,
    and = r for random factors."""
    model = fixture_model()
    apply_lora(model, rank=3, target_modules=[name])
    fill_B(model, seed=0)
    for layer in lora_layers(model).values():
        delta = layer.delta_weight()
        assert delta.shape == layer.weight.shape
        assert torch.linalg.matrix_rank(delta).item() == 3


def test_non_square_targets_have_the_right_orientation(ids):
    """Guards against A/B built with in/out swapped, which only square layers would hide:
    w1 is (192, 64) and w2 is (64, 192); A must be (r, in) and B (out, r) of each."""
    model = fixture_model()
    apply_lora(model, rank=4, target_modules=["w1", "w2", "wk"])
    ffn = model.layers[0].feed_forward
    assert ffn.w1.lora.A.weight.shape == (4, 64) and ffn.w1.lora.B.weight.shape == (192, 4)
    assert ffn.w2.lora.A.weight.shape == (4, 192) and ffn.w2.lora.B.weight.shape == (64, 4)
    assert model.layers[1].attention.wk.lora.B.weight.shape == (32, 4)
    assert not isinstance(model.layers[0].attention.wq, LoRALinear)
    fill_B(model, seed=0)
    unmerged = logits_of(model, ids)
    merge_lora(model)
    torch.testing.assert_close(logits_of(model, ids), unmerged, atol=1e-5, rtol=0)


def test_default_targets_are_the_square_linears_like_minimind2():
    """Guards against drifting from MiniMind2's default (square Linears: wq and wo under GQA), which
    would make our adapter files unreadable by MiniMind2 and theirs by us."""
    model = fixture_model()
    apply_lora(model)
    assert set(lora_layers(model)) == {f"layers.{i}.attention.{n}" for i in range(2) for n in ("wq", "wo")}
    assert all(layer.rank == 16 and layer.scale == 1.0 for layer in lora_layers(model).values())


def test_apply_lora_rejects_bad_arguments():
    """Guards against silently adapting nothing (a typo in target_modules) or stacking adapters twice."""
    model = fixture_model()
    with pytest.raises(ValueError, match=r"q_proj.*wq"):
        apply_lora(model, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="rank"):
        apply_lora(model, rank=0)
    assert not lora_layers(model)  # nothing half-applied
    apply_lora(model, rank=4)
    with pytest.raises(ValueError, match="remove_lora"):
        apply_lora(model, rank=4)


# --- merge, unmerge, remove --------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [None, 8])
def test_merged_logits_equal_unmerged(ids, alpha):
    """Guards against merging with a different scale than the forward uses, or a merged layer that
    still adds the adapter (counting it twice)."""
    model = fixture_model()
    apply_lora(model, rank=4, alpha=alpha, target_modules=ALL_LINEARS)
    fill_B(model, seed=0)
    unmerged = logits_of(model, ids)
    merge_lora(model)
    assert all(layer.merged for layer in lora_layers(model).values())
    torch.testing.assert_close(logits_of(model, ids), unmerged, atol=1e-5, rtol=0)
    merge_lora(model)  # merging twice must not add ΔW twice
    torch.testing.assert_close(logits_of(model, ids), unmerged, atol=1e-5, rtol=0)


def test_unmerge_restores_weights(ids):
    """Guards against unmerge subtracting the wrong thing: W returns to the base (to float rounding)
    and the adapter path is active again."""
    model = fixture_model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=4, alpha=8)
    fill_B(model, seed=0)
    unmerged = logits_of(model, ids)
    merge_lora(model)
    assert not torch.allclose(model.layers[0].attention.wq.weight, base["layers.0.attention.wq.weight"])
    unmerge_lora(model)
    for key, value in base.items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits_of(model, ids), unmerged, atol=1e-5, rtol=0)


def test_remove_restores_the_base_model_exactly(ids):
    """Guards against remove_lora leaving wrapper classes, extra keys, changed weights or a broken
    weight tie behind: afterwards the model is a plain MiniMindLM, bit for bit."""
    model = fixture_model()
    reference = fixture_model()
    apply_lora(model, rank=4, target_modules=ALL_LINEARS)
    fill_B(model, seed=0)
    remove_lora(model)
    assert [type(m) for m in model.modules()] == [type(m) for m in reference.modules()]
    assert list(model.state_dict()) == list(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.output.weight is model.tok_embeddings.weight
    assert torch.equal(logits_of(model, ids), logits_of(reference, ids))


def test_merged_checkpoint_loads_as_a_plain_model(tmp_path, ids):
    """Guards against shipping a merged model that needs LoRA code to load (adapter keys left in it)
    or that lost the adapter's effect."""
    model = fixture_model()
    apply_lora(model, rank=4)
    fill_B(model, seed=0)
    adapted = logits_of(model, ids)
    merge_lora(model)
    remove_lora(model)
    save_model(model, tmp_path / "merged_64.pth")
    loaded, _ = load_model(tmp_path / "merged_64.pth")
    assert type(loaded) is MiniMindLM and not lora_layers(loaded)
    assert not any(".lora." in key for key in torch.load(tmp_path / "merged_64.pth", weights_only=True))
    torch.testing.assert_close(logits_of(loaded.eval(), ids), adapted, atol=1e-5, rtol=0)


def test_merged_adapters_refuse_to_train(ids):
    """Guards against training a merged model silently training nothing: a merged layer computes W x
    alone, so A and B get no gradient while the loop runs on as if all were well."""
    model = fixture_model()
    apply_lora(model, rank=4)
    fill_B(model, seed=0)
    merge_lora(model)
    with pytest.raises(ValueError, match="merged.*unmerge_lora"):
        mark_only_lora_as_trainable(model)
    model.train()
    with pytest.raises(RuntimeError, match="merged LoRA layer.*unmerge_lora"):
        toy_loss(model, ids)
    with torch.no_grad():  # inference on a merged model in train mode is fine: nothing to train
        model(ids)
    model.eval()
    model(ids)
    unmerge_lora(model)
    mark_only_lora_as_trainable(model)
    model.train()
    toy_loss(model, ids).backward()
    assert model.layers[0].attention.wq.lora.A.weight.grad is not None


def test_save_model_refuses_a_model_with_adapters(tmp_path):
    """Guards against save_model writing adapter keys into a "plain" checkpoint that MiniMind2's strict
    load (and ours) then rejects -- or that silently drops the adapter's effect when loaded elsewhere."""
    model = fixture_model()
    apply_lora(model, rank=4)
    with pytest.raises(ValueError, match="merge_lora.*remove_lora.*save_lora"):
        save_model(model, tmp_path / "full_sft_64.pth")
    assert list(tmp_path.iterdir()) == []
    merge_lora(model)  # merged but not removed: the adapter keys are still there
    with pytest.raises(ValueError, match="remove_lora"):
        save_model(model, tmp_path / "full_sft_64.pth")


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "python_object", "list"])
def test_unusable_adapter_file_is_a_one_line_error(tmp_path, kind):
    """Guards against a torch traceback (with its "weights_only=False" advice) for a truncated,
    empty or foreign adapter file; the model must be left without adapters."""
    good = tmp_path / "good.pth"
    torch.save({"layers.0.attention.wq.lora.A.weight": torch.zeros(4, 64)}, good)
    data = {"truncated": good.read_bytes()[:100], "empty": b"", "text": b"not an adapter\n"}
    path = tmp_path / f"{kind}.pth"
    if kind in data:
        path.write_bytes(data[kind])
    elif kind == "python_object":
        torch.save({"obj": nn.ReLU()}, path)  # a module object: weights_only refuses to unpickle it
    else:
        torch.save([torch.zeros(1)], path)
    model = fixture_model()
    with pytest.raises(CheckpointError) as err:
        load_lora(model, path)
    msg = str(err.value)
    assert msg.startswith(f"{path} is not a usable checkpoint: ") and "\n" not in msg and "weights_only" not in msg
    assert not lora_layers(model)


# --- LoRA on the tied embedding ----------------------------------------------------------------
# MiniMind's tok_embeddings.weight IS output.weight: one matrix E (vocab, dim) used twice. An adapter
# on "output" is an adapter on E, so the embedding lookup must read E + ΔE too.

def test_adapting_the_tied_output_adapts_the_embedding_with_the_same_delta(ids):
    """Guards against an adapter that changes only one use of the tied matrix (the lookup and the
    output would then disagree, and merging, which edits the one tensor, would change the model).
    The adapted model must equal a plain model whose tied matrix is E + ΔE."""
    model = fixture_model()
    apply_lora(model, rank=4, alpha=8, target_modules=["wq", "output"])
    assert isinstance(model.tok_embeddings, LoRAEmbedding) and isinstance(model.output, LoRALinear)
    assert model.tok_embeddings.weight is model.output.weight  # still one matrix
    assert torch.equal(logits_of(model, ids), logits_of(fixture_model(), ids))  # B = 0: nothing changed yet
    fill_B(model, seed=0, std=0.05)

    reference = fixture_model()
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if ".lora." not in k})
    with torch.no_grad():
        reference.output.weight.add_(model.output.delta_weight())  # ΔE (vocab, dim); tied: the lookup sees it too
        for i in range(2):
            reference.layers[i].attention.wq.weight.add_(model.layers[i].attention.wq.delta_weight())
    assert not torch.allclose(logits_of(model, ids), logits_of(fixture_model(), ids), atol=1e-3)
    torch.testing.assert_close(logits_of(model, ids), logits_of(reference, ids), atol=1e-5, rtol=0)


def test_tied_adapter_gradients_come_from_both_uses(ids):
    """Guards against A and B learning from the output layer only (or the lookup only): their
    gradients must be those of ΔE = scale·B·A put into both the lookup and the output."""
    model = fixture_model()
    apply_lora(model, rank=4, alpha=8, target_modules=["output"])
    mark_only_lora_as_trainable(model)
    fill_B(model, seed=0, std=0.05)
    toy_loss(model, ids).backward()

    A = model.output.lora.A.weight.detach().clone().requires_grad_()
    B = model.output.lora.B.weight.detach().clone().requires_grad_()
    E = model.output.weight.detach() + model.output.scale * (B @ A)
    plain = fixture_model()
    loss = torch.func.functional_call(plain, {"output.weight": E, "tok_embeddings.weight": E}, (ids,),
                                      tie_weights=False).logits.float().pow(2).mean()
    loss.backward()
    torch.testing.assert_close(model.output.lora.A.weight.grad, A.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(model.output.lora.B.weight.grad, B.grad, atol=1e-6, rtol=1e-4)
    assert model.output.weight.grad is None  # E itself stays frozen


def test_tied_adapter_merges_removes_and_round_trips(tmp_path, ids):
    """Guards against a tied adapter that merges twice into the shared E (once per use), whose A/B
    are saved twice or under the embedding's name, or that leaves the tie broken after remove_lora."""
    model = fixture_model()
    apply_lora(model, rank=4, target_modules=["wq", "output"])
    fill_B(model, seed=0, std=0.05)
    adapted = logits_of(model, ids)
    assert count_parameters(model)[0] == count_parameters(fixture_model())[0] + 2 * 2 * 4 * 64 + (4 * 64 + 320 * 4)
    assert sorted(k for k in model.state_dict() if k.startswith(("output.", "tok_embeddings."))) == [
        "output.lora.A.weight", "output.lora.B.weight", "output.weight", "tok_embeddings.weight"]

    merge_lora(model)
    torch.testing.assert_close(logits_of(model, ids), adapted, atol=1e-5, rtol=0)
    unmerge_lora(model)
    torch.testing.assert_close(model.output.weight, fixture_model().output.weight, atol=1e-6, rtol=0)

    save_lora(model, tmp_path / "tied.pth")
    assert torch.load(tmp_path / "tied.pth", weights_only=True)["lora_config"]["targets"] == ["output", "wq"]
    fresh = fixture_model()
    load_lora(fresh, tmp_path / "tied.pth")
    assert isinstance(fresh.tok_embeddings, LoRAEmbedding)
    torch.testing.assert_close(logits_of(fresh, ids), adapted, atol=1e-5, rtol=0)

    remove_lora(fresh)
    assert type(fresh.tok_embeddings) is nn.Embedding and fresh.output.weight is fresh.tok_embeddings.weight
    assert torch.equal(logits_of(fresh, ids), logits_of(fixture_model(), ids))
    clone = copy.deepcopy(model)  # the embedding's reference to its output layer follows the copy
    assert clone.tok_embeddings.tied_output is clone.output
    torch.testing.assert_close(logits_of(clone, ids), adapted, atol=1e-5, rtol=0)


def test_tied_adapter_cached_generation_equals_full_forwards(ids):
    """Guards against a LoRAEmbedding that the KV-cached decode bypasses or applies differently
    (each new token is looked up alone): greedy generation must equal argmax over full forwards."""
    model = fixture_model()
    apply_lora(model, rank=4, target_modules=["wq", "output"])
    fill_B(model, seed=0, std=0.05)
    prompt = ids[:, :6]
    out = model.generate(prompt, max_new_tokens=6, temperature=0, eos_token_id=-1)
    seq = prompt
    for _ in range(6):
        seq = torch.cat([seq, logits_of(model, seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_a_weight_shared_by_two_linears_is_refused():
    """Guards against adapting a weight that another Linear also uses: merging would silently change
    that other layer. Only the Linear/Embedding tie has a meaning (one matrix, one ΔE)."""
    model = fixture_model()
    model.layers[1].attention.wq.weight = model.layers[0].attention.wq.weight
    with pytest.raises(ValueError, match=r"layers\.0\.attention\.wq\.weight is shared"):
        apply_lora(model, target_modules=["wq"])
    assert not lora_layers(model)


# --- adapter files -----------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path, ids):
    """Guards against files that lose the rank, alpha or targets (loading them would rebuild the
    wrong adapters) or hold anything but the adapter (a base-sized file)."""
    model = fixture_model()
    apply_lora(model, rank=4, alpha=12, target_modules=["wq", "w2"])
    fill_B(model, seed=0)
    expected = logits_of(model, ids)
    path = tmp_path / "lora" / "lora_test_64.pth"
    save_lora(model, path)

    saved = torch.load(path, weights_only=True)
    assert saved.pop("lora_config") == {"rank": 4, "alpha": 12, "targets": ["w2", "wq"], "dim": 64,
                                      "scaling": "standard", "init": "standard", "base": weights_fingerprint(fixture_model())}
    assert saved.keys() == lora_state_dict(model).keys()
    assert all(re.fullmatch(r"layers\.\d\.(attention\.wq|feed_forward\.w2)\.lora\.[AB]\.weight", k) for k in saved)

    fresh = fixture_model()
    load_lora(fresh, path)
    assert lora_layers(fresh).keys() == lora_layers(model).keys()
    assert all(layer.scale == 3.0 for layer in lora_layers(fresh).values())
    assert torch.equal(logits_of(fresh, ids), expected)
    assert [p.name for p in tmp_path.joinpath("lora").iterdir()] == ["lora_test_64.pth"]  # no temp file left


def test_file_alpha_replaces_the_models_alpha(tmp_path, ids):
    """Guards against loading A and B under a scale they were not trained with (same shapes, silently
    different outputs)."""
    model = fixture_model()
    apply_lora(model, rank=4, alpha=4)
    fill_B(model, seed=0)
    expected = logits_of(model, ids)
    save_lora(model, tmp_path / "a.pth")
    other = fixture_model()
    apply_lora(other, rank=4, alpha=16)
    load_lora(other, tmp_path / "a.pth")
    assert torch.equal(logits_of(other, ids), expected)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch-internal, on first compile
def test_wrapper_prefixes_never_reach_files(tmp_path, golden, ids):
    """Guards against `_orig_mod.` (torch.compile) or `module.` (DDP) leaking into adapter keys, and
    against refusing a MiniMind2 file saved from a DDP model (its keys start with `module.`)."""
    model = fixture_model()
    apply_lora(model, rank=4)
    compiled = torch.compile(model)  # wrapping only; nothing is compiled until it is called
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    save_lora(compiled, tmp_path / "from_compiled.pth")
    keys = [k for k in torch.load(tmp_path / "from_compiled.pth", weights_only=True) if k != "lora_config"]
    assert keys and all(k.startswith("layers.") for k in keys)
    assert lora_state_dict(compiled).keys() == lora_state_dict(model).keys()

    prefixed = {f"module.{k}": v for k, v in torch.load(MINIMIND2 / "lora.pth", weights_only=True).items()}
    torch.save(prefixed, tmp_path / "ddp_minimind2.pth")
    fresh = fixture_model()
    load_lora(fresh, tmp_path / "ddp_minimind2.pth")
    torch.testing.assert_close(logits_of(fresh, ids), golden["logits_with_lora"], atol=1e-5, rtol=0)


def test_adapter_for_another_dim_is_refused(tmp_path):
    """Guards against loading an adapter onto a model of another size: refused before any change,
    naming both dims (with metadata) or the mismatched tensors (MiniMind2 file, no metadata)."""
    big = MiniMindLM(fixture_config(dim=128, n_heads=4, n_kv_heads=2, hidden_dim=None))
    apply_lora(big, rank=4)
    save_lora(big, tmp_path / "lora_128.pth")
    model = fixture_model()
    with pytest.raises(CheckpointError, match=r"dim=128.*dim=64"):
        load_lora(model, tmp_path / "lora_128.pth")
    assert not lora_layers(model)

    torch.save(lora_state_dict(big), tmp_path / "minimind2_style_128.pth")
    with pytest.raises(CheckpointError, match=r"wrong shape: layers\.0\.attention\.wo\.lora\.A\.weight is \(4, 128\) in the file but \(4, 64\)"):
        load_lora(model, tmp_path / "minimind2_style_128.pth")
    assert not lora_layers(model)


def test_adapter_with_wrong_keys_is_refused(tmp_path):
    """Guards against a partial or foreign adapter loading with some layers silently unadapted,
    and against a full model checkpoint being taken for an adapter; each message names the keys."""
    state = torch.load(MINIMIND2 / "lora.pth", weights_only=True)
    model = fixture_model()

    torch.save({k: v for k, v in state.items() if not k.startswith("layers.1.attention.wo")}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing layers\.1\.attention\.wo\.lora\.A\.weight"):
        load_lora(model, tmp_path / "partial.pth")

    torch.save({**state, "layers.2.attention.wq.lora.A.weight": torch.zeros(4, 64)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected layers\.2\.attention\.wq\.lora\.A\.weight"):
        load_lora(model, tmp_path / "extra.pth")

    with pytest.raises(CheckpointError, match=r"not a LoRA adapter.*load_model"):
        load_lora(model, MINIMIND2 / "model.pth")
    assert not lora_layers(model)

    apply_lora(model, rank=8)
    with pytest.raises(CheckpointError, match="nowhere.pth not found"):
        load_lora(model, tmp_path / "nowhere.pth")
    assert {layer.rank for layer in lora_layers(model).values()} == {8}  # a refused file leaves the model as it was


def test_the_file_decides_the_adapters_whatever_apply_lora_chose(tmp_path, ids):
    """Guards against the write-ups' usage, apply_lora(model, rank=16) then load_lora(model, path), failing
    on an adapter of another rank or other layers ("does not fit this model: unexpected ...w1.lora.A"):
    the file records its rank, alpha, scaling and targets, and loading follows it."""
    trained = fixture_model()
    apply_lora(trained, rank=4, alpha=6, target_modules=["wq", "wk", "w1", "output"], scaling="rslora")
    fill_B(trained, seed=3)
    save_lora(trained, tmp_path / "lora_any_64.pth")
    expected = logits_of(trained, ids)

    model = fixture_model()
    apply_lora(model, rank=16)  # MiniMind2's usage: square layers (wq, wo), rank 16
    load_lora(model, tmp_path / "lora_any_64.pth")
    layers = lora_layers(model)
    assert layers.keys() == lora_layers(trained).keys()
    assert {(layer.rank, layer.alpha, layer.scaling) for layer in layers.values()} == {(4, 6, "rslora")}
    assert torch.equal(logits_of(model, ids), expected)


# --- using adapters ----------------------------------------------------------------------------

def test_switching_adapters_keeps_the_base(tmp_path, ids):
    """Guards against adapters leaking into each other or into the base when one base model serves
    several: medical -> identity -> none must equal each adapter alone and then the exact base."""
    base_logits = logits_of(fixture_model(), ids)
    expected = {}
    for name, seed, rank in [("medical", 1, 4), ("identity", 2, 8)]:
        model = fixture_model()
        apply_lora(model, rank=rank)
        fill_B(model, seed=seed)
        expected[name] = logits_of(model, ids)
        save_lora(model, tmp_path / f"lora_{name}_64.pth")
    assert not torch.allclose(expected["medical"], expected["identity"], atol=1e-3)

    model = fixture_model()
    wq = model.layers[0].attention.wq.weight  # the base tensor, never reloaded or copied
    load_lora(model, tmp_path / "lora_medical_64.pth")
    assert torch.equal(logits_of(model, ids), expected["medical"])
    remove_lora(model)
    load_lora(model, tmp_path / "lora_identity_64.pth")
    assert torch.equal(logits_of(model, ids), expected["identity"])
    remove_lora(model)
    assert torch.equal(logits_of(model, ids), base_logits)
    assert model.layers[0].attention.wq.weight is wq

    # Adapters of the same layout can also be swapped in place, from memory.
    medical = torch.load(tmp_path / "lora_medical_64.pth", weights_only=True)
    apply_lora(model, rank=4)
    load_lora(model, medical)
    assert torch.equal(logits_of(model, ids), expected["medical"])


def test_deepcopy_gives_an_independent_adapted_model(ids):
    """Guards against adapters that deepcopy cannot copy, or copies that share A/B or W with the
    original (training the copy would change the original)."""
    model = fixture_model()
    apply_lora(model, rank=4)
    fill_B(model, seed=0)
    clone = copy.deepcopy(model)
    assert torch.equal(logits_of(clone, ids), logits_of(model, ids))
    assert clone.output.weight is clone.tok_embeddings.weight
    with torch.no_grad():
        clone.layers[0].attention.wq.lora.B.weight.zero_()
        clone.layers[0].attention.wq.weight.zero_()
    assert model.layers[0].attention.wq.lora.B.weight.abs().max() > 0
    assert model.layers[0].attention.wq.weight.abs().max() > 0


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch-internal, on first compile
@pytest.mark.parametrize("targets", [None, ["wq", "output"]])
def test_torch_compile_traces_the_adapted_model(ids, targets):
    """Guards against a LoRALinear or LoRAEmbedding that torch.compile cannot trace (graph breaks into
    errors or wrong results). Uses the aot_eager backend: tracing without the slow C++ code generation."""
    model = fixture_model()
    apply_lora(model, rank=4, target_modules=targets)
    fill_B(model, seed=0)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(logits_of(compiled, ids), logits_of(model, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("targets", [None, ["wq", "wo", "output"]])
def test_ddp_trains_only_the_adapter_and_saves_plain_keys(tmp_path, ids, targets):
    """Guards against adapters that DDP cannot wrap (frozen parameters, replaced modules, the tied
    adapter's B used by two layers) or whose saved keys carry DDP's `module.` prefix. One process,
    gloo backend, CPU."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = fixture_model()
        apply_lora(model, rank=4, target_modules=targets)
        mark_only_lora_as_trainable(model)
        wq_before = model.layers[0].attention.wq.weight.clone()
        ddp = nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=1.0)
        toy_loss(ddp, ids).backward()
        optimizer.step()
        save_lora(ddp, tmp_path / "ddp.pth")
    finally:
        dist.destroy_process_group()
    saved = torch.load(tmp_path / "ddp.pth", weights_only=True)
    assert not any(k.startswith("module.") for k in saved)
    assert saved["layers.0.attention.wq.lora.B.weight"].abs().max() > 0  # the step reached B
    if targets:
        assert saved["output.lora.B.weight"].abs().max() > 0
        assert torch.equal(model.output.weight, fixture_model().output.weight)  # the shared E stayed frozen
    assert torch.equal(model.layers[0].attention.wq.weight, wq_before)


def test_trainable_parameter_count_and_report():
    """Guards against miscounting (tied embeddings counted twice, frozen base counted as trainable):
    for the fixture model with rank-4 adapters on wq/wo the numbers are worked out by hand."""
    model = fixture_model()
    base_total = 320 * 64 + 2 * (64 * 64 * 2 + 32 * 64 * 2 + 192 * 64 * 3 + 64 * 2) + 64  # tied emb once
    assert count_parameters(model) == (base_total, base_total)
    apply_lora(model, rank=4)
    mark_only_lora_as_trainable(model)
    adapter = 2 * 2 * (4 * 64 + 64 * 4)  # 2 layers x {wq, wo} x (A + B)
    assert count_parameters(model) == (base_total + adapter, adapter)
    assert trainable_parameters_report(model) == (
        f"trainable params: {adapter:,} || all params: {base_total + adapter:,} || "
        f"trainable%: {100 * adapter / (base_total + adapter):.4f}")
    assert trainable_parameters_report(model) == "trainable params: 2,048 || all params: 121,152 || trainable%: 1.6904"
    with pytest.raises(ValueError, match="apply_lora"):
        mark_only_lora_as_trainable(fixture_model())


def test_lora_module_keys_match_minimind2():
    """Guards against renaming A/B or adding biases, which would change the adapter file's keys."""
    lora = LoRA(in_features=6, out_features=10, rank=2)
    assert {k: tuple(v.shape) for k, v in lora.state_dict().items()} == {"A.weight": (2, 6), "B.weight": (10, 2)}


# --- the write-ups' usage ----------------------------------------------------------------------

def test_the_write_ups_usage_snippet_loads_a_default_train_lora_adapter(tmp_path, monkeypatch):
    """Guards against the usage example of write-up 002 failing on the project's own adapters: it runs
    apply_lora(model, rank=16) (wq and wo only) then load_lora on a file that train_lora.py wrote with its
    defaults (every Linear and the tied embedding), which load_lora refused as "unexpected ...w1.lora.A".
    The snippet runs verbatim (tests/fixtures/writeups), from a folder holding out/rlhf_512.pth: the file
    train_dpo.py makes from full_sft_512.pth (a few pairs), which the adapter is then trained on."""
    import random

    import train_dpo
    import train_lora
    from formats.loader import checkpoint_meta
    from model.tokenizer import Tokenizer
    from train_tokenizer import count_chunks, train_bpe

    # A tokenizer of LMConfig's default 6,400 tokens (the snippet's model), learnt from random words.
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7))) for _ in range(40_000)]
    tokenizer_dir = tmp_path / "tokenizer"
    train_bpe(count_chunks([" ".join(words)]), 6400, max_token_length=None).save(tokenizer_dir)
    out = tmp_path / "out"
    torch.manual_seed(0)
    sft = MiniMindLM(LMConfig(dim=512, n_layers=8))  # MiniMind2-Small, the snippet's model
    save_model(sft, out / "full_sft_512.pth", checkpoint_meta("full_sft", tokenizer_dir, Tokenizer.load(tokenizer_dir)))
    small = ["--dim", "512", "--out_dir", str(out), "--epochs", "1", "--batch_size", "4", "--max_seq_len", "48",
             "--val_samples", "0"]
    assert train_dpo.main([*small, "--data_path", first_lines("dpo_demo.jsonl", 8, tmp_path)]).weights == str(out / "rlhf_512.pth")
    assert (out / "rlhf_512.pth").read_bytes() != (out / "full_sft_512.pth").read_bytes()  # DPO moved the weights
    result = train_lora.main([*small, "--base", str(out / "rlhf_512.pth"),
                              "--data_path", first_lines("lora_medical.jsonl", 8, tmp_path)])
    assert result.weights == str(out / "lora" / "lora_medical_512.pth")
    trained = lora_layers(result.model)
    assert {name.rsplit(".", 1)[-1] for name in trained} == {"wq", "wk", "wv", "wo", "w1", "w2", "w3", "output"}

    monkeypatch.chdir(tmp_path)
    snippet = (ROOT / "tests" / "fixtures" / "writeups" / "usage_snippet_002.py").read_text(encoding="utf-8")
    namespace = {"torch": torch}  # the one name the snippet uses without importing it
    exec(compile(snippet, "usage_snippet_002.py", "exec"), namespace)
    model = namespace["model"]
    assert lora_layers(model).keys() == trained.keys()
    ids = torch.randint(0, 6400, (1, 12), generator=torch.Generator().manual_seed(1))
    result.model.eval()
    assert torch.equal(logits_of(model.eval(), ids), logits_of(result.model, ids))  # the trained adapter, exactly


def test_an_adapter_is_refused_on_another_base_unless_allowed(tmp_path, ids):
    """Guards against an adapter trained on one checkpoint (full_sft_128) loading onto another of the same
    shape (pretrain_128) without a word: its A and B only mean something on the weights they were trained on.
    The file records the base's fingerprint; allow_other_base=True loads it anyway; MiniMind2's files, which
    record none, load as before."""
    model = fixture_model()
    apply_lora(model, rank=4)
    fill_B(model, seed=0)
    save_lora(model, tmp_path / "a.pth")

    other = fixture_model()
    with torch.no_grad():
        other.layers[0].feed_forward.w2.weight.mul_(1.01)  # another base: same shapes, other weights
    with pytest.raises(CheckpointError, match=r"a.pth was trained on another base model.*allow_other_base"):
        load_lora(other, tmp_path / "a.pth")
    assert not lora_layers(other)  # refused: the model is left as it was
    load_lora(other, tmp_path / "a.pth", allow_other_base=True)
    assert lora_layers(other)
    load_lora(other, MINIMIND2 / "lora.pth")  # MiniMind2's adapter records no base

    same = fixture_model()
    load_lora(same, tmp_path / "a.pth")  # the base it was trained on: loads
    assert torch.equal(logits_of(same, ids), logits_of(model, ids))


@pytest.mark.parametrize("bad, message", [
    ({"alpha": float("nan")}, "alpha nan is not a positive number"),
    ({"alpha": "16"}, "alpha '16' is not a positive number"),
    ({"rank": True}, "rank True is not a positive integer"),
    ({"targets": "wq"}, "targets 'wq' is not a list of layer names"),
    ({"scaling": "cubic"}, "scaling 'cubic' is none of"),
])
def test_a_malformed_lora_config_is_one_line(tmp_path, bad, message):
    """Guards against a lora_config with alpha NaN or a string (or another broken field) ending in a
    traceback deep inside apply_lora, or loading with a NaN scale that makes every output NaN."""
    model = fixture_model()
    apply_lora(model, rank=4)
    state = adapter_state(model)
    state["lora_config"].update(bad)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_lora(fixture_model(), state)


def test_weights_holding_nan_are_refused_on_load(tmp_path):
    """Guards against serving or evaluating an adapter (or a checkpoint) holding NaN -- a diverged run
    saved anyway, a damaged file -- which answers garbage with no error."""
    model = fixture_model()
    apply_lora(model, rank=4)
    state = adapter_state(model)
    state["layers.0.attention.wq.lora.B.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in 1 tensor\(s\) \(layers.0.attention.wq.lora.B.weight\)"):
        load_lora(fixture_model(), state)

    broken = fixture_model()
    with torch.no_grad():
        broken.norm.weight[0] = float("inf")
    save_model(broken, tmp_path / "full_sft_64.pth")
    with pytest.raises(CheckpointError, match=r"full_sft_64.pth holds NaN or infinite values in 1 tensor\(s\) \(norm.weight\)"):
        load_model(tmp_path / "full_sft_64.pth")
