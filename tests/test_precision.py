"""bfloat16 on the CPU: where it is chosen, that training under it changes nothing about
the files, and that decoding with bfloat16 weights gives float32's answers.

Whether this machine has native bfloat16 must not decide what these tests check, so the CPU's
answer (plumbing.device.cpu_has_native_bfloat16) is mocked both ways; bfloat16 arithmetic itself runs
on any CPU (emulated where it is not native), only more slowly.
"""
import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import MINIMIND2, ROOT, fixture_model, small_model

import eval_model
import serve_openai_api
import train_pretrain
import training
from plumbing import device as device_module
from plumbing.device import DTYPES, cpu_flags, cpu_has_native_bfloat16, pick_dtype
from plumbing.errors import UserError
from formats.loader import load_checkpoint
from speed import matvec
from speed.matvec import linear
from model.model_lora import load_lora
from plumbing import runtime as runtime_module

CPU = torch.device("cpu")


@pytest.fixture
def native(monkeypatch):
    """native(True) / native(False): what the CPU is said to have, for pick_dtype and everything after it."""
    def say(has_it: bool):
        monkeypatch.setattr(device_module, "cpu_has_native_bfloat16", lambda cpuinfo="/proc/cpuinfo": has_it)
    return say


# ------------------------------------------------------------------------------------------------
# Which precision


@pytest.mark.parametrize("has_it", [True, False])
def test_bfloat16_only_where_the_cpu_has_it_and_auto_stays_float32(native, has_it):
    """Guards against bfloat16 autocast on a CPU that only emulates it (slower than float32, and less
    precise), against `auto` (the default) moving the CPU demo to bfloat16 unasked, and against
    float16 autocast on a CPU (it is for CUDA, with its loss scaler)."""
    native(has_it)
    assert pick_dtype(CPU, "bfloat16") == ((torch.bfloat16, "") if has_it else
                                           (torch.float32, "bfloat16 asked, but this CPU has no native bfloat16 "
                                                           "(avx512_bf16/amx_bf16)"))
    dtype, why = pick_dtype(CPU, "auto")
    assert dtype == torch.float32 and why.startswith("auto") and ("--dtype bfloat16 would use" in why) == has_it
    assert pick_dtype(CPU, "float32") == (torch.float32, "")
    assert pick_dtype(CPU, "float16")[0] == torch.float32
    with pytest.raises(UserError, match="--dtype 'half'"):
        pick_dtype(CPU, "half")


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse2 avx512f avx512bw avx512_bf16 amx_tile", True),  # Cooper Lake, Zen 4: AVX512-BF16
    ("fpu avx512f amx_bf16 amx_tile", True),                    # AMX alone
    ("fpu sse2 avx2 avx512f avx512bw avx512vl", False),         # AVX-512 without bfloat16 arithmetic
    ("fpu avx512_bf16x", False),                                # a longer flag containing the name is not it
])
def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path, flags, expected):
    """Guards against taking "has AVX-512" for "has bfloat16" (oneDNN emulates bfloat16 on any AVX-512
    CPU), a substring match on the flags line, and a crash where /proc/cpuinfo does not exist."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_native_bfloat16(str(cpuinfo)) is expected
    assert cpu_has_native_bfloat16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("has_it", [True, False])
def test_the_runtime_autocasts_prints_and_records_the_choice(native, has_it):
    """Guards against a choice made but not applied (autocast still off), not shown in the run's
    summary line, or not recorded in the resume plan (then a resume could change it unnoticed)."""
    native(has_it)
    with runtime_module.runtime("cpu", "bfloat16") as rt:
        assert rt.autocast_dtype == (torch.bfloat16 if has_it else None)
        with rt.autocast():
            assert (torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16) == has_it
        assert str(rt) == ("cpu, bfloat16 autocast, 1 process" if has_it else
                           "cpu, float32 (bfloat16 asked, but this CPU has no native bfloat16 (avx512_bf16/amx_bf16)), "
                           "1 process")
    with runtime_module.runtime("cpu", "auto") as rt:
        assert rt.autocast_dtype is None and str(rt).startswith("cpu, float32 (auto")


def test_every_script_takes_one_dtype_flag():
    """Guards against --dtype meaning one thing in training and another in evaluation or the server,
    and against a default that would move the CPU demo off float32."""
    for module in (train_pretrain, eval_model, serve_openai_api):
        action = next(a for a in module.build_parser()._actions if "--dtype" in a.option_strings)
        assert action.default == "auto" and tuple(action.choices) == DTYPES


# ------------------------------------------------------------------------------------------------
# Training under bfloat16 autocast


def pretrain_tiny(out, data, *flags):
    """A tiny pretraining run (2 layers, dim 32, 8 optimizer steps) -> RunResult."""
    return train_pretrain.main(["--dim", "32", "--n_layers", "2", "--n_heads", "4", "--n_kv_heads", "2",
                                "--device", "cpu", "--max_seq_len", "64", "--batch_size", "8", "--val_samples", "8",
                                "--epochs", "1", "--save_interval", "4", "--log_interval", "2", "--eval_interval", "4",
                                "--learning_rate", "3e-3", "--warmup_iters", "2",
                                "--out_dir", str(out), "--data_path", data, *flags])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    lines = (ROOT / "dataset" / "pretrain_demo.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:72]
    path = tmp_path_factory.mktemp("data") / "pretrain.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


def tensor_format(path) -> dict:
    """{key: (dtype, shape)} of a saved state dict."""
    return {k: (v.dtype, tuple(v.shape)) for k, v in torch.load(path, weights_only=True).items()}


def test_bfloat16_training_writes_the_float32_files_and_resume_refuses_a_change(native, data, tmp_path, monkeypatch, capsys):
    """Guards against bfloat16 reaching the files (a checkpoint saved in bfloat16 would be a new format
    that MiniMind2 and every loader here read differently), against optimizer state or master weights
    kept in bfloat16, against a loss that bfloat16 autocast moves far from float32's, and against a
    --resume that continues in another precision than the run started in."""
    native(True)
    float32 = pretrain_tiny(tmp_path / "f32", data, "--dtype", "float32")
    bf16 = pretrain_tiny(tmp_path / "bf16", data, "--dtype", "bfloat16")
    assert "cpu, bfloat16 autocast, 1 process" in capsys.readouterr().out
    # the same files, tensor for tensor: float32, the same keys and shapes; the same sidecar config
    assert tensor_format(bf16.weights) == tensor_format(float32.weights)
    assert all(dtype == torch.float32 for dtype, _ in tensor_format(bf16.weights).values())
    sidecar = lambda run_: json.loads(Path(run_.weights).with_suffix(".json").read_text())["config"]  # noqa: E731
    assert sidecar(bf16) == sidecar(float32)
    # loss parity: 8 steps of a tiny model under bfloat16 autocast land where float32 lands
    assert bf16.final_loss == pytest.approx(float32.final_loss, rel=0.02)
    assert bf16.val_loss == pytest.approx(float32.val_loss, rel=0.02)

    # An interrupted bfloat16 run: its resume file holds float32 weights and moments, and its precision.
    real_get_lr = training.get_lr
    monkeypatch.setattr(training, "get_lr", lambda step, *a: (_ for _ in ()).throw(KeyboardInterrupt) if step == 5
                        else real_get_lr(step, *a))
    with pytest.raises(KeyboardInterrupt):
        pretrain_tiny(tmp_path / "cut", data, "--dtype", "bfloat16")
    monkeypatch.setattr(training, "get_lr", real_get_lr)
    state = torch.load(tmp_path / "cut" / "pretrain_32_resume.pth", weights_only=True)
    assert state["plan"]["dtype"] == "bfloat16" and state["step"] == 4
    assert all(t.dtype == torch.float32 for t in state["trainable"].values())
    moments = [t for s in state["optimizer"]["state"].values() for name, t in s.items() if name.startswith("exp_avg")]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    with pytest.raises(UserError, match="dtype=bfloat16 then, float32 now"):
        pretrain_tiny(tmp_path / "cut", data, "--dtype", "float32", "--resume")
    native(False)  # the same flags on a machine without native bfloat16 would continue in float32: refused
    with pytest.raises(UserError, match="dtype=bfloat16 then, float32 now"):
        pretrain_tiny(tmp_path / "cut", data, "--dtype", "bfloat16", "--resume")
    native(True)
    assert pretrain_tiny(tmp_path / "cut", data, "--dtype", "bfloat16", "--resume").final_loss == pytest.approx(bf16.final_loss, rel=1e-3)


# ------------------------------------------------------------------------------------------------
# Decoding with bfloat16 weights


def test_bfloat16_weights_decode_float32s_greedy_tokens():
    """Guards against a bfloat16 decode that goes wrong rather than merely rounds (the RoPE table cast
    too, a KV cache in another dtype than its keys, logits compared in bfloat16): on MiniMind2's
    fixture model, bfloat16 weights give the greedy tokens MiniMind2's float32 code gave for the first
    10 steps, and logits within 0.03 of float32's (they span +-2.3; bfloat16 keeps 8 significant bits,
    and measured 0.017). Step 11 of the fixture is a near-tie (float32's two best logits are 0.01
    apart), where a rounding may pick either."""
    golden = torch.load(MINIMIND2 / "golden.pth", weights_only=True)
    model = fixture_model().cast_weights(torch.bfloat16)
    assert model.output.weight.dtype == torch.bfloat16 and model.rope.dtype == torch.float32
    assert model.tok_embeddings.weight is model.output.weight  # still tied
    prompt, want = golden["greedy_prompt"], golden["greedy_continuation"]
    out = model.generate(prompt, max_new_tokens=10, temperature=0, eos_token_id=-1)
    assert torch.equal(out[:, prompt.shape[1]:], want[:, :10])
    with torch.inference_mode():
        logits = model(golden["input_ids"]).logits
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), golden["logits"], atol=0.03, rtol=0)


@pytest.mark.parametrize("mv_is_faster", [True, False])
def test_a_single_bfloat16_row_takes_the_matrix_vector_product_where_it_is_faster(monkeypatch, mv_is_faster):
    """Guards against the decoding shortcut computing something other than F.linear (a transposed
    weight, a lost batch dimension), being taken where it must not (float32, several rows), or taken on
    a CPU where torch.mv is the slower kernel (AMD Zen 4: 1.15-1.3x slower decoding): there both the
    product and the model stay F.linear's."""
    monkeypatch.setattr(matvec, "MV_IS_FASTER", mv_is_faster)
    torch.manual_seed(0)
    w, x = torch.randn(48, 32), torch.randn(1, 1, 32)
    want = F.linear(x, w)
    got = linear(x.bfloat16(), w.bfloat16())
    assert got.shape == (1, 1, 48) and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.02)  # bfloat16 inputs: ~3 digits
    assert torch.equal(got, torch.mv(w.bfloat16(), x.reshape(-1).bfloat16()).view(1, 1, 48) if mv_is_faster
                       else F.linear(x.bfloat16(), w.bfloat16()))
    assert torch.equal(linear(x, w), want)  # float32: F.linear itself
    rows = torch.randn(3, 1, 32).bfloat16()
    assert torch.equal(linear(rows, w.bfloat16()), F.linear(rows, w.bfloat16()))
    model = matvec.prepare_for_decoding(torch.nn.Sequential(torch.nn.Linear(32, 48, bias=False)), torch.device("cpu"),
                                        torch.bfloat16)
    assert isinstance(model[0], matvec.MatVecLinear) is mv_is_faster


@pytest.mark.parametrize("flags, expected", [("fpu avx512f avx512_bf16 amx_bf16 amx_tile", True),  # Sapphire Rapids
                                             ("fpu avx512f avx512bw avx512_bf16", False)])        # AMD Zen 4
def test_the_matrix_vector_kernel_is_chosen_by_the_cpus_flags(tmp_path, flags, expected):
    """Guards the rule speed/matvec.py decides by: torch.mv where the CPU has AMX (measured faster there), not on a
    CPU with AVX512-BF16 alone (measured slower), and the flags read as whole words."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert matvec.mv_is_faster(cpu_flags(str(cpuinfo))) is expected
    assert cpu_flags(str(tmp_path / "missing")) == set()


def test_load_checkpoint_casts_the_weights_and_never_the_file(tmp_path):
    """Guards against a dtype converted in each script instead of the one loader, a checkpoint file
    touched by loading it in bfloat16, and an adapter loaded later in another dtype than the base."""
    from formats.checkpoint import save_model
    from formats.loader import checkpoint_meta
    from model.model_lora import apply_lora, save_lora
    from model.tokenizer import Tokenizer

    tok = Tokenizer.load(MINIMIND2 / "tokenizer.json")
    model = small_model(tok.vocab_size, max_seq_len=64)
    path = tmp_path / "full_sft_32.pth"
    save_model(model, path, meta=checkpoint_meta("full_sft", MINIMIND2 / "tokenizer.json", tok))
    apply_lora(model, rank=4)
    save_lora(model, tmp_path / "adapter.pth")
    before = hashlib.sha256(path.read_bytes()).hexdigest()

    loaded = load_checkpoint(path, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16} and loaded.model.rope.dtype == torch.float32
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    load_lora(loaded.model, tmp_path / "adapter.pth")
    assert loaded.model.layers[0].attention.wq.lora.A.weight.dtype == torch.bfloat16
    ids = torch.tensor([tok.encode("hello world")])
    assert loaded.model.generate(ids, max_new_tokens=4, temperature=0).shape == (1, ids.shape[1] + 4)
    assert {p.dtype for p in load_checkpoint(path).model.parameters()} == {torch.float32}  # the default: as today
