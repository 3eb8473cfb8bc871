"""Claim 5: a merged adapter adds no latency at inference; an unmerged one costs more as the rank grows.

Decode speed (batch 1, greedy, prefill excluded: bench/bench_generate.py's decode_tokens_per_s) of
the base model, the same model with adapters beside its Linears (unmerged: W x + B(A x), three
matmuls), and with them merged (W + B·A: one matmul). B is drawn at random (as after training), so
merging really changes the weights. Every variant is timed in turn, best of several rounds, so a
busy moment of the machine falls on all alike.

    python -m lab.merged_latency
"""
import copy
import sys

import torch

from bench.bench_generate import decode_tokens_per_s, model_sizes
from plumbing.errors import run_main
from lab.lab import Finding, run_alone, table
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from model.model_lora import apply_lora, merge_lora, remove_lora
from plumbing.flags import LORA_TARGETS
from plot import line_chart

RANKS = (1, 2, 4, 8, 16, 32, 64)
TARGETS = LORA_TARGETS.split(",")  # the demo's: every Linear and the tied embedding


def adapted(model, rank, merged, plain=False):
    """A copy of `model` with rank-`rank` adapters on TARGETS, B random (std 0.02); merged or not, and
    plain: merged, then the LoRA layers swapped back for plain ones (remove_lora), as a merged model is shipped."""
    copied = copy.deepcopy(model)
    apply_lora(copied, rank, target_modules=TARGETS)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in copied.named_parameters():
            if name.endswith(".lora.B.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    if merged:
        merge_lora(copied)
    if plain:
        remove_lora(copied)
    return copied.eval()


def best_rates(variants: dict, new_tokens, rounds) -> dict:
    """{name: best decode tokens/s}, the variants taking turns each round."""
    best = {name: 0.0 for name in variants}
    for _ in range(rounds):
        for name, model in variants.items():
            best[name] = max(best[name], decode_tokens_per_s(model, 1, 32, new_tokens, 1))
    return best


def run(lab) -> Finding:
    new_tokens, rounds = (8, 1) if lab.quick else (128, 7)
    sizes = {"demo": model_sizes()["demo"]} if lab.quick else model_sizes()
    rows, by_size = [], {}
    for size, fields in sizes.items():
        torch.manual_seed(0)
        base = MiniMindLM(LMConfig(**fields, max_seq_len=256)).eval()
        rates = best_rates({"base": base, "unmerged": adapted(base, 16, False), "merged": adapted(base, 16, True),
                            "merged, plain": adapted(base, 16, True, plain=True)}, new_tokens, rounds)
        by_size[size] = rates
        rows.append([size, f"{rates['base']:,.0f}", *(f"{rates[k]:,.0f} ({rates[k] / rates['base']:.0%})"
                                                      for k in ("unmerged", "merged", "merged, plain"))])
    size = list(sizes)[-1]
    torch.manual_seed(0)
    base = MiniMindLM(LMConfig(**sizes[size], max_seq_len=256)).eval()
    ranks = RANKS[:2] if lab.quick else RANKS
    sweep = best_rates({"base": base, **{f"r={r}": adapted(base, r, False) for r in ranks}}, new_tokens, rounds)
    rank_rows = [[f"r={r}", f"{sweep[f'r={r}']:,.0f}", f"{sweep[f'r={r}'] / sweep['base']:.0%}"] for r in ranks]
    line_chart({"unmerged": [(r, sweep[f"r={r}"] / sweep["base"]) for r in ranks],
                "merged, plain (any rank)": [(ranks[0], by_size[size]["merged, plain"] / by_size[size]["base"]),
                                             (ranks[-1], by_size[size]["merged, plain"] / by_size[size]["base"])]},
               lab.figure("lora_latency.svg"), f"Decode speed with adapters vs the base model, {size}",
               "LoRA rank r (every Linear + embedding)", "tokens/s relative to the base", log_x=True)
    merged = min(r["merged, plain"] / r["base"] for r in by_size.values())
    wrapped = min(r["merged"] / r["base"] for r in by_size.values())
    unmerged = max(r["unmerged"] / r["base"] for r in by_size.values())
    details = (f"Decode tokens/s, batch 1, {new_tokens} new tokens, best of {rounds} rounds; adapters of rank 16 on "
               f"{LORA_TARGETS} (in brackets: of the base's speed):\n\n"
               + table(["model", "base", "unmerged", "merged", "merged, plain"], rows)
               + f"\n\nUnmerged, {size}, as the rank grows:\n\n" + table(["rank", "tokens/s", "of the base"], rank_rows)
               + "\n\nMerged, the adapted model is the base model with other numbers in W: the same matmuls, the same "
               "speed, whatever the rank. \"merged\" keeps the LoRALinear layers (their Python checks cost a little per "
               "layer and token, visible on the tiny demo model); \"merged, plain\" is what a merged model is when "
               "shipped (merge_lora, then remove_lora: plain Linear layers, convert_model.py --merge). Unmerged, every adapted Linear runs two more small matmuls per token; at batch "
               "1 their cost is mostly the per-call overhead, so it grows slowly with the rank. The price of merging: "
               "one adapter per model copy (serving many adapters in one batch needs them unmerged, docs/serving.md).")
    verdict = "holds" if merged >= 0.95 else "holds with a caveat"
    return Finding(5, "Merged adapters add no latency", "After merging B·A into W, LoRA adds no inference latency "
                   "(unlike adapters inserted in series).",
                   f"Merged: {merged:.0%} or more of the base's decode speed ({wrapped:.0%} with the LoRA layers kept); "
                   f"unmerged rank 16: {unmerged:.0%} at best; "
                   f"unmerged {size} from {sweep[f'r={ranks[0]}'] / sweep['base']:.0%} (r={ranks[0]}) to "
                   f"{sweep[f'r={ranks[-1]}'] / sweep['base']:.0%} (r={ranks[-1]}).",
                   verdict, details, ["lora_latency.svg"], "merged_latency")


def main(argv=None):
    run_alone("merged_latency", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
