"""Stage 3, LoRA: the SFT model learns one task through a small adapter, its own weights frozen.

    python train_lora.py                       # the demo: lora_medical on out/full_sft_128.pth
    python train_lora.py --lora_name lora_identity --data_path dataset/lora_identity.jsonl
    python train_lora.py --base full_sft_512.pth --dim 512 --n_layers 8 --tokenizer minimind_tokenizer \\
        --data_path lora_medical.jsonl --max_seq_len 512 --lora_targets wq,wo --lora_plus_ratio 1   # MiniMind2's LoRA

Only the adapters' A and B matrices are trained and saved: out/lora/{lora_name}_{dim}.pth, a few
percent of the model, loadable by MiniMind2's load_lora. Everything else is train_full_sft.py's:
`diff train_full_sft.py train_lora.py` shows exactly what LoRA changes.
"""
import argparse
import math
import os
import sys

import torch

import training
from dataset.lm_dataset import SFTDataset
from model.errors import UserError
from model.loader import DEFAULT_DIM, adapter_path, check_adapter_name, checkpoint_path, load_checkpoint, run_files, shape_from_args
from model.model_lora import (INITS, SCALINGS, apply_lora, load_lora, mark_only_lora_as_trainable, save_lora,
                              trainable_parameters_report)
from model.predecessors import METHODS, apply_method, save_method
from model.run_lock import claim_out_dir


DEFAULT_RANK = 16  # MiniMind2's
DEFAULT_TARGETS = "wq,wk,wv,wo,w1,w2,w3,output"  # every Linear and the tied embedding: what the demo's tasks need


def build_parser():
    parser = argparse.ArgumentParser(description="MiniMind LoRA: a small adapter learns one task, the model stays frozen.")
    training.add_common_args(parser, data_path="dataset/lora_medical.jsonl", epochs=4, batch_size=16,
                             learning_rate=2e-3, warmup_iters=10, max_seq_len=224, save_interval=100,
                             minimind2=dict(epochs=(50, "over its small lora_identity.jsonl; the demo's files are larger, and 4 "
                                                             "passes reach its targets (docs/experiments.md)"),
                                            batch_size=(16, ""), learning_rate=(5e-5, training.SMALL_MODEL),
                                            accumulation_steps=(1, "")))
    training.add_model_args(parser, from_checkpoint=True)
    parser.add_argument("--base", default=None, help="checkpoint to adapt (default: OUT_DIR/full_sft_DIM.pth)")
    parser.add_argument("--lora_name", default="lora_medical", help="adapter name; saved as OUT_DIR/lora/{lora_name}_{dim}.pth (default: %(default)s)")
    parser.add_argument("--lora_rank", type=int, default=None,
                        help=f"rank r of the update B A (default: {DEFAULT_RANK}, as MiniMind2; with --init_lora, the file's)")
    parser.add_argument("--lora_alpha", type=float, default=None,
                        help="the update is scaled by alpha / rank (default: alpha = rank, scale 1, as MiniMind2)")
    parser.add_argument("--lora_dropout", type=float, default=0.0, help="dropout on the adapter's input (default: %(default)s)")
    parser.add_argument("--lora_targets", default=None,
                        help="comma-separated Linear names to adapt; 'output' also adapts tok_embeddings, its tied weight "
                             f"(default: {DEFAULT_TARGETS}: every Linear and the tied embedding, which the demo's tasks "
                             "need; MiniMind2 adapts the square ones only, wq,wo; with --init_lora, the file's)")
    parser.add_argument("--lora_init", choices=INITS, default="standard",
                        help="how A and B start: standard (A random, B = 0, as MiniMind2), swapped (A = 0, B random), "
                             "zeros (nothing ever trains: a demonstration), pissa (W's principal singular directions; "
                             "saved as the rank-2r adapter it amounts to) (default: %(default)s)")
    parser.add_argument("--lora_scaling", choices=SCALINGS, default=None,
                        help="the update's scale: standard = alpha / rank, rslora = alpha / sqrt(rank) "
                             "(default: standard; with --init_lora, the file's)")
    parser.add_argument("--lora_plus_ratio", type=float, default=16.0,
                        help="LoRA+: B's learning rate is this times A's (default: %(default)s, LoRA+'s suggestion; "
                             "1 = plain LoRA, as MiniMind2)")
    parser.add_argument("--method", choices=("lora",) + METHODS, default="lora",
                        help="lora, or one of its predecessors as a baseline (model/predecessors.py): adapter "
                             "(Houlsby's bottleneck layers, width --lora_rank) or prefix (Li & Liang's trained "
                             "keys/values, --lora_rank of them per layer); these train all their parameters at one "
                             "learning rate and save a file only the LoRA lab reads (default: %(default)s)")
    parser.add_argument("--init_lora", default=None,
                        help="train this adapter further instead of starting a new one (e.g. one imported with "
                             "convert_model.py from-hf): its file gives the rank, alpha and targets, so --lora_rank, "
                             "--lora_alpha and --lora_targets are left out or must match it")
    return parser


# The Linear layers of MiniMindLM, by name ('output' is the one tied to tok_embeddings; 'gate' is a
# mixture of experts' router, docs/moe.md); what --lora_targets takes.
LINEAR_NAMES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3", "output", "gate")


def check_lora_args(args):
    """The --lora_* flags, checked before anything loads (apply_lora would refuse them only once the base is loaded)."""
    check_adapter_name(args.lora_name)
    if args.lora_rank is not None and args.lora_rank < 1:
        raise UserError(f"--lora_rank must be at least 1, got {args.lora_rank}")
    if args.lora_alpha is not None and not (math.isfinite(args.lora_alpha) and args.lora_alpha > 0):
        raise UserError(f"--lora_alpha must be a positive number, got {args.lora_alpha}")
    if not 0 <= args.lora_dropout < 1:
        raise UserError(f"--lora_dropout must be in [0, 1), got {args.lora_dropout}")
    unknown = [t for t in (args.lora_targets or DEFAULT_TARGETS).split(",") if t not in LINEAR_NAMES]
    if unknown:
        raise UserError(f"--lora_targets: {', '.join(map(repr, unknown))} is not a Linear of the model; "
                        f"choose from {','.join(LINEAR_NAMES)}")
    if not (math.isfinite(args.lora_plus_ratio) and args.lora_plus_ratio > 0):
        raise UserError(f"--lora_plus_ratio must be a positive number (1 = plain LoRA), got {args.lora_plus_ratio}")
    lora_only = {"--init_lora": args.init_lora, "--lora_alpha": args.lora_alpha, "--lora_targets": args.lora_targets,
                 "--lora_scaling": args.lora_scaling, "--lora_init": None if args.lora_init == "standard" else args.lora_init}
    given = [flag for flag, value in lora_only.items() if value is not None]
    if args.method != "lora" and given:
        raise UserError(f"--method {args.method} has no {given[0]}: it takes --lora_rank as its size, nothing else of LoRA's")
    if args.init_lora is not None and args.lora_init != "standard":
        raise UserError(f"--lora_init {args.lora_init} starts a new adapter and --init_lora continues one: give one of them")
    if args.init_lora is not None and not os.path.isfile(args.init_lora):
        raise UserError(f"--init_lora {args.init_lora} not found (an adapter file, .pth or .safetensors)")
    # (that --init_lora is not the file this run writes is checked once the output name is known, in main)


def check_init_lora_agrees(model, init_lora, rank, alpha, targets, scaling):
    """With --init_lora the file defines the adapter; a --lora_rank/--lora_alpha/--lora_targets/--lora_scaling
    given as well (not None) must say the same, or the user asked for another adapter than the one trained."""
    settings = training.lora_settings(model)  # {"rank", "alpha", "scaling", "dropout", "targets", ...} of the loaded adapter
    given = {"rank": rank, "alpha": alpha, "targets": sorted(targets.split(",")) if targets else None, "scaling": scaling}
    for key, value in given.items():
        if value is not None and value != settings[key]:
            raise UserError(f"--lora_{key} {value} disagrees with {init_lora} ({key} {settings[key]}); "
                            "drop the flag: the adapter file gives it")


def main(argv=None):
    args = build_parser().parse_args(argv)
    training.check_args(args)
    check_lora_args(args)
    base = args.base or checkpoint_path(args.out_dir, "full_sft", args.dim or DEFAULT_DIM, bool(args.use_moe))

    # one run per output folder (model/run_lock.py), claimed before anything loads
    with claim_out_dir(args.out_dir, also=["lora"]), training.runtime(args.device, args.dtype, args.seed) as rt:
        # ---- the model: the SFT checkpoint, config and tokenizer from its sidecar
        loaded = load_checkpoint(base, tokenizer=args.tokenizer, shape=shape_from_args(args),
                                 max_seq_len=args.max_seq_len, device=rt.device)
        raw_model, tokenizer = loaded.model, loaded.tokenizer
        files = run_files(args.out_dir, adapter_path(args.out_dir, args.lora_name, raw_model.config.dim, raw_model.config.use_moe))
        training.check_no_unfinished_run(files.resume, args.resume)
        # LoRA: adapters beside the chosen Linears (B = 0, so the model is still exactly the base), then
        # freeze everything else: frozen weights get no gradients and no optimizer state
        if args.init_lora and os.path.exists(files.weights) and os.path.samefile(args.init_lora, files.weights):
            raise UserError(f"--init_lora {args.init_lora} is the file this run saves to (its first save would "
                            "overwrite where it started, and --resume could no longer check it): give the run "
                            "another --lora_name")
        if args.method != "lora":  # a baseline: its own trainable parts, everything else frozen
            apply_method(raw_model, args.method, args.lora_rank or DEFAULT_RANK)
        elif args.init_lora:  # an existing adapter, trained further
            load_lora(raw_model, args.init_lora, dropout=args.lora_dropout)
            check_init_lora_agrees(raw_model, args.init_lora, args.lora_rank, args.lora_alpha, args.lora_targets,
                                   args.lora_scaling)
        else:
            try:
                apply_lora(raw_model, args.lora_rank or DEFAULT_RANK, args.lora_alpha, args.lora_dropout,
                           (args.lora_targets or DEFAULT_TARGETS).split(","), args.lora_init, args.lora_scaling or "standard")
            except ValueError as e:  # a bad rank, alpha, dropout or target name
                raise UserError(f"{e} (check the --lora_* flags)") from None
        if args.method == "lora":
            mark_only_lora_as_trainable(raw_model)
        rt.print(f"base {base}; " + trainable_parameters_report(raw_model))

        # ---- the data, and the optimizer over the adapters only
        train_ds, val_ds, data_identity, also_ds = training.load_data(
            SFTDataset, tokenizer, rt, data_path=args.data_path, max_seq_len=args.max_seq_len,
            skip_bad_lines=args.skip_bad_lines, cache_dir=args.cache_dir, val_data=args.val_data, val_samples=args.val_samples,
            val_also=args.val_also)
        data = training.StepBatches(train_ds, args.batch_size, args.accumulation_steps, args.epochs, args.seed, rt,
                                    args.num_workers)
        validation = training.Validation(val_ds, args.batch_size, args.eval_interval, data.total_steps, rt, also_ds)
        # LoRA+ (Hayou et al., 2024): B, which starts at zero, learns lora_plus_ratio times faster than A
        # (a baseline's parameters are all in the first group)
        b_params = [p for n, p in raw_model.named_parameters() if p.requires_grad and n.endswith(".lora.B.weight")]
        a_params = [p for p in raw_model.parameters() if p.requires_grad and all(p is not b for b in b_params)]
        params = a_params + b_params
        groups = [{"params": a_params, "lr_scale": 1.0}] + ([{"params": b_params, "lr_scale": args.lora_plus_ratio}] if b_params else [])
        optimizer = training.make_optimizer(groups, args.learning_rate, rt.device)
        scaler = rt.grad_scaler()
        # the frozen base is not in the resume file, so a --resume must find the very same --base file
        plan = training.run_plan(raw_model, data, rt, data_identity, args.max_seq_len, base=base)
        plan["init_lora"] = training.file_sha256(args.init_lora) if args.init_lora else None
        plan["method"] = args.method
        start_step = training.load_resume(files.resume, raw_model, optimizer, scaler, plan, rt) if args.resume else 0
        model = training.wrap_model(raw_model, rt, args.compile)
        rt.print(f"{len(train_ds):,} training samples, {len(val_ds or []):,} for validation, {data.total_steps:,} "
                 f"optimizer steps; {rt}" + (f", resuming after step {start_step}" if start_step else ""))

        # ---- the loop: set lr -> forward -> masked loss -> backward -> clip -> step -> log -> validate -> save
        progress = training.Progress(files.metrics, data.total_steps, start_step, rt, args.resume, scaler.is_enabled(),
                                     moe=raw_model.config.use_moe)
        if start_step == 0 and validation.due(0):
            progress.log_validation(0, validation.loss(raw_model))  # where training starts from
        model.train()
        for step, epoch, micro_batches in data.steps(start_step):
            lr = training.get_lr(step, data.total_steps, args.learning_rate, args.warmup_iters)
            training.set_lr(optimizer, lr)
            for i, (X, Y, loss_mask) in enumerate(micro_batches):
                X, Y, loss_mask = (t.to(rt.device, non_blocking=True) for t in (X, Y, loss_mask))
                with training.sync_gradients(model, last=i == len(micro_batches) - 1):
                    with rt.autocast():
                        out = model(X)  # out.logits: (B, T, vocab_size)
                        task_loss = training.masked_cross_entropy(out.logits, Y, loss_mask)
                        loss = task_loss + out.aux_loss  # aux_loss: an MoE's load-balancing loss, 0 for a dense model
                    # divided, so the summed gradients are those of one batch len(micro_batches) times larger
                    scaler.scale(loss / len(micro_batches)).backward()
                progress.add(task_loss.detach(), out.aux_loss.detach(), X.numel())
            scaler.unscale_(optimizer)  # clip the true gradients, not float16-scaled ones
            grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            progress.step(grad_norm)

            done = step + 1
            if done % args.log_interval == 0 or done == data.total_steps:
                progress.log(done, epoch, lr)
            if validation.due(done):
                progress.log_validation(done, validation.loss(raw_model))
            if done % args.save_interval == 0 or done == data.total_steps:
                progress.check_finite(done)  # never replace the last good checkpoint with NaN weights
                if rt.is_main:
                    save_lora(raw_model, files.weights) if args.method == "lora" else save_method(raw_model, files.weights)  # not the base
                training.save_resume(files.resume, raw_model, optimizer, scaler, done, plan, rt)
        training.remove_resume(files.resume, rt)  # finished: nothing to resume, a rerun starts afresh
        progress.close(files.svg, f"{files.weights}: loss")
        rt.print(f"saved {files.weights} ({progress.summary()}); loss curves {files.svg}")
    return training.RunResult(raw_model, progress.last_loss, progress.last_val_loss, files.weights)


if __name__ == "__main__":
    sys.exit(training.run_main(main))
