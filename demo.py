"""The demo's configuration: its stages -- the scripts' bare commands -- its evaluation sets and its targets.

    demo_stages("out")          [("tokenizer", ["train_tokenizer.py"]), ("pretrain", ["train_pretrain.py"]), ...]
    target_checks(results)      [("SFT + lora_medical on eval_medical >= 80% ...: 86.5% ...", True), ...]
    demo_eval_settings("out")   the evaluation command's max_new_tokens, batch_size and device
    stage_parser("lora")        a training stage's flags and defaults (plumbing/flags.py's STAGES row)

There is no other configuration: every training stage is its script with the defaults, and those
defaults are plumbing/flags.py's. run_demo.py runs these stages and prints the table;
tests/test_readme.py checks that the README shows these very commands; the LoRA lab (lab/) builds
its base checkpoints with them and scores as the demo scores; experiments/ change one setting of
them at a time. A library module (no entry script is imported), so all of them can read it.
"""
import argparse

from evaluation import MAX_NEW_TOKENS
from plumbing import flags

EVAL_FILES = ["dataset/eval_general.jsonl", "dataset/eval_general_unseen.jsonl", "dataset/eval_medical.jsonl",
              "dataset/eval_identity.jsonl"]
# General knowledge, asked as SFT asks it and in forms no training file uses: an adapter may cost at most
# 10 points of either (the forgetting eval_general alone could not see: docs/demo.md).
GENERAL_SETS = ("eval_general", "eval_general_unseen")
ADAPTERS = ["lora_medical", "lora_identity"]
# The demo's targets, in percent (docs/demo.md says why each): lora_medical's skill where SFT alone lacks it,
# lora_identity's, and the most general knowledge an adapter may cost on either general set.
TARGETS = dict(medical=80, sft_medical=20, identity=90, general_drop=10)
# How far inside each target the worst run over seeds and CPU code paths must stay (experiments/spread.py):
# a target met by one question on one machine is not met on the next.
MARGIN = 5
TRAINING_STAGES = ("pretrain", "SFT", "LoRA lora_medical", "LoRA lora_identity")
# eval_model.py's --batch_size default (tests/test_experiments.py checks demo_eval_settings against its parser)
EVAL_BATCH_SIZE = 16


def demo_stages(out_dir="out", seed=None, dtype=None):
    """The pipeline as [(stage, command)]: the scripts with their defaults, plus --out_dir, --seed and
    --dtype when they are given. What the stages train, and why, is in each script's flag help."""
    stages = [
        ("tokenizer", ["train_tokenizer.py"]),
        ("pretrain", ["train_pretrain.py"]),
        ("SFT", ["train_full_sft.py"]),
        ("LoRA lora_medical", ["train_lora.py"]),
        ("LoRA lora_identity", ["train_lora.py", "--lora_name", "lora_identity", "--data_path", "dataset/lora_identity.jsonl"]),
        ("evaluation", ["eval_model.py", "--lora_name", *ADAPTERS, "--compare", "--eval_data", *EVAL_FILES,
                        "--max_new_tokens", "48", "--json"]),
    ]
    for name, command in stages:
        if name != "tokenizer" and out_dir != "out":
            command += ["--out_dir", out_dir]
        if name in TRAINING_STAGES and seed is not None:
            command += ["--seed", str(seed)]
        if name in TRAINING_STAGES and dtype is not None:  # evaluation keeps its default, so scores compare
            command += ["--dtype", dtype]
    return stages


def general_drops(results) -> dict:
    """{general set: the largest drop in accuracy, in points, that an adapter causes on it} from the
    evaluation stage's JSON, e.g. {"eval_general": 1.9, "eval_general_unseen": 4.8}."""
    acc = {c["name"]: {s: r["accuracy"] for s, r in c["sets"].items()} for c in results["columns"]}
    return {s: max(100 * (acc["base"][s] - acc[a][s]) for a in ("+lora_medical", "+lora_identity")) for s in GENERAL_SETS}


def target_checks(results):
    """The demo's targets, as [(description with the measured numbers, met?)], from the evaluation
    stage's JSON (eval_model.py --compare --json)."""
    columns = {c["name"]: c["sets"] for c in results["columns"]}
    acc = {name: {s: r["accuracy"] for s, r in sets.items()} for name, sets in columns.items()}
    base, medical, identity = acc["base"], acc["+lora_medical"], acc["+lora_identity"]
    same = columns["adapter removed"] == columns["base"]  # every answer and loss identical
    drops = general_drops(results)
    t = TARGETS
    return [
        (f"SFT + lora_medical on eval_medical >= {t['medical']}% (SFT alone <= {t['sft_medical']}%): "
         f"{medical['eval_medical']:.1%} (SFT alone {base['eval_medical']:.1%})",
         100 * medical["eval_medical"] >= t["medical"] - 1e-6 and 100 * base["eval_medical"] <= t["sft_medical"] + 1e-6),
        (f"SFT + lora_identity on eval_identity >= {t['identity']}%: {identity['eval_identity']:.1%}",
         100 * identity["eval_identity"] >= t["identity"] - 1e-6),
        ("adapter removed == SFT alone (every answer and loss identical): " + ("yes" if same else "NO"), same),
        (f"general knowledge with an adapter on at most {t['general_drop']} points below SFT alone, on both general "
         "sets: largest drop " + ", ".join(f"{d:.1f} points ({s})" for s, d in drops.items()),
         all(d <= t["general_drop"] + 1e-6 for d in drops.values())),
    ]


def demo_eval_settings(out_dir="out") -> argparse.Namespace:
    """The scoring settings of the demo's evaluation command -- max_new_tokens, batch_size, device --
    read as eval_model.py reads them (its defaults where the command gives none). The lab and
    experiments/lora_medical.py score with them, so their accuracies are the demo table's."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--max_new_tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--batch_size", type=int, default=EVAL_BATCH_SIZE)
    parser.add_argument("--device", default="auto")
    settings, _ = parser.parse_known_args(dict(demo_stages(out_dir))["evaluation"][1:])
    return settings


def stage_parser(stage) -> argparse.ArgumentParser:
    """The flags of a training stage's script ("pretrain", "full_sft" or "lora"), with their defaults --
    the demo's -- built from plumbing/flags.py as train_pretrain.py, train_full_sft.py and train_lora.py
    build theirs (tests/test_experiments.py checks they agree). What the lab and the experiments read
    a stage's defaults from, e.g. stage_parser("lora").parse_args([]).epochs."""
    parser = argparse.ArgumentParser(add_help=False)
    flags.add_common_args(parser, stage)
    flags.add_model_args(parser, from_checkpoint=stage != "pretrain")
    if stage == "full_sft":
        parser.add_argument("--base", default=None)
    if stage == "lora":
        flags.add_lora_args(parser)
    return parser
