"""Experiment: the demo over several seeds and CPU code paths, and the spread of its results.

    python -m experiments.demo_seeds --seeds 1337 1 2 3 4 5 --avx2_seeds 1337 1 2   # nine whole demos
    python -m experiments.demo_seeds --seeds 1337 1 2 3 4 5 --avx2_seeds 1337 1 2 --table_only   # re-read them
    python -m experiments.demo_seeds --seeds 1337 1 2 3 --dtype bfloat16 --out_dir out/demo_seeds_bf16   # training in bfloat16

Two CPUs round floats differently, so their runs of the same demo diverge step by step into different
(equally valid) models; so do two seeds. One table from one machine therefore says little about the
next machine; the spread over seeds and code paths does. Each seed runs `python run_demo.py --seed S
--out_dir OUT_DIR/seed_S` (every training stage gets --seed S); each of --avx2_seeds runs it into
OUT_DIR/avx2_seed_S with the CPU code path forced to AVX2 (experiments/spread.py's CPU_PATHS), which
nearly every x86 CPU executes and which rounds as one without AVX-512 would. Then one table
(experiments/spread.py): the worst case first, each run, and the worst case's margin to each target.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from experiments.spread import CPU_PATHS, spread_row, spread_table
from plumbing.device import DTYPES
from plumbing.errors import UserError, run_main

ROOT = Path(__file__).resolve().parent.parent


def build_parser():
    p = argparse.ArgumentParser(description="Run the demo with several seeds and print the spread of its results.")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2], help="seeds to run (default: %(default)s)")
    p.add_argument("--avx2_seeds", type=int, nargs="+", default=[],
                   help="seeds to run on the forced AVX2 code path too (default: none)")
    p.add_argument("--out_dir", default="out/demo_seeds", help="where the checkpoints go: one folder per seed, each a run_demo.py --out_dir (default: %(default)s)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="passed to run_demo.py: --dtype for every training stage (default: the scripts' own)")
    p.add_argument("--table_only", action="store_true",
                   help="run nothing: read the seeds' demo_results.json written by earlier runs and print the table")
    return p


def run_folder(out_dir, seed, cpu_path="default"):
    """Where the run with `seed` on `cpu_path` goes, as an absolute path (run_demo.py runs its stages in the repository)."""
    return Path(out_dir).resolve() / (f"seed_{seed}" if cpu_path == "default" else f"{cpu_path}_seed_{seed}")


def run_demo(folder, seed, cpu_path, dtype) -> None:
    """One whole demo: run_demo.py --seed S --out_dir FOLDER [--dtype D], on `cpu_path`."""
    flags = ["--seed", str(seed), "--out_dir", str(folder)] + (["--dtype", dtype] if dtype else [])
    forced = " ".join(f"{k}={v}" for k, v in CPU_PATHS[cpu_path].items())
    print(f"$ {forced + ' ' if forced else ''}python run_demo.py {shlex.join(flags)}", flush=True)
    if subprocess.run([sys.executable, "run_demo.py", *flags], cwd=ROOT,
                      env={**os.environ, **CPU_PATHS[cpu_path]}).returncode != 0:
        raise UserError(f"the demo with --seed {seed} ({cpu_path} CPU path) failed; its output is above")


def read_results(folder, cpu_path, dtype) -> dict:
    """A finished run's demo_results.json, refused if it was made with another --dtype or CPU path
    (a bfloat16 or AVX2 spread must not pass for another)."""
    results_file = folder / "demo_results.json"
    if not results_file.is_file():
        raise UserError(f"{results_file} not found: run without --table_only to make it")
    results = json.loads(results_file.read_text(encoding="utf-8"))
    if results.get("dtype") != dtype:
        raise UserError(f"{results_file} was made with --dtype {results.get('dtype') or '(default)'}, not "
                        f"{dtype or '(default)'}: pass the --dtype it was made with")
    if results.get("cpu_env", {}) != CPU_PATHS[cpu_path]:
        raise UserError(f"{results_file} was made with the CPU code path {results.get('cpu_env') or 'default'}, "
                        f"not {CPU_PATHS[cpu_path] or 'default'}: rerun it (without --table_only)")
    return results


def main(argv=None):
    args = build_parser().parse_args(argv)
    runs = [("default", seed) for seed in args.seeds] + [("avx2", seed) for seed in args.avx2_seeds]
    rows = {}
    for cpu_path, seed in runs:
        folder = run_folder(args.out_dir, seed, cpu_path)
        if not args.table_only:
            run_demo(folder, seed, cpu_path, args.dtype)
        results = read_results(folder, cpu_path, args.dtype)
        row = spread_row(results)
        row["time"] = results["wall_s"]
        rows[f"seed {seed}" + ("" if cpu_path == "default" else f", {cpu_path}")] = row
    table = spread_table(rows)
    times = [r["time"] for r in rows.values()]
    table += f"\n\nwall time per demo: {min(times):.0f}-{max(times):.0f} s"
    if args.dtype:
        table = f"training stages with --dtype {args.dtype}\n\n{table}"
    print("\n" + table)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.out_dir) / "spread.md").write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(run_main(main))
