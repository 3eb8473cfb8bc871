"""Experiment: does this CPU train the demo's model bit for bit as another does? A short fixed run's weights, hashed.

    python -m experiments.cpu_fingerprint                  # this CPU's own code path and the forced AVX2 one
    python -m experiments.cpu_fingerprint --cpu_path avx2  # only the forced AVX2 one

Two CPUs that round alike train identical models; two that do not end, after the hundreds of steps of
the demo, as far apart as two seeds. This runs the demo's pretraining command on the first 400 lines
of dataset/pretrain_demo.jsonl for one epoch (25 steps, no validation, in a temporary folder, one
thread and then two) and prints the weights' fingerprint (formats.checkpoint.weights_fingerprint) and
the time, once per CPU code path (experiments/spread.py's CPU_PATHS). Compare the lines with the ones
docs/demo.md records: the same fingerprint means this CPU computes the demo's first 25 steps exactly as
that one did.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from experiments.spread import CPU_PATHS
from formats.checkpoint import weights_fingerprint
from formats.loader import load_checkpoint
from plumbing.errors import UserError, run_main

ROOT = Path(__file__).resolve().parent.parent
LINES = 400  # 25 optimizer steps at the demo's batch size of 16


def short_run(folder: Path, cpu_path: str, threads: int) -> tuple:
    """The demo's pretraining on the first LINES lines, 1 epoch, into `folder` -> (fingerprint, seconds)."""
    data = folder / "pretrain_head.jsonl"
    with open(ROOT / "dataset" / "pretrain_demo.jsonl", encoding="utf-8") as src:
        data.write_text("".join(line for _, line in zip(range(LINES), src)), encoding="utf-8")
    out = folder / f"{cpu_path}_{threads}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE", **CPU_PATHS[cpu_path]}
    command = [sys.executable, "train_pretrain.py", "--data_path", str(data), "--epochs", "1", "--val_samples", "0",
               "--out_dir", str(out), "--cache_dir", str(folder / "cache")]
    t0 = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise UserError(f"the short run failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return weights_fingerprint(load_checkpoint(out / "pretrain_128.pth").model), seconds


def main(argv=None):
    p = argparse.ArgumentParser(description="Fingerprint a short fixed training run on each CPU code path.")
    p.add_argument("--cpu_path", choices=sorted(CPU_PATHS), nargs="+", default=sorted(CPU_PATHS),
                   help="the code paths to run (default: all of them)")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    with tempfile.TemporaryDirectory() as tmp:
        for cpu_path in args.cpu_path:
            for threads in (1, 2):
                fingerprint, seconds = short_run(Path(tmp), cpu_path, threads)
                print(f"{cpu_path:8s} {threads} thread{'s' if threads > 1 else ' '}  {fingerprint}  ({seconds:.1f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(run_main(main))
