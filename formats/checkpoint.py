"""Saving and loading model weights, MiniMind2-compatible.

A checkpoint here is what MiniMind2 writes: a plain `dict[str, Tensor]` saved with torch.save,
no config inside, so MiniMind2's own code loads ours with strict=True and ours loads theirs.
What a plain state dict cannot say -- the model's shape, which tokenizer, which stage made it --
goes into a JSON sidecar next to it: `out/pretrain_512.pth` + `out/pretrain_512.json`.

    save_model(model, "out/pretrain_512.pth", {"stage": "pretrain"})
    model, meta = load_model("out/pretrain_512.pth")      # config read from the sidecar
    model, meta = load_model("full_sft_512.pth", config=LMConfig(dim=512, n_layers=8))  # MiniMind2 file

Files are written atomically (plumbing/atomic.py: temporary file, fsync, rename), so a run killed
while saving never leaves a half-written checkpoint where the last good one was.

The weights and the sidecar are two files, each replaced atomically, one after the other: weights
first. A kill between the two renames leaves the NEW weights beside the OLD sidecar (or beside none,
on a first save). load_model then either
  - loads them: the old sidecar's config still fits, as it does when a run overwrites its own
    checkpoint (same shapes); only the meta (e.g. the step count) is one save behind (and so
    would be a config field that changes no shape, such as rope_theta, had it changed); or
  - refuses with a CheckpointError: no sidecar ("pass the model flags"), or shapes that do not fit.
It never loads weights into a model of the wrong shape, because load_weights checks every tensor.
Saving again (or the next periodic save) makes the pair consistent.

Reading is as careful: a file that is missing, unreadable, truncated or not a torch.save'd dict of
tensors is refused with a one-line error naming it (read_checkpoint), never a torch traceback.

Every weights file -- a model, a LoRA adapter -- may also be a .safetensors file (formats/safetensors.py),
the format Hugging Face tools exchange: read_checkpoint and save_weights choose the format by the
file's suffix, so every script that takes a --base, --ckpt or adapter path takes either.
"""

import hashlib
import json
import math
import os
import pickle
import re

import torch

from model.LMConfig import LMConfig
from plumbing.atomic import atomic_write, atomic_write_text
from plumbing import untrusted_json
from plumbing.errors import UserError
from model.model import MiniMindLM
from formats.safetensors import SafetensorsError, load_file, save_file


class CheckpointError(UserError):
    """A checkpoint that cannot be used: unreadable, wrong shapes, missing or unexpected tensors, no config."""


def atomic_save(obj, path):
    """torch.save(obj, path), atomically: readers see the old file or the new one, never half of one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def is_safetensors(path) -> bool:
    """Weights files are chosen by suffix: is_safetensors("out/a.safetensors") -> True, "out/a.pth" -> False."""
    return str(path).endswith(".safetensors")


# The entries of a weights dict that are not tensors: an adapter's "lora_config" (model_lora.save_lora).
# A .pth keeps them as they are; safetensors holds only tensors, so they travel as JSON text in its
# __metadata__ under the same name, and read_checkpoint puts them back. Other tools' metadata is not
# read as weights.
JSON_ENTRIES = ("lora_config",)


def save_weights(state: dict, path) -> None:
    """Write a weights dict ({name: Tensor}, plus JSON_ENTRIES) atomically: torch.save for a .pth,
    safetensors for a .safetensors file."""
    if not is_safetensors(path):
        atomic_save(state, path)
        return
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    extras = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    unknown = sorted(set(extras) - set(JSON_ENTRIES))
    if unknown:
        raise ValueError(f"save_weights: {unknown} are not tensors, and a .safetensors file carries only "
                         f"tensors and the entries {list(JSON_ENTRIES)}")
    save_file(tensors, path, metadata={k: json.dumps(v, ensure_ascii=False) for k, v in extras.items()})


def _unreadable_reason(error: Exception) -> str:
    """Why torch.load failed, in words a user can act on.

    torch's own messages are long, multi-line, and for weights_only failures advise loading with
    weights_only=False -- i.e. running whatever code the file contains -- which we never suggest.
    """
    if isinstance(error, OSError):
        return f"cannot read it ({error.strerror or error})"
    if isinstance(error, pickle.UnpicklingError):
        return ("it is not a plain dict of tensors (a pickle holding other Python objects, or not a "
                "torch.save file at all); only weights are loaded from files, never code")
    if isinstance(error, EOFError) or "zip archive" in str(error) or "central directory" in str(error):
        return "it is truncated or corrupted (e.g. cut short by a copy or a download); save or copy it again"
    if isinstance(error, (KeyError, ValueError)):  # what unpickling arbitrary bytes tends to raise
        return "it is not a torch.save file"
    first_line = (str(error).splitlines() or [""])[0][:200]  # e.g. a CUDA device asked for but absent
    if "weights_only" in first_line:
        first_line = ""
    return f"torch.load failed ({type(error).__name__}{': ' + first_line if first_line else ''})"


def read_checkpoint(path, device="cpu") -> dict:
    """torch.load(path, weights_only=True), which must give a dict; else a one-line CheckpointError.
    A .safetensors file is read with formats/safetensors.py instead (memory-mapped), its JSON metadata
    entries other than "format" (e.g. "lora_config") returned beside the tensors, as save_weights wrote them.

    Every file a user names goes through here (model checkpoints, LoRA adapters), so a wrong,
    truncated or unreadable file gives "PATH is not a usable checkpoint: why", never a traceback.
    """
    path = str(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} not found")
    if is_safetensors(path):
        return _read_safetensors(path, device)
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises many types here; all mean "not usable"
        raise CheckpointError(f"{path} is not a usable checkpoint: {_unreadable_reason(e)}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a usable checkpoint: it holds a {type(obj).__name__}, "
                              "not a state dict (a dict of tensors)")
    return obj


def _read_safetensors(path: str, device) -> dict:
    """read_checkpoint for a .safetensors file."""
    try:
        tensors, metadata = load_file(path)
    except SafetensorsError as e:  # "PATH is not a valid safetensors file: why"
        raise CheckpointError(str(e)) from None
    obj = {k: v.to(device) for k, v in tensors.items()} if str(device) != "cpu" else dict(tensors)
    for key in JSON_ENTRIES:
        if key in metadata:
            try:
                obj[key] = untrusted_json.loads(metadata[key], f"{path}: its {key!r} metadata")
            except untrusted_json.JSONError as e:
                raise CheckpointError(str(e)) from None
    return obj


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


def weights_fingerprint(model) -> str:
    """'sha256:3f2a9c0d1b7e4a55': a digest of a model's own weights (each tensor's name, shape and
    float32 values, in name order; adapters' tensors left out), so that an adapter can record which
    base it was trained on and refuse another (model_lora.load_lora).

    The digest is of float32 values, as checkpoints store them. A model whose weights were cast for
    inference (MiniMindLM.cast_weights: bfloat16 rounds them) or quantized (formats/quantize.py: integer
    codes) keeps the digest of the float32 weights it was made from, since the rounded ones can no
    longer say it."""
    model = unwrap(model)
    state = {k: v for k, v in model.state_dict().items() if ".lora." not in k}
    if any(t.is_meta for t in state.values()):
        raise ValueError("the model is on the meta device: it has shapes but no weights to fingerprint")
    if any(t.dtype != torch.float32 for t in state.values()):
        if getattr(model, "float32_fingerprint", None) is None:
            raise ValueError("the model's weights are not float32 and it does not know the fingerprint of the "
                             "float32 weights they were cast from: load adapters before casting")
        return model.float32_fingerprint
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach()
        digest.update(f"{key}{tuple(t.shape)}".encode())
        digest.update(t.to("cpu", torch.float32).contiguous().numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def base_fingerprint(model):
    """weights_fingerprint(model), or None for a model that cannot say which float32 weights it holds
    (cast by hand, or on the meta device): adapters made on it then record no base, as MiniMind2's never do."""
    try:
        return weights_fingerprint(model)
    except ValueError:
        return None


def check_finite(tensors: dict, where: str) -> None:
    """Refuse weights holding NaN or infinity (a run that diverged and was saved anyway, a damaged
    file): a model with them answers garbage, or NaN, and nothing else would say why."""
    bad = [k for k, t in tensors.items() if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{where} holds NaN or infinite values in {len(bad)} tensor(s) ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}): the run that made it diverged, or the file is "
                              "damaged; use an earlier checkpoint")


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


def _heads_hint(state_dict: dict, config: LMConfig) -> str:
    """What wk's shape says about the heads, when it disagrees with the config -- and no more.

    wk is (n_kv_heads * head_dim, dim) = (dim * n_kv_heads / n_heads, dim): its shape fixes only the
    RATIO n_kv_heads / n_heads. Many head counts have that ratio and load without an error, yet only
    the ones the model was trained with give sensible answers (the heads split every vector into
    other pieces), so no particular count is suggested: the user must know it (this project's
    checkpoints record it in their sidecar).
    """
    wk = state_dict.get("layers.0.attention.wk.weight")
    if not (isinstance(wk, torch.Tensor) and wk.dim() == 2):
        return ""
    kv_rows, dim = wk.shape
    if kv_rows * config.n_heads == config.n_kv_heads * dim:
        return ""  # wk fits the config's heads (any mismatch is elsewhere)
    ratio = math.gcd(kv_rows, dim)
    return (f"its wk/wv are {tuple(wk.shape)}, i.e. n_kv_heads/n_heads = {kv_rows // ratio}/{dim // ratio}: "
            "pass the --n_heads and --n_kv_heads it was trained with (a plain .pth does not record them, and "
            "other counts with that ratio load but answer garbage)")


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def load_weights(model, state_dict: dict, where: str = "the checkpoint") -> None:
    """Load a state dict into model strictly, or raise CheckpointError saying exactly what differs
    (or that it holds NaN or infinite values: check_finite). `where` names it in the error.

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
        check_finite(state_dict, where)
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
    heads = _heads_hint(state_dict, model.config)
    if heads:
        parts.append(heads)
    if any(".lora." in k for k in unexpected):
        parts.append("it holds LoRA adapter tensors: load it with load_lora, or merge_lora + remove_lora before saving")
    raise CheckpointError(f"{where} does not fit the model: " + " | ".join(parts))


def sidecar_path(path) -> str:
    """out/pretrain_512.pth -> out/pretrain_512.json"""
    return os.path.splitext(str(path))[0] + ".json"


def save_model(model, path, meta: dict = None) -> None:
    """Write the weights to `path` (plain MiniMind2-style state dict; safetensors if `path` ends in
    .safetensors, with both tied keys as separate copies) and config + meta to the sidecar.

    meta: JSON-serialisable extras, e.g. {"tokenizer": "model/demo_tokenizer", "stage": "pretrain"}.
    """
    model = unwrap(model)
    lora_keys = [k for k in model.state_dict() if ".lora." in k]
    if lora_keys:
        # MiniMind2's strict load would reject the extra keys, and our load_model too.
        raise ValueError(f"save_model: the model still has LoRA adapters ({lora_keys[0]}, ...); to save the "
                         "adapted model call merge_lora(model) then remove_lora(model) first, "
                         "or save only the adapter with save_lora")
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
    save_weights(state_dict, path)
    sidecar = json.dumps({"config": model.config.to_dict(), **meta}, indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(sidecar_path(path), sidecar)


def read_sidecar(path) -> dict:
    """The sidecar's JSON object, or a one-line CheckpointError if it is not one (read as untrusted JSON:
    a file can come from anywhere, plumbing/untrusted_json.py)."""
    try:
        meta = untrusted_json.load_file(path)
    except untrusted_json.JSONError as e:
        raise CheckpointError(f"{path} is not a readable checkpoint sidecar ({e}); restore it, or delete it "
                              "and pass the model flags (--dim/--n_layers...)") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is not a checkpoint sidecar: expected a JSON object, found {type(meta).__name__}")
    return meta


def check_config_fits(state_dict: dict, config: LMConfig, where: str) -> None:
    """Refuse a config whose sizes the weights contradict, before a model of that config is built: a
    damaged or hand-edited sidecar claiming 10^9 layers would otherwise allocate them first."""
    hint = _flag_hint(clean_state_dict(state_dict), config)  # e.g. "--n_layers 3": the weights' sizes the config lacks
    if hint:
        raise CheckpointError(f"{where}: its sidecar's config does not describe its weights, which look like a model "
                              f"built with {hint}; restore the sidecar, or delete it and pass the model flags")


def load_model(path, config: LMConfig = None, device="cpu"):
    """Build a MiniMindLM and load `path` into it -> (model, meta): the weights alone.

    The config comes from the JSON sidecar unless given; a plain MiniMind2 file (no sidecar)
    needs `config`. meta is the sidecar without its "config" ({} when there is no sidecar).
    Scripts load through formats/loader.py's load_checkpoint, which calls this and adds the tokenizer
    the model was trained with, the shape flags' checks and an adapter.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found")
    meta = {}
    side = sidecar_path(path)
    if os.path.isfile(side):
        meta = read_sidecar(side)
        saved_config = meta.pop("config", None)
        if config is None and saved_config is not None:
            try:
                config = LMConfig.from_dict(saved_config)
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{side}: its config is not valid ({e})") from e
    state_dict = read_checkpoint(path, device)
    if config is None:
        flags = " ".join(f"--{k} {v}" for k, v in config_flags(clean_state_dict(state_dict)).items())
        raise CheckpointError(
            f"{path} has no sidecar {side} saying the model's shape; pass the model flags "
            f"(--dim/--n_layers...; from its shapes: {flags or 'unknown'})"
        )
    if os.path.isfile(side):  # the sidecar's config: checked against the weights before a model is built from it
        check_config_fits(state_dict, config, path)
    model = MiniMindLM(config).to(device)
    load_weights(model, state_dict, path)
    return model, meta
