"""Files that come from anywhere -- sidecars, tokenizer files, adapter metadata -- are read with limits:
whatever they hold is one line naming the file, never a traceback, and never a model built first from
sizes the weights do not have."""
import json

import pytest
import torch
from conftest import small_model

from formats.checkpoint import CheckpointError, load_model, read_checkpoint, save_model
from formats.tokenizer_json import TokenizerError
from model.LMConfig import MAX_POSITIONS, LMConfig
from model.model import MiniMindLM
from model.model_lora import apply_lora, save_lora
from model.tokenizer import Tokenizer
from plumbing.untrusted_json import JSONError, loads

DEEP = "[" * 5000 + "]" * 5000  # Python's json recursion gives up long before this


def test_untrusted_json_refuses_deep_nesting_and_names_the_text():
    """Guards against a RecursionError (a traceback, or a dropped connection in the server) from JSON
    nested thousands of levels deep, and against brackets inside strings counting as nesting."""
    with pytest.raises(JSONError, match=r"x.json is nested 5000 levels deep"):
        loads(DEEP, "x.json")
    assert loads('{"a": "[[[[[[", "b": [1, {"c": 2}]}') == {"a": "[[[[[[", "b": [1, {"c": 2}]}


def test_a_deeply_nested_sidecar_is_one_line(tmp_path):
    """Guards against a damaged sidecar ending load_model (and every script) in a RecursionError."""
    path = tmp_path / "full_sft_32.pth"
    save_model(small_model(300, max_seq_len=64), path)
    (tmp_path / "full_sft_32.json").write_text(DEEP)
    with pytest.raises(CheckpointError, match=r"full_sft_32.json is not a readable checkpoint sidecar .*nested"):
        load_model(path)


def test_a_sidecar_that_claims_other_sizes_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    """Guards against a hand-edited sidecar (n_layers 10^9, a huge hidden_dim) making load_model build that
    model -- allocating its memory -- before the weights could say it is wrong."""
    path = tmp_path / "full_sft_32.pth"
    save_model(small_model(300, max_seq_len=64), path)
    sidecar = json.loads((tmp_path / "full_sft_32.json").read_text())
    sidecar["config"]["n_layers"] = 10**9
    (tmp_path / "full_sft_32.json").write_text(json.dumps(sidecar))
    built = []
    monkeypatch.setattr(MiniMindLM, "__init__", lambda self, *a, **k: built.append(1) or torch.nn.Module.__init__(self))
    with pytest.raises(CheckpointError, match=r"its sidecar's config does not describe its weights.*--n_layers 2"):
        load_model(path)
    assert not built


def test_a_config_with_absurdly_many_positions_is_refused():
    """Guards against max_seq_len = 2^40 in a file allocating the RoPE table for all of them."""
    with pytest.raises(ValueError, match=f"more than {MAX_POSITIONS:,} positions"):
        LMConfig(dim=32, n_layers=1, n_heads=4, max_seq_len=1 << 40)
    assert LMConfig(max_seq_len=MAX_POSITIONS).max_seq_len == MAX_POSITIONS


def test_deeply_nested_adapter_metadata_in_safetensors_is_one_line(tmp_path):
    """Guards against a .safetensors adapter whose lora_config metadata is deeply nested JSON raising a
    RecursionError in read_checkpoint."""
    from formats.safetensors import load_file, save_file

    model = small_model(300, max_seq_len=64)
    apply_lora(model, rank=2)
    save_lora(model, tmp_path / "a.safetensors")
    tensors, metadata = load_file(tmp_path / "a.safetensors")
    save_file(dict(tensors), tmp_path / "b.safetensors", metadata={**metadata, "lora_config": DEEP})
    with pytest.raises(CheckpointError, match=r"b.safetensors: its 'lora_config' metadata is nested"):
        read_checkpoint(tmp_path / "b.safetensors")


def test_a_deeply_nested_tokenizer_json_is_one_line(tmp_path):
    """Guards against a damaged tokenizer.json ending Tokenizer.load in a RecursionError."""
    (tmp_path / "tokenizer.json").write_text(DEEP)
    with pytest.raises(TokenizerError, match=r"tokenizer.json is nested 5000 levels deep.*damaged"):
        Tokenizer.load(tmp_path)
