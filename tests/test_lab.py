"""Tests for the LoRA lab (lab/): every experiment's code path, run tiny (--quick), and the workbench's
promises (runs reused by content, never stale), plus the figures' SVG."""
import json
import re
import xml.etree.ElementTree as ET

import pytest

from lab import run_lab
from lab.lab import VERDICTS, Lab, canonical_flags
from plumbing.errors import UserError
from plot import bar_chart, line_chart
import train_lora


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
    from training import read_metrics
    from formats.loader import run_files
    folder = out / "runs" / next(p.parent.name for p in out.glob("runs/*/run.json") if "--val_also" in p.read_text())
    weights = json.loads((folder / "run.json").read_text())["weights"]
    records = [r for r in read_metrics(run_files(folder, weights).metrics) if "val_loss" in r]
    assert records and all("val_also_loss" in r and r["val_also_loss"] != r["val_loss"] for r in records)


def test_runs_are_reused_by_content_and_remade_when_their_data_changes(quick_lab):
    """Guards a stale run reused after its data changed, or a finished run made again for nothing."""
    out, _ = quick_lab
    lab = Lab(out, quick=True)
    data = out / "data" / "tiny.jsonl"
    data.write_text((out / "data" / "lora_medical_first64.jsonl").read_text())
    job = lab.lora_job(["--data_path", str(data)])
    first = lab.train(*job)
    again = lab.train(*job)
    assert (lab.made_now, again.folder) == (1, first.folder)
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:40]))  # other content, same name
    assert lab.train(*job).folder != first.folder and lab.made_now == 2


def test_one_configuration_is_one_run_whoever_asks():
    """Guards two experiments training the same configuration twice because one spelled out a default."""
    parser = train_lora.build_parser()
    assert canonical_flags(parser, {"lora_rank": 16, "seed": 1337, "lora_plus_ratio": 16.0}) == []
    assert canonical_flags(parser, {"lora_rank": 8, "lora_alpha": 8}) == ["--lora_rank", "8"]
    assert canonical_flags(parser, {"seed": 1, "lora_rank": 8}) == canonical_flags(parser, {"lora_rank": 8, "seed": 1})


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
