"""One base model, many small adapters, swapped per task instead of loading another model (000 §1.1;
002 §五.1; 003's list of LoRA's merits says the same).

For the demo model and MiniMind2-Small (random weights: sizes and times do not depend on the values):
the base checkpoint's file size against an adapter's (the demo's targets and rank 16, and MiniMind2's
wq,wo), and the time to switch tasks two ways:
  reload  load another fine-tuned model from its file (formats.checkpoint.load_model, as every
          checkpoint load does underneath)
  swap    remove_lora, then load_lora another adapter: from its file, or from memory (a dict read
          once, as the chat's /lora command and the server do)
Median of several repeats.

Rule (set before the run), on MiniMind2-Small with MiniMind2's adapter (the write-ups' setting):
holds if the adapter file is at most 5% of the base's and a swap from memory is at least 10x faster
than reloading the model; with a caveat if only one of the two; does not hold if neither.

    python -m lab.adapter_swap
"""
import os
import statistics
import sys
import tempfile
import time

import torch

from bench.bench_generate import model_sizes
from plumbing.errors import run_main
from lab.lab import Finding, run_alone, table, verdict_of
from formats.checkpoint import load_model, read_checkpoint, save_model
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from model.model_lora import apply_lora, load_lora, remove_lora, save_lora
from plot import panels
from plumbing.flags import LORA_TARGETS

TITLE = "Swap adapters per task"
CLAIM = "An adapter is a small file; one base model serves many tasks by swapping adapters instead of loading whole models."
SOURCE = "000 §1.1 LoRA 的核心优势; 002 §五.1 多任务适配"
SMALL = 0.05  # "small": an adapter file at most 5% of its base's
FASTER = 10  # a swap worth making: at least 10x faster than loading another model
RULE = (f"on MiniMind2-Small with MiniMind2's adapter: holds if the adapter file is at most {SMALL:.0%} of the base's "
        f"and a swap from memory is at least {FASTER}x faster than reloading the model; with a caveat if only one of "
        "the two; does not hold if neither.")


def verdict(file_share: float, speedup: float) -> str:
    """file_share: adapter file / base file; speedup: reload time / swap time."""
    return verdict_of((file_share <= SMALL) + (speedup >= FASTER), 2)


ADAPTERS = {"the demo's (r=16, every Linear + embedding)": LORA_TARGETS.split(","),
            "MiniMind2's (r=16, wq,wo)": ["wq", "wo"]}


def median_seconds(fn, repeats) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(fields, folder, repeats) -> dict:
    torch.manual_seed(0)
    model = MiniMindLM(LMConfig(**fields))
    base_path = os.path.join(folder, "base.pth")
    save_model(model, base_path)
    out = {"base_mb": os.path.getsize(base_path) / 1e6, "reload_s": median_seconds(lambda: load_model(base_path), repeats)}
    for name, targets in ADAPTERS.items():
        path = os.path.join(folder, "adapter.pth")
        apply_lora(model, 16, target_modules=targets)
        save_lora(model, path)
        remove_lora(model)
        in_memory = read_checkpoint(path)

        def swap(source):
            load_lora(model, source)
            remove_lora(model)

        out[name] = {"mb": os.path.getsize(path) / 1e6, "file_s": median_seconds(lambda: swap(path), repeats),
                     "memory_s": median_seconds(lambda: swap(in_memory), repeats)}
    return out


def run(lab) -> Finding:
    repeats = 3 if lab.quick else 15
    sizes = {"demo": model_sizes()["demo"]} if lab.quick else model_sizes()
    with tempfile.TemporaryDirectory() as folder:
        results = {size: measure(fields, folder, repeats) for size, fields in sizes.items()}
    rows = []
    for size, r in results.items():
        for name in ADAPTERS:
            a = r[name]
            rows.append([size, name, f"{r['base_mb']:.2f} MB", f"{a['mb']:.3f} MB ({a['mb'] / r['base_mb']:.1%})",
                         f"{r['reload_s'] * 1e3:.1f} ms", f"{a['file_s'] * 1e3:.1f} ms", f"{a['memory_s'] * 1e3:.1f} ms"])
    big = results[list(sizes)[-1]]
    mm2 = big["MiniMind2's (r=16, wq,wo)"]
    panels([("bar", dict(title=f"{size}: switching tasks", x_label="milliseconds (median)",
                         bars={"reload the model": (r["reload_s"] * 1e3,) * 3,
                               **{f"swap, {n.split(' (')[0]} adapter, from memory": (r[n]["memory_s"] * 1e3,) * 3 for n in ADAPTERS}}))
            for size, r in results.items()] +
           [("bar", dict(title="adapter file, share of the base's", x_label="adapter file / base file", percent=True,
                         bars={f"{size}, {n.split(' (')[0]}": (r[n]["mb"] / r["base_mb"],) * 3 for size, r in results.items()
                               for n in ADAPTERS}, refs=[(SMALL, f"{SMALL:.0%}: the rule's 'small'")]))],
           lab.figure("lora_adapter_swap.svg"), "Switching tasks: another model, or another adapter", columns=2, width=470)
    details = ("File sizes (float32) and switching times (median of "
               f"{repeats}):\n\n" + table(["model", "adapter", "base file", "adapter file", "reload the model",
                                           "swap, adapter from file", "swap, adapter in memory"], rows)
               + "\n\nA swap reads and copies only the adapter's tensors; the base's weights are never touched (remove_lora "
               "gives back the very same tensors, bit for bit, tests/test_lora.py). The demo's adapter is a large share "
               "of its tiny base because it adapts the embedding (vocab x rank) and every Linear of a dim-128 model.")
    share, speedup = mm2["mb"] / big["base_mb"], big["reload_s"] / mm2["memory_s"]
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"{list(sizes)[-1]}: MiniMind2's adapter is {mm2['mb']:.2f} MB against a {big['base_mb']:.0f} MB base "
                   f"({share:.1%}); swapping it takes {mm2['memory_s'] * 1e3:.1f} ms from memory vs "
                   f"{big['reload_s'] * 1e3:.0f} ms to reload the model ({speedup:.0f}x).",
                   [("", verdict(share, speedup))], details, ["lora_adapter_swap.svg"], "adapter_swap")


def main(argv=None):
    run_alone("adapter_swap", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
