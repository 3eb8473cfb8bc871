"""Claim 12: LoRA wants a learning rate about 10x higher than full fine-tuning of the same model.

A learning-rate sweep of each method on the sweep task, from the demo's SFT model, seed 1337: plain
LoRA (A and B at the same rate, as the rule of thumb assumes), LoRA at the demo's settings (LoRA+:
B at 16x the rate given, which is A's), and full fine-tuning (train_full_sft.py) on the same data
and steps. The best learning rate of each is the one with the lowest final validation loss; the
ratio of plain LoRA's to full fine-tuning's is the claim.

    python -m lab.learning_rate
"""
import sys

from plumbing.errors import run_main
from lab.lab import Finding, run_alone, table
from plot import line_chart

LORA_RATES = (2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2)
RATES = {"plain LoRA": LORA_RATES, "LoRA+ 16 (the demo's)": LORA_RATES,
         "full": (3.125e-5, 6.25e-5, 1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)}
SETTINGS = {"plain LoRA": dict(lora_plus_ratio=1), "LoRA+ 16 (the demo's)": dict(), "full": dict()}


def run(lab) -> Finding:
    rates = {m: r[3:5] for m, r in RATES.items()} if lab.quick else RATES
    configs = [(m, lr) for m in rates for lr in rates[m]]
    made = lab.train_all([(lab.full_job if m == "full" else lab.lora_job)(lab.sweep_task(), learning_rate=lr, **SETTINGS[m])
                          for m, lr in configs])
    loss = {config: run.final("val_loss") for config, run in zip(configs, made)}
    best = {m: min(rates[m], key=lambda lr: loss[m, lr]) for m in rates}
    all_rates = sorted({lr for r in rates.values() for lr in r})
    rows = [[f"{lr:g}", *(f"{loss[m, lr]:.3f}" + (" **best**" if best[m] == lr else "") if lr in rates[m] else ""
                          for m in rates)] for lr in all_rates]
    line_chart({m: [(lr, loss[m, lr]) for lr in rates[m]] for m in rates}, lab.figure("lora_learning_rate.svg"),
               "Validation loss after the sweep task vs learning rate", "learning rate", "validation loss",
               log_x=True, log_y=True)
    plain, plus = "plain LoRA", "LoRA+ 16 (the demo's)"
    ratio = best[plain] / best["full"]
    at_edge = [m for m in rates if best[m] in (rates[m][0], rates[m][-1])]
    details = (f"Sweep task ({made[0].curve('loss')[-1][0]} steps), seed 1337; final validation loss. LoRA: rank 16 on every "
               "Linear + embedding, the rate given is A's (and B's for plain LoRA; B's is 16x it with LoRA+); full: "
               "every weight; inf: the run diverged:\n\n"
               + table(["learning rate", *rates], rows)
               + f"\n\nBest: plain LoRA {best[plain]:g}, LoRA+ {best[plus]:g} (B at {16 * best[plus]:g}), full "
               f"{best['full']:g}; plain LoRA / full = {ratio:g}. The sweep steps by factors of 2, so a ratio is known to "
               "within a factor of 2 either way, and one seed is shown: read the curves' shape rather than the exact "
               "minimum." + (f" {', '.join(at_edge)}: best at the edge of its sweep, so its true best may lie beyond."
                             if at_edge else "")
               + (" Why LoRA can want more: B starts at zero and the update is a product of two small factors, so each "
                  "step moves the model less than the same step on W does." if ratio > 1 else
                  " At this size full fine-tuning tolerates rates as high as LoRA's: 1.1M weights, a short task and "
                  "warm-up plus clipping keep even large steps stable."))
    verdict = "holds" if 5 <= ratio <= 20 and not at_edge else ("holds with a caveat" if ratio > 1 else "does not hold at this scale")
    return Finding(12, "Learning rate", "LoRA's best learning rate is about 10x that of full fine-tuning.",
                   f"Best learning rate: plain LoRA {best[plain]:g}, full fine-tuning {best['full']:g}: {ratio:g}x "
                   f"(LoRA+ as in the demo: {best[plus]:g} for A, {16 * best[plus]:g} for B).",
                   verdict, details, ["lora_learning_rate.svg"], "learning_rate")


def main(argv=None):
    run_alone("learning_rate", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
