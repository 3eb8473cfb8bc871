"""LMConfig: every number that decides the shape of a MiniMind model, in one place.

The field names and defaults are MiniMind2's, so a MiniMind2 checkpoint and this config describe
the same network. It is a dataclass (no `transformers` dependency), nanoGPT's GPTConfig style:
`LMConfig(dim=512, n_layers=8)` is MiniMind2-Small, `LMConfig(dim=768, n_layers=16)` is MiniMind2.

    >>> LMConfig(dim=512).hidden_dim      # resolved from dim, as MiniMind2 does
    1408
    >>> LMConfig.from_dict(LMConfig(dim=64).to_dict()) == LMConfig(dim=64)
    True
    >>> LMConfig(dim=0)
    Traceback (most recent call last):
    ...
    ValueError: LMConfig: dim must be a positive integer, got 0
    >>> LMConfig(use_moe=True, num_experts_per_tok=3, n_routed_experts=2)
    Traceback (most recent call last):
    ...
    ValueError: LMConfig: num_experts_per_tok (3) cannot exceed n_routed_experts (2): a token cannot visit more experts than exist
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional


# The most positions a model may have: its RoPE table (max_seq_len x head_dim floats) is allocated whole
# when the model is built, so an absurd value in a file would exhaust memory before anything else is checked.
MAX_POSITIONS = 1 << 21


@dataclass(kw_only=True)
class LMConfig:
    """The hyper-parameters of MiniMindLM. All arguments are keyword-only; an unknown one is a TypeError."""

    # --- size of the network -------------------------------------------------------------------
    dim: int = 512  # width of the residual stream (embedding size); 512 = MiniMind2-Small
    n_layers: int = 8  # number of transformer blocks; 8 = MiniMind2-Small, 16 = MiniMind2
    n_heads: int = 8  # query heads per attention layer; head_dim = dim // n_heads = 64
    n_kv_heads: Optional[int] = 2  # key/value heads (grouped-query attention): 4 query heads share
    #                                one kv head, so the KV cache is 4x smaller. None = n_heads (MHA)
    vocab_size: int = 6400  # size of MiniMind's tokenizer; small vocab = small embedding table
    hidden_dim: Optional[int] = None  # SwiGLU inner width; None = 8/3 * dim rounded up to
    #                                   multiple_of (dim 512 -> 1408), which keeps the FFN's parameter
    #                                   count at that of a 4*dim GELU MLP while using three matrices
    multiple_of: int = 64  # hidden_dim is rounded up to this, for matmul-friendly shapes
    norm_eps: float = 1e-5  # added inside RMSNorm's rsqrt so an all-zero vector cannot divide by 0
    max_seq_len: int = 8192  # longest context MiniMind2 is configured for; it sizes the RoPE table
    #                          and bounds the KV cache generate() preallocates
    rope_theta: float = 1e6  # RoPE base; large theta = slowly turning low frequencies, which
    #                          MiniMind2 picked for longer contexts (Llama 2 used 1e4)
    # --- training behaviour --------------------------------------------------------------------
    dropout: float = 0.0  # dropout on embeddings, attention weights and residual branches;
    #                       0 because small models trained for one epoch don't overfit
    flash_attn: bool = True  # True: F.scaled_dot_product_attention (fused, fast);
    #                          False: the explicit masked-softmax path that model.py teaches
    # --- mixture of experts: MiniMind2-MoE is dim=640, n_layers=8, use_moe=True (model.py: MoEFeedForward)
    use_moe: bool = False  # each block's FFN becomes several experts, of which a token uses only a few
    num_experts_per_tok: int = 2  # top-k: how many routed experts each token visits
    n_routed_experts: int = 4  # routed experts per layer, each a SwiGLU FFN of width hidden_dim
    n_shared_experts: bool = True  # plus one expert every token visits, for what all tokens need
    scoring_func: str = "softmax"  # router logits -> probabilities over experts (MiniMind2 has no other)
    aux_loss_alpha: float = 0.1  # weight of each MoE layer's load-balancing loss; 0 turns it off
    seq_aux: bool = True  # balance experts within every sequence (True) or over the whole batch (False)
    norm_topk_prob: bool = True  # rescale the k chosen probabilities to sum to 1 (a convex mix of experts)

    def __post_init__(self):
        """Check the fields, then resolve the derived ones (n_kv_heads=None, hidden_dim=None)."""
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        # Sizes first: every check below divides by one of them.
        sizes = ["dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len", "multiple_of"]
        for name in sizes + (["hidden_dim"] if self.hidden_dim is not None else []):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LMConfig: {name} must be a positive integer, got {value!r}")
        if self.max_seq_len > MAX_POSITIONS:
            raise ValueError(f"LMConfig: max_seq_len {self.max_seq_len} is more than {MAX_POSITIONS:,} positions "
                             "(the RoPE table is built for all of them when the model is)")
        if self.dim % self.n_heads != 0:
            raise ValueError(f"LMConfig: dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.head_dim % 2 != 0:
            raise ValueError(f"LMConfig: head_dim = dim // n_heads = {self.head_dim} must be even: RoPE rotates pairs")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"LMConfig: n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.hidden_dim is None:
            # MiniMind2's rule: 2/3 of 4*dim, rounded UP to a multiple of multiple_of.
            m = self.multiple_of
            self.hidden_dim = m * ((int(2 * 4 * self.dim / 3) + m - 1) // m)
        if self.use_moe:
            self._check_moe_fields()

    def _check_moe_fields(self):
        """The MoE fields, checked only when use_moe=True (a dense model never reads them)."""
        for name in ["num_experts_per_tok", "n_routed_experts"]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LMConfig: {name} must be a positive integer, got {value!r}")
        if self.num_experts_per_tok > self.n_routed_experts:
            raise ValueError(f"LMConfig: num_experts_per_tok ({self.num_experts_per_tok}) cannot exceed "
                             f"n_routed_experts ({self.n_routed_experts}): a token cannot visit more experts than exist")
        for name in ["n_shared_experts", "seq_aux", "norm_topk_prob"]:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LMConfig: {name} must be True or False, got {getattr(self, name)!r}")
        if self.scoring_func != "softmax":
            raise ValueError(f"LMConfig: scoring_func must be 'softmax' (MiniMind2's only one), got {self.scoring_func!r}")
        alpha = self.aux_loss_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < math.inf:
            raise ValueError(f"LMConfig: aux_loss_alpha must be a finite number >= 0 (0 = no balancing loss), got {alpha!r}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head: dim // n_heads (512 // 8 = 64)."""
        return self.dim // self.n_heads

    @classmethod
    def field_names(cls) -> list:
        """['dim', 'n_layers', ..., 'norm_topk_prob']: the fields, in the order declared above."""
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict:
        """All fields as a JSON-friendly dict (hidden_dim resolved), e.g. for a checkpoint's sidecar."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LMConfig":
        """Inverse of to_dict. An unknown key is a TypeError naming it and listing the valid ones.

        A typo ("n_layer": 16) in a sidecar file would otherwise fail deep inside the dataclass's
        __init__, or, worse, be dropped and silently build the default-sized model.
        """
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            raise TypeError(f"LMConfig got unknown field(s) {unknown}; valid fields are: {', '.join(cls.field_names())}")
        return cls(**d)
