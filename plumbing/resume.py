"""--resume: an interrupted run continues bit-exactly from its last checkpoint.

The deliverable weights are saved by each stage (save_model / save_lora); the resume file beside
them holds everything else a run needs to continue exactly: the trainable parameters, the
optimizer's moments, the loss scaler, the step (which fixes the data position: training.StepBatches),
every process's RNG state, and the run's *plan* -- the settings a resume must find unchanged
(run_plan), compared setting by setting so a refusal names what changed.

    plan = run_plan(model, data, rt, data_identity, max_seq_len, base=...)
    start_step = load_resume(path, model, optimizer, scaler, plan, rt) if resuming else 0
    ... save_resume(path, model, optimizer, scaler, step, plan, rt) every --save_interval steps ...
    remove_resume(path, rt)                   # finished: nothing left to resume
"""
import hashlib
import math
import os

import torch

from formats.adapter_file import rank_and_pattern
from formats.checkpoint import atomic_save, unwrap
from plumbing.errors import UserError
from model.model_lora import lora_layers


def count_steps(plan):
    """-> (micro-batches per epoch, optimizer steps) of a run with this plan (see training.StepBatches.plan).

    DistributedSampler pads the data so every process gets ceil(samples / world_size) samples.
    Example: 10 samples, 1 process, batch_size 4, accumulation_steps 2, 2 epochs -> 3 micro-batches
    an epoch (4+4+2 samples), 6 in all -> 3 optimizer steps.
    """
    per_rank = math.ceil(plan["samples"] / plan["world_size"])
    batches_per_epoch = math.ceil(per_rank / plan["batch_size"])
    return batches_per_epoch, math.ceil(plan["epochs"] * batches_per_epoch / plan["accumulation_steps"])


def file_sha256(path):
    """sha256 of a file's bytes, read 16 MiB at a time: 'sha256:3f2a9c0d1b7e4a55' (first 16 hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def lora_settings(model):
    """The adapters' settings, or None for a model without LoRA: e.g. {"rank": 16, "alpha": 16.0,
    "scaling": "standard", "init": "standard", "dropout": 0.0, "targets": ["wo", "wq"]}, and "quantized_base"
    when the frozen base is quantized (train_lora.py --quantize_base)"""
    layers = {name.rsplit(".", 1)[-1]: m for name, m in lora_layers(model)}
    if not layers:
        return None
    first = next(iter(layers.values()))
    quantized = getattr(unwrap(model), "quantized", None)  # the frozen base's quantization (formats/quantize.py)
    rank, pattern = rank_and_pattern({name: m.rank for name, m in lora_layers(model)})  # as the file records them
    return {"rank": rank, "alpha": float(first.alpha), "scaling": first.scaling, "init": first.init,
            "dropout": getattr(first.dropout, "p", 0.0), "targets": sorted(layers),
            **({"quantized_base": quantized} if quantized else {}), **({"rank_pattern": pattern} if pattern else {})}


def run_plan(model, data, rt, data_identity, max_seq_len, frozen=None):
    """Everything a --resume must find unchanged, saved in the resume file and compared on --resume.

    A change to any of these would either crash the resume (another model shape, LoRA rank, or a
    GradScaler state that float16 has and bfloat16 lacks) or silently continue a different run
    (other data or held-out split, another window, another frozen base), so the resume is refused,
    naming the setting.
    data_identity: training.load_data's third value (the data's and the validation set's identity).
    frozen: {name: path} of files the run reads but does not save, e.g. {"base": the checkpoint LoRA
    adapts} (its frozen weights are not in the resume file, so it must be the same file again); each
    is recorded by its bytes' digest. Full SFT restores every weight from the resume file and passes none.
    The learning rate, clipping and intervals may change: that is how a diverged run is continued.
    """
    return {
        **data.plan,  # samples, batch_size, accumulation_steps, epochs, seed, world_size: the data order
        **data_identity,
        "model": model.config.to_dict(),
        "lora": lora_settings(model),
        "max_seq_len": max_seq_len,
        "dtype": str(rt.autocast_dtype or torch.float32).removeprefix("torch."),
        **{name: file_sha256(path) for name, path in (frozen or {}).items()},
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


