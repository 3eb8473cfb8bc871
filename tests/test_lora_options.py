"""Tests for LoRA's initialisation and scaling choices (model/model_lora.py) and its predecessors
(model/predecessors.py), which the LoRA lab measures (docs/lora_lab.md)."""
import math

import pytest
import torch
from conftest import MINIMIND2, fixture_model, logits_of

from formats.checkpoint import read_checkpoint
from model.lora_variants import INITS, VARIANTS
from model.model_lora import LoRALinear, apply_lora, load_lora, mark_only_lora_as_trainable, merge_lora, remove_lora, save_lora
from model.predecessors import apply_method, load_method, save_method

TARGETS = ["wq", "wk", "wv", "wo", "w1", "w2", "w3", "output"]


@pytest.fixture(scope="module")
def ids():
    return torch.load(MINIMIND2 / "golden.pth", weights_only=True)["input_ids"]


def train_a_little(model, ids, steps=3):
    """A few SGD steps on a toy loss, so A and B move away from their start."""
    mark_only_lora_as_trainable(model)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        model(ids).logits.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.mark.parametrize("rank", [1, 4, 16])
def test_rslora_scale_is_alpha_over_sqrt_rank(rank):
    """Guards rsLoRA's scale being alpha / r (the standard rule) or alpha / r^2: it must be alpha / sqrt(r),
    and the layer's output must use it."""
    layer = LoRALinear(torch.nn.Linear(8, 8, bias=False), rank, alpha=6.0, scaling="rslora")
    assert layer.scale == pytest.approx(6.0 / math.sqrt(rank))
    assert LoRALinear(torch.nn.Linear(8, 8, bias=False), rank, alpha=6.0).scale == pytest.approx(6.0 / rank)
    torch.nn.init.normal_(layer.lora.B.weight)
    x = torch.randn(3, 8)
    expected = x @ layer.weight.T + layer.scale * (x @ layer.lora.A.weight.T @ layer.lora.B.weight.T)
    assert torch.allclose(layer(x), expected, atol=1e-6)


@pytest.mark.parametrize("init", ["standard", "swapped", "zeros"])
def test_inits_with_a_zero_factor_start_exactly_at_the_base(ids, init):
    """Guards the swapped init (A = 0, B random) or both-zero init disturbing the model at step 0: B·A = 0, so
    the logits must be bit-identical to the base's; and which factor is zero is the one named."""
    base = fixture_model()
    model = fixture_model()
    apply_lora(model, 4, target_modules=TARGETS, layer_class=INITS[init])
    assert torch.equal(logits_of(model, ids), logits_of(base, ids))
    layer = model.layers[0].attention.wq
    zero = {"standard": "B", "swapped": "A", "zeros": "AB"}[init]
    for ab in "AB":
        weight = getattr(layer.lora, ab).weight
        assert (torch.count_nonzero(weight) == 0) == (ab in zero)


def test_swapped_init_trains_A_first_and_zeros_never_trains(ids):
    """Guards the gradient algebra the lab prints at step 0: dL/dB = g·(Ax)ᵀ and dL/dA = Bᵀ·g·xᵀ, so with A = 0
    only A gets a gradient, and with A = B = 0 neither does."""
    for init, has_grad in (("swapped", {"A": True, "B": False}), ("zeros", {"A": False, "B": False})):
        model = fixture_model()
        apply_lora(model, 4, layer_class=INITS[init])
        mark_only_lora_as_trainable(model)
        model(ids).logits.pow(2).mean().backward()
        for ab, expected in has_grad.items():
            grads = [p.grad for n, p in model.named_parameters() if n.endswith(f".lora.{ab}.weight")]
            assert any(g.abs().max() > 0 for g in grads) == expected, (init, ab)


def test_pissa_leaves_the_output_unchanged_at_step_0(ids):
    """Guards PiSSA's residual: A and B take W's top singular directions and W keeps the rest, so the model's
    output is unchanged (up to rounding) while the adapter holds W's principal part, exactly scale·B·A = U_r S_r V_rᵀ."""
    base = fixture_model()
    model = fixture_model()
    W = model.layers[0].attention.wq.weight.detach().clone()
    apply_lora(model, 4, alpha=8, target_modules=TARGETS, layer_class=INITS["pissa"])
    assert torch.allclose(logits_of(model, ids), logits_of(base, ids), atol=1e-5)
    layer = model.layers[0].attention.wq
    U, S, Vh = torch.linalg.svd(W)
    assert torch.allclose(layer.delta_weight(), U[:, :4] @ torch.diag(S[:4]) @ Vh[:4], atol=1e-5)
    assert torch.allclose(layer.weight + layer.delta_weight(), W, atol=1e-5)


def test_pissa_adapter_file_reproduces_the_trained_model_on_the_untouched_base(tmp_path, ids):
    """Guards PiSSA adapters that only work on the modified W_res: the file must be an ordinary (rank-2r)
    adapter that, loaded on the plain base by any consumer, gives the trained model; removing the adapters
    gives the base back."""
    model = fixture_model()
    apply_lora(model, 4, alpha=8, target_modules=TARGETS, layer_class=INITS["pissa"], scaling="rslora")
    train_a_little(model, ids)
    trained = logits_of(model, ids)
    save_lora(model, tmp_path / "pissa.pth")
    config = read_checkpoint(tmp_path / "pissa.pth")["lora_config"]
    assert (config["rank"], config["init"], config["scaling"]) == (8, "pissa", "rslora")

    fresh = fixture_model()
    load_lora(fresh, tmp_path / "pissa.pth")
    assert torch.allclose(logits_of(fresh, ids), trained, atol=1e-4)
    merge_lora(fresh)
    assert torch.allclose(logits_of(fresh, ids), trained, atol=1e-4)
    remove_lora(model)
    assert torch.allclose(logits_of(model, ids), logits_of(fixture_model(), ids), atol=1e-5)


@pytest.mark.parametrize("scaling", ["standard", "rslora"])
def test_scaling_and_init_round_trip_through_the_file(tmp_path, ids, scaling):
    """Guards a file that forgets its scaling: an rsLoRA adapter read back with alpha / r would be scaled
    sqrt(r) times too little. The metadata must say it, and load_lora and merge must honour it."""
    model = fixture_model()
    apply_lora(model, 4, alpha=3, target_modules=["wq", "w2"], layer_class=INITS["swapped"], scaling=scaling)
    train_a_little(model, ids)
    save_lora(model, tmp_path / "a.pth")
    saved_config = read_checkpoint(tmp_path / "a.pth")["lora_config"]
    assert saved_config.pop("base").startswith("sha256:")  # the base's fingerprint (tests/test_lora.py)
    assert saved_config == {"rank": 4, "alpha": 3, "targets": ["w2", "wq"], "dim": 64, "scaling": scaling, "init": "swapped"}
    fresh = fixture_model()
    load_lora(fresh, tmp_path / "a.pth")
    assert fresh.layers[0].attention.wq.scaling == scaling
    assert torch.allclose(logits_of(fresh, ids), logits_of(model, ids), atol=1e-5)
    merge_lora(fresh)
    assert torch.allclose(logits_of(fresh, ids), logits_of(model, ids), atol=1e-5)


def test_unknown_scaling_is_refused_and_every_variant_is_registered():
    """Guards a typo ('sqrt') silently training the standard scale, and a variant the lab cannot name."""
    with pytest.raises(ValueError, match="must be one of"):
        apply_lora(fixture_model(), 4, scaling="sqrt")
    assert set(INITS) == {"standard", "swapped", "zeros", "gauss_r", "kaiming", "pissa"}
    assert set(VARIANTS) == {"lora", "rslora", "swapped", "zeros", "gauss_r", "kaiming", "pissa", "dora", "adapter", "prefix"}


@pytest.mark.parametrize("init, bound", [("gauss_r", None), ("kaiming", "uniform")])
def test_the_write_ups_a_inits_draw_at_their_own_scale_and_start_at_the_base(ids, init, bound):
    """Guards the write-ups' initialisations being MiniMind2's under another name: A ~ N(0, 1/r) must have std
    1/sqrt(r) (12.5x MiniMind2's 0.02 at r = 16), kaiming-uniform A must lie in +-1/sqrt(in) with the spread of a
    uniform draw; B = 0 in both, so the model starts exactly at the base."""
    torch.manual_seed(0)
    model = fixture_model()
    apply_lora(model, 16, target_modules=["w1"], layer_class=INITS[init])
    layer = model.layers[0].feed_forward.w1
    A = layer.lora.A.weight
    if bound is None:
        assert A.std().item() == pytest.approx(1 / math.sqrt(16), rel=0.1)
    else:
        limit = 1 / math.sqrt(layer.in_features)
        assert A.abs().max().item() <= limit and A.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.1)
    assert torch.count_nonzero(layer.lora.B.weight) == 0
    assert torch.equal(logits_of(model, ids), logits_of(fixture_model(), ids))


# --- the predecessors --------------------------------------------------------------------------

def test_bottleneck_adapter_starts_at_the_base_and_cannot_be_skipped(ids):
    """Guards the adapter's near-identity start (up = 0) and that its layers are really in the path: after
    training its parameters, the output must differ from the base's."""
    base = fixture_model()
    model = fixture_model()
    apply_method(model, "adapter", 8)
    assert torch.equal(logits_of(model, ids), logits_of(base, ids))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".down." in n or ".up." in n for n in trainable)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        model(ids).logits.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not torch.allclose(logits_of(model.eval(), ids), logits_of(base, ids))


def test_prefix_cached_generation_equals_full_forwards(ids):
    """Guards a prefix added twice (into the cache and again at each step) or left out of decode steps:
    greedy generation with the KV cache must match recomputing the whole sequence each step."""
    torch.manual_seed(0)
    model = fixture_model()
    apply_method(model, "prefix", 5)
    with torch.no_grad():
        for block in model.layers:  # trained-looking prefixes, so they matter
            block.attention.prefix_k.normal_(0, 1.0)
            block.attention.prefix_v.normal_(0, 1.0)
    prompt = ids[:1, :6]
    cached = model.generate(prompt, max_new_tokens=6, temperature=0.0, eos_token_id=-1)
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(cached, seq)


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_predecessor_files_round_trip(tmp_path, ids, method):
    """Guards a saved baseline that loads with other values (or not at all) onto a fresh base."""
    model = fixture_model()
    apply_method(model, method, 4)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    save_method(model, tmp_path / "m.pth")
    fresh = fixture_model()
    load_method(fresh, tmp_path / "m.pth")
    assert torch.equal(logits_of(fresh, ids), logits_of(model, ids))
