"""What a run reports: the per-epoch sums and rows of ``log.csv``, and its progress on stderr."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import torch

from lowres.checkpoint import (
    atomic_write_text,
)
from lowres.errors import TrainingError
from lowres.progress import Stage, say
from lowres.train.data import VAL_FAR

LOG_FILE = "log.csv"


class Progress:
    """A training run's progress (:mod:`lowres.progress`): one stage per epoch. On a terminal a
    bar over the epoch's steps (loss, accuracy and images per second after it) that becomes the
    epoch's line when the epoch ends; elsewhere (a CI log) the epoch's line only.

    Args:
        mode: True (bar and lines), ``"lines"`` (the epoch lines only, each prefixed by
            ``name``: trainings running in parallel share one stderr), False (nothing).
        epochs, steps: the run's epochs and steps per epoch.
        name: what the ``"lines"`` prefix names (method, fold, seed).
    """

    def __init__(self, mode: bool | str, epochs: int, steps: int, name: str = "") -> None:
        self.mode = mode
        self.epochs, self.steps = epochs, steps
        self.prefix = f"{name}: " if mode == "lines" and name else ""
        self.stage: Stage | None = None
        self.step = 0

    def update(self, epoch: int, step: int, loss: float, acc: float, rate: float) -> None:
        """Step ``step`` (1-based) of ``epoch`` is done, with the epoch's running figures."""
        if self.mode is not True:
            return
        if self.stage is None:
            self.stage = Stage(f"epoch {epoch}/{self.epochs}", self.steps).__enter__()
            self.step = 0
        # The running figures reach the host every SYNC_EVERY steps; none yet: steps only.
        info = f"loss {loss:.3f} acc {acc:.3f} {rate:.0f} img/s" if rate > 0 else None
        self.stage.advance(step - self.step, info)
        self.step = step

    def epoch_done(self, row: dict) -> None:
        """The epoch's line (its log row): replaces the bar on a terminal."""
        text = (
            f"epoch {row['epoch']}/{self.epochs} loss {row['loss']:.4f} "
            f"acc {row['train_acc']:.3f} |f| {row['norm_mean']:.2f}+-{row['norm_std']:.2f} "
            f"lr {row['lr']:.3g} {row['seconds']:.1f}s"
        )
        if "val_tar" in row:
            text += f" val TAR@{VAL_FAR:g} {row['val_tar']:.3f}"
        if self.stage is not None:
            self.stage.done(text)
            self.stage = None
        elif self.mode:
            say(self.prefix + text)

    def close(self) -> None:
        """End a bar left open (training stopped inside an epoch)."""
        if self.stage is not None:
            self.stage.__exit__(None, None, None)
            self.stage = None


def write_log(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    return value


SYNC_EVERY = 50
"""Steps between reads of the logging sums from the device (and at the end of every epoch and
before every checkpoint): a NaN loss is noticed at most this many steps late."""


class PendingSums:
    """Per-step logging sums kept on the training device and read to the host every
    :data:`SYNC_EVERY` steps, so the steady-state step never waits for the device.

    Each step's vector is ``[loss sum, part sums (sorted names), correct, images, norm sum,
    norm sum of squares]`` in float64 (all-reduced under DDP). :meth:`flush` adds them to an
    :class:`EpochStats` in step order, with the same float64 additions as reading every step,
    so ``log.csv`` is bit-identical to reading each step at once.
    """

    def __init__(self, keys: list[str] | None = None) -> None:
        self.keys = keys
        self.values: list[torch.Tensor] = []
        self.where: list[tuple[int, int]] = []

    def add(self, values: torch.Tensor, keys: list[str], epoch: int, iteration: int) -> bool:
        """Keep one step's vector (``epoch``, ``iteration``: 1-based, for the error); True when
        it is time to :meth:`flush`."""
        self.keys = keys
        self.values.append(values)
        self.where.append((epoch, iteration))
        return len(self.values) >= SYNC_EVERY

    def flush(self, stats: EpochStats, last_good: str, lr: float) -> None:
        """Read the kept steps (one device sync), check each loss, add them to ``stats``.

        Raises:
            TrainingError: a step's loss is not finite (named by epoch and iteration, with how
                late it was noticed and where the last good checkpoint is).
        """
        if not self.values:
            return
        rows = torch.stack(self.values).cpu().tolist()
        steps, keys = list(self.where), list(self.keys or [])
        self.values.clear()
        self.where.clear()
        for (epoch, iteration), row in zip(steps, rows, strict=True):
            loss_sum, parts = row[0], row[1 : 1 + len(keys)]
            correct, count, norm_sum, norm_sq = row[1 + len(keys) :]
            if not math.isfinite(loss_sum / count):
                late = steps[-1][1] - iteration
                raise TrainingError(
                    f"loss became {loss_sum / count} at epoch {epoch} iter {iteration} "
                    f"(noticed {late} steps later); last good checkpoint kept at {last_good}; "
                    f"lower --lr (now {lr:g}), set grad_clip, or use another --seed"
                )
            stats.add(
                loss_sum, dict(zip(keys, parts, strict=True)), int(correct), int(count),
                norm_sum, norm_sq,
            )  # fmt: skip


class EpochStats:
    """Running sums of one epoch (float64 on the host; restorable from the state)."""

    def __init__(self, values: dict | None = None) -> None:
        values = values or {}
        self.loss = float(values.get("loss", 0.0))
        self.parts: dict[str, float] = dict(values.get("parts", {}))
        self.correct = int(values.get("correct", 0))
        self.count = int(values.get("count", 0))
        self.norm_sum = float(values.get("norm_sum", 0.0))
        self.norm_sq = float(values.get("norm_sq", 0.0))
        self.seconds = float(values.get("seconds", 0.0))
        self.steps = int(values.get("steps", 0))

    def add(
        self,
        loss_sum: float,
        part_sums: dict[str, float],
        correct: int,
        count: int,
        norm_sum: float,
        norm_sq: float,
    ) -> None:
        """Add one step's sums over its (global) batch: loss and parts times images, correct
        predictions, images, and the sum and sum of squares of feature norms."""
        self.loss += loss_sum
        for key, value in part_sums.items():
            self.parts[key] = self.parts.get(key, 0.0) + value
        self.correct += correct
        self.count += count
        self.norm_sum += norm_sum
        self.norm_sq += norm_sq
        self.steps += 1

    def to_dict(self) -> dict:
        return {
            "loss": self.loss,
            "parts": dict(self.parts),
            "correct": self.correct,
            "count": self.count,
            "norm_sum": self.norm_sum,
            "norm_sq": self.norm_sq,
            "seconds": self.seconds,
            "steps": self.steps,
        }

    def row(self, epoch: int, iteration: int, lr: float, stats: dict) -> dict:
        n = max(1, self.count)
        mean = self.norm_sum / n
        var = max(0.0, self.norm_sq / n - mean * mean)
        row: dict[str, Any] = {"epoch": epoch, "iter": iteration, "loss": self.loss / n}
        for key in sorted(self.parts):
            row[f"loss_{key}"] = self.parts[key] / n
        row.update(
            train_acc=self.correct / n,
            norm_mean=mean,
            norm_std=math.sqrt(var),
            R=float(stats.get("R", float("nan"))),
            lambda_sf=float(stats.get("lambda_sf", float("nan"))),
            lr=lr,
            seconds=self.seconds,
            img_per_s=self.count / self.seconds if self.seconds > 0 else float("nan"),
        )
        return row
