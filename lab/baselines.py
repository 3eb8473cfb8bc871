"""Claim 13: LoRA against its predecessors (model/predecessors.py): Adapter Tuning (Houlsby et al.
2019, bottleneck layers in series) and Prefix Tuning (Li & Liang 2021, trained key/value prefixes).

Each trains on lora_medical's full task with `python -m lab.train_variant --variant adapter|prefix`
(train_lora.py's run with the predecessor in place of LoRA), every seed, from the demo's SFT model:
the adapter with bottleneck 96 (198,400 parameters, LoRA's 198,656 to within 0.2%), the prefix with
16 vectors per layer (16,384: a prefix as large as LoRA would be 194 tokens of a 256-token context).
Their learning rate is their own, picked from LR_CHOICES by the validation loss on the sweep task
(LoRA's was tuned for the demo, docs/experiments.md). LoRA's own runs are lab/forgetting.py's.
Then: task accuracy, general accuracy with each on (forgetting), and decode
speed (batch 1, greedy) of the trained models against the SFT model and merged LoRA.

    python -m lab.baselines
"""
import copy
import sys

from bench.bench_generate import decode_tokens_per_s
from plumbing.errors import run_main
from lab.lab import Finding, mean, run_alone, spread, table
from model.model_lora import merge_lora, remove_lora
from plot import bar_chart
from plumbing.flags import STAGES

LR_CHOICES = (2e-3, 8e-3, 3.2e-2)  # the demo's LoRA rate, and 4x, 16x it
METHODS = {"LoRA (r=16, merged)": dict(), "Adapter Tuning (bottleneck 96)": dict(variant="adapter", lora_rank=96),
           "Prefix Tuning (16 vectors)": dict(variant="prefix", lora_rank=16)}


def run(lab) -> Finding:
    sft = lab.base()["sft"]
    methods = {name: (dict(s, lora_rank=4) if "lora_rank" in s and lab.quick else s) for name, s in METHODS.items()}
    probes = [(name, lr) for name in list(methods)[1:] for lr in LR_CHOICES]
    probed = lab.train_all([lab.lora_job(lab.sweep_task(), learning_rate=lr, **methods[name]) for name, lr in probes])
    rate = {name: min(LR_CHOICES, key=lambda lr: probed[probes.index((name, lr))].final("val_loss")) for name in list(methods)[1:]}
    methods = {name: dict(s, learning_rate=rate[name]) if name in rate else s for name, s in methods.items()}
    configs = [(name, seed) for name in methods for seed in lab.seeds]
    made = dict(zip(configs, lab.train_all([lab.lora_job(lab.full_task(), seed=seed, **methods[name]) for name, seed in configs])))
    sft_general = lab.score(sft, sets=("eval_general",))["eval_general"]
    rows, speeds, scores = [], {}, {}
    new_tokens, rounds = (8, 1) if lab.quick else (128, 9)
    models = {"SFT alone": lab.load(sft)[0]}
    for name in methods:
        s = [lab.score(sft, made[name, seed].weights) for seed in lab.seeds]
        scores[name] = s
        model = lab.load(sft, made[name, lab.seeds[0]].weights)[0]
        if name.startswith("LoRA"):  # merged and made plain, as a merged model is shipped (claim 5)
            model = copy.deepcopy(model)
            merge_lora(model)
            trainable_lora = sum(p.numel() for n, p in model.named_parameters() if ".lora." in n)
            remove_lora(model)
        models[name] = model
    for name in models:
        speeds[name] = 0.0
    for _ in range(rounds):  # the models take turns, best of the rounds
        for name, model in models.items():
            speeds[name] = max(speeds[name], decode_tokens_per_s(model, 1, 32, new_tokens, 1))
    for name in methods:
        model = models[name]
        trainable = trainable_lora if name.startswith("LoRA") else \
            sum(p.numel() for n, p in model.named_parameters() if "prefix_" in n or ".down." in n or ".up." in n)
        medical, general = [x["eval_medical"] for x in scores[name]], [x["eval_general"] for x in scores[name]]
        lr = methods[name].get("learning_rate", STAGES["lora"]["learning_rate"])
        rows.append([name, f"{lr:g}", f"{trainable:,}", spread(medical), spread(general), f"{sft_general - mean(general):+.1%}",
                     f"{speeds[name]:,.0f} ({speeds[name] / speeds['SFT alone']:.0%})",
                     f"{mean(made[name, s].seconds for s in lab.seeds):.0f} s"])
    bar_chart({name: (mean(x["eval_medical"] for x in scores[name]), min(x["eval_medical"] for x in scores[name]),
                      max(x["eval_medical"] for x in scores[name])) for name in methods},
              lab.figure("lora_vs_predecessors.svg"), "eval_medical accuracy after lora_medical's full task",
              "accuracy (mean; line: range over seeds)")
    lora, adapter, prefix = list(methods)
    acc = {name: mean(x["eval_medical"] for x in scores[name]) for name in methods}
    details = (f"lora_medical's full task, seeds {', '.join(map(str, lab.seeds))}; eval_general of the SFT model alone "
               f"{sft_general:.1%}; decode tokens/s at batch 1 ({new_tokens} new tokens, best of {rounds}; SFT alone "
               f"{speeds['SFT alone']:,.0f}, in brackets the share of it):\n\n"
               + table(["method", "learning rate", "trainable", "eval_medical", "eval_general", "general drop",
                        "decode tokens/s", "time"], rows)
               + "\n\nThe predecessors' learning rates, picked on the sweep task (final validation loss): " + "; ".join(
                   f"{name}: " + ", ".join(f"{lr:g} -> {probed[probes.index((name, lr))].final('val_loss'):.3f}" for lr in LR_CHOICES)
                   for name in rate) + "."
               + "\n\nThe adapter adds two small layers in series per block, which every token must pass through: "
               "it cannot be merged away. The prefix adds 16 keys and values to every attention layer (taking 16 "
               "positions of attention at every step). Merged LoRA is the SFT model's own computation.")
    verdict = "holds" if acc[lora] >= max(acc[adapter], acc[prefix]) and speeds[lora] >= 0.95 * speeds["SFT alone"] \
        and speeds[adapter] < speeds[lora] else "holds with a caveat"
    return Finding(13, "LoRA vs its predecessors", "LoRA matches or beats Adapter Tuning and Prefix Tuning at a "
                   "similar parameter count, without their inference latency.",
                   f"eval_medical: LoRA {spread([x['eval_medical'] for x in scores[lora]])}, adapter "
                   f"{spread([x['eval_medical'] for x in scores[adapter]])}, prefix {spread([x['eval_medical'] for x in scores[prefix]])}; "
                   f"decode speed of the SFT model's: LoRA {speeds[lora] / speeds['SFT alone']:.0%}, adapter "
                   f"{speeds[adapter] / speeds['SFT alone']:.0%}, prefix {speeds[prefix] / speeds['SFT alone']:.0%}.",
                   verdict, details, ["lora_vs_predecessors.svg"], "baselines")


def main(argv=None):
    run_alone("baselines", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
