"""MiniMindLM: a small decoder-only transformer (Llama-style), readable top to bottom.

The file follows the data, and nothing is used before it is defined: RMSNorm -> RoPE -> the
KV cache -> attention masks -> attention (grouped-query) -> SwiGLU feed-forward -> Block ->
sampling -> MiniMindLM (embedding, blocks, final norm, tied output; generate) -> counting
parameters. (A mixture of experts, use_moe=True, swaps the feed-forward for model/model_moe.py's.)
Every module's parameter names are MiniMind2's, so a MiniMind2 checkpoint loads here with
`load_state_dict(..., strict=True)` and gives the same logits:

    tok_embeddings.weight               (vocab, dim)  -- the same tensor as output.weight
    layers.{i}.attention.wq/wk/wv/wo.weight
    layers.{i}.attention_norm.weight, layers.{i}.ffn_norm.weight
    layers.{i}.feed_forward.w1/w2/w3.weight                 dense model, or with use_moe=True:
    layers.{i}.feed_forward.gate.weight                     (n_routed_experts, dim) the router
    layers.{i}.feed_forward.experts.{j}.w1/w2/w3.weight     routed expert j
    layers.{i}.feed_forward.shared_experts.w1/w2/w3.weight  the shared expert
    norm.weight, output.weight

Shapes in comments: B batch, T new tokens in this call, S keys visible (cached + new),
H query heads, K kv heads, D head_dim, C model width (dim), V vocab.
"""

import math
from typing import Iterator, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from model.LMConfig import LMConfig


# ----------------------------------------------------------------------------------------------
# RMSNorm: scale each vector to unit root-mean-square, then by a learned per-channel gain.
# Cheaper than LayerNorm (no mean subtraction, no bias) and works as well for LLMs.


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # starts at 1: a pure normalisation

    def forward(self, x):
        # Statistics in float32 even when x is bf16/fp16: a mean of squares overflows/underflows
        # easily in half precision. rsqrt(mean(x^2) + eps) = 1 / RMS(x).
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


# ----------------------------------------------------------------------------------------------
# RoPE (rotary position embedding): position enters attention by ROTATING q and k.
# A head vector is read as D/2 pairs (x[2i], x[2i+1]) -- MiniMind2's "interleaved pairs" layout,
# not Hugging Face Llama's "rotate half" -- and pair i at position p is turned by the angle
# p * theta^(-2i/D). Since q.k is unchanged by rotating both by the same angle, the score of a
# query at p and a key at p' depends only on p - p': relative position, for free.
# A pair is a complex number x[2i] + j*x[2i+1]; turning it by angle a is multiplying by
# e^(ja) = cos a + j sin a, i.e. (x0, x1) -> (x0 cos a - x1 sin a, x0 sin a + x1 cos a).
# One complex multiply does all of that in a single kernel.


def rope_table(head_dim: int, max_seq_len: int, theta: float) -> torch.Tensor:
    """(cos, sin) of every angle pos * theta^(-2i/D), float32: -> (max_seq_len, D/2, 2).

    Precomputed once (MiniMind2's `pos_cis`), so a forward pass only looks positions up.
    Stored as real pairs, viewed as complex at use (torch.view_as_complex): `model.to(dtype)`
    would drop the imaginary part of a complex buffer. Train in bf16 with autocast, which leaves
    this table (and the weights) in float32; for bf16 inference MiniMindLM.cast_weights casts the
    weights and leaves this table in float32 (bf16's 3 significant digits would blur the angles).

    >>> rope_table(head_dim=4, max_seq_len=2, theta=1e4)[1]   # position 1: angles 1 and 0.01
    tensor([[0.5403, 0.8415],
            [0.9999, 0.0100]])
    """
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))  # (D/2,): high -> low
    angles = torch.outer(torch.arange(max_seq_len).float(), freqs)  # (max_seq_len, D/2)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)  # (max_seq_len, D/2, 2)


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate each (x[2i], x[2i+1]) pair of x (B, T, heads, D), in float32.

    rotations: complex (B|1, T, 1, D/2), the table's rows for x's positions (see MiniMindLM.forward).
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, T, heads, D/2) complex
    return torch.view_as_real(pairs * rotations).flatten(-2).type_as(x)  # (B, T, heads, D)


# ----------------------------------------------------------------------------------------------
# The KV cache. During generation each new token attends to the keys/values of every earlier
# token; recomputing them each step would make decoding quadratic. We keep them in buffers
# allocated once (no torch.cat per token, which would copy the whole cache every step).


class KVCache:
    """Per-layer key/value buffers (B, K, capacity, D) plus how many positions are filled.

    A forward pass writes its new keys/values at positions [length, length + T) and returns a
    NEW KVCache object (same buffers, length + T). The object you passed in still says `length`,
    so re-running a step from it overwrites the same slots and gives the same answer: the cache
    object is a value, only the buffers behind it are reused. (Continuing two different branches
    from one cache is not supported: they share the buffers.)
    """

    def __init__(self, keys: list, values: list, length: int = 0):
        self.keys = keys  # one (B, K, capacity, D) tensor per layer
        self.values = values
        self.length = length  # positions [0, length) hold real entries

    @classmethod
    def allocate(cls, config: LMConfig, batch_size: int, capacity: int, device=None, dtype=torch.float32):
        """An empty cache able to hold `capacity` positions without reallocating."""
        shape = (batch_size, config.n_kv_heads, capacity, config.head_dim)
        keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        return cls(keys, values, 0)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def reserve(self, n_new: int) -> "KVCache":
        """This cache if n_new more positions fit; else a new KVCache whose buffers are copies,
        at least twice the old capacity (doubling keeps the total copying linear in the length).

        generate() allocates the whole prompt + max_new_tokens up front, so it never grows. Growth
        happens when forward is driven by hand: `model(ids, use_cache=True)` with no cache
        allocates exactly T slots, so each later call continuing that cache needs more room.
        """
        needed = self.length + n_new
        if needed <= self.capacity:
            return self
        capacity = max(needed, 2 * self.capacity)

        def grow(t):  # (B, K, old capacity, D) -> (B, K, capacity, D), filled part copied
            bigger = t.new_empty(t.shape[0], t.shape[1], capacity, t.shape[3])
            bigger[:, :, : self.length] = t[:, :, : self.length]
            return bigger

        return KVCache([grow(t) for t in self.keys], [grow(t) for t in self.values], self.length)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store new k, v (B, K, T, D) at [length, length + T); return all S = length + T of them."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]  # (B, K, S, D) views

    def advanced(self, n_new: int) -> "KVCache":
        return KVCache(self.keys, self.values, self.length + n_new)


# ----------------------------------------------------------------------------------------------
# Attention masks. Two things hide a key from a query: it is in the query's future (causal), or
# it is left padding of a shorter prompt in a batch. With the KV cache, the keys are every cached
# position plus the new ones, so the mask is (new queries T) x (all keys S = past + T).


def build_attention_mask(attention_mask, past: int, T: int, device):
    """The bool (B, 1, T, S) "may query t look at key s" mask, or None when none is needed.

    None covers the two common cases: no cache and no padding (plain causal; the attention
    layer applies it cheaply), and one new token with no padding (it may see everything).
    Query t sits at cache position past + t, so it sees keys s <= past + t that are real.
    A padding query would then see nothing (softmax of all -inf = NaN, which would leak into
    real rows through 0 * NaN), so every query may always see itself.

    >>> build_attention_mask(torch.tensor([[0, 1, 1]]), past=0, T=3, device="cpu")[0, 0].int()
    tensor([[1, 0, 0],
            [0, 1, 0],
            [0, 1, 1]], dtype=torch.int32)
    """
    if attention_mask is None and (past == 0 or T == 1):
        return None
    S = past + T
    key_pos = torch.arange(S, device=device)  # (S,)
    query_pos = torch.arange(past, S, device=device).unsqueeze(1)  # (T, 1)
    allowed = key_pos <= query_pos  # (T, S) causal
    if attention_mask is not None:
        real_key = attention_mask[:, None, :S].bool()  # (B, 1, S)
        allowed = allowed & (real_key | (key_pos == query_pos))  # (B, T, S)
    return allowed.unsqueeze(-3) if allowed.dim() == 3 else allowed[None, None]  # (B|1, 1, T, S)


def step_mask(attention_mask, length: int):
    """The first `length` columns of a (B, capacity) padding mask, or None.

    generate() builds the mask for the whole generation once; each step passes forward the
    columns for the positions that exist so far (cached + new).
    """
    return None if attention_mask is None else attention_mask[:, :length]


# ----------------------------------------------------------------------------------------------
# Attention: each token builds a query, compares it with the keys of all visible tokens and
# takes the softmax-weighted mix of their values. Grouped-query attention (GQA): n_heads query
# heads but only n_kv_heads key/value heads; kv head j serves query heads j*n_rep ... j*n_rep +
# n_rep - 1 (MiniMind2's layout), so the KV cache is n_rep times smaller.


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, K, S, D) -> (B, K*n_rep, S, D), each kv head repeated n_rep times consecutively.

    With K=2, n_rep=2 the heads come out as [kv0, kv0, kv1, kv1], matching query heads 0..3.
    """
    if n_rep == 1:
        return x
    b, k, s, d = x.shape
    return x[:, :, None].expand(b, k, n_rep, s, d).reshape(b, k * n_rep, s, d)


class Attention(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.n_rep = config.n_heads // config.n_kv_heads
        self.head_dim = config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * self.head_dim, config.dim, bias=False)
        self.attn_dropout = nn.Dropout(config.dropout)  # on the attention weights (explicit path)
        self.resid_dropout = nn.Dropout(config.dropout)  # on the output, before the residual add
        self.attn_dropout_p = config.dropout  # the same rate as a number, for the fused kernel
        self.flash = config.flash_attn

    def forward(self, x, rotations, mask=None, cache: Optional[KVCache] = None, layer: int = 0):
        """x (B, T, C) -> (B, T, C).

        mask: None means "plain causal" (token t sees tokens 0..t of this call, no cache) or, for
        a single new token, "sees everything cached"; otherwise a bool (B|1, 1, T, S) tensor,
        True where a query may look at a key.
        """
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, H, D)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, K, D)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, K, D)
        q, k = apply_rope(q, rotations), apply_rope(k, rotations)  # position enters here
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|K, T, D)
        if cache is not None:
            k, v = cache.write(layer, k, v)  # (B, K, S, D): all cached positions plus the new ones
        causal = mask is None and k.shape[2] == T  # no cache: plain causal masking

        if self.flash:
            # One fused kernel for all of the explicit path below. enable_gqa lets it read each
            # kv head for its n_rep query heads in place, instead of copying it n_rep times.
            out = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=mask,
                dropout_p=self.attn_dropout_p if self.training else 0.0,
                is_causal=causal,
                enable_gqa=self.n_rep > 1,
            )  # (B, H, T, D)  # fmt: skip
        else:
            # The same computation written out: scores, mask, softmax, weighted sum of values.
            k, v = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)  # (B, H, S, D)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, S)
            if causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # key j <= query t
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))  # exp(-inf) = 0: invisible
            probs = F.softmax(scores.float(), dim=-1).type_as(q)  # float32 softmax: stable in bf16
            out = self.attn_dropout(probs) @ v  # (B, H, T, D)

        out = out.transpose(1, 2).reshape(B, T, -1)  # (B, T, H*D): heads side by side again
        return self.resid_dropout(self.wo(out))


# ----------------------------------------------------------------------------------------------
# Feed-forward: SwiGLU. w1 x is a "gate" passed through SiLU, w3 x the value it gates,
# w2 projects back to the model width: w2(silu(w1 x) * w3 x).


class FeedForward(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(config.hidden_dim, config.dim, bias=False)  # down
        self.w3 = nn.Linear(config.dim, config.hidden_dim, bias=False)  # up
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


# ----------------------------------------------------------------------------------------------
# A block: pre-norm residual. Each sub-layer reads a normalised copy of the residual stream and
# ADDS its result back, so the stream itself is never normalised away and gradients flow
# straight through the additions.


class MiniMindBlock(nn.Module):
    def __init__(self, layer_id: int, config: LMConfig):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(config)
        self.attention_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, eps=config.norm_eps)
        if config.use_moe:  # a mixture of experts instead (MiniMind2-MoE), in a file of its own
            from model.model_moe import MoEFeedForward  # (imported here: it builds on FeedForward above)
            self.feed_forward = MoEFeedForward(config)
        else:
            self.feed_forward = FeedForward(config)

    def forward(self, x, rotations, mask=None, cache=None):
        """x (B, T, C) -> (out (B, T, C), aux_loss): the MoE layer's load-balancing loss, None if dense."""
        h = x + self.attention(self.attention_norm(x), rotations, mask, cache, self.layer_id)
        out = self.feed_forward(self.ffn_norm(h))
        if isinstance(out, tuple):  # a mixture of experts also returns its load-balancing loss
            return h + out[0], out[1]
        return h + out, None


# ----------------------------------------------------------------------------------------------
# Sampling: from the next-token scores (logits) to one token. Greedy takes the best; otherwise
# temperature sharpens or flattens the distribution, top-k and top-p (nucleus) cut off its
# unlikely tail, and the repetition penalty pushes down tokens the row already contains.


def check_sampling_args(temperature, top_p, top_k, repetition_penalty) -> None:
    """Raise a one-line ValueError for a setting that would crash sampling or silently mean nothing.

    >>> check_sampling_args(temperature=0.7, top_p=0.0, top_k=0, repetition_penalty=1.0)
    Traceback (most recent call last):
    ...
    ValueError: top_p must be in (0, 1] (1 = off), got 0.0
    """
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number (<= 0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:  # also catches NaN: every comparison with NaN is False
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 = off, > 1 discourages repeats), got {repetition_penalty}")


def sample_next_token(logits, temperature, top_p, top_k, repetition_penalty, seen, generator):
    """Pick one token per row from logits (B, V) -> (B,).

    seen: (B, V) bool, tokens the repetition penalty applies to (None = no penalty).
    Whatever top_k and top_p say, the most likely token always stays a candidate.

    >>> sample_next_token(torch.tensor([[0.1, 2.0, 0.3]]), 0, 0.9, 0, 1.0, None, None)   # greedy
    tensor([1])
    >>> sample_next_token(torch.tensor([[0.1, 2.0, 0.3]]), 1.0, 0.0, 0, 1.0, None, None)  # top_p 0: best only
    tensor([1])
    """
    if seen is not None:
        # CTRL's penalty: push seen tokens' logits towards "less likely" whatever their sign.
        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1): k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # Nucleus: keep the smallest set of most likely tokens whose probability reaches top_p.
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the tokens ranked above each one
        drop = mass_before >= top_p  # (B, V) in rank order
        drop[:, 0] = False  # the best token is always kept: with top_p <= 0 nothing else would be
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# ----------------------------------------------------------------------------------------------
# The model.


class CausalLMOutput(NamedTuple):
    """What a forward pass returns (MiniMind's attribute names). A fresh object every call."""

    logits: torch.Tensor  # (B, T, V) next-token scores for every position
    aux_loss: torch.Tensor  # () the MoE layers' load-balancing losses, summed; 0 in eval mode and
    #                         for a dense model. Training adds it to the language-model loss
    past_key_values: Optional[KVCache]  # the cache including this call's tokens, if use_cache


class MiniMindLM(nn.Module):
    def __init__(self, config: LMConfig = None):
        super().__init__()
        config = config if config is not None else LMConfig()
        self.config = config
        self.params = config  # MiniMind's name for the same object
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([MiniMindBlock(i, config) for i in range(config.n_layers)])
        self.norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        # Tied embeddings: reading a token in and scoring it out use ONE matrix (vocab, dim).
        # Saves vocab*dim parameters -- 3.3M of MiniMind2-Small's 25.8M.
        self.tok_embeddings.weight = self.output.weight
        # Not a parameter and not saved (persistent=False): MiniMind2's state dict has no such key.
        rope = rope_table(config.head_dim, config.max_seq_len, config.rope_theta)  # (max_seq_len, D/2, 2)
        self.register_buffer("rope", rope, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """Initialise every parameter (MiniMind's scheme):

        | tensor                                       | init            |
        |----------------------------------------------|-----------------|
        | tok_embeddings.weight = output.weight (tied) | normal(0, 0.02) |
        | layers.i.attention.wq / wk / wv / wo.weight  | normal(0, 0.02) |
        | layers.i.feed_forward.w1 / w2 / w3.weight    | normal(0, 0.02) |
        | MoE: ...feed_forward.experts.j.w1 / w2 / w3, |                 |
        |   ...shared_experts.w1 / w2 / w3, ...gate    | normal(0, 0.02) |
        | layers.i.attention_norm / ffn_norm.weight    | ones            |
        | norm.weight                                  | ones            |

        std 0.02 keeps the initial logits small (near-uniform predictions, loss ~ ln V) and the
        residual stream from growing layer by layer; norms start as plain normalisation. A small
        gate makes the router start near-uniform, favouring no expert (MiniMind2's gate init,
        kaiming-uniform, has std 1/sqrt(3 * dim): 0.023 at MiniMind2-MoE's dim 640).
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        # tok_embeddings.weight IS output.weight, initialised above as a Linear weight.

    @torch.no_grad()
    def cast_weights(self, dtype: torch.dtype) -> "MiniMindLM":
        """Store every parameter in `dtype` (e.g. bfloat16 for inference: half the bytes to read per
        token) -> self. Not model.to(dtype), which would also round the RoPE table: its cos/sin stay
        float32. The Parameter objects stay the same (only their data changes), so the tied
        embedding/output matrix stays one tensor and an adapter's reference to its weight still holds.
        Activations then follow the weights' dtype; RMSNorm's statistics, RoPE and the attention
        softmax are computed in float32 whatever it is, and generate's KV cache takes the weights' dtype.
        """
        for p in self.parameters():
            p.data = p.data.to(dtype)
        return self

    def forward(
        self,
        input_ids: torch.Tensor,
        past_key_values: Optional[KVCache] = None,
        use_cache: bool = False,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
    ) -> CausalLMOutput:
        """input_ids (B, T) -> CausalLMOutput(logits (B, T, V), aux_loss, past_key_values).

        past_key_values: a KVCache from an earlier call; these T tokens continue it.
        use_cache: return a cache holding every token so far (one is allocated if none given).
        attention_mask: (B, S) with 1 for real tokens and 0 for (left) padding, covering the
            cached positions AND the T new ones (Hugging Face's convention). Padded keys are
            never attended to, so each row gets exactly what it would get alone.
        position_ids: (B, T) RoPE positions of the new tokens. Default: from attention_mask
            (number of real tokens before each one), else cached length + 0..T-1.
        """
        B, T = input_ids.shape
        cache = past_key_values
        if cache is None and use_cache:
            cache = KVCache.allocate(self.config, B, T, input_ids.device, self.output.weight.dtype)
        if cache is not None:
            cache = cache.reserve(T)
        past = cache.length if cache is not None else 0

        if past + T > self.config.max_seq_len:
            raise ValueError(
                f"{past + T} positions exceed max_seq_len={self.config.max_seq_len} (the RoPE table's "
                f"length); use shorter inputs or a config with a larger max_seq_len"
            )
        if position_ids is None and attention_mask is not None:
            # a token's position = how many real tokens precede it, so left padding shifts nothing
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # (B, T)
        if position_ids is None:
            rotations = self.rope[past : past + T].unsqueeze(0)  # (1, T, D/2, 2): the common case
        else:
            rotations = self.rope[position_ids]  # (B, T, D/2, 2)
        rotations = torch.view_as_complex(rotations.float()).unsqueeze(2)  # (B|1, T, 1, D/2) complex
        mask = build_attention_mask(attention_mask, past, T, input_ids.device)

        h = self.dropout(self.tok_embeddings(input_ids))  # (B, T, C)
        aux_loss = torch.zeros((), device=input_ids.device)
        for layer in self.layers:
            h, layer_aux_loss = layer(h, rotations, mask, cache)
            if layer_aux_loss is not None:  # an MoE layer: MiniMind2's aux_loss is the sum over them
                aux_loss = aux_loss + layer_aux_loss
        logits = self.output(self.norm(h))  # (B, T, V)
        new_cache = cache.advanced(T) if use_cache else None
        return CausalLMOutput(logits, aux_loss, new_cache)

    # ------------------------------------------------------------------------------------------
    # Generation: prefill the prompt once, then feed one token per step through the cache.

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        eos_token_id: int = 2,
        max_new_tokens: int = 256,
        temperature: float = 0.75,
        top_p: float = 0.9,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        stream: bool = False,
        pad_token_id: int = 0,
        attention_mask: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
    ):
        """Continue the prompts in input_ids (B, P), at most max_new_tokens NEW tokens each.

        Returns (B, P + n) with the prompt included. n <= max_new_tokens: it stops early once
        every row has produced eos_token_id (rows that finished earlier are filled with
        pad_token_id), or when P + n reaches max_seq_len (a prompt of max_seq_len tokens is
        returned as it is, without running the model). With stream=True, returns an iterator
        yielding each step's new tokens as a (B, 1) LongTensor instead.

        Batches of different-length prompts are LEFT-padded with pad_token_id and described by
        attention_mask (B, P) (1 = real token); each row then gets what it would get alone.
        temperature <= 0 is greedy decoding; otherwise logits / temperature, then top_k (0 =
        off), then top_p (nucleus, in (0, 1]; 1.0 = off), then sampling. repetition_penalty > 1 makes
        tokens already in the row (prompt or generated) less likely. seed (or a
        torch.Generator) makes sampling reproducible. Call model.eval() first if dropout > 0.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, prompt_len), got {tuple(input_ids.shape)}; use ids[None] for one prompt")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must have input_ids' shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"the prompt has {input_ids.shape[1]} tokens, more than max_seq_len={self.config.max_seq_len}")
        check_sampling_args(temperature, top_p, top_k, repetition_penalty)
        if seed is not None and generator is None:
            generator = torch.Generator(device=input_ids.device).manual_seed(seed)
        steps = self._generate_steps(
            input_ids, eos_token_id, max_new_tokens, temperature, top_p, top_k,
            repetition_penalty, pad_token_id, attention_mask, generator,
        )  # fmt: skip
        if stream:
            return steps
        return torch.cat([input_ids, *steps], dim=1)

    @torch.inference_mode()
    def _generate_steps(
        self, input_ids, eos_token_id, max_new_tokens, temperature, top_p, top_k,
        repetition_penalty, pad_token_id, attention_mask, generator,
    ) -> Iterator[torch.Tensor]:  # fmt: skip
        B, P = input_ids.shape
        # The context cannot outgrow max_seq_len (the RoPE table's length): stop there. Checked
        # before the prefill, so a prompt already at max_seq_len costs no forward pass at all.
        max_new_tokens = min(max_new_tokens, self.config.max_seq_len - P)
        if max_new_tokens <= 0:
            return
        device = input_ids.device
        # One cache for the whole generation: the prompt and every new token fit without reallocating.
        capacity = P + max_new_tokens
        cache = KVCache.allocate(self.config, B, capacity, device, self.output.weight.dtype)
        next_pos = None  # without padding, forward's default positions (cache length + 0..T-1) are right
        if attention_mask is not None:
            # Generated tokens are all real: only the prompt's padding is ever masked, so the
            # mask for every later step is the prompt's mask followed by ones.
            attention_mask = F.pad(attention_mask.long(), (0, capacity - P), value=1)  # (B, capacity)
            next_pos = attention_mask[:, :P].sum(-1, keepdim=True)  # (B, 1): real tokens so far
        seen = None  # (B, V) bool: tokens already in each row, for the repetition penalty
        if repetition_penalty != 1.0:
            V = self.config.vocab_size
            ids = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask[:, :P] == 0, V)
            seen = torch.zeros(B, V + 1, dtype=torch.bool, device=device)  # column V: padding
            seen = seen.scatter_(1, ids, True)[:, :V]

        finished = torch.zeros(B, dtype=torch.bool, device=device)
        out = self(input_ids, cache, use_cache=True, attention_mask=step_mask(attention_mask, P))  # prefill
        for step in range(max_new_tokens):
            logits = out.logits[:, -1, :].float()  # (B, V): scores for the next token
            sampled = sample_next_token(logits, temperature, top_p, top_k, repetition_penalty, seen, generator)
            token = sampled.masked_fill(finished, pad_token_id)  # finished rows only emit padding
            finished |= token == eos_token_id
            yield token.unsqueeze(1)  # (B, 1)
            if finished.all() or step == max_new_tokens - 1:
                return
            # Finished rows still go through the model (the batch moves together) but their
            # input is the sampled token, so any pad_token_id works; what they output is discarded.
            token = sampled.unsqueeze(1)  # (B, 1)
            if seen is not None:
                seen.scatter_(1, token, True)
            length = P + step + 1  # cache positions once this token is in
            out = self(token, out.past_key_values, use_cache=True,
                       attention_mask=step_mask(attention_mask, length), position_ids=next_pos)  # fmt: skip
            if next_pos is not None:
                next_pos = next_pos + 1


# ----------------------------------------------------------------------------------------------
# Counting parameters. model.parameters() yields each tensor once, so the tied embedding/output
# matrix counts once, as it is stored once.


def count_parameters(model: nn.Module) -> tuple:
    """(total, trainable) number of parameters; trainable = those with requires_grad.

    >>> count_parameters(nn.Linear(4, 3, bias=False))
    (12, 12)
    """
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def trainable_parameters_report(model: nn.Module) -> str:
    """One line in the style of PEFT's print_trainable_parameters.

    >>> layer = nn.Linear(4, 3, bias=True)
    >>> _ = layer.bias.requires_grad_(False)     # freeze the bias: 3 of 15 numbers
    >>> trainable_parameters_report(layer)
    'trainable params: 12 || all params: 15 || trainable%: 80.0000'
    """
    total, trainable = count_parameters(model)
    percent = 100 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {percent:.4f}"
