"""Mixture of experts (MiniMind2-MoE, `use_moe=True`): the feed-forward that model/model.py's block uses instead.

A layer holds n_routed_experts FeedForwards and a router that sends each token to the
num_experts_per_tok (k) that suit it best, plus one shared FeedForward that every token goes through.
The parameters grow with the number of experts; the work per token only with k:

    scores -> top-k -> normalise -> dispatch -> weighted sum -> + shared expert

Left alone, a router tends to send most tokens to a few experts: load_balancing_loss prevents it.
Shapes: N = B*T tokens, C model width, E routed experts, k experts per token. docs/moe.md measures it.
"""
import torch
import torch.nn.functional as F
from torch import nn

from model.LMConfig import LMConfig
from model.model import FeedForward


def load_balancing_loss(probs: torch.Tensor, chosen: torch.Tensor, n_groups: int, alpha: float) -> torch.Tensor:
    """MiniMind2's auxiliary loss: alpha * sum_i f_i * P_i, averaged over n_groups groups of tokens.

    probs (N, E): the router's probabilities; chosen (N, k): the experts each token was sent to.
    In each group, f_i = E * (share of the group's N/G * k routing slots that went to expert i) and
    P_i = mean probability the router gave expert i. Perfect balance (f_i = 1, P_i = 1/E) gives
    alpha; every token on one expert (k = 1) gives up to alpha * E.

    What it punishes: routing collapse. An expert that gets more tokens gets more gradient, gets
    better, and gets chosen even more, until a few experts do all the work and the rest are dead
    weight. f is a count (no gradient), so the gradient reaches the router through P only:
    dLoss/dP_i = alpha * f_i / G, pushing down the probability of each expert in proportion to
    how overloaded it is.

    n_groups = B (seq_aux=True): every sequence must spread its own tokens over the experts.
    n_groups = 1 (seq_aux=False): only the batch as a whole must; a sequence may keep to a few
    experts as long as the other sequences use the rest. (Rows of probs are sequence-major.)
    alpha sets how much balance matters against the language-modelling loss; with one such loss
    per MoE layer, a balanced model's total is about alpha * n_layers, never 0.

    >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])  # 4 tokens, 2 experts
    >>> load_balancing_loss(probs, torch.tensor([[0], [0], [0], [0]]), n_groups=1, alpha=1.0)  # f = (2, 0), P = (0.75, 0.25)
    tensor(1.5000)
    >>> load_balancing_loss(torch.full((4, 2), 0.5), torch.tensor([[0], [1], [0], [1]]), n_groups=1, alpha=1.0)
    tensor(1.)
    """
    E = probs.shape[-1]
    probs = probs.reshape(n_groups, -1, E)  # (G, N/G, E)
    chosen = chosen.reshape(n_groups, -1)  # (G, N/G * k): every routing slot of the group
    slots = torch.zeros(n_groups, E, device=probs.device, dtype=probs.dtype)
    slots.scatter_add_(1, chosen, torch.ones_like(chosen, dtype=probs.dtype))  # (G, E): slots per expert
    f = slots * (E / chosen.shape[1])  # (G, E): 1 for every expert when the load is even
    P = probs.mean(dim=1)  # (G, E)
    return alpha * (f * P).sum(dim=-1).mean()


class MoEFeedForward(nn.Module):
    """A mixture-of-experts feed-forward with MiniMind2's state-dict keys (in its order):

        experts.{j}.w1 / w2 / w3.weight      FeedForward j of E
        gate.weight                          (E, dim)   the router
        shared_experts.w1 / w2 / w3.weight   the shared FeedForward (if n_shared_experts)

    forward(x) -> (y, aux_loss). For each token x_t, with p = softmax(gate(x_t)) over E experts
    and S its k largest entries:

        y_t = sum_{j in S} w_j * expert_j(x_t)  +  shared(x_t)      w_j = p_j / sum_{i in S} p_i

    (without norm_topk_prob, w_j = p_j). aux_loss is load_balancing_loss in training mode with
    aux_loss_alpha > 0, else 0. It is returned, never stored on the module.

    Train and eval run the same grouped code (see dispatch): one function, and gradients in
    either mode. MiniMind2 has two paths: a slower one for training and a no_grad one for
    inference. Its training path also rounds every routed expert's output to float16, which is
    why its train-mode logits differ from its eval-mode logits by ~2e-4; ours keeps full precision
    (tests/test_moe.py shows that rounding is the whole difference).
    """

    def __init__(self, config: LMConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.aux_loss_alpha = config.aux_loss_alpha
        self.seq_aux = config.seq_aux
        self.experts = nn.ModuleList([FeedForward(config) for _ in range(config.n_routed_experts)])
        # The router, a plain Linear (no bias): logit e = <gate.weight[e], x>, how well expert e
        # suits token x. MiniMind2 holds the same (E, dim) matrix as a bare Parameter, same key.
        self.gate = nn.Linear(config.dim, config.n_routed_experts, bias=False)
        self.shared_experts = FeedForward(config) if config.n_shared_experts else None

    def route(self, tokens: torch.Tensor):
        """Steps 1-3: tokens (N, C) -> probs (N, E), weights (N, k), chosen (N, k) expert ids.

        With E = 4, k = 2: probs [0.1, 0.5, 0.3, 0.1] -> chosen [1, 2], weights [0.5, 0.3]
        -> normalised [0.625, 0.375].
        """
        # 1. scores: a probability over the experts for every token, in float32 even under bf16
        # autocast: close calls between experts and the balancing loss need more than 3 digits
        probs = F.softmax(self.gate(tokens).float(), dim=-1)  # (N, E), rows sum to 1
        # 2. top-k: each token's k most likely experts
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)  # (N, k) each, best first
        # 3. normalise, so that y is a weighted average of k expert outputs. Not for k = 1 (as in
        # MiniMind2): one weight would always be 1, and the router would get no gradient from the
        # language-model loss; left as p, it learns how much its choice helped.
        if self.top_k > 1 and self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)  # (N, k)
        return probs, weights, chosen

    def forward(self, x: torch.Tensor):
        B, T, C = x.shape
        tokens = x.reshape(B * T, C)  # (N, C): routing is per token, whatever sequence it sits in
        probs, weights, chosen = self.route(tokens)  # 1.-3.
        # 4.+5. dispatch each token to its experts and add up their weighted outputs
        y = self.dispatch(tokens, chosen, weights)  # (N, C)
        # 6. the shared expert sees every token, unweighted
        if self.shared_experts is not None:
            y = y + self.shared_experts(tokens)
        if self.training and self.aux_loss_alpha > 0:
            aux_loss = load_balancing_loss(probs, chosen, B if self.seq_aux else 1, self.aux_loss_alpha)
        else:
            aux_loss = torch.zeros((), device=x.device)  # a training-time regulariser only
        return y.reshape(B, T, C), aux_loss

    def dispatch(self, tokens: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum over each token's k experts of weight * expert(token): (N, C) -> (N, C).

        Grouped by expert, not looped over tokens: the N*k (token, expert) pairs are sorted by
        expert, each expert runs ONE batched forward on all of its tokens, and index_add adds the
        weighted outputs back into their tokens' rows. Pair p belongs to token p // k.

            chosen = [[0, 2], [2, 1], [0, 1]]          3 tokens, k = 2: pairs 0..5
            experts of the pairs: [0, 2, 2, 1, 0, 1]   -> sorted: pairs [0, 4 | 3, 5 | 1, 2]
            expert 0 runs on tokens [0, 2], expert 1 on [1, 2], expert 2 on [0, 1]

        Every expert runs, even on 0 tokens: then each parameter takes part in every step (DDP
        requires that unless told find_unused_parameters=True), at the cost of a few empty matmuls.
        """
        k = chosen.shape[1]
        expert_of_pair = chosen.flatten()  # (N*k,)
        # one_hot rather than bincount: its (E,) shape does not depend on the data, which lets
        # torch.compile trace this (see docs/moe.md)
        pairs_per_expert = F.one_hot(expert_of_pair, len(self.experts)).sum(0).tolist()  # host sync
        pairs_by_expert = expert_of_pair.argsort(stable=True).split(pairs_per_expert)  # E index tensors
        weight_of_pair = weights.flatten()  # (N*k,)
        y = torch.zeros_like(tokens)  # (N, C)
        for expert, pairs in zip(self.experts, pairs_by_expert):  # a loop over E experts, not N tokens
            rows = pairs // k  # (n_e,) the tokens this expert serves
            out = expert(tokens[rows]) * weight_of_pair[pairs].unsqueeze(-1)  # (n_e, C)
            y.index_add_(0, rows, out.to(y.dtype))  # float32 weights: back to x's dtype (a bf16 model)
        return y
