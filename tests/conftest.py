"""What the test files share: where the fixtures are, the small models they build, and one setting.

The builders are plain functions, imported by name (`from conftest import tiny_model`): pytest puts
tests/ on sys.path when it loads this file, as it does for any conftest.py outside a package. Each
builds a fresh object on every call, so a test may change what it gets without touching another's.
"""
import json
from pathlib import Path

import pytest
import torch

from model.LMConfig import LMConfig
from model.model import MiniMindLM
from model.model_lora import LoRALinear
from plumbing import errors

ROOT = Path(__file__).resolve().parent.parent
# Made by MiniMind2's own code (each folder's README says how): a tiny model's config and weights, the
# logits and greedy tokens it gave (golden.pth), and for the dense one a LoRA adapter and a tokenizer.
MINIMIND2 = ROOT / "tests" / "fixtures" / "minimind2"
MINIMIND2_MOE = ROOT / "tests" / "fixtures" / "minimind2_moe"
# The committed tokenizer the demo trains with (2,048 tokens), which the scripts use by default.
DEMO_TOKENIZER = ROOT / "model" / "demo_tokenizer"


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test uses tiny models, whose matmuls gain nothing from a second thread; and on a busy
    2-core machine two OpenMP threads waiting for each other were measured up to 30x slower than one.
    Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------
# Models


def fixture_config(moe=False, **overrides) -> LMConfig:
    """The config of MiniMind2's golden fixture model (tests/fixtures/minimind2/model_config.json): dim 64,
    2 layers, 4 heads, 2 kv heads, vocab 320, hidden_dim 192, max_seq_len 128. moe=True: the MoE fixture's,
    the same shape with every FFN 4 routed experts (top 2) and a shared one. overrides change fields."""
    folder = MINIMIND2_MOE if moe else MINIMIND2
    return LMConfig.from_dict({**json.loads((folder / "model_config.json").read_text()), **overrides})


def fixture_model(moe=False, **overrides) -> MiniMindLM:
    """MiniMind2's golden fixture model with MiniMind2's own weights, in eval mode: the shape and weights the
    golden logits, greedy tokens and LoRA adapter in the fixture folder were made with, so it is the model
    every known-answer test runs. overrides may change what leaves the weights' shapes alone (flash_attn)."""
    model = MiniMindLM(fixture_config(moe, **overrides)).eval()
    folder = MINIMIND2_MOE if moe else MINIMIND2
    model.load_state_dict(torch.load(folder / "model.pth", weights_only=True), strict=True)
    return model


def tiny_model(seed=0, **overrides) -> MiniMindLM:
    """A random model (dim 64, 2 layers, 4 heads, 2 kv heads, vocab 97), in eval mode, for tests that compare
    two ways of computing one thing. Its matrices are drawn with std 0.15 rather than the default 0.02, so
    logits differ clearly between tokens and a wrong token or position cannot hide inside the tolerance.
    use_moe=True makes every FFN a mixture of experts (LMConfig's MiniMind2 defaults)."""
    torch.manual_seed(seed)
    config = LMConfig(**{"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 97, **overrides})
    model = MiniMindLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    return model


def small_model(vocab_size, seed=0, **overrides) -> MiniMindLM:
    """A random model with the default init (dim 32, 2 layers, 4 heads, 2 kv heads), to save as a checkpoint
    that scripts and loaders read in milliseconds: the shape the script tests pass as --dim 32 --n_layers 2
    --n_heads 4 --n_kv_heads 2 (hence the files' `_32` suffix). vocab_size: its tokenizer's."""
    torch.manual_seed(seed)
    return MiniMindLM(LMConfig(**{"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": vocab_size,
                                  **overrides}))


# ------------------------------------------------------------------------------------------------
# Data, adapters and outputs


def first_lines(name, n, folder) -> str:
    """The first n lines of dataset/{name} copied into folder -> the copy's path: few samples, and the
    dataset's token cache is written beside the copy (in tmp_path), never in the repository."""
    lines = (ROOT / "dataset" / name).read_text(encoding="utf-8").splitlines(keepends=True)[:n]
    path = Path(folder) / name
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


@torch.no_grad()
def fill_B(model, seed: int, std: float = 0.5) -> None:
    """Give every LoRA adapter a random B, as training would, so the adapter changes the output (a fresh
    adapter's B is zero, which would make every adapted-vs-plain comparison pass trivially)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.lora.B.weight.normal_(0.0, std, generator=gen)


def logits_of(model, ids) -> torch.Tensor:
    """The model's logits for ids, without building a graph."""
    with torch.no_grad():
        return model(ids).logits


# ------------------------------------------------------------------------------------------------
# Command-line errors


def one_line_error(main, argv, capsys, run_main=errors.run_main) -> str:
    """Run a script's main as its __main__ does (run_main; a training script passes training.run_main),
    which must fail: exit code 2, no traceback, and one error line "PROG: error: ...", the last on stderr
    (notes such as "tokenizing ..." may come before it) -> that line's message."""
    capsys.readouterr()  # drop what earlier runs printed
    assert run_main(main, argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and ": error: " in lines[-1], err
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], err
    return lines[-1].split(": error: ", 1)[1]
