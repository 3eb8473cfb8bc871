"""Experiment: the demo's two adapters, trained one way on several SFT models, scored against the demo's targets.

    python -m experiments.adapter_configs --bases out/demo_seeds/seed_*              # train_lora.py's defaults
    python -m experiments.adapter_configs --bases out/demo_seeds/seed_* --name wq_wo -- --lora_targets wq,wo
    python -m experiments.adapter_configs --bases out/demo_seeds/seed_* --avx2_bases out/demo_seeds/avx2_seed_*

A model this small ends where its seed and its CPU's rounding take it, so one adapter configuration is
judged over several SFT models at once: each folder of --bases holds a full_sft_128.pth (run_demo.py's
--out_dir, or train_pretrain.py + train_full_sft.py with --seed). On each, lora_medical and lora_identity
are trained as the demo trains them (`python train_lora.py`, with the flags after `--` added to both, and
--medical / --identity to one), then scored as the demo scores them (eval_model.py --compare on its four
sets), and the demo's targets checked (demo.target_checks). One table (experiments/spread.py): the worst
case first, a row per SFT model, the mean and best, and the worst case's margin to each target -- which
must be at least 5 points.

Runs go --workers at a time, one thread each (a second thread gains a model this small little; two runs
side by side gain nearly 2x). The SFT models of --avx2_bases were trained with the CPU code path forced to
AVX2 (experiments/spread.py's CPU_PATHS; experiments/demo_seeds.py --avx2_seeds makes them), which rounds
as another CPU would, and their adapters are trained and scored under it too. Everything goes to
OUT_DIR/NAME/<base folder name>/ (avx2-<name> for those); a finished adapter or evaluation is not made again.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from demo import EVAL_FILES
from experiments.spread import CPU_PATHS, spread_row, spread_table
from plumbing.errors import UserError, run_main

ROOT = Path(__file__).resolve().parent.parent


def build_parser():
    p = argparse.ArgumentParser(description="Train and score the demo's two adapters, one configuration, on several SFT models.")
    p.add_argument("--bases", nargs="+", default=[], help="folders each holding a full_sft_128.pth (e.g. out/demo_seeds/seed_*)")
    p.add_argument("--avx2_bases", nargs="+", default=[],
                   help="more such folders, whose SFT models were trained on the forced AVX2 code path: their adapters are too")
    p.add_argument("--name", default="demo", help="this configuration's name: its folder under OUT_DIR (default: %(default)s)")
    p.add_argument("--out_dir", default="out/adapter_configs",
                   help="where the checkpoints (the adapters) go, under NAME/ (default: %(default)s)")
    p.add_argument("--medical", default="", help="train_lora.py flags for lora_medical only, e.g. '--epochs 6'")
    p.add_argument("--identity", default="", help="train_lora.py flags for lora_identity only")
    p.add_argument("--workers", type=int, default=2, help="runs at a time, one thread each (default: %(default)s)")
    p.add_argument("flags", nargs="*", help="train_lora.py flags for both adapters, after --")
    return p


def adapter_command(base, folder, name, flags) -> list:
    """train_lora.py for one adapter of the demo (its data as run_demo.py gives it) on `base`."""
    data = [] if name == "lora_medical" else ["--lora_name", name, "--data_path", f"dataset/{name}.jsonl"]
    return ["train_lora.py", "--base", str(base / "full_sft_128.pth"), "--out_dir", str(folder), *data, *flags]


def eval_command(base, folder) -> list:
    """The demo's evaluation of `base` with the adapters in `folder` (run_demo.py's command, on these files)."""
    return ["eval_model.py", "--ckpt", str(base / "full_sft_128.pth"), "--out_dir", str(folder), "--lora_name",
            "lora_medical", "lora_identity", "--compare", "--eval_data", *EVAL_FILES, "--max_new_tokens", "48", "--json"]


def run_all(jobs, workers) -> None:
    """Run [(command, log path, done marker, environment)] `workers` at a time; a failed one stops the rest."""
    waiting, running = [j for j in jobs if not j[2].is_file()], []
    while waiting or running:
        while waiting and len(running) < workers:
            command, log, _, env = waiting.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"$ python {shlex.join(command)}", file=sys.stderr, flush=True)
            handle = open(log, "w")
            running.append((subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env, stdout=handle,
                                             stderr=subprocess.STDOUT), handle, log))
        time.sleep(0.5)
        for job in [j for j in running if j[0].poll() is not None]:
            running.remove(job)
            job[1].close()
            if job[0].returncode != 0:
                for other, _, _ in running:
                    other.kill()
                tail = job[2].read_text(errors="replace").strip().splitlines()[-1:]
                raise UserError(f"a run failed ({job[2]}): {' '.join(tail)}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    # (SFT model folder, CPU code path, name of its folder here)
    bases = [(Path(b).resolve(), "default", Path(b).name) for b in args.bases]
    bases += [(Path(b).resolve(), "avx2", "avx2-" + Path(b).name) for b in args.avx2_bases]
    if not bases:
        raise UserError("give the SFT models to train on: --bases FOLDER ... and/or --avx2_bases FOLDER ...")
    missing = [str(b) for b, _, _ in bases if not (b / "full_sft_128.pth").is_file()]
    if missing:
        raise UserError(f"no full_sft_128.pth in {', '.join(missing)}: train them first (run_demo.py --seed S --out_dir ...)")
    env = {path: {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **CPU_PATHS[path]} for path in CPU_PATHS}
    out = Path(args.out_dir).resolve() / args.name
    flags = {"lora_medical": [*args.flags, *shlex.split(args.medical)], "lora_identity": [*args.flags, *shlex.split(args.identity)]}
    training = [(adapter_command(b, out / name, adapter, flags[adapter]), out / name / f"{adapter}.log",
                 out / name / "lora" / f"{adapter}_128.pth", env[path])
                for b, path, name in bases for adapter in ("lora_medical", "lora_identity")]
    run_all(training, args.workers)
    rows = {}
    for b, path, name in bases:
        results_file = out / name / "results.json"
        if not results_file.is_file():
            result = subprocess.run([sys.executable, *eval_command(b, out / name)], cwd=ROOT, env=env[path],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise UserError(f"the evaluation of {name} failed: {result.stderr.strip().splitlines()[-1:]}")
            results_file.write_text(result.stdout, encoding="utf-8")
        rows[name] = spread_row(json.loads(results_file.read_text(encoding="utf-8")))
    report = (f"{args.name}: train_lora.py {shlex.join(args.flags)} (lora_medical: {args.medical or '-'}; "
              f"lora_identity: {args.identity or '-'})\n\n{spread_table(rows)}")
    print("\n" + report)
    (out / "table.md").write_text(report + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(run_main(main))
