"""Prefix Tuning is hard to train (its quality does not rise steadily with the prefix's size) and it
uses up the context (001 §2.2 Prefix Tuning).

Two measurements:
  training  prefixes of 16, 64 and 194 vectors per layer (194: the demo's adapter's parameter count,
            lab/sweeps.py's matched()) on the sweep task, all at the 194-vector prefix's best learning
            rate, every seed; LoRA's loss at matched parameters beside them
  context   at MiniMind2-Small's size with MiniMind2's 512-token training window: the prefix that
            matches MiniMind2's LoRA (r=16 on wq, wo) in parameters, how many positions of every
            layer's attention (and KV cache) it takes, and the decode speed it leaves (batch 1, a
            256-token prompt, random weights; bench/bench_generate.py)
The prefix here is Li & Liang's deep version (model/predecessors.py): trained keys and values in every
layer, which take attention slots and cache entries like tokens but no positions of the input.

Rule (set before the run), one verdict per half:
  hard to train       holds if some longer prefix does not end below the next shorter one (ranges over
                      seeds overlap, or it ends above); does not hold if every longer prefix ends below
                      the shorter, ranges apart
  uses up the context holds if the matched prefix takes at least 10% of the window's positions in every
                      layer; with a caveat if less, but it still costs at least 5% of the decode speed;
                      does not hold otherwise

    python -m lab.prefix_tuning
"""
import copy
import sys

import torch

from bench.bench_generate import decode_tokens_per_s, model_sizes
from lab import sweeps
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, below, loss_spread, mean, run_alone, table
from lab.memory import TINY
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from model.predecessors import apply_method
from plot import panels
from plumbing.errors import run_main

TITLE = "Prefix Tuning: hard to train, uses up the context"
CLAIM = ("Prefix Tuning is hard to train (quality does not rise steadily with the number of prefix parameters) and its "
         "prefix takes room from the input.")
SOURCE = "001 §2.2 Prefix Tuning"
LENGTHS = (16, 64)  # and the prefix as large as the demo's adapter (194 vectors at the demo's defaults)
SHARE = 0.10  # of the window's positions: a prefix that takes a tenth of them has used up real room
SLOWER = 0.05  # the decode-speed cost that is beyond timing noise
WINDOW = 512  # MiniMind2's training window (its --max_seq_len)
RULE = ("hard to train: holds if some longer prefix (16, 64, and as large as the demo's adapter) does not end below the "
        "next shorter one, ranges "
        "over seeds overlapping or above; does not hold if each ends below, ranges apart. Uses up the context: holds if "
        f"the prefix matching MiniMind2's LoRA in parameters takes at least {SHARE:.0%} of MiniMind2's {WINDOW}-position "
        f"window in every layer; with a caveat if less but it costs at least {SLOWER:.0%} of the decode speed; does not "
        "hold otherwise.")


def verdict(by_length: dict, context_share: float, decode_ratio: float) -> list:
    """by_length: {vectors: [final validation loss per seed]}; context_share: the matched prefix's positions / the
    window; decode_ratio: decode speed with it / without."""
    lengths = sorted(by_length)
    steady = all(below(by_length[longer], by_length[shorter]) for shorter, longer in zip(lengths, lengths[1:]))
    if context_share >= SHARE:
        context = HOLDS
    else:
        context = CAVEAT if decode_ratio <= 1 - SLOWER else FAILS
    return [("hard to train", FAILS if steady else HOLDS), ("uses up the context", context)]


def matched_prefix(fields, lora_params) -> int:
    """Prefix vectors per layer with about `lora_params` parameters: each holds a key and a value per kv head."""
    head_dim = fields["dim"] // fields["n_heads"]
    return max(1, round(lora_params / (2 * fields["n_layers"] * fields["n_kv_heads"] * head_dim)))


def run(lab) -> Finding:
    method = sweeps.matched(lab)["prefix"]
    prefix, demo = sweeps.sweep_all(lab, [method, sweeps.DEMO])
    matched_length = method.settings["lora_rank"]
    shorter = [n for n in LENGTHS if n < matched_length]
    made = lab.train_all([lab.lora_job(lab.sweep_task(), variant="prefix", lora_rank=n, learning_rate=prefix.best, seed=s)
                          for n in shorter for s in lab.seeds])
    k = len(lab.seeds)
    by_length = {n: [r.final() for r in made[i * k:(i + 1) * k]] for i, n in enumerate(shorter)}
    by_length[matched_length] = prefix.at_best

    fields = TINY if lab.quick else model_sizes()["MiniMind2-Small"]
    lora_params = 2 * 16 * 2 * fields["dim"] * fields["n_layers"]  # r=16 on wq and wo, both dim x dim
    vectors = matched_prefix(fields, lora_params)
    torch.manual_seed(0)
    base = MiniMindLM(LMConfig(**fields, max_seq_len=1024)).eval()
    with_prefix = copy.deepcopy(base)
    apply_method(with_prefix, "prefix", vectors)
    prompt, new_tokens, rounds = (32, 8, 1) if lab.quick else (256, 64, 5)
    speed = {"without": 0.0, "with": 0.0}
    for _ in range(rounds):
        for name, model in (("without", base), ("with", with_prefix.eval())):
            speed[name] = max(speed[name], decode_tokens_per_s(model, 1, prompt, new_tokens, 1))
    share, ratio = vectors / WINDOW, speed["with"] / speed["without"]

    lengths = sorted(by_length)
    panels([("line", dict(title="sweep task, each length at one rate", series={"prefix": [(n, mean(by_length[n])) for n in lengths]},
                          spread={"prefix": [(n, min(by_length[n]), max(by_length[n])) for n in lengths]},
                          x_label="prefix vectors per layer", y_label="final validation loss", log_x=True, x_ticks=list(lengths),
                          refs=[(mean(demo.at_best), f"LoRA, the demo's, as many parameters as {matched_length} vectors")])),
            ("bar", dict(title=f"MiniMind2-Small, a prefix of {vectors} vectors", x_label="share", percent=True,
                         bars={f"positions of a {WINDOW}-token window": (share,) * 3, "decode speed kept": (ratio,) * 3},
                         refs=[(SHARE, f"{SHARE:.0%}: 'uses up the context'")]))],
           lab.figure("lora_prefix_tuning.svg"), "Prefix Tuning: size against quality, and the room it takes", columns=2, width=470)
    rows = [[n, f"{sweeps.lora('', 0, variant='prefix', lora_rank=n).trainable(lab):,}", loss_spread(by_length[n])]
            for n in lengths]
    details = (f"Sweep task, seeds {', '.join(map(str, lab.seeds))}, every length at {prefix.best:g} (the "
               f"{matched_length}-vector prefix's best, {prefix.describe()}); final validation loss:\n\n"
               + table(["prefix vectors per layer", "trainable", "validation loss"], rows)
               + f"\n\nLoRA with the same parameters as {matched_length} vectors (the demo's adapter, at its best rate): "
               f"{loss_spread(demo.at_best)}.\n\nContext, MiniMind2-Small: MiniMind2's LoRA (r=16 on wq, wo) has "
               f"{lora_params:,} parameters; a prefix as large is {vectors} vectors per layer, {share:.0%} of the "
               f"{WINDOW}-token window in every layer's attention and KV cache. Decode with a {prompt}-token prompt: "
               f"{speed['without']:,.0f} tokens/s without it, {speed['with']:,.0f} with it ({ratio:.0%}). The input keeps "
               "all its positions here (the prefix has none of its own), so what is used up is attention and cache, "
               "not the input's length; in Li & Liang's input-level variant the prefix takes the positions too.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   "Validation loss by prefix length: " + ", ".join(f"{n}: {mean(by_length[n]):.3f}" for n in lengths)
                   + f"; at MiniMind2-Small a prefix as large as MiniMind2's LoRA takes {share:.0%} of the window and leaves "
                   f"{ratio:.0%} of the decode speed.", verdict(by_length, share, ratio), details,
                   ["lora_prefix_tuning.svg"], "prefix_tuning")


def main(argv=None):
    run_alone("prefix_tuning", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
