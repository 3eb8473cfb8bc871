"""The shared machinery of the three training scripts, written once.

train_pretrain.py, train_full_sft.py and train_lora.py each keep their own training loop in plain
sight; everything that loop leans on, and that would otherwise be copied three times, lives here:

    errors and exit codes   TrainingError, run_main (user errors -> one line on stderr)
    flags                   add_common_args, add_model_args, check_args, model_config
    where things go         OutputPaths, load_base, sidecar_meta (paths that resolve from any directory)
    the machine             Runtime, runtime(): device, autocast dtype, DDP, rank-0 printing
    the data                load_dataset, StepBatches: shuffled micro-batches grouped into optimizer steps
    optimisation            make_optimizer, get_lr, set_lr, masked_cross_entropy, wrap_model, sync_gradients
    checkpoints             run_plan, save_resume, load_resume, remove_resume (model, optimizer, step,
                            data position, RNG, and the settings a resume must find unchanged)
    progress                Progress (tqdm bar, metrics JSONL, NaN/inf guard), write_loss_svg

Each script's loop, in execution order:

    for step, epoch, micro_batches in data.steps(start_step):
        set lr -> for each micro-batch: forward, masked loss, backward -> clip -> step -> log -> save
"""

import hashlib
import json
import math
import os
import re
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from itertools import islice

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, default_collate
from tqdm import tqdm

from model.atomic import atomic_write_text
from model.checkpoint import CheckpointError, atomic_save, load_model, sidecar_path
from model.LMConfig import LMConfig
from model.model_lora import LoRALinear
from model.tokenizer import Tokenizer


# ------------------------------------------------------------------------------------------------
# Errors: a user's mistake ends the run with one line on stderr, not a traceback.


class TrainingError(Exception):
    """A problem the user can fix (a missing file, a bad flag); the message says how."""


# CheckpointError: a file that does not fit the model. ValueError: a bad value caught by LMConfig,
# apply_lora or the dataset (its DataError "FILE:LINE: problem" is a ValueError). FileNotFoundError:
# a tokenizer or data file that is not there. All carry messages written for the user.
USER_ERRORS = (TrainingError, CheckpointError, ValueError, FileNotFoundError)


def run_main(main, argv=None) -> int:
    """Run a script's main(argv) and turn a user error into `error: ...` on stderr plus exit code 1.

    Ctrl-C exits with 130 and a hint: checkpoints are written atomically, so the last one is intact.
    Under torchrun only rank 0 reports (every rank hits the same error; N copies would be noise).
    """
    is_main = int(os.environ.get("RANK", "0")) == 0
    try:
        main(argv)
        return 0
    except USER_ERRORS as e:
        if is_main:
            print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if is_main:
            print("\ninterrupted: the last checkpoint is intact; add --resume to continue from it", file=sys.stderr)
        return 130


# ------------------------------------------------------------------------------------------------
# Flags: MiniMind2's names; each script passes the defaults that suit its stage.


def add_common_args(parser, *, data_path, epochs, batch_size, learning_rate, warmup_iters, save_interval):
    """The flags every stage shares. Defaults that differ per stage are passed in by the script."""
    p = parser
    p.add_argument("--out_dir", default="out", help="directory for checkpoints, metrics and loss curves (default: %(default)s)")
    p.add_argument("--data_path", default=data_path, help="training data, jsonl (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=epochs, help="passes over the data (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=batch_size, help="sequences per micro-batch, per process (default: %(default)s)")
    p.add_argument("--learning_rate", type=float, default=learning_rate, help="peak learning rate, reached after warmup (default: %(default)s)")
    p.add_argument("--warmup_iters", type=int, default=warmup_iters,
                   help="optimizer steps of linear warmup from ~0 to --learning_rate before the cosine decay (default: %(default)s)")
    p.add_argument("--accumulation_steps", type=int, default=1,
                   help="micro-batches whose gradients are summed into one optimizer step; "
                        "effective batch = batch_size x accumulation_steps x processes (default: %(default)s)")
    p.add_argument("--grad_clip", type=float, default=1.0, help="clip the gradient norm to this; inf disables clipping (default: %(default)s)")
    # The training window, not LMConfig.max_seq_len (the RoPE table size, 8192 as in MiniMind2, which
    # only bounds how long a sequence the model can ever read): MiniMind2 gives both the same name.
    p.add_argument("--max_seq_len", type=int, default=256, help="tokens per training sequence (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:1, mps (default: %(default)s)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="autocast dtype on CUDA (float16 adds a GradScaler); CPU and MPS always train in float32 (default: %(default)s)")
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

    from_checkpoint=False (pretraining): they define the new model, with the demo size as default.
    from_checkpoint=True (SFT, LoRA): the base checkpoint's .json sidecar defines the model; the flags
    are needed only for a plain MiniMind2 .pth without one, and --dim names the default base file.
    """
    p = parser
    if not from_checkpoint:
        p.add_argument("--dim", type=int, default=256, help="model width (default: %(default)s; MiniMind2-Small 512, MiniMind2 768)")
        p.add_argument("--n_layers", type=int, default=4, help="transformer blocks (default: %(default)s; MiniMind2-Small 8, MiniMind2 16)")
        p.add_argument("--n_heads", type=int, default=8, help="attention query heads (default: %(default)s)")
        p.add_argument("--n_kv_heads", type=int, default=2, help="key/value heads, grouped-query attention (default: %(default)s)")
        p.add_argument("--tokenizer", default="model/demo_tokenizer", help="tokenizer directory or tokenizer.json (default: %(default)s)")
        return
    side = "only for a plain MiniMind2 .pth without a .json sidecar, whose shape the sidecar would give"
    p.add_argument("--dim", type=int, default=256,
                   help="model width: picks the default --base file; for a plain MiniMind2 .pth also its shape (default: %(default)s)")
    p.add_argument("--n_layers", type=int, default=None, help=f"transformer blocks; {side} (MiniMind2-Small 8, MiniMind2 16)")
    p.add_argument("--n_heads", type=int, default=None, help=f"attention query heads; {side} (MiniMind2: 8)")
    p.add_argument("--n_kv_heads", type=int, default=None, help=f"key/value heads; {side} (MiniMind2: 2)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory or tokenizer.json (default: the one recorded in the base checkpoint's sidecar; "
                        "required for a plain MiniMind2 .pth)")


def check_args(args):
    """Reject values that would fail later and obscurely (or silently train nothing)."""
    positive = ["epochs", "batch_size", "accumulation_steps", "log_interval", "save_interval"]
    for name in positive:
        if getattr(args, name) < 1:
            raise TrainingError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.max_seq_len < 2:
        raise TrainingError("--max_seq_len must be at least 2 (inputs are tokens[:-1], targets tokens[1:])")
    if not args.learning_rate > 0:
        raise TrainingError(f"--learning_rate must be positive, got {args.learning_rate}")
    if args.warmup_iters < 0:
        raise TrainingError(f"--warmup_iters must be 0 or more, got {args.warmup_iters}")
    if not args.grad_clip > 0:
        raise TrainingError(f"--grad_clip must be positive (inf disables clipping), got {args.grad_clip}")


def check_lora_name(name):
    """--lora_name becomes a file name under out/lora/, so it must be a plain name like lora_medical."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        raise TrainingError(f"--lora_name {name!r} must be a plain name such as lora_medical "
                            "(letters, digits, _ . -; no path separators): the adapter is saved as "
                            "OUT_DIR/lora/{lora_name}_{dim}.pth")


def model_config(args, vocab_size) -> LMConfig:
    """LMConfig from --dim/--n_layers/--n_heads/--n_kv_heads (flags left at None take MiniMind2's defaults)."""
    shape = {k: getattr(args, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads") if getattr(args, k) is not None}
    try:
        return LMConfig(**shape, vocab_size=vocab_size)
    except ValueError as e:
        raise TrainingError(f"{e} (check --dim/--n_heads/--n_kv_heads)") from None


# ------------------------------------------------------------------------------------------------
# Where a run reads and writes.


@dataclass
class OutputPaths:
    """The files one run writes. Example, OutputPaths.for_run("out", "pretrain_256"):
    weights out/pretrain_256.pth (+ .json sidecar), resume out/pretrain_256_resume.pth,
    metrics out/pretrain_256_metrics.jsonl, svg out/pretrain_256_loss.svg."""

    weights: str  # the deliverable: plain MiniMind2-style weights (or a LoRA adapter)
    resume: str  # everything --resume needs: trainable weights, optimizer, step, RNG
    metrics: str  # one JSON object per log line
    svg: str  # the loss curve, drawn at the end

    @classmethod
    def for_run(cls, out_dir, name, weights=None):
        stem = os.path.join(out_dir, name)
        return cls(weights or stem + ".pth", stem + "_resume.pth", stem + "_metrics.jsonl", stem + "_loss.svg")


@dataclass
class RunResult:
    """What a script's main() returns, for callers in the same process (tests, the demo runner)."""

    model: torch.nn.Module  # the trained model, unwrapped (for LoRA: with its adapters applied)
    final_loss: float  # mean loss over the last log interval (None if no step ran)
    weights: str  # where the weights (or the adapter) were saved


def repo_root():
    """The folder of this repository (where training.py lives)."""
    return os.path.dirname(os.path.abspath(__file__))


def path_for_sidecar(path):
    """How a sidecar records a file (the tokenizer, the base checkpoint) so that a later stage finds it
    from any working directory: relative to the repository root when it is inside the repository (so no
    path of this machine ends up in files people share), absolute otherwise.

    With the repository at /home/me/minimind, run from /home/me/minimind or from anywhere else:
      'model/demo_tokenizer' -> 'model/demo_tokenizer';  '/data/tok' -> '/data/tok'
    """
    full, root = os.path.abspath(path), repo_root()
    if full.startswith(root + os.sep):
        return os.path.relpath(full, root).replace(os.sep, "/")
    return full


def path_from_sidecar(recorded):
    """The inverse of path_for_sidecar: a relative path is relative to the repository root."""
    return recorded if os.path.isabs(recorded) else os.path.join(repo_root(), recorded)


def sidecar_meta(stage, tokenizer_path, base=None):
    """What a stage records beside its weights: {"tokenizer": ..., "stage": ..., "base": ...}, paths
    written with path_for_sidecar, so the next stage needs no --tokenizer flag, whatever directory it runs in."""
    meta = {"tokenizer": path_for_sidecar(tokenizer_path), "stage": stage}
    if base is not None:
        meta["base"] = path_for_sidecar(base)
    return meta


def load_base(path, make_command, args, device):
    """Load the checkpoint a stage starts from -> (model, tokenizer, tokenizer path).

    With a .json sidecar (this project's files) the config and tokenizer come from it; a plain
    MiniMind2 .pth needs --tokenizer and the shape flags (--dim/--n_layers...). A missing file is
    an error naming the command that makes it, e.g.
    "out/pretrain_256.pth not found: make it with `python train_pretrain.py --out_dir out --dim 256`".
    """
    if not os.path.isfile(path):
        how = f"make it with `{make_command}`" if args.base is None else "check --base"
        raise TrainingError(f"{path} not found: {how}")
    if os.path.isfile(sidecar_path(path)):
        model, meta = load_model(path, device=device)
        # Flags the user typed must agree with the file, or they would be silently ignored.
        # (--dim is not checked: it always has a value, as it names the default base file.)
        for k in ("n_layers", "n_heads", "n_kv_heads"):
            given, actual = getattr(args, k), getattr(model.config, k)
            if given is not None and given != actual:
                raise TrainingError(f"--{k} {given} disagrees with {path} ({k}={actual} in its sidecar); drop the flag")
        if args.tokenizer is None and meta.get("tokenizer") is None:
            raise TrainingError(f"{sidecar_path(path)} records no tokenizer; pass --tokenizer")
        tokenizer_path = args.tokenizer or path_from_sidecar(meta["tokenizer"])
        tokenizer = Tokenizer.load(tokenizer_path)
    else:
        if args.tokenizer is None:
            raise TrainingError(f"{path} has no .json sidecar: pass --tokenizer (the one the model was trained with) "
                                "and its shape (--dim/--n_layers...)")
        tokenizer_path = args.tokenizer
        tokenizer = Tokenizer.load(tokenizer_path)
        model, _ = load_model(path, config=model_config(args, vocab_size=tokenizer.vocab_size), device=device)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise TrainingError(f"tokenizer {tokenizer_path} has {tokenizer.vocab_size} tokens but {path} only "
                            f"{model.config.vocab_size} embeddings: pass the --tokenizer the model was trained with")
    return model, tokenizer, tokenizer_path


# ------------------------------------------------------------------------------------------------
# The machine: device, precision, processes.


def pick_device(name) -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; anything else is taken as given (and checked)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainingError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"--device {name}: CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TrainingError(f"--device {name}: MPS is not available here; use --device cpu")
    return device


@dataclass
class Runtime:
    """Where this process trains: its device, autocast dtype and place among DDP processes."""

    device: torch.device
    autocast_dtype: torch.dtype = None  # None: plain float32
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, writes files and draws the progress bar; the others only compute."""
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world_size > 1

    def __str__(self):
        """e.g. "cpu, float32, 1 process" or "cuda:0, bfloat16 autocast, 8 processes"."""
        precision = "float32" if self.autocast_dtype is None else f"{str(self.autocast_dtype)[6:]} autocast"
        return f"{self.device}, {precision}, {self.world_size} process{'es' if self.ddp else ''}"

    def print(self, *args):
        if self.is_main:
            print(*args, flush=True)

    def autocast(self):
        """Matmuls in bfloat16/float16 on CUDA (weights, optimizer and reductions stay float32)."""
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
def runtime(device="auto", dtype="bfloat16", seed=1337):
    """Set up this process: device, autocast dtype, DDP process group (under torchrun), seed.

    Under `torchrun --nproc_per_node N` each process reads RANK/LOCAL_RANK/WORLD_SIZE from the
    environment, takes GPU LOCAL_RANK on CUDA (nccl) or stays on the CPU (gloo). The process group
    is destroyed on the way out, error or not.
    """
    rank, local_rank, world_size = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    device = pick_device(device)
    autocast_dtype = None
    if device.type == "cuda" and dtype != "float32":
        autocast_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float16
        if autocast_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise TrainingError("this GPU has no bfloat16; use --dtype float16")
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
        yield Runtime(device, autocast_dtype, rank, world_size)
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
        model = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    return model


def sync_gradients(model, last):
    """DDP averages gradients across processes during every backward. Within one optimizer step
    only the last micro-batch needs that; the others just accumulate locally (no_sync)."""
    if isinstance(model, DistributedDataParallel) and not last:
        return model.no_sync()
    return nullcontext()


# ------------------------------------------------------------------------------------------------
# The data: micro-batches in a shuffled order fixed by (seed, epoch), grouped into optimizer steps.


def load_dataset(dataset_class, args, tokenizer, rt):
    """The training set (PretrainDataset or SFTDataset) for --data_path, --max_seq_len, --skip_bad_lines
    and --cache_dir. Rank 0 builds the token cache first and the other ranks then open it
    (rt.rank0_first); only rank 0 prints the dataset's notes, so N processes do not print them N times."""
    return rt.rank0_first(lambda: dataset_class(args.data_path, tokenizer, max_length=args.max_seq_len,
                                                skip_bad=args.skip_bad_lines, cache_dir=args.cache_dir,
                                                verbose=rt.is_main))


def collate_trimmed(samples, multiple=64):
    """Stack samples into a batch (X, Y, loss_mask), then drop the columns after its last trained position.

    Every sample is padded to max_seq_len, yet the columns after the batch's last loss_mask = 1 change
    neither the loss (their mask is 0) nor any earlier position (attention is causal): they only cost
    time. SFT samples are short (the demo's median is 49 tokens of 255), so this skips most of the work.
    The cut is rounded up to a multiple of 64, so torch.compile meets only a few distinct shapes.
    Example: max_seq_len 256, last trained position 70 -> X is (B, 128) instead of (B, 255).
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
            raise TrainingError("the training data holds no usable samples; check --data_path")
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
    """The adapters' rank, alpha, dropout and target Linears, or None for a model without LoRA.
    e.g. {"rank": 16, "alpha": 16.0, "dropout": 0.0, "targets": ["wo", "wq"]}"""
    layers = {name.rsplit(".", 1)[-1]: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    if not layers:
        return None
    first = next(iter(layers.values()))
    return {"rank": first.rank, "alpha": float(first.alpha), "dropout": getattr(first.dropout, "p", 0.0),
            "targets": sorted(layers)}


def run_plan(args, model, data, rt, base=None):
    """Everything a --resume must find unchanged, saved in the resume file and compared on --resume.

    A change to any of these would either crash the resume (another model shape, LoRA rank, or a
    GradScaler state that float16 has and bfloat16 lacks) or silently continue a different run
    (other data, another window, another frozen base), so the resume is refused, naming the setting.
    base: the file LoRA adapts (its frozen weights are not in the resume file, so it must be the same
    file again); full SFT restores every weight from the resume file and passes none.
    The learning rate, clipping and intervals may change: that is how a diverged run is continued.
    """
    return {
        **data.plan,  # samples, batch_size, accumulation_steps, epochs, seed, world_size: the data order
        "model": model.config.to_dict(),
        "lora": lora_settings(model),
        "max_seq_len": args.max_seq_len,
        "dtype": str(rt.autocast_dtype or torch.float32).removeprefix("torch."),
        "data": data.dataset.cache_key,  # the data file's content, tokenizer and window, e.g. 'x.jsonl.sft.len256.3f2a...'
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
    """A resume file's contents, or TrainingError if it cannot be one (truncated, or another kind of file)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling, zip and I/O errors alike: the file is unusable either way
        raise TrainingError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}); "
                            "delete it to start over") from None
    keys = ("step", "plan", "trainable", "optimizer", "scaler", "rng")
    plan_keys = ("samples", "batch_size", "accumulation_steps", "epochs", "world_size")  # what count_steps reads
    if not (isinstance(state, dict) and all(k in state for k in keys) and isinstance(state["plan"], dict)
            and all(k in state["plan"] for k in plan_keys)):
        raise TrainingError(f"{path} is not a resume file of these scripts (it lacks {', '.join(keys)} "
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
        raise TrainingError(f"{path} holds an unfinished run: pass --resume to continue it, "
                            "or delete that file to start over")


def load_resume(path, model, optimizer, scaler, plan, rt) -> int:
    """Restore what save_resume wrote into model/optimizer/scaler/RNG; return the step to continue from.

    Everything is checked before anything is loaded: the plan (run_plan) must be this run's, and the
    saved tensors must be exactly the parameters this run trains, with the same shapes.
    """
    if not os.path.isfile(path):
        raise TrainingError(f"--resume: no resume state at {path} (the run saves one every --save_interval steps); "
                            "run without --resume to start afresh")
    state = read_resume(path)
    changed = plan_differences(state["plan"], plan)
    if changed:
        raise TrainingError(f"--resume: {path} belongs to a run with different settings ({'; '.join(changed)}); "
                            "resume with the same flags, data and number of processes, or start afresh without --resume")
    total = count_steps(plan)[1]
    if state["step"] >= total:
        raise TrainingError(f"--resume: {path} is from a run that finished all its {total} steps; "
                            "run without --resume to start afresh")
    trainable = {name: p.shape for name, p in model.named_parameters() if p.requires_grad}
    saved = {name: t.shape for name, t in state["trainable"].items()}
    if saved != trainable:
        raise TrainingError(f"--resume: {path} holds other parameters (or shapes) than this run trains; "
                            "was it made by another script or with other --lora_* flags?")
    model.load_state_dict(state["trainable"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
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
    """

    def __init__(self, metrics_path, total_steps, start_step, rt, resume=False, overflow_skips=False):
        self.metrics_path, self.rt = metrics_path, rt
        # With float16 loss scaling an overflowing step is skipped by the scaler: no failure.
        self.overflow_skips = overflow_skips
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not rt.is_main, unit="step", dynamic_ncols=True)
        # A fresh run starts a fresh log; a resumed one keeps the lines up to its checkpoint.
        kept = [r for r in read_metrics(metrics_path) if r["step"] <= start_step] if resume else []
        self.last_loss = kept[-1]["loss"] if kept else None
        if rt.is_main:
            atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        self._reset()

    def _reset(self):
        self.loss_sum = torch.zeros((), device=self.rt.device)
        self.grad_norm_sum = torch.zeros((), device=self.rt.device)
        self.micro_steps = self.steps = self.tokens = 0
        self.since = time.perf_counter()

    def add(self, loss, tokens):
        """One micro-batch's (detached) loss and its number of tokens. No GPU sync."""
        self.loss_sum += loss
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
        """(loss sum, grad-norm sum) over all ranks: one sync, and every rank reaches the same verdict."""
        sums = torch.stack([self.loss_sum, self.grad_norm_sum]).float()
        if self.rt.ddp:
            dist.all_reduce(sums)
        return sums.tolist()

    def check_finite(self, step, sums=None):
        """Raise TrainingError if any loss or gradient norm since the last log line was NaN or inf."""
        loss_sum, grad_norm_sum = sums or self._sums()
        if not (math.isfinite(loss_sum) and math.isfinite(grad_norm_sum)):
            what = "loss" if not math.isfinite(loss_sum) else "gradient norm"
            raise TrainingError(f"the {what} became {loss_sum if what == 'loss' else grad_norm_sum} by step {step}; "
                                "stopped without saving, so the last good checkpoint is kept. Lower --learning_rate "
                                "(or --grad_clip) and continue from it with --resume")

    def log(self, step, epoch, lr):
        """Read the sums (one sync), check them, write a metrics line and refresh the bar."""
        loss_sum, grad_norm_sum = sums = self._sums()
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
        self.last_loss = record["loss"]
        if self.rt.is_main:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}")
        self._reset()
        return record

    def close(self, svg_path, title):
        """Close the bar and draw the loss curve of the whole run (resumed parts included)."""
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


def write_loss_svg(records, path, title, width=640, height=360):
    """Draw loss against step as an SVG line chart, by hand: no plotting library, ~30 lines of markup.

    records: [{"step": 10, "loss": 7.9}, {"step": 20, "loss": 6.1}, ...] (the metrics log).
    The plot area is mapped linearly: step -> x from left to right, loss -> y from bottom to top.
    """
    left, right, top, bottom = 64, 20, 36, 44  # margins, px: room for tick labels and the title
    points = [(r["step"], r["loss"]) for r in records if math.isfinite(r.get("loss", math.nan))]
    steps = [s for s, _ in points] or [0, 1]
    losses = [l for _, l in points] or [0, 1]
    s0, s1 = min(steps), max(steps)
    l0, l1 = min(losses), max(losses)
    if s1 == s0:
        s0, s1 = s0 - 1, s1 + 1
    if l1 == l0:
        l0, l1 = l0 - 0.5, l1 + 0.5
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(s):
        return left + (s - s0) / (s1 - s0) * plot_w

    def y(l):
        return top + (l1 - l) / (l1 - l0) * plot_h  # SVG's y grows downwards

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{_xml_escape(title)}</text>']
    for i in range(5):  # 5 ticks per axis, with light grid lines
        sv, lv = s0 + (s1 - s0) * i / 4, l0 + (l1 - l0) * i / 4
        svg.append(f'<line x1="{x(sv):.1f}" y1="{top}" x2="{x(sv):.1f}" y2="{top + plot_h}" stroke="#eee"/>')
        svg.append(f'<line x1="{left}" y1="{y(lv):.1f}" x2="{left + plot_w}" y2="{y(lv):.1f}" stroke="#eee"/>')
        svg.append(f'<text x="{x(sv):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{sv:.0f}</text>')
        svg.append(f'<text x="{left - 6}" y="{y(lv) + 4:.1f}" text-anchor="end">{lv:.2f}</text>')
    svg.append(f'<polyline fill="none" stroke="#888" points="{left},{top} {left},{top + plot_h} {left + plot_w},{top + plot_h}"/>')
    svg.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">optimizer step</text>')
    svg.append(f'<text x="14" y="{top + plot_h / 2}" text-anchor="middle" transform="rotate(-90 14 {top + plot_h / 2})">loss</text>')
    line = " ".join(f"{x(s):.1f},{y(l):.1f}" for s, l in points)
    svg.append(f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{line}"/>')
    svg.append("</svg>")
    atomic_write_text(path, "\n".join(svg) + "\n")


def _xml_escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
