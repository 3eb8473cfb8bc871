"""The mixture of experts, measured: its parameters, the speed of its dispatch, and what the
load-balancing loss does to the experts' load; and how close it comes to MiniMind2-MoE's own
outputs. Prints markdown tables (docs/moe.md).

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
4. Golden: the max abs differences from tests/fixtures/minimind2_moe (made by MiniMind2's code).
5. At the demo's size, on the demo's pretraining data: the MoE demo model (dim 128, 4 layers, 4 routed
   experts, top-2, a shared expert) against the dense model of the same ACTIVE size (one FFN three
   times as wide: a token goes through 2 routed experts + the shared one), trained with the training
   scripts' own pieces: tokens/s and MFU counting the parameters a token actually uses; then each
   expert's share of the tokens after a short run with and without the load-balancing loss.

    python -m bench.bench_moe                   # all five, ~6 minutes on a shared 2-core machine
    python -m bench.bench_moe --only speed --threads 1   # docs/moe.md's speed table
    python -m bench.bench_moe --only balance    # the balance table only, ~15 s
    python -m bench.bench_moe --only demo       # MoE vs dense at the demo's size, ~3 minutes

On a machine other jobs keep busy, two torch threads wait for each other and the speed table
becomes noise (the conftest measured up to 30x slowdowns): use --threads 1 there.
"""

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from bench.machine import add_threads_arg, measure_machine
from plumbing.errors import run_main
from model.LMConfig import LMConfig
from model.model import MiniMindLM, count_parameters
from model.model_moe import MoEFeedForward
from plumbing import runtime as runtime_module

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


def interleaved_best_ms(calls: dict, repeats: int) -> dict:
    """{name: best ms} of the callables in `calls`, timed in `repeats` rounds that take turns
    (a, b, c, a, b, c, ...), so a slow moment of a shared machine does not land on one of them only."""
    best = {name: float("inf") for name in calls}
    for call in calls.values():
        call()  # warm-up
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], 1e3 * (time.perf_counter() - start))
    return best


def speed_table(token_counts, loop_max: int, repeats: int) -> str:
    torch.manual_seed(0)
    moe = MoEFeedForward(LMConfig(**MINIMIND2_MOE)).eval()
    rows = ["| N tokens | " + " | ".join(f"{w} ms" for w in WAYS) + " |", "|---" * (len(WAYS) + 1) + "|"]
    for n in token_counts:
        tokens = torch.randn(n, moe.gate.in_features)
        calls = {}
        with torch.no_grad():
            reference = grouped(moe, tokens)
            for name, way in WAYS.items():
                if way is token_loop and n > loop_max:
                    continue
                torch.testing.assert_close(way(moe, tokens), reference, atol=1e-4, rtol=1e-4)  # same function
                calls[name] = lambda way=way: way(moe, tokens)
            best = interleaved_best_ms(calls, repeats)
        rows.append(f"| {n} | " + " | ".join(f"{best[w]:.2f}" if w in best else "-" for w in WAYS) + " |")
    return "\n".join(rows)


def backward_table(n: int, repeats: int) -> str:
    """Forward + backward of one layer on n tokens, the two training paths."""
    torch.manual_seed(0)
    moe = MoEFeedForward(LMConfig(**MINIMIND2_MOE)).train()
    tokens = torch.randn(n, moe.gate.in_features)
    names = ["grouped (model.py)", "MiniMind2 training path"]
    calls = {name: lambda way=WAYS[name]: way(moe, tokens).pow(2).mean().backward() for name in names}
    best = interleaved_best_ms(calls, repeats)
    rows = ["| N tokens | way | forward + backward ms |", "|---|---|---|"]
    rows += [f"| {n} | {name} | {best[name]:.1f} |" for name in names]
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
    return {"share_before": before.max().item(), "share_after": after.max().item(),
            "load_before": before.tolist(), "load_after": after.tolist(),
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


def load_figure(steps: int, seed: int = 0) -> str:
    """An SVG bar chart: each expert's share of the tokens in each layer of train_router's top-1
    model, at the start and after `steps` steps without and with the aux loss (alpha 0.1)."""
    runs = {"0.0": train_router(0.0, steps, seed=seed), "0.1": train_router(0.1, steps, seed=seed)}
    panels = [("start (router favours expert 0)", runs["0.0"]["load_before"]),
              (f"after {steps} steps, no aux loss", runs["0.0"]["load_after"]),
              (f"after {steps} steps, aux loss alpha 0.1", runs["0.1"]["load_after"])]
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    width, height, left, top, plot_h, panel_w, bar_w = 760, 300, 50, 40, 200, 230, 22
    y_of = lambda share: top + plot_h * (1 - share)  # noqa: E731 -- share 0..1 -> pixel row
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="20" font-size="14">Share of the tokens each expert gets: a top-1 router over 4 experts (bench_moe.train_router)</text>']
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" x2="{width - 10}" y1="{y_of(share):.1f}" y2="{y_of(share):.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 8}" y="{y_of(share) + 4:.1f}" text-anchor="end">{share:.2f}</text>')
    out.append(f'<line x1="{left}" x2="{width - 10}" y1="{y_of(0.25):.1f}" y2="{y_of(0.25):.1f}" stroke="#888" stroke-dasharray="4 3"/>')
    for p, (title, load) in enumerate(panels):
        x0 = left + 10 + p * (panel_w + 10)
        out.append(f'<text x="{x0 + panel_w / 2:.0f}" y="{top + plot_h + 40}" text-anchor="middle">{title}</text>')
        for layer, shares in enumerate(load):
            out.append(f'<text x="{x0 + layer * 110 + 2 * bar_w:.0f}" y="{top + plot_h + 18}" text-anchor="middle">layer {layer}</text>')
            for expert, share in enumerate(shares):
                x = x0 + layer * 110 + expert * bar_w
                out.append(f'<rect x="{x}" y="{y_of(share):.1f}" width="{bar_w - 3}" height="{plot_h * share:.1f}" fill="{colors[expert]}">'
                           f'<title>layer {layer}, expert {expert}: {share:.2f}</title></rect>')
    legend = " ".join(f'<tspan fill="{c}">&#9632; expert {i}</tspan>' for i, c in enumerate(colors))
    out.append(f'<text x="{left}" y="{height - 8}">{legend} <tspan fill="#888">--- even load (0.25)</tspan></text>')
    return "\n".join(out + ["</svg>"]) + "\n"


# ---- 4. MiniMind2 golden files ------------------------------------------------------------------


def golden_table(fixtures: str = "tests/fixtures/minimind2_moe") -> str:
    """Max abs differences from MiniMind2-MoE's own outputs (tests/test_moe.py asserts on these)."""
    golden = torch.load(f"{fixtures}/golden.pth", weights_only=True)
    with open(f"{fixtures}/model_config.json") as f:
        model = MiniMindLM(LMConfig.from_dict(json.load(f)))
    model.load_state_dict(torch.load(f"{fixtures}/model.pth", weights_only=True), strict=True)
    ids = golden["input_ids"]
    with torch.no_grad():
        eval_logits = model.eval()(ids).logits
        out = model.train()(ids)
        for layer in model.layers:  # put back MiniMind2's float16 storage of routed expert outputs
            for expert in layer.feed_forward.experts:
                expert.register_forward_hook(lambda module, args, y: y.half().float())
        rounded = model(ids).logits

    def gap(a, b):
        return f"{(a - b).abs().max().item():.1e}"

    return "\n".join([
        "| compared | max abs difference |", "|---|---|",
        f"| eval-mode logits vs MiniMind2's logits_eval | {gap(eval_logits, golden['logits_eval'])} |",
        f"| train-mode aux_loss vs aux_loss_train ({golden['aux_loss_train'].item():.4f}) | {gap(out.aux_loss, golden['aux_loss_train'])} |",
        f"| train-mode logits vs logits_train | {gap(out.logits, golden['logits_train'])} |",
        f"| the same, MiniMind2's float16 rounding put back | {gap(rounded, golden['logits_train'])} |",
        f"| MiniMind2's own logits_eval vs logits_train | {gap(golden['logits_eval'], golden['logits_train'])} |",
    ])  # fmt: skip


# ---- 5. at the demo's size ------------------------------------------------------------------------

DEMO_SHAPE = dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, vocab_size=2048)  # train_pretrain.py's defaults


def demo_models() -> dict:
    """{"MoE": the demo model with use_moe, "dense, same active size": the demo model whose one FFN is
    as wide as the three a token passes through (2 routed experts + the shared one)}, same seed."""
    moe = LMConfig(**DEMO_SHAPE, use_moe=True)
    active_ffn = (moe.num_experts_per_tok + int(moe.n_shared_experts)) * moe.hidden_dim
    torch.manual_seed(0)
    models = {"MoE": MiniMindLM(moe)}
    torch.manual_seed(0)
    models["dense, same active size"] = MiniMindLM(LMConfig(**DEMO_SHAPE, hidden_dim=active_ffn))
    return models


def active_matmul_params(model: MiniMindLM) -> int:
    """Weights of the Linears one token goes through: every Linear, less the routed experts it skips."""
    from bench.bench_train import matmul_params
    total = matmul_params(model)
    config = model.config
    if not config.use_moe:
        return total
    one_expert = sum(m.weight.numel() for m in model.layers[0].feed_forward.experts[0].modules()
                     if isinstance(m, torch.nn.Linear))
    return total - (config.n_routed_experts - config.num_experts_per_tok) * one_expert * config.n_layers


def demo_batches(n_batches: int, batch: int = 16, seq: int = 224):
    """(X, Y, loss_mask) batches of the demo's pretraining data, in the training scripts' order for seed 0."""
    import training
    from dataset.lm_dataset import PretrainDataset
    from formats.loader import repo_path
    from model.tokenizer import Tokenizer
    rt = runtime_module.Runtime(torch.device("cpu"))
    dataset = PretrainDataset(repo_path("dataset/pretrain_demo.jsonl"), Tokenizer.load(repo_path("model/demo_tokenizer")),
                              max_length=seq, verbose=False)
    data = training.StepBatches(dataset, batch, 1, epochs=100, seed=0, rt=rt)
    batches = []
    for _, _, (micro_batch,) in data.steps():
        batches.append(micro_batch)
        if len(batches) == n_batches:
            return batches


def train_demo(model: MiniMindLM, batches, alpha=None, lr=2e-3) -> dict:
    """Train `model` on `batches` with the training scripts' step (fused AdamW, masked loss + aux loss,
    clip 1.0) -> seconds per step (median over the second half), final task and aux losses."""
    import statistics

    import training
    if alpha is not None:
        for layer in model.layers:
            layer.feed_forward.aux_loss_alpha = alpha
    params = list(model.parameters())
    optimizer = training.make_optimizer([{"params": params, "lr_scale": 1.0}], lr, torch.device("cpu"))
    model.train()
    times, task, aux = [], 0.0, 0.0
    for step, (X, Y, mask) in enumerate(batches):
        training.set_lr(optimizer, training.get_lr(step, len(batches), lr, 20))
        t0 = time.perf_counter()
        out = model(X)
        task = training.masked_cross_entropy(out.logits, Y, mask)
        (task + out.aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        task, aux = task.item(), out.aux_loss.item()
    return {"step_s": statistics.median(times[len(times) // 2:]), "task_loss": task, "aux_loss": aux}


def demo_table(steps: int, peak_gflops: float) -> str:
    """MoE vs dense of the same active size at the demo's size: speed, MFU, loss; and the MoE's expert load
    after `steps` steps with MiniMind2's aux loss (alpha 0.1) and without it (alpha 0)."""
    from bench.bench_train import flops_per_token
    batches = demo_batches(steps)
    held_out = demo_batches(steps + 4)[-4:]
    tokens = batches[0][0].numel()
    rows = ["| model | parameters | used per token | step s | tokens/s | MFU (active) | task loss after | aux loss after | "
            "expert shares after (layer 0 .. 3) |", "|---|---|---|---|---|---|---|---|---|"]
    runs = [("MoE, aux loss alpha 0.1", "MoE", 0.1), ("MoE, no aux loss", "MoE", 0.0),
            ("dense, same active size", "dense, same active size", None)]
    for label, kind, alpha in runs:
        model = demo_models()[kind]
        total, _ = count_parameters(model)
        active = active_matmul_params(model)
        r = train_demo(model, batches, alpha)
        seq = batches[0][0].shape[1]
        mfu = flops_per_token(model.config, seq, active, 0, "pretrain") * tokens / r["step_s"] / (peak_gflops * 1e9)
        shares = "-"
        if model.config.use_moe:
            width = min(X.shape[1] for X, _, _ in held_out)  # batches are trimmed to their own longest sample
            load = expert_load(model, torch.cat([X[:, :width] for X, _, _ in held_out]))
            shares = "; ".join(" ".join(f"{v:.2f}" for v in layer) for layer in load.tolist())
        rows.append(f"| {label} | {total / 1e6:.2f}M | {active / 1e6:.2f}M | {r['step_s']:.3f} | {tokens / r['step_s']:,.0f} | "
                    f"{mfu:.0%} | {r['task_loss']:.2f} | {r['aux_loss']:.3f} | {shares} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["golden", "parameters", "speed", "balance", "demo"], help="one table only (default: all)")
    parser.add_argument("--demo_steps", type=int, default=150,
                        help="training steps of each demo-size run (batch 16 x 223 tokens of the demo data) (default: %(default)s)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256, 2048],
                        help="token counts N for the speed table (default: %(default)s)")
    parser.add_argument("--loop_max", type=int, default=256, help="largest N the loop over tokens is timed at (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds per row; each way's best is reported (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per balance run (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per balance configuration (default: %(default)s)")
    parser.add_argument("--figure", help="also write the balance figure (seed 0) as SVG to this path, e.g. docs/figures/moe_load.svg")
    add_threads_arg(parser)
    args = parser.parse_args(argv)

    if args.only in (None, "golden"):
        print(golden_table(), end="\n\n")
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
        if args.figure:
            with open(args.figure, "w", encoding="utf-8") as f:
                f.write(load_figure(args.steps))
    if args.only in (None, "demo"):
        torch.set_num_threads(args.threads)
        machine = measure_machine(args.threads)
        print("\n" + machine.header(), end="\n\n")
        print(demo_table(args.demo_steps, machine.matmul_gflops), end="\n\n")
        print(machine.footer())


if __name__ == "__main__":
    sys.exit(run_main(main))
