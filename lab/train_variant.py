"""train_lora.py's run with one of LoRA's variants or predecessors in place of plain LoRA: the lab's trainer.

    python -m lab.train_variant --variant pissa            # lora_medical, PiSSA-initialised
    python -m lab.train_variant --variant rslora --lora_rank 64 --lora_alpha 4
    python -m lab.train_variant --variant prefix --lora_rank 16   # 16 prefix vectors per layer
    python -m lab.train_variant --lr_schedule constant             # plain LoRA, no cosine decay

Everything but the adapter is train_lora.py's: the same flags and defaults (plumbing/flags.py), the
same base, data, loop (training.train) and LoRA+ grouping, so `--variant lora` trains bit for bit what
train_lora.py trains (tests/test_lab.py). The variants live in model/lora_variants.py; --lora_rank is
a predecessor's size (bottleneck width, or prefix vectors per layer). LoRA's lesson stays in
train_lora.py, and the variants plug in here. --lr_schedule is the one setting of the loop it adds:
training.train's lr_schedule seam, so the lab can compare the cosine decay with none (lab/cosine.py).
"""
import argparse
import functools
import sys

import training
from dataset.lm_dataset import SFTDataset
from plumbing.errors import UserError
from formats.loader import adapter_path, find_checkpoint, load_checkpoint, shape_from_args
from formats.quantize import quantize_model
from model.lora_variants import VARIANTS
from model.model import trainable_parameters_report
from plumbing.run_lock import claim_out_dir
from plumbing import flags
from plumbing.runtime import runtime

# The learning rate over the run: training.get_lr's warm-up then cosine decay to a tenth, or the same
# warm-up then the peak rate to the end (the cosine's floor raised to the peak).
SCHEDULES = {"cosine": training.get_lr, "constant": functools.partial(training.get_lr, min_lr_ratio=1.0)}


def build_parser():
    parser = argparse.ArgumentParser(description="The LoRA lab's trainer: train_lora.py with a variant of LoRA or a predecessor.")
    flags.add_common_args(parser, "lora")
    flags.add_model_args(parser, from_checkpoint=True)
    flags.add_lora_args(parser)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="lora",
                        help="the kind of adapter (model/lora_variants.py; default: %(default)s, train_lora.py's)")
    parser.add_argument("--lr_schedule", choices=sorted(SCHEDULES), default="cosine",
                        help="after the warm-up: cosine decay to a tenth (default, train_lora.py's) or constant")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    flags.check_args(args)
    flags.check_lora_args(args)
    if args.init_lora:
        raise UserError("--init_lora continues an adapter: use train_lora.py for that")
    if args.quantize_base and args.variant not in ("lora", "rslora"):
        raise UserError(f"--quantize_base goes with --variant lora or rslora (QLoRA's layer is plain LoRA), "
                        f"not {args.variant}")
    base = args.base or find_checkpoint(args.out_dir, "full_sft", args.dim, args.use_moe)

    with claim_out_dir(args.out_dir, args.lora_name, also=["lora"]), \
            runtime(args.device, args.dtype, args.seed) as rt:
        loaded = load_checkpoint(base, tokenizer=args.tokenizer, shape=shape_from_args(args),
                                 max_seq_len=args.max_seq_len, device=rt.device)
        model, tokenizer = loaded.model, loaded.tokenizer
        weights = adapter_path(args.out_dir, args.lora_name, model.config.dim, model.config.use_moe)
        variant = VARIANTS[args.variant]
        if args.quantize_base:
            quantize_model(model, args.quantize_base)
        try:
            variant.apply(model, args.lora_rank or flags.LORA_RANK, args.lora_alpha, args.lora_dropout,
                          (args.lora_targets or flags.LORA_TARGETS).split(","))
        except ValueError as e:  # e.g. a size the variant cannot take
            raise UserError(f"--variant {args.variant}: {e}") from None
        rt.print(f"base {base}; {args.variant}; " + trainable_parameters_report(model))
        return training.train(args, rt, model, training.param_groups(model, args.lora_plus_ratio), SFTDataset, tokenizer,
                              weights, save=lambda path: variant.save(model, path), frozen={"base": base},
                              lr_schedule=SCHEDULES[args.lr_schedule])


if __name__ == "__main__":
    sys.exit(training.run_main(main))
