"""LoRA (Low-Rank Adaptation), the whole idea in one file.

Fine-tuning changes a weight matrix W (out x in) into W + ΔW. LoRA bets that the useful ΔW has low
rank r and writes it as a product of two thin matrices:

    ΔW = (alpha / r) · B · A        A: (r, in)   B: (out, r)   r << in, out

W stays frozen; only A and B are trained. For MiniMind2-Small's wq (512 x 512) and r = 16 that is
2 · 16 · 512 = 16,384 trainable numbers instead of 262,144, and the optimizer keeps state for those
alone. An adapter file holds only A and B, so one base model can wear many small adapters.

Read top to bottom:
    LoRA                 the two thin matrices A and B (MiniMind2's module, same state-dict keys)
    LoRALinear           an nn.Linear with a LoRA beside its frozen weight; forward = W x + scale·B A x
    LoRAEmbedding        the embedding tied to an adapted output layer reads E + ΔE through that same adapter
    apply_lora           swap chosen nn.Linear layers of a model for LoRALinear ones (and a tied embedding
                         for a LoRAEmbedding)
    training helper      mark_only_lora_as_trainable (count_parameters and trainable_parameters_report,
                         which say how few parameters that leaves, live in model/model.py)
    adapter files        lora_state_dict, adapter_state, save_lora, load_lora (MiniMind2's own files load
                         unchanged; .safetensors files too)
    merge / unmerge      fold ΔW into W, so inference costs exactly what the base model costs; and back
    remove_lora          drop the adapters, back to the plain model

Several adapters on one base (e.g. a chat UI offering "medical", "identity" and "none"): one adapter
is active at a time, and switching never reloads the base weights, because they are never modified:

    load_lora(model, "out/lora/lora_medical_512.pth")    # medical
    remove_lora(model); load_lora(model, "out/lora/lora_identity_512.pth")    # identity
    remove_lora(model)                                    # none: exactly the base model again

`load_lora` also accepts an adapter already read into memory (a dict, e.g. from `lora_state_dict`),
so the files need only be read once. Do not merge adapters you mean to switch: `remove_lora` keeps
whatever is merged into the weights.

Typical use (this is what train_lora.py does):

    model = MiniMindLM(LMConfig(dim=512, n_layers=8))     # then load the SFT weights into it
    apply_lora(model, rank=16)                            # wq and wo get adapters (MiniMind2's rule)
    mark_only_lora_as_trainable(model)
    print(trainable_parameters_report(model))
    ...train, optimising [p for p in model.parameters() if p.requires_grad]...
    save_lora(model, "out/lora/lora_medical_512.pth")
"""
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.checkpoint import (CheckpointError, check_finite, clean_state_dict, read_checkpoint, save_weights, unwrap,
                              weights_fingerprint)
# Not LoRA concepts, but long imported from here (e.g. by train_lora.py): re-exported.
from model.model import count_parameters, trainable_parameters_report  # noqa: F401
from model.model import linear


INITS = ("standard", "swapped", "zeros", "pissa")  # how A and B start: LoRALinear.initialise
SCALINGS = ("standard", "rslora")  # alpha / rank, or rsLoRA's alpha / sqrt(rank): LoRALinear.scale


class LoRA(nn.Module):
    """The low-rank update ΔW = B · A as two bias-free Linears, exactly MiniMind2's module.

    A: in_features -> rank, initialised normal(0, 0.02); B: rank -> out_features, initialised to 0.
    (nn.Linear stores its weight as (out, in), so A.weight is (rank, in) and B.weight is (out, rank).)

    Why B starts at zero: then B·A = 0 and the adapted model starts *exactly* as the base model, so
    training begins from the checkpoint's behaviour rather than from a randomly disturbed copy of it.

    Why A must then start non-zero: with g = dLoss/d(output) of the layer and x its input,
        dLoss/dB = g · (A x)ᵀ        dLoss/dA = Bᵀ · g · xᵀ
    If A and B were both zero, both gradients would be zero forever and nothing would train. With A
    random, B gets a gradient on the first step; once B is non-zero, A gets one too.

    >>> lora = LoRA(in_features=4, out_features=6, rank=2)
    >>> lora.A.weight.shape, lora.B.weight.shape
    (torch.Size([2, 4]), torch.Size([6, 2]))
    >>> lora(torch.ones(3, 4)).abs().max().item()    # B = 0: the update starts at exactly zero
    0.0
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

        y = W x  +  scale · B(A(dropout(x)))        scale = alpha / rank

    It *is* an nn.Linear and keeps the base layer's own `weight` Parameter (the same tensor object,
    not a copy), so the base key `layers.0.attention.wq.weight` is unchanged and weight sharing or an
    optimizer's reference to W survive. The adapter adds the keys `...wq.lora.A.weight` and
    `...wq.lora.B.weight`, MiniMind2's names.

    scale = alpha / rank: the update B A x is a sum over `rank` terms, so its size grows with the
    rank; dividing by the rank lets you change the rank without retuning the learning rate, and alpha
    is the knob for the update's strength. alpha = rank (the default) gives scale 1, MiniMind2's
    unscaled `base(x) + B(A(x))`.

    dropout is applied to the adapter's input only: it regularises the small update and leaves the
    base path exactly as it was.

    merged: `merge()` adds scale·B·A into W once; forward is then a single matmul, exactly the cost
    of the base layer (no extra latency at inference). `unmerge()` subtracts it again.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, dropout: float = 0.0,
                 init: str = "standard", scaling: str = "standard"):
        # device="meta" allocates nothing: the placeholder weight/bias are replaced just below by the
        # base layer's own Parameters, so no memory is copied and W stays the very same tensor.
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight
        self.bias = base.bias
        self.rank = rank
        self.alpha = rank if alpha is None else alpha
        self.scaling = scaling
        # The adapter lives where W lives, in W's dtype, so x can flow through both paths.
        self.lora = LoRA(base.in_features, base.out_features, rank).to(base.weight.device, base.weight.dtype)
        self.init = init
        self.pissa_start = None  # PiSSA: (A0, B0), the principal part taken out of W (see initialise)
        self.initialise(init)
        # nn.Identity when there is no dropout, so the default adds no work to the forward pass.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        # The layer this one replaces (e.g. model.model.Linear), given back by to_linear. A plain
        # reference, not a submodule: its weight is already this layer's, and must be saved once.
        object.__setattr__(self, "base_layer", base)

    @property
    def scale(self) -> float:
        """alpha / rank ("standard"), or rsLoRA's alpha / sqrt(rank) ("rslora", Kalajdzievski 2023).

        Why rsLoRA: with A and B trained, B·A·x is a sum of `rank` terms whose sizes are about equal
        and not all aligned, so it grows like sqrt(rank), not like rank. Dividing by rank then shrinks
        the update (and its gradients) as the rank grows, and a large rank learns slower than a small
        one at the same learning rate; dividing by sqrt(rank) keeps its size steady across ranks.
        docs/lora_lab.md measures both over ranks 1 to 64."""
        return self.alpha / (math.sqrt(self.rank) if self.scaling == "rslora" else self.rank)

    @torch.no_grad()
    def initialise(self, init: str) -> None:
        """Set A and B for a new adapter; every choice but PiSSA makes B·A = 0, so the model starts as the base.

        "standard": A ~ normal(0, 0.02), B = 0 (Hu et al. 2021, MiniMind2): B gets a gradient at once.
        "swapped":  A = 0, B ~ normal(0, 0.02): also starts at the base; A is trained first instead.
        "zeros":    A = B = 0: both gradients are zero (see LoRA's docstring), so nothing ever trains.
        "pissa":    the top-`rank` singular directions of W itself (Meng et al. 2024): W = U S Vᵀ,
                    scale·B·A = U_r S_r V_rᵀ, and W keeps only the rest, W - scale·B·A. The output is
                    unchanged at step 0, but the adapter starts on W's principal part instead of at 0.
        """
        if init == "standard":
            return  # LoRA's own initialisation
        if init == "swapped":
            nn.init.zeros_(self.lora.A.weight)
            nn.init.normal_(self.lora.B.weight, mean=0.0, std=0.02)
        elif init == "zeros":
            nn.init.zeros_(self.lora.A.weight)
        elif init == "pissa":
            U, S, Vh = torch.linalg.svd(self.weight.float(), full_matrices=False)  # W (out, in) = U diag(S) Vh
            root = (S[: self.rank] / self.scale).sqrt()  # scale·B·A = U_r diag(S_r) Vh_r
            self.lora.A.weight.copy_(root[:, None] * Vh[: self.rank])  # (r, in)
            self.lora.B.weight.copy_(U[:, : self.rank] * root[None, :])  # (out, r)
            self.pissa_start = (self.lora.A.weight.clone(), self.lora.B.weight.clone())
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))  # W <- W_res: the output is unchanged
        else:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the frozen base path: W x (model.linear: F.linear, or torch.mv for one bfloat16 row on a CPU)
        y = linear(x, self.weight) if self.bias is None else F.linear(x, self.weight, self.bias)
        if self.merged:
            if self.training and torch.is_grad_enabled() and self.lora.A.weight.requires_grad:
                # A and B are not on the merged path, so they would get no gradient: an optimizer
                # would run, the loss would move (if W trains) and the adapter would stay as it is.
                raise RuntimeError("training a merged LoRA layer would never update its adapter: "
                                   "call unmerge_lora(model) first (or remove_lora(model) to train the merged weights)")
            return y  # scale·B·A is already inside W
        return y + self.scale * self.lora(self.dropout(x))

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scale · B · A, shaped (out, in) like W. Its rank is at most `rank`: every column of
        B·A is a combination of B's `rank` columns."""
        return self.scale * (self.lora.B.weight @ self.lora.A.weight)  # (out, rank) @ (rank, in) -> (out, in)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + scale·B·A. A merged layer is left alone (merging twice would add ΔW twice)."""
        if not self.merged:
            self.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - scale·B·A: W back to the base weight, up to float rounding (about 1e-7 relative)."""
        if self.merged:
            self.weight.sub_(self.delta_weight())
            self.merged = False

    def saved_factors(self) -> tuple:
        """(A, B, rank, alpha) as an adapter file holds them. For every init but PiSSA that is simply A
        and B. PiSSA trained W_res + scale·B·A where W_res = W - scale·B0·A0, so the change to the
        untouched base W is scale·(B·A - B0·A0): one adapter of rank 2r, A' = [A; A0], B' = [B, -B0]
        (PEFT saves PiSSA the same way), with alpha chosen so the scale is the same. The file is then
        an ordinary adapter: load_lora, merging and MiniMind2's loader need to know nothing of PiSSA."""
        A, B = self.lora.A.weight.detach(), self.lora.B.weight.detach()
        if self.pissa_start is None:
            return A, B, self.rank, self.alpha
        A0, B0 = self.pissa_start
        rank = 2 * self.rank
        alpha = self.scale * (math.sqrt(rank) if self.scaling == "rslora" else rank)
        return torch.cat([A, A0]), torch.cat([B, -B0], dim=1), rank, alpha

    def to_linear(self) -> nn.Linear:
        """The layer apply_lora replaced, of its own class (model.model.Linear for MiniMind's layers),
        holding this layer's own weight (and bias) Parameters; the adapter is dropped. A PiSSA layer
        that is not merged puts W's principal part back first, so W is the base again (up to rounding)."""
        if self.pissa_start is not None and not self.merged:
            with torch.no_grad():
                A0, B0 = self.pissa_start
                self.weight.add_((self.scale * (B0 @ A0)).to(self.weight.dtype))
            self.pissa_start = None
        self.base_layer.weight = self.weight
        self.base_layer.bias = self.bias
        return self.base_layer

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, scaling={self.scaling}, "
                f"init={self.init}, merged={self.merged}")


class LoRAEmbedding(nn.Embedding):
    """The other half of a tied weight: an nn.Embedding whose table E is also the weight of an adapted
    output layer (in MiniMind, tok_embeddings.weight IS output.weight, shape (vocab, dim)).

    One matrix gets one update. The output layer's LoRALinear holds it, ΔE = scale · B · A with
    B: (vocab, rank) and A: (rank, dim), and this layer looks its rows up in E + ΔE:

        embedding(ids) = E[ids]  +  scale · B[ids] · A        B[ids]: (.., rank)  ->  (.., dim)

    so the (vocab, dim) ΔE is never built. Because both uses read the same ΔE, merging stays exact:
    merge() adds ΔE into the shared E once, and the lookup and the output both see it. The output
    layer's `dropout` (on its input h) has no counterpart here: a token id has nothing to drop.

    Why adapt the embedding at all: a frozen E fixes what every token *means* to the model. When the
    pretraining text used some words in identical contexts (the demo's department names), their rows
    are nearly alike, and adapters inside the blocks barely tell them apart at the output; a rank-16
    ΔE does (docs/experiments.md has the measurements).
    """

    def __init__(self, base: nn.Embedding, tied_output: LoRALinear):
        super().__init__(base.num_embeddings, base.embedding_dim, base.padding_idx, base.max_norm,
                         base.norm_type, base.scale_grad_by_freq, base.sparse, device="meta")
        self.weight = base.weight  # the very same Parameter as tied_output.weight
        # A plain reference, not a submodule: A and B belong to the output layer, so they appear once in
        # the state dict and in model.parameters() (as output.lora.A/B.weight).
        object.__setattr__(self, "tied_output", tied_output)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = F.embedding(ids, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                        self.scale_grad_by_freq, self.sparse)
        adapter = self.tied_output
        if adapter.merged:
            return x  # ΔE is already inside E
        rows_of_B = F.embedding(ids, adapter.lora.B.weight)  # (.., rank): B's rows for these tokens
        return x + adapter.scale * (rows_of_B @ adapter.lora.A.weight)  # (.., rank) @ (rank, dim)

    def to_embedding(self) -> nn.Embedding:
        """A plain nn.Embedding holding this layer's own weight Parameter (so the tie survives)."""
        embedding = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx, self.max_norm,
                                 self.norm_type, self.scale_grad_by_freq, self.sparse, device="meta")
        embedding.weight = self.weight
        return embedding

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, adapter shared with its tied output layer"


def _lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """[(dotted name, layer)] of every LoRALinear, e.g. [("layers.0.attention.wq", LoRALinear), ...]."""
    return [(name, m) for name, m in unwrap(model).named_modules() if isinstance(m, LoRALinear)]


def _select_linears(model: nn.Module, target_modules: list[str] | None) -> dict[str, nn.Linear]:
    """The nn.Linear layers apply_lora adapts, by dotted name: the square ones when target_modules is
    None (MiniMind2's rule), else those whose own name (the last part of the dotted name) is listed."""
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


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule called `name` (e.g. "layers.0.attention.wq") is."""
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, new)


def _tied_embeddings(model: nn.Module, chosen: dict[str, nn.Linear]) -> dict[str, str]:
    """{embedding name: Linear name} for each chosen Linear whose weight an nn.Embedding shares (weight
    tying, e.g. MiniMind's tok_embeddings.weight IS output.weight). A weight shared in any other way
    cannot take an adapter: merging edits the one tensor, so it would change its other user too."""
    times_used: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        times_used[id(p)] = times_used.get(id(p), 0) + 1
    embeddings = {id(m.weight): name for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    tied = {}
    for name, linear in chosen.items():
        if times_used[id(linear.weight)] == 1:
            continue
        if times_used[id(linear.weight)] == 2 and id(linear.weight) in embeddings:
            tied[embeddings[id(linear.weight)]] = name
        else:
            raise ValueError(f"{name}.weight is shared with another layer that is not an nn.Embedding; "
                             f"LoRA on it is not supported, leave {name.rsplit('.', 1)[-1]!r} out of target_modules")
    return tied


def apply_lora(model: nn.Module, rank: int = 16, alpha: float | None = None, dropout: float = 0.0,
               target_modules: list[str] | None = None, init: str = "standard", scaling: str = "standard") -> None:
    """Put a LoRA adapter beside chosen nn.Linear layers of `model`, in place.

    target_modules=None: every square Linear, MiniMind2's rule. In MiniMind2-Small (dim 512, 8 heads,
    2 kv heads) that is wq and wo (512 x 512); wk/wv are (128, 512) because of grouped-query attention,
    and the FFN is (1408, 512) / (512, 1408).
    target_modules=["wq", "wk", "wv", "wo", "w1", "w2", "w3"]: the Linears with these names in every
    layer, non-square ones included; A is (rank, in_features) and B (out_features, rank) of each layer,
    so the orientation follows the layer's own weight.
    target_modules=[..., "output"]: also the output layer, whose weight MiniMind ties to the token
    embedding. One matrix gets one ΔE, used by both: tok_embeddings becomes a LoRAEmbedding that reads
    the output layer's adapter. It adds rank·(vocab + dim) parameters (34,816 for the demo's vocab
    2048, dim 128 at rank 16) and is what lets an adapter move what words mean (see LoRAEmbedding).
    Mixture-of-experts models (use_moe=True): the default still adapts wq and wo only, as MiniMind2's
    rule does there (experts' Linears are (hidden_dim, dim) / (dim, hidden_dim), the router (E, dim)).
    target_modules=["w1", "w2", "w3"] adapts every routed expert's and the shared expert's, each with
    its own A and B; "gate" adapts the routers (MiniMind2's is a bare Parameter, so only here). A gate
    adapter holds rank·(E + dim) numbers, more than the gate's own E·dim from rank 4 at E = 4, dim = 640.
    alpha: None means alpha = rank, i.e. scale 1, identical to MiniMind2.
    dropout: on the adapter's input only (see LoRALinear).
    init: how A and B start, one of INITS (LoRALinear.initialise); "standard" is MiniMind2's.
    scaling: "standard" (alpha / rank) or "rslora" (alpha / sqrt(rank)), see LoRALinear.scale.

    Adapters start with B = 0, so the model's outputs do not change until training moves B.
    Call it on the bare model before wrapping it in DDP or torch.compile.

    Example: on the dim-64, 2-layer test model, apply_lora(model, rank=4) adapts wq and wo of both
    layers: 2 layers x 2 Linears x (4·64 + 64·4) = 2,048 new parameters.
    """
    model = unwrap(model)
    if not (isinstance(rank, int) and rank > 0):
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"alpha must be positive (or None for alpha = rank), got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
    if _lora_layers(model):
        raise ValueError("the model already has LoRA adapters; call remove_lora(model) first to replace them")

    chosen = _select_linears(model, target_modules)
    tied = _tied_embeddings(model, chosen)
    # Which weights the adapter is born on (before PiSSA changes any W): its file records it, and
    # load_lora refuses to put it on other weights.
    model.lora_base = _fingerprint_or_none(model)
    for name, linear in chosen.items():
        # .train(...): a new module starts in training mode; keep the replaced layer's (eval stays eval)
        _replace(model, name, LoRALinear(linear, rank, alpha, dropout, init, scaling).train(linear.training))
    for emb_name, linear_name in tied.items():
        embedding = model.get_submodule(emb_name)
        _replace(model, emb_name, LoRAEmbedding(embedding, model.get_submodule(linear_name)).train(embedding.training))


def mark_only_lora_as_trainable(model: nn.Module) -> None:
    """Freeze every parameter except the adapters' A and B.

    Frozen weights get no .grad and no optimizer state: that is where LoRA saves its memory. With DDP,
    call this before wrapping the model (DDP records which parameters need gradients when built).
    """
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to train; call apply_lora(model) first")
    if any(layer.merged for _, layer in layers):
        # A merged layer computes W x only: its A and B would receive no gradient and never train.
        raise ValueError("the model's adapters are merged into its weights, so training would not update them; "
                         "call unmerge_lora(model) first")
    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in layers:
        layer.lora.requires_grad_(True)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only, with MiniMind2's keys and no wrapper prefixes:
    {"layers.0.attention.wq.lora.A.weight": (rank, in), "layers.0.attention.wq.lora.B.weight": (out, rank), ...}
    (a PiSSA-initialised adapter as the rank-2r adapter it amounts to, LoRALinear.saved_factors)"""
    state = {}
    for name, layer in _lora_layers(model):
        A, B, _, _ = layer.saved_factors()
        state[f"{name}.lora.A.weight"], state[f"{name}.lora.B.weight"] = A, B
    return state


def adapter_state(model: nn.Module) -> dict:
    """The model's adapter as the dict an adapter file holds: the lora_state_dict tensors (on the CPU) plus
    one entry
        "lora_config": {"rank": 16, "alpha": 16, "targets": ["wo", "wq"], "dim": 512,
                        "scaling": "standard", "init": "standard", "base": "sha256:3f2a9c0d1b7e4a55"}
    that load_lora uses to rebuild the adapters (with the scale they were trained under) and to refuse
    a model of another size, or other weights than the base it was trained on ("base", the
    fingerprint apply_lora took). "init" is a record of how training started; a PiSSA adapter is saved as
    the ordinary rank-2r adapter it amounts to (LoRALinear.saved_factors), so rank and alpha are its. load_lora takes
    this dict back as it is; convert_model.py turns it into a PEFT folder. The tensors are the adapter's
    own (not copies) when the model is on the CPU.
    """
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to save; call apply_lora(model) first")
    config = getattr(unwrap(model), "config", None)
    state = {key: tensor.cpu() for key, tensor in lora_state_dict(model).items()}
    first = layers[0][1]
    _, _, rank, alpha = first.saved_factors()
    state["lora_config"] = {
        "rank": rank,
        "alpha": alpha,
        "targets": sorted({name.rsplit(".", 1)[-1] for name, _ in layers}),
        "dim": getattr(config, "dim", None),
        "scaling": first.scaling,
        "init": first.init,
        "base": getattr(unwrap(model), "lora_base", None),
    }
    return state


def save_lora(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the model's adapter (not the base weights), adapter_state(model), to `path`, atomically.

    MiniMind2's own load_lora picks only the keys containing "{module}.lora.", so it reads these files
    unchanged. A path ending in .safetensors gives a safetensors file instead, with lora_config in its
    metadata. Saved whether or not the adapters are merged: A and B are the same either way.
    """
    save_weights(adapter_state(model), path)


def _few(items: list[str], n: int = 3) -> str:
    """'a, b, c and 5 more': keeps an error message to one readable line."""
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def read_lora_file(path: str | os.PathLike | dict) -> tuple[dict, dict]:
    """An adapter file (or such a dict in memory) -> (its tensors, its settings), checked:

        settings = {"rank": 16, "alpha": 16.0, "targets": ["wo", "wq"], "dim": 512,
                    "scaling": "standard", "base": "sha256:3f2a9c0d1b7e4a55" or None}

    A file of this project carries them in its "lora_config". A MiniMind2 file carries none: its rank
    is read from the tensors' shapes (A is (rank, in)), its targets from the key names, alpha = rank
    (MiniMind2 does not scale), and no base is recorded. A file that is not an adapter, a malformed
    lora_config, or tensors holding NaN or infinity are refused with a one-line CheckpointError.
    """
    where = "the adapter" if isinstance(path, dict) else str(path)
    if isinstance(path, dict):
        state = dict(path)
    else:
        if not os.path.exists(path):
            raise CheckpointError(f"LoRA adapter {path} not found")
        state = read_checkpoint(path)  # a file that is not a torch.save'd dict: CheckpointError
    meta = state.pop("lora_config", None)
    state = clean_state_dict(state)  # strips module./_orig_mod., e.g. from MiniMind2 saving a DDP model
    not_lora = sorted(key for key in state if ".lora." not in key or not isinstance(state[key], torch.Tensor))
    if not_lora or not state:
        raise CheckpointError(f"{where} is not a LoRA adapter: it holds {_few(not_lora) or 'no tensors'} "
                              "(adapter keys look like layers.0.attention.wq.lora.A.weight; a full model loads with load_model)")
    check_finite(state, where)
    if meta is None:  # a MiniMind2 file: rank from A (rank, in) / B (out, rank), targets from the key names
        ranks = {t.shape[0] if key.endswith("A.weight") else t.shape[-1] for key, t in state.items()}
        if len(ranks) != 1:
            raise CheckpointError(f"{where}: its tensors disagree on the LoRA rank (found ranks {sorted(ranks)})")
        rank = ranks.pop()
        targets = sorted({key.split(".lora.")[0].rsplit(".", 1)[-1] for key in state})
        return state, {"rank": rank, "alpha": float(rank), "targets": targets, "dim": None, "scaling": "standard", "base": None}
    return state, _checked_lora_config(meta, where)


def _checked_lora_config(meta, where: str) -> dict:
    """A file's lora_config, each field checked (a file can come from anywhere): the settings of read_lora_file."""
    def number(x):  # a real number: not a bool, not a string, finite
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if not isinstance(meta, dict):
        raise CheckpointError(f"{where} has a malformed lora_config (a {type(meta).__name__}, not a JSON object)")
    rank, alpha, targets = meta.get("rank"), meta.get("alpha"), meta.get("targets")
    dim, scaling, base = meta.get("dim"), meta.get("scaling", "standard"), meta.get("base")  # older files: no scaling, no base
    problems = []
    if not (isinstance(rank, int) and not isinstance(rank, bool) and rank > 0):
        problems.append(f"rank {rank!r} is not a positive integer")
    if not (number(alpha) and alpha > 0):
        problems.append(f"alpha {alpha!r} is not a positive number")
    if not (isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)):
        problems.append(f"targets {targets!r} is not a list of layer names")
    if dim is not None and not (isinstance(dim, int) and not isinstance(dim, bool) and dim > 0):
        problems.append(f"dim {dim!r} is not a positive integer")
    if scaling not in SCALINGS:
        problems.append(f"scaling {scaling!r} is none of {', '.join(SCALINGS)}")
    if base is not None and not isinstance(base, str):
        problems.append(f"base {base!r} is not a fingerprint")
    if problems:
        raise CheckpointError(f"{where} has a malformed lora_config: {'; '.join(problems)}")
    return {"rank": rank, "alpha": float(alpha), "targets": sorted(targets), "dim": dim, "scaling": scaling, "base": base}


def load_lora(model: nn.Module, path: str | os.PathLike | dict, dropout: float = 0.0,
              allow_other_base: bool = False) -> None:
    """Put the adapter in `path` on `model`: the file says what it is, and the model's adapters become
    exactly those (its rank, alpha, scaling and target layers; `dropout` on their input, for training
    the loaded adapter further, since a file does not record dropout).

    `path`: a file written by save_lora or by MiniMind2's save_lora (.pth or .safetensors, read by
    model.checkpoint.read_checkpoint), or such a dict already in memory (read_lora_file says what is
    read from each). Adapters the model already wears are replaced -- their weights W are untouched
    (unmerged), so this is switching adapters -- which is why MiniMind2's usage,

        apply_lora(model, rank=16); load_lora(model, "out/lora/lora_medical_512.pth")

    loads any adapter, whatever rank and layers apply_lora chose.

    Refused with a one-line CheckpointError, the model left unchanged: a file that does not fit the
    model (another dim, missing or unexpected keys, wrong shapes), a malformed file, NaN or infinite
    values, a model whose adapters are merged (or PiSSA-initialised, whose W was changed), and an
    adapter trained on another base model: the file records the fingerprint of the weights it was
    trained on (model.checkpoint.weights_fingerprint), and A and B only mean something on top of
    those. allow_other_base=True loads it anyway.
    """
    where = "the adapter" if isinstance(path, dict) else str(path)
    state, config = read_lora_file(path)
    bare = unwrap(model)
    model_dim = getattr(getattr(bare, "config", None), "dim", None)
    if config["dim"] is not None and model_dim is not None and config["dim"] != model_dim:
        raise CheckpointError(f"{where} is an adapter for a model with dim={config['dim']}, but this model has dim={model_dim}; "
                              f"load it onto the base model it was trained on")
    existing = dict(_lora_layers(bare))
    if any(layer.merged for layer in existing.values()):
        raise CheckpointError("the model's adapters are merged into its weights; call unmerge_lora(model) before loading another adapter")
    if any(layer.pissa_start is not None for layer in existing.values()):
        raise CheckpointError("the model's adapters were PiSSA-initialised (their W was changed); "
                              "call remove_lora(model) before loading another adapter")
    if config["base"] is not None and not allow_other_base:
        mine = getattr(bare, "lora_base", None) if existing else _fingerprint_or_none(bare)
        if mine is not None and mine != config["base"]:
            raise CheckpointError(f"{where} was trained on another base model (weights {config['base']}; this model's are "
                                  f"{mine}): its A and B only mean something on that base. Load the checkpoint it was "
                                  "trained on (or allow_other_base=True, --allow_other_base, to load it anyway)")

    # The layers the file adapts, on this model, and the shapes their A and B must have there.
    try:
        planned = {name: layer for name, layer in _select_linears(bare, config["targets"]).items() if ".lora." not in name}
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    rank = config["rank"]
    expected = {}
    for name, linear in planned.items():
        expected[f"{name}.lora.A.weight"] = (rank, linear.in_features)
        expected[f"{name}.lora.B.weight"] = (linear.out_features, rank)
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [f"{key} is {tuple(state[key].shape)} in the file but {expected[key]} in the model"
             for key in sorted(expected.keys() & state.keys()) if tuple(state[key].shape) != expected[key]]
    problems = ([f"missing {_few(missing)}"] if missing else []) + \
               ([f"unexpected {_few(unexpected)}"] if unexpected else []) + \
               ([f"wrong shape: {_few(wrong, 2)}"] if wrong else [])
    if problems:
        raise CheckpointError(f"{where} does not fit this model: {'; '.join(problems)} "
                              "(was it trained on a model with another dim/n_layers?)")

    remove_lora(bare)  # the file decides the adapters; the ones there (unmerged) leave W as it was
    apply_lora(bare, rank=rank, alpha=config["alpha"], dropout=dropout, target_modules=config["targets"],
               scaling=config["scaling"])
    with torch.no_grad():
        for name, layer in _lora_layers(bare):
            # copy_ converts dtype and device: newer MiniMind saves adapters as float16.
            layer.lora.A.weight.copy_(state[f"{name}.lora.A.weight"])
            layer.lora.B.weight.copy_(state[f"{name}.lora.B.weight"])


def _fingerprint_or_none(model: nn.Module):
    """weights_fingerprint(model), or None for a model cast to another dtype by hand (which cannot say
    which float32 weights it came from) or one on the meta device (shapes only, e.g. to count memory):
    its adapters then record no base, as MiniMind2's never do."""
    try:
        return weights_fingerprint(model)
    except ValueError:
        return None


def merge_lora(model: nn.Module) -> None:
    """W <- W + (alpha/rank)·B·A in every adapted layer.

    Unmerged, each adapted layer does three matmuls (W x, A x, B(A x)); merged, just W x: the model
    costs exactly what the base model costs, so the adapter adds no latency at inference. The result
    equals the unmerged model up to float rounding. A merged model's state_dict holds the merged
    weights *and* the adapter keys; to save a plain model, remove_lora(model) first, then save_model.
    """
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to merge; call apply_lora or load_lora first")
    for _, layer in layers:
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """W <- W - (alpha/rank)·B·A in every merged layer: back to training or to switching adapters.
    W returns to the base weights up to float rounding; for a bit-exact base, do not merge at all."""
    for _, layer in _lora_layers(model):
        layer.unmerge()


def remove_lora(model: nn.Module) -> None:
    """Replace every LoRALinear by a plain nn.Linear, and a LoRAEmbedding by a plain nn.Embedding, holding
    the same weight Parameter (so a tie survives); drop the adapters.

    The weights are not touched:
    - unmerged (the usual case): you get back exactly the base model, same classes, same keys,
      bit-identical weights. This is "no adapter" when switching adapters.
    - merged: the merged weights stay, so you get a plain MiniMindLM that behaves like the adapted
      model; save it with model.checkpoint.save_model and it loads wherever a MiniMind2 checkpoint does.
    A model without adapters is left as it is.
    """
    bare = unwrap(model)
    bare.__dict__.pop("lora_base", None)  # apply_lora's record of the base: no adapter, no record
    for name, layer in list(bare.named_modules()):
        if isinstance(layer, LoRALinear):
            _replace(bare, name, layer.to_linear().train(layer.training))
        elif isinstance(layer, LoRAEmbedding):
            _replace(bare, name, layer.to_embedding().train(layer.training))
