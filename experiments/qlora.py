"""Experiment: LoRA on a quantized base (QLoRA) at the demo's full settings -- the measurements behind
docs/lora.md's "A quantized base" section (the lab's claim, lab/qlora.py, uses the short sweep task).

    python -m experiments.qlora                 # everything below; trains only what out/lab does not hold yet
    python -m experiments.qlora --seeds 1337    # one seed (each seed: three 400-step runs, about 3 min each)

    bytes      what the base stores, float32 vs quantize_model's int8 and NF4, at the demo's size and MiniMind2's
    the base   the demo's SFT model quantized in each format, scored as the demo scores (greedy, eval_model.py's
               settings): general knowledge on eval_general and eval_general_unseen (phrasings no training file uses)
    learning   lora_medical at the demo's settings (train_lora.py's defaults, 400 steps) on the float, int8 and NF4
               bases, every seed; each adapter scored on the base it was trained on and on the float base (the file
               is the ordinary one: it loads there)
    cost       a LoRA training step at MiniMind2-Small's size (25.8M; r=16 on the demo's targets, batch 4 x 512, one
               thread) on each base: the median step time and what the steps added to the peak resident memory of
               a fresh process

The runs are the LoRA lab's (lab/lab.py: content-keyed, in --out_dir's lab/runs; the float base's are the lab's own
lora_medical runs, so a lab run leaves only the quantized ones to train), and so are the scores (Lab.score,
remembered in OUT_DIR/lab/scores.json by the files' bytes and the format).
"""
import argparse
import sys
import time

import torch

import training
from bench.bench_generate import model_sizes
from bench.bench_lora import rss_mb
from bench.bench_train import make_batch, train_step
from bench.machine import cpu_model, run_in_fresh_process
from formats.quantize import quantize_model
from lab.lab import Lab, mean, table
from lab.memory import SMALL
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from model.model_lora import apply_lora, mark_only_lora_as_trainable
from plumbing.errors import run_main
from plumbing.flags import LORA_TARGETS

BASES = (None, "int8", "nf4")  # None: the float32 base
FORMATS = (None, "int8", "nf4", "fp4", "int4")
SETS = ("eval_medical", "eval_general", "eval_general_unseen")
MINIMIND2 = dict(dim=768, n_layers=16, n_heads=8, n_kv_heads=2, vocab_size=6400)  # 104M
BATCH, SEQ = 4, 512


def name(kind) -> str:
    return kind or "float32"


def scores(lab, kind, adapter=None) -> dict:
    """{set: accuracy} of the SFT model quantized as `kind` (None: as it is), with `adapter` on it (Lab.score)."""
    return lab.score(lab.base()["sft"], adapter, SETS, quantize=kind)


def stored_bytes(fields, kind) -> int:
    """What a model of `fields` stores with its block Linears quantized as `kind` (None: float32), each tensor once
    (the tied embedding/output is one matrix)."""
    torch.manual_seed(0)
    model = MiniMindLM(LMConfig(**fields))
    if kind:
        quantize_model(model, kind)
    seen = {}
    for t in model.state_dict().values():
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def step_in_fresh_process(kind, results):
    """In its own process, one thread: MiniMind2-Small, quantized as `kind`, LoRA on the demo's targets; 4 training
    steps; the median of the last 3 step times and what the steps added to the peak resident memory."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MiniMindLM(LMConfig(**SMALL, max_seq_len=SEQ)).train()
    if kind:
        quantize_model(model, kind)
    apply_lora(model, 16, target_modules=LORA_TARGETS.split(","))
    mark_only_lora_as_trainable(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = training.make_optimizer([{"params": params, "lr_scale": 1.0}], 1e-3, torch.device("cpu"))
    X, Y, mask = make_batch(SMALL["vocab_size"], BATCH, SEQ, "sft", torch.Generator().manual_seed(0))
    before, seconds = rss_mb()["VmRSS"], []
    for _ in range(4):
        start = time.perf_counter()
        train_step(model, optimizer, params, X, Y, mask)
        seconds.append(time.perf_counter() - start)
    results.put({"step_s": sorted(seconds[1:])[1], "added_mb": rss_mb()["VmHWM"] - before})


def pct(values) -> str:
    return f"{mean(values):.1%} ({min(values):.1%}-{max(values):.1%})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="out", help="the checkpoints' folder: its lab/ runs and scores (default: out)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    args = p.parse_args(argv)
    lab = Lab(f"{args.out_dir}/lab")

    print(f"# LoRA on a quantized base ({cpu_model()}, torch {torch.__version__})\n")
    sizes = {"demo (1.1M)": model_sizes()["demo"], "MiniMind2-Small (25.8M)": SMALL, "MiniMind2 (104M)": MINIMIND2}
    print(table(["model", *map(name, BASES)], [[size, *(f"{stored_bytes(fields, k) / 1e6:,.1f} MB" for k in BASES)]
                                             for size, fields in sizes.items()]) + "\n")

    print(table(["SFT model", *SETS[1:]], [[name(k), *(f"{scores(lab, k)[s]:.1%}" for s in SETS[1:])]
                                          for k in FORMATS]) + "\n")

    jobs = [lab.lora_job(lab.full_task(), seed=s, **({"quantize_base": k} if k else {})) for k in BASES for s in args.seeds]
    runs = lab.train_all(jobs)
    n = len(args.seeds)
    rows = []
    for i, k in enumerate(BASES):
        adapters = [r.weights for r in runs[i * n:(i + 1) * n]]
        on_own = [scores(lab, k, a) for a in adapters]
        on_float = [scores(lab, None, a) for a in adapters]
        rows.append([name(k), *(pct([s[x] for s in on_own]) for x in SETS),
                     *(pct([s[x] for s in on_float]) for x in SETS[:1])])
    print(table(["trained on", *(f"{s}, on its base" for s in SETS), "eval_medical, on the float32 base"], rows) + "\n")

    cost = {k: run_in_fresh_process(step_in_fresh_process, (k,)) for k in BASES}
    small = {k: stored_bytes(SMALL, k) / 1e6 for k in BASES}
    print(table(["base", "step (s)", "the base (MB)", "added by training (MB, measured)", "sum (MB)"],
                [[name(k), f"{c['step_s']:.2f}", f"{small[k]:,.0f}", f"{c['added_mb']:,.0f}", f"{small[k] + c['added_mb']:,.0f}"]
                 for k, c in cost.items()]))


if __name__ == "__main__":
    sys.exit(run_main(main))
