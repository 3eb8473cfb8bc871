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
import os
import re

import torch

from model.atomic import atomic_write_text
from model.checkpoint import read_checkpoint
from model.errors import UserError
from model.LMConfig import LMConfig
from model.safetensors import save_file
from model.tokenizer import MINIMIND2_CHAT_TEMPLATE


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
    return float(theta)


def lm_config_from_hf(hf: dict, where: str) -> LMConfig:
    """The LMConfig of a Llama config.json, or a ConversionError naming the first thing MiniMindLM cannot do.

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
        if not isinstance(hf.get(key), int):
            raise ConversionError(f"{where} has no integer {key!r}; it does not describe a Llama model")
    if hf.get("quantization_config"):
        raise ConversionError(f"{where}: quantized weights (quantization_config) cannot be converted; convert the "
                              "unquantized model")
    act = hf.get("hidden_act", LLAMA_DEFAULTS["hidden_act"])
    if act != "silu":
        raise ConversionError(f"{where}: hidden_act {act!r} cannot be converted: MiniMindLM's feed-forward is SwiGLU (silu)")
    for key, what in (("attention_bias", "biases in the attention projections"), ("mlp_bias", "biases in the MLP")):
        if hf.get(key, LLAMA_DEFAULTS[key]):
            raise ConversionError(f"{where}: {key}=true ({what}) cannot be converted: MiniMindLM has no biases")
    if not hf.get("tie_word_embeddings", LLAMA_DEFAULTS["tie_word_embeddings"]):
        raise ConversionError(f"{where}: untied embeddings (tie_word_embeddings is false or absent, so lm_head is its own "
                              "matrix) cannot be converted: MiniMindLM's output layer is its embedding matrix")
    dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    if head_dim is not None and n_heads and head_dim * n_heads != dim:
        raise ConversionError(f"{where}: head_dim {head_dim} is not hidden_size / num_attention_heads = {dim} / {n_heads}; "
                              "MiniMindLM's heads split the width exactly")
    theta = _rope_theta(hf, where)
    try:
        return LMConfig(
            dim=dim,
            n_layers=hf["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads,  # absent: one kv head per query head
            vocab_size=hf["vocab_size"],
            hidden_dim=hf["intermediate_size"],
            norm_eps=float(hf.get("rms_norm_eps", LLAMA_DEFAULTS["rms_norm_eps"])),
            max_seq_len=hf.get("max_position_embeddings", LLAMA_DEFAULTS["max_position_embeddings"]),
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
    """Llama's state dict -> ours (q/k rows back in interleaved order), refusing any tensor we have no place for."""
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
        heads = _heads_of(ours.rsplit(".", 1)[0], config)
        out[ours] = halves_to_interleaved(t, heads) if heads else t
    if unknown:
        bias = [k for k in unknown if k.endswith(".bias")]
        what = "biases" if bias else "tensors"
        raise ConversionError(f"{where} holds {what} MiniMindLM has no place for: {', '.join((bias or unknown)[:3])}"
                              f"{' and more' if len(bias or unknown) > 3 else ''}")
    expected = {llama_key(k) for k in _our_keys(config)}
    missing = sorted(k for k in expected if our_key(k) not in out)
    if missing:
        raise ConversionError(f"{where} lacks {', '.join(missing[:3])}{' and more' if len(missing) > 3 else ''} "
                              f"(its config.json says {config.n_layers} layers)")
    return out


def _our_keys(config: LMConfig) -> list:
    """Every key of MiniMindLM(config)'s state dict except output.weight (tied), without building the model."""
    per_layer = [f"layers.{i}.{name}.weight" for i in range(config.n_layers) for name in LAYER_NAMES]
    return ["tok_embeddings.weight", *per_layer, "norm.weight"]


# ------------------------------------------------------------------------------------------------
# Adapters. Ours: {"layers.{i}.attention.wq.lora.A.weight": (r, in), "...lora.B.weight": (out, r), ...,
# "lora_config": {rank, alpha, targets, dim}}, update (alpha / rank) · B · A. PEFT's: the same A and B
# under `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` / `lora_B`, and
# adapter_config.json with r and lora_alpha: update (lora_alpha / r) · B · A. The same numbers.

PEFT_PREFIX = "base_model.model."  # PeftModel wraps the LlamaForCausalLM, whose own keys start "model."

# adapter_config.json options that change what the adapter computes and that our LoRALinear does not
# do -> why; refused when set (anything but null, false, {}, [] or "none").
PEFT_OPTIONS_REFUSED = {
    "use_dora": "DoRA (use_dora) adds a magnitude vector that LoRALinear does not have",
    "rank_pattern": "per-module ranks (rank_pattern): our adapters have one rank",
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
}


def peft_config(lora_config: dict) -> dict:
    """adapter_config.json for our lora_config {rank, alpha, targets, dim, scaling}; targets must have Llama
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
        "use_dora": False,
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "revision": None,
    }


def to_peft_weights(adapter: dict, config: LMConfig) -> dict:
    """Our adapter dict -> PEFT's tensors: renamed, lora_B of wq/wk rows permuted like their weights."""
    out = {}
    for key, t in adapter.items():
        if key == "lora_config":
            continue
        module, ab = key.split(".lora.")  # "layers.0.attention.wq", "A.weight"
        heads = _heads_of(module, config) if ab == "B.weight" else None
        llama_module = llama_key(module + ".weight").removesuffix(".weight")
        out[f"{PEFT_PREFIX}{llama_module}.lora_{ab}"] = (interleaved_to_halves(t, heads) if heads else t).contiguous()
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
    rank, lora_alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not (isinstance(rank, int) and rank > 0 and isinstance(lora_alpha, (int, float)) and lora_alpha > 0):
        raise ConversionError(f"{where}: r={rank!r} and lora_alpha={lora_alpha!r} must be positive numbers")
    scaling = "rslora" if cfg.get("use_rslora") else "standard"
    from_llama = {llama: ours for ours, llama in TARGET_NAMES.items()}
    targets = cfg.get("target_modules")
    if isinstance(targets, list):  # a string is a regex; then the tensors' names below say what it matched
        outside = sorted(set(targets) - set(from_llama))
        if outside:
            raise ConversionError(f"{where}: target_modules {outside} cannot be converted: only the Llama blocks' "
                                  f"Linear layers {sorted(from_llama)} have counterparts (an adapter on "
                                  "embed_tokens or lm_head is not the shared one our 'output' target is)")

    out = {}
    for key, t in tensors.items():
        match = re.fullmatch(r"base_model\.model\.(?:model\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight", key)
        if not match or match[3] not in from_llama:
            raise ConversionError(f"{where}: tensor {key} cannot be converted (only lora_A/lora_B of the blocks' "
                                  f"{', '.join(sorted(from_llama))} have counterparts)")
        layer, name, ab = match[1], from_llama[match[3]], match[4]
        module = our_key(f"model.layers.{layer}.{match[2]}.{match[3]}.weight")  # None for e.g. mlp.q_proj
        if module is None:
            raise ConversionError(f"{where}: tensor {key} names no layer of a Llama model")
        module = module.removesuffix(".weight")
        r = t.shape[0] if ab == "A" else t.shape[-1]
        if t.dim() != 2 or r != rank:
            raise ConversionError(f"{where}: {key} has shape {tuple(t.shape)}, not rank r={rank}")
        heads = _heads_of(name, config) if ab == "B" else None
        out[f"{module}.lora.{ab}.weight"] = halves_to_interleaved(t, heads) if heads else t
    if not out:
        raise ConversionError(f"{where}: the adapter holds no lora_A/lora_B tensors")
    out["lora_config"] = {"rank": rank, "alpha": lora_alpha, "dim": config.dim, "scaling": scaling, "init": "standard",
                          "targets": sorted({k.split(".lora.")[0].rsplit(".", 1)[-1] for k in out})}
    return out


# ------------------------------------------------------------------------------------------------
# Folders.


def _write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _read_json(path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise ConversionError(f"{path} not found: a Hugging Face folder has one") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path} cannot be read as JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ConversionError(f"{path} is not a JSON object")
    return obj


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
        for shard in sorted(set(_read_json(index).get("weight_map", {}).values())):
            state.update(read_checkpoint(os.path.join(hf_dir, shard)))
    elif os.path.isfile(legacy):
        state, where = read_checkpoint(legacy), legacy
    else:
        raise ConversionError(f"{hf_dir} holds no model.safetensors (nor an index of shards, nor pytorch_model.bin)")
    return config, from_llama_weights(state, config, where)


def check_chat_template(hf_dir) -> None:
    """Refuse a tokenizer whose chat template is not MiniMind2's: this project renders only that one, so the
    model would be prompted in a format it was not trained on. A folder without a template is fine."""
    config_path, jinja_path = os.path.join(hf_dir, "tokenizer_config.json"), os.path.join(hf_dir, "chat_template.jinja")
    template = _read_json(config_path).get("chat_template") if os.path.isfile(config_path) else None
    if os.path.isfile(jinja_path):  # newer transformers save the template in a file of its own
        with open(jinja_path, encoding="utf-8") as f:
            template = f.read()
    if template is not None and template != MINIMIND2_CHAT_TEMPLATE:
        raise ConversionError(f"{hf_dir}: its chat template is not MiniMind2's, and this project renders only "
                              "MiniMind2's (model/tokenizer.py): the model would be prompted in a format it was not trained on")


def save_peft_folder(out_dir, adapter: dict, config: LMConfig) -> None:
    """Write a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) from our adapter dict."""
    targets = adapter["lora_config"]["targets"]
    if "output" in targets:
        # PEFT would need two adapters, on embed_tokens and lm_head, over one tied matrix: PEFT 0.21 then
        # saves the whole embedding matrix in the adapter file, and its merge_and_unload adds the update to
        # the tied matrix twice (measured by hand: logits off by hundreds). Merged, ΔE is exact.
        raise ConversionError("the adapter adapts the tied embedding ('output' target); as PEFT adapters that is two "
                              "(embed_tokens and lm_head) on one tied matrix, which PEFT's merge adds twice: add --merge "
                              "to export the adapted model as a plain Hugging Face folder, or train with --lora_targets "
                              "wq,wk,wv,wo,w1,w2,w3 for an adapter PEFT and vLLM can load")
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
