"""Tests for training.py and the three training scripts.

Tiny models (dim 32 or 64, 2 layers) on the first few hundred lines of the demo data, on the CPU:
the stages chain and learn, LoRA touches nothing but its adapters, an interrupted run resumes to
exactly the weights of an uninterrupted one (and refuses to resume under changed settings), two
processes train under torchrun, and user mistakes end in one clear line. Every script's main(argv)
runs in-process and writes only under tmp_path.
"""
import contextlib
import dataclasses
import hashlib
import importlib
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from conftest import DEMO_TOKENIZER, ROOT, first_lines, one_line_error, small_model

import train_full_sft
import train_lora
import train_pretrain
import training
from dataset.lm_dataset import PretrainDataset, SFTDataset
from formats.checkpoint import load_model, save_model
from plumbing.errors import UserError
from formats.loader import checkpoint_meta, path_for_sidecar, path_from_sidecar
from model.model_lora import load_lora
from model.tokenizer import Tokenizer
from plumbing import flags
from plumbing import progress
from plumbing import resume
from plumbing import runtime as runtime_module

SHAPE = ["--dim", "32", "--n_layers", "2", "--n_heads", "4", "--n_kv_heads", "2"]  # fast, for the mechanics
LEARN = ["--dim", "64", "--n_layers", "2", "--n_heads", "4", "--n_kv_heads", "2"]  # learns visibly in seconds
FAST = ["--device", "cpu", "--max_seq_len", "64", "--batch_size", "8", "--log_interval", "5", "--val_samples", "16"]


def one_line_error_of_training(main, argv, capsys) -> str:
    """conftest.one_line_error through training.run_main, whose Ctrl-C says how to resume."""
    return one_line_error(main, argv, capsys, training.run_main)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def first_and_last_loss(metrics_path):
    records = [r for r in progress.read_metrics(metrics_path) if "loss" in r]
    return records[0]["loss"], records[-1]["loss"]


@contextlib.contextmanager
def working_directory(path):
    """Run the body with `path` as the current directory (as a user running a script from there)."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return {
        "pretrain": first_lines("pretrain_demo.jsonl", 240, folder),
        "sft": first_lines("sft_demo.jsonl", 320, folder),
        "lora": first_lines("lora_identity.jsonl", 200, folder),
    }


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, data):
    """pretrain -> full SFT -> LoRA, once, in one out_dir; each stage finds the previous one's file.

    Pretraining runs in the repository with a relative --tokenizer, as a user types it; the later
    stages run from another directory and must still find that tokenizer through the sidecar."""
    out = str(tmp_path_factory.mktemp("out"))
    with working_directory(ROOT):
        pre = train_pretrain.main([*LEARN, *FAST, "--out_dir", out, "--tokenizer", "model/demo_tokenizer",
                                   "--data_path", data["pretrain"], "--epochs", "4", "--learning_rate", "3e-3",
                                   "--warmup_iters", "5"])
    with working_directory(out):
        sft = train_full_sft.main([*FAST, "--max_seq_len", "96", "--out_dir", out, "--dim", "64",
                                   "--data_path", data["sft"], "--epochs", "2", "--learning_rate", "3e-3",
                                   "--warmup_iters", "5"])
        sft_hash = sha256(sft.weights)
        lora = train_lora.main([*FAST, "--max_seq_len", "128", "--out_dir", out, "--dim", "64",
                                "--lora_name", "lora_identity", "--data_path", data["lora"], "--epochs", "2",
                                "--learning_rate", "5e-3", "--warmup_iters", "3", "--lora_rank", "8",
                                "--lora_plus_ratio", "16"])
    return {"out": out, "pretrain": pre, "sft": sft, "lora": lora, "sft_hash": sft_hash}


# ------------------------------------------------------------------------------------------------
# The pieces


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine_to_the_minimum():
    """Guards against MiniMind2's schedule, which ignores --warmup_iters and starts at 1.1 x the
    learning rate, and against off-by-one warmups that start at 0 (a wasted step) or overshoot."""
    lr = [training.get_lr(s, 100, 1.0, 10) for s in range(101)]
    assert lr[0] == pytest.approx(0.1) and lr[4] == pytest.approx(0.5)  # linear from ~0 ...
    assert lr[9] == pytest.approx(1.0) and lr[10] == pytest.approx(1.0)  # ... to the peak, never above it
    assert max(lr) == pytest.approx(1.0)
    assert lr[55] == pytest.approx(0.55)  # half way through the cosine: (max + min) / 2
    assert lr[100] == pytest.approx(0.1)  # down to min_lr_ratio x learning_rate at step total_steps ...
    assert lr[99] == pytest.approx(0.1003, abs=1e-4)  # ... so the last step (99) is a hair above it
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))  # monotone decay after warmup
    assert training.get_lr(0, 100, 1.0, 0) == pytest.approx(1.0)  # no warmup: start at the peak


def test_masked_cross_entropy_counts_only_unmasked_positions():
    """Guards against SFT training on the prompt (mask ignored) or a loss diluted by the masked
    positions (dividing by all positions instead of the trained ones), and 0/0 on an empty mask."""
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 0, 0, 0, 0]])
    per_token = torch.nn.functional.cross_entropy(logits.view(-1, 11), targets.view(-1), reduction="none").view(2, 5)
    expected = per_token[mask.bool()].mean()
    assert torch.allclose(training.masked_cross_entropy(logits, targets, mask), expected)
    changed = logits.clone()
    changed[~mask.bool()] = 100.0  # whatever the model says at masked positions does not count
    assert torch.allclose(training.masked_cross_entropy(changed, targets, mask), expected)
    assert training.masked_cross_entropy(logits, targets, torch.zeros_like(mask)).item() == 0.0


def test_trimming_padding_columns_changes_neither_loss_nor_gradients():
    """Guards against a cut one column too early (dropping a trained target) or a cut that is not
    exact: the columns after the last trained position may go only because nothing depends on them."""
    model = small_model(50)
    T, pad = 200, 0
    samples = []
    for last in (30, 70):  # the batch's last trained position is 70 -> 80 columns kept (rounded up to 16s)
        X = torch.randint(1, 50, (T,))
        X[last + 3:] = pad
        mask = torch.zeros(T, dtype=torch.long)
        mask[5:last + 1] = 1
        samples.append((X, torch.roll(X, -1), mask))

    def loss_and_grads(batch):
        model.zero_grad()
        X, Y, mask = batch
        loss = training.masked_cross_entropy(model(X).logits, Y, mask)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    trimmed = training.collate_trimmed(samples)
    assert trimmed[0].shape == (2, 80)  # the batch's last trained position is 70 -> 71 columns, rounded up to 16s
    full_loss, full_grads = loss_and_grads(tuple(torch.stack(t) for t in zip(*samples)))
    cut_loss, cut_grads = loss_and_grads(trimmed)
    assert torch.allclose(full_loss, cut_loss, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(full_grads, cut_grads))
    samples[1][2][79] = 1  # a target in the last kept column ...
    assert training.collate_trimmed(samples)[0].shape == (2, 80)
    samples[1][2][80] = 1  # ... and one just past it: the cut moves to keep it
    assert training.collate_trimmed(samples)[0].shape == (2, 96)


def test_step_batches_see_every_sample_once_per_epoch_and_resume_at_any_step():
    """Guards against a resumed run that restarts its epoch (or reshuffles it) instead of continuing
    the same order, and against an epoch that drops or repeats samples."""
    dataset = [(torch.tensor([i]), torch.tensor([i]), torch.tensor([1])) for i in range(10)]
    rt = runtime_module.Runtime(torch.device("cpu"))
    data = training.StepBatches(dataset, batch_size=4, accumulation_steps=2, epochs=2, seed=0, rt=rt)
    assert (data.batches_per_epoch, data.total_steps) == (3, 3)  # 4+4+2 samples per epoch, 6 micro-batches

    def order(start):
        return [[X.tolist() for X, _, _ in group] for _, _, group in data.steps(start)]

    full = order(0)
    samples = [i for group in full for X in group for i in sum(X, [])]
    assert sorted(samples[:10]) == list(range(10)) and sorted(samples[10:]) == list(range(10))
    assert samples[:10] != samples[10:]  # each epoch its own shuffle
    assert samples[:10] != list(range(10))
    assert order(1) == full[1:] and order(2) == full[2:]  # resuming at step s = the same batches
    assert [epoch for _, epoch, _ in data.steps(0)] == [0, 0, 1]  # step 1 spans the epoch boundary


def test_loss_curve_svg_is_well_formed_and_plots_every_point(tmp_path):
    """Guards against a hand-written SVG that browsers refuse (bad XML) or that drops or flips points."""
    records = [{"step": s, "loss": 8.0 / s} for s in range(1, 21)]
    path = tmp_path / "loss.svg"
    progress.write_loss_svg(records, path, "a & b <test>")
    root = ET.parse(path).getroot()
    lines = [e for e in root.iter("{http://www.w3.org/2000/svg}polyline") if e.get("stroke") == "#1f77b4"]
    points = [tuple(map(float, p.split(","))) for p in lines[0].get("points").split()]
    assert len(points) == 20
    xs, ys = zip(*points)
    assert list(xs) == sorted(xs) and list(ys) == sorted(ys)  # loss falls -> y grows (SVG y points down)
    progress.write_loss_svg([], tmp_path / "empty.svg", "no data")  # a run with no log line yet
    ET.parse(tmp_path / "empty.svg")


def test_the_loss_svg_draws_training_and_validation_with_a_legend(tmp_path):
    """Guards against validation lines in the metrics log that never reach the picture (or reach it as a
    second, unlabelled line a reader takes for the training loss)."""
    records = [{"step": s, "loss": 8.0 / s} for s in range(1, 21)] + [{"step": s, "val_loss": 9.0 / (s + 1)} for s in (0, 10, 20)]
    path = tmp_path / "loss.svg"
    progress.write_loss_svg(records, path, "run")
    root = ET.parse(path).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    curves = [e for e in root.iter(f"{ns}polyline") if e.get("stroke") not in ("#888", None)]
    assert [len(c.get("points").split()) for c in curves] == [20, 3]  # every training point, every validation one
    assert curves[0].get("stroke") != curves[1].get("stroke")
    assert {"training", "validation"} <= {t.text for t in root.iter(f"{ns}text")}


def test_a_failed_metrics_or_svg_write_keeps_the_previous_file(tmp_path, monkeypatch):
    """Guards against writing the loss curve and the metrics log in place: a write that fails part
    way (a full disk; here the fsync that makes the bytes durable fails) must leave the previous file
    whole and no temporary file beside it."""
    svg, metrics = tmp_path / "x_loss.svg", tmp_path / "x_metrics.jsonl"
    svg.write_text("previous")
    metrics.write_text('{"step": 1, "loss": 2.0}\n')

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        progress.write_loss_svg([{"step": 1, "loss": 1.0}], svg, "title")
    with pytest.raises(OSError, match="No space left"):  # a fresh run starts a fresh metrics log
        progress.Progress(str(metrics), 10, 0, runtime_module.Runtime(torch.device("cpu")))
    assert svg.read_text() == "previous" and metrics.read_text() == '{"step": 1, "loss": 2.0}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_loss.svg", "x_metrics.jsonl"]


@pytest.mark.parametrize("module", ["train_pretrain", "train_full_sft", "train_lora", "train_tokenizer",
                                    "dataset.show_sample", "dataset.make_demo_data"])
def test_every_flag_has_help_and_none_is_type_bool(module):
    """Guards against MiniMind's type=bool flags (where "False" parses as True) and undocumented flags."""
    for action in importlib.import_module(module).build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help"
        assert action.type is not bool, f"{action.option_strings} uses type=bool"


def test_sidecar_paths_resolve_from_any_directory(tmp_path):
    """Guards against a sidecar recording the tokenizer relative to the directory the run started in
    (a later stage started elsewhere cannot find it) or recording this machine's absolute path for a
    file inside the repository (which then ends up in files people share)."""
    inside = ROOT / "model" / "demo_tokenizer"
    with working_directory(ROOT / "model"):
        assert path_for_sidecar("demo_tokenizer") == "model/demo_tokenizer"
    with working_directory(tmp_path):
        assert path_for_sidecar(inside) == "model/demo_tokenizer"
        assert Path(path_from_sidecar("model/demo_tokenizer")) == inside
        assert path_for_sidecar("tok") == str(tmp_path / "tok")  # outside the repository: absolute
        assert path_from_sidecar(str(tmp_path / "tok")) == str(tmp_path / "tok")
    tokenizer = Tokenizer.load(inside)
    assert checkpoint_meta("full_sft", inside, tokenizer, base=str(tmp_path / "b.pth")) == {
        "stage": "full_sft", "tokenizer": "model/demo_tokenizer", "tokenizer_sha256": tokenizer.fingerprint(),
        "base": str(tmp_path / "b.pth")}


# ------------------------------------------------------------------------------------------------
# The stages


def test_pretrain_sft_lora_chain_and_each_reaches_its_loss_target(pipeline, data):
    """Guards against a stage that does not learn (a broken loss, mask or schedule) and against
    stages that do not find each other's files (names, sidecar config and tokenizer)."""
    out = pipeline["out"]
    # Measured, first log line -> last: pretrain 7.5 -> 4.5 (ln 2048 = 7.6 is a uniform guess), SFT 6.7 -> 3.5.
    first, last = first_and_last_loss(f"{out}/pretrain_64_metrics.jsonl")
    assert last < 0.7 * first and last < 5.0, (first, last)
    first, last = first_and_last_loss(f"{out}/full_sft_64_metrics.jsonl")
    assert last < 0.7 * first and last < 4.0, (first, last)
    # LoRA, on all of its data: measured 6.15 for the SFT model alone, 5.0 with the adapter. Only
    # wq/wo of a dim-64 model adapt, and the data mixes the new identity with world questions.
    base, _ = load_model(pipeline["sft"].weights)
    tokenizer = Tokenizer.load(DEMO_TOKENIZER)
    dataset = SFTDataset(data["lora"], tokenizer, max_length=128)
    X, Y, mask = (torch.stack(t) for t in zip(*(dataset[i] for i in range(len(dataset)))))
    with torch.no_grad():
        before = training.masked_cross_entropy(base.eval()(X).logits, Y, mask).item()
        after = training.masked_cross_entropy(pipeline["lora"].model.eval()(X).logits, Y, mask).item()
    assert after < 0.88 * before, (before, after)

    model, meta = load_model(f"{out}/full_sft_64.pth")  # config and tokenizer from the sidecar
    assert (model.config.dim, model.config.n_layers, meta["stage"]) == (64, 2, "full_sft")
    assert meta["tokenizer"] == "model/demo_tokenizer"  # relative to the repository: no machine path
    assert not any(Path(out).glob("*_resume.pth"))  # finished runs leave nothing to resume
    for name in ("pretrain_64", "full_sft_64", "lora_identity_64"):
        ET.parse(f"{out}/{name}_loss.svg")
    assert os.listdir(f"{out}/lora") == ["lora_identity_64.pth"]  # out/lora holds adapters only


def test_a_mixture_of_experts_trains_through_every_stage_with_one_flag(tmp_path, data):
    """Guards against an MoE whose load-balancing loss never reaches the optimizer (or is hidden inside
    the logged task loss), and against stages that do not find each other's MoE files (MiniMind2 names
    them ..._moe.pth): pretraining, SFT and LoRA each run with --use_moe alone."""
    out = str(tmp_path / "out")
    common = [*FAST, "--out_dir", out, "--epochs", "1"]
    pre = train_pretrain.main([*SHAPE, *common, "--use_moe", "--tokenizer", str(DEMO_TOKENIZER), "--data_path", data["pretrain"]])
    assert pre.weights == f"{out}/pretrain_32_moe.pth" and pre.model.config.use_moe
    records = [r for r in progress.read_metrics(f"{out}/pretrain_32_moe_metrics.jsonl") if "loss" in r]
    # the aux loss is logged on its own; a balanced router sits at alpha x layers = 0.1 x 2, an unbalanced one above
    assert all(0.15 < r["aux_loss"] < 1.0 for r in records), records
    # ... and it is trained on: without it (alpha 0) the routers end up elsewhere, everything else equal
    real_config = flags.model_config
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flags, "model_config", lambda *a, **k: dataclasses.replace(real_config(*a, **k), aux_loss_alpha=0.0))
        unbalanced = train_pretrain.main([*SHAPE, *common, "--out_dir", str(tmp_path / "alpha0"), "--use_moe",
                                          "--tokenizer", str(DEMO_TOKENIZER), "--data_path", data["pretrain"]])
    gate = "layers.0.feed_forward.gate.weight"
    assert not torch.equal(pre.model.state_dict()[gate], unbalanced.model.state_dict()[gate])
    sft = train_full_sft.main([*common, "--dim", "32", "--use_moe", "--data_path", data["sft"]])
    assert sft.weights == f"{out}/full_sft_32_moe.pth"
    lora = train_lora.main([*common, "--dim", "32", "--use_moe", "--data_path", data["lora"], "--lora_name", "lora_moe"])
    assert lora.weights == f"{out}/lora/lora_moe_32_moe.pth"  # never on a dense model's adapter of the same width
    adapted = {name.rsplit(".lora.", 1)[0] for name in torch.load(lora.weights, weights_only=True) if ".lora." in name}
    assert "layers.0.feed_forward.experts.3.w2" in adapted and "layers.0.feed_forward.shared_experts.w1" in adapted


def test_lora_run_changes_only_adapter_weights(pipeline):
    """Guards against LoRA training that leaks into the base model (a parameter left unfrozen, an
    optimizer given every parameter, weight decay on frozen weights) or saves more than the adapter."""
    trained = pipeline["lora"].model
    base, _ = load_model(pipeline["sft"].weights)
    base_state, trained_state = base.state_dict(), trained.state_dict()
    for key, value in base_state.items():
        assert torch.equal(trained_state[key], value), f"{key} changed during LoRA training"
    assert sha256(pipeline["sft"].weights) == pipeline["sft_hash"]  # the file it started from, untouched

    adapter = torch.load(pipeline["lora"].weights, weights_only=True)
    tensors = {k: v for k, v in adapter.items() if k != "lora_config"}
    assert tensors and all(".lora." in k for k in tensors)
    assert all(k in trained_state for k in tensors)
    assert all(tensors[k].abs().sum() > 0 for k in tensors if k.endswith("B.weight"))  # B moved off its zero init
    load_lora(base, pipeline["lora"].weights)  # base + adapter file (which says its rank and targets) = the trained model
    X = torch.randint(0, base.config.vocab_size, (1, 16))
    trained.eval()
    assert torch.allclose(base(X).logits, trained(X).logits, atol=1e-6)


def test_init_lora_trains_an_existing_adapter_further(pipeline, data, tmp_path, capsys):
    """Guards against --init_lora starting from a fresh adapter anyway (an imported or earlier adapter
    then silently lost) or quietly changing its shape: the run's first validation loss is the given
    adapter's last, and a --lora_rank other than the file's is refused."""
    first = pipeline["lora"]
    argv = [*FAST, "--max_seq_len", "128", "--out_dir", str(tmp_path), "--base", pipeline["sft"].weights,
            "--lora_name", "again", "--data_path", data["lora"], "--epochs", "1", "--init_lora", first.weights]
    assert "--lora_rank 4 disagrees with" in one_line_error_of_training(train_lora.main, [*argv, "--lora_rank", "4"], capsys)
    again = train_lora.main([*argv, "--lora_rank", "8"])  # the file's own rank may be given
    start = next(r["val_loss"] for r in progress.read_metrics(tmp_path / "again_64_metrics.jsonl") if "val_loss" in r)
    assert start == pytest.approx(first.val_loss, rel=1e-5)
    assert again.val_loss < start


def resume_case(kind, out, data, sft_weights=None):
    """argv for a small run that spans two epochs with gradient accumulation (a step crosses the
    epoch boundary), takes a validation loss every 3 steps (which must not disturb the run) and, for
    LoRA, dropout (so the RNG state matters), LoRA+ (two param groups) and the tied embedding's
    adapter (`output`, read by the embedding too)."""
    common = [*FAST, "--out_dir", out, "--epochs", "2", "--accumulation_steps", "2", "--save_interval", "4",
              "--eval_interval", "3"]
    if kind.startswith("pretrain"):
        moe = ["--use_moe"] if kind == "pretrain_moe" else []  # the router's load-balancing loss must resume too
        return train_pretrain, [*common, *SHAPE, *moe, "--tokenizer", str(DEMO_TOKENIZER), "--data_path", data["pretrain"]]
    return train_lora, [*common, "--base", sft_weights, "--data_path", data["lora"], "--lora_name", "lora_identity",
                        "--max_seq_len", "128", "--lora_rank", "4", "--lora_targets", "wq,wo,output",
                        "--lora_dropout", "0.1", "--lora_plus_ratio", "4"]


def interrupt_at_step_6(script, argv, monkeypatch):
    """Run script.main(argv) and press Ctrl-C (KeyboardInterrupt) as step 6 begins."""
    real_get_lr = training.get_lr

    def ctrl_c_at_step_6(step, *args):
        if step == 6:  # two steps after the checkpoint at step 4: those two are lost and redone
            raise KeyboardInterrupt
        return real_get_lr(step, *args)

    monkeypatch.setattr(training, "get_lr", ctrl_c_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        script.main(argv)
    monkeypatch.setattr(training, "get_lr", real_get_lr)


def changed_base(sft_weights, folder):
    """A copy of the SFT checkpoint (same shape, same sidecar) with one weight nudged."""
    model, meta = load_model(sft_weights)
    with torch.no_grad():
        model.norm.weight[0] += 0.5
    path = str(Path(folder) / "other_base.pth")
    save_model(model, path, meta={k: v for k, v in meta.items() if k != "config"})
    return path


@pytest.mark.parametrize("kind", ["pretrain", "pretrain_moe", "lora"])
def test_interrupted_run_resumes_to_the_same_weights(kind, tmp_path, data, pipeline, monkeypatch, capsys):
    """Guards against a resume that loses or repeats data, restarts the schedule or the optimizer's
    moments, or replays different dropout noise: any of them changes the final weights. Also against
    a resume under changed settings (a raw size-mismatch traceback, or a silently different run), a
    fresh start that overwrites the unfinished run, and a finished run that leaves its resume file."""
    script, argv = resume_case(kind, str(tmp_path / "straight"), data, pipeline["sft"].weights)
    straight = script.main(argv)

    script, argv = resume_case(kind, str(tmp_path / "resumed"), data, pipeline["sft"].weights)
    interrupt_at_step_6(script, argv, monkeypatch)
    resume_file = tmp_path / "resumed" / {"pretrain": "pretrain_32_resume.pth", "pretrain_moe": "pretrain_32_moe_resume.pth",
                                          "lora": "lora_identity_64_resume.pth"}[kind]
    assert torch.load(resume_file, weights_only=True)["step"] == 4

    # Starting afresh would overwrite the unfinished run's progress.
    assert one_line_error_of_training(script.main, argv, capsys) == (f"{resume_file} holds an unfinished run: "
                                                         "pass --resume to continue it, or delete that file to start over")
    # Resuming with settings that differ is refused before anything is loaded, naming each of them.
    if kind.startswith("pretrain"):
        changes = ["--n_kv_heads", "4", "--batch_size", "4", "--max_seq_len", "32"]
        expected = ["model.n_kv_heads=2 then, 4 now", "batch_size=8 then, 4 now", "max_seq_len=64 then, 32 now",
                    "data=pretrain_demo.jsonl.pretrain.len64."]
    else:
        changes = ["--lora_rank", "8", "--base", changed_base(pipeline["sft"].weights, tmp_path), "--quantize_base", "nf4"]
        expected = ["lora.rank=4 then, 8 now", "base=sha256:", "lora.quantized_base=unrecorded then, nf4 now"]
    err = one_line_error_of_training(script.main, [*argv, "--resume", *changes], capsys)
    assert "belongs to a run with different settings" in err and all(e in err for e in expected), err

    resumed = script.main([*argv, "--resume"])
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bit-identical on the CPU
    assert straight.final_loss == pytest.approx(resumed.final_loss, abs=1e-6)
    metrics = {run: progress.read_metrics(tmp_path / run / Path(straight.weights).name.replace(".pth", "_metrics.jsonl"))
               for run in ("straight", "resumed")}
    for kind_of_line in ("loss", "val_loss"):
        steps = [r["step"] for r in metrics["resumed"] if kind_of_line in r]
        assert steps == sorted(set(steps))  # the metrics log kept no lines from the lost steps
    # validation every 3 steps changed nothing: the same held-out losses, before and after the interruption
    val_losses = {run: [(r["step"], r["val_loss"]) for r in records if "val_loss" in r] for run, records in metrics.items()}
    steps = {run: [step for step, _ in losses] for run, losses in val_losses.items()}
    values = {run: [value for _, value in losses] for run, losses in val_losses.items()}
    assert len(steps["straight"]) > 3 and steps["resumed"] == steps["straight"]
    assert values["resumed"] == pytest.approx(values["straight"], abs=1e-6)

    # Finished: the resume file is gone, and rerunning the stage (as run_demo.py does) just works.
    assert not resume_file.exists()
    assert "no resume state" in one_line_error_of_training(script.main, [*argv, "--resume"], capsys)
    if kind.startswith("pretrain"):
        assert script.main(argv).final_loss == pytest.approx(straight.final_loss, abs=1e-6)


def test_measuring_validation_loss_changes_nothing_and_measures_the_held_out_samples(tmp_path, data, pipeline):
    """Guards against a validation pass that disturbs training (dropout or data-loader seeds drawn from
    the global RNG, the model left in eval mode) and against a wrong number: measured every step or only
    at the ends, a LoRA run with dropout (whose noise comes from the global RNG, in training mode only)
    trains the same weights, and a run's last validation loss is the trained model's mean loss over
    exactly the held-out samples, which it never trained on."""
    argv = [*FAST, "--max_seq_len", "128", "--base", pipeline["sft"].weights, "--data_path", data["lora"],
            "--epochs", "1", "--lora_dropout", "0.1", "--lora_name", "v"]
    rarely = train_lora.main([*argv, "--out_dir", str(tmp_path / "a"), "--eval_interval", "1000"])
    often = train_lora.main([*argv, "--out_dir", str(tmp_path / "b"), "--eval_interval", "1"])
    for key, value in rarely.model.state_dict().items():
        assert torch.equal(value, often.model.state_dict()[key]), key
    records = progress.read_metrics(tmp_path / "b" / "v_64_metrics.jsonl")
    assert [r["step"] for r in records if "val_loss" in r] == list(range(0, 24))  # 184 samples / 8 = 23 steps

    argv = [*SHAPE, *FAST, "--tokenizer", str(DEMO_TOKENIZER), "--data_path", data["pretrain"], "--epochs", "1"]
    often = train_pretrain.main([*argv, "--out_dir", str(tmp_path / "c"), "--eval_interval", "1"])

    tokenizer = Tokenizer.load(DEMO_TOKENIZER)
    full = PretrainDataset(data["pretrain"], tokenizer, max_length=64, verbose=False)
    train_set, val_set, _, _ = training.load_data(PretrainDataset, tokenizer, runtime_module.Runtime(torch.device("cpu")),
                                               data_path=data["pretrain"], max_seq_len=64, skip_bad_lines=False,
                                               cache_dir=None, val_data=None, val_samples=16)
    assert len(val_set) == 16 and not set(val_set.indices) & set(train_set.indices)
    assert sorted(val_set.indices + train_set.indices) == list(range(len(full)))
    X, Y, mask = (torch.stack(t) for t in zip(*(full[i] for i in val_set.indices)))
    with torch.no_grad():
        per_token = torch.nn.functional.cross_entropy(often.model.eval()(X).logits.transpose(1, 2), Y, reduction="none")
    expected = (per_token * mask).sum() / mask.sum()
    assert often.val_loss == pytest.approx(expected.item(), rel=1e-5)


def fake_resume_state(step, plan):
    return {"step": step, "plan": plan, "trainable": {}, "optimizer": {}, "scaler": {}, "rng": []}


def test_a_fresh_start_refuses_only_an_unfinished_run(tmp_path):
    """Guards against a fresh start that destroys an interrupted run's progress, and against one that
    refuses to rerun a finished stage because its resume file outlived it (a kill between the last
    save and the file's removal, or a file from before resume files were removed at the end)."""
    plan = {"samples": 10, "batch_size": 4, "accumulation_steps": 2, "epochs": 2, "seed": 0, "world_size": 1}
    assert resume.count_steps(plan) == (3, 3)  # 4+4+2 samples an epoch, 6 micro-batches, 3 steps
    path = tmp_path / "x_resume.pth"
    resume.check_no_unfinished_run(path, resuming=False)  # no file: nothing to protect
    torch.save(fake_resume_state(2, plan), path)
    with pytest.raises(UserError, match=re.escape(f"{path} holds an unfinished run: pass --resume")):
        resume.check_no_unfinished_run(path, resuming=False)
    resume.check_no_unfinished_run(path, resuming=True)  # --resume continues it instead
    torch.save(fake_resume_state(3, plan), path)
    resume.check_no_unfinished_run(path, resuming=False)  # step 3 of 3: finished
    torch.save({"tok_embeddings.weight": torch.zeros(2, 2)}, path)  # a model's weights saved under that name
    with pytest.raises(UserError, match="is not a resume file of these scripts"):
        resume.check_no_unfinished_run(path, resuming=False)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04 truncated zip"])
def test_an_unreadable_resume_file_is_a_one_line_error_of_training(content, tmp_path, data, capsys):
    """Guards against torch.load's traceback (with its advice to load unsafely with weights_only=False)
    when the resume file is truncated by a full disk or is not a checkpoint at all."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "pretrain_32_resume.pth").write_bytes(content)
    argv = [*SHAPE, *FAST, "--out_dir", str(out), "--tokenizer", str(DEMO_TOKENIZER), "--data_path", data["pretrain"]]
    for extra in ([], ["--resume"]):
        err = one_line_error_of_training(train_pretrain.main, [*argv, *extra], capsys)
        assert f"{out / 'pretrain_32_resume.pth'} is not a readable PyTorch checkpoint" in err
        assert "weights_only" not in err


def test_plan_differences_name_every_changed_setting():
    """Guards against a resume check that misses a nested setting (the model's shape, the LoRA rank)
    or one that only one of the two plans records."""
    then = {"batch_size": 8, "model": {"dim": 64, "n_kv_heads": 2}, "dtype": "float16", "lora": None}
    now = {"batch_size": 8, "model": {"dim": 64, "n_kv_heads": 4}, "dtype": "bfloat16", "lora": None,
           "base": "sha256:ab"}
    assert resume.plan_differences(then, now) == [
        "model.n_kv_heads=2 then, 4 now", "dtype=float16 then, bfloat16 now", "base=unrecorded then, sha256:ab now"]
    assert resume.plan_differences(now, now) == []


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data, monkeypatch):
    """Guards against a diverged run that keeps going, or that overwrites its last good checkpoint
    with NaN weights."""
    out = tmp_path / "out"
    real_loss, calls = training.masked_cross_entropy, []

    def nan_from_micro_batch_7(logits, targets, mask):
        calls.append(1)
        loss = real_loss(logits, targets, mask)
        return loss * float("nan") if len(calls) >= 7 else loss

    monkeypatch.setattr(training, "masked_cross_entropy", nan_from_micro_batch_7)
    with pytest.raises(UserError, match="loss became nan by step 8"):
        train_pretrain.main([*SHAPE, *FAST, "--out_dir", str(out), "--tokenizer", str(DEMO_TOKENIZER),
                             "--data_path", data["pretrain"], "--save_interval", "4", "--log_interval", "100"])
    assert torch.load(out / "pretrain_32_resume.pth", weights_only=True)["step"] == 4
    model, _ = load_model(out / "pretrain_32.pth")
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# User errors: one line on stderr, exit code 1, no traceback


def test_missing_base_checkpoint_names_the_command_that_makes_it(tmp_path, capsys):
    """Guards against a KeyError/traceback (or a silently random model) when a stage's input is missing."""
    out = str(tmp_path / "out")
    err = one_line_error_of_training(train_full_sft.main, ["--out_dir", out, "--dim", "48"], capsys)
    assert err == f"{out}/pretrain_48.pth not found: make it with `python train_pretrain.py --dim 48 --out_dir {out}`"
    err = one_line_error_of_training(train_lora.main, ["--out_dir", out], capsys)
    assert err == f"{out}/full_sft_128.pth not found: make it with `python train_full_sft.py --dim 128 --out_dir {out}`"


def test_an_unwritable_cache_location_says_to_pass_cache_dir(tmp_path, data, capsys):
    """Guards against a PermissionError traceback when the data sits in a read-only folder (the token
    cache goes beside the data file by default). A path under a regular file cannot be created even
    by root, so it stands in for a read-only folder here."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = [*SHAPE, *FAST, "--out_dir", str(tmp_path / "out"), "--tokenizer", str(DEMO_TOKENIZER),
            "--data_path", data["pretrain"], "--cache_dir", str(blocker / "cache")]
    err = one_line_error_of_training(train_pretrain.main, argv, capsys)
    assert f"cannot write its token cache into {blocker / 'cache'}" in err and "pass --cache_dir DIR" in err


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", ""])
def test_lora_name_with_a_path_is_rejected(name, tmp_path, capsys):
    """Guards against --lora_name writing outside out/lora/ (e.g. ../../something.pth)."""
    assert "must be a plain name" in one_line_error_of_training(train_lora.main, ["--out_dir", str(tmp_path), "--lora_name", name], capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_plain_minimind2_checkpoint_trains_given_its_tokenizer_and_shape(pipeline, data, tmp_path, capsys):
    """Guards against requiring this project's sidecar: MiniMind2's own .pth files (no config
    inside) must still load from flags, and a wrong flag must say which value the file implies."""
    plain = tmp_path / "full_sft_512.pth"
    plain.write_bytes(Path(pipeline["pretrain"].weights).read_bytes())  # weights only, no .json sidecar
    argv = [*FAST, "--base", str(plain), "--out_dir", str(tmp_path / "out"), "--data_path", data["sft"]]

    assert "--tokenizer DIR" in one_line_error_of_training(train_full_sft.main, argv, capsys)
    shape = ["--tokenizer", str(DEMO_TOKENIZER), "--dim", "64", "--n_heads", "4", "--n_kv_heads", "2"]
    assert "--n_layers 2" in one_line_error_of_training(train_full_sft.main, [*argv, *shape, "--n_layers", "3"], capsys)  # read off the file's tensors
    result = train_full_sft.main([*argv, *shape, "--n_layers", "2", "--epochs", "1"])
    assert math.isfinite(result.final_loss)
    assert Path(result.weights) == tmp_path / "out" / "full_sft_64.pth"


# ------------------------------------------------------------------------------------------------
# Many processes


def test_two_process_gloo_torchrun_trains_and_saves_loadable_files(tmp_path, data):
    """Guards against DDP runs that hang, save from every rank, or leave "module." prefixes that
    make the checkpoint unloadable by MiniMind2's strict load; and against every rank printing the
    dataset's notes (here: a skipped bad line), which with 8 GPUs makes 8 copies of each."""
    out = tmp_path / "out"
    data_path = tmp_path / "pretrain_demo.jsonl"
    data_path.write_text(Path(data["pretrain"]).read_text(encoding="utf-8") + "{not json\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "train_pretrain.py", *SHAPE, *FAST, "--out_dir", str(out), "--tokenizer", str(DEMO_TOKENIZER),
           "--data_path", str(data_path), "--skip_bad_lines", "--batch_size", "16", "--max_seq_len", "32",
           "--log_interval", "2", "--epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    # the ranks' own errors come first in stderr, torchrun's summary last: show both
    assert result.returncode == 0, result.stderr[:3000] + "\n...\n" + result.stderr[-1500:]
    assert result.stderr.count("skipped 1 bad lines") == 1, result.stderr[-2000:]

    state = torch.load(out / "pretrain_32.pth", weights_only=True)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state)
    model, meta = load_model(out / "pretrain_32.pth")
    assert meta["stage"] == "pretrain"
    records = progress.read_metrics(out / "pretrain_32_metrics.jsonl")
    # 240 samples - 16 held out = 224 / 2 ranks / 16 per batch = 7 steps, logged every 2 and at the end,
    # written by rank 0 only; validation before the first step and after the last, the ranks' halves summed
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 7]
    assert [r["step"] for r in records if "val_loss" in r] == [0, 7]
    assert all(math.isfinite(r.get("loss", r.get("val_loss"))) for r in records)
    assert not (out / "pretrain_32_resume.pth").exists()  # removed by rank 0 once the run finished
