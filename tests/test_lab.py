"""Tests for the LoRA lab (lab/): every experiment's code path, run tiny (--quick), and the workbench's
promises (runs reused by content, never stale), plus the figures' SVG."""
import json
import re
import xml.etree.ElementTree as ET

import pytest
import torch

import train_full_sft
import train_lora
import train_pretrain
from demo import stage_parser
from formats.checkpoint import read_checkpoint
from lab import run_lab, train_variant
from lab.lab import VERDICTS, Lab, canonical_flags
from plumbing.errors import UserError
from plot import bar_chart, line_chart


@pytest.fixture(scope="module")
def quick_lab(tmp_path_factory):
    """The whole lab once, tiny: a dim-32 model, 64-line data, a few steps (about 20 s)."""
    out = tmp_path_factory.mktemp("lab")
    run_lab.main(["--quick", "--out_dir", str(out)])
    findings = json.loads((out / "findings.json").read_text())
    assert findings.pop("__runs__")["full"]["from_nothing"] is True
    return out, findings


def tables(markdown: str) -> list:
    """[[row cells, ...], ...] of every markdown table in the text (header first, separator left out)."""
    found, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            if not re.fullmatch(r"\|(-+:?\|)+", line.replace("---:", "---").replace(" ", "")):
                current.append([cell.strip() for cell in line.strip("|").split(" | ")])
        elif current:
            found.append(current)
            current = []
    return found


def test_every_claim_gets_a_finding_a_verdict_and_a_report_row(quick_lab):
    """Guards a claim left out of the report card, or a verdict outside the three the report defines."""
    out, findings = quick_lab
    assert list(findings) == run_lab.NAMES and len(findings) == 13
    assert [f["number"] for f in findings.values()] == list(range(1, 14))
    assert all(f["verdict"] in VERDICTS and f["measured"] and f["claim"] for f in findings.values())
    report = (out / "lora_lab.md").read_text()
    card = tables(report)[0]
    assert len(card) == 14 and all(len(row) == len(card[0]) for row in card)


@pytest.mark.parametrize("name", run_lab.NAMES)
def test_each_experiments_tables_are_well_formed_and_its_figures_valid_svg(quick_lab, name):
    """Guards a broken table (a row with a cell too many or too few, e.g. a '|' inside a cell) or a figure
    that is missing or not valid SVG, in every experiment."""
    out, findings = quick_lab
    finding = findings[name]
    for rows in tables(finding["details"]):
        assert len(rows) >= 2 and all(len(row) == len(rows[0]) for row in rows), (name, rows[0])
    for figure in finding["figures"]:
        root = ET.parse(out / "figures" / figure).getroot()
        assert root.tag.endswith("svg")


def test_the_sane_values_of_the_maths(quick_lab):
    """Guards the lab's arithmetic: the trainable share grows with the rank and stays below 100%; a zero
    factor starts exactly at the base; a trained adapter's rank is at most r; removing it is bit-exact."""
    _, findings = quick_lab
    share = tables(findings["trainable_share"]["details"])[0]
    for row in share[1:]:
        values = [float(cell.rstrip("%")) for cell in row[2:]]
        assert values == sorted(values) and 0 < values[0] and values[-1] < 100
    zero = {row[0]: row[2] for row in tables(findings["zero_start"]["details"])[0][1:]}
    assert zero["standard"] == zero["swapped"] == zero["zeros"] == "0" and float(zero["pissa"]) < 1e-4
    assert "rank(B·A) <= r in every layer" in findings["low_rank"]["measured"]
    assert "bit-exact: yes" in findings["forgetting"]["details"]
    memory = tables(findings["memory"]["details"])[0]
    assert all(0 < float(row[-1].rstrip("x")) < 1 for row in memory[1:])  # LoRA always needs less, never nothing


def test_general_validation_is_logged_beside_the_task(quick_lab):
    """Guards --val_also: a run given it logs val_also_loss at every validation, beside (and different
    from) the task's own held-out loss."""
    out, _ = quick_lab
    runs = [json.loads(p.read_text()) for p in out.glob("runs/*/run.json")]
    also = [r for r in runs if "--val_also" in r["flags"]]
    assert also
    from plumbing.progress import read_metrics
    from formats.loader import run_files
    folder = out / "runs" / next(p.parent.name for p in out.glob("runs/*/run.json") if "--val_also" in p.read_text())
    weights = json.loads((folder / "run.json").read_text())["weights"]
    records = [r for r in read_metrics(run_files(folder, weights).metrics) if "val_loss" in r]
    assert records and all("val_also_loss" in r and r["val_also_loss"] != r["val_loss"] for r in records)


def test_runs_are_reused_by_content_and_remade_when_their_data_changes(quick_lab):
    """Guards a stale run reused after its data changed, or a finished run made again for nothing. The
    first run is made as the full lab makes it: `python train_lora.py ...`, a process of its own (the
    quick lab runs the same command in its own process), its output kept in the run's log.txt."""
    out, _ = quick_lab
    lab = Lab(out, quick=True, in_process=False)
    data = out / "data" / "tiny.jsonl"
    data.write_text((out / "data" / "lora_medical_first64.jsonl").read_text())
    job = lab.lora_job(["--data_path", str(data)])
    first = lab.train(*job)
    again = Lab(out, quick=True).train(*job)
    assert (lab.made_now, again.folder, again.weights) == (1, first.folder, first.weights)
    assert f"saved {first.weights}" in (first.folder / "log.txt").read_text() and first.curve("loss")
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:40]))  # other content, same name
    other = Lab(out, quick=True)
    assert other.train(*job).folder != first.folder and other.made_now == 1


def test_a_variant_run_is_its_trainers_command(quick_lab):
    """Guards the lab's variants drifting from what `python -m lab.train_variant --variant NAME` trains:
    a variant job is that command (its flags left at the trainer's defaults dropped), and a failed
    command stops the lab with its own error line rather than passing for a result."""
    out, _ = quick_lab
    lab = Lab(out, quick=True)
    script, flags = lab.lora_job(["--data_path", str(out / "data" / "lora_medical_first64.jsonl")], variant="pissa",
                                 lora_rank=16, seed=1337)
    assert script == "lab.train_variant" and flags[-2:] == ["--variant", "pissa"] and "--lora_rank" not in flags
    run = lab.train(script, flags)
    assert run.folder.name.startswith("train_variant-") and read_checkpoint(run.weights)["lora_config"]["init"] == "pissa"
    with pytest.raises(UserError, match=r"python -m lab.train_variant failed \(exit 2\): .*--lora_dropout must be in"):
        lab.train(script, [*flags, "--lora_dropout", "2"])


def test_variant_lora_trains_bit_for_bit_what_train_lora_trains(quick_lab, tmp_path):
    """Guards lab/train_variant.py's promise: with --variant lora it is train_lora.py, the same adapter
    to the last bit, so the lab's variants differ from LoRA in the adapter only."""
    out, _ = quick_lab
    sft = Lab(out, quick=True).base()["sft"]
    common = ["--base", sft, "--data_path", str(out / "data" / "lora_medical_first64.jsonl"), "--epochs", "1",
              "--batch_size", "8", "--max_seq_len", "64", "--val_samples", "8", "--device", "cpu"]
    plain = train_lora.main([*common, "--out_dir", str(tmp_path / "a")]).weights
    variant = train_variant.main([*common, "--out_dir", str(tmp_path / "b"), "--variant", "lora"]).weights
    a, b = read_checkpoint(plain), read_checkpoint(variant)
    tensors = [k for k in a if isinstance(a[k], torch.Tensor)]
    assert tensors and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in tensors)


def test_one_configuration_is_one_run_whoever_asks():
    """Guards two experiments training the same configuration twice because one spelled out a default."""
    parser = stage_parser("lora")
    assert canonical_flags(parser, {"lora_rank": 16, "seed": 1337, "lora_plus_ratio": 16.0}) == []
    assert canonical_flags(parser, {"lora_rank": 8, "lora_alpha": 8}) == ["--lora_rank", "8"]
    assert canonical_flags(parser, {"seed": 1, "lora_rank": 8}) == canonical_flags(parser, {"lora_rank": 8, "seed": 1})
    variant = train_variant.build_parser()
    assert canonical_flags(variant, {"variant": "lora", "lora_targets": "wq,wk,wv,wo,w1,w2,w3,output"}) == []
    with pytest.raises(ValueError, match="--lora_init is not a flag"):
        canonical_flags(parser, {"lora_init": "pissa"})


@pytest.mark.parametrize("stage, script", [("pretrain", train_pretrain), ("full_sft", train_full_sft), ("lora", train_lora)])
def test_the_labs_defaults_are_the_scripts_defaults(stage, script):
    """Guards the lab dropping a flag as "the default" that the script's default is not (then two
    configurations would share one run): the lab reads each stage's defaults from plumbing/flags.py
    (demo.stage_parser), which must be the script's own; the variant trainer's are train_lora.py's."""
    assert vars(stage_parser(stage).parse_args([])) == vars(script.build_parser().parse_args([]))
    if stage == "lora":
        assert vars(train_variant.build_parser().parse_args([])) == {**vars(script.build_parser().parse_args([])),
                                                                     "variant": "lora"}


def test_report_only_rewrites_the_same_page_from_the_findings(quick_lab):
    """Guards --report_only (used after a wording change) writing another page than the measuring run did."""
    out, _ = quick_lab
    before = (out / "lora_lab.md").read_text()
    (out / "lora_lab.md").unlink()
    run_lab.main(["--quick", "--out_dir", str(out), "--report_only"])
    assert (out / "lora_lab.md").read_text() == before


def test_only_needs_an_earlier_full_run(tmp_path):
    """Guards --only writing a report with holes: the other claims' findings must exist."""
    with pytest.raises(UserError, match="run the whole lab once first"):
        run_lab.main(["--quick", "--out_dir", str(tmp_path), "--only", "memory"])


def test_multi_run_plots_are_valid_svg_with_a_legend(tmp_path):
    """Guards the lab's charts: several runs on shared (log) axes with a legend and seed ranges, and bars."""
    line_chart({"alpha / r": [(1, 2.0), (8, 1.5), (64, 1.9)], "rsLoRA": [(1, 2.1), (8, 1.4), (64, 1.3)]},
               tmp_path / "l.svg", "loss vs rank", "rank", "loss", log_x=True, log_y=True,
               spread={"rsLoRA": [(8, 1.3, 1.5)]})
    bar_chart({"wq": (1.2, 1.1, 1.3), "every Linear": (0.9, 0.9, 0.9)}, tmp_path / "b.svg", "targets", "loss")
    for name in ("l.svg", "b.svg"):
        root = ET.parse(tmp_path / name).getroot()
        texts = [t.text for t in root.iter() if t.tag.endswith("text")]
        assert root.tag.endswith("svg")
        assert ("rsLoRA" in texts and "x and y: log scale" in texts) if name == "l.svg" else "every Linear" in texts
