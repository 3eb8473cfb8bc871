"""Tests for experiments/lora_medical.py: the experiment must change only what its flags say."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))

import lora_medical  # noqa: E402


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


def test_command_starts_from_the_demo_and_overrides_only_the_flags_given():
    """Guards against an experiment silently running other settings than run_demo's lora_medical stage."""
    demo = lora_medical.demo_lora_command("out")
    assert demo[demo.index("--lora_targets") + 1] == "wq,wk,wv,wo,w1,w2,w3,output"
    changed = lora_medical.with_flag(lora_medical.with_flag(demo, "--epochs", 3), "--base", "x.pth")
    expected = list(demo)
    expected[expected.index("--epochs") + 1] = "3"  # replaced where it is
    assert changed == expected + ["--base", "x.pth"]  # appended where it is not


def test_scoring_uses_the_demo_evaluation_settings():
    """Guards against the experiment scoring with other settings than run_demo's evaluation stage
    (another answer length would give other accuracies than the demo's table)."""
    settings = lora_medical.demo_eval_settings("out")
    assert settings.max_new_tokens == 48 and settings.batch_size == 16


def test_each_configuration_has_its_own_folder():
    """Guards against two configurations overwriting each other's adapter or resume file."""
    args = lora_medical.build_parser().parse_args
    names = {lora_medical.run_name(args(flags)) for flags in ([], ["--seed", "1"], ["--rank", "64"], ["--epochs", "3"],
                                                              ["--rehearsal", "0.2"], ["--targets", "output"])}
    assert len(names) == 6 and all("," not in n and "/" not in n for n in names)
