"""Tests for DoRA (model/lora_variants.py's DoRALinear, train_lora.py --method dora): its mathematics, its
file, and the places that cannot take it saying so."""
import copy

import pytest
import torch

from conftest import fill_B, logits_of, one_line_error, tiny_model
from formats.checkpoint import CheckpointError
from model.lora_variants import DoRAEmbedding, DoRALinear, VARIANTS, load_adapter, save_adapter
from model.model_lora import load_lora, merge_lora, remove_lora, unmerge_lora

IDS = torch.arange(14)[None]


def trained_dora(targets=("wq", "w1", "output"), seed=1) -> torch.nn.Module:
    """The tiny model with DoRA on `targets`, B and the magnitudes moved as training would move them."""
    model = tiny_model()
    VARIANTS["dora"].apply(model, 4, None, 0.0, list(targets))
    fill_B(model, seed=seed, std=0.2)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if name.endswith(".lora.magnitude"):
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))
    return model


def test_dora_is_a_magnitude_times_a_direction_and_starts_at_the_base():
    """Guards DoRA's formula: a layer must compute m · (W + ΔW) x / ‖W + ΔW‖ (each output row's norm), with m
    starting at ‖W‖ and B = 0, so that the model starts exactly as the base; m is trained, W is not."""
    base = tiny_model()
    fresh = copy.deepcopy(base)
    VARIANTS["dora"].apply(fresh, 4, None, 0.0, ["wq", "w1", "output"])
    assert torch.equal(logits_of(fresh, IDS), logits_of(base, IDS))
    assert isinstance(fresh.tok_embeddings, DoRAEmbedding)
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert "layers.0.attention.wq.lora.magnitude" in trainable and "layers.0.attention.wq.weight" not in trainable

    layer = trained_dora().layers[1].feed_forward.w1
    x = torch.randn(3, layer.in_features)
    W = layer.weight + layer.delta_weight()
    expected = (layer.lora.magnitude / W.norm(dim=1)) * (x @ W.T)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_dora_merged_equals_unmerged_and_unmerging_gives_the_base_back():
    """Guards DoRA's merge (the row factor applied to W + ΔW, the tied embedding's rows included) and its unmerge
    (the factor divided back out): merged logits equal unmerged ones, and unmerged W is the base's again."""
    model = trained_dora()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not n.endswith(("A.weight", "B.weight", "magnitude"))}
    unmerged = logits_of(model, IDS)
    merge_lora(model)
    torch.testing.assert_close(logits_of(model, IDS), unmerged, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    for name, p in model.named_parameters():
        if name in before:
            torch.testing.assert_close(p, before[name], rtol=1e-5, atol=1e-6)


def test_a_dora_file_round_trips_and_plain_lora_loaders_refuse_it(tmp_path):
    """Guards the magnitudes lost on the way through a file (the model would silently be plain LoRA): load_adapter
    must give the trained model back exactly, and every loader that would drop them (load_lora, and so the server's
    and merge_lora.py's) must refuse the file in one line instead. (The PEFT export keeps them: tests/test_interop.py.)"""
    model = trained_dora()
    save_adapter(model, tmp_path / "d.pth")
    again = tiny_model()
    load_adapter(again, tmp_path / "d.pth")
    assert torch.equal(logits_of(again, IDS), logits_of(model, IDS))
    assert isinstance(again.layers[0].attention.wq, DoRALinear)
    with pytest.raises(CheckpointError, match="DoRA adapter"):
        load_lora(tiny_model(), tmp_path / "d.pth")
    remove_lora(again)
    assert torch.equal(logits_of(again, IDS), logits_of(tiny_model(), IDS))

    contents = torch.load(tmp_path / "d.pth", weights_only=True)
    del contents["layers.1.feed_forward.w1.lora.magnitude"]
    with pytest.raises(CheckpointError, match="magnitudes do not fit"):
        load_adapter(tiny_model(), contents)


def test_train_lora_method_dora_trains_the_magnitudes_and_eval_loads_the_file(tmp_path, capsys):
    """Guards train_lora.py --method dora end to end: the magnitudes move, the file holds them, load_checkpoint (what
    eval_model.py uses) puts DoRA back; DoRA on a quantized base, or continuing a DoRA file as LoRA, is a one-line error."""
    import train_lora
    from conftest import DEMO_TOKENIZER, ROOT, small_model
    from formats.checkpoint import save_model
    from formats.loader import checkpoint_meta, load_checkpoint
    from model.tokenizer import Tokenizer

    tok = Tokenizer.load(DEMO_TOKENIZER)
    checkpoint = tmp_path / "full_sft_32.pth"
    save_model(small_model(tok.vocab_size), checkpoint, meta=checkpoint_meta("full_sft", DEMO_TOKENIZER, tok))
    lines = (ROOT / "dataset" / "lora_identity.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:48]
    (tmp_path / "data.jsonl").write_text("".join(lines), encoding="utf-8")
    argv = ["--base", str(checkpoint), "--out_dir", str(tmp_path), "--data_path", str(tmp_path / "data.jsonl"), "--epochs",
            "1", "--batch_size", "16", "--max_seq_len", "64", "--val_samples", "8", "--device", "cpu", "--method", "dora"]
    result = train_lora.main(argv)
    saved = torch.load(result.weights, weights_only=True)
    start = small_model(tok.vocab_size).layers[0].attention.wq.weight.norm(dim=1)
    assert saved["lora_config"]["init"] == "dora"
    assert not torch.allclose(saved["layers.0.attention.wq.lora.magnitude"], start)  # trained
    loaded = load_checkpoint(str(checkpoint), adapter=result.weights)
    assert isinstance(loaded.model.layers[0].attention.wq, DoRALinear)
    assert "quantized base" in one_line_error(train_lora.main, [*argv, "--quantize_base", "nf4"], capsys,
                                              run_main=train_lora.training.run_main)
    again = [a if a != "dora" else "lora" for a in argv] + ["--init_lora", result.weights, "--lora_name", "more"]
    assert "--method dora" in one_line_error(train_lora.main, again, capsys, run_main=train_lora.training.run_main)
