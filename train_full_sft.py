"""Stage 2, supervised fine-tuning (full): the pretrained model learns to answer in the chat format.

    python train_full_sft.py                   # the demo: starts from out/pretrain_128.pth
    python train_full_sft.py --base full_sft_512.pth --n_layers 8 --tokenizer minimind_tokenizer \\
        --data_path sft_mini_512.jsonl --max_seq_len 512       # a MiniMind2 file plus its shape

Every weight is trained; the loss counts only the assistant's replies (the mask comes from
SFTDataset). Writes out/full_sft_{dim}.pth + sidecar, which train_lora.py starts from.
`diff train_full_sft.py train_lora.py` shows exactly what LoRA changes.
"""
import argparse
import sys

import training
from dataset.lm_dataset import SFTDataset
from formats.checkpoint import save_model
from formats.loader import checkpoint_meta, checkpoint_path, find_checkpoint, load_checkpoint, shape_from_args
from model.model import trainable_parameters_report
from plumbing.run_lock import claim_out_dir
from plumbing import flags
from plumbing.runtime import runtime


def build_parser():
    parser = argparse.ArgumentParser(description="MiniMind full SFT: every weight learns the chat format.")
    flags.add_common_args(parser, "full_sft")
    flags.add_model_args(parser, from_checkpoint=True)
    parser.add_argument("--base", default=None,
                        help="checkpoint to start from (default: the pretrain_DIM.pth in OUT_DIR, the only one or --dim's)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    flags.check_args(args)
    base = args.base or find_checkpoint(args.out_dir, "pretrain", args.dim, args.use_moe)

    # one run per output (plumbing/run_lock.py), claimed before anything loads
    with claim_out_dir(args.out_dir, "full_sft"), runtime(args.device, args.dtype, args.seed) as rt:
        # ---- the model: the pretrained checkpoint, config and tokenizer from its sidecar
        loaded = load_checkpoint(base, tokenizer=args.tokenizer, shape=shape_from_args(args),
                                 max_seq_len=args.max_seq_len, device=rt.device)
        model, tokenizer = loaded.model, loaded.tokenizer
        rt.print(f"base {base}; " + trainable_parameters_report(model))

        # ---- every parameter learns; the weights are saved as MiniMind2's checkpoint + our sidecar
        weights = checkpoint_path(args.out_dir, "full_sft", model.config.dim, model.config.use_moe)
        meta = checkpoint_meta("full_sft", loaded.tokenizer_path, tokenizer, base)
        return training.train(args, rt, model, training.param_groups(model), SFTDataset, tokenizer, weights,
                              save=lambda path: save_model(model, path, meta))


if __name__ == "__main__":
    sys.exit(training.run_main(main))
