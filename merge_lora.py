"""Merge task adapters into one adapter file (merging/merge.py has the methods and the mathematics).

    python merge_lora.py --lora_name lora_medical lora_identity --weights 0.5 0.5 --method ties --out lora_both
    python eval_model.py --lora_name lora_both --eval_data dataset/eval_medical.jsonl   # like any adapter

The adapters are OUT_DIR/lora/{name}_{dim}.pth (the demo's dim, 128, unless --dim); the merge is written
beside them as OUT_DIR/lora/{out}_{dim}.pth, an ordinary adapter file (its lora_config records how it was
made). Adapters trained on different bases, for other shapes, or an unknown method are one-line errors,
and nothing is written then; an input is never overwritten.
"""
import argparse
import sys

from formats.adapter_file import read_lora_file
from formats.checkpoint import CheckpointError, save_weights
from formats.loader import DEFAULT_DIM, adapter_path, check_adapter_name, missing_adapter_message
from merging.merge import METHODS, MergeError, merge_adapters
from plumbing.errors import UserError, run_main


def build_parser():
    p = argparse.ArgumentParser(description="Merge LoRA adapters (task adapters) into one adapter file.")
    p.add_argument("--lora_name", nargs="+", required=True, help="the adapters to merge, by name (two or more)")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per adapter (default: 1/n each, the mean)")
    p.add_argument("--method", choices=METHODS, default="cat",
                   help="cat (exact weighted sum, rank r1+r2), svd (the sum cut to --rank), linear (PEFT's: A and B "
                        "summed), ties, dare (default: %(default)s)")
    p.add_argument("--rank", type=int, default=None, help="the merge's rank for svd, ties and dare (default: the largest input's)")
    p.add_argument("--density", type=float, default=0.5,
                   help="ties: share of each update's entries kept; dare: probability an entry survives (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="dare's random drop (default: %(default)s)")
    p.add_argument("--out", required=True, help="the merged adapter's name: OUT_DIR/lora/{out}_{dim}.pth")
    p.add_argument("--out_dir", default="out", help="the checkpoints' folder, whose lora/ holds the adapters (default: %(default)s)")
    p.add_argument("--dim", type=int, default=DEFAULT_DIM, help="the model width in the files' names (default: %(default)s)")
    p.add_argument("--use_moe", action="store_true", help="adapters of a mixture-of-experts model (names end _moe)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    names = [check_adapter_name(n) for n in args.lora_name]
    out = adapter_path(args.out_dir, check_adapter_name(args.out), args.dim, args.use_moe)
    if args.out in names:
        raise UserError(f"--out {args.out} is one of the adapters being merged: choose another name, so the input stays")
    weights = args.weights or [1 / len(names)] * len(names)
    adapters = []
    for name in names:
        path = adapter_path(args.out_dir, name, args.dim, args.use_moe)
        try:
            adapters.append(read_lora_file(path))
        except CheckpointError as e:
            raise UserError(missing_adapter_message(args.out_dir, name, args.dim, args.use_moe)
                            if "not found" in str(e) else str(e)) from None
    try:
        contents = merge_adapters(adapters, weights, args.method, args.rank, args.density, args.seed)
    except MergeError as e:
        raise UserError(str(e)) from None
    save_weights(contents, out)
    merge = contents["lora_config"]["merge"]
    print(f"saved {out}: {args.method} of {', '.join(names)} (weights {', '.join(f'{w:g}' for w in weights)}), "
          f"rank {contents['lora_config']['rank']} ({merge['kept']:.1%} of the merged update's energy kept at that rank)")


if __name__ == "__main__":
    sys.exit(run_main(main))
