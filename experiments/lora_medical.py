"""Experiment: what lora_medical needs to pass its targets, one configuration per run.

    python -m experiments.lora_medical                                   # the demo's own configuration
    python -m experiments.lora_medical --targets wq,wk,wv,wo,w1,w2,w3    # without the tied embedding
    python -m experiments.lora_medical --rehearsal 0.2 --seed 1          # less rehearsal, another data order

It trains one lora_medical adapter on the demo's SFT model (OUT_DIR/full_sft_128.pth, made by
`python run_demo.py` or the stages one by one) by running `python train_lora.py` with its defaults
-- the demo's -- except the flags given here, then scores it on eval_medical and eval_general
exactly as run_demo does (its evaluation command's settings, demo.demo_eval_settings), and prints
one markdown row:

    | targets | rank | rehearsal | epochs | seed | steps | eval_medical | eval_general |

docs/experiments.md's lora_medical tables are made of these rows.

--rehearsal rewrites the adapter's data with another share of ordinary world questions: the same
generator, seed and medical records as dataset/lora_medical.jsonl (which is --rehearsal 0.5), so
only the share changes. Each configuration's adapter and data go to their own folder in
OUT_DIR/experiments/, never over the demo's own out/lora/lora_medical_128.pth.
"""
import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from dataset import make_demo_data as demo_data
from demo import demo_eval_settings, stage_parser
from evaluation import evaluate_set, load_eval_set
from formats.loader import (DEFAULT_DIM, adapter_path, checkpoint_path, load_checkpoint, missing_checkpoint_message,
                            run_files)
from plumbing import progress
from plumbing.errors import UserError, run_main
from plumbing.flags import LORA_RANK, LORA_TARGETS

ROOT = Path(__file__).resolve().parent.parent
DEMO_SEED = 42  # dataset/make_demo_data.py's default: the committed files


def build_parser():
    p = argparse.ArgumentParser(description="Train and score one lora_medical configuration on the demo's SFT model.")
    p.add_argument("--out_dir", default="out", help="the demo's checkpoints folder (its --out_dir), holding full_sft_128.pth (default: %(default)s)")
    p.add_argument("--targets", default=None,
                   help="--lora_targets; 'output' adapts the tied embedding too (default: train_lora.py's, the demo's)")
    p.add_argument("--rank", type=int, default=None, help="--lora_rank (default: train_lora.py's, the demo's)")
    p.add_argument("--rehearsal", type=float, default=None,
                   help="share of world questions in the adapter's data (default: the committed file's, 0.5)")
    p.add_argument("--epochs", type=int, default=None, help="--epochs (default: train_lora.py's, the demo's)")
    p.add_argument("--seed", type=int, default=None, help="--seed: adapter init and data order (default: train_lora.py's, the demo's)")
    p.add_argument("--resume", action="store_true", help="continue this configuration's interrupted run")
    return p


def overrides(args) -> list:
    """train_lora.py flags for what this configuration changes, e.g. ['--lora_rank', '64']; the rest
    stays at train_lora.py's defaults, which are the demo's."""
    given = {"--lora_targets": args.targets, "--lora_rank": args.rank, "--epochs": args.epochs, "--seed": args.seed}
    return [str(part) for flag, value in given.items() if value is not None for part in (flag, value)]


def run_name(args):
    """A folder name for one configuration, e.g. 'demo' or 'lora_rank64_seed1': each configuration keeps
    its own adapter and resume file, so rows can run side by side."""
    parts = [f"{flag[2:]}{value.replace(',', '-')}" for flag, value in zip(*[iter(overrides(args))] * 2)]
    if args.rehearsal is not None:
        parts.append(f"rehearsal{args.rehearsal:g}")
    return "_".join(parts) or "demo"


def write_data(rehearsal, folder):
    """lora_medical.jsonl with `rehearsal` world questions, from the demo generator -> (path, records)."""
    records = demo_data.make_lora_medical(demo_data.build_facts(demo_data.WORLD), demo_data.MEDICINE,
                                          demo_data.held_out_symptoms(DEMO_SEED), demo_data.TEMPLATES,
                                          demo_data.file_rng(DEMO_SEED, "medical"), rehearsal_share=rehearsal)
    path = Path(folder) / f"lora_medical_rehearsal{rehearsal:g}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = demo_data.to_jsonl(records)
    if not path.is_file() or path.read_bytes() != data:  # rewritten, it would be "other data" to a --resume
        path.write_bytes(data)
    return path, len(records)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.rehearsal is not None and not 0 <= args.rehearsal < 1:
        raise UserError(f"--rehearsal must be in [0, 1), got {args.rehearsal}")
    base = checkpoint_path(args.out_dir, "full_sft", DEFAULT_DIM)
    if not os.path.isfile(base):  # the one line train_lora.py would print, before anything is written
        raise UserError(missing_checkpoint_message(base))
    folder = Path(args.out_dir) / "experiments" / run_name(args)
    command = ["--base", base, "--out_dir", str(folder), *overrides(args)] + (["--resume"] if args.resume else [])
    if args.rehearsal is not None:
        data, _ = write_data(args.rehearsal, folder)
        command += ["--data_path", str(data)]
    print(f"$ python train_lora.py {shlex.join(command)}", file=sys.stderr, flush=True)
    if subprocess.run([sys.executable, str(ROOT / "train_lora.py"), *command]).returncode != 0:
        raise UserError("python train_lora.py failed; its error is printed above")
    used = stage_parser("lora").parse_args(command)  # what ran: train_lora.py's defaults + these flags
    weights = adapter_path(folder, used.lora_name, DEFAULT_DIM)

    # scored as run_demo scores: its evaluation command's settings, greedy
    settings = demo_eval_settings(args.out_dir)
    loaded = load_checkpoint(base, adapter=weights, device=settings.device)
    scores = {}
    for name in ("eval_medical", "eval_general"):
        items = load_eval_set(ROOT / "dataset" / f"{name}.jsonl")
        scores[name] = evaluate_set(loaded.model, loaded.tokenizer, items, settings.max_new_tokens,
                                    settings.batch_size, loaded.model.config.max_seq_len)["accuracy"]
    steps = max(r["step"] for r in progress.read_metrics(run_files(folder, weights).metrics))
    rehearsal = 0.5 if args.rehearsal is None else args.rehearsal
    print(f"| {used.lora_targets or LORA_TARGETS} | {used.lora_rank or LORA_RANK} | "
          f"{rehearsal:.0%} | {used.epochs} | {used.seed} | {steps} "
          f"| {scores['eval_medical']:.1%} | {scores['eval_general']:.1%} |")


if __name__ == "__main__":
    sys.exit(run_main(main))
