"""LoRA (Low-Rank Adaptation), the whole idea in one file.

Fine-tuning changes a weight matrix W (out x in) into W + ΔW. LoRA bets that the useful ΔW has low
rank r and trains it as two thin matrices while W stays frozen: ΔW = (alpha / r) · B · A, with
A (r, in) and B (out, r). For MiniMind2-Small's wq (512 x 512) at r = 16 that is 16,384 trainable
numbers instead of 262,144, and an adapter file holds only those, so one base wears many adapters:

    apply_lora(model, rank=16); mark_only_lora_as_trainable(model)   # then train; B = 0 at first
    save_lora(model, "out/lora/lora_medical_512.pth")
    load_lora(model, "out/lora/lora_identity_512.pth")   # switch: the file says which adapters it is
    remove_lora(model)                                    # none: exactly the base model again

Variants (other initialisations, PiSSA) and LoRA's predecessors live beside it in model/lora_variants.py
and plug in through apply_lora's `layer_class`; an adapter file's contents and checks: formats/adapter_file.py."""
import collections
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from formats.adapter_file import adapter_contents, check_fits, check_loadable, read_lora_file
from formats.checkpoint import base_fingerprint, save_weights, unwrap

# The update's scale: alpha / rank (Hu et al.), or rsLoRA's alpha / sqrt(rank) (Kalajdzievski 2023: B·A·x sums
# `rank` terms not all aligned, so it grows like sqrt(rank), and large ranks learn slower under alpha / rank).
SCALINGS = {"standard": lambda alpha, rank: alpha / rank, "rslora": lambda alpha, rank: alpha / math.sqrt(rank)}


class LoRA(nn.Module):
    """The low-rank update ΔW = B · A as two bias-free Linears, exactly MiniMind2's module:
    A (rank, in) ~ normal(0, 0.02), B (out, rank) = 0.

    B = 0, so B·A = 0 and the adapted model starts *exactly* as the base model. A must then be random:
    with g = dLoss/d(output), dLoss/dB = g · (A x)ᵀ and dLoss/dA = Bᵀ · g · xᵀ, so were both zero, both
    gradients would stay zero forever; with A random, B moves at the first step, and A after it.
    """

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.A = nn.Linear(in_features, rank, bias=False)   # down-projection: x (.., in) -> (.., rank)
        self.B = nn.Linear(rank, out_features, bias=False)  # up-projection: (.., rank) -> (.., out)
        nn.init.normal_(self.A.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self.A(x))  # (.., in) -> (.., rank) -> (.., out): never builds the (out, in) matrix


class LoRALinear(nn.Linear):
    """An nn.Linear whose frozen weight W gets a trainable low-rank update beside it:

        y = W x  +  scale · B(A(dropout(x)))        scale = alpha / rank (SCALINGS); alpha = rank: MiniMind2's 1

    It *is* an nn.Linear holding the base layer's own `weight` Parameter (the same tensor), so the key
    `...wq.weight` is unchanged and weight tying survives; the adapter adds `...wq.lora.A.weight` and
    `...wq.lora.B.weight`, MiniMind2's names. Dropout acts on the adapter's input only.
    """

    init = "standard"  # how A and B start, recorded in the file (model/lora_variants.py has the others)
    changes_base = False  # whether making the adapter changed W (PiSSA does): then it cannot be swapped for another

    def __init__(self, base: nn.Linear, rank: int, alpha: float = None, dropout: float = 0.0, scaling: str = "standard"):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")  # allocates nothing:
        self.weight, self.bias = base.weight, base.bias  # the base layer's own Parameters take the placeholders' place
        self.rank, self.alpha, self.scaling = rank, rank if alpha is None else alpha, scaling
        self.scale = SCALINGS[scaling](self.alpha, rank)
        # the adapter lives where W lives, in W's dtype, so x can flow through both paths
        self.lora = LoRA(base.in_features, base.out_features, rank).to(base.weight.device, base.weight.dtype)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        object.__setattr__(self, "base_layer", base)  # given back by to_linear: a plain reference, not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)  # the frozen base path: W x
        if self.merged:
            if self.training and torch.is_grad_enabled() and self.lora.A.weight.requires_grad:
                # A and B are not on the merged path: an optimizer would run and the adapter stay as it is
                raise RuntimeError("training a merged LoRA layer would never update its adapter: "
                                   "call unmerge_lora(model) first (or remove_lora(model) to train the merged weights)")
            return y  # scale·B·A is already inside W
        return y + self.scale * self.lora(self.dropout(x))

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scale · B · A, (out, in) like W; its rank is at most `rank` (every column mixes B's columns)."""
        return self.scale * (self.lora.B.weight @ self.lora.A.weight)  # (out, rank) @ (rank, in)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + ΔW: forward is then one matmul, the base layer's cost. Merging twice is a no-op."""
        if not self.merged:
            self.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - ΔW: back to the base weight, up to float rounding (about 1e-7 relative)."""
        if self.merged:
            self.weight.sub_(self.delta_weight())
            self.merged = False

    def saved_factors(self) -> tuple:
        """(A, B, rank, alpha) as an adapter file holds them; a variant that changed W saves more (PiSSA)."""
        return self.lora.A.weight.detach(), self.lora.B.weight.detach(), self.rank, self.alpha

    def to_linear(self) -> nn.Linear:
        """The layer apply_lora replaced, holding this layer's own weight Parameters; the adapter is dropped."""
        self.base_layer.weight, self.base_layer.bias = self.weight, self.bias
        return self.base_layer


class LoRAEmbedding(nn.Embedding):
    """The embedding whose table E is also an adapted output layer's weight (MiniMind ties
    tok_embeddings.weight to output.weight, (vocab, dim)). One matrix gets one update, ΔE = scale·B·A,
    held by the output layer's LoRALinear; the lookup reads E + ΔE without ever building ΔE:

        embedding(ids) = E[ids]  +  scale · B[ids] · A        B[ids]: (.., rank) -> (.., dim)

    Both uses read one ΔE, so merging stays exact. It lets an adapter move what words *mean* (docs/experiments.md).
    """

    def __init__(self, base: nn.Embedding, tied_output: LoRALinear):
        super().__init__(base.num_embeddings, base.embedding_dim, base.padding_idx, device="meta")
        self.weight = base.weight  # the very same Parameter as tied_output.weight
        object.__setattr__(self, "tied_output", tied_output)  # not a submodule: A and B are saved once, under output

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = F.embedding(ids, self.weight, self.padding_idx)
        adapter = self.tied_output
        if adapter.merged:
            return x  # ΔE is already inside E
        rows_of_B = F.embedding(ids, adapter.lora.B.weight)  # (.., rank): B's rows for these tokens
        return x + adapter.scale * (rows_of_B @ adapter.lora.A.weight)  # (.., rank) @ (rank, dim)

    def to_embedding(self) -> nn.Embedding:
        """A plain nn.Embedding holding this layer's own weight Parameter (so the tie survives)."""
        embedding = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx, device="meta")
        embedding.weight = self.weight
        return embedding


def apply_lora(model: nn.Module, rank: int = 16, alpha: float = None, dropout: float = 0.0, target_modules: list = None,
               scaling: str = "standard", layer_class=LoRALinear, rank_pattern: dict = None) -> None:
    """Put a LoRA adapter beside chosen nn.Linear layers of `model`, in place (before any DDP or compile
    wrapper); B = 0, so nothing changes yet. alpha None means alpha = rank (scale 1, MiniMind2's).

    target_modules=None: every square Linear, MiniMind2's rule (wq and wo in MiniMind2-Small: with 2 kv
    heads wk/wv are (128, 512)). ["wq", "w1", ...]: the Linears of these names; "output" also adapts
    tok_embeddings, its tied weight (a LoRAEmbedding). layer_class: LoRALinear or a variant (lora_variants.py).
    rank_pattern: {layer name: rank} for layers of another rank (a budget spread by importance); one alpha for all."""
    model = unwrap(model)
    chosen = _select_linears(model, target_modules)
    ranks = {**{name: rank for name in chosen}, **(rank_pattern or {})}  # each layer's
    for bad, problem in [(not all(isinstance(r, int) and r > 0 for r in ranks.values()), f"ranks must be positive "
                          f"integers, got {rank!r} and rank_pattern {rank_pattern}"),
                         (len(ranks) > len(chosen), f"rank_pattern names layers not adapted: {sorted(set(ranks) - set(chosen))}"),
                         (alpha is not None and not alpha > 0, f"alpha must be positive (or None: rank), got {alpha!r}"),
                         (not 0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout!r}"),
                         (scaling not in SCALINGS, f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")]:
        if bad:
            raise ValueError(problem)
    if lora_layers(model):
        raise ValueError("the model already has LoRA adapters; call remove_lora(model) first to replace them")
    tied = _tied_embeddings(model, chosen)
    model.lora_base = base_fingerprint(model)  # the weights it is born on: load_lora refuses others
    for name, linear in chosen.items():  # a quantized Linear names its own LoRA layer (QLoRA: formats/quantize.py)
        make = linear.lora_layer(layer_class) if hasattr(linear, "lora_layer") else layer_class
        _replace(model, name, make(linear, ranks[name], rank if alpha is None else alpha, dropout, scaling).train(linear.training))
    for emb_name, linear_name in tied.items():
        embedding = model.get_submodule(emb_name)
        _replace(model, emb_name, LoRAEmbedding(embedding, model.get_submodule(linear_name)).train(embedding.training))


def mark_only_lora_as_trainable(model: nn.Module) -> None:
    """Freeze every parameter except the adapters' A and B: frozen weights get no .grad and no optimizer
    state, which is where LoRA saves its memory. With DDP, call it before wrapping the model."""
    layers = lora_layers(model)
    if not layers or any(layer.merged for _, layer in layers):  # merged, W x alone: A and B get no gradient
        raise ValueError("the model has no LoRA adapters to train, or they are merged into its weights (so training "
                         "would not update them); call apply_lora(model), or unmerge_lora(model), first")
    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in layers:
        layer.lora.requires_grad_(True)


def lora_state_dict(model: nn.Module) -> dict:
    """The adapter tensors only, MiniMind2's keys: {"layers.0.attention.wq.lora.A.weight": (rank, in), ...}"""
    state = {}
    for name, layer in lora_layers(model):
        state[f"{name}.lora.A.weight"], state[f"{name}.lora.B.weight"], _, _ = layer.saved_factors()
    return state


def adapter_state(model: nn.Module) -> dict:
    """What an adapter file holds: lora_state_dict's tensors (on the CPU) and the "lora_config" load_lora
    rebuilds the adapters from (rank, alpha, targets, dim, scaling, init, the base's fingerprint)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to save; call apply_lora(model) first")
    return adapter_contents(layers, lora_state_dict(model), unwrap(model))


def save_lora(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the model's adapter (not the base weights) to `path`, atomically; .safetensors gives a
    safetensors file. MiniMind2's load_lora picks only keys containing "{module}.lora.": it reads these too."""
    save_weights(adapter_state(model), path)


def load_lora(model: nn.Module, path: str | os.PathLike | dict, dropout: float = 0.0, allow_other_base: bool = False) -> None:
    """Put the adapter in `path` (a file of save_lora's or MiniMind2's, or such a dict) on `model`.

    The file says what it is: the model's adapters become its rank, alpha, scaling and layers (with
    `dropout`, which files do not record). Adapters already there are replaced (unmerged, W is untouched:
    this is switching adapters), so MiniMind2's `apply_lora(model, rank=16); load_lora(model, path)` loads
    any adapter. A file that is malformed, does not fit, or was trained on another base (its A and B mean
    something only on those weights; allow_other_base=True) is one CheckpointError: formats/adapter_file.py.
    """
    where = "the adapter" if isinstance(path, dict) else str(path)
    state, config = read_lora_file(path)
    bare = unwrap(model)
    check_loadable(config, bare, [layer for _, layer in lora_layers(bare)], SCALINGS, allow_other_base, where)
    check_fits(state, config, lambda: _select_linears(bare, config["targets"]), where)
    remove_lora(bare)  # the file decides the adapters; those there (unmerged) leave W as it was
    apply_lora(bare, config["rank"], config["alpha"], dropout, config["targets"], config["scaling"], rank_pattern=config["rank_pattern"])
    with torch.no_grad():
        for name, layer in lora_layers(bare):  # copy_ converts dtype and device (MiniMind saves float16)
            layer.lora.A.weight.copy_(state[f"{name}.lora.A.weight"])
            layer.lora.B.weight.copy_(state[f"{name}.lora.B.weight"])


def merge_lora(model: nn.Module) -> None:
    """W <- W + scale·B·A in every adapted layer: the model then costs exactly what the base costs (no
    added latency), equal to the unmerged one up to rounding. To save it as a plain model, remove_lora
    then save_model (a merged model's state dict still holds the adapter keys)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to merge; call apply_lora or load_lora first")
    for _, layer in layers:
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """W <- W - scale·B·A in every merged layer, back to the base up to rounding (for bit-exact: never merge)."""
    for _, layer in lora_layers(model):
        layer.unmerge()


def remove_lora(model: nn.Module) -> None:
    """Put back the plain Linear and Embedding layers, holding the same weight Parameters; drop the adapters.
    Unmerged: exactly the base model again, bit for bit ("no adapter" when switching). Merged: a plain
    MiniMindLM with the merged weights, which save_model writes as any MiniMind2 checkpoint."""
    bare = unwrap(model)
    bare.__dict__.pop("lora_base", None)  # apply_lora's record of the base: no adapter, no record
    for name, layer in list(bare.named_modules()):
        if isinstance(layer, LoRALinear):
            _replace(bare, name, layer.to_linear().train(layer.training))
        elif isinstance(layer, LoRAEmbedding):
            _replace(bare, name, layer.to_embedding().train(layer.training))


def lora_layers(model: nn.Module) -> list:
    """[(dotted name, layer)] of every LoRALinear, e.g. [("layers.0.attention.wq", LoRALinear), ...]."""
    return [(name, m) for name, m in unwrap(model).named_modules() if isinstance(m, LoRALinear)]


def _select_linears(model: nn.Module, target_modules) -> dict:
    """{dotted name: nn.Linear} to adapt: the square ones when target_modules is None (MiniMind2's rule),
    else those whose own name (the last part of the dotted name) is listed."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if target_modules is None:
        chosen = {name: m for name, m in linears.items() if m.in_features == m.out_features}
        if not chosen:
            raise ValueError("the model has no square nn.Linear to adapt; name the layers with target_modules=[...]")
        return chosen
    known = {name.rsplit(".", 1)[-1] for name in linears}
    unknown = sorted(set(target_modules) - known)
    if unknown:
        raise ValueError(f"target_modules {unknown} match no nn.Linear in this model; its Linear layers are named {sorted(known)}")
    return {name: m for name, m in linears.items() if name.rsplit(".", 1)[-1] in target_modules}


def _tied_embeddings(model: nn.Module, chosen: dict) -> dict:
    """{embedding name: Linear name} for each chosen Linear whose weight an nn.Embedding shares (MiniMind ties
    tok_embeddings to output): that embedding must read the same adapter, or merging would change it alone.
    A weight shared any other way cannot take an adapter: merging would change its other user too."""
    users = collections.Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    embeddings = {id(m.weight): name for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    for name, linear in chosen.items():
        if users[id(linear.weight)] > 1 and not (users[id(linear.weight)] == 2 and id(linear.weight) in embeddings):
            raise ValueError(f"{name}.weight is shared with another layer that is not an nn.Embedding; "
                             f"LoRA on it is not supported, leave {name.rsplit('.', 1)[-1]!r} out of target_modules")
    return {embeddings[id(linear.weight)]: name for name, linear in chosen.items() if id(linear.weight) in embeddings}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule called `name` (e.g. "layers.0.attention.wq") is."""
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, new)
