"""Tests for experiments/lora_medical.py: the experiment must change only what its flags say."""
from pathlib import Path

import eval_model
import train_lora
from demo import demo_eval_settings, demo_stages
from experiments import lora_medical
from plumbing.errors import run_main

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
