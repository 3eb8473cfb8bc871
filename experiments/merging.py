"""Experiment: the demo's two adapters merged into one -- the measurements behind docs/lora.md's "Merging
task adapters" section.

    python -m experiments.merging                    # seeds 1337, 1, 2; trains only what out/lab lacks
    python -m experiments.merging --seeds 1337       # one seed

For each seed, lora_medical and lora_identity at the demo's settings (the LoRA lab's runs: out/lab, trained
where missing, on the demo's SFT model) are merged by merge_lora.py's methods (merging/merge.py) with both
weights w (0.5: their mean; 1: their sum, task arithmetic's plain addition), and every merge is scored as
the demo scores (greedy, eval_model.py's settings) on four sets: the two tasks, and general knowledge in the
training data's phrasings (eval_general) and in phrasings no training file uses (eval_general_unseen).
Beside them: the SFT model, each adapter alone, and switching (each task answered by its own adapter,
what the server does per request). The exact sum (cat) is also drawn against w:
docs/figures/merge_weight.svg. The merged files stay in OUT_DIR/experiments/merging.
"""
import argparse
import sys
from pathlib import Path

from formats.adapter_file import read_lora_file
from formats.checkpoint import save_weights
from lab.lab import FIGURES, Lab, mean, table
from merging.merge import METHODS, merge_adapters
from plot import line_chart
from plumbing.errors import run_main

SETS = ("eval_medical", "eval_identity", "eval_general", "eval_general_unseen")
WEIGHTS = (0.5, 1.0)
SWEEP = (0.25, 0.5, 0.75, 1.0, 1.25)  # cat's weight, drawn
TASKS = ("lora_medical", "lora_identity")


def cell(values) -> str:
    return f"{mean(values):.1%}" + (f" ({min(values):.1%}-{max(values):.1%})" if len(values) > 1 else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", default="out", help="the checkpoints' folder: its lab/ runs and this experiment's files (default: out)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    args = p.parse_args(argv)
    lab = Lab(f"{args.out_dir}/lab")
    folder = Path(args.out_dir).resolve() / "experiments" / "merging"
    folder.mkdir(parents=True, exist_ok=True)
    sft = lab.base()["sft"]
    runs = lab.train_all([lab.lora_job(lab.full_task(task), seed=s) for s in args.seeds for task in TASKS])
    rows = {"SFT model": [], "lora_medical alone": [], "lora_identity alone": [], "switching (each task its own)": []}
    merged = {}
    for i, seed in enumerate(args.seeds):
        medical, identity = runs[2 * i].weights, runs[2 * i + 1].weights
        alone = {task: lab.score(sft, path, SETS) for task, path in zip(TASKS, (medical, identity))}
        rows["SFT model"].append(lab.score(sft, None, SETS))
        rows["lora_medical alone"].append(alone["lora_medical"])
        rows["lora_identity alone"].append(alone["lora_identity"])
        rows["switching (each task its own)"].append(
            {s: alone["lora_identity" if s == "eval_identity" else "lora_medical"][s] for s in SETS})
        pair = [read_lora_file(medical), read_lora_file(identity)]
        for method in METHODS:
            for w in sorted(set(WEIGHTS) | (set(SWEEP) if method == "cat" else set())):
                path = folder / f"{method}_w{w:g}_seed{seed}.pth"
                save_weights(merge_adapters(pair, [w, w], method, seed=seed), path)
                merged.setdefault((method, w), []).append(lab.score(sft, str(path), SETS))

    header = ["", *SETS]
    print(table(header, [[name, *(cell([r[s] for r in results]) for s in SETS)] for name, results in rows.items()]))
    print()
    print(table(["merge", "w", *SETS], [[method, f"{w:g}", *(cell([r[s] for r in merged[method, w]]) for s in SETS)]
                                         for method in METHODS for w in WEIGHTS]))
    series = {s: [(w, mean([r[s] for r in merged["cat", w]])) for w in SWEEP] for s in SETS}
    line_chart(series, str(FIGURES / "merge_weight.svg"), "lora_medical + lora_identity merged exactly (cat), "
               "both weighted w; " + (f"mean of {len(args.seeds)} seeds" if len(args.seeds) > 1 else f"seed {args.seeds[0]}"), "w (each adapter's weight)", "accuracy",
               percent=True, x_ticks=list(SWEEP),
               refs=[(mean([r["eval_general_unseen"] for r in rows["SFT model"]]), "SFT model, eval_general_unseen")])
    print("\nwrote docs/figures/merge_weight.svg")


if __name__ == "__main__":
    sys.exit(run_main(main))
