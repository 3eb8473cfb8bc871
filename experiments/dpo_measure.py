"""Experiment: the measurements behind docs/dpo.md -- what DPO does to the demo's SFT model, and what it needs.

    python -m experiments.dpo_measure --runs sft default --seeds 1337 1 2    # train (where not done yet) and score
    python -m experiments.dpo_measure --report                               # the tables and figures of docs/dpo.md
    python -m experiments.dpo_measure --memory                               # full vs LoRA-DPO at MiniMind2-Small's size

Every run is `python train_dpo.py` with its defaults -- the demo's -- on the SFT model of one pipeline
seed, with the flags of its row in RUNS and --seed S (so the seed changes the SFT model and DPO's data
order together), then scored as the demo scores (evaluation.py, demo.demo_eval_settings):

    eval_unknown          the share of questions about held-out people who do not exist answered with a refusal
    eval_general(_unseen) accuracy on the world's facts, mostly about the people who do exist, asked in held-out
                          phrasings (and in forms no training file uses); "refused": the share answered with a refusal
    held out              train_dpo.py's validation on 64 held-out pairs: preference accuracy, reward margin, and how
                          often the model itself gives the chosen reply the higher probability

The SFT models are made by the demo's own commands with --seed S (train_pretrain.py, train_full_sft.py) into
OUT_DIR/experiments/dpo/bases/seed_S, unless already there. Each run's folder, metrics and scores stay in
OUT_DIR/experiments/dpo; results.jsonl gets one line per (run, seed), and a run already there is not redone.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

import dpo
import training
from bench.bench_lora import rss_mb
from bench.machine import run_in_fresh_process
from dataset.demo_world import REFUSAL_MUST_CONTAIN
from demo import demo_eval_settings
from evaluation import evaluate_set, load_eval_set
from formats.loader import adapter_path, checkpoint_path, load_checkpoint
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from model.model_lora import apply_lora, mark_only_lora_as_trainable
from plot import line_chart
from plumbing import progress
from plumbing.errors import UserError, run_main
from plumbing.flags import LORA_PLUS_RATIO, LORA_TARGETS, STAGES

ROOT = Path(__file__).resolve().parent.parent
EVAL_SETS = ("eval_unknown", "eval_general", "eval_general_unseen")
MAIN_SEEDS = [1337, 1, 2]  # the comparison's seeds; --rpo_alpha 2 was chosen on them (at 6e-4)
RATE_CHOSEN_ON = [3, 1337]  # the default rate, 2e-4, was chosen on these two seeds' runs, then checked on 1, 2 and 4
SWEEP_SEED = 1337  # the sweeps (lr*, beta*, lora_lr*) run on the demo's seed alone: python -m ... --runs beta0.3 --seeds 1337
LORA_LEARNING_RATE = "6e-4"  # LoRA-DPO's: of the sweep (lora_lr* below) the rate with the most refusals while general
# knowledge stays within 10 points (2e-3 cost 25 points of eval_general_unseen)
FORMER_RATE = "6e-4"  # train_dpo.py's learning rate before 2e-4: the runs measured then name it

# name -> train_dpo.py's flags (beside its defaults), or "sft": the SFT model itself, or "sft_chosen":
# train_full_sft.py on the chosen replies alone (RPO's term without DPO's), as many steps as a DPO run.
# The defaults changed twice as this comparison went (--rpo_alpha 1 -> 2, then --learning_rate 6e-4 -> 2e-4), so
# every run made before names the settings it was made with: RPO's weight 1 and the former rate.
RPO1 = ["--rpo_alpha", "1"]
AT_FORMER_RATE = ["--learning_rate", FORMER_RATE]
RUNS = {
    "sft": "sft",
    "default": [],  # --rpo_alpha 2 --learning_rate 2e-4
    **{f"rpo2_lr{lr}": ["--learning_rate", lr] for lr in ("1e-4", "3e-4", FORMER_RATE)},  # the default's RPO weight
    "rpo1": [*RPO1, *AT_FORMER_RATE],
    "rpo2_beta0.3": ["--beta", "0.3", *AT_FORMER_RATE],  # RPO weight 2, closer to the reference
    "mean": [*RPO1, "--log_probs", "mean", *AT_FORMER_RATE],  # MiniMind2's reply log-probability
    "plain": ["--rpo_alpha", "0", *AT_FORMER_RATE],  # DPO without RPO's term
    "plain_mean": ["--rpo_alpha", "0", "--log_probs", "mean", *AT_FORMER_RATE],  # MiniMind2's objective
    "sft_chosen": "sft_chosen",
    "lora": [*RPO1, "--lora_rank", "16", "--learning_rate", LORA_LEARNING_RATE],
    **{f"lr{lr}": [*RPO1, "--learning_rate", lr] for lr in ("1e-8", "1e-5", "1e-4", "3e-4", "1e-3", "2e-3")},
    **{f"beta{beta}": [*RPO1, "--beta", beta, *AT_FORMER_RATE] for beta in ("0.01", "0.03", "0.3", "1")},
    **{f"lora_lr{lr}": [*RPO1, "--lora_rank", "16", "--learning_rate", lr] for lr in ("2e-3", "6e-3")},
}


def build_parser():
    p = argparse.ArgumentParser(description="DPO on the demo's SFT models: train, score, report (docs/dpo.md).")
    p.add_argument("--out_dir", default="out", help="checkpoints folder; everything goes under OUT_DIR/experiments/dpo "
                                                   "(default: %(default)s)")
    p.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=[], help="the configurations to train and score")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2],
                   help="pipeline seeds: each its own SFT model and DPO data order (default: %(default)s)")
    p.add_argument("--report", action="store_true", help="print docs/dpo.md's tables from the results and draw its figures")
    p.add_argument("--figures", default=str(ROOT / "docs" / "figures"), help="where --report draws (default: docs/figures)")
    p.add_argument("--memory", action="store_true",
                   help="measure full vs LoRA-DPO's peak memory and step time at MiniMind2-Small's size, in fresh processes")
    return p


# ------------------------------------------------------------------------------------------------
# Running and scoring


def python(script, args, log):
    """Run `python SCRIPT ARGS` in the repository, output into `log` -> (wall seconds, peak resident MB)."""
    print(f"$ python {script} {' '.join(map(str, args))}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen([sys.executable, script, *map(str, args)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # its own resource usage, peak memory included
    if os.waitstatus_to_exitcode(status) != 0:
        raise UserError(f"python {script} failed; see {log}")
    return time.perf_counter() - start, usage.ru_maxrss / 1e3  # kB -> MB


def base_model(root, seed):
    """The SFT model of pipeline seed `seed`: the demo's commands with --seed, made once."""
    folder = root / "bases" / f"seed_{seed}"
    weights = checkpoint_path(folder, "full_sft", 128)
    if not os.path.isfile(weights):
        folder.mkdir(parents=True, exist_ok=True)
        python("train_pretrain.py", ["--seed", seed, "--out_dir", folder], folder / "pretrain.log")
        python("train_full_sft.py", ["--seed", seed, "--out_dir", folder], folder / "full_sft.log")
    return weights


def chosen_replies(root):
    """dataset/dpo_demo.jsonl's chosen conversations as an SFT file (the "sft_chosen" run's data)."""
    path = root / "dpo_demo_chosen.jsonl"
    lines = (ROOT / "dataset" / "dpo_demo.jsonl").read_text(encoding="utf-8").splitlines()
    text = "".join(json.dumps({"conversations": json.loads(line)["chosen"]}, ensure_ascii=False) + "\n" for line in lines)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def is_refusal(answer) -> bool:
    """Does an answer say it does not know (in either language)?"""
    return any(words in answer.casefold() for words in REFUSAL_MUST_CONTAIN.values())


def score(weights, adapter=None) -> dict:
    """{"eval_unknown": refusal rate, "eval_general": accuracy, "eval_general_refused": refusal rate, ...},
    scored as the demo scores (greedy, its evaluation command's settings)."""
    settings = demo_eval_settings()
    loaded = load_checkpoint(weights, adapter=adapter, device=settings.device)
    scores = {}
    for name in EVAL_SETS:
        result = evaluate_set(loaded.model, loaded.tokenizer, load_eval_set(ROOT / "dataset" / f"{name}.jsonl"),
                              settings.max_new_tokens, settings.batch_size, loaded.model.config.max_seq_len)
        scores[name] = result["accuracy"]
        if name != "eval_unknown":
            scores[f"{name}_refused"] = sum(is_refusal(item["answer"]) for item in result["items"]) / result["n"]
    return scores


def run_one(root, name, seed) -> dict:
    """Train (unless RUNS says otherwise) and score one configuration on one seed's SFT model -> its record."""
    base = base_model(root, seed)
    folder = root / "runs" / f"{name}_seed{seed}"
    record = {"run": name, "seed": seed}
    if RUNS[name] == "sft":
        return {**record, "scores": score(base)}
    if folder.exists():  # an interrupted earlier attempt: start it over
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if RUNS[name] == "sft_chosen":  # as a DPO run: its learning rate, epochs, warmup and window
        args = ["--base", base, "--out_dir", folder, "--seed", seed, "--data_path", chosen_replies(root),
                "--eval_interval", 10]
        args += [x for flag in ("learning_rate", "epochs", "warmup_iters", "max_seq_len") for x in (f"--{flag}", STAGES["dpo"][flag])]
        record["time_s"], record["peak_mb"] = python("train_full_sft.py", args, folder / "train.log")
        return {**record, "scores": score(checkpoint_path(folder, "full_sft", 128))}
    args = ["--base", base, "--out_dir", folder, "--seed", seed, "--eval_interval", 10, *RUNS[name]]
    record["time_s"], record["peak_mb"] = python("train_dpo.py", args, folder / "train.log")
    if "--lora_rank" in RUNS[name]:
        weights, metrics = adapter_path(folder, "lora_dpo", 128), folder / "lora_dpo_128_metrics.jsonl"
        scores = score(base, adapter=weights)
    else:
        weights, metrics = checkpoint_path(folder, "rlhf", 128), folder / "rlhf_128_metrics.jsonl"
        scores = score(weights)
    held_out = [r for r in progress.read_metrics(metrics) if "val_accuracy" in r]
    return {**record, "scores": scores, "held_out": held_out}


def read_results(root) -> list:
    path = root / "results.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []


# ------------------------------------------------------------------------------------------------
# The verdicts, each a rule written before the runs it judges (tests/test_dpo.py feeds them failing numbers)


def spread(values) -> tuple:
    """(mean, low, high) of a list of numbers."""
    return sum(values) / len(values), min(values), max(values)


def verdicts(by_seed) -> list:
    """[(claim, holds?)] of the issue's "done when", from {run: {seed: record}} with "sft" and "default" on the same
    seeds: over every seed, (1) the refusal rate on held-out unknown people and (2) how often the model prefers the
    chosen held-out reply are above the SFT model's, ranges apart; (3) neither general set drops more than 10
    points below the same seed's SFT model."""
    sft, dpo = by_seed["sft"], by_seed["default"]
    seeds = sorted(dpo)
    refusal = [dpo[s]["scores"]["eval_unknown"] for s in seeds], [sft[s]["scores"]["eval_unknown"] for s in seeds]
    prefers = ([dpo[s]["held_out"][-1]["val_prefers_chosen"] for s in seeds],
               [dpo[s]["held_out"][0]["val_prefers_chosen"] for s in seeds])  # step 0 is the SFT model
    drops = {name: max(100 * (sft[s]["scores"][name] - dpo[s]["scores"][name]) for s in seeds)
             for name in ("eval_general", "eval_general_unseen")}
    return [
        (f"refusal on held-out unknown people above the SFT model's, ranges apart: DPO {min(refusal[0]):.1%}-"
         f"{max(refusal[0]):.1%}, SFT {min(refusal[1]):.1%}-{max(refusal[1]):.1%}", min(refusal[0]) > max(refusal[1])),
        (f"held-out pairs whose chosen reply the model prefers, above the SFT model's, ranges apart: DPO "
         f"{min(prefers[0]):.1%}-{max(prefers[0]):.1%}, SFT {min(prefers[1]):.1%}-{max(prefers[1]):.1%}",
         min(prefers[0]) > max(prefers[1])),
        ("general knowledge at most 10 points below the SFT model's on both sets, every seed: largest drop "
         + ", ".join(f"{d:.1f} points ({name})" for name, d in drops.items()), all(d <= 10 for d in drops.values())),
    ]


# ------------------------------------------------------------------------------------------------
# The report: docs/dpo.md's tables and figures


def by_run(results) -> dict:
    """{run: {seed: record}}, the last record of each (run, seed)."""
    table = {}
    for record in results:
        table.setdefault(record["run"], {})[record["seed"]] = record
    return table


def cell(values, percent=True) -> str:
    """'61.5% (57.7-65.4)': the mean over seeds and their range; one seed, the value alone."""
    if not values:
        return ""
    mean, low, high = spread(values)
    fmt = (lambda v: f"{100 * v:.1f}") if percent else (lambda v: f"{v:.2f}")
    text = fmt(mean) + ("%" if percent else "")
    return text if len(values) == 1 else f"{text} ({fmt(low)}-{fmt(high)})"


def numbers(runs, name, seeds=None) -> dict:
    """{column: [value per seed]} of one run: the held-out pairs' last numbers (for "sft": the default run's
    step 0, which is the SFT model), the scores, the time."""
    records = [r for seed, r in sorted(runs.get(name, {}).items()) if seeds is None or seed in seeds]
    out = {"held-out accuracy": [], "reward margin": [], "prefers chosen": [], "time": []}
    for r in records:
        if name == "sft":  # the SFT model is the default run's model at step 0
            last = runs.get("default", {}).get(r["seed"], {}).get("held_out", [None])[0]
        else:
            last = r["held_out"][-1] if "held_out" in r else None
        if last:
            out["held-out accuracy"].append(last["val_accuracy"])
            out["reward margin"].append(last["val_margin"])
            out["prefers chosen"].append(last["val_prefers_chosen"])
        if "time_s" in r:
            out["time"].append(r["time_s"])
        for key, value in r["scores"].items():
            out.setdefault(key, []).append(value)
    return out


SCORE_COLUMNS = ("held-out accuracy", "reward margin", "prefers chosen", "eval_unknown", "eval_general",
                 "eval_general_refused", "eval_general_unseen", "eval_general_unseen_refused")
HEADERS = ("held-out pairs: preference accuracy", "reward margin", "model prefers chosen", "eval_unknown: refused",
           "eval_general", "refused", "eval_general_unseen", "refused")


def markdown(label, rows, extra=()) -> str:
    """A table of {row label: numbers(...)} over SCORE_COLUMNS (+ extra columns)."""
    columns = SCORE_COLUMNS + tuple(extra)
    lines = [f"| {label} | " + " | ".join(HEADERS + tuple(extra)) + " |", "|---|" + "---:|" * len(columns)]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            cell(values.get(c, []), percent=c not in ("reward margin", "time")) if c != "time"
            else (f"{spread(values['time'])[0]:.0f} s" if values.get("time") else "") for c in columns) + " |")
    return "\n".join(lines)


def per_seed_table(runs, seeds) -> str:
    """The SFT model and the default DPO run of each seed side by side: refusal on unknown people, both general
    sets, and the drop from SFT (negative: a gain)."""
    lines = ["| seed | eval_unknown: SFT -> DPO | eval_general: SFT -> DPO (drop) | eval_general_unseen: SFT -> DPO (drop) |",
             "|---|---:|---:|---:|"]
    for seed in seeds:
        sft, dpo_ = runs["sft"][seed]["scores"], runs["default"][seed]["scores"]
        cells = [f"{100 * sft['eval_unknown']:.1f}% -> {100 * dpo_['eval_unknown']:.1f}%"]
        cells += [f"{100 * sft[k]:.1f}% -> {100 * dpo_[k]:.1f}% ({100 * (sft[k] - dpo_[k]):+.1f})"
                  for k in ("eval_general", "eval_general_unseen")]
        lines.append(f"| {seed}{' (the rate was chosen on it)' if seed in RATE_CHOSEN_ON else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rate_table(runs) -> str:
    """RPO's weight 2 at each learning rate measured: refusal on unknown people, and each general set's largest
    drop from the same seed's SFT model over the seeds the rate ran on (the rule's third part: at most 10)."""
    lines = ["| learning rate | seeds | eval_unknown: refused | largest drop, eval_general | largest drop, eval_general_unseen |",
             "|---|---|---:|---:|---:|"]
    for rate, name in (("1e-4", "rpo2_lr1e-4"), ("2e-4 (the default)", "default"), ("3e-4", "rpo2_lr3e-4"),
                       (FORMER_RATE + " (the default before)", f"rpo2_lr{FORMER_RATE}")):
        seeds = sorted(seed for seed in runs.get(name, {}) if seed in runs.get("sft", {}))
        if not seeds:
            continue
        dpo_, sft = [runs[name][s]["scores"] for s in seeds], [runs["sft"][s]["scores"] for s in seeds]
        drops = [max(100 * (b[k] - a[k]) for a, b in zip(dpo_, sft)) for k in ("eval_general", "eval_general_unseen")]
        lines.append(f"| {rate} | {', '.join(map(str, seeds))} | {cell([d['eval_unknown'] for d in dpo_])} | "
                     + " | ".join(f"{d:.1f}" for d in drops) + " |")
    return "\n".join(lines)


def report(root, figures) -> str:
    runs = by_run(read_results(root))
    seeds = [s for s in MAIN_SEEDS if s in runs.get("default", {})]
    parts = []
    main_rows = {label: numbers(runs, name, seeds) for name, label in (
        ("sft", "SFT model (before)"), ("default", "DPO + RPO 2, sum, lr 2e-4 (the default)"),
        (f"rpo2_lr{FORMER_RATE}", f"DPO + RPO 2, sum, lr {FORMER_RATE} (the default before)"),
        ("rpo1", f"DPO + RPO 1, sum, lr {FORMER_RATE}"), ("mean", f"DPO + RPO 1, mean, lr {FORMER_RATE}"),
        ("plain", f"plain DPO, sum, lr {FORMER_RATE}"), ("plain_mean", f"plain DPO, mean, lr {FORMER_RATE} (MiniMind2's objective)"),
        ("sft_chosen", "SFT on the chosen replies alone"), ("lora", f"LoRA-DPO + RPO 1, rank 16, lr {LORA_LEARNING_RATE}"))
        if name in runs}
    parts.append(f"seeds {', '.join(map(str, seeds))}; mean (range)\n\n" + markdown("run", main_rows, ["time"]))
    if "default" in runs and "sft" in runs:
        both = sorted(set(runs["sft"]) & set(runs["default"]))
        parts.append(per_seed_table(runs, both))
        parts.append(f"over seeds {', '.join(map(str, both))}:\n\n" + "\n".join(
            f"- {'holds' if ok else 'DOES NOT HOLD'}: {claim}"
            for claim, ok in verdicts({"sft": {s: runs["sft"][s] for s in both}, "default": {s: runs["default"][s] for s in both}})))
        parts.append("RPO's weight 2 by learning rate, each over the seeds it ran on:\n\n" + rate_table(runs))
    first = [SWEEP_SEED]
    for prefix, flag, centre, run in (("lr", "learning rate", float(FORMER_RATE), "rpo1"), ("beta", "beta", 0.1, "rpo1"),
                                       ("lora_lr", "LoRA-DPO learning rate", float(LORA_LEARNING_RATE), "lora")):
        sweep = {float(name[len(prefix):]): name for name in runs if name.startswith(prefix) and name[len(prefix):][:1].isdigit()}
        if not sweep or run not in runs:
            continue
        sweep[centre] = run  # the centre: the run of the table above at that rate (rpo1: beta 0.1, the former rate; lora)
        rows = {f"{value:g}": numbers(runs, name, first) for value, name in sorted(sweep.items())}
        parts.append(f"{flag}, --rpo_alpha 1, seed {first[0]}\n\n" + markdown(flag, rows))
        if prefix != "lora_lr":
            draw_sweep(rows, flag, Path(figures) / f"dpo_{prefix}.svg")
    if seeds:
        draw_curves(runs, Path(figures))
    memory = root / "memory.json"
    if memory.is_file():
        parts.append(memory_table(json.loads(memory.read_text(encoding="utf-8"))))
    return "\n\n".join(parts)


def draw_sweep(rows, flag, path):
    """Refusal on unknown people and accuracy on the two general sets against a swept setting (log x)."""
    series = {label: [(float(value.split()[0]), 100 * numbers_[key][0]) for value, numbers_ in rows.items()]
              for key, label in (("eval_unknown", "eval_unknown: refused"), ("eval_general", "eval_general"),
                                 ("eval_general_unseen", "eval_general_unseen"))}
    line_chart(series, path, f"DPO on the demo's SFT model: {flag}", flag, "%", log_x=True)


def draw_curves(runs, folder):
    """Held-out preference accuracy and reward margin against the step: mean over seeds, with their range."""
    for key, label, file in (("val_accuracy", "held-out preference accuracy", "dpo_held_out_accuracy.svg"),
                             ("val_margin", "held-out reward margin", "dpo_reward_margin.svg")):
        series, bands = {}, {}
        for name, title in (("default", "DPO + RPO 2, sum, lr 2e-4 (default)"), ("rpo1", "DPO + RPO 1, sum"), ("mean", "DPO + RPO 1, mean"),
                            ("plain_mean", "plain DPO, mean (MiniMind2)")):
            curves = [[(r["step"], r[key]) for r in record["held_out"]] for seed, record in runs.get(name, {}).items()
                      if seed in MAIN_SEEDS]
            if not curves:
                continue
            steps = [step for step, _ in curves[0]]
            at = [[dict(c)[step] for c in curves if step in dict(c)] for step in steps]
            series[title] = [(step, sum(v) / len(v)) for step, v in zip(steps, at)]
            bands[title] = [(step, min(v), max(v)) for step, v in zip(steps, at)]
        accuracy = key == "val_accuracy"  # a share, drawn in %, with the start's tie (50%) as a reference line
        line_chart(series, folder / file, f"DPO: {label} (mean and range over seeds)", "optimizer step", label,
                   spread=bands, percent=accuracy, refs=[(0.5, "50%: a tie, where DPO starts")] if accuracy else None)


# ------------------------------------------------------------------------------------------------
# Memory and time, full vs LoRA-DPO, where the weights are what matters: MiniMind2-Small

SMALL = dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=2, vocab_size=6400)  # 25.8M parameters
PAIRS, SEQ = 4, 128  # a batch of 4 pairs, 128 tokens each side


def memory_in_fresh_process(mode, results):
    """In its own process: MiniMind2-Small, the reference (a frozen copy, or the adapters off), 3 DPO steps;
    report what the reference and the steps added to resident memory, and the median step time."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MiniMindLM(LMConfig(**SMALL, max_seq_len=SEQ)).train()
    before = rss_mb()["VmRSS"]  # the policy's weights exist in either case
    if mode == "LoRA":
        apply_lora(model, 16, target_modules=LORA_TARGETS.split(","))
        mark_only_lora_as_trainable(model)
        reference, groups = dpo.without_adapters(model), training.param_groups(model, LORA_PLUS_RATIO)
    else:
        reference, groups = dpo.frozen_copy(model), training.param_groups(model)
    objective, optimizer = dpo.DPO(reference, beta=0.1, log_probs="sum", rpo_alpha=2.0), training.make_optimizer(groups, 1e-4, torch.device("cpu"))
    ids = torch.randint(3, SMALL["vocab_size"], (PAIRS, 2, SEQ), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros_like(ids[..., 1:])
    mask[..., SEQ // 2:] = 1  # the reply: the second half of each side
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        loss, _ = objective.loss(model, ids[..., :-1], ids[..., 1:], mask)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
    results.put({"mode": mode, "added_mb": rss_mb()["VmHWM"] - before, "step_s": sorted(seconds)[1],
                 "trainable": sum(p.numel() for g in groups for p in g["params"])})


def memory_table(measured) -> str:
    lines = [f"MiniMind2-Small (25.8M), {PAIRS} pairs x {SEQ} tokens a step, float32, 1 thread: what the reference and "
             "the training steps added to the process's peak memory, and a step's median time",
             "", "| DPO | trainable parameters | memory added | step time |", "|---|---:|---:|---:|"]
    for m in measured:
        lines.append(f"| {m['mode']} | {m['trainable']:,} | {m['added_mb']:,.0f} MB | {m['step_s']:.2f} s |")
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    root = Path(args.out_dir) / "experiments" / "dpo"
    root.mkdir(parents=True, exist_ok=True)
    done = {(r["run"], r["seed"]) for r in read_results(root)}
    for name in args.runs:
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            record = run_one(root, name, seed)
            with open(root / "results.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps({k: v for k, v in record.items() if k != "held_out"}), flush=True)
    if args.memory:
        measured = [run_in_fresh_process(memory_in_fresh_process, (mode,)) for mode in ("full", "LoRA")]
        (root / "memory.json").write_text(json.dumps(measured, indent=1), encoding="utf-8")
        print(memory_table(measured))
    if args.report:
        print(report(root, args.figures))


if __name__ == "__main__":
    sys.exit(run_main(main))
