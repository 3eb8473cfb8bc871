"""MiniMindLM as a Hugging Face Llama, and our LoRA adapters as PEFT's: the mapping, in one file.

MiniMindLM *is* a Llama: RMSNorm, grouped-query attention with RoPE, a SwiGLU feed-forward, pre-norm
blocks, no biases, an output layer tied to the embedding. So a checkpoint of ours is a
`LlamaForCausalLM` with other tensor names -- and one real difference, the RoPE layout (below).
That makes it loadable by `transformers`, PEFT, vLLM and whatever else reads Llama, with no code of
ours (no `trust_remote_code`). Read top to bottom:

    names           our state-dict keys <-> Llama's, one table
    RoPE layout     why the q and k rows are permuted, and the permutation
    config          LMConfig <-> config.json; what a Llama config can say that MiniMindLM cannot (refused)
    weights         our state dict <-> Llama's
    adapters        our adapter dict (model_lora.adapter_state) <-> a PEFT LoRA folder's config and tensors
    folders         writing and reading the folders themselves

convert_model.py is the command line around it. Everything that cannot be expressed is refused with
one ConversionError line naming it; nothing is silently dropped or changed.
"""
import json
import math
import os
import re
from itertools import islice

import torch

from plumbing.atomic import atomic_write_text
from formats.adapter_file import rank_and_pattern
from formats.checkpoint import read_checkpoint
from plumbing.errors import UserError
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from formats.safetensors import save_file
from model.tokenizer import MINIMIND2_CHAT_TEMPLATE
from plumbing.untrusted_json import load_file as load_json


class ConversionError(UserError):
    """A model, adapter or folder that cannot be converted; the message names what and why."""


# ------------------------------------------------------------------------------------------------
# Names. Inside block i, ours are `layers.{i}.NAME.weight`, Llama's `model.layers.{i}.NAME.weight`.

LAYER_NAMES = {  # ours -> Llama's
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",  # SwiGLU: w2(silu(w1 x) * w3 x) = down(silu(gate x) * up x)
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
TOP_NAMES = {"tok_embeddings": "model.embed_tokens", "norm": "model.norm"}
# output.weight has no entry: it IS tok_embeddings.weight, and a tied Llama (tie_word_embeddings)
# stores no lm_head.weight either.

# LoRA targets are named by a Linear's own name (model_lora.apply_lora's target_modules; PEFT's too).
TARGET_NAMES = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj",
                "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}


def llama_key(key: str) -> str:
    """Our state-dict key -> Llama's.

    >>> llama_key("layers.3.feed_forward.w1.weight")
    'model.layers.3.mlp.gate_proj.weight'
    >>> llama_key("tok_embeddings.weight")
    'model.embed_tokens.weight'
    """
    module, param = key.rsplit(".", 1)
    if module in TOP_NAMES:
        return f"{TOP_NAMES[module]}.{param}"
    match = re.fullmatch(r"layers\.(\d+)\.(.+)", module)
    if not match or match[2] not in LAYER_NAMES:
        raise KeyError(f"{key} has no Llama counterpart")
    return f"model.layers.{match[1]}.{LAYER_NAMES[match[2]]}.{param}"


def our_key(key: str):
    """Llama's key -> ours, or None for a name MiniMindLM has no tensor for (lm_head.weight, a bias...).

    >>> our_key("model.layers.3.self_attn.k_proj.weight"), our_key("model.layers.0.self_attn.q_proj.bias")
    ('layers.3.attention.wk.weight', None)
    """
    for ours, llama in TOP_NAMES.items():
        if key == f"{llama}.weight":
            return f"{ours}.weight"
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", key)
    reverse = {llama: ours for ours, llama in LAYER_NAMES.items()}
    if match and match[2] in reverse:
        return f"layers.{match[1]}.{reverse[match[2]]}.weight"
    return None


# ------------------------------------------------------------------------------------------------
# The RoPE layout. RoPE turns a head's vector pair by pair, pair i by the angle pos * theta^(-2i/D).
# Which coordinates form pair i is a convention:
#   ours (MiniMind2, Meta's original Llama):  (x[2i], x[2i+1])         "interleaved pairs"
#   Hugging Face Llama:                      (x[i], x[i + D/2])       "rotate half"
# The rotation is the same; only where the pair's two numbers sit differs. So relabel the coordinates:
# if Llama's coordinate i is our 2i and its coordinate i + D/2 is our 2i+1, Llama's rotation of the
# relabelled vector is our rotation, relabelled. A coordinate of q is a row of wq, so relabelling is
# permuting wq's rows within each head -- and wk's, the same way. The attention score q.k is a sum
# over coordinates, which does not care how they are labelled as long as q and k agree: scores,
# softmax and output are unchanged. v and o are never rotated and keep their order; heads keep their
# order too, so grouped-query attention still pairs the same heads. A LoRA update on wq or wk,
# ΔW = B·A, has its rows in B, so B is permuted and A is not.


def halves_order(head_dim: int) -> torch.Tensor:
    """Which of our rows becomes each Llama row within a head: evens first, then odds.

    >>> halves_order(6)          # Llama row i = our row order[i]: pairs (0,1), (2,3), (4,5) -> (0,3), (1,4), (2,5)
    tensor([0, 2, 4, 1, 3, 5])
    """
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def interleaved_to_halves(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Our wq/wk (n_heads * D, in) -- or a LoRA B (n_heads * D, r) -- with rows in Llama's order."""
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, head_dim, -1)[:, halves_order(head_dim)].reshape(w.shape)  # rows per head reordered


def halves_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of interleaved_to_halves: Llama's q/k rows (or a PEFT lora_B on them) in our order."""
    head_dim = w.shape[0] // n_heads
    back = torch.argsort(halves_order(head_dim))  # our row j = Llama row back[j]
    return w.reshape(n_heads, head_dim, -1)[:, back].reshape(w.shape)


def _heads_of(module: str, config: LMConfig):
    """How many RoPE heads a Linear's rows hold: n_heads for wq, n_kv_heads for wk, None (not rotated) else."""
    return {"wq": config.n_heads, "wk": config.n_kv_heads}.get(module.rsplit(".", 1)[-1])


# ------------------------------------------------------------------------------------------------
# Config.


def hf_config(config: LMConfig, bos_token_id: int, eos_token_id: int, pad_token_id: int, dtype: str = "float32") -> dict:
    """config.json of the LlamaForCausalLM that computes what MiniMindLM(config) computes; dtype: the weights'."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        # Dropout is a training setting, and Llama has only attention dropout (ours also drops
        # embeddings and residual branches): an exported model is for inference, so none.
        "attention_dropout": 0.0,
        "initializer_range": 0.02,  # our init_weights' std; used only if someone re-initialises
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": dtype,  # transformers 4.56+ also read it as "dtype"; older versions only as this
    }


# What transformers assumes when config.json leaves a field out (LlamaConfig's defaults), where they
# differ from LMConfig's: a key we did not find must mean what it means to transformers.
LLAMA_DEFAULTS = {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048,
                  "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False}

# MiniMindLM allocates its RoPE table, max_position_embeddings rows of head_dim numbers, when it is built --
# before any weight is read -- so a config.json saying 10^12 positions would exhaust memory instead of being
# refused. Llamas say 2k to 128k; 2^21 positions (a 1 GiB table at head_dim 128) is the most accepted.
MAX_POSITIONS = 2**21

# JSON's types as config.json means them: `true` is no number and `"false"` no boolean (Python would read
# the string as true), and a number may be written 10000 or 1e4.
JSON_TYPES = {bool: "true or false", int: "an integer", float: "a finite number"}


def _is_a(value, kind) -> bool:
    """_is_a(1e4, float) -> True, _is_a(True, int) -> False, _is_a("false", bool) -> False"""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def _field(hf: dict, key: str, kind, where: str):
    """hf[key] -- or transformers' default when config.json leaves it out -- if it is of JSON type `kind`
    (bool, int or float); else a ConversionError naming the field."""
    value = hf.get(key, LLAMA_DEFAULTS.get(key))
    if not _is_a(value, kind):
        raise ConversionError(f"{where}: {key} is {value!r}, not {JSON_TYPES[kind]}")
    return value


def _rope_theta(hf: dict, where: str) -> float:
    """rope_theta, refusing any RoPE variant other than plain RoPE (transformers 4: rope_theta + rope_scaling;
    transformers 5: rope_parameters = {"rope_type": "default", "rope_theta": ...})."""
    scaling = hf.get("rope_parameters", hf.get("rope_scaling"))
    theta = hf.get("rope_theta", LLAMA_DEFAULTS["rope_theta"])
    if isinstance(scaling, dict):
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        extra = sorted(set(scaling) - {"rope_type", "type", "rope_theta"})
        if kind != "default" or extra:
            raise ConversionError(f"{where}: RoPE scaling {scaling} cannot be converted: MiniMindLM's RoPE is plain "
                                  "(rope_scaling null), so longer-context variants such as linear, dynamic, yarn or llama3 are refused")
        theta = scaling.get("rope_theta", theta)
    elif scaling is not None:
        raise ConversionError(f"{where}: rope_scaling {scaling!r} cannot be converted: MiniMindLM's RoPE is plain")
    if not (_is_a(theta, float) and theta > 0):
        raise ConversionError(f"{where}: rope_theta is {theta!r}, not a positive number (RoPE's base)")
    return float(theta)


def lm_config_from_hf(hf: dict, where: str) -> LMConfig:
    """The LMConfig of a Llama config.json, or a ConversionError naming the first thing MiniMindLM cannot do
    (or the first field that is not of its type: rope_theta "abc", tie_word_embeddings "false").

    where: the file's name, for the messages.
    """
    model_type = hf.get("model_type")
    if model_type != "llama":
        raise ConversionError(f"{where}: model_type {model_type!r} is not 'llama'; only LlamaForCausalLM-shaped "
                              "models can be converted to MiniMindLM")
    architectures = hf.get("architectures") or ["LlamaForCausalLM"]
    if architectures != ["LlamaForCausalLM"]:
        raise ConversionError(f"{where}: architectures {architectures} is not ['LlamaForCausalLM'] (a language-model head)")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not _is_a(hf.get(key), int):
            raise ConversionError(f"{where} has no integer {key!r}; it does not describe a Llama model")
    for key in ("num_key_value_heads", "head_dim"):  # null or absent: derived from the heads and the width
        if hf.get(key) is not None:
            _field(hf, key, int, where)
    if hf.get("quantization_config"):
        raise ConversionError(f"{where}: quantized weights (quantization_config) cannot be converted; convert the "
                              "unquantized model")
    act = hf.get("hidden_act", LLAMA_DEFAULTS["hidden_act"])
    if act != "silu":
        raise ConversionError(f"{where}: hidden_act {act!r} cannot be converted: MiniMindLM's feed-forward is SwiGLU (silu)")
    for key, what in (("attention_bias", "biases in the attention projections"), ("mlp_bias", "biases in the MLP")):
        if _field(hf, key, bool, where):
            raise ConversionError(f"{where}: {key}=true ({what}) cannot be converted: MiniMindLM has no biases")
    if not _field(hf, "tie_word_embeddings", bool, where):
        raise ConversionError(f"{where}: untied embeddings (tie_word_embeddings is false or absent, so lm_head is its own "
                              "matrix) cannot be converted: MiniMindLM's output layer is its embedding matrix")
    dim, n_heads, n_kv_heads = hf["hidden_size"], hf["num_attention_heads"], hf.get("num_key_value_heads")
    head_dim = hf.get("head_dim")
    if head_dim is not None and n_heads and head_dim * n_heads != dim:
        raise ConversionError(f"{where}: head_dim {head_dim} is not hidden_size / num_attention_heads = {dim} / {n_heads}; "
                              "MiniMindLM's heads split the width exactly")
    positions = _field(hf, "max_position_embeddings", int, where)
    if positions > MAX_POSITIONS:
        raise ConversionError(f"{where}: max_position_embeddings {positions:,} is more than the {MAX_POSITIONS:,} accepted "
                              "(MiniMindLM builds a RoPE table of that many rows before reading any weight)")
    norm_eps = _field(hf, "rms_norm_eps", float, where)
    if norm_eps < 0:
        raise ConversionError(f"{where}: rms_norm_eps is {norm_eps!r}; RMSNorm adds it under a square root, so it cannot be negative")
    theta = _rope_theta(hf, where)
    try:
        return LMConfig(
            dim=dim,
            n_layers=hf["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=n_heads if n_kv_heads is None else n_kv_heads,  # absent: one kv head per query head
            vocab_size=hf["vocab_size"],
            hidden_dim=hf["intermediate_size"],
            norm_eps=float(norm_eps),
            max_seq_len=positions,
            rope_theta=theta,
        )
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{where}: {e}") from None


# ------------------------------------------------------------------------------------------------
# Weights.


def to_llama_weights(state_dict: dict, config: LMConfig) -> dict:
    """Our (clean, adapter-free) state dict -> Llama's: renamed, q/k rows permuted, no lm_head (tied)."""
    out = {}
    for key, t in state_dict.items():
        if key == "output.weight":
            continue  # the same matrix as tok_embeddings.weight
        heads = _heads_of(key.rsplit(".", 1)[0], config)
        out[llama_key(key)] = (interleaved_to_halves(t, heads) if heads else t).contiguous()
    return out


def from_llama_weights(llama_state: dict, config: LMConfig, where: str) -> dict:
    """Llama's state dict -> ours (q/k rows back in interleaved order), refusing any tensor we have no place for
    and any shape other than the one `config` gives it."""
    out, unknown = {}, []
    for key, t in llama_state.items():
        if key == "lm_head.weight":
            # Some writers store the tied matrix twice; transformers ties lm_head to embed_tokens and
            # ignores this copy (tie_word_embeddings was checked by lm_config_from_hf), and so do we.
            continue
        if key.endswith("rotary_emb.inv_freq"):
            continue  # a buffer older transformers saved: RoPE's frequencies, which rope_theta already gives
        ours = our_key(key)
        if ours is None:
            unknown.append(key)
            continue
        out[ours] = t
    if unknown:
        bias = [k for k in unknown if k.endswith(".bias")]
        what = "biases" if bias else "tensors"
        raise ConversionError(f"{where} holds {what} MiniMindLM has no place for: {', '.join((bias or unknown)[:3])}"
                              f"{' and more' if len(bias or unknown) > 3 else ''}")
    _check_shapes(out, config, where)
    for key, t in out.items():
        heads = _heads_of(key.rsplit(".", 1)[0], config)
        if heads:
            out[key] = halves_to_interleaved(t, heads)
    return out


def _check_shapes(state: dict, config: LMConfig, where: str) -> None:
    """Refuse a state dict that is not exactly MiniMindLM(config)'s (output.weight aside: it is tied), before
    the model is built: a config.json whose sizes do not match its weights -- hidden_size 10^6 beside 64-wide
    tensors -- would otherwise allocate a model of its own sizes first and compare shapes after."""
    # Missing keys first, found lazily: a config claiming 10^9 layers is refused at the first absent one.
    missing = list(islice((k for k in _our_keys(config) if k not in state), 4))
    if missing:
        raise ConversionError(f"{where} lacks {', '.join(llama_key(k) for k in missing[:3])}{' and more' if len(missing) > 3 else ''} "
                              f"(its config.json says {config.n_layers} layers)")
    expected = model_shapes(config)
    del expected["output.weight"]
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ConversionError(f"{where} holds {llama_key(extra[0])}, but its config.json says {config.n_layers} layers")
    wrong = [k for k in expected if tuple(state[k].shape) != expected[k]]
    if wrong:
        k = wrong[0]
        raise ConversionError(f"{where}: {llama_key(k)} has shape {tuple(state[k].shape)}, but config.json's sizes make "
                              f"it {expected[k]}{f' (and {len(wrong) - 1} more differ)' if len(wrong) > 1 else ''}")


def model_shapes(config: LMConfig) -> dict:
    """{key: shape} of MiniMindLM(config)'s state dict, e.g. {'tok_embeddings.weight': (320, 64), ...}, without
    allocating it: built on the meta device, whose tensors have shapes but no storage."""
    with torch.device("meta"):
        return {k: tuple(t.shape) for k, t in MiniMindLM(config).state_dict().items()}


def _our_keys(config: LMConfig):
    """Every key of MiniMindLM(config)'s state dict except output.weight (tied), in order, one at a time."""
    yield "tok_embeddings.weight"
    for i in range(config.n_layers):
        for name in LAYER_NAMES:
            yield f"layers.{i}.{name}.weight"
    yield "norm.weight"


# ------------------------------------------------------------------------------------------------
# Adapters. Ours: {"layers.{i}.attention.wq.lora.A.weight": (r, in), "...lora.B.weight": (out, r), ...,
# "lora_config": {rank, alpha, targets, dim}}, update (alpha / rank) · B · A. PEFT's: the same A and B
# under `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` / `lora_B`, and
# adapter_config.json with r and lora_alpha: update (lora_alpha / r) · B · A. The same numbers.

PEFT_PREFIX = "base_model.model."  # PeftModel wraps the LlamaForCausalLM, whose own keys start "model."

# adapter_config.json options that change what the adapter computes and that our LoRALinear does not
# do -> why; refused when set (anything but null, false, {}, [] or "none").
PEFT_OPTIONS_REFUSED = {
    "alpha_pattern": "per-module alphas (alpha_pattern): our adapters have one alpha",
    "bias": "trained biases (bias): MiniMindLM has no biases",
    "lora_bias": "a bias on lora_B (lora_bias): MiniMindLM has no biases",
    "modules_to_save": "fully trained modules (modules_to_save): an adapter file here holds only A and B",
    "layers_to_transform": "adapters on some layers only (layers_to_transform): ours cover every layer",
    "layers_pattern": "adapters on some layers only (layers_pattern): ours cover every layer",
    "layer_replication": "layer replication: MiniMindLM's layers are its own",
    "fan_in_fan_out": "fan_in_fan_out (GPT-2's Conv1D layout), which a Llama never uses",
    "trainable_token_indices": "trainable token rows (trainable_token_indices)",
    "target_parameters": "adapters on parameters (target_parameters) instead of Linear layers",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_qalora": "QA-LoRA (use_qalora)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "kasa_config": "KaSA (kasa_config) puts learned singular values between A and B and truncates the base weight",
    "velora_config": "VeLoRA (velora_config), a LoRA variant LoRALinear does not implement",
    "monteclora_config": "MonteCLoRA (monteclora_config) samples its adapters",
    "arrow_config": "Arrow (arrow_config) routes between several adapters",
}

# init_lora_weights says how training started. Most inits only choose the first A and B, which the saved
# tensors replace: the file is then an ordinary LoRA, W + scale·B·A. Checked by hand with PEFT 0.21.2 on
# the golden fixture (tests/fixtures/hf_llama/README.md): these give PEFT's plain-LoRA logits exactly.
PEFT_PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica")  # and true, false
# These instead train on W - scale·B0·A0, B0·A0 computed from W (PiSSA's principal part, OLoRA's QR, CorDA's,
# LoftQ's quantization, LoRA-GA's gradients), and PEFT subtracts it again when it loads the adapter (on the
# fixture: logits 0.5 away from the plain LoRA's). An adapter file here holds no change to W.
PEFT_INITS_CHANGING_W = ("pissa", "olora", "corda", "loftq", "lora_ga")


def peft_config(lora_config: dict) -> dict:
    """adapter_config.json for our lora_config {rank, alpha, targets, dim, scaling, rank_pattern}; targets must have Llama
    names. rsLoRA's scale alpha / sqrt(r) is PEFT's use_rslora."""
    alpha = lora_config["alpha"]
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None,  # the base is the folder above; no path of this machine in the file
        "r": lora_config["rank"],
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "target_modules": sorted(TARGET_NAMES[t] for t in lora_config["targets"]),
        "lora_dropout": 0.0,  # dropout is a training setting; the file does not record it
        "bias": "none",
        "use_rslora": lora_config.get("scaling", "standard") == "rslora",
        "use_dora": lora_config.get("init") == "dora",  # a DoRA adapter (model/lora_variants.py): magnitudes beside A, B
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "rank_pattern": {_llama_module(name): r for name, r in lora_config.get("rank_pattern", {}).items()},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "revision": None,
    }


def _llama_module(name: str) -> str:
    """"layers.0.attention.wq" -> "layers.0.self_attn.q_proj": a rank_pattern key PEFT matches to that module alone
    (it matches the end of "model.layers.0.self_attn.q_proj", after a dot)."""
    return llama_key(f"{name}.weight").removesuffix(".weight").removeprefix("model.")


def to_peft_weights(adapter: dict, config: LMConfig) -> dict:
    """Our adapter dict -> PEFT's tensors: renamed, lora_B of wq/wk rows permuted like their weights."""
    out = {}
    for key, t in adapter.items():
        if key == "lora_config":
            continue
        module, part = key.split(".lora.")  # "layers.0.attention.wq", "A.weight" (or DoRA's "magnitude")
        heads = _heads_of(module, config) if part in ("B.weight", "magnitude") else None  # both are per output row
        llama_module = llama_key(module + ".weight").removesuffix(".weight")
        name = "lora_magnitude_vector" if part == "magnitude" else f"lora_{part}"
        out[f"{PEFT_PREFIX}{llama_module}.{name}"] = (interleaved_to_halves(t, heads) if heads else t).contiguous()
    return out


def adapter_from_peft(cfg: dict, tensors: dict, config: LMConfig, where: str) -> dict:
    """A PEFT LoRA (adapter_config.json as a dict, and its tensors) -> our adapter dict, for load_lora.

    rsLoRA (use_rslora: scale lora_alpha / sqrt(r)) is our scaling "rslora", with the same alpha.
    """
    if cfg.get("peft_type") != "LORA":
        raise ConversionError(f"{where}: peft_type {cfg.get('peft_type')!r} is not LORA; only LoRA adapters can be converted")
    for option, why in PEFT_OPTIONS_REFUSED.items():
        if cfg.get(option) not in (None, False, {}, [], "none"):
            raise ConversionError(f"{where}: {option}={cfg[option]!r} cannot be converted: {why}")
    _check_init(cfg.get("init_lora_weights"), where)
    rank, lora_alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not (_is_a(rank, int) and rank > 0 and _is_a(lora_alpha, float) and lora_alpha > 0):
        raise ConversionError(f"{where}: r={rank!r} and lora_alpha={lora_alpha!r} must be positive numbers")
    pattern = cfg.get("rank_pattern") or {}
    if not (isinstance(pattern, dict) and all(isinstance(k, str) and _is_a(r, int) and r > 0 for k, r in pattern.items())):
        raise ConversionError(f"{where}: rank_pattern is {pattern!r}, not an object {{module pattern: positive rank}}")
    rslora = cfg.get("use_rslora", False)
    if not _is_a(rslora, bool):  # the string "false" would be true to Python: the other scale, silently
        raise ConversionError(f"{where}: use_rslora is {rslora!r}, not true or false")
    scaling = "rslora" if rslora else "standard"
    dora = cfg.get("use_dora", False)
    if not _is_a(dora, bool):
        raise ConversionError(f"{where}: use_dora is {dora!r}, not true or false")
    from_llama = {llama: ours for ours, llama in TARGET_NAMES.items()}
    targets = cfg.get("target_modules")
    if not (targets is None or isinstance(targets, str)
            or isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise ConversionError(f"{where}: target_modules is {targets!r}, not a list of module names (or a pattern)")
    if isinstance(targets, list):  # a string is a regex; then the tensors' names below say what it matched
        outside = sorted(set(targets) - set(from_llama))
        if outside:
            raise ConversionError(f"{where}: target_modules {outside} cannot be converted: only the Llama blocks' "
                                  f"Linear layers {sorted(from_llama)} have counterparts (an adapter on "
                                  "embed_tokens or lm_head is not the shared one our 'output' target is)")

    out, shapes = {}, model_shapes(config)
    for key, t in tensors.items():
        match = re.fullmatch(r"base_model\.model\.(?:model\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight", key) \
            or re.fullmatch(r"base_model\.model\.(?:model\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_(magnitude)_vector", key)
        if not match or match[3] not in from_llama:
            raise ConversionError(f"{where}: tensor {key} cannot be converted (only lora_A/lora_B of the blocks' "
                                  f"{', '.join(sorted(from_llama))} have counterparts)")
        layer, name, ab = match[1], from_llama[match[3]], match[4]
        module = our_key(f"model.layers.{layer}.{match[2]}.{match[3]}.weight")  # None for e.g. mlp.q_proj
        if module is None:
            raise ConversionError(f"{where}: tensor {key} names no layer of a Llama model")
        if module not in shapes:
            raise ConversionError(f"{where}: tensor {key} is for layer {layer}, but the model has {config.n_layers} layers")
        out_features, in_features = shapes[module]
        r = peft_rank(f"model.layers.{layer}.{match[2]}.{match[3]}", rank, pattern)
        expected = {"A": (r, in_features), "B": (out_features, r), "magnitude": (out_features,)}[ab]
        if tuple(t.shape) != expected:  # before the rows of B are permuted, which needs whole heads
            raise ConversionError(f"{where}: {key} has shape {tuple(t.shape)}, not {expected} (rank r={r} on "
                                  f"a {out_features}x{in_features} layer)")
        module = module.removesuffix(".weight")
        heads = _heads_of(name, config) if ab in ("B", "magnitude") else None  # B's rows and the magnitudes: per output row
        out[f"{module}.lora.{ab}" + ("" if ab == "magnitude" else ".weight")] = halves_to_interleaved(t, heads) if heads else t
    if not out:
        raise ConversionError(f"{where}: the adapter holds no lora_A/lora_B tensors")
    adapted = {k.split(".lora.")[0] for k in out if k.endswith(".A.weight")}
    magnitudes = {k.split(".lora.")[0] for k in out if k.endswith(".lora.magnitude")}
    if magnitudes != (adapted if dora else set()):
        raise ConversionError(f"{where}: use_dora is {str(dora).lower()} but {len(magnitudes)} of the {len(adapted)} adapted "
                              "layers have a lora_magnitude_vector (DoRA needs one for each, LoRA none)")
    ours, ranks = rank_and_pattern({k.split(".lora.")[0]: t.shape[0] for k, t in out.items() if k.endswith(".A.weight")})
    out["lora_config"] = {"rank": ours, "alpha": lora_alpha, "dim": config.dim, "scaling": scaling,
                          "init": "dora" if dora else "standard",
                          "targets": sorted({k.split(".lora.")[0].rsplit(".", 1)[-1] for k in out}),
                          **({"rank_pattern": ranks} if ranks else {})}
    return out


def peft_rank(module: str, rank: int, pattern: dict) -> int:
    """The rank PEFT gives `module` (e.g. "model.layers.0.self_attn.q_proj"): that of the first key of rank_pattern
    matching the end of its name, as a regular expression (PEFT's get_pattern_key), else r."""
    for key in pattern:
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return pattern[key]
        except re.error as e:
            raise ConversionError(f"rank_pattern key {key!r} is not a regular expression PEFT can use ({e})") from None
    return rank


def _check_init(init, where: str) -> None:
    """Refuse an init_lora_weights whose adapter is not an ordinary LoRA once loaded (see PEFT_PLAIN_INITS)."""
    if init is None or isinstance(init, bool) or init in PEFT_PLAIN_INITS:  # null, true, false: A and B at random or 0
        return
    if isinstance(init, str) and init.lower().startswith(PEFT_INITS_CHANGING_W):  # also "pissa_niter_16"
        raise ConversionError(f"{where}: init_lora_weights={init!r} cannot be converted: the adapter was trained on base "
                              "weights PEFT changed at its start (W - scale·B0·A0), which an adapter file here cannot "
                              "hold; in PEFT, save it with save_pretrained(DIR, path_initial_model_for_weight_conversion="
                              "INIT_DIR), which makes it an ordinary LoRA, and convert that")
    raise ConversionError(f"{where}: init_lora_weights={init!r} cannot be converted: it is none of the inits PEFT is known "
                          f"to load as an ordinary LoRA (true, false, {', '.join(map(repr, PEFT_PLAIN_INITS))})")


# ------------------------------------------------------------------------------------------------
# Folders.


def _write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _read_json(path) -> dict:
    """A JSON object from a folder someone shared: parsed with limits (plumbing/untrusted_json.py)."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path} not found: a Hugging Face folder has one")
    obj = load_json(path)
    if not isinstance(obj, dict):
        raise ConversionError(f"{path} is not a JSON object")
    return obj


# What an export may have left in a folder: our files, and the rest of a Hugging Face folder that transformers,
# PEFT or vLLM read -- an earlier save_pretrained's shards and their index, a chat_template.jinja (which
# transformers prefers to tokenizer_config.json's template), other tokenizer files. Exporting over an earlier
# export (--force) removes these first: left beside the new files, they would be read as part of the model.
EXPORT_FILES = re.compile(r"config\.json|generation_config\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json"
                          r"|pytorch_model(-\d+-of-\d+)?\.bin|pytorch_model\.bin\.index\.json|tokenizer(_config)?\.json"
                          r"|tokenizer\.model|special_tokens_map\.json|added_tokens\.json|chat_template\.(jinja|json)"
                          r"|vocab\.json|merges\.txt")
PEFT_FILES = re.compile(r"adapter_config\.json|adapter_model\.(safetensors|bin)")
PEFT_SUBFOLDER = "adapter"  # where to_hf puts a PEFT folder beside the model


def earlier_export_files(out_dir) -> list:
    """The files in out_dir, and in its adapter/ subfolder, that an export may have written, e.g.
    ['hf/chat_template.jinja', 'hf/model.safetensors', 'hf/adapter/adapter_config.json']. Others are not listed."""
    found = []
    for folder, pattern in ((out_dir, EXPORT_FILES), (os.path.join(out_dir, PEFT_SUBFOLDER), PEFT_FILES)):
        if os.path.isdir(folder):
            found += [os.path.join(folder, name) for name in sorted(os.listdir(folder))
                      if pattern.fullmatch(name) and os.path.isfile(os.path.join(folder, name))]
    return found


def save_llama_folder(out_dir, model, tokenizer) -> None:
    """Write a MiniMindLM as a Hugging Face LlamaForCausalLM folder: config.json, generation_config.json,
    model.safetensors, and the tokenizer's tokenizer.json + tokenizer_config.json (with the chat template)."""
    state_dict, config = model.state_dict(), model.config
    if any(".lora." in key for key in state_dict):
        raise ValueError("save_llama_folder: the model carries LoRA adapters; export them with save_peft_folder "
                         "and call remove_lora(model) first, or merge_lora + remove_lora to export the merged model")
    os.makedirs(out_dir, exist_ok=True)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    dtype = str(state_dict["tok_embeddings.weight"].dtype).removeprefix("torch.")  # torch.float32 -> "float32"
    save_file(to_llama_weights(state_dict, config), os.path.join(out_dir, "model.safetensors"))
    _write_json(os.path.join(out_dir, "config.json"), hf_config(config, **ids, dtype=dtype))
    _write_json(os.path.join(out_dir, "generation_config.json"), ids)
    tokenizer.save(out_dir)


def read_llama_folder(hf_dir) -> tuple:
    """A Hugging Face Llama folder -> (LMConfig, our state dict). Weights from model.safetensors, the
    shards a model.safetensors.index.json lists, or pytorch_model.bin (read with weights_only)."""
    hf_dir = str(hf_dir)
    if not os.path.isdir(hf_dir):
        raise ConversionError(f"{hf_dir} is not a folder (a Hugging Face model folder holds config.json and model.safetensors)")
    config_path = os.path.join(hf_dir, "config.json")
    config = lm_config_from_hf(_read_json(config_path), config_path)
    single, index, legacy = (os.path.join(hf_dir, name) for name in
                             ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))
    if os.path.isfile(single):
        state, where = read_checkpoint(single), single
    elif os.path.isfile(index):
        state, where = {}, index
        for shard in _shard_names(index):
            state.update(read_checkpoint(os.path.join(hf_dir, shard)))
    elif os.path.isfile(legacy):
        state, where = read_checkpoint(legacy), legacy
    else:
        raise ConversionError(f"{hf_dir} holds no model.safetensors (nor an index of shards, nor pytorch_model.bin)")
    return config, from_llama_weights(state, config, where)


def _shard_names(index) -> list:
    """The shard files model.safetensors.index.json names, e.g. ['model-00001-of-00002.safetensors', ...].
    Only plain file names: a shard "../../elsewhere.safetensors" would be read from outside the folder."""
    weight_map = _read_json(index).get("weight_map")
    if not (isinstance(weight_map, dict) and weight_map
            and all(isinstance(name, str) for name in weight_map.values())):
        raise ConversionError(f"{index}: its weight_map is {str(weight_map)[:60]}, not an object mapping each "
                              "tensor to the shard file holding it")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if os.path.basename(shard) != shard or shard in ("", ".", "..") or os.path.isabs(shard):
            raise ConversionError(f"{index} names the shard {shard!r}, which is not a file in its folder; "
                                  "shards are read from the model's folder only")
    return shards


def check_chat_template(hf_dir) -> None:
    """Refuse a tokenizer whose chat template is not MiniMind2's: this project renders only that one, so the
    model would be prompted in a format it was not trained on. A folder without a template is fine."""
    config_path, jinja_path = os.path.join(hf_dir, "tokenizer_config.json"), os.path.join(hf_dir, "chat_template.jinja")
    template = _read_json(config_path).get("chat_template") if os.path.isfile(config_path) else None
    if os.path.isfile(jinja_path):  # newer transformers save the template in a file of its own
        try:
            with open(jinja_path, encoding="utf-8") as f:
                template = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ConversionError(f"{jinja_path} cannot be read as text ({e})") from None
    if template is not None and template != MINIMIND2_CHAT_TEMPLATE:
        raise ConversionError(f"{hf_dir}: its chat template is not MiniMind2's, and this project renders only "
                              "MiniMind2's (model/tokenizer.py): the model would be prompted in a format it was not trained on")


def check_peft_adapter(adapter: dict) -> None:
    """Refuse an adapter of ours that PEFT cannot hold as it is (one on the tied embedding), before anything is written."""
    if "output" in adapter["lora_config"]["targets"]:
        # PEFT would need two adapters, on embed_tokens and lm_head, over one tied matrix: PEFT 0.21 then
        # saves the whole embedding matrix in the adapter file, and its merge_and_unload adds the update to
        # the tied matrix twice (measured by hand: logits off by hundreds). Merged, ΔE is exact.
        raise ConversionError("the adapter adapts the tied embedding ('output' target); as PEFT adapters that is two "
                              "(embed_tokens and lm_head) on one tied matrix, which PEFT's merge adds twice: add --merge "
                              "to export the adapted model as a plain Hugging Face folder, or train with --lora_targets "
                              "wq,wk,wv,wo,w1,w2,w3 for an adapter PEFT and vLLM can load")


def save_peft_folder(out_dir, adapter: dict, config: LMConfig) -> None:
    """Write a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) from our adapter dict."""
    check_peft_adapter(adapter)
    os.makedirs(out_dir, exist_ok=True)
    save_file(to_peft_weights(adapter, config), os.path.join(out_dir, "adapter_model.safetensors"))
    _write_json(os.path.join(out_dir, "adapter_config.json"), peft_config(adapter["lora_config"]))


def read_peft_folder(peft_dir, config: LMConfig) -> dict:
    """A PEFT LoRA folder -> our adapter dict (for load_lora / save_lora), for a base model of `config`."""
    peft_dir = str(peft_dir)
    if not os.path.isdir(peft_dir):
        raise ConversionError(f"{peft_dir} is not a folder (a PEFT adapter folder holds adapter_config.json)")
    config_path = os.path.join(peft_dir, "adapter_config.json")
    cfg = _read_json(config_path)
    weights = os.path.join(peft_dir, "adapter_model.safetensors")
    if not os.path.isfile(weights):
        weights = os.path.join(peft_dir, "adapter_model.bin")  # older PEFT
        if not os.path.isfile(weights):
            raise ConversionError(f"{peft_dir} holds no adapter_model.safetensors (nor adapter_model.bin)")
    return adapter_from_peft(cfg, read_checkpoint(weights), config, config_path)
