"""Experiment: what lora_medical needs to pass its targets, one configuration per run.

    python experiments/lora_medical.py                                   # the demo's own configuration
    python experiments/lora_medical.py --targets wq,wk,wv,wo,w1,w2,w3    # without the tied embedding
    python experiments/lora_medical.py --rehearsal 0.2 --seed 1          # less rehearsal, another data order

It trains one lora_medical adapter on the SFT model `run_demo.py` made (out/full_sft_128.pth by
default), with run_demo's settings except the ones given here, then scores it on eval_medical and
eval_general exactly as run_demo does (greedy, 48 new tokens), and prints one markdown row:

    | targets | rank | rehearsal | epochs | seed | steps | eval_medical | eval_general |

The README's tables under "How lora_medical reaches its target" are made of these rows.

--rehearsal rewrites the adapter's data with another share of ordinary world questions: the same
generator, seed and medical records as dataset/lora_medical.jsonl (which is --rehearsal 0.5), so
only the share changes. Each configuration's adapter and data go to their own folder in
OUT_DIR/experiments/, never over the demo's own out/lora/lora_medical_128.pth.
"""
import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import eval_model  # noqa: E402  (after the path, so the script runs from anywhere)
import train_lora  # noqa: E402
import training  # noqa: E402
from dataset import make_demo_data as demo  # noqa: E402
from run_demo import demo_stages  # noqa: E402

DEMO_SEED = 42  # dataset/make_demo_data.py's default: the committed files


def build_parser():
    p = argparse.ArgumentParser(description="Train and score one lora_medical configuration on run_demo's SFT model.")
    p.add_argument("--out_dir", default="out", help="run_demo's --out_dir, holding full_sft_128.pth (default: %(default)s)")
    p.add_argument("--targets", default="wq,wk,wv,wo,w1,w2,w3,output",
                   help="--lora_targets; 'output' adapts the tied embedding too (default: %(default)s, the demo's)")
    p.add_argument("--rank", type=int, default=16, help="--lora_rank (default: %(default)s)")
    p.add_argument("--rehearsal", type=float, default=0.5,
                   help="share of world questions in the adapter's data (default: %(default)s, the committed file)")
    p.add_argument("--epochs", type=int, default=4, help="--epochs (default: %(default)s, the demo's)")
    p.add_argument("--seed", type=int, default=1337, help="--seed: adapter init and data order (default: %(default)s, the demo's)")
    p.add_argument("--resume", action="store_true", help="continue this configuration's interrupted run")
    return p


def demo_lora_command(out_dir):
    """run_demo's lora_medical command line (without `train_lora.py`), the experiment's starting point."""
    return dict(demo_stages(out_dir))["LoRA lora_medical"][1:]


def demo_eval_settings(out_dir):
    """run_demo's evaluation command read by eval_model's own parser: max_new_tokens, batch_size, device."""
    return eval_model.build_parser().parse_args(dict(demo_stages(out_dir))["evaluation"][1:])


def run_name(args):
    """A folder name for one configuration, e.g. 'wq-wk-wv-wo-w1-w2-w3-output_r16_rehearsal0.5_epochs4_seed1337':
    each configuration keeps its own adapter and resume file, so rows can run side by side."""
    return f"{args.targets.replace(',', '-')}_r{args.rank}_rehearsal{args.rehearsal:g}_epochs{args.epochs}_seed{args.seed}"


def with_flag(argv, flag, value):
    """argv with `flag value` set: replaced where it is, appended where it is not."""
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = str(value)
    else:
        argv += [flag, str(value)]
    return argv


def write_data(rehearsal, folder):
    """lora_medical.jsonl with `rehearsal` world questions, from the demo generator -> (path, records)."""
    records = demo.make_lora_medical(demo.build_facts(demo.WORLD), demo.MEDICINE, demo.held_out_symptoms(DEMO_SEED),
                                     demo.TEMPLATES, demo.file_rng(DEMO_SEED, "medical"), rehearsal_share=rehearsal)
    path = Path(folder) / f"lora_medical_rehearsal{rehearsal:g}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(demo.to_jsonl(records))
    return path, len(records)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not 0 <= args.rehearsal < 1:
        sys.exit(f"--rehearsal must be in [0, 1), got {args.rehearsal}")
    base = Path(args.out_dir) / "full_sft_128.pth"
    if not base.is_file():
        sys.exit(f"{base} not found; make it with: python run_demo.py --out_dir {args.out_dir}")
    folder = Path(args.out_dir) / "experiments" / run_name(args)
    data, records = write_data(args.rehearsal, folder)

    command = demo_lora_command(args.out_dir)
    for flag, value in [("--out_dir", folder), ("--base", base), ("--data_path", data), ("--lora_targets", args.targets),
                        ("--lora_rank", args.rank), ("--epochs", args.epochs), ("--seed", args.seed)]:
        command = with_flag(command, flag, value)
    command += ["--resume"] if args.resume else []
    print(f"$ python train_lora.py {' '.join(map(str, command))}", file=sys.stderr, flush=True)
    try:
        result = train_lora.main(command)
    except training.USER_ERRORS as e:  # e.g. a bad --targets, or an unfinished run (this script takes --resume too)
        sys.exit(f"error: {e}")

    # scored as run_demo scores: its evaluation command's settings, greedy
    settings = demo_eval_settings(args.out_dir)
    model, tok, _ = eval_model.load_base(base, device=settings.device)
    eval_model.attach_adapter(model, result.weights)
    scores = {}
    for name in ("eval_medical", "eval_general"):
        items = eval_model.load_eval_set(ROOT / "dataset" / f"{name}.jsonl")
        scores[name] = eval_model.evaluate_set(model, tok, items, settings.max_new_tokens, settings.batch_size,
                                               model.config.max_seq_len)["accuracy"]
    batch_size = int(command[command.index("--batch_size") + 1])
    steps = math.ceil(records / batch_size) * args.epochs  # optimizer steps: one process, no accumulation
    print(f"| {args.targets} | {args.rank} | {args.rehearsal:.0%} | {args.epochs} | {args.seed} | {steps} "
          f"| {scores['eval_medical']:.1%} | {scores['eval_general']:.1%} |")


if __name__ == "__main__":
    main()
