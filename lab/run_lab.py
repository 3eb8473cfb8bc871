"""The LoRA lab, all of it: every claim measured, then docs/lora_lab.md and its figures written.

    python -m lab.run_lab                          # everything, from the demo's first stages (~50 min on 2 cores)
    python -m lab.run_lab --only memory low_rank   # some claims; the report keeps the others' last sections
    python -m lab.run_lab --quick --out_dir /tmp/lab   # the code path in a minute; numbers meaningless

Every experiment is one module of lab/ (lab/memory.py, ...), runnable alone (`python -m lab.memory`);
this script runs them in the order of the report card and writes:
    docs/lora_lab.md       the report card (claim | measured | verdict | command | figure) and a section per claim
    docs/figures/*.svg     the figures
    out/lab/findings.json  each claim's finding, so --only can rewrite the report with the rest kept
Training runs and the base checkpoints are made once and reused by content (lab/lab.py): a second
run of this command only re-measures; a change of code or data remakes what depends on it.
"""
import argparse
import json
import platform
import sys
import time
from dataclasses import asdict

import torch

from bench.machine import cpu_model
from lab import (adapter_swap, alpha_scaling, baselines, forgetting, initialisation, learning_rate, lora_plus,
                 low_rank, memory, merged_latency, trainable_share, which_matrices, zero_start)
from lab.lab import ROOT, Finding, add_lab_args, lab_from_args, measure
from plumbing.atomic import atomic_write_text
from plumbing.errors import UserError, run_main

EXPERIMENTS = [trainable_share, memory, zero_start, initialisation, merged_latency, adapter_swap, forgetting, low_rank,
               alpha_scaling, lora_plus, which_matrices, learning_rate, baselines]
NAMES = [m.__name__.rsplit(".", 1)[-1] for m in EXPERIMENTS]
HOUR = 3600


def report(findings: list, header: str) -> str:
    """docs/lora_lab.md: the header, the report card, then each claim's section."""
    card = ["| # | claim | what we measured | verdict | command | figure |", "|---|---|---|---|---|---|"]
    for f in findings:
        figure = ", ".join(f"[{name.removeprefix('lora_').removesuffix('.svg')}](figures/{name})" for name in f.figures) or "-"
        card.append(f"| {f.number} | **{f.title}**: {f.claim} | {f.measured} | **{f.verdict}** | "
                    f"`python -m lab.{f.module}` | {figure} |")
    return "\n\n".join([header, "\n".join(card), *(f.section() for f in findings)]).rstrip() + "\n"


def history(runs: dict) -> str:
    """How this page was made: the last full run, and any --only runs since."""
    full = runs.get("full")
    if full is None:
        return "(the whole lab's time was not recorded)"
    text = f"{full['minutes']:.0f} min for the whole lab, " + (
        f"from nothing ({full['made']} training runs made, the base checkpoints included)" if full["from_nothing"] else
        f"{full['made']} training runs made and the others reused")
    for only in runs.get("only", []):
        text += (f"; then `--only {' '.join(only['names'])}` re-measured {'it' if len(only['names']) == 1 else 'them'} "
                 f"in {only['minutes']:.1f} min ({only['made']} runs made)")
    return text


def header(lab, runs) -> str:
    base_minutes = (runs["full"]["base_seconds"] if "full" in runs else lab.base_seconds) / 60  # the full run's
    return f"""# The LoRA lab: every claim about LoRA, measured

What the LoRA write-ups say, tested on the demo's own model (dim 128, 4 layers, 1.1M parameters,
trained by `python run_demo.py`'s first stages) and, where size matters, at MiniMind2's sizes. Each
claim is one module of [`lab/`](../lab/), runnable alone; one command runs them all and rewrites
this page and its figures:

    python -m lab.run_lab

This page was made by that command on {cpu_model()} ({torch.get_num_threads()} threads, torch
{torch.__version__}, Python {platform.python_version()}):
{history(runs)}.
The demo's checkpoints (pretraining, SFT and its two adapters, by the demo's own commands) took
{base_minutes:.1f} min of it. Each section ends with its module's command, the minutes it took in the lab's run (a training run shared with
an earlier claim, or one of the demo's adapters, is counted there) and what it would cost alone
from the SFT model (the recorded times of the runs it reuses included). Training runs go two at a
time, one thread each.

How to read it: accuracies are on the demo's 52-question sets, where one question is 1.9 points, so
they are given as the mean and range over seeds {', '.join(map(str, lab.seeds))}. Sweeps (many runs each)
use the **sweep task**, the first 832 samples of `lora_medical.jsonl` for one epoch (48 steps),
and compare the final validation loss (continuous, so finer than accuracy); the **full task** is the
demo's own `lora_medical` training (4 epochs, 416 steps). Verdicts: *holds*, *holds with a caveat*
(true here only in part or with a condition, said in the row), *does not hold at this scale* (and why).
Small models diverge between CPUs: rerun on yours and expect the same verdicts, not the same digits.

## Report card"""


def main(argv=None):
    p = argparse.ArgumentParser(description="Run the LoRA lab and write docs/lora_lab.md with its figures.")
    add_lab_args(p)
    p.add_argument("--only", nargs="+", choices=NAMES, help="run only these claims; the others' sections come from "
                                                             "OUT_DIR/findings.json (a full run must have made them)")
    p.add_argument("--report_only", action="store_true", help="measure nothing: rewrite the page from OUT_DIR/findings.json "
                                                             "(after a change to the page's wording)")
    args = p.parse_args(argv)
    lab = lab_from_args(args)
    store = lab.out / "findings.json"
    saved = json.loads(store.read_text()) if store.is_file() and (args.only or args.report_only) else {}
    runs = saved.pop("__runs__", {})
    if args.report_only:
        if not runs or any(n not in saved for n in NAMES):
            raise UserError(f"--report_only: {store} lacks findings; run the whole lab once first")
        return write_report(lab, [Finding(**saved[n]) for n in NAMES], runs)
    missing = [n for n in NAMES if n not in (args.only or NAMES) and n not in saved]
    if missing:
        raise UserError(f"--only: no earlier finding for {', '.join(missing)} in {store}; run the whole lab once first")

    start = time.perf_counter()
    from_nothing = not (lab.out / "runs").exists()
    findings = {}
    for name, module in zip(NAMES, EXPERIMENTS):
        if args.only and name not in args.only:
            findings[name] = Finding(**saved[name])
            continue
        print(f"\n=== claim {NAMES.index(name) + 1}: lab/{name}.py", file=sys.stderr, flush=True)
        findings[name] = measure(lab, module.run)
        print(f"--> {findings[name].verdict}: {findings[name].measured} ({findings[name].lab_seconds / 60:.1f} min; "
              f"alone {findings[name].seconds / 60:.1f})", file=sys.stderr, flush=True)
        atomic_write_text(store, json.dumps({n: asdict(f) for n, f in findings.items()} | {k: v for k, v in saved.items() if k not in findings}
                                            | {"__runs__": runs}, indent=1, ensure_ascii=False) + "\n")
    seconds = time.perf_counter() - start
    this = {"minutes": round(seconds / 60, 2), "made": lab.made_now, "from_nothing": from_nothing,
            "base_seconds": round(lab.base_seconds, 1)}
    if args.only:
        runs.setdefault("only", []).append({"names": args.only, **this})
    else:
        runs = {"full": this}
    atomic_write_text(store, json.dumps({n: asdict(f) for n, f in findings.items()} | {"__runs__": runs},
                                        indent=1, ensure_ascii=False) + "\n")
    write_report(lab, list(findings.values()), runs)
    print(f"({seconds / 60:.1f} min)" + ("" if seconds <= HOUR or args.quick else "; over the hour the lab promises"))


def write_report(lab, findings, runs) -> None:
    """docs/lora_lab.md (OUT_DIR/lora_lab.md when quick) from the findings."""
    target = (lab.out if lab.quick else ROOT / "docs") / "lora_lab.md"
    atomic_write_text(target, report(findings, header(lab, runs)))
    print(f"wrote {target}")


if __name__ == "__main__":
    sys.exit(run_main(main))
