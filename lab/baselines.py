"""LoRA against its predecessors (model/predecessors.py): Adapter Tuning (Houlsby et al. 2019,
bottleneck layers in series) and Prefix Tuning (Li & Liang 2021, trained key/value prefixes). LoRA
matches or beats both at a similar parameter count, without their inference latency (001's summary
under 什么是 LoRA, after Hu et al. 2021).

Four methods with the same trainable parameters within 10% (the demo's adapter's 198,656), each at its
own best learning rate on the sweep task (lab/sweeps.py: the best inside its grid), every seed:
  LoRA, the demo's            rank 16 on every Linear and the tied embedding, LoRA+ 16
  LoRA without the embedding  rank 19 on every Linear (the like-for-like LoRA: the predecessors cannot
                              touch the embedding either)
  Adapter Tuning              bottleneck 96 after wo and w2 of every block
  Prefix Tuning               194 key/value vectors per layer
(the sizes at the demo's defaults: lab/sweeps.py's matched() computes them from the demo's adapter)
Quality: the final validation loss on the task's held-out samples (and on the general conversations).
Latency: decode tokens/s at batch 1 of each trained model (seed 1337; LoRA merged and made plain, as a
merged model is shipped) against the SFT model alone.

Rule (set before the run), one verdict per half:
  matches or beats  holds if both LoRA configurations end no higher than either predecessor (ranges over
                    seeds not apart with LoRA above); with a caveat if only the demo's LoRA does; does
                    not hold otherwise
  without latency   holds if merged LoRA keeps at least 95% of the SFT model's decode speed and both
                    predecessors fall below 95%; with a caveat if LoRA keeps it but a predecessor does
                    too (no latency to avoid); does not hold if LoRA falls below 95%

    python -m lab.baselines
"""
import copy
import sys

from bench.bench_generate import decode_tokens_per_s
from lab import sweeps
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, below, loss_spread, mean, run_alone, table
from model.model_lora import merge_lora, remove_lora
from plot import panels
from plumbing.errors import run_main

TITLE = "LoRA vs its predecessors"
CLAIM = "LoRA matches or beats Adapter Tuning and Prefix Tuning at a similar parameter count, without their inference latency."
SOURCE = "001 什么是 LoRA; paper: Hu et al. 2021"
KEEP = 0.95  # of the SFT model's decode speed: within timing noise of it
RULE = ("matches or beats: holds if LoRA both with and without the embedding ends no higher than Adapter and Prefix Tuning "
        "(each at its own best rate, parameters within 10%; ranges over seeds not apart with LoRA above); with a caveat "
        "if only the demo's LoRA (with the embedding) does; does not hold otherwise. Without latency: holds if merged LoRA "
        f"keeps {KEEP:.0%} of the SFT model's decode speed and both predecessors fall below it; with a caveat if a "
        f"predecessor keeps it too; does not hold if LoRA falls below {KEEP:.0%}.")


def verdict(loss: dict, speed: dict) -> list:
    """loss: {"LoRA", "LoRA without the embedding", "adapter", "prefix": [losses]}; speed: the same keys' decode
    speed as a share of the SFT model's ("LoRA" merged)."""
    def matches(name):
        return not any(below(loss[p], loss[name]) for p in ("adapter", "prefix"))
    quality = HOLDS if matches("LoRA") and matches("LoRA without the embedding") else CAVEAT if matches("LoRA") else FAILS
    if speed["LoRA"] < KEEP:
        latency = FAILS
    else:
        latency = HOLDS if max(speed["adapter"], speed["prefix"]) < KEEP else CAVEAT
    return [("matches or beats", quality), ("without latency", latency)]


def run(lab) -> Finding:
    sft = lab.base()["sft"]
    matched = sweeps.matched(lab)
    LORAS, PREDECESSORS = (sweeps.DEMO, matched["without the embedding"]), (matched["adapter"], matched["prefix"])
    found = {s.method.label: s for s in sweeps.sweep_all(lab, [*LORAS, *PREDECESSORS])}
    short = dict(zip(found, ("LoRA", "LoRA without the embedding", "adapter", "prefix")))
    models = {"SFT alone": lab.load(sft)[0]}
    for label, s in found.items():
        model = lab.load(sft, s.best_runs[0].weights)[0]
        if label in (m.label for m in LORAS):  # merged and made plain, as a merged model is shipped (lab/merged_latency.py)
            model = copy.deepcopy(model)
            merge_lora(model)
            remove_lora(model)
        models[label] = model
    new_tokens, rounds = (8, 1) if lab.quick else (128, 7)
    speeds = {name: 0.0 for name in models}
    for _ in range(rounds):  # the models take turns, best of the rounds
        for name, model in models.items():
            speeds[name] = max(speeds[name], decode_tokens_per_s(model, 1, 32, new_tokens, 1))
    share = {label: speeds[label] / speeds["SFT alone"] for label in found}
    demo_count = sweeps.DEMO.trainable(lab)
    rows = []
    for m in (*LORAS, *PREDECESSORS):
        s, count = found[m.label], m.trainable(lab)
        rows.append([m.label, f"{count:,} ({count / demo_count - 1:+.1%})", s.describe(), loss_spread(s.at_best),
                     loss_spread([r.final("val_also_loss") for r in s.best_runs]),
                     f"{speeds[m.label]:,.0f} ({share[m.label]:.0%})"])
    loss = {short[label]: s.at_best for label, s in found.items()}
    verdicts = verdict(loss, {short[label]: v for label, v in share.items()})
    panels([("bar", dict(title="quality: sweep task, each at its best rate", x_label="final validation loss (mean; line: range)", zero=False,
                         bars={short[label]: (mean(s.at_best), min(s.at_best), max(s.at_best)) for label, s in found.items()})),
            ("bar", dict(title="latency: decode speed, the SFT model's = 100%", x_label="tokens/s, share of the SFT model's",
                         percent=True, bars={short[label]: (v,) * 3 for label, v in share.items()},
                         refs=[(KEEP, f"{KEEP:.0%}: the rule's threshold")]))],
           lab.figure("lora_vs_predecessors.svg"), "LoRA and its predecessors at matched parameters", columns=2, width=470)
    details = (f"Sweep task, seeds {', '.join(map(str, lab.seeds))}; trainable parameters (against the demo's adapter), the "
               "best learning rate (inside its grid, or a bound), the final validation loss on the task and on the general "
               f"conversations at it (mean, range); decode tokens/s at batch 1 ({new_tokens} new tokens, best of {rounds}; "
               f"the SFT model alone {speeds['SFT alone']:,.0f}, in brackets the share of it):\n\n"
               + table(["method", "trainable", "best learning rate", "task loss", "general loss", "decode tokens/s"], rows)
               + "\n\nThe adapter adds two small layers in series per block, which every token must pass through: it cannot "
               f"be merged away. The prefix adds {matched['prefix'].settings['lora_rank']} keys and values to every "
               "attention layer, taking attention slots at every step. Merged LoRA is the SFT model's own computation. The first edition compared a 16-vector prefix "
               "(12x fewer parameters) at the edge of its learning-rate grid, and LoRA with the embedding only.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   "Task loss at each one's best rate: " + ", ".join(f"{short[label]} {loss_spread(s.at_best)}"
                                                                     for label, s in found.items())
                   + "; decode speed of the SFT model's: " + ", ".join(f"{short[label]} {v:.0%}" for label, v in share.items()) + ".",
                   verdicts, details, ["lora_vs_predecessors.svg"], "baselines")


def main(argv=None):
    run_alone("baselines", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
