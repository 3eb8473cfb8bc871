"""The mixture of experts, measured: its parameters, the speed of its dispatch, and what the
load-balancing loss does to the experts' load. Prints three markdown tables (docs/moe.md).

1. Parameters of MiniMind2-MoE (dim 640, 8 layers, 4 routed experts, top-2, a shared expert) next
   to the dense MiniMind2 sizes: all of them, and those one token uses (the 2 routed experts not
   chosen are skipped). Counted on the meta device: nothing is allocated.
2. One MoE feed-forward layer at MiniMind2-MoE's size, for N tokens, four ways to compute the same
   output: the grouped dispatch of model.py (tokens sorted by expert, one batched call per expert,
   index_add back), MiniMind2's training path (each token copied k times, a boolean mask per
   expert), a Python loop over tokens, and every expert on every token (dense; E/k times the work).
   Forward in eval mode; forward + backward for the two training paths.
3. Balance: bench_moe.train_router with and without the aux loss, the experiment that
   tests/test_moe.py::test_aux_loss_evens_out_the_expert_load asserts on.

    python -m bench.bench_moe                   # all three, ~2 minutes on 2 cores
    python -m bench.bench_moe --only balance    # the balance table only, ~15 s
"""

import argparse

import torch
import torch.nn.functional as F

from bench.machine import add_threads_arg, best_time, measure_machine
from model.LMConfig import LMConfig
from model.model import MiniMindLM, MoEFeedForward, count_parameters

MINIMIND2_MOE = dict(dim=640, n_layers=8, use_moe=True)


# ---- 1. parameters ---------------------------------------------------------------------------------


def parameter_counts(fields: dict) -> tuple[int, int]:
    """(all parameters, parameters one token uses) of MiniMindLM(LMConfig(**fields))."""
    with torch.device("meta"):
        model = MiniMindLM(LMConfig(**fields))
    total, _ = count_parameters(model)
    config = model.config
    if not config.use_moe:
        return total, total
    one_expert = count_parameters(model.layers[0].feed_forward.experts[0])[0]
    skipped = (config.n_routed_experts - config.num_experts_per_tok) * one_expert * config.n_layers
    return total, total - skipped


def parameters_table() -> str:
    rows = ["| model | config | parameters | used per token |", "|---|---|---|---|"]
    for name, fields in [("MiniMind2-Small", dict(dim=512, n_layers=8)), ("MiniMind2", dict(dim=768, n_layers=16)),
                         ("MiniMind2-MoE", MINIMIND2_MOE)]:
        total, used = parameter_counts(fields)
        config = ", ".join(f"{k}={v}" for k, v in fields.items())
        rows.append(f"| {name} | {config} | {total / 1e6:.1f}M | {used / 1e6:.1f}M |")
    return "\n".join(rows)


# ---- 2. dispatch speed ----------------------------------------------------------------------------


def minimind2_training_path(moe: MoEFeedForward, tokens: torch.Tensor) -> torch.Tensor:
    """MiniMind2's training-time dispatch (without its float16 storage): each token repeated k
    times, then per expert a boolean mask over all N*k copies."""
    _, weights, chosen = moe.route(tokens)
    k = chosen.shape[1]
    copies = tokens.repeat_interleave(k, dim=0)  # (N*k, C)
    expert_of_copy = chosen.flatten()
    y = torch.empty_like(copies)
    for j, expert in enumerate(moe.experts):
        y[expert_of_copy == j] = expert(copies[expert_of_copy == j])
    y = (y.view(-1, k, y.shape[-1]) * weights.unsqueeze(-1)).sum(dim=1)  # (N, C)
    return y + moe.shared_experts(tokens)


def token_loop(moe: MoEFeedForward, tokens: torch.Tensor) -> torch.Tensor:
    """One token at a time: route it, run its k experts, mix."""
    rows = []
    for token in tokens:
        _, weights, chosen = moe.route(token[None])
        y = sum(w * moe.experts[j](token[None])[0] for w, j in zip(weights[0], chosen[0].tolist()))
        rows.append(y + moe.shared_experts(token[None])[0])
    return torch.stack(rows)


def all_experts(moe: MoEFeedForward, tokens: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, then weights that are zero for the experts not chosen."""
    _, weights, chosen = moe.route(tokens)
    mix = torch.zeros(tokens.shape[0], len(moe.experts)).scatter(1, chosen, weights)  # (N, E)
    outs = torch.stack([expert(tokens) for expert in moe.experts], dim=1)  # (N, E, C)
    return (mix.unsqueeze(-1) * outs).sum(dim=1) + moe.shared_experts(tokens)


def grouped(moe: MoEFeedForward, tokens: torch.Tensor) -> torch.Tensor:
    return moe(tokens[None])[0][0]


WAYS = {"grouped (model.py)": grouped, "MiniMind2 training path": minimind2_training_path,
        "loop over tokens": token_loop, "all experts on all tokens": all_experts}


def speed_table(token_counts, loop_max: int, repeats: int) -> str:
    torch.manual_seed(0)
    moe = MoEFeedForward(LMConfig(**MINIMIND2_MOE)).eval()
    rows = ["| N tokens | " + " | ".join(f"{w} ms" for w in WAYS) + " |", "|---" * (len(WAYS) + 1) + "|"]
    for n in token_counts:
        tokens = torch.randn(n, moe.gate.in_features)
        reference = grouped(moe, tokens)
        cells = []
        for way in WAYS.values():
            if way is token_loop and n > loop_max:
                cells.append("-")
                continue
            with torch.no_grad():
                torch.testing.assert_close(way(moe, tokens), reference, atol=1e-4, rtol=1e-4)  # same function
                cells.append(f"{1e3 * best_time(lambda: way(moe, tokens), repeats):.2f}")
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def backward_table(n: int, repeats: int) -> str:
    """Forward + backward of one layer on n tokens, the two training paths."""
    torch.manual_seed(0)
    moe = MoEFeedForward(LMConfig(**MINIMIND2_MOE)).train()
    tokens = torch.randn(n, moe.gate.in_features)
    rows = ["| N tokens | way | forward + backward ms |", "|---|---|---|"]
    for name in ["grouped (model.py)", "MiniMind2 training path"]:
        way = WAYS[name]
        step = lambda: way(moe, tokens).pow(2).mean().backward()  # noqa: E731
        rows.append(f"| {n} | {name} | {1e3 * best_time(step, repeats):.1f} |")
    return "\n".join(rows)


# ---- 3. balance -----------------------------------------------------------------------------------


def counting_sequences(n: int, length: int, vocab: int, generator) -> torch.Tensor:
    """(n, length) sequences that count up from a random start by a random step of 1-3, mod vocab:
    random, yet learnable, so the language-model loss falls while the router trains."""
    start = torch.randint(0, vocab, (n, 1), generator=generator)
    step = torch.randint(1, 4, (n, 1), generator=generator)
    return (start + step * torch.arange(length)) % vocab


def gate_inputs(model: MiniMindLM, ids: torch.Tensor) -> list:
    """What each MoE layer's router sees for ids, (N, C) per layer (eval mode, no gradient)."""
    seen = []
    hooks = [layer.feed_forward.gate.register_forward_hook(lambda m, args, out: seen.append(args[0]))
             for layer in model.layers]  # fmt: skip
    with torch.no_grad():
        model.eval()(ids)
    for hook in hooks:
        hook.remove()
    return seen


def expert_load(model: MiniMindLM, ids: torch.Tensor) -> torch.Tensor:
    """(n_layers, E): the share of each layer's routing slots (N tokens x k) each expert gets.

    [[0.25, 0.25, 0.25, 0.25]] is an even load; [[0.86, 0.04, 0.05, 0.05]] a router that sends
    86% of the tokens to expert 0.
    """
    shares = []
    for layer, x in zip(model.layers, gate_inputs(model, ids)):
        moe = layer.feed_forward
        with torch.no_grad():
            _, _, chosen = moe.route(x)
        shares.append(F.one_hot(chosen.flatten(), len(moe.experts)).float().mean(0))
    return torch.stack(shares)


def train_router(alpha: float, steps: int, seed: int = 0, top_k: int = 1, skew: float = 3.0, lr: float = 1e-2) -> dict:
    """Train a tiny MoE (dim 32, 2 layers, 4 experts, top_k) on counting sequences, adding the aux
    loss weighted by alpha, from a router that starts out favouring expert 0: its gate row gets the
    direction of the mean router input added, times `skew`. Deterministic for a given seed.

    Returns the most-loaded expert's share before and after (the max over layers, on a held-out
    batch; 1/4 is even), each layer's load after, and the first and last steps' aux and
    cross-entropy losses.
    """
    torch.manual_seed(seed)
    vocab = 32
    model = MiniMindLM(LMConfig(dim=32, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=vocab, max_seq_len=64,
                                use_moe=True, num_experts_per_tok=top_k, aux_loss_alpha=alpha))
    held_out = counting_sequences(64, 32, vocab, torch.Generator().manual_seed(99))
    with torch.no_grad():
        for layer, x in zip(model.layers, gate_inputs(model, held_out)):
            direction = x.mean(dim=0)
            layer.feed_forward.gate.weight[0] += skew * direction / direction.norm()
    before = expert_load(model, held_out)

    data = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    history = []
    for _ in range(steps):
        seq = counting_sequences(16, 33, vocab, data)
        out = model(seq[:, :-1])
        ce = F.cross_entropy(out.logits.reshape(-1, vocab), seq[:, 1:].reshape(-1))
        optimizer.zero_grad()
        (ce + out.aux_loss).backward()  # what MiniMind2's training scripts minimise
        optimizer.step()
        history.append((ce.item(), out.aux_loss.item()))
    after = expert_load(model, held_out)
    return {"share_before": before.max().item(), "share_after": after.max().item(), "load_after": after.tolist(),
            "aux_first": history[0][1], "aux_last": history[-1][1], "ce_first": history[0][0], "ce_last": history[-1][0]}


def balance_table(steps: int, seeds: int) -> str:
    rows = ["| routing | alpha | seed | top share before | top share after | load after (layer 0; layer 1) | aux loss first -> last | cross-entropy first -> last |",
            "|---|---|---|---|---|---|---|---|"]
    for top_k in (1, 2):
        for alpha in (0.0, 0.1):
            for seed in range(seeds):
                r = train_router(alpha, steps, seed=seed, top_k=top_k)
                load = "; ".join(" ".join(f"{v:.2f}" for v in layer) for layer in r["load_after"])
                rows.append(f"| top-{top_k} | {alpha} | {seed} | {r['share_before']:.2f} | {r['share_after']:.2f} | {load} | "
                            f"{r['aux_first']:.3f} -> {r['aux_last']:.3f} | {r['ce_first']:.2f} -> {r['ce_last']:.2f} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["parameters", "speed", "balance"], help="one table only (default: all three)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256, 2048],
                        help="token counts N for the speed table (default: %(default)s)")
    parser.add_argument("--loop_max", type=int, default=256, help="largest N the loop over tokens is timed at (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per cell; the best is reported (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per balance run (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per balance configuration (default: %(default)s)")
    add_threads_arg(parser)
    args = parser.parse_args(argv)

    if args.only in (None, "parameters"):
        print(parameters_table(), end="\n\n")
    if args.only in (None, "speed"):
        machine = measure_machine(args.threads)
        print(machine.header(), end="\n\n")
        print(speed_table(args.tokens, args.loop_max, args.repeats), end="\n\n")
        print(backward_table(args.tokens[-1], args.repeats), end="\n\n")
        print(machine.footer(), end="\n\n")
    if args.only in (None, "balance"):
        torch.set_num_threads(1)  # tiny model: one thread is fastest, and the result does not depend on it
        print(balance_table(args.steps, args.seeds))


if __name__ == "__main__":
    main()
