"""The whole pipeline in one command, on the demo data that ships with the repository:

    python run_demo.py

    1. tokenizer    train_tokenizer.py   byte-level BPE learnt from the demo text  -> out/demo_tokenizer/
    2. pretrain     train_pretrain.py    next-token prediction on pretrain_demo    -> out/pretrain_{dim}.pth
    3. SFT          train_full_sft.py    chat about the demo world                 -> out/full_sft_{dim}.pth
    4. LoRA         train_lora.py        lora_medical: a new domain (medicine)     -> out/lora/lora_medical_{dim}.pth
    5. LoRA         train_lora.py        lora_identity: a new name and maker       -> out/lora/lora_identity_{dim}.pth
    6. evaluation   eval_model.py        the three held-out eval sets, for SFT alone, SFT + each adapter,
                                         and SFT with the adapter removed again

Each stage is the real script, started as a subprocess and echoed first, so any line can be copied
and rerun on its own. It ends with one table -- parameters, trainable share, time per stage,
accuracy on each eval set -- printed and written to out/demo_results.md (the full results, every
generated answer included, go to out/demo_results.json).

The settings below were chosen so that the whole run takes at most 10 minutes on a 2-core CPU and
still shows each stage's effect in numbers (the targets are checked under the table).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent

EVAL_FILES = ["dataset/eval_general.jsonl", "dataset/eval_medical.jsonl", "dataset/eval_identity.jsonl"]
ADAPTERS = ["lora_medical", "lora_identity"]


def demo_stages(out_dir):
    """The pipeline as [(stage, command)]: every setting of the demo is in these command lines.

    Why these settings (measured on the demo data; the README has the numbers):
    - dim 128, 4 layers: half the time per token of dim 256, and with the time saved spent on
      epochs it knows more facts (eval_general 38% vs 19% for dim 256 trained 2 epochs).
    - 4 heads of 32 dimensions, 4 key/value heads (not MiniMind2's 8 query / 2 key-value heads,
      which at dim 128 leave 16-dimensional heads and keys and values 32 wide in all): the model
      must read the question to answer it, and eval_general rose from 53.8% to 67.3%.
    - vocabulary 2048, no token over 9 bytes: 4096 shortens Chinese text 2x but leaves too little
      data per embedding (eval_general fell to 21%); without the length limit the merges go to
      whole recurring phrases (eval_general 38.5% before the limit, 53.8% with it).
    - max_seq_len per stage = the longest sample, rounded up: sequences are padded to it, so a
      larger value only adds work (SFT chats average 81 tokens, medical consultations 150).
    - LoRA on every Linear (wq..w3) with LoRA+ (B's learning rate 16x A's): after 130 steps on
      lora_medical the loss was 2.9 with every Linear vs 3.7 with MiniMind2's wq/wo alone, and
      LoRA+ lowered it further (2.05 vs 2.26 after 160 steps).
    - lora_medical also adapts `output`, and with it the tied token embedding, and half its data is
      rehearsal: without the embedding update eval_medical reached 32.7%, with it 92-98% (three
      seeds); with 20% rehearsal eval_general fell 29 points, with 50% 0-10. lora_identity does not
      need the update, and with it eval_general fell 13.5 points instead of 3.9.
      (README, "How lora_medical reaches its target"; experiments/lora_medical.py makes the rows.)
    """
    tokenizer = f"{out_dir}/demo_tokenizer"
    dim = "128"
    lora = ["train_lora.py", "--out_dir", out_dir, "--dim", dim, "--batch_size", "16", "--learning_rate", "2e-3",
            "--lora_rank", "16", "--lora_plus_ratio", "16"]
    blocks = "wq,wk,wv,wo,w1,w2,w3"
    return [
        # learnt from the pretraining text alone, which the demo data writes to cover the adapters' words too
        ("tokenizer", ["train_tokenizer.py", "--data_path", "dataset/pretrain_demo.jsonl", "--vocab_size", "2048",
                       "--max_token_length", "9", "--out_dir", tokenizer]),
        ("pretrain", ["train_pretrain.py", "--out_dir", out_dir, "--tokenizer", tokenizer, "--dim", dim,
                      "--n_layers", "4", "--n_heads", "4", "--n_kv_heads", "4", "--epochs", "4", "--batch_size", "16",
                      "--learning_rate", "3e-3", "--max_seq_len", "224"]),
        ("SFT", ["train_full_sft.py", "--out_dir", out_dir, "--dim", dim, "--epochs", "4", "--batch_size", "16",
                 "--learning_rate", "2e-3", "--max_seq_len", "160"]),
        ("LoRA lora_medical", lora + ["--lora_name", "lora_medical", "--data_path", "dataset/lora_medical.jsonl",
                                      "--lora_targets", blocks + ",output", "--epochs", "4", "--max_seq_len", "224"]),
        ("LoRA lora_identity", lora + ["--lora_name", "lora_identity", "--data_path", "dataset/lora_identity.jsonl",
                                       "--lora_targets", blocks, "--epochs", "3", "--max_seq_len", "144"]),
        ("evaluation", ["eval_model.py", "--out_dir", out_dir, "--dim", dim, "--lora_name", *ADAPTERS, "--compare",
                        "--eval_data", *EVAL_FILES, "--max_new_tokens", "48", "--json"]),
    ]


def run_stage(number, total, name, command, capture=False):
    """Echo and run one stage -> (seconds, its stdout when captured). A failed stage ends the demo."""
    print(f"\n[{number}/{total}] {name}\n$ python {shlex.join(command)}", flush=True)
    t0 = time.perf_counter()
    # OpenMP threads that spin while waiting for each other collapse when other programs share the
    # cores (measured here: 2 threads 9x slower than 1 on a busy 2-core machine); passive waiting
    # keeps the full speed of an idle machine and degrades gracefully on a busy one.
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}
    proc = subprocess.run([sys.executable, *command], cwd=ROOT, text=True, env=env,
                          stdout=subprocess.PIPE if capture else None)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"run_demo.py: stage '{name}' failed (exit code {proc.returncode}); its command is echoed above")
    return seconds, proc.stdout


def percent(result):
    """{"accuracy": 0.173, ...} -> "17.3%"."""
    return f"{result['accuracy']:.1%}"


def results_table(times, results, vocab_size):
    """The demo's markdown table: one row per stage; accuracy columns for the models evaluated."""
    columns = {c["name"]: c for c in results["columns"]}
    base, removed = columns["base"], columns["adapter removed"]
    sets = list(base["sets"])
    n_base = results["parameters"]
    blank = " | ".join("" for _ in sets)

    def accuracy_cells(column):
        return " | ".join(percent(column["sets"][s]) for s in sets)

    header = "| stage | time | parameters (trainable) | " + " | ".join(f"{s} ({base['sets'][s]['n']})" for s in sets) + " |"
    lines = [header, "|---|---:|---|" + "---:|" * len(sets),
             f"| tokenizer | {times['tokenizer']:.0f} s | vocabulary {vocab_size:,} tokens | {blank} |",
             f"| pretrain | {times['pretrain']:.0f} s | {n_base / 1e6:.2f}M (all) | {blank} |",
             f"| SFT | {times['SFT']:.0f} s | {n_base / 1e6:.2f}M (all) | {accuracy_cells(base)} |"]
    for name in ADAPTERS:
        column = columns[f"+{name}"]
        n = column["adapter_parameters"]
        lines.append(f"| SFT + {name} | {times['LoRA ' + name]:.0f} s | {n:,} ({n / (n_base + n):.2%}) | "
                     f"{accuracy_cells(column)} |")
    same = all(removed["sets"][s] == base["sets"][s] for s in sets)
    lines.append(f"| SFT, adapter removed | | {n_base / 1e6:.2f}M | {accuracy_cells(removed)} |")
    lines.append(f"| evaluation | {times['evaluation']:.0f} s | | {blank} |")
    lines.append(f"| **total** | **{sum(times.values()):.0f} s** | | {blank} |")
    return "\n".join(lines), same


def target_checks(results, same):
    """The demo's targets (see the README), each with the measured numbers and a pass mark."""
    columns = {c["name"]: c["sets"] for c in results["columns"]}
    acc = {name: {s: r["accuracy"] for s, r in sets.items()} for name, sets in columns.items()}
    base, medical, identity = acc["base"], acc["+lora_medical"], acc["+lora_identity"]
    drop = max(base["eval_general"] - medical["eval_general"], base["eval_general"] - identity["eval_general"])
    checks = [
        (f"SFT + lora_medical on eval_medical >= 80% (SFT alone <= 20%): "
         f"{medical['eval_medical']:.1%} (SFT alone {base['eval_medical']:.1%})",
         medical["eval_medical"] >= 0.8 and base["eval_medical"] <= 0.2),
        (f"SFT + lora_identity on eval_identity >= 90%: {identity['eval_identity']:.1%}",
         identity["eval_identity"] >= 0.9),
        ("adapter removed == SFT alone (every answer and loss identical): " + ("yes" if same else "NO"), same),
        (f"eval_general with an adapter on at most 10 points below SFT alone: largest drop {drop * 100:.1f} points",
         drop <= 0.10 + 1e-9),
    ]
    return "\n".join(f"- [{'x' if ok else ' '}] {text}" for text, ok in checks)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run tokenizer -> pretrain -> SFT -> 2 LoRA adapters -> "
                                                 "evaluation on the demo data, and print the results table.")
    parser.add_argument("--out_dir", default="out", help="where every stage writes (default: %(default)s)")
    args = parser.parse_args(argv)

    stages = demo_stages(args.out_dir)
    times, start = {}, time.perf_counter()
    for number, (name, command) in enumerate(stages, 1):
        times[name], stdout = run_stage(number, len(stages), name, command, capture=name == "evaluation")
    results = json.loads(stdout)

    table, same = results_table(times, results, results["vocab_size"])
    command = "python run_demo.py" + ("" if args.out_dir == "out" else f" --out_dir {args.out_dir}")
    report = (f"{table}\n\nTargets:\n{target_checks(results, same)}\n\n"
              f"Made by `{command}` in {time.perf_counter() - start:.0f} s wall time.\n")
    out = ROOT / args.out_dir
    (out / "demo_results.md").write_text(report, encoding="utf-8")
    (out / "demo_results.json").write_text(json.dumps({"times_s": times, **results}, ensure_ascii=False, indent=1),
                                           encoding="utf-8")
    print("\n" + report + f"(written to {args.out_dir}/demo_results.md; every answer in {args.out_dir}/demo_results.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
