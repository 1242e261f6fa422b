"""The training side of a sweep: every trained model's per-epoch log in one table.

``training.csv`` in a sweep folder has one row per (model, fold, seed, epoch), copied from the
``log.csv`` of each model the sweep trained or loaded (loss, training accuracy, lr, seconds and,
where the model held out validation identities, ``val_tar`` / ``val_auc``). The ``training``
figure draws it, so a reader sees whether each model had stopped improving before it was
measured. External models and the raw-pixel reference have no log.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from lowres.files import atomic_write_csv

TRAINING_FILE = "training.csv"
KEYS = ("model", "method", "fold", "seed", "epoch")


def read_model_log(folder: str | os.PathLike) -> pd.DataFrame | None:
    """A checkpoint folder's ``log.csv`` (None when the folder has none or it is unreadable:
    the log is a record, the weights do not depend on it)."""
    path = Path(folder) / "log.csv"
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
        return None
    return frame if "epoch" in frame.columns and not frame.empty else None


def training_frame(items: Iterable[tuple[str, str, int, int, str | os.PathLike]]) -> pd.DataFrame:
    """Rows of every ``(model, method, fold, seed, checkpoint_folder)`` log, sorted by
    model, fold, seed and epoch (columns: :data:`KEYS`, then the log's own)."""
    parts = []
    for model, method, fold, seed, folder in items:
        log = read_model_log(folder)
        if log is None:
            continue
        log = log.drop(columns=[c for c in KEYS if c != "epoch" and c in log.columns])
        for i, (key, value) in enumerate(zip(KEYS[:4], (model, method, fold, seed), strict=True)):
            log.insert(i, key, value)
        parts.append(log)
    if not parts:
        return pd.DataFrame(columns=list(KEYS))
    frame = pd.concat(parts, ignore_index=True)
    return frame.sort_values(list(KEYS), kind="stable").reset_index(drop=True)


def merge_training(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Shards' training tables as one (a model trained by two shards appears once)."""
    parts = [f for f in frames if f is not None and not f.empty]
    if not parts:
        return pd.DataFrame(columns=list(KEYS))
    frame = pd.concat(parts, ignore_index=True).drop_duplicates(list(KEYS), keep="first")
    return frame.sort_values(list(KEYS), kind="stable").reset_index(drop=True)


def write_training(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``frame`` atomically (floats as repr: the logs' own digits); an empty frame
    removes a stale file instead."""
    path = Path(path)
    if frame.empty:
        path.unlink(missing_ok=True)
        return
    atomic_write_csv(path, frame, None)


def read_training(path: str | os.PathLike) -> pd.DataFrame | None:
    """``training.csv`` of a sweep folder, None when absent or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    if any(k not in frame.columns for k in KEYS):
        return None
    return frame
