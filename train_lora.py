"""Stage 3, LoRA: the SFT model learns one task through a small adapter, its own weights frozen.

    python train_lora.py                       # the demo: lora_medical on out/full_sft_256.pth
    python train_lora.py --lora_name lora_identity --data_path dataset/lora_identity.jsonl
    python train_lora.py --base full_sft_512.pth --dim 512 --n_layers 8 --tokenizer model/minimind_tokenizer \\
        --data_path dataset/lora_medical.jsonl --max_seq_len 512      # a MiniMind2 file plus its shape

Only the adapters' A and B matrices are trained and saved: out/lora/{lora_name}_{dim}.pth, a few
percent of the model, loadable by MiniMind2's load_lora. Everything else is train_full_sft.py's:
`diff train_full_sft.py train_lora.py` shows exactly what LoRA changes.
"""
import argparse
import sys

import torch

import training
from dataset.lm_dataset import SFTDataset
from model.model_lora import apply_lora, mark_only_lora_as_trainable, save_lora, trainable_parameters_report


def build_parser():
    parser = argparse.ArgumentParser(description="MiniMind LoRA: a small adapter learns one task, the model stays frozen.")
    training.add_common_args(parser, data_path="dataset/lora_medical.jsonl", epochs=2, batch_size=16,
                             learning_rate=1e-3, warmup_iters=10, save_interval=100)
    training.add_model_args(parser, from_checkpoint=True)
    parser.add_argument("--base", default=None, help="checkpoint to adapt (default: OUT_DIR/full_sft_{dim}.pth)")
    parser.add_argument("--lora_name", default="lora_medical", help="adapter name; saved as OUT_DIR/lora/{lora_name}_{dim}.pth (default: %(default)s)")
    parser.add_argument("--lora_rank", type=int, default=16, help="rank r of the update B A (default: %(default)s)")
    parser.add_argument("--lora_alpha", type=float, default=None,
                        help="the update is scaled by alpha / rank (default: alpha = rank, scale 1, as MiniMind2)")
    parser.add_argument("--lora_dropout", type=float, default=0.0, help="dropout on the adapter's input (default: %(default)s)")
    parser.add_argument("--lora_targets", default=None,
                        help="comma-separated Linear names to adapt, e.g. wq,wk,wv,wo,w1,w2,w3,output; output also adapts "
                             "tok_embeddings, its tied weight (default: the square ones, wq and wo, as MiniMind2)")
    parser.add_argument("--lora_plus_ratio", type=float, default=1.0,
                        help="LoRA+: B's learning rate is this times A's; LoRA+ suggests 16 (default: %(default)s, plain LoRA)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    training.check_args(args)
    training.check_lora_name(args.lora_name)
    base = args.base or f"{args.out_dir}/full_sft_{args.dim}.pth"

    with training.runtime(args.device, args.dtype, args.seed) as rt:
        # ---- the model: the SFT checkpoint, config and tokenizer from its sidecar
        raw_model, tokenizer, _ = training.load_base(
            base, f"python train_full_sft.py --out_dir {args.out_dir} --dim {args.dim}", args, rt.device)
        name = f"{args.lora_name}_{raw_model.config.dim}"
        paths = training.OutputPaths.for_run(args.out_dir, name, weights=f"{args.out_dir}/lora/{name}.pth")
        training.check_no_unfinished_run(paths.resume, args.resume)
        # LoRA: adapters beside the chosen Linears (B = 0, so the model is still exactly the base), then
        # freeze everything else: frozen weights get no gradients and no optimizer state
        targets = args.lora_targets.split(",") if args.lora_targets else None
        apply_lora(raw_model, args.lora_rank, args.lora_alpha, args.lora_dropout, targets)
        mark_only_lora_as_trainable(raw_model)
        rt.print(f"base {base}; " + trainable_parameters_report(raw_model))

        # ---- the data, and the optimizer over the adapters only
        train_ds = training.load_dataset(SFTDataset, args, tokenizer, rt)
        data = training.StepBatches(train_ds, args.batch_size, args.accumulation_steps, args.epochs, args.seed, rt,
                                    args.num_workers)
        # LoRA+ (Hayou et al., 2024): B, which starts at zero, learns lora_plus_ratio times faster than A
        a_params = [p for n, p in raw_model.named_parameters() if p.requires_grad and n.endswith(".lora.A.weight")]
        b_params = [p for n, p in raw_model.named_parameters() if p.requires_grad and n.endswith(".lora.B.weight")]
        params = a_params + b_params
        optimizer = training.make_optimizer([{"params": a_params, "lr_scale": 1.0},
                                             {"params": b_params, "lr_scale": args.lora_plus_ratio}], args.learning_rate, rt.device)
        scaler = rt.grad_scaler()
        # the frozen base is not in the resume file, so a --resume must find the very same --base file
        plan = training.run_plan(args, raw_model, data, rt, base=base)
        start_step = training.load_resume(paths.resume, raw_model, optimizer, scaler, plan, rt) if args.resume else 0
        model = training.wrap_model(raw_model, rt, args.compile)
        rt.print(f"{len(train_ds):,} samples, {data.total_steps:,} optimizer steps; {rt}"
                 + (f", resuming after step {start_step}" if start_step else ""))

        # ---- the loop: set lr -> forward -> masked loss -> backward -> clip -> step -> log -> save
        progress = training.Progress(paths.metrics, data.total_steps, start_step, rt, args.resume, scaler.is_enabled())
        model.train()
        for step, epoch, micro_batches in data.steps(start_step):
            lr = training.get_lr(step, data.total_steps, args.learning_rate, args.warmup_iters)
            training.set_lr(optimizer, lr)
            for i, (X, Y, loss_mask) in enumerate(micro_batches):
                X, Y, loss_mask = (t.to(rt.device, non_blocking=True) for t in (X, Y, loss_mask))
                with training.sync_gradients(model, last=i == len(micro_batches) - 1):
                    with rt.autocast():
                        logits = model(X).logits  # (B, T, vocab_size)
                        loss = training.masked_cross_entropy(logits, Y, loss_mask)
                    # divided, so the summed gradients are those of one batch len(micro_batches) times larger
                    scaler.scale(loss / len(micro_batches)).backward()
                progress.add(loss.detach(), X.numel())
            scaler.unscale_(optimizer)  # clip the true gradients, not float16-scaled ones
            grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            progress.step(grad_norm)

            done = step + 1
            if done % args.log_interval == 0 or done == data.total_steps:
                progress.log(done, epoch, lr)
            if done % args.save_interval == 0 or done == data.total_steps:
                progress.check_finite(done)  # never replace the last good checkpoint with NaN weights
                if rt.is_main:
                    save_lora(raw_model, paths.weights)  # the adapter alone: the base file is not touched
                training.save_resume(paths.resume, raw_model, optimizer, scaler, done, plan, rt)
        training.remove_resume(paths.resume, rt)  # finished: nothing to resume, a rerun starts afresh
        progress.close(paths.svg, f"{name}: loss")
        rt.print(f"saved {paths.weights} (final loss {progress.last_loss}); loss curve {paths.svg}")
    return training.RunResult(raw_model, progress.last_loss, paths.weights)


if __name__ == "__main__":
    sys.exit(training.run_main(main))
