"""Experiment: the demo's two adapters, trained one way on several SFT models, scored against the demo's targets.

    python -m experiments.adapter_configs --bases out/demo_seeds/seed_*              # train_lora.py's defaults
    python -m experiments.adapter_configs --bases out/demo_seeds/seed_* --name wq_wo -- --lora_targets wq,wo
    python -m experiments.adapter_configs --bases out/avx2/seed_* --cpu_path avx2    # the other CPU code path

A model this small ends where its seed and its CPU's rounding take it, so one adapter configuration is
judged over several SFT models at once: each folder of --bases holds a full_sft_128.pth (run_demo.py's
--out_dir, or train_pretrain.py + train_full_sft.py with --seed). On each, lora_medical and lora_identity
are trained as the demo trains them (`python train_lora.py`, with the flags after `--` added to both, and
--medical / --identity to one), then scored as the demo scores them (eval_model.py --compare on its four
sets), and the demo's targets checked (demo.target_checks). One table: a row per SFT model, then the
worst, mean and best, and the worst case's margin to each target -- which must be at least 5 points.

Runs go --workers at a time, one thread each (a second thread gains a model this small little; two runs
side by side gain nearly 2x). --cpu_path avx2 runs every command with the CPU code path forced to AVX2
(ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2), which rounds as another CPU would: the
SFT models given must have been trained under it too. Everything goes to OUT_DIR/NAME/<base folder name>/;
a finished adapter or evaluation is not made again.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from demo import EVAL_FILES, general_drops, target_checks
from plumbing.errors import UserError, run_main

ROOT = Path(__file__).resolve().parent.parent
# The forced AVX2 code path: what every x86 CPU of the last ten years executes, and how torch rounds there.
CPU_PATHS = {"default": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def build_parser():
    p = argparse.ArgumentParser(description="Train and score the demo's two adapters, one configuration, on several SFT models.")
    p.add_argument("--bases", nargs="+", required=True, help="folders each holding a full_sft_128.pth (e.g. out/demo_seeds/seed_*)")
    p.add_argument("--name", default="demo", help="this configuration's name: its folder under OUT_DIR (default: %(default)s)")
    p.add_argument("--out_dir", default="out/adapter_configs",
                   help="where the checkpoints (the adapters) go, under NAME/ (default: %(default)s)")
    p.add_argument("--medical", default="", help="train_lora.py flags for lora_medical only, e.g. '--epochs 6'")
    p.add_argument("--identity", default="", help="train_lora.py flags for lora_identity only")
    p.add_argument("--cpu_path", choices=sorted(CPU_PATHS), default="default",
                   help="the CPU code path every command runs under (default: %(default)s, this CPU's own)")
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


def run_all(jobs, workers, env) -> None:
    """Run [(command, log path, done marker)] `workers` at a time; a failed one stops the rest."""
    waiting, running = [j for j in jobs if not j[2].is_file()], []
    while waiting or running:
        while waiting and len(running) < workers:
            command, log, _ = waiting.pop(0)
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


def row(results) -> dict:
    """One SFT model's numbers, in percent: its general scores, the adapters' skills, the drops, met or not."""
    acc = {c["name"]: {s: 100 * r["accuracy"] for s, r in c["sets"].items()} for c in results["columns"]}
    drops = general_drops(results)
    return {"SFT general": acc["base"]["eval_general"], "SFT unseen": acc["base"]["eval_general_unseen"],
            "medical": acc["+lora_medical"]["eval_medical"], "SFT medical": acc["base"]["eval_medical"],
            "identity": acc["+lora_identity"]["eval_identity"],
            "drop general": drops["eval_general"], "drop unseen": drops["eval_general_unseen"],
            "met": all(ok for _, ok in target_checks(results))}


# Each column's target and which way is better: (threshold, +1 if higher is better, -1 if lower).
TARGETS = {"medical": (80, +1), "SFT medical": (20, -1), "identity": (90, +1), "drop general": (10, -1),
           "drop unseen": (10, -1)}


def table(rows) -> str:
    """{base name: row} -> the markdown table, then worst / mean / best, and the worst case's margin to each target."""
    names = ["SFT general", "SFT unseen", "medical", "identity", "drop general", "drop unseen"]
    lines = ["| SFT model | " + " | ".join(names) + " | every target met |", "|---|" + "---:|" * len(names) + "---|"]
    for base, r in rows.items():
        lines.append(f"| {base} | " + " | ".join(f"{r[n]:.1f}" for n in names) + f" | {'yes' if r['met'] else 'NO'} |")
    worse = {n: (max if TARGETS.get(n, (0, 1))[1] < 0 else min) for n in names}
    better = {n: (min if f is max else max) for n, f in worse.items()}
    summary = {"worst": {n: worse[n](r[n] for r in rows.values()) for n in names},
               "mean": {n: sum(r[n] for r in rows.values()) / len(rows) for n in names},
               "best": {n: better[n](r[n] for r in rows.values()) for n in names}}
    for label, values in summary.items():
        lines.append(f"| **{label}** | " + " | ".join(f"{values[n]:.1f}" for n in names) + " | |")
    margins = {n: sign * (summary["worst"][n] - threshold) for n, (threshold, sign) in TARGETS.items() if n in names}
    lines.append("| **worst's margin to target** | " + " | ".join(f"{margins[n]:+.1f}" if n in margins else ""
                                                                for n in names)
                 + f" | {'all met' if all(r['met'] for r in rows.values()) else 'NOT all met'} |")
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    bases = [Path(b).resolve() for b in args.bases]
    missing = [str(b) for b in bases if not (b / "full_sft_128.pth").is_file()]
    if missing:
        raise UserError(f"no full_sft_128.pth in {', '.join(missing)}: train them first (run_demo.py --seed S --out_dir ...)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **CPU_PATHS[args.cpu_path]}
    out = Path(args.out_dir).resolve() / args.name
    flags = {"lora_medical": [*args.flags, *shlex.split(args.medical)], "lora_identity": [*args.flags, *shlex.split(args.identity)]}
    training = [(adapter_command(b, out / b.name, name, flags[name]), out / b.name / f"{name}.log",
                 out / b.name / "lora" / f"{name}_128.pth") for b in bases for name in ("lora_medical", "lora_identity")]
    run_all(training, args.workers, env)
    rows = {}
    for b in bases:
        results_file = out / b.name / "results.json"
        if not results_file.is_file():
            result = subprocess.run([sys.executable, *eval_command(b, out / b.name)], cwd=ROOT, env=env,
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise UserError(f"the evaluation of {b.name} failed: {result.stderr.strip().splitlines()[-1:]}")
            results_file.write_text(result.stdout, encoding="utf-8")
        rows[b.name] = row(json.loads(results_file.read_text(encoding="utf-8")))
    report = (f"{args.name}: train_lora.py {shlex.join(args.flags)} (lora_medical: {args.medical or '-'}; "
              f"lora_identity: {args.identity or '-'}); CPU path {args.cpu_path}\n\n{table(rows)}")
    print("\n" + report)
    (out / "table.md").write_text(report + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(run_main(main))
