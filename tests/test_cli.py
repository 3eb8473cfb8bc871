"""The command line as one whole: one demo configuration (the scripts' defaults), one model loader,
one user-error form and exit code, one meaning of --device auto, for every tool.
"""
import ast
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DEMO_TOKENIZER, ROOT, small_model

import demo
import eval_model
import run_demo
import train_full_sft
import train_lora
from formats import loader
from plumbing import errors
from formats.checkpoint import save_model
from plumbing.device import DEVICE_HELP, pick_device
from formats.loader import checkpoint_meta, load_checkpoint
from model.tokenizer import Tokenizer

TRAINING_SCRIPTS = {"pretrain": "train_pretrain", "SFT": "train_full_sft",
                    "LoRA lora_medical": "train_lora", "LoRA lora_identity": "train_lora"}


# ------------------------------------------------------------------------------------------------
# One demo configuration


def test_run_demo_runs_the_bare_stage_commands():
    """Guards against a second, hidden demo configuration (run_demo.py passing settings of its own that
    a student who runs the stages one by one does not get): every training stage is its script with
    the defaults, and lora_identity differs from lora_medical only in its name and data; and what
    run_demo.py runs is demo.py's stages, the configuration the lab and the experiments read."""
    assert run_demo.demo_stages is demo.demo_stages and run_demo.target_checks is demo.target_checks
    stages = dict(demo.demo_stages("out"))
    assert stages["tokenizer"] == ["train_tokenizer.py"]
    for stage, module in TRAINING_SCRIPTS.items():
        command = stages[stage]
        assert command[0] == f"{module}.py"
        parser = importlib.import_module(module).build_parser()
        parsed, defaults = vars(parser.parse_args(command[1:])), vars(parser.parse_args([]))
        changed = {k for k in parsed if parsed[k] != defaults[k]}
        assert changed == ({"lora_name", "data_path"} if stage == "LoRA lora_identity" else set()), (stage, changed)
    evaluation = eval_model.build_parser().parse_args(stages["evaluation"][1:])
    assert evaluation.lora_name == ["lora_medical", "lora_identity"] and evaluation.compare


def test_run_demo_flags_only_say_where_which_seed_and_which_precision():
    """Guards against run_demo's --out_dir, --seed or --dtype changing anything else in the stages'
    commands, and against --dtype reaching the evaluation (its scores must stay comparable)."""
    plain = dict(demo.demo_stages("out"))
    moved = dict(demo.demo_stages("elsewhere", seed=3, dtype="bfloat16"))
    for stage, command in moved.items():
        extra = command[len(plain[stage]):]
        assert command[:len(plain[stage])] == plain[stage]
        training = stage in TRAINING_SCRIPTS
        expected = (([] if stage == "tokenizer" else ["--out_dir", "elsewhere"])
                    + (["--seed", "3", "--dtype", "bfloat16"] if training else []))
        assert extra == expected, (stage, extra)


def test_the_stages_find_each_others_files_by_default():
    """Guards against defaults that do not chain (SFT looking for another pretrain file than pretraining
    writes, LoRA for another SFT file): each stage's default input is the previous stage's output."""
    import train_pretrain
    pre = train_pretrain.build_parser().parse_args([])
    assert loader.checkpoint_path(pre.out_dir, "pretrain", pre.dim) == "out/pretrain_128.pth"
    assert train_full_sft.build_parser().parse_args([]).base is None  # -> out/pretrain_{DEFAULT_DIM}.pth
    assert pre.dim == loader.DEFAULT_DIM
    assert os.path.samefile(pre.tokenizer, DEMO_TOKENIZER)


# ------------------------------------------------------------------------------------------------
# One loader


@pytest.fixture()
def checkpoint(tmp_path):
    """A tiny SFT checkpoint with its sidecar (config, tokenizer and its fingerprint), and a small SFT file."""
    tok = Tokenizer.load(DEMO_TOKENIZER)
    model = small_model(tok.vocab_size)
    path = tmp_path / "full_sft_32.pth"
    save_model(model, path, meta=checkpoint_meta("full_sft", DEMO_TOKENIZER, tok))
    lines = (ROOT / "dataset" / "lora_identity.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:48]
    (tmp_path / "data.jsonl").write_text("".join(lines), encoding="utf-8")
    return path


def test_training_and_evaluation_load_the_same_model_through_the_one_loader(checkpoint, monkeypatch, capsys):
    """Guards against two loaders that disagree (different tokenizer resolution, config or weights):
    train_lora.py and eval_model.py both go through formats.loader.load_checkpoint, and on one checkpoint
    both get the same weights and the same tokenizer."""
    seen = {}

    def spy(name, real):
        def wrapped(*args, **kwargs):
            loaded = real(*args, **kwargs)
            seen[name] = ({k: v.clone() for k, v in loaded.model.state_dict().items()}, loaded.tokenizer.fingerprint())
            return loaded
        return wrapped

    monkeypatch.setattr(train_lora, "load_checkpoint", spy("train", train_lora.load_checkpoint))
    monkeypatch.setattr(eval_model, "load_checkpoint", spy("eval", eval_model.load_checkpoint))
    out = checkpoint.parent
    train_lora.main(["--base", str(checkpoint), "--out_dir", str(out), "--data_path", str(out / "data.jsonl"),
                     "--epochs", "1", "--batch_size", "16", "--max_seq_len", "64", "--val_samples", "8", "--device", "cpu"])
    eval_model.main(["--ckpt", str(checkpoint), "--max_new_tokens", "2", "--json", "--device", "cpu"])
    (train_state, train_tok), (eval_state, eval_tok) = seen["train"], seen["eval"]
    assert train_tok == eval_tok == Tokenizer.load(DEMO_TOKENIZER).fingerprint()
    assert train_state.keys() == eval_state.keys()
    assert all(torch.equal(train_state[k], eval_state[k]) for k in train_state)


def test_an_adapter_trained_on_a_quantized_base_loads_on_the_checkpoint_it_was_quantized_from(checkpoint, capsys):
    """Guards train_lora.py --quantize_base (QLoRA): the run must train on block Linears stored as 4-bit codes
    (no float weight left in them), and its adapter must be the ordinary file for the full-precision
    checkpoint, which load_checkpoint accepts (its base fingerprint), as eval_model.py --lora_name does."""
    out = checkpoint.parent
    result = train_lora.main(["--base", str(checkpoint), "--out_dir", str(out), "--data_path", str(out / "data.jsonl"),
                              "--epochs", "1", "--batch_size", "16", "--max_seq_len", "64", "--val_samples", "8",
                              "--device", "cpu", "--quantize_base", "nf4", "--lora_targets", "wq,w1,output"])
    blocks = [m for name, m in result.model.named_modules() if name.startswith("layers.") and isinstance(m, torch.nn.Linear)
              and not name.rsplit(".", 1)[-1] in ("A", "B")]
    assert blocks and all(getattr(m, "weight", None) is None for m in blocks)
    assert result.model.layers[0].attention.wq.lora.B.weight.abs().sum() > 0  # trained
    loaded = load_checkpoint(str(checkpoint), adapter=result.weights)
    assert loaded.model.layers[0].attention.wq.lora.B.weight.abs().sum() > 0


SCRIPTS_THAT_LOAD_MODELS = ["train_full_sft.py", "train_lora.py", "eval_model.py", "experiments/lora_medical.py",
                            "convert_model.py", "serve_openai_api.py"]


@pytest.mark.parametrize("script", SCRIPTS_THAT_LOAD_MODELS)
def test_every_script_loads_checkpoints_only_through_the_loader(script):
    """Guards against a script growing its own checkpoint or tokenizer loading again (two loaders with
    different path rules and errors, as eval_model.py and training.py once had)."""
    source = (ROOT / script).read_text(encoding="utf-8")
    assert "load_checkpoint(" in source
    for private_way in ("load_model(", "Tokenizer.load(", "torch.load(", "read_checkpoint("):
        assert private_way not in source, f"{script} loads with {private_way}"


def test_a_different_tokenizer_than_the_recorded_one_is_refused(checkpoint, tmp_path):
    """Guards against a model run with another tokenizer of the same size (every id then means another
    piece of text and the model writes fluent nonsense): the sidecar's fingerprint must match."""
    other = Tokenizer.load(DEMO_TOKENIZER)
    other.save(tmp_path / "tok")
    spec = json.loads((tmp_path / "tok" / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    a, b = "Ġthe", "Ġand"  # swap two ids: same size, different meaning
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(errors.UserError, match="was trained with tokenizer model/demo_tokenizer .* is a different tokenizer"):
        load_checkpoint(checkpoint, tokenizer=tmp_path / "tok")
    assert load_checkpoint(checkpoint, tokenizer=DEMO_TOKENIZER).tokenizer.vocab_size == 2048  # the same one is fine


def test_load_checkpoint_takes_a_device_name(checkpoint):
    """Guards against a --device value passed on unchanged ('auto' is not a torch device: the
    experiment script crashed after training with it)."""
    loaded = load_checkpoint(checkpoint, device="auto")
    assert loaded.model.output.weight.device == pick_device("auto")
    with pytest.raises(errors.UserError, match="--device 'nonsense' is not a device"):
        load_checkpoint(checkpoint, device="nonsense")


def test_shape_flags_must_agree_with_the_sidecar(checkpoint):
    """Guards against a shape flag that is silently ignored because the sidecar wins."""
    with pytest.raises(errors.UserError, match="--n_layers 3 disagrees with .*n_layers=2"):
        load_checkpoint(checkpoint, shape={"n_layers": 3})
    assert load_checkpoint(checkpoint, shape={"n_layers": 2, "dim": None}).model.config.n_layers == 2


def test_a_plain_state_dict_needs_its_shape_and_tokenizer(checkpoint, tmp_path):
    """Guards against guessing a MiniMind2 file's shape or tokenizer: both must be given, and the error
    says which shape the file's tensors imply."""
    plain = tmp_path / "plain" / "model.pth"
    plain.parent.mkdir()
    plain.write_bytes(checkpoint.read_bytes())  # no sidecar
    with pytest.raises(errors.UserError, match=r"no \.json sidecar .*--dim 32 --n_layers 2\) and --tokenizer DIR"):
        load_checkpoint(plain, shape={"dim": 32})
    loaded = load_checkpoint(plain, tokenizer=DEMO_TOKENIZER, shape={"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2})
    assert loaded.meta == {} and loaded.model.config.dim == 32 and not loaded.model.training


def test_adapter_names_and_listing_agree():
    """Guards against a chat listing adapters under names that /lora then cannot load (the listing showed
    'lora_medical_128' while /lora wanted 'lora_medical'), and against a name that escapes out/lora/."""
    assert loader.adapter_path("out", "lora_medical", 128) == os.path.join("out", "lora", "lora_medical_128.pth")
    for bad in ("../x", "a/b", "", "x" * 101, ".hidden"):
        with pytest.raises(errors.UserError, match="must be a plain name"):
            loader.check_adapter_name(bad)


def test_list_adapters_gives_names_that_adapter_path_takes(tmp_path):
    """Guards against the listing and the loading disagreeing on what a name is."""
    (tmp_path / "lora").mkdir()
    for name in ("lora_medical_128.pth", "lora_identity_128.pth", "lora_medical_512.pth", "notes.txt"):
        (tmp_path / "lora" / name).write_bytes(b"")
    names = loader.list_adapters(tmp_path, 128)
    assert names == ["lora_identity", "lora_medical"]
    assert all(Path(loader.adapter_path(tmp_path, n, 128)).is_file() for n in names)


# ------------------------------------------------------------------------------------------------
# One error form and exit code; one --device


# (tool, argv with one user mistake, a piece of the message)
USER_MISTAKES = [
    ("train_tokenizer", ["--vocab_size", "10"], "--vocab_size 10 is too small"),
    ("train_pretrain", ["--batch_size", "0"], "--batch_size must be at least 1"),
    ("train_pretrain", ["--learning_rate", "inf"], "--learning_rate must be a positive number"),
    ("train_full_sft", ["--out_dir", "{tmp}"], "pretrain_128.pth not found: make it with `python train_pretrain.py"),
    ("train_lora", ["--lora_name", "../x"], "must be a plain name"),
    ("train_lora", ["--device", "nonsense", "--out_dir", "{tmp}"], "--device 'nonsense' is not a device"),
    ("eval_model", ["--top_p", "2"], "--top_p must be in (0, 1]"),
    ("eval_model", ["--out_dir", "{tmp}"], "full_sft_128.pth not found: make it with `python train_full_sft.py"),
    ("convert_model", ["to-hf", "--ckpt", "{tmp}/none.pth", "--hf_dir", "{tmp}/hf"], "none.pth not found"),
    ("dataset.show_sample", ["--show", "{tmp}/none.jsonl"], "none.jsonl: cannot open"),
    ("dataset.make_demo_data", ["--data_dir", "{tmp}/file", "--check"], "missing (run: python -m dataset.make_demo_data"),
    ("experiments.lora_medical", ["--out_dir", "{tmp}"], "full_sft_128.pth not found"),
    ("bench.bench_train", ["--steps", "0"], "--steps must be at least 1"),
    ("bench.bench_generate", ["--new_tokens", "1"], "--new_tokens must be at least 2"),
    ("serve_openai_api", ["--port", "70000"], "--port must be in 0..65535"),
    ("serve_openai_api", ["--out_dir", "{tmp}", "--port", "0"], "full_sft_128.pth not found: make it with `python train_full_sft.py"),
    ("bench.bench_serve", ["--clients", "0"], "--clients must be at least 1"),
]


@pytest.mark.parametrize("tool, argv, message", USER_MISTAKES, ids=[f"{t}:{a[0]}" for t, a, _ in USER_MISTAKES])
def test_every_tool_reports_a_user_error_in_one_line_with_exit_code_2(tool, argv, message, tmp_path, capsys):
    """Guards against tools that each report mistakes their own way (exit 1 here, 2 there, a traceback
    elsewhere): run as their __main__ runs them, every one prints `PROG: error: MESSAGE` and exits 2."""
    module = importlib.import_module(tool)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    capsys.readouterr()
    assert errors.run_main(module.main, argv) == errors.USER_ERROR_EXIT == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and ": error: " in err[-1] and message in err[-1], err
    assert not any("Traceback" in line for line in err)


TOOLS = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
               if "tests" not in p.parts and 'if __name__ == "__main__":' in p.read_text(encoding="utf-8"))


def test_every_command_line_tool_is_found():
    """Guards against the discovery below silently finding nothing (and so checking nothing)."""
    assert {"train_lora.py", "eval_model.py", "run_demo.py", "convert_model.py", "serve_openai_api.py",
            "bench/bench_train.py", "dataset/make_demo_data.py"} <= set(TOOLS)


# The course's entry scripts: the lab, the benchmarks and the experiments run them as commands, never import them.
ENTRY_SCRIPTS = {"train_pretrain", "train_full_sft", "train_lora", "train_tokenizer", "eval_model", "run_demo",
                 "serve_openai_api", "convert_model", "train_dpo", "merge_lora"}
MODULE_TOOLS = ["demo.py", *(str(p.relative_to(ROOT)) for folder in ("lab", "bench", "experiments", "dataset")
                             for p in sorted((ROOT / folder).glob("*.py")))]


@pytest.mark.parametrize("path", MODULE_TOOLS)
def test_the_lab_benchmarks_and_experiments_are_modules_that_import_no_entry_script(path):
    """Guards against lab/, bench/ and experiments/ (and demo.py) reaching into an entry script for what a
    library module should hold, and against a tool that edits sys.path to run as `python dir/x.py`:
    each runs as `python -m dir.x` from the repository."""
    source = (ROOT / path).read_text(encoding="utf-8")
    tree = ast.parse(source)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & ENTRY_SCRIPTS, (path, imported & ENTRY_SCRIPTS)
    assert "sys.path" not in source and "noqa: E402" not in source, path
    assert (ROOT / path).parent == ROOT or (ROOT / path).with_name("__init__.py").is_file(), path


@pytest.mark.parametrize("path", TOOLS)
def test_every_tool_exits_through_run_main(path):
    """Guards against a tool whose __main__ bypasses run_main (its user errors would be tracebacks)."""
    source = (ROOT / path).read_text(encoding="utf-8")
    assert "sys.exit(run_main(main))" in source or "sys.exit(training.run_main(main))" in source


def test_the_program_name_starts_the_error_line(tmp_path):
    """Guards against an error line that does not say which program failed (in a pipeline of stages)."""
    argv = ["train_lora.py", "--lora_name", "a/b", "--out_dir", str(tmp_path)]  # not the repository's out/
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert result.stderr.startswith("train_lora.py: error: adapter name 'a/b' must be a plain name"), result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("module", ["train_pretrain", "train_full_sft", "train_lora", "eval_model", "serve_openai_api"])
def test_device_auto_means_one_thing_everywhere(module):
    """Guards against --device meaning "cuda, then mps, then cpu" in one script and "cuda or cpu" in another."""
    action = next(a for a in importlib.import_module(module).build_parser()._actions if "--device" in a.option_strings)
    assert action.default == "auto" and action.help == DEVICE_HELP
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device("auto").type == expected


def test_run_demo_trains_the_adapters_side_by_side_each_timed_and_a_failure_stops_the_other(tmp_path, capsys):
    """Guards against running the two adapters side by side losing a failure (the demo would go on to
    evaluate an adapter that was never written), losing a stage's own time, or leaving the other run
    going after one failed."""
    stages = [("LoRA a", ["-c", "import time; time.sleep(0.2); print('a done')"]),
              ("LoRA b", ["-c", "import os; print('b done', os.environ['OMP_NUM_THREADS'])"])]
    times = run_demo.run_side_by_side(4, 6, stages, str(tmp_path))
    assert set(times) == {"LoRA a", "LoRA b"} and times["LoRA a"] >= 0.2
    out = capsys.readouterr().out
    assert "LoRA a: a done" in out and "LoRA b: b done 1" in out  # one thread each
    assert (tmp_path / "LoRA_a.log").read_text().strip() == "a done"

    failing = [("LoRA a", ["-c", "import time; time.sleep(30)"]), ("LoRA b", ["-c", "import sys; print('bad'); sys.exit(3)"])]
    start = time.perf_counter()
    with pytest.raises(errors.UserError, match=r"stage 'LoRA b' failed \(exit code 3\): bad"):
        run_demo.run_side_by_side(4, 6, failing, str(tmp_path))
    assert time.perf_counter() - start < 20  # the other run was stopped, not waited for
