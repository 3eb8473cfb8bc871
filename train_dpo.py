"""MiniMind2's preference stage, DPO: the SFT model learns which of two replies to prefer.

    python train_dpo.py                        # the demo: out/full_sft_128.pth -> out/rlhf_128.pth
    python train_dpo.py --lora_rank 16 --learning_rate 6e-4   # LoRA-DPO (its measured rate) -> out/lora/lora_dpo_128.pth
    python train_dpo.py --base full_sft_512.pth --n_layers 8 --tokenizer minimind_tokenizer \\
        --data_path dpo.jsonl --max_seq_len 1024 --batch_size 8 --learning_rate 1e-8 \
        --log_probs mean --rpo_alpha 0                                                 # MiniMind2's run

Each line of the data is a preference pair, one prompt and a chosen and a rejected reply (DPODataset,
each reply masked as SFT masks it); the loss is DPO's (dpo.py), against a reference that never learns:
a frozen copy of the starting model, or with --lora_rank the same model with its adapter switched off.
Writes out/rlhf_{dim}.pth + sidecar (MiniMind2's name), which eval_model.py --model_mode rlhf (or 2)
and train_lora.py --base load. Everything else is train_full_sft.py's; docs/dpo.md has the measurements.
"""
import argparse
import math
import sys
from functools import partial

import dpo
import training
from dataset.lm_dataset import DPODataset
from formats.checkpoint import save_model
from formats.loader import (adapter_path, check_adapter_name, checkpoint_meta, checkpoint_path, find_checkpoint,
                            load_checkpoint, shape_from_args)
from model.model import trainable_parameters_report
from model.model_lora import apply_lora, mark_only_lora_as_trainable, save_lora
from plumbing.errors import UserError
from plumbing.run_lock import claim_out_dir
from plumbing import flags
from plumbing.runtime import runtime


def build_parser():
    parser = argparse.ArgumentParser(description="MiniMind DPO: the SFT model learns to prefer the chosen reply.")
    flags.add_common_args(parser, "dpo")
    flags.add_model_args(parser, from_checkpoint=True)
    parser.add_argument("--base", default=None,
                        help="checkpoint to start from, and the reference (default: the full_sft_DIM.pth in OUT_DIR, "
                             "the only one or --dim's)")
    parser.add_argument("--beta", type=float, default=0.1,
                        help="how far from the reference the rewards may pull the model: reward = beta x the log-prob "
                             "ratio (default: %(default)s, as MiniMind2)")
    parser.add_argument("--log_probs", choices=dpo.LOG_PROBS, default="sum",
                        help="a reply's log-probability: the sum of its tokens' (the DPO paper's) or their mean "
                             "(MiniMind2's) (default: %(default)s; docs/dpo.md compares them)")
    parser.add_argument("--rpo_alpha", type=float, default=2.0,
                        help="add this times the chosen reply's SFT loss to each pair's DPO loss (RPO; TRL's rpo_alpha); "
                             "0 = plain DPO, MiniMind2's (default: %(default)s: plain DPO cost the demo's model 15 to 45 points "
                             "of general knowledge, 1 up to 11.5, 2 up to 7.7 on three seeds and 13.5 on a fourth; docs/dpo.md)")
    parser.add_argument("--lora_rank", type=int, default=None,
                        help="LoRA-DPO: train only a rank-R adapter (train_lora.py's targets and LoRA+), the reference "
                             "being the model with the adapter off; saved as OUT_DIR/lora/LORA_NAME_DIM.pth "
                             "(default: none, every weight learns)")
    parser.add_argument("--lora_name", default=None,
                        help="with --lora_rank, the adapter's name (default: lora_dpo)")
    return parser


def check_dpo_args(args) -> None:
    """--beta, --rpo_alpha, --lora_rank and --lora_name, before anything loads."""
    if not (math.isfinite(args.beta) and args.beta > 0):
        raise UserError(f"--beta must be a positive number, got {args.beta}")
    if not (math.isfinite(args.rpo_alpha) and args.rpo_alpha >= 0):
        raise UserError(f"--rpo_alpha must be 0 (plain DPO) or more, got {args.rpo_alpha}")
    if args.lora_rank is not None and args.lora_rank < 1:
        raise UserError(f"--lora_rank must be at least 1, got {args.lora_rank}")
    if args.lora_name is not None and args.lora_rank is None:
        raise UserError("--lora_name names the adapter of LoRA-DPO: give --lora_rank too (or drop --lora_name for full DPO)")
    args.lora_name = args.lora_name or "lora_dpo"
    check_adapter_name(args.lora_name)


def main(argv=None):
    args = build_parser().parse_args(argv)
    flags.check_args(args)
    check_dpo_args(args)
    base = args.base or find_checkpoint(args.out_dir, "full_sft", args.dim, args.use_moe)

    # one run per output folder (plumbing/run_lock.py), claimed before anything loads
    output, folders = (args.lora_name, ["lora"]) if args.lora_rank else ("rlhf", [])
    with claim_out_dir(args.out_dir, output, also=folders), \
            runtime(args.device, args.dtype, args.seed) as rt:
        # ---- the model: the SFT checkpoint, config and tokenizer from its sidecar
        loaded = load_checkpoint(base, tokenizer=args.tokenizer, shape=shape_from_args(args),
                                 max_seq_len=args.max_seq_len, device=rt.device)
        model, tokenizer = loaded.model, loaded.tokenizer
        dim, use_moe = model.config.dim, model.config.use_moe
        if model.config.dropout:  # the model trains with dropout, the reference runs without: rewards of noise
            raise UserError(f"{base} has dropout {model.config.dropout}: DPO compares the model with a reference "
                            "that runs without dropout, so the rewards would start off non-zero; train from a "
                            "checkpoint with dropout 0 (MiniMind2's are)")

        if args.lora_rank:  # ---- LoRA-DPO: an adapter learns; the reference is the same weights, adapter off
            apply_lora(model, args.lora_rank, target_modules=flags.LORA_TARGETS.split(","))
            mark_only_lora_as_trainable(model)
            reference = dpo.without_adapters(model)
            groups = training.param_groups(model, flags.LORA_PLUS_RATIO)
            weights = adapter_path(args.out_dir, args.lora_name, dim, use_moe)
            save = partial(save_lora, model)  # save(path): the adapter only
        else:  # ---- full DPO: every weight learns; the reference is a frozen copy (twice the weights in memory)
            reference = dpo.frozen_copy(model)
            groups = training.param_groups(model)
            weights = checkpoint_path(args.out_dir, "rlhf", dim, use_moe)
            meta = checkpoint_meta("rlhf", loaded.tokenizer_path, tokenizer, base)
            save = partial(save_model, model, meta=meta)  # save(path): MiniMind2's checkpoint + our sidecar
        rt.print(f"base {base}; " + trainable_parameters_report(model))

        # ---- the loop is every stage's; DPO gives it its objective. The reference is read from --base
        # again on --resume, so that file must not change
        objective = dpo.DPO(reference, args.beta, args.log_probs, args.rpo_alpha)
        return training.train(args, rt, model, groups, DPODataset, tokenizer, weights, save, frozen={"base": base},
                              objective=objective)


if __name__ == "__main__":
    sys.exit(training.run_main(main))
