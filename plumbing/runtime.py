"""Where a training run computes: its device, its precision and its place among DDP processes.

training.py's loop asks this module three things and nothing else: run the forward in the chosen
precision (`rt.autocast()`, `rt.grad_scaler()`), wrap the model for several processes (`wrap_model`),
and let DDP average gradients only at the last micro-batch of a step (`sync_gradients`).

    with runtime(device="auto", dtype="auto", seed=1337) as rt:   # under torchrun: one process per GPU
        rt.device, rt.autocast_dtype, rt.rank, rt.world_size, rt.is_main

What --device and --dtype mean is plumbing/device.py's to say, in one place for every script.
"""
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from plumbing.device import pick_device, pick_dtype


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

    What --dtype means on each device is plumbing.device.pick_dtype's to say (one place for every script).

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


