"""Progress: a bar for people, a JSONL log for programs, the NaN/inf guard, and the loss curves.

    progress = Progress("out/pretrain_128_metrics.jsonl", total_steps, start_step, rt)
    progress.add(loss, aux_loss, tokens)        # every micro-batch, no GPU sync
    progress.step(grad_norm)                    # every optimizer step
    progress.log(step, epoch, lr)               # every --log_interval steps: one sync, one JSON line
    progress.log_validation(step, {"val_loss": ...})
    progress.check_finite(step)                 # before every save
    progress.close("out/pretrain_128_loss.svg", title)
"""
import json
import math
import os
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from plumbing.atomic import WriteError, atomic_write_text
from plumbing.errors import UserError
from plot import line_chart


class Progress:
    """Collects losses on the device and reads them only at log and save steps.

    Calling loss.item() every micro-step would make the CPU wait for the GPU each time; instead the
    losses are summed as tensors and read once per --log_interval. A NaN or inf loss (or gradient
    norm) is caught at the next read, and always before a checkpoint is written, so the last good
    checkpoint is never overwritten with broken weights.

    The metrics JSONL gets one line per log step, {"step", "epoch", "loss", "lr", "grad_norm",
    "tokens_per_s", "time"} (+ "aux_loss" for a mixture-of-experts model: "loss" is the task's loss
    alone, the load-balancing loss beside it), and one per validation, {"step", "val_loss", "time"}.
    """

    def __init__(self, metrics_path, total_steps, start_step, rt, resume=False, overflow_skips=False, moe=False):
        self.metrics_path, self.rt, self.moe = metrics_path, rt, moe
        # With float16 loss scaling an overflowing step is skipped by the scaler: no failure.
        self.overflow_skips = overflow_skips
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not rt.is_main, unit="step", dynamic_ncols=True)
        # A fresh run starts a fresh log; a resumed one keeps the lines up to its checkpoint.
        kept = [r for r in read_metrics(metrics_path) if r["step"] <= start_step] if resume else []
        self.last_loss = next((r["loss"] for r in reversed(kept) if "loss" in r), None)
        self.last_val_loss = next((r["val_loss"] for r in reversed(kept) if "val_loss" in r), None)
        if rt.is_main:
            atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        self._reset()

    def _reset(self):
        self.loss_sum = torch.zeros((), device=self.rt.device)
        self.aux_loss_sum = torch.zeros((), device=self.rt.device)
        self.grad_norm_sum = torch.zeros((), device=self.rt.device)
        self.micro_steps = self.steps = self.tokens = 0
        self.since = time.perf_counter()

    def add(self, loss, aux_loss, tokens):
        """One micro-batch's (detached) task loss, MoE load-balancing loss (0 for a dense model) and
        number of tokens. No GPU sync."""
        self.loss_sum += loss
        self.aux_loss_sum += aux_loss
        self.micro_steps += 1
        self.tokens += tokens

    def step(self, grad_norm):
        """One optimizer step done, with its (pre-clipping) gradient norm. No GPU sync."""
        if self.overflow_skips:
            grad_norm = torch.nan_to_num(grad_norm, nan=0.0, posinf=0.0)
        self.grad_norm_sum += grad_norm
        self.steps += 1
        self.bar.update(1)

    def _sums(self):
        """(loss sum, grad-norm sum, aux-loss sum) over all ranks: one sync, and every rank reaches the same verdict."""
        sums = torch.stack([self.loss_sum, self.grad_norm_sum, self.aux_loss_sum]).float()
        if self.rt.ddp:
            dist.all_reduce(sums)
        return sums.tolist()

    def check_finite(self, step, sums=None):
        """Raise UserError if any loss or gradient norm since the last log line was NaN or inf."""
        loss_sum, grad_norm_sum, aux_loss_sum = sums or self._sums()
        loss_sum += aux_loss_sum  # the loss that was trained on
        if not (math.isfinite(loss_sum) and math.isfinite(grad_norm_sum)):
            what = "loss" if not math.isfinite(loss_sum) else "gradient norm"
            raise UserError(f"the {what} became {loss_sum if what == 'loss' else grad_norm_sum} by step {step}; "
                            "stopped without saving, so the last good checkpoint is kept. Lower --learning_rate "
                            "(or --grad_clip) and continue from it with --resume")

    def _write(self, record):
        if self.rt.is_main:
            try:
                with open(self.metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:  # a full disk: stop with one line; the checkpoints are written atomically
                raise WriteError(f"cannot write {self.metrics_path}: {e.strerror or e}; the last checkpoint "
                                 "is intact, continue with --resume once there is room", e) from None

    def log(self, step, epoch, lr):
        """Read the sums (one sync), check them, write a metrics line and refresh the bar."""
        loss_sum, grad_norm_sum, aux_loss_sum = sums = self._sums()
        self.check_finite(step, sums)
        seconds = time.perf_counter() - self.since
        record = {
            "step": step,
            "epoch": epoch,
            "loss": loss_sum / self.rt.world_size / max(1, self.micro_steps),  # mean over micro-batches and ranks
            "lr": lr,
            "grad_norm": grad_norm_sum / self.rt.world_size / max(1, self.steps),
            "tokens_per_s": self.tokens * self.rt.world_size / max(seconds, 1e-9),
            "time": round(time.time(), 3),
        }
        if self.moe:
            record["aux_loss"] = aux_loss_sum / self.rt.world_size / max(1, self.micro_steps)
        self.last_loss = record["loss"]
        self._write(record)
        self._show()
        self._reset()
        return record

    def log_validation(self, step, losses: dict):
        """Write a validation line ({"step", "val_loss"[, "val_also_loss"], "time"}) and show the
        held-out loss beside the training loss on the bar."""
        self.last_val_loss = losses.get("val_loss")
        self._write({"step": step, **losses, "time": round(time.time(), 3)})
        self._show()

    def _show(self):
        if self.rt.is_main:
            shown = {"loss": self.last_loss, "val": self.last_val_loss}
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items() if v is not None})

    def summary(self) -> str:
        """'final loss 0.0512, validation loss 0.0634': the run's last values, for its closing line."""
        text = f"final loss {self.last_loss:.4f}"
        return text + (f", validation loss {self.last_val_loss:.4f}" if self.last_val_loss is not None else "")

    def close(self, svg_path, title):
        """Close the bar and draw the loss curves of the whole run (resumed parts included)."""
        self.bar.close()
        if self.rt.is_main:
            write_loss_svg(read_metrics(self.metrics_path), svg_path, title)


def read_metrics(path) -> list:
    """The records of a metrics JSONL file ([] if there is none). A last line cut short by a kill
    in mid-write is skipped."""
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def write_loss_svg(records, path, title):
    """Training and validation loss against the optimizer step, from a run's metrics records, as one SVG."""
    series = {"training": [(r["step"], r["loss"]) for r in records if "loss" in r]}
    for key, name in (("val_loss", "validation"), ("val_also_loss", "validation (--val_also)")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            series[name] = points
    line_chart(series, path, title, x_label="optimizer step", y_label="loss")
