"""Stage 3, LoRA: the SFT model learns one task through a small adapter, its own weights frozen.

    python train_lora.py                       # the demo: lora_medical on out/full_sft_128.pth
    python train_lora.py --lora_name lora_identity --data_path dataset/lora_identity.jsonl
    python train_lora.py --base full_sft_512.pth --n_layers 8 --tokenizer minimind_tokenizer \\
        --data_path lora_medical.jsonl --max_seq_len 512 --lora_targets wq,wo --lora_plus_ratio 1   # MiniMind2's LoRA
    python train_lora.py --quantize_base nf4   # QLoRA: the frozen base in 4 bits (formats/quantize.py)
    python train_lora.py --method dora         # DoRA: a magnitude per row, LoRA on the direction

Only the adapters' A and B matrices are trained and saved: out/lora/{lora_name}_{dim}.pth, a few
percent of the model, loadable by MiniMind2's load_lora. Everything else is train_full_sft.py's:
`diff train_full_sft.py train_lora.py` shows exactly what LoRA changes.
"""
import argparse
import sys

import training
from dataset.lm_dataset import SFTDataset
from formats.loader import adapter_path, find_checkpoint, load_checkpoint, shape_from_args
from formats.quantize import quantize_model
from model.model import trainable_parameters_report
from model.lora_variants import apply_dora, load_lora_or_dora, save_adapter
from model.model_lora import apply_lora, mark_only_lora_as_trainable, save_lora
from plumbing.run_lock import claim_out_dir
from plumbing import flags
from plumbing.runtime import runtime


def build_parser():
    parser = argparse.ArgumentParser(description="MiniMind LoRA: a small adapter learns one task, the model stays frozen.")
    flags.add_common_args(parser, "lora")
    flags.add_model_args(parser, from_checkpoint=True)
    flags.add_lora_args(parser)  # --base, --lora_name, --lora_rank, --lora_alpha, --lora_targets, --lora_plus_ratio, ...
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    flags.check_args(args)
    flags.check_lora_args(args)
    base = args.base or find_checkpoint(args.out_dir, "full_sft", args.dim, args.use_moe)

    # one run per output (plumbing/run_lock.py), claimed before anything loads
    with claim_out_dir(args.out_dir, args.lora_name, also=["lora"]), \
            runtime(args.device, args.dtype, args.seed) as rt:
        # ---- the model: the SFT checkpoint, config and tokenizer from its sidecar
        loaded = load_checkpoint(base, tokenizer=args.tokenizer, shape=shape_from_args(args),
                                 max_seq_len=args.max_seq_len, device=rt.device)
        model, tokenizer = loaded.model, loaded.tokenizer
        weights = adapter_path(args.out_dir, args.lora_name, model.config.dim, model.config.use_moe)
        if args.quantize_base:  # QLoRA: the frozen base in 8 or 4 bits (formats/quantize.py); the adapter as ever
            quantize_model(model, args.quantize_base)
        # LoRA: adapters beside the chosen Linears (B = 0, so the model is still exactly the SFT model), then
        # freeze everything else: frozen weights get no gradients and no optimizer state
        if args.init_lora:  # an existing adapter, trained further
            load_lora_or_dora(model, args.init_lora, dropout=args.lora_dropout)
            flags.check_init_lora_agrees(model, args, weights)
        elif args.method == "dora":  # DoRA's layers instead (model/lora_variants.py), everything else the same
            apply_dora(model, args.lora_rank or flags.LORA_RANK, args.lora_alpha, args.lora_dropout,
                       (args.lora_targets or flags.LORA_TARGETS).split(","), rank_pattern=args.rank_pattern)
        else:  # --rank_pattern: some layers of another rank (docs/lora.md)
            apply_lora(model, args.lora_rank or flags.LORA_RANK, args.lora_alpha, args.lora_dropout,
                       (args.lora_targets or flags.LORA_TARGETS).split(","), rank_pattern=args.rank_pattern)
        mark_only_lora_as_trainable(model)
        rt.print(f"base {base}; " + trainable_parameters_report(model))

        # ---- A and B learn (with LoRA+, B faster: training.param_groups); only the adapter is saved, and
        # the frozen base must be the same file again on --resume
        frozen = {"base": base, **({"init_lora": args.init_lora} if args.init_lora else {})}
        return training.train(args, rt, model, training.param_groups(model, args.lora_plus_ratio), SFTDataset, tokenizer,
                              weights, save=lambda path: save_adapter(model, path) if args.method == "dora" else
                              save_lora(model, path), frozen=frozen)


if __name__ == "__main__":
    sys.exit(training.run_main(main))
