"""Tests for merging/merge.py and merge_lora.py: each method's mathematics on hand-sized and model-sized
adapters, and the merges that must be refused."""
import copy

import pytest
import torch

import merge_lora
from conftest import fill_B, logits_of, one_line_error, tiny_model
from formats.adapter_file import read_lora_file
from merging.merge import dare, keep_largest, merge_adapters, ties
from formats.checkpoint import save_weights
from model.model_lora import adapter_state, apply_lora, load_lora, lora_layers


def adapter(model, rank, targets, seed, **kwargs) -> dict:
    """A random adapter's file contents (adapter_state) on a copy of `model`."""
    copied = copy.deepcopy(model)
    apply_lora(copied, rank, target_modules=targets, **kwargs)
    fill_B(copied, seed=seed, std=0.2)
    return adapter_state(copied)


def deltas(model, contents) -> dict:
    """{layer: ΔW} of an adapter file's contents on `model`."""
    copied = copy.deepcopy(model)
    load_lora(copied, contents)
    return {name: layer.delta_weight() for name, layer in lora_layers(copied)}


def test_cat_is_the_weighted_sum_of_the_updates_exactly():
    """Guards the one exact merge: at rank r1 + r2 the merged ΔW must be Σ w_i ΔW_i on every layer, for adapters of
    different ranks, scales (alpha, rsLoRA) and targets (a layer one lacks counts as 0), and the model with the
    merged adapter must compute what the base plus both updates compute."""
    base = tiny_model()
    a = adapter(base, 4, ["wq", "w1", "output"], seed=1, alpha=8.0)
    b = adapter(base, 2, ["wq", "wo"], seed=2, scaling="rslora")
    merged = merge_adapters([read_lora_file(a), read_lora_file(b)], [0.7, -0.4], "cat")
    assert merged["lora_config"]["rank"] == 6 and merged["lora_config"]["targets"] == ["output", "w1", "wo", "wq"]
    one, two, both = deltas(base, a), deltas(base, b), deltas(base, merged)
    for name, d in both.items():
        expected = 0.7 * one.get(name, 0) + -0.4 * two.get(name, 0)
        torch.testing.assert_close(d, expected + torch.zeros_like(d), rtol=1e-5, atol=1e-6)
    ids = torch.arange(12)[None]
    reference = copy.deepcopy(base)
    with torch.no_grad():
        for name, d in both.items():
            reference.get_submodule(name).weight.add_(d)
    on_base = copy.deepcopy(base)
    load_lora(on_base, merged)
    torch.testing.assert_close(logits_of(on_base, ids), logits_of(reference, ids), rtol=1e-4, atol=1e-4)


def test_linear_is_not_the_sum_it_adds_the_cross_terms():
    """Guards PEFT's 'linear' merge passing for the weighted sum: on hand-sized adapters, B1 A1 = e1 e1ᵀ and
    B2 A2 = e2 e2ᵀ, it must give (B1 + B2)(A1 + A2), the identity plus the cross terms e1 e2ᵀ + e2 e1ᵀ."""
    settings = {"rank": 1, "alpha": 1.0, "scaling": "standard", "dim": None, "base": None}
    one = ({"x.lora.A.weight": torch.tensor([[1.0, 0.0]]), "x.lora.B.weight": torch.tensor([[1.0], [0.0]])}, settings)
    two = ({"x.lora.A.weight": torch.tensor([[0.0, 1.0]]), "x.lora.B.weight": torch.tensor([[0.0], [1.0]])}, settings)
    for method, expected in (("linear", [[1.0, 1.0], [1.0, 1.0]]), ("cat", [[1.0, 0.0], [0.0, 1.0]])):
        merged = merge_adapters([one, two], [1.0, 1.0], method)
        assert (merged["x.lora.B.weight"] @ merged["x.lora.A.weight"]).tolist() == expected, method


def test_ties_trims_elects_and_averages_the_agreeing_entries():
    """Guards TIES's three steps, on a hand-worked example: keep each update's largest half (3, 2 and -2, 1), elect
    the sign of the sum of what is kept, average only the entries of that sign; an entry all trimmed stays 0."""
    one, two = torch.tensor([[3.0, -1.0], [0.5, 2.0]]), torch.tensor([[-2.0, -0.9], [1.0, -0.1]])
    assert keep_largest(one, 0.5).tolist() == [[3.0, 0.0], [0.0, 2.0]]
    assert ties([one, two], 0.5).tolist() == [[3.0, 0.0], [1.0, 2.0]]
    assert ties([one, one], 1.0).tolist() == one.tolist()  # all kept, all agreeing: the mean of equals


def test_dare_keeps_the_expected_update_and_the_share_asked_for():
    """Guards DARE's rescaling (dropping without dividing by the density shrinks the update to density x) and its
    drop rate: each entry survives with probability `density`, multiplied by 1 / density, so that the mean over
    draws is the update itself; density 1 keeps everything as it is."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(200, 200, generator=g)
    once = dare(t, 0.3, g)
    kept = once != 0
    assert kept.float().mean().item() == pytest.approx(0.3, abs=0.01)
    torch.testing.assert_close(once[kept], t[kept] / 0.3)
    mean = sum(dare(t, 0.5, g) for _ in range(100)) / 100
    assert ((mean - t).norm() / t.norm()).item() < 0.15  # 1/sqrt(100) expected; without the rescaling 0.5
    assert torch.equal(dare(t, 1.0, g), t)


def test_svd_cuts_the_sum_to_the_best_rank_r_approximation():
    """Guards the cut back to rank r: at r1 + r2 the svd merge is the exact sum; below, its error must be the norm of
    the dropped singular values (nothing better exists at that rank: Eckart-Young), and 'kept' says how much stayed."""
    base = tiny_model()
    a, b = read_lora_file(adapter(base, 4, ["w1"], seed=1)), read_lora_file(adapter(base, 4, ["w1"], seed=2))
    exact = merge_adapters([a, b], [0.5, 0.5], "cat")
    for rank in (8, 3):
        cut = merge_adapters([a, b], [0.5, 0.5], "svd", rank=rank)
        for key in [k for k in cut if k.endswith("A.weight")]:
            layer = key.removesuffix(".lora.A.weight")
            full = exact[f"{layer}.lora.B.weight"] @ exact[key]
            approx = cut[f"{layer}.lora.B.weight"] @ cut[key]
            S = torch.linalg.svdvals(full)
            assert (full - approx).norm().item() == pytest.approx(S[rank:].norm().item(), abs=1e-4)
        assert cut["lora_config"]["merge"]["kept"] == (pytest.approx(1.0) if rank == 8 else pytest.approx(0.5, abs=0.45))


def test_merges_that_mean_nothing_are_refused_and_nothing_is_written(tmp_path, capsys):
    """Guards silent nonsense: adapters of two different bases, of other shapes, an unknown method, 'linear' on
    different ranks, and an --out that would overwrite an input are one-line errors, and no file is written."""
    lora = tmp_path / "lora"
    lora.mkdir()
    base, other, wide = tiny_model(), tiny_model(seed=1), tiny_model(dim=32, n_heads=2, n_kv_heads=2)
    for name, model, rank in (("a", base, 4), ("b", base, 2), ("c", other, 4), ("d", wide, 4)):
        copied = copy.deepcopy(model)
        apply_lora(copied, rank, target_modules=["wq"])
        fill_B(copied, seed=1)
        contents = adapter_state(copied)
        if name == "d":  # no base recorded (as MiniMind2's files): only its shapes tell it apart
            contents["lora_config"]["base"] = None
        save_weights(contents, lora / f"{name}_128.pth")
    argv = ["--out_dir", str(tmp_path), "--out", "ab"]
    cases = [(["--lora_name", "a", "c"], "different base models"),
             (["--lora_name", "a", "d"], "different widths"),
             (["--lora_name", "a", "b", "--method", "linear"], "ranks must be equal"),
             (["--lora_name", "a", "b", "--weights", "1"], "1 weights for 2 adapters"),
             (["--lora_name", "a", "x"], "x_128.pth not found"),
             (["--lora_name", "a", "b", "--density", "0"], "density")]
    for extra, message in cases:
        assert message in one_line_error(merge_lora.main, [*extra, *argv], capsys), extra
    assert "one of the adapters being merged" in one_line_error(
        merge_lora.main, ["--lora_name", "a", "b", "--out_dir", str(tmp_path), "--out", "a"], capsys)
    assert sorted(p.name for p in lora.iterdir()) == ["a_128.pth", "b_128.pth", "c_128.pth", "d_128.pth"]

    merge_lora.main(["--lora_name", "a", "b", *argv, "--method", "ties", "--weights", "1", "1"])
    model = copy.deepcopy(base)
    load_lora(model, lora / "ab_128.pth")  # an ordinary adapter file, for the base both were trained on
    assert model.layers[0].attention.wq.rank == 4


def test_adapters_with_a_rank_per_layer_merge_layer_by_layer():
    """Guards rank patterns through a merge: each layer's ranks add up under cat (a pattern out, with one alpha for
    every layer), and the merged ΔW is still the exact weighted sum."""
    base = tiny_model()
    a = adapter(base, 4, ["wq", "w1"], seed=1, rank_pattern={"layers.0.attention.wq": 2})
    b = adapter(base, 4, ["wq", "w1"], seed=2, rank_pattern={"layers.1.feed_forward.w1": 8})
    merged = merge_adapters([read_lora_file(a), read_lora_file(b)], [1.0, 0.5], "cat")
    assert merged["lora_config"]["rank"] == 8
    assert merged["lora_config"]["rank_pattern"] == {"layers.0.attention.wq": 6, "layers.1.feed_forward.w1": 12}
    one, two, both = deltas(base, a), deltas(base, b), deltas(base, merged)
    for name, d in both.items():
        torch.testing.assert_close(d, one[name] + 0.5 * two[name], rtol=1e-5, atol=1e-6)
