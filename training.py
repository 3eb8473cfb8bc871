"""The training loop, written once: what pretraining, SFT and LoRA all do with a model and data.

train_pretrain.py, train_full_sft.py and train_lora.py differ only in what their stage *is* -- which
model it starts from, which parameters learn, what file it saves -- and each hands that to `train`,
whose loop reads, in execution order:

    for step, epoch, micro_batches in data.steps(start_step):
        set lr -> for each micro-batch: forward, masked loss, backward -> clip -> step -> log -> validate -> save

Read top to bottom:
    the data         load_data (training set + held-out validation set), collate_trimmed, StepBatches
    optimisation     param_groups (what learns), make_optimizer, get_lr (warmup + cosine), set_lr, masked_cross_entropy
    the objective    LanguageModelling: the loss of a micro-batch, and what validation reports
    validation       Validation: the held-out loss every --eval_interval steps
    the loop         train

A stage that learns something other than the next token hands `train` its own objective: DPO's
(dpo.py: a preference loss against a frozen reference, and held-out preference accuracy) is the one.

Around the loop, each in plumbing/ (read them when you need them, not to follow the lesson): the flags
(flags.py), the device, precision and DDP processes (runtime.py), --resume (resume.py), the progress
bar, metrics log and NaN guard (progress.py). Where files go and how a checkpoint loads is
formats/loader.py's; one run per output, plumbing/run_lock.py's.
"""
import math
from dataclasses import dataclass
from itertools import islice

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Subset, default_collate

from plumbing.errors import UserError, run_main as _run_main
from formats.loader import run_files
from plumbing.progress import Progress
from plumbing.resume import check_no_unfinished_run, count_steps, load_resume, remove_resume, run_plan, save_resume
from plumbing.runtime import sync_gradients, wrap_model


def run_main(main, argv=None) -> int:
    """plumbing.errors.run_main, with a Ctrl-C message that says how to continue: checkpoints are
    written atomically, so the last one is intact."""
    return _run_main(main, argv, on_interrupt="interrupted: the last checkpoint is intact; add --resume to continue from it")


# ------------------------------------------------------------------------------------------------
# The data: micro-batches in a shuffled order fixed by (seed, epoch), grouped into optimizer steps.


def load_data(dataset_class, tokenizer, rt, *, data_path, max_seq_len, skip_bad_lines, cache_dir, val_data, val_samples,
              val_also=None):
    """-> (training set, validation set or None, what identifies them for --resume, the --val_also set or None).

    dataset_class: PretrainDataset or SFTDataset, read through the token cache (dataset/token_cache.py).
    The validation set is --val_data when given, else --val_samples samples held out of --data_path:
    a fixed random choice (the same whatever --seed, so runs on one file are compared on the same
    held-out samples), which the training set then leaves out. Rank 0 builds each cache first and the
    other ranks then open it (rt.rank0_first); only rank 0 prints the datasets' notes.
    """
    def open_dataset(path):  # rank 0 checks the cache's checksums (or rebuilds it); the others, its sizes
        return rt.rank0_first(lambda: dataset_class(path, tokenizer, max_length=max_seq_len, skip_bad=skip_bad_lines,
                                                    cache_dir=cache_dir, verbose=rt.is_main, checksums=rt.is_main))

    dataset = open_dataset(data_path)
    identity = {"data": dataset.cache_key}  # the file's content, tokenizer and window, e.g. 'x.jsonl.sft.len256.3f2a...'
    also = open_dataset(val_also) if val_also is not None else None
    if also is not None:
        identity["val_also"] = also.cache_key
    if val_data is not None:
        validation = open_dataset(val_data)
        identity["validation"] = validation.cache_key
        return dataset, validation, identity, also
    if val_samples == 0:
        return dataset, None, identity, also
    if val_samples >= len(dataset):
        raise UserError(f"--val_samples {val_samples} would leave no training data: {data_path} has {len(dataset)} "
                        "samples (lower --val_samples, or pass --val_data)")
    held_out, kept = held_out_split(len(dataset), val_samples)
    identity["validation"] = f"{val_samples} held out"
    return Subset(dataset, kept), Subset(dataset, held_out), identity, also


def held_out_split(n_samples, val_samples):
    """(held-out indices, kept indices) of n_samples: a random choice seeded 0, whatever --seed, so
    every run on one file holds out the same samples (the LoRA lab reads SFT's held-out ones too)."""
    order = torch.randperm(n_samples, generator=torch.Generator().manual_seed(0)).tolist()
    return sorted(order[:val_samples]), sorted(order[val_samples:])


def collate_trimmed(samples, multiple=16):
    """Stack samples into a batch (X, Y, loss_mask), then drop the columns after its last trained position.

    Every sample is padded to max_seq_len, yet the columns after the batch's last loss_mask = 1 change
    neither the loss (their mask is 0) nor any earlier position (attention is causal): they only cost
    time. SFT samples are short (the demo's chats need 75 columns on average of 159), so this skips much
    of the work. The cut is rounded up to a multiple of 16, so torch.compile meets at most
    max_seq_len / 16 distinct shapes. (Batching samples of like lengths together would skip more, but
    at the demo's settings it doubled SFT's validation loss: batches of one kind of sample at a time.)
    Example: max_seq_len 256, last trained position 70 -> X is (B, 80) instead of (B, 255).
    A DPO sample is a (chosen, rejected) pair, (2, T) each: the batch is (B, 2, T), cut the same way.
    """
    X, Y, loss_mask = default_collate(samples)  # (B, T) each; (B, 2, T) for DPO's pairs
    trained = loss_mask.reshape(-1, loss_mask.size(-1)).any(dim=0).nonzero()  # (n, 1): columns where some row is trained
    keep = int(trained.max()) + 1 if len(trained) else 1
    keep = min(X.size(-1), math.ceil(keep / multiple) * multiple)
    return X[..., :keep], Y[..., :keep], loss_mask[..., :keep]


class StepBatches:
    """Serves the micro-batches of each optimizer step, epoch after epoch.

    Every epoch's order is a permutation seeded by (seed, epoch) -- DistributedSampler's, which also
    gives each process its own share -- so the data position is a pure function of the step: step s
    begins at micro-batch s * accumulation_steps. Resuming therefore needs only the step number, and
    sees exactly the batches the uninterrupted run would have seen. A step may span two epochs; the
    very last step gets whatever micro-batches remain.

    Example: 10 samples, batch_size 4, accumulation 2, 2 epochs -> 3 micro-batches per epoch
    (4+4+2 samples), 6 in all, 3 optimizer steps.
    """

    def __init__(self, dataset, batch_size, accumulation_steps, epochs, seed, rt, num_workers=0):
        self.dataset, self.batch_size, self.accumulation_steps = dataset, batch_size, accumulation_steps
        self.epochs, self.seed, self.rt, self.num_workers = epochs, seed, rt, num_workers
        if len(dataset) == 0:
            raise UserError("the training data holds no usable samples; check --data_path")
        # What must not change between a run and its --resume, or the data order would differ.
        self.plan = {"samples": len(dataset), "batch_size": batch_size, "accumulation_steps": accumulation_steps,
                     "epochs": epochs, "seed": seed, "world_size": rt.world_size}
        self.batches_per_epoch, self.total_steps = count_steps(self.plan)

    def _sampler(self, epoch):
        # With num_replicas/rank given explicitly it needs no process group, so one process uses it too.
        sampler = DistributedSampler(self.dataset, num_replicas=self.rt.world_size, rank=self.rt.rank,
                                     shuffle=True, seed=self.seed)
        sampler.set_epoch(epoch)
        return sampler

    def _micro_batches(self, start):
        """(epoch, (X, Y, loss_mask)) from global micro-batch number `start` to the end of training."""
        first_epoch, skip = divmod(start, self.batches_per_epoch)
        for epoch in range(first_epoch, self.epochs):
            indices = list(self._sampler(epoch))[skip * self.batch_size:]  # skip what was already trained on
            skip = 0
            loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=indices, collate_fn=collate_trimmed,
                                num_workers=self.num_workers, pin_memory=self.rt.device.type == "cuda",
                                # its own generator, so building a loader does not draw from the global
                                # RNG (which would shift dropout noise between a run and its resume)
                                generator=torch.Generator().manual_seed(self.seed))
            for batch in loader:
                yield epoch, batch

    def steps(self, start_step=0):
        """Yield (step, epoch, [micro-batch, ...]) for every optimizer step from start_step on."""
        micro_batches = self._micro_batches(start_step * self.accumulation_steps)
        for step in range(start_step, self.total_steps):
            group = list(islice(micro_batches, self.accumulation_steps))
            yield step, group[0][0], [batch for _, batch in group]


# ------------------------------------------------------------------------------------------------
# Optimisation.


def param_groups(model, lora_plus_ratio=1.0) -> list:
    """What learns, as the optimizer's groups: every parameter that requires a gradient, at the learning
    rate x its group's lr_scale. LoRA+ (Hayou et al. 2024): the adapters' B matrices, which start at zero,
    learn lora_plus_ratio times faster than A; pretraining and SFT have no B, so one group.
    -> [{"params": [...], "lr_scale": 1.0}, {"params": [B, ...], "lr_scale": lora_plus_ratio}]"""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    rest = [p for name, p in trainable if not name.endswith(".lora.B.weight")]
    b_matrices = [p for name, p in trainable if name.endswith(".lora.B.weight")]
    return [{"params": rest, "lr_scale": 1.0}] + ([{"params": b_matrices, "lr_scale": lora_plus_ratio}] if b_matrices else [])


def make_optimizer(param_groups, learning_rate, device):
    """AdamW over [{"params": [...], "lr_scale": s}, ...]; set_lr gives each group lr x lr_scale.

    fused=True updates all tensors in one kernel: on the CPU ~3x faster than the per-tensor loop.
    Weight decay stays at AdamW's default 0.01, as in MiniMind2.
    """
    fused = True if device.type in ("cpu", "cuda") else None
    return torch.optim.AdamW(param_groups, lr=learning_rate, fused=fused)


def get_lr(step, total_steps, learning_rate, warmup_iters, min_lr_ratio=0.1):
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine decay.

    Warmup climbs linearly from learning_rate / warmup_iters to learning_rate over the first
    warmup_iters steps (Adam's first updates, from poor second-moment estimates, are the largest);
    then a half cosine takes it down towards min_lr_ratio x learning_rate, which it reaches at step
    total_steps: one past the last step (total_steps - 1), which is therefore a hair above it.
    Example, learning_rate 1.0, 100 steps (0..99), 10 warmup: step 0 -> 0.1, 4 -> 0.5, 10 -> 1.0,
    55 -> 0.55 (half way), 99 -> 0.1003, 100 -> 0.1.
    (MiniMind2's formula starts at 1.1 x learning_rate and ignores --warmup_iters.)
    """
    if step < warmup_iters:
        return learning_rate * (step + 1) / warmup_iters
    progress = min(1.0, (step - warmup_iters) / max(1, total_steps - warmup_iters))
    min_lr = learning_rate * min_lr_ratio
    return min_lr + 0.5 * (learning_rate - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr):
    """Give every parameter group lr x its lr_scale (1 everywhere, except LoRA+'s B matrices)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]


def masked_cross_entropy(logits, targets, loss_mask):
    """Mean next-token cross-entropy over the positions where loss_mask is 1.

    Pretraining masks out padding only; SFT also masks the prompt, so the model is graded on the
    assistant's replies alone. logits (B, T, V), targets (B, T), loss_mask (B, T).
    Example: per-position losses [2, 4, 6] with mask [1, 1, 0] -> (2 + 4) / 2 = 3.0.
    """
    per_token = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")  # (B*T,)
    mask = loss_mask.reshape(-1).to(per_token.dtype)  # (B*T,)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)  # clamp: an all-masked batch gives 0, not 0/0


# ------------------------------------------------------------------------------------------------
# The objective: what the loop minimises on each micro-batch, and what validation reports.


class LanguageModelling:
    """Pretraining's, SFT's and LoRA's objective: next-token cross-entropy on the trained tokens.

    The loop calls `loss` on every micro-batch; Validation adds up `held_out_sums` over the held-out
    batches (and processes) and turns the totals into numbers with `held_out`. Another stage passes
    `train` an object with the same methods and attributes: dpo.DPO is one.
    """

    plan = {}  # the objective's settings a --resume must find unchanged: none beyond run_plan's
    sums = ("summed cross-entropy", "trained tokens")  # what held_out_sums adds up, in order

    def loss(self, model, X, Y, loss_mask):
        """-> (task loss, aux_loss): masked_cross_entropy, and an MoE's load-balancing loss (0 for a dense model)."""
        out = model(X)  # out.logits: (B, T, vocab_size)
        return masked_cross_entropy(out.logits, Y, loss_mask), out.aux_loss

    def held_out_sums(self, model, X, Y, loss_mask):
        """(summed cross-entropy, trained tokens) of one held-out batch: sums, so batches and processes add up."""
        logits = model(X).logits  # (B, T, vocab_size)
        per_token = F.cross_entropy(logits.float().transpose(1, 2), Y, reduction="none")  # (B, T)
        return torch.stack([(per_token * loss_mask).sum(), loss_mask.sum().float()])

    def held_out(self, sums, name) -> dict:
        """{"NAME_loss": mean cross-entropy over every trained token of the held-out set}."""
        loss, tokens = sums.tolist()
        if tokens == 0:  # 0 / 0 would read as a perfect score
            raise UserError("the validation samples have no trained token within --max_seq_len (every reply is cut "
                            "off): raise --max_seq_len, or give other --val_data")
        return {f"{name}_loss": loss / tokens}


LANGUAGE_MODELLING = LanguageModelling()


# ------------------------------------------------------------------------------------------------
# Validation: the loss on samples the run never trains on. Training loss alone cannot show
# over-fitting (it keeps falling when the model starts memorising); held-out loss turns up then.


class Validation:
    """The held-out batches, and when to measure them: every `interval` optimizer steps, before the first
    step and after the last. What is measured is the objective's (LanguageModelling: the loss).

    Measuring must not change the run: the model is put in eval mode (no dropout, so no random numbers
    drawn), the batches come in a fixed order from a loader with its own generator (a DataLoader without
    one draws a seed from the global RNG), and training mode is restored. A run with validation therefore
    trains exactly the weights of one without, and resumes bit-exactly (tests/test_training.py).
    Under DDP each process measures every world_size-th sample and the sums are added up.
    """

    def __init__(self, dataset, batch_size, interval, total_steps, rt, also=None, objective=LANGUAGE_MODELLING):
        self.interval, self.total_steps, self.rt, self.objective = interval, total_steps, rt, objective
        # {"val": loader, "val_also": loader}: the held-out set, and --val_also's if given
        self.loaders = {}
        for name, data in (("val", dataset), ("val_also", also)):
            if data is not None:
                mine = list(range(rt.rank, len(data), rt.world_size))  # no padding: each sample counted once
                self.loaders[name] = DataLoader(Subset(data, mine), batch_size=batch_size, collate_fn=collate_trimmed,
                                                generator=torch.Generator().manual_seed(0))

    def due(self, done) -> bool:
        """Is a validation due after `done` optimizer steps?"""
        return bool(self.loaders) and (done % self.interval == 0 or done == self.total_steps)

    @torch.no_grad()
    def measure(self, model) -> dict:
        """{"val_loss": ..., "val_also_loss": ...}: the objective's numbers on each held-out set.
        model: the bare model (not the DDP wrapper, whose forward would take part in its collectives)."""
        was_training = model.training
        model.eval()
        numbers = {}
        for name, loader in self.loaders.items():
            sums = torch.zeros(len(self.objective.sums), device=self.rt.device)  # (objective.sums,)
            for batch in loader:
                batch = [t.to(self.rt.device) for t in batch]  # X, Y, loss_mask
                with self.rt.autocast():
                    sums += self.objective.held_out_sums(model, *batch)
            if self.rt.ddp:
                dist.all_reduce(sums)
            numbers.update(self.objective.held_out(sums, name))
        model.train(was_training)
        return numbers


# ------------------------------------------------------------------------------------------------
# The loop.


@dataclass
class RunResult:
    """What a script's main() returns, for callers in the same process (tests, the demo runner)."""

    model: torch.nn.Module  # the trained model, unwrapped (for LoRA: with its adapters applied)
    final_loss: float  # mean training loss over the last log interval (None if no step ran)
    val_loss: float  # the last validation loss (None without validation)
    weights: str  # where the weights (or the adapter) were saved


def train(args, rt, model, param_groups, dataset_class, tokenizer, weights, save, frozen=None,
          objective=LANGUAGE_MODELLING, lr_schedule=None) -> RunResult:
    """Train `model` on args.data_path and save it: the loop every stage shares.

    args: the common flags (plumbing/flags.py); rt: where it runs (plumbing/runtime.py).
    param_groups: what learns, as the optimizer's groups [{"params": [...], "lr_scale": 1.0}, ...]
        (every parameter for pretraining and SFT; A and B for LoRA, B at a higher rate with LoRA+).
    dataset_class: PretrainDataset or SFTDataset (dataset/lm_dataset.py), read with `tokenizer`.
    weights: the deliverable's path; save(weights) writes it (save_model, or save_lora for an adapter).
    frozen: files the run reads but never saves, {"base": path}: a --resume must find them unchanged.
    objective: the loss of a micro-batch and what validation reports (LanguageModelling; DPO's: dpo.DPO).
    lr_schedule(step, total_steps, learning_rate, warmup_iters) -> lr: None is get_lr (warm-up, then cosine);
        the LoRA lab's trainer passes another to measure what the schedule does (lab/cosine.py).
    """
    files = run_files(args.out_dir, weights)  # the weights' resume state, metrics log and loss curves
    check_no_unfinished_run(files.resume, args.resume)
    train_ds, val_ds, data_identity, also_ds = load_data(
        dataset_class, tokenizer, rt, data_path=args.data_path, max_seq_len=args.max_seq_len,
        skip_bad_lines=args.skip_bad_lines, cache_dir=args.cache_dir, val_data=args.val_data,
        val_samples=args.val_samples, val_also=args.val_also)
    data = StepBatches(train_ds, args.batch_size, args.accumulation_steps, args.epochs, args.seed, rt, args.num_workers)
    validation = Validation(val_ds, args.batch_size, args.eval_interval, data.total_steps, rt, also_ds, objective)
    params = [p for group in param_groups for p in group["params"]]
    optimizer = make_optimizer(param_groups, args.learning_rate, rt.device)
    scaler = rt.grad_scaler()
    plan = {**run_plan(model, data, rt, data_identity, args.max_seq_len, frozen), **objective.plan}
    start_step = load_resume(files.resume, model, optimizer, scaler, plan, rt) if args.resume else 0
    wrapped = wrap_model(model, rt, args.compile)  # torch.compile and/or DDP; `model` stays the bare one
    rt.print(f"{len(train_ds):,} training samples, {len(val_ds or []):,} for validation, {data.total_steps:,} "
             f"optimizer steps; {rt}" + (f", resuming after step {start_step}" if start_step else ""))

    progress = Progress(files.metrics, data.total_steps, start_step, rt, args.resume, scaler.is_enabled(),
                        moe=model.config.use_moe)
    if start_step == 0 and validation.due(0):
        progress.log_validation(0, validation.measure(model))  # where training starts from
    wrapped.train()
    for step, epoch, micro_batches in data.steps(start_step):
        lr = (lr_schedule or get_lr)(step, data.total_steps, args.learning_rate, args.warmup_iters)
        set_lr(optimizer, lr)
        for i, batch in enumerate(micro_batches):
            X, Y, loss_mask = (t.to(rt.device, non_blocking=True) for t in batch)  # (B, T) each
            with sync_gradients(wrapped, last=i == len(micro_batches) - 1):
                with rt.autocast():
                    task_loss, aux_loss = objective.loss(wrapped, X, Y, loss_mask)  # forward + masked loss
                    loss = task_loss + aux_loss  # aux_loss: an MoE's load-balancing loss, 0 for a dense model
                # divided, so the summed gradients are those of one batch len(micro_batches) times larger
                scaler.scale(loss / len(micro_batches)).backward()
            progress.add(task_loss.detach(), aux_loss.detach(), X.numel())
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
            progress.log_validation(done, validation.measure(model))
        if done % args.save_interval == 0 or done == data.total_steps:
            progress.check_finite(done)  # never replace the last good checkpoint with NaN weights
            if rt.is_main:
                save(files.weights)
            save_resume(files.resume, model, optimizer, scaler, done, plan, rt)
    remove_resume(files.resume, rt)  # finished: nothing to resume, a rerun starts afresh
    progress.close(files.svg, f"{files.weights}: loss")
    rt.print(f"saved {files.weights} ({progress.summary()}); loss curves {files.svg}")
    return RunResult(model, progress.last_loss, progress.last_val_loss, files.weights)
