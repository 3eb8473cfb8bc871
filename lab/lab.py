"""The LoRA lab's workbench: what every experiment of lab/ shares (the report is docs/lora_lab.md).

    lab = Lab()                        # everything under out/lab, made once and reused
    base = lab.base()                  # {"pretrain": path, "sft": path}: the demo's checkpoints
    run = lab.train(*lab.lora_job(lab.sweep_task(), lora_rank=8))   # train_lora.py --lora_rank 8, sweep task
    run = lab.train(*lab.lora_job(lab.sweep_task(), variant="pissa"))   # python -m lab.train_variant --variant pissa
    runs = lab.train_all([lab.lora_job(lab.full_task(), seed=s) for s in lab.seeds])   # two at a time
    lab.score(base["sft"], run.weights)    # {"eval_medical": 0.115, "eval_general": 0.635}

Every training run is a command: one of this repository's scripts (`python train_pretrain.py`,
`python train_full_sft.py`, `python train_lora.py`) or, for LoRA's variants and predecessors, the
lab's own trainer (`python -m lab.train_variant --variant NAME`), into a folder of its own named by
a key of its *content*: the command, its flags, the bytes of every file a flag names (data, base
checkpoint) and of the code that trains. A run whose folder holds a finished record with that key
is not run again. Change a stage (its code, its data or a flag) and its key changes, so it and
everything trained from it is made afresh: nothing stale is ever reused, and nothing is rebuilt for
nothing. A job is a trainer and its *settings* (a task's and the experiment's, one dict): the flags
are those settings that differ from the trainer's defaults, sorted (canonical_flags), so one
configuration is one run whoever asks for it, and two configurations are never one run
(tests/test_lab.py). Several runs asked for at once go `workers` at a time (the last few all at once:
at_once), each a process of its own with one thread; a lone run is a process of its own too, with the
machine's threads, its output shown as it goes. With --quick the commands run in this process instead
(runpy, with sys.argv set: the same command line, without a Python start-up per run; see
run_in_this_process).

Two tasks (settings dicts, merged under the experiment's own):
    the full task    lora_medical.jsonl (or lora_identity.jsonl) at the demo's settings (4 epochs,
                     400 steps on lora_medical): accuracies, mean and range over seeds
    the sweep task   lora_medical's first 832 samples (or lora_identity's), one epoch (48 steps):
                     sweeps of many runs compare validation losses after the same short training
                     (said so in the report, beside each sweep); lab/sweeps.py puts every method
                     compared at its own best learning rate on it
Both log, beside the task's validation loss, the loss on 64 conversations SFT held out
(--val_also): general knowledge, watched while the task is learned.

quick=True shrinks everything (a dim-32 model, 64-line data, a few steps, 6 questions per set): the
tests run every experiment's code path that way in seconds. Its numbers mean nothing.
"""
import argparse
import codecs
import contextlib
import hashlib
import json
import os
import runpy
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import training
from demo import demo_eval_settings, demo_stages, stage_parser
from evaluation import evaluate_set, load_eval_set, reference_loss
from formats.loader import load_checkpoint, run_files
from formats.quantize import quantize_model
from lab import train_variant
from model.lora_variants import load_adapter
from plumbing import progress
from plumbing.atomic import atomic_write_text
from plumbing.errors import UserError
from plumbing.flags import LORA_RANK, LORA_TARGETS, STAGES

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "figures"
# The trainers, as what follows `python` on their command line: the stage scripts, and the lab's own
# trainer for LoRA's variants and predecessors (a module of lab/, run with -m).
COMMANDS = {"train_pretrain.py": ["train_pretrain.py"], "train_full_sft.py": ["train_full_sft.py"],
            "train_lora.py": ["train_lora.py"], "lab.train_variant": ["-m", "lab.train_variant"]}
# What a run's result depends on besides its flags and files: the code that trains (the loop, the
# scripts, the model, its files and the plumbing around them), and the tokenizer.
CODE = ["training.py", "train_pretrain.py", "train_full_sft.py", "train_lora.py", "lab/train_variant.py", "model/*.py",
        "formats/*.py", "plumbing/*.py", "dataset/*.py", "model/demo_tokenizer/*"]
SEEDS = (1337, 1, 2)  # 1337: the scripts' default, so the seed-1337 runs are the demo's own
VERDICTS = ("holds", "holds with a caveat", "does not hold at this scale")
HOLDS, CAVEAT, FAILS = VERDICTS
REPEAT_EPOCHS = 3  # the sweep task's samples seen this often: where dropout, alpha and extra epochs can overfit


def sha256_file(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_key() -> str:
    """One digest of every file in CODE: a change to any of them changes every run's key."""
    digest = hashlib.sha256()
    for pattern in CODE:
        for path in sorted(ROOT.glob(pattern)):
            if path.is_file():
                digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@dataclass
class Run:
    """A finished training run: its command (the flags of `script`, without --out_dir), folder and weights."""

    script: str
    flags: list
    folder: Path
    weights: str  # None for a run that diverged (its loss became NaN or inf and the script stopped)
    seconds: float  # wall time of the run when it was made

    @property
    def diverged(self) -> bool:
        return self.weights is None

    def records(self) -> list:
        return [] if self.diverged else progress.read_metrics(run_files(self.folder, self.weights).metrics)

    def curve(self, key="val_loss") -> list:
        """[(step, value)] of one metric: "loss" (training), "val_loss" or "val_also_loss"."""
        return [(r["step"], r[key]) for r in self.records() if key in r]

    def final(self, key="val_loss") -> float:
        """The last value of a metric; inf for a run that diverged (a sweep's too-large learning rate)."""
        return self.curve(key)[-1][1] if not self.diverged else float("inf")


@dataclass
class Finding:
    """One claim, measured: a row of the report card and a section of docs/lora_lab.md.

    verdicts: [(half, verdict)], each verdict one of VERDICTS, computed by the claim module's own rule
    (its `verdict` function, from thresholds stated in the module before the run); half is "" for a
    claim with one part, else what that part says ("learns less", "forgets less")."""

    title: str
    claim: str  # as the write-up states it, paraphrased
    source: str  # where: "000 §4.2 (训练技巧)", a write-up file and section, or "paper: Hu et al. 2021"
    rule: str  # how the verdict is decided: the module's thresholds, in words
    measured: str  # one line: what we measured
    verdicts: list
    details: str  # markdown: the tables and notes of the section
    figures: list = field(default_factory=list)  # file names under the figures folder
    module: str = ""  # lab/<module>.py: `python -m lab.<module>` measures it
    number: int = 0  # its place in the report (lab/run_lab.py's order)
    seconds: float = 0.0  # what it costs alone from the demo's checkpoints (the runs it reuses included)
    lab_seconds: float = 0.0  # what it took in this run of the lab (runs another claim made first not counted)

    def __post_init__(self):
        self.verdicts = [tuple(v) for v in self.verdicts]
        for half, verdict in self.verdicts:
            if verdict not in VERDICTS:
                raise ValueError(f"verdict {verdict!r} ({half or self.title}) is none of {VERDICTS}")

    def verdict_text(self, bold=True) -> str:
        """'holds', or 'learns less: holds; forgets less: does not hold at this scale'."""
        b = "**" if bold else ""
        return "; ".join(f"{half}: {b}{v}{b}" if half else f"{b}{v}{b}" for half, v in self.verdicts)

    def section(self) -> str:
        figures = "".join(f"\n![{name}](figures/{name})\n" for name in self.figures)
        verdict = "Verdicts" if len(self.verdicts) > 1 else "Verdict"
        return (f'<a id="{self.module}"></a>\n\n### {self.number}. {self.title}\n\n> {self.claim} ({self.source})\n\n'
                f"*Rule, set before the run:* {self.rule}\n\n"
                f"**{verdict}:** {self.verdict_text()}. {self.measured}\n\n{self.details.strip()}\n{figures}\n"
                f"`python -m lab.{self.module}`: {self.lab_seconds / 60:.1f} min in the lab's run, "
                f"{self.seconds / 60:.1f} min alone from the demo's checkpoints\n")


class Lab:
    """Paths, the base checkpoints, cached training runs, scoring and the figures' folder."""

    def __init__(self, out_dir="out/lab", quick=False, figures=None, workers=2, in_process=None):
        self.out = Path(out_dir).resolve()  # the commands run in the repository, wherever this was started
        self.quick = quick
        self.workers = 1 if quick else workers
        self.in_process = quick if in_process is None else in_process  # run the commands here (_run_here)
        self.figures = Path(figures) if figures else (self.out / "figures" if quick else FIGURES)
        self.seeds = SEEDS[:1] if quick else SEEDS
        self.max_widen = 0 if quick else 4  # lab/sweeps.py: how often a grid may grow past its edge
        self.sweeps = {}  # lab/sweeps.py's finished sweeps, by method and task: asked for by many claims
        self.code = code_key()
        self.training_seconds = 0.0  # spent training in this process (Lab.cost uses it)
        self.reused_seconds = 0.0  # recorded times of the reused runs it was handed
        self._base = None
        self.made_now = 0  # training runs made by this process
        self.base_seconds = 0.0  # what the base checkpoints took to make
        self.base_wall_seconds = 0.0  # how long this process spent making (or finding) them

    # ---- data

    def data(self, name, lines=None) -> str:
        """dataset/{name}.jsonl, or its first `lines` lines (quick: 64 at most) as a file under out/lab/data."""
        source = ROOT / "dataset" / f"{name}.jsonl"
        lines = min(lines or 10**9, 64) if self.quick else lines
        if lines is None:
            return str(source)
        path = self.out / "data" / f"{name}_first{lines}.jsonl"
        text = "".join(source.read_text(encoding="utf-8").splitlines(keepends=True)[:lines])
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
        return str(path)

    def general_validation(self) -> str:
        """The 64 conversations the SFT stage held out of sft_demo.jsonl (training.held_out_split, the
        same choice), as a file: the general-knowledge loss --val_also logs while a task is learned."""
        source = ROOT / "dataset" / "sft_demo.jsonl"
        lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
        held_out, _ = training.held_out_split(len(lines), 8 if self.quick else 64)
        path = self.out / "data" / "sft_demo_held_out.jsonl"
        text = "".join(lines[i] for i in held_out)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
        return str(path)

    def full_task(self, name="lora_medical") -> dict:
        """The demo's task `name` at the demo's settings (the trainer's defaults), as settings, with the
        general validation loss logged beside the task's every 100 steps."""
        return {"data_path": self.data(name), "val_also": self.general_validation(), "eval_interval": 100}

    def sweep_task(self, name="lora_medical", epochs=1) -> dict:
        """The sweeps' short task: the first 832 samples of `name`, one epoch (48 steps on lora_medical:
        64 of the samples are held out for validation), the general loss logged beside the task's.
        epochs > 1: the same samples seen again (the claims about epochs, dropout and overfitting)."""
        return {"data_path": self.data(name, 832), "epochs": epochs, "eval_interval": 26, "log_interval": 2,
                "val_also": self.general_validation()}

    # ---- training runs, made once

    def _key(self, script, flags) -> str:
        """The run's content: script, flags (a flag naming a file stands for that file's bytes) and code."""
        parts = [script, self.code, str(self.quick)]
        for flag in flags:
            parts.append("file:" + sha256_file(flag) if Path(flag).is_file() else flag)
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    def _quick_flags(self, script) -> list:
        if not self.quick:
            return []
        flags = ["--epochs", "1", "--batch_size", "8", "--max_seq_len", "64", "--val_samples", "8", "--eval_interval", "2"]
        if script == "train_pretrain.py":
            flags += ["--dim", "32", "--n_layers", "1", "--n_heads", "2", "--n_kv_heads", "2"]
        return flags

    def train(self, script, flags) -> Run:
        """Run `python script flags` into its own folder, or hand back the finished run with the same content."""
        return self.train_all([(script, flags)])[0]

    def train_all(self, jobs) -> list:
        """[Run] for [(script, flags)]: the finished ones handed back, the others run (see Lab's docstring)."""
        jobs = [(script, [str(f) for f in flags] + self._quick_flags(script)) for script, flags in jobs]
        runs, todo = [None] * len(jobs), {}
        for i, (script, flags) in enumerate(jobs):
            key = self._key(script, flags)
            folder = self._folder(script, key)
            saved = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
            if saved.get("key") == key and (saved["weights"] is None or Path(saved["weights"]).is_file()):
                self.reused_seconds += saved["seconds"]
                runs[i] = Run(script, flags, folder, saved["weights"], saved["seconds"])
            else:
                todo.setdefault(folder, (i, script, flags, key))  # the same job twice in one list: run once
        side_by_side = self.workers > 1 and len(todo) > 1 and not self.in_process
        made = self._run_in_processes(list(todo.values())) if side_by_side else \
            {i: self._run_here(script, flags, key) for i, script, flags, key in todo.values()}
        for i, _, _, _ in todo.values():
            runs[i] = made[i]
        for i, (script, flags) in enumerate(jobs):  # duplicates of a job just made
            if runs[i] is None:
                runs[i] = next(r for r in runs if r is not None and r.script == script and r.flags == flags)
        return runs

    def _folder(self, script, key) -> Path:
        """out/lab/runs/train_lora-<key>, train_variant-<key>, ...: the trainer's name and the run's content."""
        return self.out / "runs" / f"{script.removesuffix('.py').rsplit('.', 1)[-1]}-{key[:12]}"

    def _command(self, script, flags, folder) -> list:
        """What follows `python` to make the run: e.g. ['train_lora.py', '--base', ..., '--out_dir', folder]."""
        return [*COMMANDS[script], *flags, "--out_dir", str(folder)]

    def _fresh_folder(self, script, flags, key) -> Path:
        """The run's folder, emptied (an interrupted run of this content starts over); the command is echoed."""
        folder = self._folder(script, key)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        print(f"$ python {' '.join(self._command(script, flags, folder))}", file=sys.stderr, flush=True)
        return folder

    def _finished(self, script, flags, key, returncode, seconds) -> Run:
        """Record a run that ended with `returncode`: its weights, or None when it diverged (a result,
        not a failure); any other failure stops the lab with the run's last line."""
        folder = self._folder(script, key)
        tail = " ".join((folder / "log.txt").read_text(errors="replace").strip().splitlines()[-1:])
        if returncode != 0 and not diverged(tail):
            raise UserError(f"python {' '.join(COMMANDS[script])} failed (exit {returncode}): {tail} "
                            f"(its output: {folder / 'log.txt'})")
        weights = [str(p) for p in folder.rglob("*.pth") if "resume" not in p.name] if returncode == 0 else [None]
        return self._record(script, flags, key, weights[0], seconds)

    def _record(self, script, flags, key, weights, seconds) -> Run:
        folder = self._folder(script, key)
        atomic_write_text(folder / "run.json", json.dumps({"key": key, "script": script, "flags": flags, "weights": weights,
                                                            "seconds": round(seconds, 2)}, indent=1) + "\n")
        self.training_seconds += seconds
        self.made_now += 1
        return Run(script, flags, folder, weights, seconds)

    def _run_here(self, script, flags, key) -> Run:
        """One run on its own: a process with the machine's threads, its output shown as it goes and kept
        in the folder's log.txt; with --quick (in_process), the same command in this process."""
        folder = self._fresh_folder(script, flags, key)
        command = self._command(script, flags, folder)
        start = time.perf_counter()
        if self.in_process:
            returncode = run_in_this_process(command, folder / "log.txt")
        else:
            returncode = run_showing_output([sys.executable, *command], folder / "log.txt")
        return self._finished(script, flags, key, returncode, time.perf_counter() - start)

    def _run_in_processes(self, todo) -> dict:
        """{job index: Run}: the jobs run `self.workers` at a time (at_once: the last few all together), each
        its own process with one thread (small models gain little from a second thread; two runs side by side
        gain nearly 2x)."""
        made, running, waiting = {}, [], sorted(todo, key=lambda job: -expected_work(job[1], job[2]))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        while waiting or running:
            while waiting and len(running) < at_once(len(waiting) + len(running), self.workers):
                i, script, flags, key = waiting.pop(0)
                folder = self._fresh_folder(script, flags, key)
                log = open(folder / "log.txt", "w")
                process = subprocess.Popen([sys.executable, *self._command(script, flags, folder)], stdout=log,
                                           stderr=subprocess.STDOUT, env=env, cwd=ROOT)
                running.append((i, script, flags, key, process, log, time.perf_counter()))
            time.sleep(0.2)
            for job in [job for job in running if job[4].poll() is not None]:
                i, script, flags, key, process, log, start = job
                running.remove(job)
                log.close()
                try:
                    made[i] = self._finished(script, flags, key, process.returncode, time.perf_counter() - start)
                except UserError:
                    for other in running:
                        other[4].kill()
                    raise
        return made

    def base(self) -> dict:
        """The demo's checkpoints, by run_demo's own commands: {"pretrain": path, "sft": path} and its two
        adapters, seed 1337 (what lora_job(full_task(name)) gives; lab/forgetting.py reads them).
        Made (or found) once per Lab; an experiment's cost leaves them out (every experiment starts from them)."""
        if self._base is None:
            reused, start = self.reused_seconds, time.perf_counter()
            self._base = self._make_base()
            self.base_wall_seconds = time.perf_counter() - start  # left out of the experiment that asked first
            self.base_seconds = self.reused_seconds - reused + self.training_seconds
            self.reused_seconds = reused
        return self._base

    def _make_base(self) -> dict:
        stages = dict(demo_stages())
        quick = {"pretrain": ["--data_path", self.data("pretrain_demo", 64)], "SFT": ["--data_path", self.data("sft_demo", 64)]}
        extra = quick if self.quick else {"pretrain": [], "SFT": []}
        pretrain = self.train(stages["pretrain"][0], stages["pretrain"][1:] + extra["pretrain"])
        sft = self.train(stages["SFT"][0], stages["SFT"][1:] + ["--base", pretrain.weights] + extra["SFT"])
        self._base = {"pretrain": pretrain.weights, "sft": sft.weights}  # what lora_job below builds on
        # the demo's two adapters: train_lora.py's defaults on each task (plus --val_also, which changes no weight)
        self.train_all([self.lora_job(self.full_task(name)) for name in ("lora_medical", "lora_identity")])
        return self._base

    def lora_job(self, task: dict, variant="lora", **settings) -> tuple:
        """(trainer, flags) on the demo's SFT model: `task` (full_task() or sweep_task()) overridden by
        train_lora.py's flags as keywords, e.g. lora_rank=8, seed=1, epochs=2. variant="lora" is
        train_lora.py itself; another of model/lora_variants.py's (pissa, swapped, zeros, rslora, adapter,
        prefix, ...), or a setting only the lab's trainer has (lr_schedule), is the same run through
        `python -m lab.train_variant --variant NAME`."""
        merged = {"base": self.base()["sft"], **task, **settings}
        lora = stage_parser("lora")
        if variant == "lora" and set(merged) <= set(vars(lora.parse_args([]))):  # plain LoRA, train_lora.py's flags only
            return "train_lora.py", canonical_flags(lora, merged)
        return "lab.train_variant", canonical_flags(train_variant.build_parser(), {**merged, "variant": variant})

    def full_job(self, task: dict, **settings) -> tuple:
        """("train_full_sft.py", flags): full fine-tuning from the demo's SFT model on `task`, with
        train_lora.py's batch size, window, epochs and warm-up (the same steps on the same data) and
        the SFT stage's learning rate, all overridden by the task's and the keywords' settings."""
        lora = STAGES["lora"]
        same = {name: lora[name] for name in ("batch_size", "max_seq_len", "epochs", "warmup_iters")}
        merged = {"base": self.base()["sft"], **same, **task, **settings}
        return "train_full_sft.py", canonical_flags(stage_parser("full_sft"), merged)

    # ---- measuring

    def load(self, checkpoint, adapter=None, quantize=None):
        """(model, tokenizer) in eval mode: a checkpoint, its block Linears quantized as `quantize` (int8, nf4, ...:
        formats/quantize.py) if given, with a LoRA or predecessor file (or such a dict) on it if given."""
        loaded = load_checkpoint(checkpoint, device="cpu")
        if quantize is not None:
            quantize_model(loaded.model, quantize)
        if adapter is not None:
            load_adapter(loaded.model, adapter)
        return loaded.model.eval(), loaded.tokenizer

    def eval_items(self, name) -> list:
        items = load_eval_set(ROOT / "dataset" / f"{name}.jsonl")
        return items[:6] if self.quick else items

    def score(self, checkpoint, adapter=None, sets=("eval_medical", "eval_general"), quantize=None) -> dict:
        """{set: accuracy}, greedy, with the demo's evaluation settings (demo.demo_eval_settings); remembered by the
        files' content (and the quantization, if any: see load)."""
        key = "|".join([sha256_file(checkpoint), sha256_file(adapter) if adapter else "-", *sets, str(self.quick),
                        *([quantize] if quantize else [])])
        cache_path = self.out / "scores.json"
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
        if key not in cache:
            settings = demo_eval_settings("out")
            model, tok = self.load(checkpoint, adapter, quantize)
            new_tokens = 8 if self.quick else settings.max_new_tokens
            cache[key] = {name: evaluate_set(model, tok, self.eval_items(name), new_tokens, settings.batch_size,
                                                        model.config.max_seq_len)["accuracy"] for name in sets}
            atomic_write_text(cache_path, json.dumps(cache, indent=1) + "\n")
        return cache[key]

    def answer_losses(self, sets, adapter=None, quantize=None) -> dict:
        """{set: nats per reference-answer token} of the demo's SFT model (quantized, wearing `adapter`: see load):
        how likely it finds the right answers, a finer measure than accuracy and far cheaper (no generation)."""
        model, tok = self.load(self.base()["sft"], adapter, quantize)
        losses = {}
        for name in sets:
            total, count = reference_loss(model, tok, self.eval_items(name), 16, model.config.max_seq_len)
            losses[name] = total / count
        return losses

    @contextlib.contextmanager
    def cost(self, finding_box: list):
        """Time one experiment as if run alone from the base checkpoints: its wall time, with the
        recorded times of the runs it reused (divided by `workers`: alone, they would go side by side
        too) in place of the moments it took to hand them back."""
        start, reused, base = time.perf_counter(), self.reused_seconds, self.base_wall_seconds
        yield
        wall = time.perf_counter() - start - (self.base_wall_seconds - base)
        for finding in finding_box:
            finding.lab_seconds = wall
            finding.seconds = wall + (self.reused_seconds - reused) / self.workers

    def figure(self, name) -> str:
        """The path to write figure `name` to (docs/figures, or out/lab/figures when quick)."""
        self.figures.mkdir(parents=True, exist_ok=True)
        return str(self.figures / name)


def at_once(left: int, workers: int) -> int:
    """How many one-thread runs may go at once with `left` still to finish (running or waiting): `workers`,
    but every one left once fewer than 2 x workers are. `workers` at a time would end a batch of 3 on 2
    cores with one run alone and a core idle (2 run-times); all 3 sharing the 2 cores take 1.5. Measured
    on the 2-core AMD EPYC, 3 sweep-task runs: 52 s two at a time, 40 s all three at once, the weights
    byte for byte the same (each run is one thread, whatever else runs)."""
    return left if left < 2 * workers else workers


def expected_work(script, flags) -> int:
    """A run's size, to start a batch's longest runs first: the samples it trains on (epochs x lines of its
    data). Started last, a long run would finish alone on one core with the other idle (the runs of one
    claim's batch differ up to 16x: epochs, data sizes); started first, the short ones fill in beside it."""
    parser = train_variant.build_parser() if script == "lab.train_variant" else \
        stage_parser({"train_pretrain.py": "pretrain", "train_full_sft.py": "full_sft", "train_lora.py": "lora"}[script])
    args = parser.parse_args(flags)
    with open(ROOT / args.data_path, "rb") as f:  # relative to the repository, where the runs start
        return args.epochs * sum(1 for _ in f)


# ---- small helpers the experiments share


def diverged(error_line: str) -> bool:
    """Did a training script stop because its loss or gradient norm became NaN or inf (progress.Progress)?
    A sweep's largest learning rates may do that: a result (it diverges), not a failure of the lab."""
    return " became " in error_line and " by step " in error_line


def run_showing_output(command, log_path) -> int:
    """Run `command` (a list, from the repository) -> its exit code; its output, stdout and stderr
    together, shown on this process's stderr as it comes (the progress bar included) and kept in log_path."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
        for chunk in iter(lambda: process.stdout.read1(1 << 16), b""):
            log.write(chunk)
            sys.stderr.write(decoder.decode(chunk))
            sys.stderr.flush()
        return process.wait()


def run_in_this_process(command, log_path) -> int:
    """`python COMMAND` run in this process -> its exit code; its output written to log_path.

    The command line is the trainer's interface, here as everywhere else in the lab: the script (or
    `-m module`'s file) runs as the interpreter would run it -- runpy, as __main__, with sys.argv set --
    and ends in the SystemExit its `sys.exit(run_main(main))` raises. Nothing of it is imported. Only
    --quick runs this way: its ~37 tiny runs take about a second each, and a process apiece (a Python
    start-up importing torch per run) made tests/test_lab.py's quick lab 9x slower (178 s against 20 s
    on 2 quiet cores)."""
    if command[0] == "-m":
        path, args = ROOT / (command[1].replace(".", "/") + ".py"), command[2:]
    else:
        path, args = ROOT / command[0], command[1:]
    saved = sys.argv
    sys.argv = [str(path), *args]
    try:
        with open(log_path, "w", encoding="utf-8") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            runpy.run_path(str(path), run_name="__main__")
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = saved


def canonical_flags(parser, settings: dict) -> list:
    """['--lora_rank', '8', '--seed', '1']: the settings that differ from the parser's defaults (a
    trainer's: demo.stage_parser(stage), read from plumbing/flags.py, or lab.train_variant's), as flags
    in a fixed order. For LoRA, a rank of None means plumbing.flags.LORA_RANK, alpha None means alpha = rank
    and targets None means LORA_TARGETS."""
    defaults = vars(parser.parse_args([]))
    rank = settings.get("lora_rank", LORA_RANK)
    implied = {"lora_rank": LORA_RANK, "lora_alpha": rank, "lora_targets": LORA_TARGETS}
    out = []
    for name in sorted(settings):
        if name not in defaults:
            raise ValueError(f"--{name} is not a flag of this trainer")
        default = defaults[name] if defaults[name] is not None else implied.get(name)
        value = settings[name]
        same = str(value) == str(default) or (isinstance(value, (int, float)) and isinstance(default, (int, float))
                                              and float(value) == float(default))
        if not same:
            out += [f"--{name}", str(value)]
    return out


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def spread(values, fmt="{:.1%}") -> str:
    """'65.4% (63.5-67.3%)': the mean over seeds and the range, formatted alike."""
    values = list(values)
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(mean(values))} ({fmt.format(min(values)).rstrip('%')}-{fmt.format(max(values))})"


def loss_spread(values) -> str:
    """'1.472 (1.430-1.513)': spread() for losses."""
    return spread(values, "{:.3f}")


def below(a, b) -> bool:
    """Is every value of `a` below every value of `b`: do the ranges over seeds separate, a lower?
    The lab calls a difference only then; overlapping ranges are "within noise"."""
    return max(a) < min(b)


def compare(a, b) -> str:
    """'lower', 'higher' or 'within noise': `a` against `b`, by their ranges over seeds (below)."""
    return "lower" if below(a, b) else "higher" if below(b, a) else "within noise"


def as_good(candidate, reference, start, close=0.9) -> str:
    """Is `candidate` (losses over seeds) as good as `reference`? HOLDS if within noise of it or better;
    CAVEAT if worse but still `close` (90%) of the reference's gain from `start` (the loss training
    began at); FAILS otherwise."""
    if not below(reference, candidate):
        return HOLDS
    return CAVEAT if start - mean(candidate) >= close * (start - mean(reference)) else FAILS


def verdict_of(count, of) -> str:
    """A claim that must hold for each of `of` cases (e.g. LoRA with and without the embedding): holds
    for all, holds with a caveat for some, does not hold for none."""
    return HOLDS if count == of else CAVEAT if count > 0 else FAILS


def table(header: list, rows: list) -> str:
    """A markdown table: first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def add_lab_args(p) -> None:
    """--out_dir, --workers and --quick: the flags of `python -m lab.run_lab` and of every experiment run alone."""
    p.add_argument("--out_dir", default="out/lab", help="where the lab's checkpoints and runs live (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="training runs at a time, one thread each (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a tiny model and a few steps: checks the code path in seconds, "
                                                        "its numbers mean nothing (figures and report go to OUT_DIR)")


def lab_from_args(args) -> "Lab":
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    return Lab(args.out_dir, quick=args.quick, workers=args.workers)


def run_alone(module_name, run, argv=None):
    """What `python -m lab.<module>` does: measure one claim and print its section of the report
    (docs/lora_lab.md is rewritten by lab/run_lab.py only)."""
    p = argparse.ArgumentParser(description=f"The LoRA lab, one claim: python -m lab.{module_name} (docs/lora_lab.md).")
    add_lab_args(p)
    print(measure(lab_from_args(p.parse_args(argv)), run).section())


def measure(lab, run) -> Finding:
    """run(lab) -> its Finding, with what it costs alone (Lab.cost) and its number in the report."""
    from lab.run_lab import NAMES  # the report's order (imported here: run_lab imports every claim's module)
    box = []
    with lab.cost(box):
        box.append(run(lab))
    box[0].number = NAMES.index(box[0].module) + 1 if box[0].module in NAMES else 0
    return box[0]
