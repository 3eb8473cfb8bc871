"""The shared machinery of the three training scripts, written once.

train_pretrain.py, train_full_sft.py and train_lora.py each keep their own training loop in plain
sight; everything that loop leans on, and that would otherwise be copied three times, lives here:

    flags                   add_common_args, add_model_args, check_args, model_config
    the machine             Runtime, runtime(): device, autocast dtype, DDP, rank-0 printing
    the data                load_data (training set + held-out validation set), StepBatches
    optimisation            make_optimizer, get_lr, set_lr, masked_cross_entropy, wrap_model, sync_gradients
    validation              Validation: the held-out loss every --eval_interval steps
    checkpoints             run_plan, save_resume, load_resume, remove_resume (model, optimizer, step,
                            data position, RNG, and the settings a resume must find unchanged)
    progress                Progress (tqdm bar, metrics JSONL, NaN/inf guard, the loss curves)

Where files go and how a checkpoint is loaded are model/loader.py's; one run per output folder is
model/run_lock.py's (claim_out_dir); a user's mistake is a model.errors.UserError, printed as one line
by run_main. Each script's loop, in execution order:

    for step, epoch, micro_batches in data.steps(start_step):
        set lr -> for each micro-batch: forward, masked loss, backward -> clip -> step -> log -> validate -> save
"""

import hashlib
import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from itertools import islice

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset, default_collate
from tqdm import tqdm

from model.atomic import WriteError, atomic_write_text
from model.checkpoint import atomic_save
from model.device import DEVICE_HELP, DTYPES, TRAINING_DTYPE_HELP, pick_device, pick_dtype
from model.errors import UserError, run_main as _run_main
from model.LMConfig import LMConfig
from model.loader import DEFAULT_DIM, add_shape_args, check_positions, repo_path
from model.model_lora import LoRALinear
from plot import line_chart


def run_main(main, argv=None) -> int:
    """model.errors.run_main, with a Ctrl-C message that says how to continue: checkpoints are
    written atomically, so the last one is intact."""
    return _run_main(main, argv, on_interrupt="interrupted: the last checkpoint is intact; add --resume to continue from it")


# ------------------------------------------------------------------------------------------------
# Flags: MiniMind2's names. Each script passes the defaults of its stage, and those defaults ARE the
# demo: `python train_pretrain.py` with no flags trains exactly what `python run_demo.py` trains.


# Why a default of the stages differs from MiniMind2's, for the flags' help (add_common_args' minimind2=).
SMALL_DATA = "the demo's small file needs several passes"
CPU_BATCH = "the demo's is sized for a CPU"
SMALL_MODEL = "the demo's 1M-parameter model learns fastest there (docs/experiments.md)"


def add_common_args(parser, *, data_path, epochs, batch_size, learning_rate, warmup_iters, max_seq_len, save_interval,
                    minimind2):
    """The flags every stage shares. The defaults that differ per stage are passed in by the script, with
    minimind2: {flag: (MiniMind2's default for this stage, why ours differs)} for epochs, batch_size,
    learning_rate and accumulation_steps, which each flag's help states beside ours."""
    def versus(flag, ours):
        theirs, why = minimind2[flag]
        return "as MiniMind2" if theirs == ours else f"MiniMind2: {theirs:g}; {why}"

    p = parser
    p.add_argument("--out_dir", default="out", help="directory for checkpoints, metrics and loss curves (default: %(default)s)")
    p.add_argument("--data_path", default=repo_path(data_path),
                   help=f"training data, jsonl (default: the repository's {data_path})")
    p.add_argument("--epochs", type=int, default=epochs,
                   help=f"passes over the data (default: %(default)s, {versus('epochs', epochs)})")
    p.add_argument("--batch_size", type=int, default=batch_size,
                   help=f"sequences per micro-batch, per process (default: %(default)s, {versus('batch_size', batch_size)})")
    p.add_argument("--learning_rate", type=float, default=learning_rate,
                   help=f"peak learning rate, reached after warmup (default: %(default)s, {versus('learning_rate', learning_rate)})")
    p.add_argument("--warmup_iters", type=int, default=warmup_iters,
                   help="optimizer steps of linear warmup from ~0 to --learning_rate before the cosine decay (default: %(default)s)")
    p.add_argument("--accumulation_steps", type=int, default=1,
                   help="micro-batches whose gradients are summed into one optimizer step; effective batch = "
                        f"batch_size x accumulation_steps x processes (default: %(default)s, {versus('accumulation_steps', 1)})")
    p.add_argument("--grad_clip", type=float, default=1.0, help="clip the gradient norm to this; inf disables clipping (default: %(default)s)")
    # The training window, not LMConfig.max_seq_len (the RoPE table size, 8192 as in MiniMind2, which
    # only bounds how long a sequence the model can ever read): MiniMind2 gives both the same name.
    p.add_argument("--max_seq_len", type=int, default=max_seq_len,
                   help="tokens per training sequence; longer samples are cut (default: %(default)s, which keeps all but "
                        "the longest few of the demo's samples whole; MiniMind2 uses 512)")
    p.add_argument("--val_samples", type=int, default=64,
                   help="samples of --data_path held out for the validation loss (the same ones in every run on "
                        "that file); 0 = none (default: %(default)s)")
    p.add_argument("--val_data", default=None,
                   help="a held-out jsonl in the training format to take the validation loss on, instead of --val_samples")
    p.add_argument("--val_also", default=None,
                   help="a second held-out jsonl in the training format whose loss is logged too (val_also_loss), "
                        "e.g. general conversations while a task is learned: forgetting, watched as it happens")
    p.add_argument("--eval_interval", type=int, default=50,
                   help="optimizer steps between validation losses; one is also taken before the first step and "
                        "after the last (default: %(default)s)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--dtype", default="auto", choices=DTYPES, help=TRAINING_DTYPE_HELP)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (faster steps after a slow first one)")
    p.add_argument("--log_interval", type=int, default=10, help="optimizer steps between log lines (default: %(default)s)")
    p.add_argument("--save_interval", type=int, default=save_interval,
                   help="optimizer steps between checkpoints; one is also written at the end (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run from its last checkpoint (same flags; the run's *_resume.pth in --out_dir)")
    p.add_argument("--seed", type=int, default=1337, help="seed for initialisation, data order and dropout (default: %(default)s)")
    p.add_argument("--num_workers", type=int, default=0,
                   help="DataLoader worker processes; 0 loads in the training process, enough for pre-tokenized data (default: %(default)s)")
    p.add_argument("--skip_bad_lines", action="store_true", help="skip (and count) malformed jsonl records instead of stopping at the first")
    p.add_argument("--cache_dir", default=None, help="where the tokenized-data cache goes (default: a .cache folder beside the data file)")


def add_model_args(parser, *, from_checkpoint):
    """--dim/--n_layers/--n_heads/--n_kv_heads and --tokenizer.

    from_checkpoint=False (pretraining): they define the new model; the defaults are the demo's model.
    from_checkpoint=True (SFT, LoRA): the base checkpoint's .json sidecar defines the model and its
    tokenizer; the flags are needed only for a plain MiniMind2 .pth without one (and must agree with a
    sidecar when given), and --dim names the default base file.
    """
    p = parser
    if not from_checkpoint:
        # The demo's model, 1.1M parameters: small enough to pretrain in minutes on 2 CPU cores.
        p.add_argument("--dim", type=int, default=DEFAULT_DIM,
                       help="model width (default: %(default)s; MiniMind2-Small 512, MiniMind2 768)")
        p.add_argument("--n_layers", type=int, default=4, help="transformer blocks (default: %(default)s; MiniMind2-Small 8, MiniMind2 16)")
        p.add_argument("--n_heads", type=int, default=4,
                       help="attention query heads (default: %(default)s, heads of 32 dimensions at dim 128; MiniMind2: 8, "
                            "which at dim 128 would leave heads of 16)")
        p.add_argument("--n_kv_heads", type=int, default=4,
                       help="key/value heads; fewer than --n_heads is grouped-query attention (default: %(default)s; "
                            "MiniMind2: 2, a KV cache 4x smaller, which a 1M-parameter model cannot afford)")
        p.add_argument("--use_moe", action="store_true",
                       help="a mixture-of-experts model: every feed-forward becomes MiniMind2-MoE's routed experts + a "
                            "shared expert, with the load-balancing loss added to the training loss (docs/moe.md)")
        p.add_argument("--tokenizer", default=repo_path("model/demo_tokenizer"),
                       help="tokenizer directory or tokenizer.json (default: the repository's model/demo_tokenizer)")
        return
    add_shape_args(p)


def check_args(args):
    """Reject values that would fail later and obscurely (or silently train nothing), before anything loads.
    (--max_seq_len against the model's positions is checked as soon as the model's config is known:
    model_config, or load_checkpoint's max_seq_len.)"""
    positive = ["epochs", "batch_size", "accumulation_steps", "log_interval", "save_interval", "eval_interval"]
    for name in positive:
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.max_seq_len < 2:
        raise UserError("--max_seq_len must be at least 2 (inputs are tokens[:-1], targets tokens[1:])")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise UserError(f"--learning_rate must be a positive number, got {args.learning_rate}")
    if args.warmup_iters < 0:
        raise UserError(f"--warmup_iters must be 0 or more, got {args.warmup_iters}")
    if not args.grad_clip > 0:
        raise UserError(f"--grad_clip must be positive (inf disables clipping), got {args.grad_clip}")
    if args.val_samples < 0:
        raise UserError(f"--val_samples must be 0 or more, got {args.val_samples}")
    if args.num_workers < 0:
        raise UserError(f"--num_workers must be 0 or more, got {args.num_workers}")
    for flag, path in (("--data_path", args.data_path), ("--val_data", args.val_data), ("--val_also", args.val_also)):
        if path is not None and os.path.isdir(path):
            raise UserError(f"{flag} {path} is a directory; pass a jsonl file")
        if path is not None and not os.path.isfile(path):
            raise UserError(f"{flag} {path} not found (check the path)")
    if args.cache_dir is not None and os.path.exists(args.cache_dir) and not os.path.isdir(args.cache_dir):
        raise UserError(f"--cache_dir {args.cache_dir} is a file, not a folder")


def model_config(shape: dict, vocab_size: int, max_seq_len=None) -> LMConfig:
    """LMConfig from the shape flags (None values take MiniMind2's defaults) and the tokenizer's size;
    a training window (--max_seq_len) longer than its positions is refused."""
    try:
        config = LMConfig(**{k: v for k, v in shape.items() if v is not None}, vocab_size=vocab_size)
    except ValueError as e:
        raise UserError(f"{e} (check --dim/--n_heads/--n_kv_heads)") from None
    check_positions(max_seq_len, config, "the model")
    return config


@dataclass
class RunResult:
    """What a script's main() returns, for callers in the same process (tests, the demo runner)."""

    model: torch.nn.Module  # the trained model, unwrapped (for LoRA: with its adapters applied)
    final_loss: float  # mean training loss over the last log interval (None if no step ran)
    val_loss: float  # the last validation loss (None without validation)
    weights: str  # where the weights (or the adapter) were saved


# ------------------------------------------------------------------------------------------------
# The machine: device, precision, processes.


@dataclass
class Runtime:
    """Where this process trains: its device, autocast dtype and place among DDP processes."""

    device: torch.device
    autocast_dtype: torch.dtype = None  # None: plain float32
    rank: int = 0
    world_size: int = 1
    precision_note: str = ""  # why the precision is what it is, when --dtype did not say it outright

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, writes files and draws the progress bar; the others only compute."""
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world_size > 1

    def __str__(self):
        """e.g. "cpu, float32 (auto), 1 process", "cpu, bfloat16 autocast, 1 process" or
        "cuda:0, bfloat16 autocast (auto), 8 processes"."""
        precision = "float32" if self.autocast_dtype is None else f"{str(self.autocast_dtype)[6:]} autocast"
        if self.precision_note:
            precision += f" ({self.precision_note})"
        return f"{self.device}, {precision}, {self.world_size} process{'es' if self.ddp else ''}"

    def print(self, *args):
        if self.is_main:
            print(*args, flush=True)

    def autocast(self):
        """Matmuls in bfloat16/float16 (on CUDA, or bfloat16 on a CPU that has it natively); weights,
        optimizer and reductions stay float32. Autocast casts each matmul's inputs down as it runs it,
        so the gradients reach the float32 weights as float32."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def grad_scaler(self):
        """float16 has so few exponent bits that small gradients underflow to 0; the scaler multiplies
        the loss up before backward and divides the gradients back (skipping steps that overflow).
        bfloat16 has float32's range and needs none: the scaler is then a no-op."""
        return torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)

    def barrier(self):
        if self.ddp:
            dist.barrier()

    def rank0_first(self, build):
        """Call build() on rank 0 first, then on the others: rank 0 writes the tokenized-data cache
        once and the other ranks then read it, instead of all of them tokenizing the same file."""
        if not self.is_main:
            self.barrier()
        result = build()
        if self.is_main:
            self.barrier()
        return result

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank (e.g. each rank's RNG state)."""
        if not self.ddp:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


@contextmanager
def runtime(device="auto", dtype="auto", seed=1337):
    """Set up this process: device, autocast dtype, DDP process group (under torchrun), seed.

    What --dtype means on each device is model.device.pick_dtype's to say (one place for every script).

    Under `torchrun --nproc_per_node N` each process reads RANK/LOCAL_RANK/WORLD_SIZE from the
    environment, takes GPU LOCAL_RANK on CUDA (nccl) or stays on the CPU (gloo). The process group
    is destroyed on the way out, error or not.
    """
    rank, local_rank, world_size = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    device = pick_device(device)
    chosen, note = pick_dtype(device, dtype)
    autocast_dtype = None if chosen == torch.float32 else chosen
    if device.type == "cuda" and autocast_dtype is not None:
        # TF32 matmuls for whatever stays float32: ~8x the float32 rate on Ampere and later.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world_size > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    # Each rank gets its own dropout noise; DDP broadcasts rank 0's initial weights to all ranks.
    torch.manual_seed(seed + rank)
    try:
        yield Runtime(device, autocast_dtype, rank, world_size, note)
        if world_size > 1:
            # Every rank finishes its last collective before any rank tears its connections down:
            # gloo aborts a process whose peer hangs up while a message is still on its way.
            dist.barrier()
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def wrap_model(model, rt, compile):
    """torch.compile (optional), then DistributedDataParallel under torchrun.

    Keep a reference to the bare model for saving: it has the clean MiniMind2 keys, while the
    wrappers add "_orig_mod." and "module." prefixes to every name.
    """
    if compile:
        model = torch.compile(model)
    if rt.ddp:
        # broadcast_buffers=False: the model's only buffer is the constant RoPE table, which DDP would
        # otherwise copy from rank 0 to every rank before each forward, for nothing.
        model = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                                        broadcast_buffers=False)
    return model


def sync_gradients(model, last):
    """DDP averages gradients across processes during every backward. Within one optimizer step
    only the last micro-batch needs that; the others just accumulate locally (no_sync)."""
    if isinstance(model, DistributedDataParallel) and not last:
        return model.no_sync()
    return nullcontext()


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
    """
    X, Y, loss_mask = default_collate(samples)  # (B, T) each
    trained = loss_mask.any(dim=0).nonzero()  # (n, 1): columns where some row is trained
    keep = int(trained.max()) + 1 if len(trained) else 1
    keep = min(X.size(1), math.ceil(keep / multiple) * multiple)
    return X[:, :keep], Y[:, :keep], loss_mask[:, :keep]


def count_steps(plan):
    """-> (micro-batches per epoch, optimizer steps) of a run with this plan (see StepBatches.plan).

    DistributedSampler pads the data so every process gets ceil(samples / world_size) samples.
    Example: 10 samples, 1 process, batch_size 4, accumulation_steps 2, 2 epochs -> 3 micro-batches
    an epoch (4+4+2 samples), 6 in all -> 3 optimizer steps.
    """
    per_rank = math.ceil(plan["samples"] / plan["world_size"])
    batches_per_epoch = math.ceil(per_rank / plan["batch_size"])
    return batches_per_epoch, math.ceil(plan["epochs"] * batches_per_epoch / plan["accumulation_steps"])


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
# Validation: the loss on samples the run never trains on. Training loss alone cannot show
# over-fitting (it keeps falling when the model starts memorising); held-out loss turns up then.


class Validation:
    """The held-out batches, and when to measure them: every `interval` optimizer steps, before the first
    step and after the last.

    Measuring must not change the run: the model is put in eval mode (no dropout, so no random numbers
    drawn), the batches come in a fixed order from a loader with its own generator (a DataLoader without
    one draws a seed from the global RNG), and training mode is restored. A run with validation therefore
    trains exactly the weights of one without, and resumes bit-exactly (tests/test_training.py).
    Under DDP each process measures every world_size-th sample and the sums are added up.
    """

    def __init__(self, dataset, batch_size, interval, total_steps, rt, also=None):
        self.interval, self.total_steps, self.rt = interval, total_steps, rt
        # {"val_loss": loader, "val_also_loss": loader}: the held-out set, and --val_also's if given
        self.loaders = {}
        for name, data in (("val_loss", dataset), ("val_also_loss", also)):
            if data is not None:
                mine = list(range(rt.rank, len(data), rt.world_size))  # no padding: each sample counted once
                self.loaders[name] = DataLoader(Subset(data, mine), batch_size=batch_size, collate_fn=collate_trimmed,
                                                generator=torch.Generator().manual_seed(0))

    def due(self, done) -> bool:
        """Is a validation loss due after `done` optimizer steps?"""
        return bool(self.loaders) and (done % self.interval == 0 or done == self.total_steps)

    def loss(self, model) -> dict:
        """{"val_loss": ..., "val_also_loss": ...}: the mean loss on each held-out set (see _mean_loss)."""
        return {name: self._mean_loss(model, loader) for name, loader in self.loaders.items()}

    @torch.no_grad()
    def _mean_loss(self, model, loader) -> float:
        """Mean cross-entropy over every trained (loss_mask = 1) token of the held-out samples.
        model: the bare model (not the DDP wrapper, whose forward would take part in its collectives)."""
        was_training = model.training
        model.eval()
        sums = torch.zeros(2, device=self.rt.device)  # (summed loss, tokens)
        for X, Y, loss_mask in loader:
            X, Y, loss_mask = (t.to(self.rt.device) for t in (X, Y, loss_mask))
            with self.rt.autocast():
                logits = model(X).logits  # (B, T, vocab_size)
            per_token = F.cross_entropy(logits.float().transpose(1, 2), Y, reduction="none")  # (B, T)
            sums += torch.stack([(per_token * loss_mask).sum(), loss_mask.sum().float()])
        model.train(was_training)
        if self.rt.ddp:
            dist.all_reduce(sums)
        loss, tokens = sums.tolist()
        if tokens == 0:  # 0 / 0 would read as a perfect score
            raise UserError("the validation samples have no trained token within --max_seq_len (every reply is cut "
                            "off): raise --max_seq_len, or give other --val_data")
        return loss / tokens


# ------------------------------------------------------------------------------------------------
# Checkpoints for --resume. The deliverable weights are saved by each script (save_model / save_lora);
# the resume file next to them holds everything else a run needs to continue exactly.


def file_sha256(path):
    """sha256 of a file's bytes, read 16 MiB at a time: 'sha256:3f2a9c0d1b7e4a55' (first 16 hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def lora_settings(model):
    """The adapters' rank, alpha, scaling, init, dropout and target Linears, or None for a model without LoRA.
    e.g. {"rank": 16, "alpha": 16.0, "scaling": "standard", "init": "standard", "dropout": 0.0, "targets": ["wo", "wq"]}"""
    layers = {name.rsplit(".", 1)[-1]: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    if not layers:
        return None
    first = next(iter(layers.values()))
    return {"rank": first.rank, "alpha": float(first.alpha), "scaling": first.scaling, "init": first.init,
            "dropout": getattr(first.dropout, "p", 0.0), "targets": sorted(layers)}


def run_plan(model, data, rt, data_identity, max_seq_len, base=None):
    """Everything a --resume must find unchanged, saved in the resume file and compared on --resume.

    A change to any of these would either crash the resume (another model shape, LoRA rank, or a
    GradScaler state that float16 has and bfloat16 lacks) or silently continue a different run
    (other data or held-out split, another window, another frozen base), so the resume is refused,
    naming the setting.
    data_identity: load_data's third value (the data's and the validation set's identity).
    base: the file LoRA adapts (its frozen weights are not in the resume file, so it must be the same
    file again); full SFT restores every weight from the resume file and passes none.
    The learning rate, clipping and intervals may change: that is how a diverged run is continued.
    """
    return {
        **data.plan,  # samples, batch_size, accumulation_steps, epochs, seed, world_size: the data order
        **data_identity,
        "model": model.config.to_dict(),
        "lora": lora_settings(model),
        "max_seq_len": max_seq_len,
        "dtype": str(rt.autocast_dtype or torch.float32).removeprefix("torch."),
        "base": file_sha256(base) if base is not None else None,
    }


def plan_differences(then, now, prefix=""):
    """The settings that differ between a saved plan and this run's, one 'name=then then, now now' each.

    plan_differences({"batch_size": 8, "model": {"dim": 64}}, {"batch_size": 4, "model": {"dim": 32}})
      -> ['batch_size=8 then, 4 now', 'model.dim=64 then, 32 now']
    """
    changed = []
    for key in list(now) + [k for k in then if k not in now]:
        old, new = then.get(key, "unrecorded"), now.get(key, "unrecorded")
        if isinstance(old, dict) and isinstance(new, dict):
            changed += plan_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            changed.append(f"{prefix}{key}={old} then, {new} now")
    return changed


def _rng_state(device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_resume(path, model, optimizer, scaler, step, plan, rt):
    """Write the resume state after `step` optimizer steps, atomically. Called on every rank
    (each rank's RNG state is gathered); rank 0 writes.

    Only the trainable parameters are stored (for LoRA: the adapters alone; the frozen base comes
    from --base again), with the optimizer's moments, the loss scaler, the step (which fixes the data
    position, see StepBatches) and the run's plan (run_plan), which a --resume must match.
    """
    rng = rt.gather(_rng_state(rt.device))
    if rt.is_main:
        state = {
            "step": step,
            "plan": plan,
            "trainable": {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad},
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng,
        }
        atomic_save(state, path)


def read_resume(path) -> dict:
    """A resume file's contents, or UserError if it cannot be one (truncated, or another kind of file)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling, zip and I/O errors alike: the file is unusable either way
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}); "
                            "delete it to start over") from None
    keys = ("step", "plan", "trainable", "optimizer", "scaler", "rng")
    plan_keys = ("samples", "batch_size", "accumulation_steps", "epochs", "world_size")  # what count_steps reads
    if not (isinstance(state, dict) and all(k in state for k in keys) and isinstance(state["plan"], dict)
            and all(k in state["plan"] for k in plan_keys)):
        raise UserError(f"{path} is not a resume file of these scripts (it lacks {', '.join(keys)} "
                            "or its plan); delete it to start over")
    return state


def check_no_unfinished_run(path, resuming):
    """At a fresh start (no --resume), refuse to overwrite the resume file of an unfinished run.

    A finished run removes its resume file (remove_resume), so one that is still there belongs to a
    run that was interrupted: starting afresh would overwrite its progress at the first save. (A file
    whose step is already the last, left by a kill just before its removal, is finished: no refusal.)
    """
    if resuming or not os.path.exists(path):
        return
    state = read_resume(path)
    if state["step"] < count_steps(state["plan"])[1]:
        raise UserError(f"{path} holds an unfinished run: pass --resume to continue it, "
                            "or delete that file to start over")


def load_resume(path, model, optimizer, scaler, plan, rt) -> int:
    """Restore what save_resume wrote into model/optimizer/scaler/RNG; return the step to continue from.

    Everything is checked before anything is loaded: the plan (run_plan) must be this run's, and the
    saved tensors must be exactly the parameters this run trains, with the same shapes.
    """
    if not os.path.isfile(path):
        raise UserError(f"--resume: no resume state at {path} (the run saves one every --save_interval steps); "
                            "run without --resume to start afresh")
    state = read_resume(path)
    changed = plan_differences(state["plan"], plan)
    if changed:
        raise UserError(f"--resume: {path} belongs to a run with different settings ({'; '.join(changed)}); "
                            "resume with the same flags, data and number of processes, or start afresh without --resume")
    total = count_steps(plan)[1]
    if state["step"] >= total:
        raise UserError(f"--resume: {path} is from a run that finished all its {total} steps; "
                            "run without --resume to start afresh")
    trainable = {name: p.shape for name, p in model.named_parameters() if p.requires_grad}
    saved = {name: t.shape for name, t in state["trainable"].items()}
    if saved != trainable:
        raise UserError(f"--resume: {path} holds other parameters (or shapes) than this run trains; "
                            "was it made by another script or with other --lora_* flags?")
    model.load_state_dict(state["trainable"], strict=False)
    # The optimizer's state brings back each group's saved settings too; keep this run's lr_scale
    # (LoRA+'s ratio), like its learning rate: both may change when a diverged run is continued.
    scales = [group["lr_scale"] for group in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, scale in zip(optimizer.param_groups, scales):
        group["lr_scale"] = scale
    scaler.load_state_dict(state["scaler"])
    rng = state["rng"][rt.rank]
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and rt.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], rt.device)
    return state["step"]


def remove_resume(path, rt):
    """The run finished: its resume file has nothing left to continue, so rank 0 deletes it. A later
    fresh start in the same --out_dir (rerunning a finished stage) then starts without a question."""
    if rt.is_main and os.path.exists(path):
        os.remove(path)


# ------------------------------------------------------------------------------------------------
# Progress: a bar for people, a JSONL log for programs, and the NaN/inf guard.


class Progress:
    """Collects losses on the device and reads them only at log and save steps.

    Calling loss.item() every micro-step would make the CPU wait for the GPU each time; instead the
    losses are summed as tensors and read once per --log_interval. A NaN or inf loss (or gradient
    norm) is caught at the next read, and always before a checkpoint is written, so the last good
    checkpoint is never overwritten with broken weights.

    The metrics JSONL gets one line per log step, {"step", "epoch", "loss", "lr", "grad_norm",
    "tokens_per_s", "time"} (+ "aux_loss" for a mixture-of-experts model: "loss" is the task's loss
    alone, the load-balancing loss beside it), and one per validation, {"step", "val_loss", "time"}.
    """

    def __init__(self, metrics_path, total_steps, start_step, rt, resume=False, overflow_skips=False, moe=False):
        self.metrics_path, self.rt, self.moe = metrics_path, rt, moe
        # With float16 loss scaling an overflowing step is skipped by the scaler: no failure.
        self.overflow_skips = overflow_skips
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not rt.is_main, unit="step", dynamic_ncols=True)
        # A fresh run starts a fresh log; a resumed one keeps the lines up to its checkpoint.
        kept = [r for r in read_metrics(metrics_path) if r["step"] <= start_step] if resume else []
        self.last_loss = next((r["loss"] for r in reversed(kept) if "loss" in r), None)
        self.last_val_loss = next((r["val_loss"] for r in reversed(kept) if "val_loss" in r), None)
        if rt.is_main:
            atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        self._reset()

    def _reset(self):
        self.loss_sum = torch.zeros((), device=self.rt.device)
        self.aux_loss_sum = torch.zeros((), device=self.rt.device)
        self.grad_norm_sum = torch.zeros((), device=self.rt.device)
        self.micro_steps = self.steps = self.tokens = 0
        self.since = time.perf_counter()

    def add(self, loss, aux_loss, tokens):
        """One micro-batch's (detached) task loss, MoE load-balancing loss (0 for a dense model) and
        number of tokens. No GPU sync."""
        self.loss_sum += loss
        self.aux_loss_sum += aux_loss
        self.micro_steps += 1
        self.tokens += tokens

    def step(self, grad_norm):
        """One optimizer step done, with its (pre-clipping) gradient norm. No GPU sync."""
        if self.overflow_skips:
            grad_norm = torch.nan_to_num(grad_norm, nan=0.0, posinf=0.0)
        self.grad_norm_sum += grad_norm
        self.steps += 1
        self.bar.update(1)

    def _sums(self):
        """(loss sum, grad-norm sum, aux-loss sum) over all ranks: one sync, and every rank reaches the same verdict."""
        sums = torch.stack([self.loss_sum, self.grad_norm_sum, self.aux_loss_sum]).float()
        if self.rt.ddp:
            dist.all_reduce(sums)
        return sums.tolist()

    def check_finite(self, step, sums=None):
        """Raise UserError if any loss or gradient norm since the last log line was NaN or inf."""
        loss_sum, grad_norm_sum, aux_loss_sum = sums or self._sums()
        loss_sum += aux_loss_sum  # the loss that was trained on
        if not (math.isfinite(loss_sum) and math.isfinite(grad_norm_sum)):
            what = "loss" if not math.isfinite(loss_sum) else "gradient norm"
            raise UserError(f"the {what} became {loss_sum if what == 'loss' else grad_norm_sum} by step {step}; "
                            "stopped without saving, so the last good checkpoint is kept. Lower --learning_rate "
                            "(or --grad_clip) and continue from it with --resume")

    def _write(self, record):
        if self.rt.is_main:
            try:
                with open(self.metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:  # a full disk: stop with one line; the checkpoints are written atomically
                raise WriteError(f"cannot write {self.metrics_path}: {e.strerror or e}; the last checkpoint "
                                 "is intact, continue with --resume once there is room", e) from None

    def log(self, step, epoch, lr):
        """Read the sums (one sync), check them, write a metrics line and refresh the bar."""
        loss_sum, grad_norm_sum, aux_loss_sum = sums = self._sums()
        self.check_finite(step, sums)
        seconds = time.perf_counter() - self.since
        record = {
            "step": step,
            "epoch": epoch,
            "loss": loss_sum / self.rt.world_size / max(1, self.micro_steps),  # mean over micro-batches and ranks
            "lr": lr,
            "grad_norm": grad_norm_sum / self.rt.world_size / max(1, self.steps),
            "tokens_per_s": self.tokens * self.rt.world_size / max(seconds, 1e-9),
            "time": round(time.time(), 3),
        }
        if self.moe:
            record["aux_loss"] = aux_loss_sum / self.rt.world_size / max(1, self.micro_steps)
        self.last_loss = record["loss"]
        self._write(record)
        self._show()
        self._reset()
        return record

    def log_validation(self, step, losses: dict):
        """Write a validation line ({"step", "val_loss"[, "val_also_loss"], "time"}) and show the
        held-out loss beside the training loss on the bar."""
        self.last_val_loss = losses.get("val_loss")
        self._write({"step": step, **losses, "time": round(time.time(), 3)})
        self._show()

    def _show(self):
        if self.rt.is_main:
            shown = {"loss": self.last_loss, "val": self.last_val_loss}
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items() if v is not None})

    def summary(self) -> str:
        """'final loss 0.0512, validation loss 0.0634': the run's last values, for its closing line."""
        text = f"final loss {self.last_loss:.4f}"
        return text + (f", validation loss {self.last_val_loss:.4f}" if self.last_val_loss is not None else "")

    def close(self, svg_path, title):
        """Close the bar and draw the loss curves of the whole run (resumed parts included)."""
        self.bar.close()
        if self.rt.is_main:
            write_loss_svg(read_metrics(self.metrics_path), svg_path, title)


def read_metrics(path) -> list:
    """The records of a metrics JSONL file ([] if there is none). A last line cut short by a kill
    in mid-write is skipped."""
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def write_loss_svg(records, path, title):
    """Training and validation loss against the optimizer step, from a run's metrics records, as one SVG."""
    series = {"training": [(r["step"], r["loss"]) for r in records if "loss" in r]}
    for key, name in (("val_loss", "validation"), ("val_also_loss", "validation (--val_also)")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            series[name] = points
    line_chart(series, path, title, x_label="optimizer step", y_label="loss")
