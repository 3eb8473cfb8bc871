"""The whole pipeline in one command, on the demo data that ships with the repository:

    python run_demo.py

runs the very commands a student would type, each with the scripts' own defaults (which ARE the
demo's configuration; there is no other), one after the other -- but the two adapters, which need
only the SFT model, side by side, one thread each (a second thread speeds a model this small up little;
two runs side by side, nearly 2x):

    1. tokenizer    python train_tokenizer.py     byte-level BPE from the demo text    -> model/demo_tokenizer/
    2. pretrain     python train_pretrain.py      next-token prediction                -> out/pretrain_128.pth
    3. SFT          python train_full_sft.py      chat about the demo world            -> out/full_sft_128.pth
    4. LoRA         python train_lora.py          lora_medical: a new domain           -> out/lora/lora_medical_128.pth
    5. LoRA         python train_lora.py --lora_name lora_identity --data_path dataset/lora_identity.jsonl
                                                  lora_identity: a new name and maker  -> out/lora/lora_identity_128.pth
    6. evaluation   python eval_model.py --lora_name lora_medical lora_identity --compare --eval_data ...
                                                  SFT alone, with each adapter, and with the adapter removed again

Each command is echoed before it runs, so any line can be copied and rerun on its own. The demo ends
with one table -- parameters, trainable share, time per stage, accuracy on each eval set -- and the
targets checked under it, printed and written to OUT_DIR/demo_results.md (every generated answer in
OUT_DIR/demo_results.json). The tokenizer stage rewrites the committed model/demo_tokenizer with the
same bytes: training it is deterministic.

The stages, the evaluation sets and the targets are demo.py's (the demo's configuration, which the
LoRA lab and experiments/ read too); this script runs the stages and prints the table.

`--seed N` passes --seed N to every training stage, `--dtype D` passes --dtype D to them (evaluation
keeps its own default: float32 on a CPU); `--out_dir DIR` sends every stage's files there.
`python -m experiments.demo_seeds` runs the demo over several seeds and reports the spread.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from demo import ADAPTERS, demo_stages, target_checks
from plumbing.device import DTYPES
from plumbing.errors import UserError, run_main

ROOT = Path(__file__).resolve().parent

# OpenMP threads that spin while waiting for each other collapse when other programs share the cores
# (measured: 2 threads 9x slower than 1 on a busy 2-core machine); passive waiting keeps the full speed
# of an idle machine and degrades gracefully on a busy one.
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
# The variables that choose torch's, MKL's and oneDNN's CPU kernels, and so how a run rounds.
CPU_PATH_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def run_stage(number, total, name, command, capture=False):
    """Echo and run one stage -> (seconds, its stdout when captured). A failed stage ends the demo."""
    print(f"\n[{number}/{total}] {name}\n$ python {shlex.join(command)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *command], cwd=ROOT, text=True, env={**PASSIVE, **os.environ},
                          stdout=subprocess.PIPE if capture else None)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise UserError(f"stage '{name}' failed (exit code {proc.returncode}); its command and error are printed above")
    return seconds, proc.stdout


def run_side_by_side(first, total, stages, out_dir):
    """Echo and run several stages at once, one thread each, each one's output in OUT_DIR/STAGE.log
    -> {stage: seconds}. A failed stage stops the others and ends the demo with its log's last line."""
    env = {**PASSIVE, **os.environ, "OMP_NUM_THREADS": "1"}
    running = {}
    for number, (name, command) in enumerate(stages, first):
        shown = os.path.join(out_dir, f"{name.replace(' ', '_')}.log")  # as the stages see out_dir
        log = ROOT / shown
        print(f"\n[{number}/{total}] {name} (side by side, one thread; its output: {shown})\n"
              f"$ python {shlex.join(command)}", flush=True)
        handle = open(log, "w")
        running[name] = (subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env, stdout=handle,
                                          stderr=subprocess.STDOUT), handle, log, time.perf_counter())
    seconds = {}
    while len(seconds) < len(running):
        time.sleep(0.5)
        for name, (proc, handle, log, t0) in running.items():
            if name in seconds or proc.poll() is None:
                continue
            seconds[name] = time.perf_counter() - t0
            handle.close()
            last = (log.read_text(errors="replace").strip().splitlines() or [""])[-1]
            if proc.returncode != 0:
                for other, *_ in running.values():
                    other.kill()
                raise UserError(f"stage '{name}' failed (exit code {proc.returncode}): {last}")
            print(f"{name}: {last}", flush=True)
    return seconds


def percent(result):
    """{"accuracy": 0.173, ...} -> "17.3%"."""
    return f"{result['accuracy']:.1%}"


def results_table(times, wall, results, vocab_size):
    """The demo's markdown table: one row per stage (the two adapters trained side by side, each with
    its own time); accuracy columns for the models evaluated; the total is the wall time."""
    columns = {c["name"]: c for c in results["columns"]}
    base, removed = columns["base"], columns["adapter removed"]
    sets = list(base["sets"])
    n_base = results["parameters"]
    blank = " | ".join("" for _ in sets)

    def accuracy_cells(column):
        return " | ".join(percent(column["sets"][s]) for s in sets)

    header = "| stage | time | parameters (trainable) | " + " | ".join(f"{s} ({base['sets'][s]['n']})" for s in sets) + " |"
    lines = [header, "|---|---:|---|" + "---:|" * len(sets),
             f"| tokenizer | {times['tokenizer']:.0f} s | vocabulary {vocab_size:,} tokens | {blank} |",
             f"| pretrain | {times['pretrain']:.0f} s | {n_base / 1e6:.2f}M (all) | {blank} |",
             f"| SFT | {times['SFT']:.0f} s | {n_base / 1e6:.2f}M (all) | {accuracy_cells(base)} |"]
    for name in ADAPTERS:
        column = columns[f"+{name}"]
        n = column["adapter_parameters"]
        lines.append(f"| SFT + {name} | {times['LoRA ' + name]:.0f} s | {n:,} ({n / (n_base + n):.2%}) | "
                     f"{accuracy_cells(column)} |")
    lines.append(f"| SFT, adapter removed | | {n_base / 1e6:.2f}M | {accuracy_cells(removed)} |")
    lines.append(f"| evaluation | {times['evaluation']:.0f} s | | {blank} |")
    lines.append(f"| **total** | **{wall:.0f} s** | | {blank} |")
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(description="Run tokenizer -> pretrain -> SFT -> 2 LoRA adapters -> "
                                                 "evaluation on the demo data, and print the results table.")
    parser.add_argument("--out_dir", default="out",
                        help="where every stage writes its checkpoints and logs, relative to the current directory (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None,
                        help="--seed for every training stage (default: the scripts' own, 1337)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="--dtype for every training stage, e.g. bfloat16 on a CPU that has it natively "
                             "(default: the scripts' own, auto, which is float32 on a CPU; evaluation keeps "
                             "its own default)")
    return parser


def stage_out_dir(out_dir) -> str:
    """--out_dir as the stages see it: they run in the repository, so a folder given relative to where
    run_demo.py was started becomes relative to the repository ('out' stays 'out' when started there),
    or absolute when it lies elsewhere."""
    full = os.path.abspath(out_dir)
    inside = full == str(ROOT) or full.startswith(str(ROOT) + os.sep)
    return os.path.relpath(full, ROOT) if inside else full


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.out_dir = stage_out_dir(args.out_dir)
    stages = demo_stages(args.out_dir, args.seed, args.dtype)
    adapters = [(name, command) for name, command in stages if name.startswith("LoRA ")]
    times, start = {}, time.perf_counter()
    for number, (name, command) in enumerate(stages, 1):
        if name in times:
            continue
        if name.startswith("LoRA "):  # both adapters need only the SFT model: train them side by side
            times.update(run_side_by_side(number, len(stages), adapters, args.out_dir))
        else:
            times[name], stdout = run_stage(number, len(stages), name, command, capture=name == "evaluation")
    wall = time.perf_counter() - start
    results = json.loads(stdout)

    checks = target_checks(results)
    command = shlex.join(["python", "run_demo.py", *(argv if argv is not None else sys.argv[1:])])
    report = (f"{results_table(times, wall, results, results['vocab_size'])}\n\nTargets:\n"
              + "\n".join(f"- [{'x' if ok else ' '}] {text}" for text, ok in checks)
              + f"\n\nMade by `{command}` in {wall:.0f} s wall time.\n")
    out = ROOT / args.out_dir
    (out / "demo_results.md").write_text(report, encoding="utf-8")
    # the CPU code path forced, if any (experiments/demo_seeds.py --avx2_seeds): how the run rounded
    cpu_env = {k: os.environ[k] for k in CPU_PATH_VARIABLES if k in os.environ}
    record = {"times_s": times, "wall_s": round(wall, 1), "seed": args.seed, "dtype": args.dtype, "cpu_env": cpu_env,
              "targets": checks, **results}
    (out / "demo_results.json").write_text(json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8")
    print("\n" + report + f"(written to {args.out_dir}/demo_results.md; every answer in {args.out_dir}/demo_results.json)")


if __name__ == "__main__":
    sys.exit(run_main(main))
