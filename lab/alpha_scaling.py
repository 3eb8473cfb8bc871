"""Claim 9: alpha / r is a learning-rate scale that lets you change the rank without retuning; rsLoRA
(Kalajdzievski 2023) says alpha / sqrt(r) is the one that does.

A rank sweep r in {1, 2, 4, 8, 16, 32, 64} on the sweep task under three rules, all equal to scale 1
at the demo's r = 16, so they differ only away from it:
  alpha = r          scale 1 at every rank (MiniMind2: no scaling at all)
  alpha / r          alpha = 16 fixed: scale 16 / r (Hu et al.'s rule, PEFT's default)
  rsLoRA             alpha = 4 fixed: scale 4 / sqrt(r) (`python -m lab.train_variant --variant rslora`)
The first two are train_lora.py's runs. Everything else is the demo's (learning rate 2e-3, LoRA+
ratio 16, every Linear + embedding). The final validation loss says how far each got in the same
steps; a rule that "needs no retuning" gives a curve flat in r (or falling: more rank, more capacity).

    python -m lab.alpha_scaling
"""
import sys

from plumbing.errors import run_main
from lab.lab import Finding, run_alone, spread, table
from plot import line_chart

RANKS = (1, 2, 4, 8, 16, 32, 64)
RULES = {  # label -> the settings at rank r (Lab.lora_job's: train_lora.py's flags, or variant="rslora")
    "alpha = r (scale 1)": lambda r: dict(lora_rank=r),
    "alpha / r, alpha = 16": lambda r: dict(lora_rank=r, lora_alpha=16),
    "rsLoRA alpha / sqrt(r), alpha = 4": lambda r: dict(lora_rank=r, lora_alpha=4, variant="rslora"),
}


def scale(rule, r) -> float:
    s = RULES[rule](r)
    alpha = s.get("lora_alpha", r)
    return alpha / (r ** 0.5 if s.get("variant") == "rslora" else r)


def run(lab) -> Finding:
    ranks = RANKS[:2] if lab.quick else RANKS
    configs = [(rule, r) for rule in RULES for r in ranks]
    # seeds at the shared point r = 16, where the three rules are one run: the noise to read the sweep against
    noise_rank = 16 if 16 in ranks else ranks[-1]
    jobs = [lab.lora_job(lab.sweep_task(), **RULES[rule](r)) for rule, r in configs] + \
           [lab.lora_job(lab.sweep_task(), lora_rank=noise_rank, seed=s) for s in lab.seeds]
    made = lab.train_all(jobs)
    loss = {config: run.final("val_loss") for config, run in zip(configs, made)}
    noise = [run.final("val_loss") for run in made[len(configs):]]
    rows = [[f"r={r}", *(f"{loss[rule, r]:.3f} (x{scale(rule, r):.3g})" for rule in RULES)] for r in ranks]
    line_chart({rule: [(r, loss[rule, r]) for r in ranks] for rule in RULES}, lab.figure("lora_alpha_scaling.svg"),
               "Validation loss after the sweep task vs rank, by scaling rule", "LoRA rank r", "validation loss", log_x=True)
    span = {rule: max(loss[rule, r] for r in ranks) - min(loss[rule, r] for r in ranks) for rule in RULES}
    steadiest = min(RULES, key=span.get)
    noise_span = max(noise) - min(noise)
    details = (f"Sweep task ({made[0].curve('loss')[-1][0]} steps), one seed per point; final validation loss, and in "
               f"brackets the scale each rule gives:\n\n" + table(["rank", *RULES], rows)
               + f"\n\nSeed noise at r = {noise_rank} (the three rules' common point), seeds "
               f"{', '.join(map(str, lab.seeds))}: {spread(noise, '{:.3f}')}, a range of {noise_span:.3f}. "
               "Range of each rule's loss over the ranks: " + "; ".join(f"{rule} {span[rule]:.3f}" for rule in RULES) + ".\n\n"
               "What the rules trade: with Adam every entry of A and B moves by about the learning rate per step, "
               "whatever its gradient's size, so the scale sets how far B·A moves per step, and a larger rank has more "
               "entries moving at once. Scale 1 lets the update grow with r; alpha / r shrinks the scale as 1/r; "
               "rsLoRA's 1/sqrt(r) sits between, chosen to keep the update's size steady as r grows. A flat column "
               "would mean \"change r, keep the learning rate\". "
               + ("No rule is flat here: at this many steps a larger rank also means more capacity in use, so every "
                  "rule's loss falls with r, " if all(loss[rule, ranks[0]] > loss[rule, ranks[-1]] for rule in RULES) else "")
               + f"and the flattest is {steadiest}, with a range {span[steadiest] / max(noise_span, 1e-9):.0f}x the seed noise.")
    verdict = "holds" if steadiest.startswith("rsLoRA") and span[steadiest] <= noise_span * 2 else "holds with a caveat"
    return Finding(9, "alpha / r as a learning-rate scale", "Scaling the update by alpha / r lets you change the rank "
                   "without retuning the learning rate; rsLoRA: only alpha / sqrt(r) does.",
                   f"Over r = {ranks[0]}..{ranks[-1]}, the loss moved {span['alpha / r, alpha = 16']:.3f} under alpha / r, "
                   f"{span['rsLoRA alpha / sqrt(r), alpha = 4']:.3f} under rsLoRA and {span['alpha = r (scale 1)']:.3f} at "
                   f"scale 1 (seed noise {noise_span:.3f}): no rule keeps the result steady across ranks; the steadiest "
                   f"is {steadiest}" + ("" if steadiest.startswith("rsLoRA") else ", not rsLoRA") + ".",
                   verdict, details, ["lora_alpha_scaling.svg"], "alpha_scaling")


def main(argv=None):
    run_alone("alpha_scaling", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
