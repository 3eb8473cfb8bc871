"""Tests for the LoRA lab (lab/): every experiment's code path, run tiny (--quick), and the workbench's
promises (runs reused by content, never stale, two configurations never one run; sweeps that find a
best rate inside their grid), plus the figures: valid SVG, round ticks, a legend that covers no data.
The verdict rules themselves: tests/test_lab_verdicts.py."""
import json
import math
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

import train_full_sft
import train_lora
import train_pretrain
from demo import stage_parser
from formats.checkpoint import read_checkpoint
from lab import run_lab, sweeps, train_variant
from lab.lab import ROOT, VERDICTS, Lab, Run, at_once, canonical_flags, expected_work
from plumbing.errors import UserError
from plot import bar_chart, line_chart, nice_ticks, panels


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


def test_every_claim_gets_a_finding_a_verdict_a_source_and_a_report_row(quick_lab):
    """Guards a claim left out of the report card, a verdict outside the three the report defines, or a claim
    that does not say where it comes from (write-up file and section, or paper)."""
    out, findings = quick_lab
    assert list(findings) == run_lab.NAMES and len(findings) == len(run_lab.EXPERIMENTS) >= 35
    assert [f["number"] for f in findings.values()] == list(range(1, len(findings) + 1))
    for f in findings.values():
        assert f["verdicts"] and all(v in VERDICTS for _, v in f["verdicts"]) and f["measured"] and f["claim"]
        assert re.match(r"(00[0-4] |paper: )", f["source"]) and f["rule"], f["module"]
        assert len(f["verdicts"]) == 1 or all(half for half, _ in f["verdicts"])  # each half named
    report = (out / "lora_lab.md").read_text()
    cards = tables(report)[:len(run_lab.GROUPS)]
    assert sum(len(card) - 1 for card in cards) == len(findings)
    assert all(len(row) == len(card[0]) for card in cards for row in card)
    assert "## What changed since the first edition" in report and all(old in report for old in run_lab.FIRST_EDITION)


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
    factor starts exactly at the base; removing an adapter is bit-exact; LoRA always needs less memory (never
    nothing); the checkpoint arithmetic gives the LoRA paper's GPT-3 figure from GPT-3's shapes."""
    _, findings = quick_lab
    share = tables(findings["trainable_share"]["details"])[0]
    for row in share[1:]:
        values = [float(cell.rstrip("%")) for cell in row[2:]]
        assert values == sorted(values) and 0 < values[0] and values[-1] < 100
    zero = {row[0]: row[2] for row in tables(findings["zero_start"]["details"])[0][1:]}
    assert {zero[i] for i in ("standard", "swapped", "zeros", "gauss_r", "kaiming")} == {"0"} and float(zero["pissa"]) < 1e-4
    forgetting = tables(findings["forgetting"]["details"])[0]
    assert forgetting[2][1] == "yes"  # the lora_medical row: removal bit-exact
    memory = tables(findings["memory"]["details"])[0]
    assert all(0 < float(row[-1].rstrip("x")) < 1 for row in memory[1:])
    gpt3 = {row[0]: row for row in tables(findings["gpt3_savings"]["details"])[0][1:]}["GPT-3 175B (from its shapes)"]
    assert gpt3[1] == "349 GB" and gpt3[2] == "37.7 MB"  # 350 GB -> 35 MB, as the paper says


def test_the_readme_and_lora_md_blocks_say_what_the_report_says(quick_lab):
    """Guards three pages drifting apart (the first edition's README left out rows of its own report): the lab
    writes README.md's and docs/lora.md's measured blocks from the same findings (here on copies), every link in
    them reaches a claim's section of the report, and the README stays within its 250 lines."""
    out, findings = quick_lab
    report = (out / "lora_lab.md").read_text()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', report))
    assert anchors == set(findings)
    for page in ("README.md", "lora.md"):
        text = (out / page).read_text()
        block = text[text.index(run_lab.BLOCK[0]):text.index(run_lab.BLOCK[1])]
        linked = re.findall(r"lora_lab\.md#([\w]+)", block)
        assert linked and set(linked) <= anchors
        for module in linked:
            assert findings[module]["verdicts"][0][1] in block or len(findings[module]["verdicts"]) > 1
    assert len((out / "README.md").read_text().splitlines()) <= 250


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
    job = lab.lora_job({"data_path": str(data)})
    first = lab.train(*job)
    again = Lab(out, quick=True).train(*job)
    assert (lab.made_now, again.folder, again.weights) == (1, first.folder, first.weights)
    assert f"saved {first.weights}" in (first.folder / "log.txt").read_text() and first.curve("loss")
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:40]))  # other content, same name
    other = Lab(out, quick=True)
    assert other.train(*job).folder != first.folder and other.made_now == 1


def test_runs_started_together_give_the_weights_of_runs_made_one_at_a_time(quick_lab, monkeypatch, capsys):
    """Guards the scheduling changing a result: three runs asked for together on two workers all start at once
    (at_once), longest first (expected_work: a long run started last finishes alone on one core); their weights
    must be byte for byte those the same commands give run one after another (one thread too), and every
    one of them recorded."""
    out, _ = quick_lab
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the lone runs' threads: those of the runs side by side
    lines = (out / "data" / "lora_medical_first64.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    sizes = (16, 64, 32)  # samples per run (quick: one epoch each)
    for n in sizes:
        (out / "data" / f"medical_{n}.jsonl").write_text("".join(lines[:n]), encoding="utf-8")
    jobs = [Lab(out, quick=True).lora_job({"data_path": str(out / "data" / f"medical_{n}.jsonl")}, seed=s)
            for n, s in zip(sizes, (11, 12, 13))]
    assert [expected_work(script, flags + ["--epochs", "2"]) for script, flags in jobs] == [32, 128, 64]
    one_at_a_time = Lab(out, quick=True, in_process=False)  # quick: one worker, each run a process of its own
    alone = [Path(r.weights).read_bytes() for r in one_at_a_time.train_all(jobs)]
    for run in one_at_a_time.train_all(jobs):
        shutil.rmtree(run.folder)
    together = Lab(out, quick=True, in_process=False)
    together.workers = 2
    capsys.readouterr()
    runs = together.train_all(jobs)
    started = [line for line in capsys.readouterr().err.splitlines() if line.startswith("$ python")]
    assert [next(n for n in sizes if f"medical_{n}.jsonl" in line) for line in started] == [64, 32, 16]
    assert together.made_now == 3 and [Path(r.weights).read_bytes() for r in runs] == alone


def test_a_variant_run_is_its_trainers_command(quick_lab):
    """Guards the lab's variants drifting from what `python -m lab.train_variant --variant NAME` trains:
    a variant job is that command (its flags left at the trainer's defaults dropped), and a failed
    command stops the lab with its own error line rather than passing for a result."""
    out, _ = quick_lab
    lab = Lab(out, quick=True)
    script, flags = lab.lora_job({"data_path": str(out / "data" / "lora_medical_first64.jsonl")}, variant="pissa",
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
                                                                     "variant": "lora", "lr_schedule": "cosine"}


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


def test_two_configurations_never_share_a_run(quick_lab):
    """Guards claim 12's possible mix-up (plain LoRA and full fine-tuning both ending at 1.494): whatever two
    experiments ask for, two different configurations (different trainers, or flags that parse to different
    settings) must get different run folders, and one configuration the same folder. The traps: a task's
    flag left after an experiment's setting (epochs), a setting equal to one trainer's default but not to
    what the job would otherwise pass (full fine-tuning's warm-up), a default spelled out, and the lab-only
    flag that moves a LoRA run to the lab's trainer."""
    out, _ = quick_lab
    lab = Lab(out, quick=True)
    task = lab.sweep_task()
    jobs = {
        "plain LoRA at 0.016": lab.lora_job(task, learning_rate=0.016, lora_plus_ratio=1),
        "full fine-tuning at 0.016": lab.full_job(task, learning_rate=0.016),
        "LoRA, 3 epochs": lab.lora_job(task, epochs=3),
        "LoRA, 4 epochs (train_lora.py's default, not the task's 1)": lab.lora_job(task, epochs=4),
        "LoRA": lab.lora_job(task),
        "full, warm-up 20 (train_full_sft.py's default, not the job's 10)": lab.full_job(task, warmup_iters=20),
        "full": lab.full_job(task),
        "LoRA, constant schedule": lab.lora_job(task, lr_schedule="constant"),
        "LoRA through the lab's trainer": lab.lora_job(task, variant="lora"),
        "LoRA, alpha = rank spelled out": lab.lora_job(task, lora_alpha=16, lora_rank=16, seed=1337),
    }
    folders = {name: lab._folder(script, lab._key(script, flags)) for name, (script, flags) in jobs.items()}
    same = [("LoRA", "LoRA through the lab's trainer"), ("LoRA", "LoRA, alpha = rank spelled out")]
    for a, b in same:
        assert jobs[a] == jobs[b] and folders[a] == folders[b], (a, b)
    distinct = {name for name in jobs if name not in {b for _, b in same}}
    assert len({folders[name] for name in distinct}) == len(distinct)
    parsed = {name: vars((stage_parser("full_sft") if script == "train_full_sft.py" else train_variant.build_parser()
                          if script == "lab.train_variant" else stage_parser("lora")).parse_args(flags))
              for name, (script, flags) in jobs.items()}
    assert parsed["LoRA, 4 epochs (train_lora.py's default, not the task's 1)"]["epochs"] == 4
    assert parsed["full, warm-up 20 (train_full_sft.py's default, not the job's 10)"]["warmup_iters"] == 20
    assert parsed["full"]["warmup_iters"] == 10 and parsed["LoRA, constant schedule"]["lr_schedule"] == "constant"
    a, b = lab.train_all([jobs["plain LoRA at 0.016"], jobs["full fine-tuning at 0.016"]])
    assert a.folder != b.folder and a.curve("loss") != b.curve("loss")  # two runs, two results


class FakeLab:
    """What sweeps.sweep uses of a Lab, with a loss that is a parabola in log(rate): best at `best`, no training."""

    def __init__(self, best, seeds=(1337, 1, 2), max_widen=4):
        self.best, self.seeds, self.max_widen, self.quick, self.sweeps, self.trained = best, seeds, max_widen, False, {}, []
        self.batches = 0  # train_all calls: each one a batch whose runs share the cores

    def sweep_task(self):
        return {"data_path": "x"}

    def lora_job(self, task, learning_rate, seed, **settings):
        return "train_lora.py", [learning_rate, seed]

    def train_all(self, jobs):
        self.batches += 1
        self.trained += [flags for _, flags in jobs]
        return [FakeRun(math.log2(lr / self.best) ** 2 + 0.01 * (seed % 7)) for _, (lr, seed) in jobs]


class FakeRun(Run):
    def __init__(self, loss):
        self.loss = loss

    def final(self, key="val_loss"):
        return self.loss


def test_a_sweep_widens_its_grid_until_the_best_rate_is_inside():
    """Guards a best learning rate reported from the edge of its grid (the first edition's prefix tuning): the
    grid must grow past whichever edge the best sits on until the best is inside, train only the new points, and
    give the best rate every seed; and say so when it runs out of room."""
    method = sweeps.lora("test", 4e-3)
    lab = FakeLab(best=3.2e-2)
    found = sweeps.sweep(lab, method)
    assert found.best == pytest.approx(3.2e-2) and found.inside and found.grid[-1] == pytest.approx(6.4e-2)
    assert len(found.at_best) == 3 and all(len(found.losses[lr]) == 1 for lr in found.grid if lr != found.best)
    assert len(lab.trained) == len(set(map(tuple, lab.trained)))  # nothing trained twice
    low = sweeps.sweep(FakeLab(best=2.5e-4), method)
    assert low.best == pytest.approx(2.5e-4) and low.inside and low.grid[0] == pytest.approx(1.25e-4)
    stuck = sweeps.sweep(FakeLab(best=1.0, max_widen=2), method)
    assert not stuck.inside and "a bound" in stuck.describe()
    every = sweeps.sweep(FakeLab(best=4e-3), sweeps.lora("every seed", 4e-3, every_seed=True))
    assert all(len(v) == 3 for v in every.losses.values())


def test_sweeps_side_by_side_find_what_each_finds_alone_in_fewer_batches():
    """Guards sweep_all, which advances several sweeps in step to keep the cores busy: each sweep must train
    exactly the runs, and end at exactly the best rate and grid, it does when swept alone (a lockstep that
    widened a finished sweep again, or stopped one early, would change verdicts), in fewer batches than
    one sweep after another."""
    methods = [sweeps.lora("near", 8e-3), sweeps.lora("far", 1e-3, every_seed=True), sweeps.lora("inside", 3.2e-2)]
    together = FakeLab(best=3.2e-2)
    found = sweeps.sweep_all(together, methods)
    alone_batches, alone_trained = 0, 0
    for method, got in zip(methods, found):
        alone = FakeLab(best=3.2e-2)
        expected = sweeps.sweep(alone, method)
        assert (got.losses, got.best, got.inside) == (expected.losses, expected.best, expected.inside)
        alone_batches, alone_trained = alone_batches + alone.batches, alone_trained + len(alone.trained)
    assert len(together.trained) == alone_trained and together.batches < alone_batches
    assert sweeps.sweep_all(together, methods[:1])[0] is found[0] and len(together.trained) == alone_trained  # cached


def test_the_last_runs_of_a_batch_share_the_cores_and_no_core_idles():
    """Guards the lab's scheduling: runs go `workers` at a time, but the last fewer than 2 x workers all start
    together (3 runs on 2 cores: one round of 1.5 run-times, not two rounds with a core idle in the second);
    never more processes than that, never fewer than a core each while runs are left."""
    assert [at_once(left, 2) for left in (8, 4, 3, 2, 1)] == [2, 2, 3, 2, 1]
    assert [at_once(left, 4) for left in (9, 8, 7, 5)] == [4, 4, 7, 5]
    assert [at_once(left, 1) for left in (5, 1)] == [1, 1]


# ---- figures: readable in five seconds


def absolute_marks(root):
    """{"data": [(x, y) of every plotted mark], "legend": [(x0, y0, x1, y1)], "ticks": {axis: [text]}}, in the SVG's
    own coordinates (each nested <g transform="translate(x y)"> added up); an axis is a panel's x or y ticks."""
    ns = "{http://www.w3.org/2000/svg}"
    found = {"data": [], "legend": [], "ticks": {}}

    def walk(node, dx, dy, in_data):
        match = re.match(r"translate\(([-\d.]+) ([-\d.]+)\)", node.get("transform", ""))
        if match:
            dx, dy = dx + float(match[1]), dy + float(match[2])
        in_data = in_data or node.get("class") == "data"
        tag = node.tag.removeprefix(ns)
        if node.get("class") == "legend-box":
            x, y = float(node.get("x")) + dx, float(node.get("y")) + dy
            found["legend"].append((x, y, x + float(node.get("width")), y + float(node.get("height"))))
        if node.get("class") == "tick":
            found["ticks"].setdefault((dx, dy, node.get("text-anchor")), []).append(node.text)
        if in_data and tag == "polyline":
            found["data"] += [(float(a) + dx, float(b) + dy) for a, b in (p.split(",") for p in node.get("points").split())]
        if in_data and tag == "circle":
            found["data"].append((float(node.get("cx")) + dx, float(node.get("cy")) + dy))
        if in_data and tag == "line":
            found["data"] += [(float(node.get("x1")) + dx, float(node.get("y1")) + dy), (float(node.get("x2")) + dx, float(node.get("y2")) + dy)]
        if in_data and tag == "rect":
            x, y = float(node.get("x")) + dx, float(node.get("y")) + dy
            found["data"] += [(x, y), (x + float(node.get("width")), y + float(node.get("height")))]
        for child in node:
            walk(child, dx, dy, in_data)

    walk(root, 0.0, 0.0, False)
    return found


def is_round(label: str) -> bool:
    """'0.25', '50%', '1e-05', '2,048', '64': an integer, or at most two significant digits."""
    value = float(label.replace(",", "").rstrip("%"))
    digits = f"{abs(value):.6e}".split("e")[0].rstrip("0").rstrip(".").replace(".", "")
    return value == int(value) or len(digits) <= 2


def axis_is_round(labels: list) -> bool:
    """Round ticks: each round itself, or evenly spaced by a step of 1, 2, 2.5 or 5 times a power of ten with every
    tick a multiple of it (7.35, 7.4, 7.45: steps of 0.05). 2.378 and 5.657 are neither."""
    if all(is_round(t) for t in labels):
        return True
    values = [float(t.replace(",", "").rstrip("%")) for t in labels]
    steps = [b - a for a, b in zip(values, values[1:])]
    if not steps or max(steps) - min(steps) > 1e-9 * max(map(abs, values)):
        return False
    step = sum(steps) / len(steps)
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
    return any(abs(mantissa - m) < 1e-6 for m in (1, 2, 2.5, 5)) and all(abs(v / step - round(v / step)) < 1e-6 for v in values)


def check_figure(path):
    root = ET.parse(path).getroot()
    marks = absolute_marks(root)
    bad = [labels for labels in marks["ticks"].values() if not axis_is_round(labels)]
    assert not bad, (path, bad)
    for x0, y0, x1, y1 in marks["legend"]:
        inside = [(x, y) for x, y in marks["data"] if x0 <= x <= x1 and y0 <= y <= y1]
        assert not inside, (path, inside[:3])


def test_every_lab_figure_has_round_ticks_and_a_legend_that_covers_no_data(quick_lab):
    """Guards the first edition's figures: ticks at 2.378 and 5.657, and a legend drawn over the lines it names."""
    out, findings = quick_lab
    for figure in {name for f in findings.values() for name in f["figures"]}:
        check_figure(out / "figures" / figure)


def test_the_committed_lab_figures_have_round_ticks_and_a_legend_that_covers_no_data():
    """Guards the figures students read on docs/lora_lab.md (the quick lab's only share their code): one drawn from
    real numbers with a tick at 2.378, or a legend over its lines, fails here; and a figure the page links exists."""
    page = (ROOT / "docs" / "lora_lab.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"figures/(lora_[\w]+\.svg)", page))
    assert linked, "docs/lora_lab.md links no figure"
    for name in sorted(linked):
        check_figure(ROOT / "docs" / "figures" / name)


def test_charts_keep_round_ticks_and_a_clear_legend_whatever_the_data(tmp_path):
    """Guards the plotter itself on awkward data: odd ranges, log axes over decades, points where a legend inside
    the plot would sit (its top right corner), fractions shown as percentages, threshold lines, several panels."""
    crowded = {f"series {i}": [(1, 2.378 + i), (8, 5.657 - i), (64, 9.99)] for i in range(6)}
    line_chart(crowded, tmp_path / "l.svg", "t", "rank", "loss", log_x=True, x_ticks=[1, 8, 64], refs=[(2.5, "a threshold")])
    line_chart({"a": [(3e-5, 0.31), (0.02, 0.94)]}, tmp_path / "p.svg", "t", "lr", "accuracy", log_x=True, percent=True)
    # a nearly flat curve (int8_base's loss once read 7.434, 7.434, 7.434, 7.435 on its axis: ticks 0.0002 apart)
    line_chart({"flat": [(0, 7.4342), (1, 7.4347), (2, 7.4351)]}, tmp_path / "f.svg", "t", "step", "loss")
    bar_chart({"wq": (1.2, 1.1, 1.3), "every Linear": (0.9, 0.9, 0.9)}, tmp_path / "b.svg", "t", "loss", zero=False,
              refs=[(1.0, "ref")])
    panels([("line", dict(title="one", series=crowded, x_label="x", y_label="y")),
            ("bar", dict(title="two", bars={"a": (0.3, 0.3, 0.3)}, x_label="share", percent=True, refs=[(0.25, "q")]))],
           tmp_path / "panels.svg", "t")
    for name in ("l.svg", "p.svg", "f.svg", "b.svg", "panels.svg"):
        check_figure(tmp_path / name)
    texts = [t.text for t in ET.parse(tmp_path / "p.svg").getroot().iter() if t.tag.endswith("text")]
    assert "50%" in texts or "40%" in texts
    assert nice_ticks(0.31, 0.94) == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert not axis_is_round(["2.378", "5.657", "8.936"]) and axis_is_round(["7.35", "7.4", "7.45"])
