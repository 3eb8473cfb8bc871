"""Stage 1, pretraining: a randomly initialised MiniMind learns to predict the next token of raw text.

    python train_pretrain.py                   # the demo: a 1.1M-parameter model on dataset/pretrain_demo.jsonl
    torchrun --nproc_per_node 4 train_pretrain.py --dim 512 --n_layers 8 --n_heads 8 --n_kv_heads 2 \\
        --max_seq_len 512 --data_path pretrain_hq.jsonl --tokenizer minimind_tokenizer --batch_size 32

Writes out/pretrain_{dim}.pth (MiniMind2-style weights) and its .json sidecar (config, tokenizer),
which train_full_sft.py starts from; the width given here is never needed again. What every stage
does with its model and data -- the loop -- is training.py's `train`; the defaults (the demo's) are
plumbing/flags.py's STAGES["pretrain"].
"""
import argparse
import sys

import training
from dataset.lm_dataset import PretrainDataset
from formats.checkpoint import save_model
from formats.loader import checkpoint_meta, checkpoint_path, load_tokenizer, shape_from_args
from model.model import MiniMindLM, trainable_parameters_report
from plumbing.run_lock import claim_out_dir
from plumbing import flags
from plumbing.runtime import runtime


def build_parser():
    parser = argparse.ArgumentParser(description="MiniMind pretraining: next-token prediction on raw text.")
    flags.add_common_args(parser, "pretrain")
    flags.add_model_args(parser, from_checkpoint=False)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    flags.check_args(args)

    # one run per output (plumbing/run_lock.py), claimed before anything loads
    with claim_out_dir(args.out_dir, "pretrain"), runtime(args.device, args.dtype, args.seed) as rt:
        # ---- the model: a new one, shaped by the flags, its vocabulary the tokenizer's
        tokenizer = load_tokenizer(args.tokenizer)
        config = flags.model_config(shape_from_args(args), tokenizer.vocab_size, args.max_seq_len)
        model = MiniMindLM(config).to(rt.device)  # random weights (MiniMindLM.init_weights)
        rt.print(trainable_parameters_report(model))

        # ---- every parameter learns; the weights are saved as MiniMind2's checkpoint + our sidecar
        weights = checkpoint_path(args.out_dir, "pretrain", config.dim, config.use_moe)
        meta = checkpoint_meta("pretrain", args.tokenizer, tokenizer)
        return training.train(args, rt, model, training.param_groups(model), PretrainDataset, tokenizer, weights,
                              save=lambda path: save_model(model, path, meta))


if __name__ == "__main__":
    sys.exit(training.run_main(main))
