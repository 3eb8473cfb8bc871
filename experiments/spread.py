"""The spread of the demo's results over runs (seeds, CPU code paths), against its targets, worst case first.

    rows = {"default seed 1337": spread_row(results), ...}     # results: eval_model.py --compare --json
    print(spread_table(rows))

A model this small ends where its seed and its CPU's rounding take it, so one run says little about the
next machine; the worst of many runs does. Each run is a row of percentages; the table opens with the
worst of every column, then the runs, the mean and the best, and ends with the worst case's margin to
each target (demo.TARGETS): it must be at least demo.MARGIN points everywhere, or the table says so.
experiments/demo_seeds.py (whole demos) and experiments/adapter_configs.py (the adapters alone, on SFT
models already made) both print it.
"""
from demo import MARGIN, TARGETS, general_drops, target_checks

# The CPU code paths a run can take. "avx2" forces torch's, MKL's and oneDNN's AVX2 kernels, which
# nearly every x86 CPU of the last ten years executes and which round as a CPU without AVX-512 would.
CPU_PATHS = {"default": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}

COLUMNS = ["SFT general", "SFT unseen", "SFT medical", "medical", "identity", "drop general", "drop unseen"]
# Each target column's threshold and direction: +1 if higher is better, -1 if lower is.
LIMITS = {"SFT medical": (TARGETS["sft_medical"], -1), "medical": (TARGETS["medical"], +1),
          "identity": (TARGETS["identity"], +1), "drop general": (TARGETS["general_drop"], -1),
          "drop unseen": (TARGETS["general_drop"], -1)}


def spread_row(results) -> dict:
    """One run's numbers in percent, from the evaluation's JSON: the SFT model's scores, the adapters'
    skills, the largest drop an adapter causes on each general set, and whether every target is met."""
    acc = {c["name"]: {s: 100 * r["accuracy"] for s, r in c["sets"].items()} for c in results["columns"]}
    drops = general_drops(results)
    return {"SFT general": acc["base"]["eval_general"], "SFT unseen": acc["base"]["eval_general_unseen"],
            "SFT medical": acc["base"]["eval_medical"], "medical": acc["+lora_medical"]["eval_medical"],
            "identity": acc["+lora_identity"]["eval_identity"],
            "drop general": drops["eval_general"], "drop unseen": drops["eval_general_unseen"],
            "met": all(ok for _, ok in target_checks(results))}


def margins(rows) -> dict:
    """{target column: how far inside its target the worst run is, in points (negative: outside)}."""
    return {n: min(sign * (r[n] - limit) for r in rows.values()) for n, (limit, sign) in LIMITS.items()}


def holds_with_margin(rows) -> bool:
    """Every run meets every target, and the worst is at least MARGIN points inside each."""
    return all(r["met"] for r in rows.values()) and all(m >= MARGIN - 1e-6 for m in margins(rows).values())


def spread_table(rows) -> str:
    """{run name: spread_row} -> markdown: the worst of each column first, then each run, the mean, the
    best, and the worst case's margin to each target, with the verdict."""
    worst = {n: (max if LIMITS.get(n, (0, +1))[1] < 0 else min)(r[n] for r in rows.values()) for n in COLUMNS}
    best = {n: (min if LIMITS.get(n, (0, +1))[1] < 0 else max)(r[n] for r in rows.values()) for n in COLUMNS}
    mean = {n: sum(r[n] for r in rows.values()) / len(rows) for n in COLUMNS}

    def line(label, values, met=""):
        return f"| {label} | " + " | ".join(f"{values[n]:.1f}" for n in COLUMNS) + f" | {met} |"

    lines = [f"| run ({len(rows)}) | " + " | ".join(COLUMNS) + " | every target met |",
             "|---|" + "---:|" * len(COLUMNS) + "---|",
             line("**worst**", worst)]
    lines += [line(name, r, "yes" if r["met"] else "NO") for name, r in rows.items()]
    lines += [line("mean", mean), line("best", best)]
    m = margins(rows)
    verdict = (f"all met, worst >= {MARGIN} points inside" if holds_with_margin(rows)
               else f"all met, but the worst is within {MARGIN} points of a target"
               if all(r["met"] for r in rows.values()) else "NOT all met")
    lines.append("| **worst's margin** | " + " | ".join(f"{m[n]:+.1f}" if n in m else "" for n in COLUMNS)
                 + f" | {verdict} |")
    return "\n".join(lines)
