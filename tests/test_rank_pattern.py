"""Tests for a rank per layer (apply_lora's rank_pattern, an adapter file's "rank_pattern", train_lora.py
--rank_pattern): each layer its rank, one alpha for all, through save, load, merge and serving."""
import json

import pytest
import torch

from conftest import fill_B, logits_of, one_line_error, tiny_model
from formats.checkpoint import CheckpointError
from model.model_lora import adapter_state, apply_lora, load_lora, lora_layers, merge_lora, save_lora
from serving.multi_lora import read_adapter

PATTERN = {"layers.0.attention.wq": 2, "layers.1.feed_forward.w1": 8}
IDS = torch.arange(12)[None]


def patterned(alpha=None):
    model = tiny_model()
    apply_lora(model, 4, alpha, target_modules=["wq", "w1", "output"], rank_pattern=PATTERN)
    fill_B(model, seed=1, std=0.2)
    return model


def test_each_layer_gets_its_rank_and_one_alpha_scales_them_all(tmp_path):
    """Guards a rank pattern lost or misread on the way through a file: the layers it names get their ranks, the
    others the default, every layer scale alpha / its rank (alpha None: the default rank), and the file (rank = the
    commonest, rank_pattern = the others) loads back to the same model, merged or not."""
    model = patterned()
    ranks = {name: layer.rank for name, layer in lora_layers(model)}
    assert ranks["layers.0.attention.wq"] == 2 and ranks["layers.1.feed_forward.w1"] == 8 and ranks["output"] == 4
    assert model.layers[0].attention.wq.scale == 2.0 and model.layers[1].feed_forward.w1.scale == 0.5
    assert patterned(alpha=16.0).layers[1].feed_forward.w1.scale == 2.0
    save_lora(model, tmp_path / "p.pth")
    config = torch.load(tmp_path / "p.pth", weights_only=True)["lora_config"]
    assert (config["rank"], config["rank_pattern"], config["alpha"]) == (4, PATTERN, 4)
    again = tiny_model()
    load_lora(again, tmp_path / "p.pth")
    assert torch.equal(logits_of(again, IDS), logits_of(model, IDS))
    merge_lora(again)
    torch.testing.assert_close(logits_of(again, IDS), logits_of(model, IDS), rtol=1e-5, atol=1e-5)
    served = read_adapter(tiny_model(), tmp_path / "p.pth")  # the server's view: each layer's own A, B and scale
    assert served["layers.1.feed_forward.w1"][0].shape == (8, 64) and served["layers.1.feed_forward.w1"][2] == 0.5


def test_a_pattern_that_does_not_fit_is_refused():
    """Guards silent nonsense from a pattern: one naming a layer that is not adapted, a rank that is not a positive
    integer, and a file whose tensors disagree with its pattern are refused, each saying what is wrong."""
    with pytest.raises(ValueError, match="rank_pattern names layers not adapted"):
        apply_lora(tiny_model(), 4, target_modules=["wq"], rank_pattern={"layers.0.feed_forward.w1": 2})
    with pytest.raises(ValueError, match="ranks must be positive integers"):
        apply_lora(tiny_model(), 4, target_modules=["wq"], rank_pattern={"layers.0.attention.wq": 0})
    contents = adapter_state(patterned())
    for pattern, message in [({**PATTERN, "layers.1.attention.wo": 2}, "names layers it does not adapt"),
                             ({"layers.0.attention.wq": 8}, "wrong shape"),
                             ({"layers.0.attention.wq": "2"}, "rank_pattern")]:
        bad = {**contents, "lora_config": {**contents["lora_config"], "rank_pattern": pattern}}
        with pytest.raises(CheckpointError, match=message):
            load_lora(tiny_model(), bad)


def test_train_lora_takes_a_rank_pattern_file(tmp_path, capsys):
    """Guards train_lora.py --rank_pattern: the run's adapter must have the file's ranks; a file that is not a JSON
    object of positive ranks is a one-line error."""
    import train_lora
    from conftest import DEMO_TOKENIZER, ROOT, small_model
    from formats.checkpoint import save_model
    from formats.loader import checkpoint_meta
    from model.tokenizer import Tokenizer

    tok = Tokenizer.load(DEMO_TOKENIZER)
    checkpoint = tmp_path / "full_sft_32.pth"
    save_model(small_model(tok.vocab_size), checkpoint, meta=checkpoint_meta("full_sft", DEMO_TOKENIZER, tok))
    lines = (ROOT / "dataset" / "lora_identity.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:40]
    (tmp_path / "data.jsonl").write_text("".join(lines), encoding="utf-8")
    (tmp_path / "pattern.json").write_text(json.dumps({"layers.1.feed_forward.w2": 8}))
    argv = ["--base", str(checkpoint), "--out_dir", str(tmp_path), "--data_path", str(tmp_path / "data.jsonl"), "--epochs",
            "1", "--batch_size", "16", "--max_seq_len", "64", "--val_samples", "8", "--device", "cpu", "--lora_rank", "4",
            "--lora_targets", "wq,w2", "--rank_pattern", str(tmp_path / "pattern.json")]
    result = train_lora.main(argv)
    config = torch.load(result.weights, weights_only=True)["lora_config"]
    assert (config["rank"], config["rank_pattern"]) == (4, {"layers.1.feed_forward.w2": 8})
    (tmp_path / "bad.json").write_text('{"layers.1.feed_forward.w2": 0}')
    argv[-1] = str(tmp_path / "bad.json")
    assert "must hold a JSON object" in one_line_error(train_lora.main, argv, capsys, run_main=train_lora.training.run_main)


def test_the_budget_goes_to_the_directions_worth_most_per_parameter():
    """Guards lab/rank_allocation.py's water-filling: on hand-made updates, the budget must go to the matrix whose
    next singular value's energy per parameter is largest, every matrix keeping rank 1, never past the budget."""
    from lab.rank_allocation import allocate
    strong = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))  # 4x4: a direction costs 8 parameters
    weak = torch.diag(torch.tensor([1.0, 0.5, 0.1, 0.1]))
    assert allocate({"a": strong, "b": weak}, budget=8 * 4) == {"a": 3, "b": 1}  # 9 and 4 (per 8) beat 0.25
    assert allocate({"a": strong, "b": weak}, budget=8 * 2) == {"a": 1, "b": 1}  # the floor: rank 1 each
    assert allocate({"a": strong, "b": weak}, budget=8 * 8) == {"a": 4, "b": 4}  # all of it: full rank, no further
