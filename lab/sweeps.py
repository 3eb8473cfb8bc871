"""Learning-rate sweeps: every comparison of methods in the lab puts each at its own best learning rate.

A method that trains at a learning rate it was not tuned for loses for a reason that is not the
method: LoRA+ "halves the loss" against plain LoRA run at LoRA+'s rate, and prefix tuning "fails" at
the edge of a grid too small for it. So every method compared is swept on the sweep task:

    s = sweep(lab, PLAIN)          # plain LoRA: losses at each rate, the best rate, the runs at it
    s.best, s.at_best, s.inside    # 0.016, [1.49, 1.51, 1.47] (one per seed), True
    a, b = sweep_all(lab, [PLAIN, FULL])   # several methods swept side by side (their runs share the cores)

The grid steps by GRID_STEP (factors of 2 from 1e-3, so grids of all methods share points) and starts
at three rates around the method's `centre` (the first edition's best). Whenever the best rate (the
lowest mean validation loss) sits on an edge of the grid, the grid grows one step past that edge and
the new rate is trained, up to Lab.max_widen times: a best point inside the grid is checked, not
hoped for (Sweep.inside says whether it was reached). Grid points are trained at the first seed
only, and the best one at every seed (every_seed=True trains every point at every seed: for the
claims whose verdict is the best rate itself). A run that diverges counts as an infinite loss.
"""
import math
from dataclasses import dataclass, field
from typing import Callable

from demo import stage_parser
from lab.lab import mean
from model.lora_variants import VARIANTS
from plumbing.flags import LORA_RANK, LORA_TARGETS

GRID_STEP = 2  # neighbouring rates differ by 2x: fine enough to place a best within a factor of 2
BASE_RATE = 1e-3  # every grid is BASE_RATE x GRID_STEP^k, so any two methods' grids share their points
EVERY_LINEAR = "wq,wk,wv,wo,w1,w2,w3"  # LORA_TARGETS without "output" (the tied embedding)


@dataclass
class Method:
    """A configuration of one trainer, to be swept: `job(lab, task, learning_rate, seed)` -> (trainer, flags)."""

    label: str
    kind: str  # "lora" (train_lora.py or a variant) or "full" (train_full_sft.py)
    centre: float  # where the grid starts: the first edition's best rate, or a guess from the method's scale
    settings: dict = field(default_factory=dict)  # the trainer's flags as keywords (lora_rank=19, variant="adapter")
    every_seed: bool = False  # train every grid point at every seed (the best rate itself is a verdict's number)

    def job(self, lab, task, learning_rate, seed) -> tuple:
        make = lab.full_job if self.kind == "full" else lab.lora_job
        return make(task, learning_rate=learning_rate, seed=seed, **self.settings)

    def trainable(self, lab) -> int:
        """How many parameters this configuration trains on the demo's SFT model (counted on the model)."""
        model, _ = lab.load(lab.base()["sft"])
        if self.kind == "full":
            return sum(p.numel() for p in model.parameters())
        s = self.settings
        VARIANTS[s.get("variant", s.get("method", "lora"))].apply(model, s.get("lora_rank", LORA_RANK), s.get("lora_alpha"), 0.0,
                                                   s.get("lora_targets", LORA_TARGETS).split(","))
        return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora(label, centre, every_seed=False, **settings) -> Method:
    return Method(label, "lora", centre, settings, every_seed)


# The methods several claims compare, each swept once per Lab and shared. The demo's LoRA is train_lora.py's
# defaults; the methods it is compared with get its trainable parameters (matched(): within 10%).
PLUS = stage_parser("lora").parse_args([]).lora_plus_ratio  # the demo's LoRA+ ratio
DEMO = lora(f"LoRA, the demo's (r={LORA_RANK} on every Linear + embedding, LoRA+ {PLUS:g})", 4e-3)
PLAIN = lora("plain LoRA (the demo's, LoRA+ off)", 1.6e-2, every_seed=True, lora_plus_ratio=1)
FULL = Method("full fine-tuning", "full", 4e-3, every_seed=True)


def matched(lab) -> dict:
    """{"without the embedding", "adapter", "prefix": Method}: LoRA on every Linear but not the tied embedding,
    Adapter Tuning and Prefix Tuning, each at the size whose trainable parameters come nearest the demo's
    adapter's (198,656 for rank 16 on every Linear and the embedding: rank 19, bottleneck 96, 194 vectors)."""
    if "matched" not in lab.sweeps:
        target = DEMO.trainable(lab)

        def nearest(make):  # trainable parameters grow linearly with the size: t(n) = t(0) + n (t(1) - t(0))
            one, two = make(1).trainable(lab), make(2).trainable(lab)
            return max(1, round(1 + (target - one) / (two - one)))

        rank = nearest(lambda n: lora("", 0, lora_rank=n, lora_targets=EVERY_LINEAR))
        width = nearest(lambda n: lora("", 0, variant="adapter", lora_rank=n))
        vectors = nearest(lambda n: lora("", 0, variant="prefix", lora_rank=n))
        lab.sweeps["matched"] = {
            "without the embedding": lora(f"LoRA without the embedding (r={rank} on every Linear, LoRA+ {PLUS:g})", 4e-3,
                                          lora_rank=rank, lora_targets=EVERY_LINEAR),
            "adapter": lora(f"Adapter Tuning (bottleneck {width})", 8e-3, variant="adapter", lora_rank=width),
            "prefix": lora(f"Prefix Tuning ({vectors} vectors)", 3.2e-2, variant="prefix", lora_rank=vectors)}
    return lab.sweeps["matched"]


@dataclass
class Sweep:
    """A method's losses over its learning-rate grid, on one task."""

    method: Method
    losses: dict  # {rate: [final validation loss of each seed trained at it, in lab.seeds order]}
    runs: dict  # {rate: [Run, ...]}, the same order
    best: float  # the rate with the lowest mean loss
    inside: bool  # is the best rate inside the grid (not on its edge)?

    @property
    def grid(self) -> list:
        return sorted(self.losses)

    @property
    def at_best(self) -> list:
        """The final validation loss of every seed at the best rate."""
        return self.losses[self.best]

    @property
    def best_runs(self) -> list:
        return self.runs[self.best]

    def describe(self) -> str:
        """'0.016 (grid 0.004-0.032)' or '0.016 (edge of grid 0.004-0.016: a bound)'."""
        grid = self.grid
        where = "grid" if self.inside else "edge of grid"
        return f"{self.best:g} ({where} {grid[0]:g}-{grid[-1]:g}{'' if self.inside else ': a bound'})"


def grid_around(centre, points=3) -> list:
    """`points` rates BASE_RATE x GRID_STEP^k centred on `centre`: grid_around(4e-3) -> [0.002, 0.004, 0.008]."""
    k = round(math.log(centre / BASE_RATE, GRID_STEP))
    return [BASE_RATE * GRID_STEP ** (k + i - points // 2) for i in range(points)]


def sweep(lab, method: Method, task=None, metric: Callable = None) -> Sweep:
    """The method swept on `task` (default: the sweep task of lora_medical), once per Lab.

    metric(run) -> the number to minimise (default: the final validation loss; inf for a diverged run)."""
    return sweep_all(lab, [method], task, metric)[0]


def sweep_all(lab, methods: list, task=None, metric: Callable = None) -> list:
    """[Sweep] of each method on one task, the sweeps advancing side by side: each step trains every sweep's
    next runs in one lab.train_all (all the grids; then each widening; then every best rate at every seed), so
    the runs of several sweeps share the cores instead of one lone widening run after another. Each sweep's
    runs, and so its result, are those it gets swept alone (tests/test_lab.py)."""
    task = task if task is not None else lab.sweep_task()
    metric = metric or (lambda run: run.final("val_loss"))

    def key(m) -> tuple:  # one sweep per method and task, whichever claim asks
        return m.label, repr(sorted(task.items()))

    fresh = list({key(m): m for m in methods if key(m) not in lab.sweeps}.values())
    grids = {m.label: [grid_around(m.centre)[1]] if lab.quick else grid_around(m.centre) for m in fresh}
    done = {m.label: {} for m in fresh}  # {(rate, seed): Run} per sweep

    def train(wanted):  # [(method, rate, seed)]: those not yet trained, in one batch
        todo = [(m, lr, s) for m, lr, s in wanted if (lr, s) not in done[m.label]]
        for (m, lr, s), run in zip(todo, lab.train_all([m.job(lab, task, lr, s) for m, lr, s in todo])):
            done[m.label][lr, s] = run

    def runs(m) -> dict:  # {rate: [Run per seed trained there, in lab.seeds order]}
        return {lr: [done[m.label][lr, s] for s in lab.seeds if (lr, s) in done[m.label]] for lr in sorted(grids[m.label])}

    def best(m) -> float:
        return best_rate({lr: [metric(r) for r in rs] for lr, rs in runs(m).items()})

    def on_edge(m) -> bool:
        return best(m) in (min(grids[m.label]), max(grids[m.label]))

    def first_seeds(m) -> list:  # grid points: the first seed only, unless the best rate itself is a verdict's number
        return list(lab.seeds) if m.every_seed else list(lab.seeds[:1])

    train([(m, lr, s) for m in fresh for lr in grids[m.label] for s in first_seeds(m)])
    for _ in range(lab.max_widen):  # a best on an edge: grow the grid one step past it, and train the new rate
        growing = [m for m in fresh if on_edge(m)]
        if not growing:
            break
        for m in growing:
            grid = grids[m.label]
            grid.append(max(grid) * GRID_STEP if best(m) == max(grid) else min(grid) / GRID_STEP)
        train([(m, grids[m.label][-1], s) for m in growing for s in first_seeds(m)])
    bests = {m.label: best(m) for m in fresh}
    train([(m, bests[m.label], s) for m in fresh for s in lab.seeds])
    for m in fresh:
        found = runs(m)
        lab.sweeps[key(m)] = Sweep(m, {lr: [metric(r) for r in rs] for lr, rs in found.items()}, found,
                                   bests[m.label], bests[m.label] not in (min(found), max(found)))
    return [lab.sweeps[key(m)] for m in methods]


def best_rate(losses: dict) -> float:
    """The rate with the lowest mean loss over the seeds trained at it (a diverged run's inf included);
    when every rate diverged, the smallest (the sweep then grows downwards)."""
    means = {lr: mean(v) for lr, v in losses.items()}
    finite = [lr for lr in means if math.isfinite(means[lr])]
    return min(finite, key=means.get) if finite else min(means)


def rate_table(sweeps: list) -> tuple:
    """(header, rows): the final validation loss of each sweep at each rate (a mean over the seeds trained
    there, their number in brackets when more than one; **best** marks each best)."""
    rates = sorted({lr for s in sweeps for lr in s.losses})
    rows = []
    for lr in rates:
        cells = []
        for s in sweeps:
            if lr not in s.losses:
                cells.append("")
                continue
            v = s.losses[lr]
            text = "diverged" if not math.isfinite(mean(v)) else f"{mean(v):.3f}" + (f" ({len(v)})" if len(v) > 1 else "")
            cells.append(text + (" **best**" if lr == s.best else ""))
        rows.append([f"{lr:g}", *cells])
    return ["learning rate", *(s.method.label for s in sweeps)], rows


def sweep_series(sweeps: list) -> tuple:
    """({label: [(rate, mean loss)]}, {label: [(rate, low, high)]}): the sweeps as a line chart's series and spread."""
    series = {s.method.label: [(lr, mean(v)) for lr, v in s.losses.items()] for s in sweeps}
    spread = {s.method.label: [(lr, min(v), max(v)) for lr, v in s.losses.items() if len(v) > 1] for s in sweeps}
    return series, spread

