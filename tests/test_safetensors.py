"""formats/safetensors.py, the hand-written safetensors reader and writer, and the weights files that use it."""
import doctest
import json
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import DEMO_TOKENIZER, ROOT, small_model

import formats.safetensors as safetensors
from formats.checkpoint import CheckpointError, read_checkpoint, save_model
from plumbing.errors import UserError
from formats.loader import checkpoint_meta, load_checkpoint
from model.model_lora import apply_lora, save_lora
from formats.safetensors import SafetensorsError, load_file, save_file
from model.tokenizer import Tokenizer

REFERENCE = ROOT / "tests" / "fixtures" / "safetensors" / "mixed.safetensors"  # written by the safetensors library
HF_MODEL = ROOT / "tests" / "fixtures" / "hf_llama" / "model" / "model.safetensors"  # written by transformers

# What the reference file holds (tests/fixtures/safetensors/README.md has the snippet that wrote it).
REFERENCE_TENSORS = {
    "a": torch.arange(3, dtype=torch.int64), "b": torch.ones(2, dtype=torch.float64),
    "c": torch.ones(3, dtype=torch.bfloat16), "d": torch.ones(2, dtype=torch.float16),
    "e": torch.tensor([True, False]), "f": torch.ones(2, 2), "g": torch.arange(3, dtype=torch.int32),
    "h": torch.arange(3, dtype=torch.uint8), "i": torch.arange(3, dtype=torch.int8),
    "j": torch.arange(3, dtype=torch.int16), "k": torch.ones(0, 3), "s": torch.tensor(2.5),
}


def test_docstring_examples_run(tmp_path, monkeypatch):
    """Guards against the module's worked example (the file's bytes) going stale."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert doctest.testmod(safetensors).failed == 0


# ------------------------------------------------------------------------------------------------
# Agreement with the reference implementation


def test_reads_what_the_reference_library_wrote():
    """Guards against a reader that gets a dtype, a shape, an empty tensor or a scalar wrong on a file the
    safetensors library itself wrote (every dtype we know but float8)."""
    tensors, metadata = load_file(REFERENCE)
    assert metadata == {"format": "pt"}
    assert tensors.keys() == REFERENCE_TENSORS.keys()
    for name, expected in REFERENCE_TENSORS.items():
        assert tensors[name].dtype == expected.dtype and torch.equal(tensors[name], expected), name


@pytest.mark.parametrize("reference", [REFERENCE, HF_MODEL], ids=["every dtype", "transformers' Llama"])
def test_writes_the_reference_librarys_bytes(reference, tmp_path):
    """Guards against a writer whose files other tools might misread (wrong order, misaligned tensors,
    another header layout): what we write from a reference file's tensors is that file, byte for byte."""
    tensors, metadata = load_file(reference)
    save_file(tensors, tmp_path / "ours.safetensors", metadata)
    assert (tmp_path / "ours.safetensors").read_bytes() == Path(reference).read_bytes()


# ------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_keeps_every_bit(dtype, tmp_path):
    """Guards against a dtype written or read as another (bfloat16 read as float16 has the same size and
    gives wrong numbers silently), and against lost bits: NaN, infinities, -0.0 and denormals included."""
    torch.manual_seed(0)
    t = torch.randn(5, 7).to(dtype)
    specials = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0, torch.finfo(dtype).tiny / 2, 1.0, 2.0])
    t[0] = specials.to(dtype)
    save_file({"t": t, "scalar": torch.tensor(3.0, dtype=dtype)}, tmp_path / "a.safetensors")
    back, _ = load_file(tmp_path / "a.safetensors")
    assert back["t"].dtype == dtype and back["t"].shape == (5, 7)
    assert torch.equal(back["t"].view(torch.int16 if dtype != torch.float32 else torch.int32),
                       t.view(torch.int16 if dtype != torch.float32 else torch.int32))  # bit patterns
    assert back["scalar"].shape == () and back["scalar"].item() == 3.0


def test_views_and_non_contiguous_tensors_are_written_as_themselves(tmp_path):
    """Guards against writing a tensor's whole storage (a row slice would store the full matrix) or its
    memory order (a transposed tensor would come back transposed)."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    cases = {
        "row_slice": base[1:3],  # a view starting inside a larger storage
        "transposed": base.t(),  # non-contiguous
        "strided": base[::2, 1::2],  # non-contiguous view with an offset
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),  # stride 0
    }
    save_file(cases, tmp_path / "v.safetensors")
    back, _ = load_file(tmp_path / "v.safetensors")
    for name, t in cases.items():
        assert back[name].shape == t.shape and torch.equal(back[name], t), name
    data_bytes = (tmp_path / "v.safetensors").stat().st_size - 8 - struct.unpack("<Q", (tmp_path / "v.safetensors").read_bytes()[:8])[0]
    assert data_bytes == 4 * sum(t.numel() for t in cases.values())  # each tensor's own elements only


def test_a_loaded_tensor_is_a_private_copy_of_the_file(tmp_path):
    """Guards against the memory map writing through: changing a loaded tensor in place (as training
    does) must never change the checkpoint file on disk."""
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(4)}, path)
    before = path.read_bytes()
    tensors, _ = load_file(path)
    tensors["w"].add_(1.0)
    del tensors
    assert path.read_bytes() == before
    assert torch.equal(load_file(path)[0]["w"], torch.zeros(4))


def test_unusual_names_and_metadata_survive(tmp_path):
    """Guards against names or metadata mangled on the way through JSON (non-ASCII, quotes)."""
    save_file({'层.0 "w"': torch.ones(1)}, tmp_path / "n.safetensors", metadata={"note": "模型 \"x\""})
    tensors, metadata = load_file(tmp_path / "n.safetensors")
    assert list(tensors) == ['层.0 "w"'] and metadata == {"format": "pt", "note": "模型 \"x\""}


def test_what_safetensors_cannot_hold_is_refused_when_writing(tmp_path):
    """Guards against a writer that silently drops or mangles something the format has no room for."""
    with pytest.raises(SafetensorsError, match="dense tensor"):
        save_file({"x": [1, 2]}, tmp_path / "x.safetensors")
    with pytest.raises(SafetensorsError, match="complex64"):
        save_file({"x": torch.ones(2, dtype=torch.complex64)}, tmp_path / "x.safetensors")
    with pytest.raises(SafetensorsError, match="metadata must map strings to strings"):
        save_file({"x": torch.ones(2)}, tmp_path / "x.safetensors", metadata={"n": 1})
    assert not (tmp_path / "x.safetensors").exists()


# ------------------------------------------------------------------------------------------------
# Broken files: one clear line each


def _file(header: dict, data: bytes, header_len: int = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if header_len is None else header_len) + text + data


GOOD = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
BROKEN = [
    ("too short", b"\x01\x02", "too short for the 8-byte header length"),
    ("header longer than the file", _file(GOOD, bytes(8), header_len=10_000), "announce a 10000-byte header"),
    ("header not JSON", struct.pack("<Q", 4) + b"{{{{", "header is not valid JSON"),
    ("header not an object", _file([1, 2], b""), "header is a JSON list"),  # type: ignore[arg-type]
    ("size does not match the shape", _file({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
     "shape [3] and dtype F32 needs 12 bytes, but its data_offsets [0, 8] give 8"),
    ("offsets past the end", _file({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)),
     "ends at byte 16 of the data, but the file holds only 8 bytes after its header: it is truncated"),
    ("overlapping tensors", _file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)), "overlap"),
    ("a gap", _file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)), "bytes 0..4 belong to no tensor"),
    ("trailing bytes", _file(GOOD, bytes(12)), "last 4 bytes of the data belong to no tensor"),
    ("unknown dtype", _file({"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, bytes(1)), "dtype 'F4'"),
    ("negative offsets", _file({"w": {"dtype": "U8", "shape": [1], "data_offsets": [-1, 0]}}, bytes(1)), "data_offsets [-1, 0]"),
    ("bad shape", _file({"w": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, bytes(1)), "shape [-1]"),
    # Both were tracebacks: json's RecursionError, and torch's overflow building an "empty" [0, 2**70] tensor,
    # whose size 0 matches any offsets [b, b].
    ("deeply nested header", struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000,
     "its header is nested 100000 levels deep, more than the 64 accepted"),
    ("absurd empty shape", _file({"w": {"dtype": "F32", "shape": [0, 2**70], "data_offsets": [0, 0]}}, b""),
     "tensor 'w' has shape [0, 1180591620717411303424], larger than any tensor can be"),
    ("absurd strides", _file({"w": {"dtype": "F32", "shape": [0, 2**40, 2**40], "data_offsets": [0, 0]}}, b""),
     "larger than any tensor can be"),
]


@pytest.mark.parametrize("content, message", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_a_broken_file_is_one_clear_user_error(content, message, tmp_path):
    """Guards against a header that lies (about sizes or offsets) or a cut-short file turning into a
    torch traceback, a crash deep in frombuffer, or -- worst -- tensors silently read from the wrong bytes."""
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(UserError) as caught:
        read_checkpoint(path)
    line = str(caught.value)
    assert isinstance(caught.value, CheckpointError)
    assert line.startswith(f"{path} is not a valid safetensors file: ") and message in line, line
    assert "\n" not in line


def test_a_truncated_real_file_is_refused(tmp_path):
    """Guards against a download or copy that stopped early being loaded as zeros or garbage."""
    data = HF_MODEL.read_bytes()
    path = tmp_path / "model.safetensors"
    path.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="file holds only 476316 bytes after its header: it is truncated"):
        read_checkpoint(path)


# ------------------------------------------------------------------------------------------------
# Every weights file may be .safetensors


@pytest.fixture()
def model_and_adapter():
    tok = Tokenizer.load(DEMO_TOKENIZER)
    model = small_model(tok.vocab_size).eval()
    return model, tok


def test_checkpoints_and_adapters_load_the_same_from_safetensors(model_and_adapter, tmp_path):
    """Guards against a second loading path: a .safetensors checkpoint and adapter go through the same
    load_checkpoint / load_lora as .pth files and give bit-identical weights and logits."""
    model, tok = model_and_adapter
    meta = checkpoint_meta("full_sft", DEMO_TOKENIZER, tok)
    for suffix in (".pth", ".safetensors"):
        save_model(model, tmp_path / f"m{suffix}", meta=meta)
    apply_lora(model, rank=4, alpha=6, target_modules=["wq", "wk", "w2", "output"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora.B" in name:
                p.normal_()
    for suffix in (".pth", ".safetensors"):
        save_lora(model, tmp_path / f"a{suffix}")
    ids = torch.randint(0, tok.vocab_size, (2, 9))
    results = []
    for suffix in (".pth", ".safetensors"):
        loaded = load_checkpoint(tmp_path / f"m{suffix}", adapter=tmp_path / f"a{suffix}")
        with torch.no_grad():
            results.append((loaded.model.state_dict(), loaded.model(ids).logits))
    (pth_state, pth_logits), (st_state, st_logits) = results
    assert pth_state.keys() == st_state.keys() and all(torch.equal(pth_state[k], st_state[k]) for k in pth_state)
    assert torch.equal(pth_logits, st_logits)
    with torch.no_grad():
        assert torch.equal(st_logits, model(ids).logits)
    saved_config = read_checkpoint(tmp_path / "a.safetensors")["lora_config"]
    assert saved_config.pop("base").startswith("sha256:")  # the fingerprint of the base (tests/test_lora.py)
    assert saved_config == {"rank": 4, "alpha": 6, "dim": 32, "targets": ["output", "w2", "wk", "wq"],
                            "scaling": "standard", "init": "standard"}


def test_a_safetensors_model_keeps_its_tie(model_and_adapter, tmp_path):
    """Guards against the tied embedding coming back as two matrices (safetensors stores both keys as
    copies; loading must tie them again, or training would update one and not the other)."""
    model, tok = model_and_adapter
    save_model(model, tmp_path / "m.safetensors", meta=checkpoint_meta("full_sft", DEMO_TOKENIZER, tok))
    loaded = load_checkpoint(tmp_path / "m.safetensors").model
    assert loaded.tok_embeddings.weight is loaded.output.weight
