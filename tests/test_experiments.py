"""Tests for experiments/: an experiment changes only what its flags say, and the demo's targets and
their spread over runs can fail."""
from pathlib import Path

import json

import pytest

import eval_model
import train_lora
from demo import MARGIN, TARGETS, demo_eval_settings, demo_stages, target_checks
from experiments import demo_seeds, lora_medical
from experiments.spread import CPU_PATHS, holds_with_margin, spread_row, spread_table
from plumbing.errors import UserError, run_main

ROOT = Path(__file__).resolve().parent.parent


def test_default_rehearsal_rewrites_the_committed_file(tmp_path):
    """Guards against the experiment training on other medical records than the demo (another seed,
    another generator): at the committed share its data is byte-identical to dataset/lora_medical.jsonl,
    and another share keeps every medical record."""
    path, records = lora_medical.write_data(0.5, tmp_path)
    committed = (ROOT / "dataset" / "lora_medical.jsonl").read_bytes()
    assert path.read_bytes() == committed and records == committed.count(b"\n")
    less, fewer = lora_medical.write_data(0.2, tmp_path)
    medical = {line for line in committed.splitlines() if b"Department" in line or "科室".encode() in line}
    assert medical <= set(less.read_bytes().splitlines())
    assert fewer == round(len(medical) / 0.8)


def test_only_the_flags_given_leave_train_lora_defaults():
    """Guards against an experiment silently running other settings than the demo's lora_medical stage:
    with no flags it passes train_lora.py nothing but where to read and write, so it trains with the
    scripts' defaults, which are the demo's; each flag given changes exactly its own setting."""
    parse = lora_medical.build_parser().parse_args
    assert lora_medical.overrides(parse([])) == []
    assert lora_medical.overrides(parse(["--rank", "64", "--seed", "2"])) == ["--lora_rank", "64", "--seed", "2"]
    demo = train_lora.build_parser().parse_args([])
    changed = train_lora.build_parser().parse_args(lora_medical.overrides(parse(["--epochs", "3"])))
    assert {k for k, v in vars(changed).items() if vars(demo)[k] != v} == {"epochs"}


def test_scoring_uses_the_demo_evaluation_settings():
    """Guards against the experiment and the lab scoring with other settings than run_demo's evaluation
    stage (another answer length would give other accuracies than the demo's table): demo.py reads the
    evaluation command as eval_model.py's own parser reads it."""
    settings = demo_eval_settings("out")
    assert settings.max_new_tokens == 48 and settings.batch_size == 16
    ours = eval_model.build_parser().parse_args(dict(demo_stages("out"))["evaluation"][1:])
    assert vars(settings) == {k: getattr(ours, k) for k in vars(settings)}
    assert lora_medical.demo_eval_settings is demo_eval_settings


def test_each_configuration_has_its_own_folder():
    """Guards against two configurations overwriting each other's adapter or resume file."""
    parse = lora_medical.build_parser().parse_args
    names = {lora_medical.run_name(parse(flags)) for flags in ([], ["--seed", "1"], ["--rank", "64"], ["--epochs", "3"],
                                                               ["--rehearsal", "0.2"], ["--targets", "output"],
                                                               ["--targets", "wq,wo"])}
    assert len(names) == 7 and all("," not in n and "/" not in n for n in names)


def test_a_missing_demo_model_is_a_one_line_error(tmp_path, capsys):
    """Guards against a traceback when the experiment runs before the demo made its SFT model."""
    assert run_main(lora_medical.main, ["--out_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{tmp_path}/full_sft_128.pth not found: make it with `python train_full_sft.py" in err


def demo_results(medical=95.0, sft_medical=0.0, identity=100.0, general=(65.0, 60.0), drop=(2.0, 1.0), removed_same=True):
    """An evaluation JSON as eval_model.py --compare --json writes it, with the given accuracies in percent:
    both adapters cost `drop` points of (eval_general, eval_general_unseen)."""
    def column(name, **acc):
        sets = {s: {"accuracy": acc.get(s, 0.0) / 100, "items": [{"correct": True}]} for s in
                ("eval_general", "eval_general_unseen", "eval_medical", "eval_identity")}
        return {"name": name, "sets": sets}
    g, u = general
    base = column("base", eval_general=g, eval_general_unseen=u, eval_medical=sft_medical)
    removed = column("adapter removed", eval_general=g, eval_general_unseen=u,
                     eval_medical=sft_medical + (0 if removed_same else 1.9))
    return {"columns": [base, column("+lora_medical", eval_general=g - drop[0], eval_general_unseen=u - drop[1], eval_medical=medical),
                        column("+lora_identity", eval_general=g - drop[0], eval_general_unseen=u - drop[1], eval_identity=identity),
                        removed]}


@pytest.mark.parametrize("broken, failing", [
    (dict(medical=TARGETS["medical"] - 1.9), 0), (dict(sft_medical=TARGETS["sft_medical"] + 1.9), 0),
    (dict(identity=TARGETS["identity"] - 2.1), 1), (dict(removed_same=False), 2),
    (dict(drop=(TARGETS["general_drop"] + 1.9, 0.0)), 3), (dict(drop=(0.0, TARGETS["general_drop"] + 1.0)), 3)])
def test_each_target_fails_alone(broken, failing):
    """Guards against a target that cannot fail: every target holds on good numbers, each broken one fails
    its own check and no other -- the forgetting target on either general set, eval_general_unseen too."""
    assert all(ok for _, ok in target_checks(demo_results()))
    assert [i for i, (_, ok) in enumerate(target_checks(demo_results(**broken))) if not ok] == [failing]
    assert all(ok for _, ok in target_checks(demo_results(medical=TARGETS["medical"], drop=(TARGETS["general_drop"], 0))))


def test_the_spread_verdict_needs_every_run_inside_every_target_by_the_margin():
    """Guards against a spread that passes on its mean or by one question: the table's first row is the
    worst of each column, and its verdict holds only if every run is at least MARGIN points inside every
    target -- one run 3 points inside, or one that misses, changes it."""
    good = {f"seed {s}": spread_row(demo_results(medical=95 - s)) for s in range(3)}
    assert holds_with_margin(good) and "all met, worst >= 5 points inside" in spread_table(good)
    assert spread_table(good).splitlines()[2].startswith("| **worst** | 65.0 | 60.0 | 0.0 | 93.0 |")
    close = {**good, "seed 9, avx2": spread_row(demo_results(drop=(TARGETS["general_drop"] - MARGIN + 2, 0)))}
    assert not holds_with_margin(close) and "within 5 points" in spread_table(close)
    assert spread_table(close).splitlines()[-1].split(" | ")[6] == "+3.0"  # the drop column's margin
    missed = {**good, "seed 9": spread_row(demo_results(identity=85.0))}
    assert not holds_with_margin(missed) and "NOT all met" in spread_table(missed)


def test_a_spread_refuses_runs_of_another_cpu_path(tmp_path):
    """Guards against a default-path run passing for a forced-AVX2 one (or back) when the table is re-read:
    run_demo.py records the CPU variables it ran under, and demo_seeds compares them."""
    folder = demo_seeds.run_folder(tmp_path, 1, "avx2")
    folder.mkdir(parents=True)
    (folder / "demo_results.json").write_text(json.dumps({**demo_results(), "dtype": None, "cpu_env": {}, "wall_s": 1}))
    with pytest.raises(UserError, match="CPU code path"):
        demo_seeds.read_results(folder, "avx2", None)
    (folder / "demo_results.json").write_text(json.dumps({**demo_results(), "dtype": None, "cpu_env": CPU_PATHS["avx2"]}))
    assert demo_seeds.read_results(folder, "avx2", None)["cpu_env"]["ATEN_CPU_CAPABILITY"] == "avx2"
