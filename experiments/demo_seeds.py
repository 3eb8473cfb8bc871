"""Experiment: the demo over several seeds, and the spread of its results.

    python -m experiments.demo_seeds --seeds 1337 1 2 3 4      # five whole demos, ~5 minutes each
    python -m experiments.demo_seeds --seeds 1337 1 2 --table_only   # just re-read what those runs wrote
    python -m experiments.demo_seeds --seeds 1337 1 2 3 --dtype bfloat16 --out_dir out/demo_seeds_bf16   # training in bfloat16

A tiny model's accuracy on 52 questions moves 1.9 points per question, and two CPUs round floats
differently, so their runs of the same demo diverge step by step into different (equally valid)
models. One table from one machine therefore says little about the next machine; the spread over
seeds does. Each seed runs `python run_demo.py --seed S --out_dir OUT_DIR/seed_S` (every training
stage gets --seed S), then one table gives each run's numbers, the worst, mean and best, and whether
every run meets every target:

    | seed | SFT eval_general | + lora_medical: eval_medical | + lora_identity: eval_identity | largest eval_general drop | time | every target met |
"""
import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from demo import target_checks
from plumbing.device import DTYPES
from plumbing.errors import UserError, run_main

ROOT = Path(__file__).resolve().parent.parent


def build_parser():
    p = argparse.ArgumentParser(description="Run the demo with several seeds and print the spread of its results.")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2], help="seeds to run (default: %(default)s)")
    p.add_argument("--out_dir", default="out/demo_seeds", help="where the checkpoints go: one folder per seed, each a run_demo.py --out_dir (default: %(default)s)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="passed to run_demo.py: --dtype for every training stage (default: the scripts' own)")
    p.add_argument("--table_only", action="store_true",
                   help="run nothing: read the seeds' demo_results.json written by earlier runs and print the table")
    return p


def run_folder(out_dir, seed):
    """Where the run with `seed` goes, as an absolute path (run_demo.py runs its stages in the repository)."""
    return Path(out_dir).resolve() / f"seed_{seed}"


def row(results):
    """One run's numbers: {"SFT eval_general": 0.654, ..., "drop": 0.096, "time": 544.0, "met": True}."""
    columns = {c["name"]: {s: r["accuracy"] for s, r in c["sets"].items()} for c in results["columns"]}
    base, medical, identity = columns["base"], columns["+lora_medical"], columns["+lora_identity"]
    return {"SFT eval_general": base["eval_general"],
            "+ lora_medical: eval_medical": medical["eval_medical"],
            "+ lora_identity: eval_identity": identity["eval_identity"],
            "largest eval_general drop": max(base["eval_general"] - medical["eval_general"],
                                             base["eval_general"] - identity["eval_general"]),
            "time": results.get("wall_s", sum(results["times_s"].values())),
            "met": all(ok for _, ok in target_checks(results))}


def spread_table(rows):
    """{seed: row} -> the markdown table: one line per seed, then worst, mean and best per column."""
    names = ["SFT eval_general", "+ lora_medical: eval_medical", "+ lora_identity: eval_identity", "largest eval_general drop"]
    lines = ["| seed | " + " | ".join(names) + " | time | every target met |", "|---|" + "---:|" * (len(names) + 1) + "---|"]
    for seed, r in rows.items():
        lines.append(f"| {seed} | " + " | ".join(f"{100 * r[n]:.1f}%" if n != names[-1] else f"{100 * r[n]:.1f} points"
                                                 for n in names) + f" | {r['time']:.0f} s | {'yes' if r['met'] else 'NO'} |")
    # for the drop, lower is better: its "worst" is the largest
    worst = {n: (max if n == names[-1] else min)(r[n] for r in rows.values()) for n in names}
    best = {n: (min if n == names[-1] else max)(r[n] for r in rows.values()) for n in names}
    mean = {n: sum(r[n] for r in rows.values()) / len(rows) for n in names}
    for label, values in (("worst", worst), ("mean", mean), ("best", best)):
        lines.append(f"| **{label}** | " + " | ".join(f"{100 * values[n]:.1f}" + ("%" if n != names[-1] else " points")
                                                    for n in names) + " | | |")
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    rows = {}
    for seed in args.seeds:
        folder = run_folder(args.out_dir, seed)
        if not args.table_only:
            flags = ["--seed", str(seed), "--out_dir", str(folder)] + (["--dtype", args.dtype] if args.dtype else [])
            print(f"$ python run_demo.py {shlex.join(flags)}", flush=True)
            command = [sys.executable, "run_demo.py", *flags]
            if subprocess.run(command, cwd=ROOT).returncode != 0:
                raise UserError(f"the demo with --seed {seed} failed; its output is above")
        results_file = folder / "demo_results.json"
        if not results_file.is_file():
            raise UserError(f"{results_file} not found: run without --table_only to make it")
        results = json.loads(results_file.read_text(encoding="utf-8"))
        if results.get("dtype") != args.dtype:  # a bfloat16 spread must not pass for a float32 one
            raise UserError(f"{results_file} was made with --dtype {results.get('dtype') or '(default)'}, not "
                            f"{args.dtype or '(default)'}: pass the --dtype it was made with")
        rows[seed] = row(results)
    table = spread_table(rows)
    if args.dtype:
        table = f"training stages with --dtype {args.dtype}\n\n{table}"
    print("\n" + table)
    (Path(args.out_dir) / "spread.md").write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(run_main(main))
