"""The LoRA lab's workbench: what every experiment of lab/ shares (the report is docs/lora_lab.md).

    lab = Lab()                        # everything under out/lab, made once and reused
    base = lab.base()                  # {"pretrain": path, "sft": path}: the demo's checkpoints
    run = lab.train(*lab.lora_job(lab.sweep_task(), lora_rank=8))   # train_lora.py --lora_rank 8, sweep task
    runs = lab.train_all([lab.lora_job(lab.full_task(), seed=s) for s in lab.seeds])   # two at a time
    lab.score(base["sft"], run.weights)    # {"eval_medical": 0.115, "eval_general": 0.635}

Every training run is a command of this repository's own scripts (train_pretrain.py, train_full_sft.py,
train_lora.py), into a folder of its own named by a key of its *content*: the script, its flags, the
bytes of every file a flag names (data, base checkpoint) and of the code that trains. A run whose
folder holds a finished record with that key is not run again. Change a stage (its code, its data or
a flag) and its key changes, so it and everything trained from it is made afresh: nothing stale is
ever reused, and nothing is rebuilt for nothing. Several runs asked for at once go `workers` at a
time, each a process of its own with one thread (a lone run, or --quick, runs in this process).

Two tasks:
    the full task    lora_medical.jsonl (or lora_identity.jsonl) at the demo's settings (4 epochs,
                     416 steps on lora_medical): accuracies, mean and range over seeds
    the sweep task   lora_medical's first 832 samples, one epoch (48 steps): sweeps of many runs
                     compare validation losses after the same short training (said so in the
                     report, beside each sweep)

quick=True shrinks everything (a dim-32 model, 64-line data, a few steps, 6 questions per set): the
tests run every experiment's code path that way in seconds. Its numbers mean nothing.
"""
import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import eval_model  # noqa: E402
import train_full_sft  # noqa: E402
import train_lora  # noqa: E402
import train_pretrain  # noqa: E402
import training  # noqa: E402
from experiments.lora_medical import demo_eval_settings  # noqa: E402
from plumbing.atomic import atomic_write_text  # noqa: E402
from formats.checkpoint import read_checkpoint  # noqa: E402
from plumbing.errors import UserError  # noqa: E402
from formats.loader import load_checkpoint, run_files  # noqa: E402
from model.model_lora import load_lora  # noqa: E402
from model.predecessors import load_method  # noqa: E402
from run_demo import demo_stages  # noqa: E402
from plumbing import progress

FIGURES = ROOT / "docs" / "figures"
SCRIPTS = {"train_pretrain.py": train_pretrain, "train_full_sft.py": train_full_sft, "train_lora.py": train_lora}
# What a run's result depends on besides its flags and files: the code that trains, and the tokenizer.
CODE = ["training.py", "train_pretrain.py", "train_full_sft.py", "train_lora.py", "model/*.py", "dataset/*.py",
        "model/demo_tokenizer/*"]
SEEDS = (1337, 1, 2)  # 1337: the scripts' default, so the seed-1337 runs are the demo's own
VERDICTS = ("holds", "holds with a caveat", "does not hold at this scale")


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
    """One claim, measured: a row of the report card and a section of docs/lora_lab.md."""

    number: int
    title: str
    claim: str  # as the LoRA write-ups state it
    measured: str  # one line: what we measured
    verdict: str  # one of VERDICTS
    details: str  # markdown: the tables and notes of the section
    figures: list = field(default_factory=list)  # file names under the figures folder
    module: str = ""  # lab/<module>.py, the command that measures it
    seconds: float = 0.0  # what it costs alone from the SFT model (the recorded times of the runs it reuses included)
    lab_seconds: float = 0.0  # what it took in this run of the lab (runs another claim made first not counted)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is none of {VERDICTS}")

    def section(self) -> str:
        figures = "".join(f"\n![{name}](figures/{name})\n" for name in self.figures)
        return (f"## {self.number}. {self.title}\n\n> {self.claim}\n\n**Verdict: {self.verdict}.** {self.measured}\n\n"
                f"{self.details.strip()}\n{figures}\n`python lab/{self.module}.py`: {self.lab_seconds / 60:.1f} min in the "
                f"lab's run, {self.seconds / 60:.1f} min alone from the SFT model\n")


class Lab:
    """Paths, the base checkpoints, cached training runs, scoring and the figures' folder."""

    def __init__(self, out_dir="out/lab", quick=False, figures=None, workers=2):
        self.out = Path(out_dir)
        self.quick = quick
        self.workers = 1 if quick else workers
        self.figures = Path(figures) if figures else (self.out / "figures" if quick else FIGURES)
        self.seeds = SEEDS[:1] if quick else SEEDS
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

    def full_task(self, name="lora_medical") -> list:
        """train_lora.py/train_full_sft.py flags for the demo's task `name` at the demo's settings,
        with the general validation loss logged beside the task's every 100 steps."""
        return ["--data_path", self.data(name), "--val_also", self.general_validation(), "--eval_interval", "100"]

    def sweep_task(self) -> list:
        """The sweeps' short task: the first 832 samples of lora_medical.jsonl, one epoch (48 steps: 64 of them are held out for validation)."""
        return ["--data_path", self.data("lora_medical", 832), "--epochs", "1", "--eval_interval", "26", "--log_interval", "2"]

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
        made = self._run_in_processes(list(todo.values())) if self.workers > 1 and len(todo) > 1 else \
            {i: self._run_here(script, flags, key) for i, script, flags, key in todo.values()}
        for i, _, _, _ in todo.values():
            runs[i] = made[i]
        for i, (script, flags) in enumerate(jobs):  # duplicates of a job just made
            if runs[i] is None:
                runs[i] = next(r for r in runs if r is not None and r.script == script and r.flags == flags)
        return runs

    def _folder(self, script, key) -> Path:
        return self.out / "runs" / f"{Path(script).stem}-{key[:12]}"

    def _record(self, script, flags, key, weights, seconds) -> Run:
        folder = self._folder(script, key)
        atomic_write_text(folder / "run.json", json.dumps({"key": key, "script": script, "flags": flags, "weights": weights,
                                                            "seconds": round(seconds, 2)}, indent=1) + "\n")
        self.training_seconds += seconds
        self.made_now += 1
        return Run(script, flags, folder, weights, seconds)

    def _run_here(self, script, flags, key) -> Run:
        """One run in this process (quick mode, --workers 1, or a single job)."""
        folder = self._folder(script, key)
        if folder.exists():  # an interrupted run of this content: start it over
            shutil.rmtree(folder)
        print(f"$ python {script} {' '.join(flags)} --out_dir {folder}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            weights = SCRIPTS[script].main([*flags, "--out_dir", str(folder)]).weights
        except UserError as e:
            if not diverged(str(e)):
                raise
            weights = None
        return self._record(script, flags, key, weights, time.perf_counter() - start)

    def _run_in_processes(self, todo) -> dict:
        """{job index: Run}: the jobs run `self.workers` at a time, each its own process with one thread
        (small models gain little from a second thread; two runs side by side gain nearly 2x)."""
        made, running, waiting = {}, [], list(todo)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        while waiting or running:
            while waiting and len(running) < self.workers:
                i, script, flags, key = waiting.pop(0)
                folder = self._folder(script, key)
                if folder.exists():
                    shutil.rmtree(folder)
                folder.mkdir(parents=True)
                command = [sys.executable, str(ROOT / script), *flags, "--out_dir", str(folder)]
                print(f"$ python {script} {' '.join(flags)} --out_dir {folder}", file=sys.stderr, flush=True)
                log = open(folder / "log.txt", "w")
                running.append((i, script, flags, key, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                                         env=env, cwd=ROOT), log, time.perf_counter()))
            time.sleep(0.2)
            for job in [job for job in running if job[4].poll() is not None]:
                i, script, flags, key, process, log, start = job
                running.remove(job)
                log.close()
                folder = self._folder(script, key)
                tail = " ".join((folder / "log.txt").read_text(errors="replace").strip().splitlines()[-1:])
                if process.returncode != 0 and not diverged(tail):
                    for other in running:
                        other[4].kill()
                    raise UserError(f"python {script} failed (exit {process.returncode}): {tail} "
                                    f"(its output: {folder / 'log.txt'})")
                weights = [str(p) for p in folder.rglob("*.pth") if "resume" not in p.name] if process.returncode == 0 else [None]
                made[i] = self._record(script, flags, key, weights[0], time.perf_counter() - start)
        return made

    def base(self) -> dict:
        """The demo's checkpoints, by run_demo's own commands: {"pretrain": path, "sft": path} and its two
        adapters, seed 1337 (what lora_job(full_task(name)) gives, claims 7, 8 and 13 use them).
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

    def lora_job(self, task, **settings) -> tuple:
        """("train_lora.py", flags) on the demo's SFT model: `task` (full_task() or sweep_task()) and
        train_lora.py's flags as keywords, e.g. lora_rank=8, seed=1. A setting equal to train_lora.py's
        default is left out and the rest sorted, so the same configuration is the same run in every experiment."""
        return "train_lora.py", ["--base", self.base()["sft"], *task, *canonical_flags(train_lora.build_parser(), settings)]

    def full_job(self, task, **settings) -> tuple:
        """("train_full_sft.py", flags): full fine-tuning from the demo's SFT model on `task`, with
        train_lora.py's batch size, window, epochs and warm-up (the same steps on the same data) and
        the SFT stage's learning rate unless learning_rate= is given."""
        d = train_lora.build_parser().parse_args([])
        same = {"batch_size": d.batch_size, "max_seq_len": d.max_seq_len, "epochs": d.epochs, "warmup_iters": d.warmup_iters}
        flags = [part for name, value in same.items() for part in (f"--{name}", str(value))]
        return "train_full_sft.py", ["--base", self.base()["sft"], *flags, *task,
                                     *canonical_flags(train_full_sft.build_parser(), settings)]

    # ---- measuring

    def load(self, checkpoint, adapter=None):
        """(model, tokenizer) in eval mode: a checkpoint, with a LoRA or predecessor file on it if given."""
        loaded = load_checkpoint(checkpoint, device="cpu")
        if adapter is not None:
            if "method_config" in read_checkpoint(adapter):
                load_method(loaded.model, adapter)
            else:
                load_lora(loaded.model, adapter)
        return loaded.model.eval(), loaded.tokenizer

    def eval_items(self, name) -> list:
        items = eval_model.load_eval_set(ROOT / "dataset" / f"{name}.jsonl")
        return items[:6] if self.quick else items

    def score(self, checkpoint, adapter=None, sets=("eval_medical", "eval_general")) -> dict:
        """{set: accuracy}, greedy, with run_demo's evaluation settings; remembered by the files' content."""
        key = "|".join([sha256_file(checkpoint), sha256_file(adapter) if adapter else "-", *sets, str(self.quick)])
        cache_path = self.out / "scores.json"
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
        if key not in cache:
            settings = demo_eval_settings("out")
            model, tok = self.load(checkpoint, adapter)
            new_tokens = 8 if self.quick else settings.max_new_tokens
            cache[key] = {name: eval_model.evaluate_set(model, tok, self.eval_items(name), new_tokens, settings.batch_size,
                                                        model.config.max_seq_len)["accuracy"] for name in sets}
            atomic_write_text(cache_path, json.dumps(cache, indent=1) + "\n")
        return cache[key]

    @contextlib.contextmanager
    def cost(self, finding_box: list):
        """Time one experiment as if run alone from the base checkpoints: its wall time, with the
        recorded times of the runs it reused in place of the moments it took to hand them back."""
        start, reused, base = time.perf_counter(), self.reused_seconds, self.base_wall_seconds
        yield
        wall = time.perf_counter() - start - (self.base_wall_seconds - base)
        for finding in finding_box:
            finding.lab_seconds = wall
            finding.seconds = wall + (self.reused_seconds - reused)

    def figure(self, name) -> str:
        """The path to write figure `name` to (docs/figures, or out/lab/figures when quick)."""
        self.figures.mkdir(parents=True, exist_ok=True)
        return str(self.figures / name)


# ---- small helpers the experiments share


def diverged(error_line: str) -> bool:
    """Did a training script stop because its loss or gradient norm became NaN or inf (progress.Progress)?
    A sweep's largest learning rates may do that: a result (it diverges), not a failure of the lab."""
    return " became " in error_line and " by step " in error_line


def canonical_flags(parser, settings: dict) -> list:
    """['--lora_rank', '8', '--seed', '1']: the settings that differ from the parser's defaults (for
    train_lora.py, a rank of None means DEFAULT_RANK, alpha None means alpha = rank, scaling None
    means standard), as flags in a fixed order."""
    defaults = vars(parser.parse_args([]))
    rank = settings.get("lora_rank", train_lora.DEFAULT_RANK)
    implied = {"lora_rank": train_lora.DEFAULT_RANK, "lora_alpha": rank, "lora_scaling": "standard",
               "lora_targets": train_lora.DEFAULT_TARGETS}
    flags = []
    for name in sorted(settings):
        default = defaults[name] if defaults.get(name) is not None else implied.get(name)
        value = settings[name]
        same = str(value) == str(default) or (isinstance(value, (int, float)) and isinstance(default, (int, float))
                                              and float(value) == float(default))
        if not same:
            flags += [f"--{name}", str(value)]
    return flags


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def spread(values, fmt="{:.1%}") -> str:
    """'65.4% (63.5-67.3%)': the mean over seeds and the range, formatted alike."""
    values = list(values)
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(mean(values))} ({fmt.format(min(values)).rstrip('%')}-{fmt.format(max(values))})"


def table(header: list, rows: list) -> str:
    """A markdown table: first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def add_lab_args(p) -> None:
    """--out_dir, --workers and --quick: the flags of lab/run_lab.py and of every experiment run alone."""
    p.add_argument("--out_dir", default="out/lab", help="where the lab's checkpoints and runs live (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="training runs at a time, one thread each (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a tiny model and a few steps: checks the code path in seconds, "
                                                        "its numbers mean nothing (figures and report go to OUT_DIR)")


def lab_from_args(args) -> "Lab":
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    return Lab(args.out_dir, quick=args.quick, workers=args.workers)


def run_alone(module_name, run, argv=None):
    """What `python lab/<module>.py` does: measure one claim and print its section of the report
    (docs/lora_lab.md is rewritten by lab/run_lab.py only)."""
    p = argparse.ArgumentParser(description=f"The LoRA lab, one claim: lab/{module_name}.py (docs/lora_lab.md).")
    add_lab_args(p)
    print(measure(lab_from_args(p.parse_args(argv)), run).section())


def measure(lab, run) -> Finding:
    """run(lab) -> its Finding, with what it costs alone (Lab.cost)."""
    box = []
    with lab.cost(box):
        box.append(run(lab))
    return box[0]
