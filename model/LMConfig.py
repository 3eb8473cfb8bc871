"""LMConfig: every number that decides the shape of a MiniMind model, in one place.

The field names and defaults are MiniMind2's, so a MiniMind2 checkpoint and this config describe
the same network. It is a plain Python class (no `transformers` dependency): `LMConfig(dim=512,
n_layers=8)` is MiniMind2-Small, `LMConfig(dim=768, n_layers=16)` is MiniMind2.

    >>> LMConfig(dim=512).hidden_dim      # resolved from dim, as MiniMind2 does
    1408
    >>> LMConfig.from_dict(LMConfig(dim=64).to_dict()) == LMConfig(dim=64)
    True
"""


class LMConfig:
    """The hyper-parameters of MiniMindLM. All arguments are keyword-only; an unknown one is an error."""

    def __init__(
        self,
        *,
        # --- size of the network -----------------------------------------------------------
        dim: int = 512,  # width of the residual stream (embedding size); 512 = MiniMind2-Small
        n_layers: int = 8,  # number of transformer blocks; 8 = MiniMind2-Small, 16 = MiniMind2
        n_heads: int = 8,  # query heads per attention layer; head_dim = dim // n_heads = 64
        n_kv_heads: int = 2,  # key/value heads (grouped-query attention): 4 query heads share one
        #                      kv head, so the KV cache is 4x smaller. None means n_heads (plain MHA)
        vocab_size: int = 6400,  # size of MiniMind's tokenizer; small vocab = small embedding table
        hidden_dim: int = None,  # SwiGLU inner width; None = 8/3 * dim rounded up to multiple_of
        #                          (dim 512 -> 1408), which keeps the FFN's parameter count at
        #                          that of a 4*dim GELU MLP while using three matrices
        multiple_of: int = 64,  # hidden_dim is rounded up to this, for matmul-friendly shapes
        norm_eps: float = 1e-5,  # added inside RMSNorm's rsqrt so an all-zero vector cannot divide by 0
        max_seq_len: int = 8192,  # longest context MiniMind2 is configured for; generate() uses it
        #                           to bound the KV cache it preallocates
        rope_theta: float = 1e6,  # RoPE base; large theta = slowly turning low frequencies, which
        #                           MiniMind2 picked for longer contexts (Llama 2 used 1e4)
        # --- training behaviour ------------------------------------------------------------
        dropout: float = 0.0,  # dropout on embeddings, attention weights and residual branches;
        #                        0 because small models trained for one epoch don't overfit
        flash_attn: bool = True,  # True: F.scaled_dot_product_attention (fused, fast);
        #                           False: the explicit masked-softmax path that model.py teaches
        # --- mixture of experts (MiniMind2-MoE); kept so MoE configs parse, not implemented ----
        use_moe: bool = False,  # True raises NotImplementedError: MoE is out of this course's scope
        num_experts_per_tok: int = 2,  # experts each token is routed to
        n_routed_experts: int = 4,  # routed experts per MoE layer
        n_shared_experts: bool = True,  # whether a shared expert sees every token
        scoring_func: str = "softmax",  # how the router turns scores into weights
        aux_loss_alpha: float = 0.1,  # weight of the load-balancing loss
        seq_aux: bool = True,  # load-balancing loss per sequence rather than per batch
        norm_topk_prob: bool = True,  # renormalise the top-k routing weights to sum to 1
        **unknown,
    ):
        if unknown:
            # A typo ("n_layer=16") would otherwise silently build the default-sized model.
            raise TypeError(
                f"LMConfig got unknown field(s) {sorted(unknown)}; valid fields are: {', '.join(FIELDS)}"
            )
        if use_moe:
            raise NotImplementedError(
                "use_moe=True: mixture-of-experts models (MiniMind2-MoE) are out of scope here; "
                "use a dense config (use_moe=False)"
            )
        if n_kv_heads is None:
            n_kv_heads = n_heads
        if dim % n_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by n_heads ({n_heads})")
        if (dim // n_heads) % 2 != 0:
            raise ValueError(f"head_dim = dim // n_heads = {dim // n_heads} must be even: RoPE rotates pairs")
        if n_heads % n_kv_heads != 0:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        if hidden_dim is None:
            # MiniMind2's rule: 2/3 of 4*dim, rounded UP to a multiple of multiple_of.
            hidden_dim = int(2 * 4 * dim / 3)
            hidden_dim = multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)

        self.dim = dim
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.vocab_size = vocab_size
        self.hidden_dim = hidden_dim
        self.multiple_of = multiple_of
        self.norm_eps = norm_eps
        self.max_seq_len = max_seq_len
        self.rope_theta = rope_theta
        self.dropout = dropout
        self.flash_attn = flash_attn
        self.use_moe = use_moe
        self.num_experts_per_tok = num_experts_per_tok
        self.n_routed_experts = n_routed_experts
        self.n_shared_experts = n_shared_experts
        self.scoring_func = scoring_func
        self.aux_loss_alpha = aux_loss_alpha
        self.seq_aux = seq_aux
        self.norm_topk_prob = norm_topk_prob

    @property
    def head_dim(self) -> int:
        """Width of one attention head: dim // n_heads (512 // 8 = 64)."""
        return self.dim // self.n_heads

    def to_dict(self) -> dict:
        """All fields as a JSON-friendly dict (hidden_dim resolved), e.g. for a checkpoint's sidecar."""
        return {name: getattr(self, name) for name in FIELDS}

    @classmethod
    def from_dict(cls, d: dict) -> "LMConfig":
        """Inverse of to_dict. An unknown key is an error (TypeError naming it), not silently dropped."""
        return cls(**d)

    def __eq__(self, other):
        return isinstance(other, LMConfig) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return "LMConfig(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"


# The field names, in signature order, read off __init__ so the list cannot drift from it.
FIELDS = tuple(LMConfig.__init__.__code__.co_varnames[1 : 1 + LMConfig.__init__.__code__.co_kwonlyargcount])
