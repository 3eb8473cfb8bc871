"""The course core stays the size of the lesson, and everything else plugs in from outside it.

A student reads pretraining -> SFT -> LoRA -> evaluation in the files the README lists as the core, in
reading order; the extensions (LoRA's variants, the lab, serving, Hugging Face interop, benchmarks,
robustness plumbing, speed paths) live in folders of their own and plug in through small seams. These
tests keep the layout honest: each guards one way it used to drift.
"""
import ast
import difflib
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRY_SCRIPTS = {"train_tokenizer", "train_pretrain", "train_full_sft", "train_lora", "train_dpo", "eval_model",
                 "run_demo", "serve_openai_api", "convert_model", "merge_lora"}
CORE_LIMIT = 3500  # lines: the whole path through pretraining, SFT, LoRA and evaluation


def python_files(outside_tests=True) -> list:
    """Every tracked .py file of the repository (outside tests/ by default)."""
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / f for f in files if not (outside_tests and f.startswith("tests/"))]


def readme_tree() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("<!-- tree -->")[1].split("<!-- /tree -->")[0]


def core_files() -> list:
    """The course core: the numbered files of the README's reading order, e.g. '3. byte-level BPE ...'."""
    return re.findall(r"^([\w./-]+\.py)\s+\d+\.", readme_tree(), flags=re.M)


def test_no_module_imports_an_entry_script():
    """Guards against entry scripts turning into libraries (the lab imported train_lora 7 times, the server
    built eval_model's whole parser to read one default): what two tools share lives in a library module."""
    offenders = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.relative_to(ROOT)} imports {n}" for n in names if n.split(".")[0] in ENTRY_SCRIPTS]
    assert not offenders, offenders


def test_no_sys_path_edits_and_no_late_imports_outside_tests():
    """Guards against the path hacks (21 sys.path edits, 130 `# noqa: E402`) that let a file run only from
    its own folder: the lab, benchmarks and experiments run as modules (`python -m lab.memory`)."""
    offenders = [f"{path.relative_to(ROOT)}:{i}" for path in python_files()
                 for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if re.search(r"sys\.path\.(insert|append)|noqa: E402", line)]
    assert not offenders, offenders


def test_lora_differs_from_full_sft_by_what_lora_changes():
    """Guards against the stage scripts growing apart again (159 changed lines; MiniMind2's own diff is 73):
    `diff train_full_sft.py train_lora.py` must show what LoRA changes, and little else."""
    sft = (ROOT / "train_full_sft.py").read_text(encoding="utf-8").splitlines()
    lora = (ROOT / "train_lora.py").read_text(encoding="utf-8").splitlines()
    changed = [l for l in difflib.unified_diff(sft, lora, lineterm="", n=0)
               if l[:1] in "+-" and not l.startswith(("+++", "---"))]
    assert len(changed) <= 80, len(changed)
    assert any("apply_lora(" in l for l in changed) and any("mark_only_lora_as_trainable(" in l for l in changed)
    assert any("save_lora(" in l for l in changed)


def test_the_training_loop_is_written_once():
    """Guards against the loop being copied into each stage again (three copies kept equal by a test that
    existed only for that): the optimizer step lives in training.py alone."""
    steps = [p.relative_to(ROOT).as_posix() for p in python_files() if "clip_grad_norm_(" in p.read_text(encoding="utf-8")]
    assert [s for s in steps if not s.startswith("bench/")] == ["training.py"], steps  # benchmarks time steps alone


def test_model_lora_teaches_lora_first():
    """Guards against the LoRA lesson being buried (LoRALinear.forward was at line 177 of 596, behind
    PiSSA, rsLoRA, init choices and file validation): forward within the first 100 lines, the file <= 300."""
    source = (ROOT / "model" / "model_lora.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    lora_linear = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LoRALinear")
    forward = next(n for n in lora_linear.body if isinstance(n, ast.FunctionDef) and n.name == "forward")
    assert forward.lineno <= 100 and len(source.splitlines()) <= 300, (forward.lineno, len(source.splitlines()))


def test_model_holds_the_network_and_its_tokenizer_only():
    """Guards against model/ filling up with file formats, serving, interop and plumbing again (15 files
    doing five jobs): each has a folder whose name says what it is."""
    names = {p.name for p in (ROOT / "model").glob("*.py")}
    assert names == {"__init__.py", "LMConfig.py", "model.py", "model_moe.py", "model_lora.py", "lora_variants.py",
                     "predecessors.py", "tokenizer.py"}, names
    for folder in ("formats", "plumbing", "serving", "interop", "speed"):
        assert (ROOT / folder / "__init__.py").is_file(), folder


def test_the_serving_engine_reuses_the_models_blocks():
    """Guards against a second copy of the model's forward in the engine (it had its own attention and
    SwiGLU, without the mixture of experts): serving runs the model's own modules."""
    for path in (ROOT / "serving").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "scaled_dot_product_attention" not in text and "apply_rope(" not in text, path.name


def test_the_course_core_is_an_afternoons_reading():
    """Guards against the core growing back past the lesson (4,530 lines): the README's reading order
    lists it, every file exists, and together they stay under CORE_LIMIT lines."""
    files = core_files()
    assert {"model/LMConfig.py", "model/model.py", "model/model_lora.py", "training.py", "train_pretrain.py",
            "train_full_sft.py", "train_lora.py", "eval_model.py"} <= set(files), files
    lines = {f: len((ROOT / f).read_text(encoding="utf-8").splitlines()) for f in files}
    assert sum(lines.values()) <= CORE_LIMIT, lines


def test_the_readme_tree_shows_the_core_then_each_extension_folder():
    """Guards against a reading order that mixes the lesson with its extensions, or forgets a folder."""
    tree = readme_tree()
    numbered = [m.start() for m in re.finditer(r"^[\w./-]+\.py\s+\d+\.", tree, flags=re.M)]
    folders = {m.group(1): m.start() for m in re.finditer(r"^([a-z_]+)/\s", tree, flags=re.M)}
    for folder in ("formats", "plumbing", "speed", "serving", "interop", "lab", "bench", "experiments", "tests"):
        assert folder in folders and folders[folder] > max(numbered), folder


@pytest.mark.parametrize("stage", ["pretrain", "full_sft"])
def test_a_stage_checkpoint_is_found_without_its_width(tmp_path, stage):
    """Guards against `--dim 512` being needed at every stage after pretraining: the only checkpoint of a
    stage is found from its files; several need --dim to choose; none names the demo's file as missing."""
    from formats.loader import find_checkpoint
    from plumbing.errors import UserError

    assert find_checkpoint(tmp_path, stage) == str(tmp_path / f"{stage}_128.pth")  # none yet: the demo's name
    (tmp_path / f"{stage}_512.pth").touch()
    (tmp_path / f"{stage}_64_other.pth").touch()  # not a stage checkpoint's name
    assert find_checkpoint(tmp_path, stage) == str(tmp_path / f"{stage}_512.pth")
    (tmp_path / f"{stage}_640_moe.pth").touch()
    assert find_checkpoint(tmp_path, stage, use_moe=True) == str(tmp_path / f"{stage}_640_moe.pth")
    with pytest.raises(UserError, match=rf"several {stage} checkpoints \({stage}_512.pth, {stage}_640_moe.pth\).*--dim"):
        find_checkpoint(tmp_path, stage)
    assert find_checkpoint(tmp_path, stage, dim=512) == str(tmp_path / f"{stage}_512.pth")


def test_out_dir_means_where_checkpoints_go_in_every_tool():
    """Guards against one flag name with four meanings (--out_dir was a checkpoint folder, a tokenizer
    folder, a Hugging Face folder and a data folder): every tool's --out_dir is where checkpoints go."""
    helps = {}
    for path in python_files():
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value == "--out_dir"):
                help_ = next((k.value for k in node.keywords if k.arg == "help"), None)
                helps[f"{path.relative_to(ROOT)}:{node.lineno}"] = ast.get_source_segment(source, help_) if help_ else ""
    assert helps and all("checkpoint" in h for h in helps.values()), helps


def test_test_helpers_are_defined_once():
    """Guards against model builders and helpers copied from test file to test file (7 definitions of the
    small models across 6 files): a helper two files need lives in tests/conftest.py; a helper of one
    file has a name of its own. (pytest fixtures are per file by design and left out.)"""
    import collections

    defined = collections.defaultdict(list)
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("test_") and not node.decorator_list:
                defined[node.name].append(path.name)
    assert not {name: files for name, files in defined.items() if len(files) > 1}
