"""The LoRA lab, all of it: every claim measured, then docs/lora_lab.md and its figures written.

    python -m lab.run_lab                          # everything, from the demo's first stages (about 76 min on 2 cores)
    python -m lab.run_lab --only memory low_rank   # some claims; the report keeps the others' last sections
    python -m lab.run_lab --quick --out_dir /tmp/lab   # the code path in seconds; numbers meaningless

Every claim is one module of lab/ (lab/memory.py, ...), runnable alone (`python -m lab.memory`), with
its rule written in it before the run (its `verdict` function, tests/test_lab_verdicts.py). The report
groups the claims by the write-up they come from (GROUPS) and numbers them in that order; this script
runs them in that order and writes:
    docs/lora_lab.md       the report card (claim | source | measured | verdict | command | figure), a
                           section per claim, and what changed since the first edition
    docs/figures/*.svg     the figures (a lora_*.svg no claim draws any more is removed)
    README.md, docs/lora.md  their "measured" blocks (between BLOCK's markers): the headline claims and the
                           rules of thumb with their verdicts, so the three pages say the same
    out/lab/findings.json  each claim's finding, so --only can rewrite the report with the rest kept
Training runs and the base checkpoints are made once and reused by content (lab/lab.py): a second
run of this command only re-measures; a change of code or data remakes what depends on it.
"""
import argparse
import json
import platform
import sys
import textwrap
import time
from dataclasses import asdict

import torch

from bench.machine import cpu_model
from demo import stage_parser
from lab import (adapter_latency, adapter_swap, alpha_choice, alpha_scaling, baselines, cosine, data_size, dora, dropout, epochs,
                 far_tasks, forgetting, gauss_init, gpt3_savings, int8_base, kaiming_init, large_alpha, learning_rate,
                 learning_rate_minimind, learns_less, lora_plus, low_rank, memory, merged_latency, more_epochs, pissa,
                 prefix_tuning, qlora, rank_allocation, rank_table, rslora, scale_alpha, subtract_switch, swapped_init, task_merging, trainable_share,
                 which_matrices, zero_init, zero_start)
from lab.lab import FIGURES, ROOT, Finding, add_lab_args, lab_from_args, measure
from plumbing.atomic import atomic_write_text
from plumbing.resume import count_steps
from plumbing.errors import UserError, run_main

# (write-up, what it is, its claims' modules in report order): the file names are those of the five write-ups
# the lab tests (the project's shared materials, writeups/; tests/fixtures/writeups/README.md says where they come from)
GROUPS = [
    ("000_lora_explainer.txt", "LoRA's idea, a from-scratch implementation, PEFT usage, rules of thumb",
     [trainable_share, merged_latency, adapter_swap, rank_table, int8_base, dropout, epochs, alpha_choice, learning_rate,
      lora_plus]),
    ("001_lora_paper_walkthrough.txt", "a walk through the LoRA paper, its predecessors and its experiments",
     [adapter_latency, prefix_tuning, baselines, zero_start, swapped_init, gpt3_savings, subtract_switch, low_rank,
      alpha_scaling, which_matrices]),
    ("002_minimind_lora.txt", "MiniMind's LoRA: its code, its resource table, its tips",
     [forgetting, memory, far_tasks, data_size, learning_rate_minimind, more_epochs, cosine]),
    ("003_lora_notes.txt", "short notes: alpha, initialisation", [large_alpha, zero_init, gauss_init]),
    ("004_lora_steps.txt", "LoRA step by step, with code", [scale_alpha, kaiming_init]),
    ("papers", "what the papers behind the write-ups claim, where the write-ups lead to it",
     [learns_less, pissa, rslora, qlora, dora, task_merging, rank_allocation]),
]
EXPERIMENTS = [m for _, _, modules in GROUPS for m in modules]
NAMES = [m.__name__.rsplit(".", 1)[-1] for m in EXPERIMENTS]
MINUTES = 75  # what the whole lab may take from nothing on 2 cores
BLOCK = ("<!-- lab/run_lab.py writes from here: edit the lab, not this block -->", "<!-- lab/run_lab.py writes up to here -->")
# The claims the README shows, and the rules of thumb docs/lora.md lists, with their verdicts.
HEADLINES = ["zero_start", "merged_latency", "memory", "forgetting", "learns_less", "low_rank", "alpha_scaling", "lora_plus",
             "learning_rate", "baselines"]
RULES_OF_THUMB = ["rank_table", "alpha_choice", "alpha_scaling", "rslora", "scale_alpha", "large_alpha", "learning_rate",
                  "learning_rate_minimind", "lora_plus", "dropout", "epochs", "more_epochs", "data_size", "cosine",
                  "swapped_init", "zero_init", "gauss_init", "kaiming_init", "int8_base", "qlora", "which_matrices"]

# The first edition's thirteen claims: (its verdict, the modules that measure it now, what changed and why).
FIRST_EDITION = {
    "Trainable share": ("holds with a caveat", ["trainable_share"],
                        "the verdict was written in, not computed; now the 0.1%-1% band is checked for MiniMind2's own "
                        "LoRA at both sizes and for the demo's adapter"),
    "Memory": ("holds with a caveat", ["memory"], "one verdict covered the quarter of the memory and the quarter of the time; "
               "now each half has its rule"),
    "B = 0": ("holds", ["zero_start"], "every zero-factor start is checked (the write-ups' A inits too), with a rounding branch"),
    "Initialisation": ("holds", ["zero_init", "swapped_init", "pissa"],
                       "three claims shared one verdict, and the swapped and PiSSA starts were compared at LoRA+'s one rate, "
                       "which favours a B-first start; now plain LoRA, each start at its own best rate, each claim its verdict"),
    "Merged latency": ("holds", ["merged_latency"], "a caveat branch for unmerged adapters that cost nothing either; the figure "
                       "no longer draws one merged measurement across ranks"),
    "Swap adapters": ("holds", ["adapter_swap"], "the rule names its two thresholds (file size, swap speed)"),
    "No forgetting; LoRA learns less and forgets less": (
        "holds with a caveat", ["forgetting", "learns_less"],
        "the old rule returned a caveat when LoRA learned more and forgot more (its second half refuted); now two claims "
        "with a verdict per half, each method at its own best rate, LoRA with and without the embedding, and forgetting "
        "also measured on eval_general_unseen"),
    "Low rank": ("holds with a caveat", ["low_rank"], "rank(B·A) <= r cannot fail and is no longer a verdict; random "
                 "baselines use each matrix's own shape; similarity over every layer, both sides, three seed pairs"),
    "alpha / r": ("holds with a caveat", ["alpha_scaling", "rslora"],
                  "the old rule had no failing branch; now 'without retuning' is whether the tuned rate stays best at "
                  "other ranks, and rsLoRA's own claim (larger ranks keep improving) has its verdict"),
    "LoRA+": ("holds", ["lora_plus"], "plain LoRA ran at LoRA+'s learning rate; now each at its own best rate, from the "
              "same sweeps as the learning-rate claim"),
    "Which matrices": ("holds", ["which_matrices"], "one learning rate for every target set; now each at its own, two halves"),
    "Learning rate": ("holds with a caveat", ["learning_rate", "learning_rate_minimind"],
                      "one seed, and any ratio above 1 was a caveat; now every rate at every seed, each best checked inside "
                      "its grid, and each write-up's band (10-100x, 3-5x) its own verdict"),
    "LoRA vs its predecessors": ("holds", ["baselines"], "the prefix had 12x fewer parameters and a rate at its grid's edge, "
                                 "and only LoRA adapted the embedding: now parameters matched within 10%, every method at "
                                 "its best rate inside its grid, LoRA with and without the embedding, the speed half drawn"),
}


def card(findings: list) -> str:
    """The report card: one table per write-up."""
    out = []
    by_module = {f.module: f for f in findings}
    for name, what, modules in GROUPS:
        rows = ["| # | claim | source | what we measured | verdict | command | figure |", "|---|---|---|---|---|---|---|"]
        for module in modules:
            f = by_module[module.__name__.rsplit(".", 1)[-1]]
            figure = ", ".join(f"[{n.removeprefix('lora_').removesuffix('.svg')}](figures/{n})" for n in f.figures) or "-"
            rows.append(f"| [{f.number}](#{f.module}) | **{f.title}**: {f.claim} | {f.source} | {f.measured} | "
                        f"{f.verdict_text()} | `python -m lab.{f.module}` | {figure} |")
        out.append(f"### {name}: {what}\n\n" + "\n".join(rows))
    return "\n\n".join(out)


def changes(findings: list) -> str:
    """What changed since the first edition: each of its claims, its old verdict and the new ones."""
    by_module = {f.module: f for f in findings}
    rows = []
    for old, (verdict, modules, why) in FIRST_EDITION.items():
        now = "; ".join(f"{by_module[m].number} {m}: {by_module[m].verdict_text(bold=False)}" for m in modules)
        rows.append(f"| {old} | {verdict} | {now} | {why} |")
    return ("## What changed since the first edition\n\nThe first edition had thirteen claims. Each now has a rule set before "
            "the run and a verdict per half; comparisons are at matched parameters and each method's best learning rate; "
            "verdicts rest on three seeds. The other claims are new: the ones the write-ups make that the first edition did "
            "not test.\n\n| first edition's claim | its verdict | now | what changed |\n|---|---|---|---|\n" + "\n".join(rows))


def report(findings: list, header: str) -> str:
    """docs/lora_lab.md: the header, the report card, each write-up's sections, what changed."""
    sections = []
    by_module = {f.module: f for f in findings}
    for name, what, modules in GROUPS:
        sections.append(f"## {name}\n\n{what}.")
        sections += [by_module[m.__name__.rsplit(".", 1)[-1]].section() for m in modules]
    return "\n\n".join([header, card(findings), *sections, changes(findings)]).rstrip() + "\n"


def history(runs: dict) -> str:
    """How this page was made: the last full run, and any --only runs since."""
    full = runs.get("full")
    if full is None:
        return "(the whole lab's time was not recorded)"
    text = f"{full['minutes']:.0f} min for the whole lab, " + (
        f"from nothing ({full['made']} training runs made, the base checkpoints included)" if full["from_nothing"] else
        f"{full['made']} training runs made and the others reused")
    if full["from_nothing"] and full["minutes"] > MINUTES:
        text += f", over the {MINUTES} minutes the lab aims at"
    for only in runs.get("only", []):
        text += (f"; then `--only {' '.join(only['names'])}` re-measured {'it' if len(only['names']) == 1 else 'them'} "
                 f"in {only['minutes']:.1f} min ({only['made']} runs made)")
    return text


def header(lab, runs) -> str:
    base_minutes = (runs["full"]["base_seconds"] if "full" in runs else lab.base_seconds) / 60  # the full run's
    lora = stage_parser("lora").parse_args([])  # the demo's LoRA stage: the full task's settings
    samples = sum(1 for line in (ROOT / lora.data_path).read_text(encoding="utf-8").splitlines() if line.strip())
    _, full_steps = count_steps(dict(samples=samples - lora.val_samples, world_size=1, batch_size=lora.batch_size,
                                     epochs=lora.epochs, accumulation_steps=lora.accumulation_steps))
    questions = len(lab.eval_items("eval_medical"))
    return f"""# The LoRA lab: every claim about LoRA, measured

What the LoRA write-ups say ({len(EXPERIMENTS)} claims from five write-ups and the papers they lean on), tested on
the demo's own model (dim 128, 4 layers, 1.1M parameters, trained by `python run_demo.py`'s first
stages) and, where size matters, at MiniMind2's sizes. Each claim is one module of [`lab/`](../lab/),
runnable alone; one command runs them all and rewrites this page and its figures:

    python -m lab.run_lab

This page was made by that command on {cpu_model()} (torch
{torch.__version__}, Python {platform.python_version()}):
{history(runs)}.
The demo's checkpoints (pretraining, SFT and its two adapters, by the demo's own commands) took
{base_minutes:.1f} min of it. Each section ends with its module's command, the minutes it took in the
lab's run (a training run shared with an earlier claim is counted there) and what it would cost alone
from the demo's checkpoints (the recorded times of the runs it reuses included, two at a time).
Training runs go two at a time, one thread each, the last three of a batch all at once (lab/lab.py's
`at_once`), and the sweeps a claim compares advance side by side (lab/sweeps.py's `sweep_all`).

How to read it. Every verdict comes from a rule written in its module before the run, quoted in its
section; a claim with two parts has a verdict per part. Verdicts: *holds*; *holds with a caveat* (true
only in part or with a condition, said in the rule); *does not hold at this scale*. Every number a
verdict rests on is a mean over seeds {', '.join(map(str, lab.seeds))} with its range in brackets, and
a difference is called only when the ranges over seeds do not overlap; otherwise it is *within noise*.
Methods are compared at matched trainable parameters (within 10%, said in the tables), each at its own
best learning rate: a sweep on the **sweep task** (the first 832 samples of `lora_medical.jsonl`, one
epoch: 48 steps), its grid widened until the best rate is inside it (lab/sweeps.py). The sweep task's
final validation loss is the measure there (continuous, so finer than accuracy); the **full task** is
the demo's own training ({lora.epochs} epochs, {full_steps} steps), scored on the demo's question sets, where one
question of {questions} is {100 / questions:.1f} points. Forgetting is also measured on `eval_general_unseen.jsonl`
(questions in forms no training file uses). Small models diverge between CPUs: rerun on yours and expect the same verdicts,
not the same digits.

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
        print(f"--> {findings[name].verdict_text(bold=False)}: {findings[name].measured} ({findings[name].lab_seconds / 60:.1f} "
              f"min; alone {findings[name].seconds / 60:.1f})", file=sys.stderr, flush=True)
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
    over = seconds > MINUTES * 60 and not args.quick and not args.only
    print(f"({seconds / 60:.1f} min)" + (f"; over the {MINUTES} minutes the lab promises" if over else ""))


def readme_block(findings: list, runs: dict) -> str:
    """README.md's "What LoRA does, measured": the headline claims, as the last run measured them."""
    by_module = {f.module: f for f in findings}
    full = runs.get("full", {})
    rows = [f"| [{by_module[m].title}](docs/lora_lab.md#{m}) | {by_module[m].measured} | {by_module[m].verdict_text(bold=False)} |"
            for m in HEADLINES]
    since = runs.get("only", [])  # claims measured (or added) after the full run: its minutes are not the whole lab's
    minutes = (f": its last full run took {full['minutes']:.0f} minutes on 2 CPU cores"
               + (f", and {len({n for o in since for n in o['names']})} claims were added or re-measured alone since"
                  if since else "")) if full else ""
    intro = (f"`python -m lab.run_lab` puts {len(findings)} claims of the LoRA write-ups (and of the papers they lean on) "
             "to the test on the demo's own model, and at MiniMind2's sizes where size matters"
             + minutes + ". One module of [`lab/`](lab) per "
             "claim, each with its rule written before the run, three seeds, every method at its own best learning rate. "
             "Some headlines of its report card, [docs/lora_lab.md](docs/lora_lab.md), where every number has its command "
             "and figure:")
    return (textwrap.fill(intro, 100) + "\n\n| claim | measured here | verdict |\n|---|---|---|\n" + "\n".join(rows)
            + "\n\n![LoRA and full fine-tuning: learning against forgetting](docs/figures/lora_learns_less.svg)")


def lora_md_block(findings: list) -> str:
    """docs/lora.md's rules of thumb, each with the lab's verdict and a link to what was measured."""
    by_module = {f.module: f for f in findings}
    rows = [f"| {by_module[m].claim} | {by_module[m].source} | [{by_module[m].verdict_text(bold=False)}](lora_lab.md#{m}) |"
            for m in RULES_OF_THUMB]
    return ("| rule of thumb | from | verdict on the demo's model (link: what was measured) |\n|---|---|---|\n"
            + "\n".join(rows))


def replace_block(path, text) -> None:
    """Put `text` between the two BLOCK markers of the file at `path`."""
    content = path.read_text(encoding="utf-8")
    start, end = content.index(BLOCK[0]) + len(BLOCK[0]), content.index(BLOCK[1])
    atomic_write_text(path, content[:start] + "\n" + text.strip() + "\n" + content[end:])


def write_report(lab, findings, runs) -> None:
    """docs/lora_lab.md and the measured blocks of README.md and docs/lora.md from the findings (with --quick,
    copies of the three under OUT_DIR); in docs/figures, a lora_*.svg that no finding draws any more is removed
    (a figure on the page is one this run measured)."""
    target = (lab.out if lab.quick else ROOT / "docs") / "lora_lab.md"
    atomic_write_text(target, report(findings, header(lab, runs)))
    readme, lora_md = ROOT / "README.md", ROOT / "docs" / "lora.md"
    if lab.quick:  # the same code path, on copies
        readme, lora_md = lab.out / "README.md", lab.out / "lora.md"
        for copy, original in ((readme, ROOT / "README.md"), (lora_md, ROOT / "docs" / "lora.md")):
            atomic_write_text(copy, original.read_text(encoding="utf-8"))
    replace_block(readme, readme_block(findings, runs))
    replace_block(lora_md, lora_md_block(findings))
    if not lab.quick:
        drawn = {name for f in findings for name in f.figures}
        for stale in sorted(p for p in FIGURES.glob("lora_*.svg") if p.name not in drawn):
            stale.unlink()
            print(f"removed {stale} (no claim draws it)")
    print(f"wrote {target}")


if __name__ == "__main__":
    sys.exit(run_main(main))
