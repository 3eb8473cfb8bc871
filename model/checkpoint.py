"""Saving and loading model weights, MiniMind2-compatible.

A checkpoint here is what MiniMind2 writes: a plain `dict[str, Tensor]` saved with torch.save,
no config inside, so MiniMind2's own code loads ours with strict=True and ours loads theirs.
What a plain state dict cannot say -- the model's shape, which tokenizer, which stage made it --
goes into a JSON sidecar next to it: `out/pretrain_512.pth` + `out/pretrain_512.json`.

    save_model(model, "out/pretrain_512.pth", {"stage": "pretrain"})
    model, meta = load_model("out/pretrain_512.pth")      # config read from the sidecar
    model, meta = load_model("full_sft_512.pth", config=LMConfig(dim=512, n_layers=8))  # MiniMind2 file

Files are written atomically (temporary file, fsync, rename), so a run killed while saving never
leaves a half-written checkpoint where the last good one was.
"""

import json
import os
import re
import tempfile

import torch

from model.LMConfig import LMConfig
from model.model import MiniMindLM


class CheckpointError(Exception):
    """A checkpoint that does not fit: wrong shapes, missing or unexpected tensors, no config."""


def _atomic_write(path, write):
    """Call write(file) on a temporary file beside `path`, fsync it, then rename it to `path`.

    os.replace is atomic on one filesystem, hence the temporary file in the same directory.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    # mkstemp creates the file readable by its owner only; give it the permissions an ordinary
    # open() would (0666 less the umask), since checkpoints are meant to be shared.
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_save(obj, path):
    """torch.save(obj, path), atomically: readers see the old file or the new one, never half of one."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def clean_state_dict(state_dict: dict) -> dict:
    """Drop keys containing "mask" and remove "module." / "_orig_mod." path components.

    Older MiniMind saved a causal `mask` buffer; DDP wraps the model as `module`, torch.compile
    as `_orig_mod`, and both leak into state-dict keys.

    >>> list(clean_state_dict({"module._orig_mod.norm.weight": 1, "layers.0.attention.mask": 2}))
    ['norm.weight']
    """
    cleaned = {}
    for key, value in state_dict.items():
        if "mask" in key:
            continue
        key = ".".join(part for part in key.split(".") if part not in ("module", "_orig_mod"))
        cleaned[key] = value
    return cleaned


def unwrap(model):
    """The MiniMindLM inside a DDP (.module) and/or torch.compile (._orig_mod) wrapper."""
    while True:
        if isinstance(getattr(model, "module", None), torch.nn.Module):  # DistributedDataParallel
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def config_flags(state_dict: dict) -> dict:
    """What LMConfig fields a (cleaned) state dict's shapes imply, e.g. {"dim": 768, "n_layers": 16}.

    n_heads cannot be read off shapes (wq is dim x dim whatever the split), so it is not guessed.
    """
    flags = {}
    emb = state_dict.get("tok_embeddings.weight", state_dict.get("output.weight"))
    if isinstance(emb, torch.Tensor) and emb.dim() == 2:
        flags["vocab_size"], flags["dim"] = emb.shape
    layer_ids = {int(m.group(1)) for k in state_dict if (m := re.match(r"layers\.(\d+)\.", k))}
    if layer_ids:
        flags["n_layers"] = max(layer_ids) + 1
    w1 = state_dict.get("layers.0.feed_forward.w1.weight")
    if isinstance(w1, torch.Tensor):
        flags["hidden_dim"] = w1.shape[0]
    return flags


def _flag_hint(state_dict: dict, config: LMConfig) -> str:
    """ "--dim 768 --n_layers 16" for the fields where the file and `config` disagree."""
    implied = config_flags(state_dict)
    if "hidden_dim" in implied and "dim" in implied:
        # hidden_dim follows from dim by default; only mention it when it does not.
        m = config.multiple_of
        if m * ((int(8 * implied["dim"] / 3) + m - 1) // m) == implied["hidden_dim"]:
            del implied["hidden_dim"]
    return " ".join(f"--{k} {v}" for k, v in implied.items() if getattr(config, k) != v)


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def load_weights(model, state_dict: dict) -> None:
    """Load a state dict into model strictly, or raise CheckpointError saying exactly what differs.

    The dict is cleaned first (clean_state_dict). Tied embeddings: a file holding only one of
    tok_embeddings.weight / output.weight is fine, the other is the same tensor.
    """
    model = unwrap(model)
    state_dict = clean_state_dict(state_dict)
    tied = ("tok_embeddings.weight", "output.weight")
    for a, b in (tied, tied[::-1]):
        if a not in state_dict and b in state_dict:
            state_dict[a] = state_dict[b]

    expected = model.state_dict()
    problems = [
        f"{k}: model expects {_shape(expected[k])}, file has {_shape(v)}"
        for k, v in state_dict.items()
        if k in expected and (not isinstance(v, torch.Tensor) or v.shape != expected[k].shape)
    ]
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if not (problems or missing or unexpected):
        model.load_state_dict(state_dict, strict=True)
        return

    parts = []
    if problems:
        parts.append(f"{len(problems)} shape mismatch(es): " + "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else ""))
    if missing:
        parts.append(f"{len(missing)} missing: " + ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else ""))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: " + ", ".join(unexpected[:3]) + (", ..." if len(unexpected) > 3 else ""))
    hint = _flag_hint(state_dict, model.config)
    if hint:
        parts.append(f"the file looks like a model built with {hint}; pass those flags")
    if any(".lora." in k for k in unexpected):
        parts.append("it holds LoRA adapter tensors: load it with load_lora, or merge_lora + remove_lora before saving")
    raise CheckpointError("checkpoint does not fit the model: " + " | ".join(parts))


def sidecar_path(path) -> str:
    """out/pretrain_512.pth -> out/pretrain_512.json"""
    return os.path.splitext(str(path))[0] + ".json"


def save_model(model, path, meta: dict = None) -> None:
    """Write the weights to `path` (plain MiniMind2-style state dict) and config + meta to the sidecar.

    meta: JSON-serialisable extras, e.g. {"tokenizer": "model/demo_tokenizer", "stage": "pretrain"}.
    """
    model = unwrap(model)
    meta = dict(meta or {})
    if "config" in meta:
        raise ValueError("save_model: meta must not contain 'config' (the sidecar's config comes from the model)")
    # Tensors only, on the CPU, without wrapper prefixes. Tied weights stay one shared tensor
    # (torch.save stores a storage once), so the file is no bigger than the parameters.
    on_cpu = {}
    state_dict = {}
    for key, t in clean_state_dict(model.state_dict()).items():
        if t.data_ptr() not in on_cpu:
            on_cpu[t.data_ptr()] = t.detach().cpu()
        state_dict[key] = on_cpu[t.data_ptr()]
    atomic_save(state_dict, path)
    sidecar = json.dumps({"config": model.config.to_dict(), **meta}, indent=2, ensure_ascii=False) + "\n"
    _atomic_write(sidecar_path(path), lambda f: f.write(sidecar.encode("utf-8")))


def load_model(path, config: LMConfig = None, device="cpu"):
    """Build a MiniMindLM and load `path` into it -> (model, meta).

    The config comes from the JSON sidecar unless given; a plain MiniMind2 file (no sidecar)
    needs `config`. meta is the sidecar without its "config" ({} when there is no sidecar).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    meta = {}
    side = sidecar_path(path)
    if os.path.isfile(side):
        with open(side, encoding="utf-8") as f:
            meta = json.load(f)
        saved_config = meta.pop("config", None)
        if config is None and saved_config is not None:
            config = LMConfig.from_dict(saved_config)
    state_dict = torch.load(path, map_location=device, weights_only=True)
    if config is None:
        flags = " ".join(f"--{k} {v}" for k, v in config_flags(clean_state_dict(state_dict)).items())
        raise CheckpointError(
            f"{path} has no sidecar {side} saying the model's shape; pass the model flags "
            f"(--dim/--n_layers...; from its shapes: {flags or 'unknown'})"
        )
    model = MiniMindLM(config).to(device)
    load_weights(model, state_dict)
    return model, meta
