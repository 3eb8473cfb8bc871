"""Stage 2, supervised fine-tuning (full): the pretrained model learns to answer in the chat format.

    python train_full_sft.py                   # the demo: starts from out/pretrain_128.pth
    python train_full_sft.py --base full_sft_512.pth --dim 512 --n_layers 8 --tokenizer minimind_tokenizer \\
        --data_path sft_mini_512.jsonl --max_seq_len 512       # a MiniMind2 file plus its shape

Every weight is trained; the loss counts only the assistant's replies (the mask comes from
SFTDataset). Writes out/full_sft_{dim}.pth + sidecar, which train_lora.py starts from.
`diff train_full_sft.py train_lora.py` shows exactly what LoRA changes.
"""
import argparse
import sys

import torch

import training
from dataset.lm_dataset import SFTDataset
from model.checkpoint import save_model
from model.loader import DEFAULT_DIM, checkpoint_meta, checkpoint_path, load_checkpoint, run_files, shape_from_args
from model.model import trainable_parameters_report
from model.run_lock import claim_out_dir


def build_parser():
    parser = argparse.ArgumentParser(description="MiniMind full SFT: every weight learns the chat format.")
    training.add_common_args(parser, data_path="dataset/sft_demo.jsonl", epochs=4, batch_size=16,
                             learning_rate=2e-3, warmup_iters=20, max_seq_len=160, save_interval=100,
                             minimind2=dict(epochs=(1, f"over its sft_mini_512.jsonl (1.2 GB); {training.SMALL_DATA}"),
                                            batch_size=(32, training.CPU_BATCH), learning_rate=(5e-5, training.SMALL_MODEL),
                                            accumulation_steps=(1, "")))
    training.add_model_args(parser, from_checkpoint=True)
    parser.add_argument("--base", default=None, help="checkpoint to start from (default: OUT_DIR/pretrain_DIM.pth)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    training.check_args(args)
    base = args.base or checkpoint_path(args.out_dir, "pretrain", args.dim or DEFAULT_DIM, bool(args.use_moe))

    # one run per output folder (model/run_lock.py), claimed before anything loads
    with claim_out_dir(args.out_dir), training.runtime(args.device, args.dtype, args.seed) as rt:
        # ---- the model: the pretrained checkpoint, config and tokenizer from its sidecar
        loaded = load_checkpoint(base, tokenizer=args.tokenizer, shape=shape_from_args(args),
                                 max_seq_len=args.max_seq_len, device=rt.device)
        raw_model, tokenizer = loaded.model, loaded.tokenizer
        files = run_files(args.out_dir, checkpoint_path(args.out_dir, "full_sft", raw_model.config.dim, raw_model.config.use_moe))
        training.check_no_unfinished_run(files.resume, args.resume)
        rt.print(f"base {base}; " + trainable_parameters_report(raw_model))

        # ---- the data, and the optimizer over every parameter
        train_ds, val_ds, data_identity, also_ds = training.load_data(
            SFTDataset, tokenizer, rt, data_path=args.data_path, max_seq_len=args.max_seq_len,
            skip_bad_lines=args.skip_bad_lines, cache_dir=args.cache_dir, val_data=args.val_data, val_samples=args.val_samples,
            val_also=args.val_also)
        data = training.StepBatches(train_ds, args.batch_size, args.accumulation_steps, args.epochs, args.seed, rt,
                                    args.num_workers)
        validation = training.Validation(val_ds, args.batch_size, args.eval_interval, data.total_steps, rt, also_ds)
        params = list(raw_model.parameters())
        optimizer = training.make_optimizer([{"params": params, "lr_scale": 1.0}], args.learning_rate, rt.device)
        scaler = rt.grad_scaler()
        plan = training.run_plan(raw_model, data, rt, data_identity, args.max_seq_len)
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
                    save_model(raw_model, files.weights, meta=checkpoint_meta("full_sft", loaded.tokenizer_path, tokenizer, base))
                training.save_resume(files.resume, raw_model, optimizer, scaler, done, plan, rt)
        training.remove_resume(files.resume, rt)  # finished: nothing to resume, a rerun starts afresh
        progress.close(files.svg, f"{files.weights}: loss")
        rt.print(f"saved {files.weights} ({progress.summary()}); loss curves {files.svg}")
    return training.RunResult(raw_model, progress.last_loss, progress.last_val_loss, files.weights)


if __name__ == "__main__":
    sys.exit(training.run_main(main))
