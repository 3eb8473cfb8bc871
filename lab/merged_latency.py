"""Once B·A is merged into W, LoRA adds no inference latency (000 §1.1; 001 explains it under 推理).

Decode speed (batch 1, greedy, prefill excluded: bench/bench_generate.py's decode_tokens_per_s) of
the base model, the same model with adapters beside its Linears (unmerged: W x + B(A x), three
matmuls), and with them merged (W + B·A: one matmul), kept as LoRA layers or made plain (remove_lora:
what a merged model is when shipped, convert_model.py --merge). B is drawn at random (as after
training), so merging really changes the weights. Every variant is timed in turn, best of several
rounds, so a busy moment of the machine falls on all alike.

Rule (set before the run): holds if the merged, plain model keeps at least 95% of the base's decode
speed at every size while the unmerged one loses more than 5% somewhere (merging is what removes the
cost); with a caveat if the unmerged one also keeps 95% everywhere (no latency to remove); does not
hold if the merged model is below 95% at some size. 5%: the best of several rounds on a shared
2-core machine varies by a few percent, so a smaller gap is not a measured one.

    python -m lab.merged_latency
"""
import copy
import sys

import torch

from bench.bench_generate import decode_tokens_per_s, model_sizes
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, run_alone, table
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from model.model_lora import apply_lora, merge_lora, remove_lora
from plot import panels
from plumbing.errors import run_main
from plumbing.flags import LORA_TARGETS

TITLE = "Merged adapters add no latency"
CLAIM = "After merging B·A into W, LoRA adds no inference latency (unlike adapters inserted in series)."
SOURCE = "000 §1.1 LoRA 的核心优势; 001 LoRA 的训练和推理过程 (推理)"
KEEP = 0.95  # of the base's speed: within timing noise of it (see the docstring)
RULE = (f"holds if the merged, plain model keeps at least {KEEP:.0%} of the base's decode speed at every size while the "
        f"unmerged one falls below {KEEP:.0%} somewhere; with a caveat if the unmerged one keeps {KEEP:.0%} everywhere too "
        f"(there is no latency to remove); does not hold if the merged model falls below {KEEP:.0%} at some size "
        "(5%: the timing noise of the best of several rounds).")
RANKS = (1, 4, 16, 64)
TARGETS = LORA_TARGETS.split(",")  # the demo's: every Linear and the tied embedding


def verdict(merged: list, unmerged: list) -> str:
    """merged, unmerged: decode speed as a share of the base's, one per model size."""
    if min(merged) < KEEP:
        return FAILS
    return HOLDS if min(unmerged) < KEEP else CAVEAT


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
    new_tokens, rounds = (8, 1) if lab.quick else (128, 5)
    sizes = {"demo": model_sizes()["demo"]} if lab.quick else model_sizes()
    rows, by_size = [], {}
    for size, fields in sizes.items():
        torch.manual_seed(0)
        base = MiniMindLM(LMConfig(**fields, max_seq_len=256)).eval()
        rates = best_rates({"base": base, "unmerged": adapted(base, 16, False), "merged": adapted(base, 16, True),
                            "merged, plain": adapted(base, 16, True, plain=True)}, new_tokens, rounds)
        by_size[size] = {k: v / rates["base"] for k, v in rates.items()}
        rows.append([size, f"{rates['base']:,.0f}", *(f"{rates[k]:,.0f} ({rates[k] / rates['base']:.0%})"
                                                      for k in ("unmerged", "merged", "merged, plain"))])
    size = list(sizes)[-1]
    torch.manual_seed(0)
    base = MiniMindLM(LMConfig(**sizes[size], max_seq_len=256)).eval()
    ranks = RANKS[:2] if lab.quick else RANKS
    sweep = best_rates({"base": base, **{f"r={r}": adapted(base, r, False) for r in ranks}}, new_tokens, rounds)
    rank_rows = [[f"r={r}", f"{sweep[f'r={r}']:,.0f}", f"{sweep[f'r={r}'] / sweep['base']:.0%}"] for r in ranks]
    merged = [r["merged, plain"] for r in by_size.values()]
    unmerged = [r["unmerged"] for r in by_size.values()] + [sweep[f"r={r}"] / sweep["base"] for r in ranks]
    panels([("line", dict(title=f"{size}: unmerged, as the rank grows",
                          series={"unmerged": [(r, sweep[f"r={r}"] / sweep["base"]) for r in ranks],
                                  "merged, plain (r=16)": [(16, by_size[size]["merged, plain"])]},
                          x_label="LoRA rank r (every Linear + embedding)", y_label="decode speed, share of the base's",
                          log_x=True, x_ticks=list(ranks), percent=True,
                          refs=[(1.0, "the base model"), (KEEP, f"{KEEP:.0%}: the rule's threshold")])),
            ("bar", dict(title="rank 16, each size", x_label="decode speed, share of the base's", percent=True,
                         bars={f"{s}, {k}": (v[k], v[k], v[k]) for s, v in by_size.items()
                               for k in ("unmerged", "merged", "merged, plain")},
                         refs=[(KEEP, f"{KEEP:.0%}: the rule's threshold")]))],
           lab.figure("lora_latency.svg"), "Decode speed with adapters, against the base model", columns=2, width=470)
    details = (f"Decode tokens/s, batch 1, {new_tokens} new tokens, best of {rounds} rounds; adapters of rank 16 on "
               f"{LORA_TARGETS} (in brackets: of the base's speed):\n\n"
               + table(["model", "base", "unmerged", "merged", "merged, plain"], rows)
               + f"\n\nUnmerged, {size}, as the rank grows:\n\n" + table(["rank", "tokens/s", "of the base"], rank_rows)
               + "\n\nMerged, the adapted model is the base model with other numbers in W: the same matmuls, the same "
               "speed, whatever the rank (so it is measured once, at rank 16). \"merged\" keeps the LoRALinear layers "
               "(their Python checks cost a little per layer and token, visible on the tiny demo model, where a speed "
               "above 100% is timing noise); \"merged, plain\" is what a merged model is when shipped. Unmerged, every "
               "adapted Linear runs two more small matmuls per token; at batch 1 their cost is mostly the per-call "
               "overhead, so it grows slowly with the rank. The price of merging: one adapter per model copy (serving "
               "many adapters in one batch needs them unmerged, docs/serving.md).")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"Merged and plain: {min(merged):.0%} or more of the base's decode speed; unmerged: down to "
                   f"{min(unmerged):.0%} ({size} from {sweep[f'r={ranks[0]}'] / sweep['base']:.0%} at r={ranks[0]} to "
                   f"{sweep[f'r={ranks[-1]}'] / sweep['base']:.0%} at r={ranks[-1]}).",
                   [("", verdict(merged, unmerged))], details, ["lora_latency.svg"], "merged_latency")


def main(argv=None):
    run_alone("merged_latency", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
