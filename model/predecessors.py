"""LoRA's two predecessors, as the baselines the LoRA lab measures it against (docs/lora_lab.md, claim 13).

Both freeze the base model and train a few new parameters, as LoRA does; they differ in *where* the
new parameters act, and that decides what they cost at inference:

    Adapter tuning (Houlsby et al. 2019)   a small bottleneck MLP inserted in series after a layer:
                                           y = h + up(gelu(down(h))),  h = the layer's output.
                                           It sits *between* layers, so it cannot be folded into a
                                           weight: every token pays for the extra depth, always.
    Prefix tuning (Li & Liang 2021)        P trained key/value vectors prepended in every attention
                                           layer: each token also attends to P "virtual tokens".
                                           Nothing to merge either: the prefixes take attention
                                           slots (context) and work at every step.
    LoRA                                   a parallel low-rank update of a weight, W + scale·B·A,
                                           which merges into W: after merging it costs nothing.

    apply_method(model, "adapter", 64)     # wo and w2 of every block get a bottleneck of width 64
    apply_method(model, "prefix", 16)      # every attention layer gets 16 trained key/value pairs
    save_method(model, path); load_method(model, path)

`python -m lab.train_variant --variant adapter|prefix` trains them with LoRA's own loop (--lora_rank is their
size); they plug in through model/lora_variants.py's VARIANTS, like LoRA's own variants;
model/model_lora.py is the real thing.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from formats.checkpoint import CheckpointError, read_checkpoint, save_weights, unwrap
from model.model import Attention, apply_rope

METHODS = ("adapter", "prefix")


class BottleneckAdapter(nn.Module):
    """Houlsby's adapter after one Linear: y = h + up(gelu(down(h))) with h = base(x).

    down: dim -> bottleneck, up: bottleneck -> dim. `up` starts at zero, so the adapter starts as the
    identity and the model as the base (LoRA's B = 0 trick, which Houlsby et al. used first: a
    "near-identity" initialisation). Houlsby puts two per block: after the attention's output
    projection (wo) and after the feed-forward's (w2), each before the residual add.
    """

    def __init__(self, base: nn.Linear, bottleneck: int):
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.out_features, bottleneck).to(base.weight.device, base.weight.dtype)
        self.up = nn.Linear(bottleneck, base.out_features).to(base.weight.device, base.weight.dtype)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        return h + self.up(F.gelu(self.down(h)))  # in series: one more small layer on every token's path


class PrefixAttention(nn.Module):
    """An Attention whose keys and values start with `n_prefix` trained vectors (per kv head).

    The trained prefix is already "rotated": it has no position of its own, so the real tokens keep
    their positions and RoPE is unchanged; every query may look at every prefix entry. Li & Liang
    train the prefix through a small MLP for stability; this minimal version trains it directly,
    starting from small random vectors (so, unlike LoRA and the adapter, it does not start exactly
    at the base model: a share of each query's attention goes to the near-zero prefix values).
    """

    def __init__(self, attention: Attention, n_prefix: int):
        super().__init__()
        self.attention = attention
        weight = attention.wk.weight
        shape = (attention.n_kv_heads, n_prefix, attention.head_dim)  # (K, P, D), like a cache's (B, K, S, D) row
        self.prefix_k = nn.Parameter(torch.randn(shape, device=weight.device, dtype=weight.dtype) * 0.02)
        self.prefix_v = nn.Parameter(torch.randn(shape, device=weight.device, dtype=weight.dtype) * 0.02)

    def forward(self, x, rotations, mask=None, cache=None, layer: int = 0):
        a = self.attention
        B, T, _ = x.shape
        q = a.wq(x).view(B, T, a.n_heads, a.head_dim)
        k = a.wk(x).view(B, T, a.n_kv_heads, a.head_dim)
        v = a.wv(x).view(B, T, a.n_kv_heads, a.head_dim)
        q, k = apply_rope(q, rotations), apply_rope(k, rotations)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|K, T, D)
        if cache is not None:
            k, v = cache.write(layer, k, v)  # the cache holds the real tokens only; the prefix is added below
        S = k.shape[2]
        if mask is None:  # plain causal (S == T), or new tokens that see everything cached before them
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)[None, None]
        P = self.prefix_k.shape[1]
        k = torch.cat([self.prefix_k.expand(B, -1, -1, -1), k], dim=2)  # (B, K, P + S, D)
        v = torch.cat([self.prefix_v.expand(B, -1, -1, -1), v], dim=2)
        sees_prefix = torch.ones(*mask.shape[:-1], P, dtype=torch.bool, device=x.device)
        mask = torch.cat([sees_prefix, mask], dim=-1)  # (B|1, 1, T, P + S): every query sees the prefix
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=a.n_rep > 1,
                                             dropout_p=a.attn_dropout_p if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, T, -1)
        return a.resid_dropout(a.wo(out))


def apply_method(model: nn.Module, method: str, size: int) -> None:
    """Add `method`'s trainable parts to every block of `model`, in place, and freeze everything else.
    size: the adapter's bottleneck width, or the number of prefix vectors per layer."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not (isinstance(size, int) and size > 0):
        raise ValueError(f"the {method}'s size must be a positive integer, got {size!r}")
    bare = unwrap(model)
    for p in bare.parameters():
        p.requires_grad_(False)
    for block in bare.layers:
        if method == "adapter":
            block.attention.wo = BottleneckAdapter(block.attention.wo, size)
            block.feed_forward.w2 = BottleneckAdapter(block.feed_forward.w2, size)
        else:
            block.attention = PrefixAttention(block.attention, size)
    bare.method_config = {"method": method, "size": size, "dim": bare.config.dim}


def method_state(model: nn.Module) -> dict:
    """The trained tensors and {"method_config": {"method", "size", "dim"}}: what an adapter file of this kind holds."""
    bare = unwrap(model)
    state = {name: p.detach().cpu() for name, p in bare.named_parameters() if p.requires_grad}
    state["method_config"] = dict(bare.method_config)
    return state


def save_method(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the trained parts (not the base) to `path`, atomically."""
    save_weights(method_state(model), path)


def load_method(model: nn.Module, path: str | os.PathLike) -> None:
    """Add the file's method to a base model and load its trained tensors (a file made by save_method)."""
    state = read_checkpoint(path)
    config = state.pop("method_config", None)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not an adapter-tuning or prefix-tuning file (no method_config)")
    if config.get("dim") != model.config.dim:
        raise CheckpointError(f"{path} was trained on a model with dim={config.get('dim')}, this one has dim={model.config.dim}")
    apply_method(model, config["method"], config["size"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    if unexpected or trained - state.keys():
        raise CheckpointError(f"{path} does not fit this model (unexpected {unexpected[:3]}, missing {sorted(trained - state.keys())[:3]})")
