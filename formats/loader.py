"""Where the pipeline's files live, and the one function every script loads a model with.

Every stage writes into one output folder (`--out_dir`, default `out/`), with MiniMind2's names:

    out/pretrain_128.pth      + .json sidecar     train_pretrain.py     checkpoint_path(out, "pretrain", 128)
    out/full_sft_128.pth      + .json sidecar     train_full_sft.py     checkpoint_path(out, "full_sft", 128)
    out/rlhf_128.pth          + .json sidecar     train_dpo.py          checkpoint_path(out, "rlhf", 128)
    out/lora/lora_medical_128.pth                 train_lora.py         adapter_path(out, "lora_medical", 128)
    out/full_sft_128_metrics.jsonl, _loss.svg, _resume.pth            run_files(...): a run's log, curve, resume state

and every script that reads a model -- the SFT and LoRA stages, evaluation and chat, the experiments,
and whatever comes later (a server, an exporter) -- calls `load_checkpoint`:

    loaded = load_checkpoint("out/full_sft_128.pth", adapter="out/lora/lora_medical_128.pth")
    loaded.model, loaded.tokenizer       # in eval mode; the tokenizer is the one it was trained with

This project's checkpoints carry a JSON sidecar (formats/checkpoint.py) that names their config and
tokenizer, so nothing else is needed. A plain MiniMind2 `.pth` has none: its shape comes from flags
(`shape={"dim": 512, "n_layers": 8}`) and its tokenizer must be named (`tokenizer=...`), as in
MiniMind2. Whatever is wrong -- a missing file, flags that contradict the sidecar, a tokenizer other
than the one the model was trained with -- is one UserError naming the fix.
"""
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from formats.checkpoint import (clean_state_dict, config_flags, load_model, read_checkpoint, read_sidecar,
                                sidecar_path, weights_fingerprint)
from model.LMConfig import LMConfig
from model.model import MiniMindLM  # noqa: F401  (the type load_checkpoint returns)
from model.lora_variants import load_lora_or_dora
from model.tokenizer import Tokenizer
from plumbing.device import DEVICE_HELP, DTYPES, INFERENCE_DTYPE_HELP, pick_device
from plumbing.errors import UserError
from speed.matvec import prepare_for_decoding

REPO_ROOT = Path(__file__).resolve().parent.parent  # the folder holding model/, dataset/, train_*.py
DEFAULT_DIM = 128  # the demo model's width, which names the files the scripts look for by default
#                    (out/full_sft_128.pth); MiniMind2-Small's is 512

# ------------------------------------------------------------------------------------------------
# Where files go.

# checkpoint prefix -> the script that writes it (MiniMind2's names: pretrain_512.pth, full_sft_512.pth, rlhf_512.pth)
STAGE_SCRIPTS = {"pretrain": "train_pretrain.py", "full_sft": "train_full_sft.py", "rlhf": "train_dpo.py"}
# --model_mode name (eval_model.py, the server) -> checkpoint prefix: MiniMind2's --model_mode chooses the stage so,
# by number (0 pretrain, 1 SFT, 2 RLHF, i.e. DPO); the names say the same
MODEL_MODES = {"pretrain": "pretrain", "sft": "full_sft", "rlhf": "rlhf", "0": "pretrain", "1": "full_sft", "2": "rlhf"}


def checkpoint_path(out_dir, stage: str, dim: int, use_moe: bool = False) -> str:
    """checkpoint_path("out", "full_sft", 128) -> 'out/full_sft_128.pth'; a mixture-of-experts model
    gets MiniMind2's '_moe' suffix: checkpoint_path("out", "full_sft", 640, use_moe=True) -> 'out/full_sft_640_moe.pth'"""
    return os.path.join(out_dir, f"{stage}_{dim}{'_moe' if use_moe else ''}.pth")


def find_checkpoint(out_dir, stage: str, dim: int = None, use_moe: bool = None) -> str:
    """The checkpoint of `stage` in out_dir: the one of width `dim` when given, else the only one there,
    so that a width given once (to train_pretrain.py) is never needed again.

    find_checkpoint("out", "full_sft")            -> 'out/full_sft_512.pth' when it is the only full_sft_*.pth
    find_checkpoint("out", "full_sft", dim=128)   -> 'out/full_sft_128.pth' (whether it exists or not)
    Several of them, and no --dim to choose: a UserError listing them. None: the path it would have at
    the demo's width, DEFAULT_DIM, which the loader then reports as missing with the command that makes it.
    use_moe: True/False keeps only mixture-of-experts (_moe) or dense files; None takes either.
    """
    if dim is not None:
        return checkpoint_path(out_dir, stage, dim, bool(use_moe))
    pattern = re.compile(rf"{re.escape(stage)}_(\d+)(_moe)?\.pth")
    found = sorted(p.name for p in Path(out_dir).glob(f"{stage}_*.pth")
                   if (m := pattern.fullmatch(p.name)) and (use_moe is None or bool(m[2]) == use_moe))
    if len(found) == 1:
        return os.path.join(out_dir, found[0])
    if len(found) > 1:
        raise UserError(f"{out_dir} holds several {stage} checkpoints ({', '.join(found)}): pick one with --dim "
                        "(and --use_moe for a _moe one)")
    return checkpoint_path(out_dir, stage, DEFAULT_DIM, bool(use_moe))


def check_adapter_name(name: str) -> str:
    """An adapter name becomes a file name (out/lora/{name}_{dim}.pth), so it must be a plain name:
    letters, digits, `_`, `.`, `-`, starting with a letter or digit, at most 100 characters; and not a
    stage's name, whose run files (out/pretrain_128_metrics.jsonl, ...) an adapter's would share."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name or ""):
        raise UserError(f"adapter name {name!r} must be a plain name such as lora_medical (letters, digits, _ . -, "
                        "at most 100 characters, no path separators): it is saved as OUT_DIR/lora/NAME_DIM.pth")
    if name in STAGE_SCRIPTS:
        raise UserError(f"adapter name {name!r} is a stage's name, whose files in OUT_DIR the adapter's run would "
                        "share; pick another, e.g. lora_medical")
    return name


def adapter_path(out_dir, lora_name: str, dim: int, use_moe: bool = False) -> str:
    """adapter_path("out", "lora_medical", 128) -> 'out/lora/lora_medical_128.pth'; an adapter for a
    mixture-of-experts model gets the checkpoints' '_moe' too, so it never lands on a dense model's
    of the same width: adapter_path("out", "lora_medical", 640, use_moe=True) -> 'out/lora/lora_medical_640_moe.pth'"""
    return os.path.join(out_dir, "lora", f"{check_adapter_name(lora_name)}_{dim}{'_moe' if use_moe else ''}.pth")


def list_adapters(out_dir, dim: int, use_moe: bool = False) -> list:
    """The names of the adapters for models of width `dim` (and kind) in out_dir/lora/, e.g.
    ['lora_identity', 'lora_medical']: exactly what adapter_path (and so --lora_name) takes."""
    folder = Path(out_dir) / "lora"
    suffix = f"_{dim}{'_moe' if use_moe else ''}.pth"
    return sorted(p.name[:-len(suffix)] for p in folder.glob(f"*{suffix}") if p.is_file())


@dataclass
class RunFiles:
    """The files one training run writes beside its weights, e.g. for out/full_sft_128.pth:
    out/full_sft_128_resume.pth, out/full_sft_128_metrics.jsonl, out/full_sft_128_loss.svg."""

    weights: str  # the deliverable: MiniMind2-style weights, or a LoRA adapter under lora/
    resume: str  # everything --resume needs: trainable weights, optimizer, step, RNG
    metrics: str  # one JSON object per log line (train and validation loss)
    svg: str  # the loss curves, drawn at the end


def run_files(out_dir, weights: str) -> RunFiles:
    """The run files of `weights`, kept in out_dir itself (an adapter's too, so out/lora/ holds only adapters)."""
    stem = os.path.join(out_dir, os.path.splitext(os.path.basename(weights))[0])
    return RunFiles(weights, stem + "_resume.pth", stem + "_metrics.jsonl", stem + "_loss.svg")


def repo_path(relative: str) -> str:
    """A file shipped with the repository, found from any working directory:
    repo_path("model/demo_tokenizer") -> '/where/you/cloned/minimind/model/demo_tokenizer'."""
    return str(REPO_ROOT / relative)


def path_for_sidecar(path) -> str:
    """How a sidecar records a file (the tokenizer, the base checkpoint) so that a later stage finds it
    from any working directory: relative to the repository when it is inside it (so no path of this
    machine ends up in files people share), absolute otherwise.

    With the repository at /home/me/minimind, run from there or from anywhere else:
      'model/demo_tokenizer' -> 'model/demo_tokenizer';  '/data/tok' -> '/data/tok'
    """
    full = os.path.realpath(path)  # realpath, as REPO_ROOT is resolved: a symlinked checkout is still inside
    if full.startswith(str(REPO_ROOT) + os.sep):
        return os.path.relpath(full, REPO_ROOT).replace(os.sep, "/")
    return full


def path_from_sidecar(recorded: str) -> str:
    """The inverse of path_for_sidecar: a relative path is relative to the repository."""
    return recorded if os.path.isabs(recorded) else str(REPO_ROOT / recorded)


def missing_checkpoint_message(path) -> str:
    """One line for a checkpoint that is not there, naming the command that makes it when the name says:
    'out/pretrain_128.pth not found: make it with `python train_pretrain.py --dim 128`'"""
    match = re.fullmatch(r"(pretrain|full_sft|rlhf)_(\d+)(_moe)?\.pth", os.path.basename(str(path)))
    if not match:
        return f"{path} not found (check the path)"
    out_dir = os.path.dirname(str(path)) or "."
    flags = f" --dim {match[2]}" + (" --use_moe" if match[3] else "") \
        + ("" if os.path.normpath(out_dir) == "out" else f" --out_dir {out_dir}")
    return f"{path} not found: make it with `python {STAGE_SCRIPTS[match[1]]}{flags}`"


def missing_adapter_message(out_dir, lora_name: str, dim: int, use_moe: bool = False) -> str:
    """One line for an adapter that is not there: the adapters that exist, and how to train this one."""
    existing = list_adapters(out_dir, dim, use_moe)
    folder = os.path.join(out_dir, "lora")
    have = f"adapters for dim {dim} in {folder}: {', '.join(existing)}" if existing else f"{folder} has no adapters for dim {dim}"
    out = "" if os.path.normpath(out_dir) == "out" else f" --out_dir {out_dir}"
    return (f"{adapter_path(out_dir, lora_name, dim, use_moe)} not found ({have}); train it with "
            f"`python train_lora.py --lora_name {lora_name} --data_path dataset/{lora_name}.jsonl --dim {dim}"
            f"{' --use_moe' if use_moe else ''}{out}`")


def checkpoint_meta(stage: str, tokenizer_path, tokenizer: Tokenizer, base=None) -> dict:
    """What a stage records in its sidecar besides the config: the stage, the tokenizer (where it is and
    its fingerprint), and the checkpoint it started from. e.g.
    {"stage": "full_sft", "tokenizer": "model/demo_tokenizer", "tokenizer_sha256": "3f2a...", "base": "out/pretrain_128.pth"}"""
    meta = {"stage": stage, "tokenizer": path_for_sidecar(tokenizer_path), "tokenizer_sha256": tokenizer.fingerprint()}
    if base is not None:
        meta["base"] = path_for_sidecar(base)
    return meta


# ------------------------------------------------------------------------------------------------
# The flags that say which checkpoint to load and, for a plain MiniMind2 .pth, its shape: the same in
# every script that loads a model (train_full_sft.py, train_lora.py, eval_model.py, the server, the converter).

SHAPE_FLAGS = ("dim", "n_layers", "n_heads", "n_kv_heads", "use_moe")


def add_shape_args(parser) -> None:
    """--dim/--n_layers/--n_heads/--n_kv_heads/--use_moe and --tokenizer for loading a checkpoint. All default to
    None (not given): a checkpoint with a .json sidecar knows its own shape and tokenizer, and a flag given
    must agree with it; a plain MiniMind2 .pth needs them. --dim and --use_moe also name the default file."""
    plain = "for a plain MiniMind2 .pth, whose shape a sidecar would give"
    p = parser
    p.add_argument("--dim", type=int, default=None,
                   help=f"model width: names the default checkpoint file (..._DIM.pth, DIM {DEFAULT_DIM} if not given); "
                        f"and {plain} (MiniMind2-Small 512, MiniMind2 768)")
    p.add_argument("--n_layers", type=int, default=None, help=f"transformer blocks, {plain} (MiniMind2-Small 8, MiniMind2 16)")
    p.add_argument("--n_heads", type=int, default=None, help=f"attention query heads, {plain} (MiniMind2: 8)")
    p.add_argument("--n_kv_heads", type=int, default=None, help=f"key/value heads, {plain} (MiniMind2: 2)")
    p.add_argument("--use_moe", action="store_true", default=None,
                   help=f"a mixture-of-experts model: names the default file (..._DIM_moe.pth); and {plain} (MiniMind2-MoE)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory or tokenizer.json (default: the one the checkpoint's sidecar records; "
                        "required for a plain MiniMind2 .pth)")


def add_inference_args(parser, lora_help: str) -> None:
    """The flags of the tools that load one checkpoint and its adapters to run them (eval_model.py, the
    server): which checkpoint (--out_dir, --model_mode, --ckpt, the shape flags above), which adapters
    (--lora_name, with `lora_help`; --allow_other_base) and where, in which precision (--device, --dtype)."""
    p = parser
    p.add_argument("--out_dir", default="out", help="where the checkpoints and lora/ adapters are (default: %(default)s)")
    p.add_argument("--model_mode", choices=sorted(MODEL_MODES), default="sft",
                   help="which stage's checkpoint: pretrain (or 0) -> OUT_DIR/pretrain_DIM.pth, sft (1) -> "
                        "OUT_DIR/full_sft_DIM.pth, rlhf (2, MiniMind2's numbers) -> OUT_DIR/rlhf_DIM.pth, the only one "
                        "there or --dim's (default: %(default)s)")
    p.add_argument("--ckpt", default=None, help="checkpoint file to load instead of the --model_mode one")
    p.add_argument("--lora_name", nargs="+", default=None, help=lora_help)
    p.add_argument("--allow_other_base", action="store_true",
                   help="load an adapter even if it was trained on another base model than this checkpoint (its file "
                        "records the base's weights; an adapter means something only on them)")
    add_shape_args(p)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--dtype", default="auto", choices=DTYPES, help=INFERENCE_DTYPE_HELP)


def shape_from_args(args) -> dict:
    """The shape flags as LMConfig fields, e.g. {"dim": 512, "n_layers": None, ...} (None: not given)."""
    return {name: getattr(args, name, None) for name in SHAPE_FLAGS}


# ------------------------------------------------------------------------------------------------
# Loading.


def load_tokenizer(path) -> Tokenizer:
    """Tokenizer.load, with a missing tokenizer turned into one UserError naming the flag. (A damaged,
    inconsistent or unsupported tokenizer.json is Tokenizer.load's own TokenizerError, a UserError too.)"""
    if not os.path.exists(path):
        raise UserError(f"tokenizer {path} not found: pass --tokenizer DIR (a folder holding tokenizer.json), "
                        "or make one with `python train_tokenizer.py`")
    try:
        return Tokenizer.load(path)
    except FileNotFoundError as e:  # a folder without a tokenizer.json
        raise UserError(str(e)) from None


@dataclass
class Loaded:
    """What load_checkpoint returns."""

    model: MiniMindLM  # in eval mode, on the requested device, with the adapter if one was given
    tokenizer: Tokenizer  # the one the model was trained with
    tokenizer_path: str  # where it was read from
    path: str  # the checkpoint file
    meta: dict = field(default_factory=dict)  # the sidecar without its config ({} for a plain MiniMind2 file)


def load_checkpoint(path, *, tokenizer=None, shape=None, max_seq_len=None, adapter=None, device="cpu",
                    dtype=torch.float32) -> Loaded:
    """Load a checkpoint, its tokenizer and optionally an adapter -> Loaded(model, tokenizer, ...).

    path:      a .pth written by this project (with its .json sidecar) or by MiniMind2 (without one).
    tokenizer: a tokenizer folder or tokenizer.json. Default: the one the sidecar records. Required for
               a plain MiniMind2 file. A tokenizer other than the one the checkpoint was trained with
               (another fingerprint, or another vocabulary size) is refused.
    shape:     LMConfig fields from the command line, e.g. {"dim": 512, "n_layers": 8}; None values are
               ignored. Required for a file without a sidecar; with a sidecar, given values must agree
               with it (a flag that would be silently ignored is an error instead).
    max_seq_len: the longest sequence the caller will feed it (--max_seq_len); more than the model's
               positions (config.max_seq_len, the RoPE table) is refused before the weights load.
    adapter:   a LoRA adapter file (or dict) to load onto the model (lora_variants.load_lora_or_dora: LoRA or DoRA).
    device:    where the model goes: a torch.device, or a --device name ('auto' = cuda, else mps, else cpu).
    dtype:     the weights' dtype in memory, for inference: float32, or bfloat16 (half the bytes read
               per decoded token; plumbing.device.pick_dtype says where it is worth it). Files are unchanged:
               read into float32 as always, then cast (MiniMindLM.cast_weights: the RoPE table stays float32).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise UserError(missing_checkpoint_message(path))
    shape = {k: v for k, v in (shape or {}).items() if v is not None}
    side = sidecar_path(path)
    if os.path.isfile(side):  # this project's checkpoint: the sidecar knows the config and the tokenizer
        meta = read_sidecar(side)
        config = _config_from_sidecar(meta, side, shape)
        tokenizer_path = tokenizer
        if tokenizer_path is None:
            if not meta.get("tokenizer"):
                raise UserError(f"{side} records no tokenizer: pass --tokenizer (the one the model was trained with)")
            tokenizer_path = path_from_sidecar(meta["tokenizer"])
        tok = load_tokenizer(tokenizer_path)
        _check_same_tokenizer(meta, tok, tokenizer_path, path)
    else:  # a plain MiniMind2 state dict: the flags say its shape, and its tokenizer must be named
        if tokenizer is None or not shape:
            state_dict = clean_state_dict(read_checkpoint(path))
            if state_dict and all(".lora." in key for key in state_dict if key != "lora_config"):
                raise UserError(f"{path} is a LoRA adapter, not a model: give its base model here, and the adapter "
                                "where adapters go (eval_model.py --lora_name, train_lora.py --init_lora, "
                                "convert_model.py --lora_path; adapter= in Python)")
            implied = config_flags(state_dict)
            flags = " ".join(f"--{k} {implied[k]}" for k in ("dim", "n_layers") if k in implied)
            if any(".experts." in key for key in state_dict):
                flags += " --use_moe"
            raise UserError(f"{path} has no .json sidecar (a MiniMind2 file?): pass its shape ({flags or '--dim/--n_layers'}) "
                            "and --tokenizer DIR (the tokenizer it was trained with)")
        tokenizer_path, tok = tokenizer, load_tokenizer(tokenizer)
        try:
            config = LMConfig(**shape, vocab_size=tok.vocab_size)
        except (TypeError, ValueError) as e:
            raise UserError(f"{e} (check the shape flags --dim/--n_layers/--n_heads/--n_kv_heads)") from None
    if tok.vocab_size != config.vocab_size:
        raise UserError(f"tokenizer {tokenizer_path} has {tok.vocab_size} tokens but {path} has {config.vocab_size} "
                        "embeddings: pass the --tokenizer the model was trained with")
    check_positions(max_seq_len, config, path)

    model, meta = load_model(path, config=config)  # the weights, checked tensor by tensor against the config
    if adapter is not None:
        load_lora_or_dora(model, adapter)
    if isinstance(device, str):  # a --device value: 'auto' means what it means everywhere (plumbing/device.py)
        device = pick_device(device)
    if dtype != torch.float32:  # rounded weights can no longer say which base they are: remember it first
        model.float32_fingerprint = weights_fingerprint(model)
    model.to(device).cast_weights(dtype).eval()
    prepare_for_decoding(model, device, dtype)  # the speed paths for this device and dtype (speed/)
    return Loaded(model, tok, str(tokenizer_path), path, meta)


def check_positions(max_seq_len, config: LMConfig, model_name) -> None:
    """Refuse a --max_seq_len longer than the model has positions (config.max_seq_len sizes its RoPE
    table) now, instead of at the first batch or prompt that long."""
    if max_seq_len is not None and max_seq_len > config.max_seq_len:
        raise UserError(f"--max_seq_len {max_seq_len} is more than the {config.max_seq_len} positions of {model_name} "
                        f"(its config.max_seq_len); pass at most {config.max_seq_len}")


def _config_from_sidecar(meta: dict, side: str, shape: dict) -> LMConfig:
    """The sidecar's LMConfig; shape flags the user gave must agree with it."""
    try:
        config = LMConfig.from_dict(meta["config"])
    except KeyError:
        raise UserError(f"{side} has no config; restore it, or delete it and pass the model's shape flags") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"{side}: its config is not valid ({e})") from None
    for key, given in shape.items():
        if getattr(config, key) != given:
            raise UserError(f"--{key} {given} disagrees with {side} ({key}={getattr(config, key)}); drop the flag "
                            "(a checkpoint with a sidecar knows its own shape)")
    return config


def _check_same_tokenizer(meta: dict, tok: Tokenizer, tokenizer_path, path) -> None:
    """Refuse a tokenizer whose fingerprint is not the one recorded at training time: with another
    tokenizer every id means another piece of text, and the model would produce fluent nonsense."""
    recorded = meta.get("tokenizer_sha256")
    if recorded is None or recorded == tok.fingerprint():
        return
    trained_with = f"{path} was trained with tokenizer {meta.get('tokenizer')} (sha256 {recorded[:12]}...)"
    same_place = meta.get("tokenizer") and os.path.abspath(path_from_sidecar(meta["tokenizer"])) == os.path.abspath(tokenizer_path)
    if same_place:  # e.g. train_tokenizer.py run again since: the folder now holds another tokenizer
        raise UserError(f"{trained_with}, but the tokenizer there has changed since (sha256 {tok.fingerprint()[:12]}..., "
                        "retrained?); put the one it was trained with back there, or pass --tokenizer its folder")
    raise UserError(f"{trained_with}, but {tokenizer_path} is a different tokenizer (sha256 {tok.fingerprint()[:12]}...); "
                    "pass --tokenizer the one it was trained with")
