"""The model cache: a finished model per (config hash, training images) under
``<cache>/<model key>/``, trained once under a lock and renamed into place when complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from lowres.checkpoint import (
    verify_weights,
)
from lowres.embed import pick_device
from lowres.errors import CheckpointError, ConfigError
from lowres.files import atomic_write_json
from lowres.processes import file_lock
from lowres.train.config import TrainConfig
from lowres.train.data import load_split
from lowres.train.loop import train

log = logging.getLogger("lowres.train")


CACHE_MARKER = "lowres-cache.json"
"""File that marks a finished model in a model cache folder (``<cache>/<model key>/``)."""


def model_key(config: TrainConfig) -> str:
    """The name of ``config``'s trained model in the model cache and in sweep cells: a 16-hex
    digest of :meth:`TrainConfig.hash` and the training split's content digest.

    Keyed by content, not by the dataset's name: new pixels behind the same manifest train a
    new model instead of reusing the one trained on the old images.
    """
    train_set, _ = load_split(config)
    text = f"{config.hash()}:{train_set.content_digest()}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cached_model(folder: Path, config_hash: str) -> Path | None:
    """The checkpoint of a finished cache entry, or None when ``folder`` holds none.

    Args:
        folder: ``<cache>/<model key>``.
        config_hash: :meth:`TrainConfig.hash` of the model the entry must hold.

    Raises:
        CheckpointError: the entry exists but is damaged or foreign (unreadable marker, missing
            or altered weights, another model's checkpoint); the message says what is wrong.
    """
    marker = folder / CACHE_MARKER
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        rel = info["checkpoint"]
        if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise TypeError(rel)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"its marker {marker.name} is unreadable") from None
    sidecar, _ = verify_weights(folder / rel)
    if info.get("hash") != folder.name or sidecar.get("config_hash") != config_hash:
        raise CheckpointError("it holds another model's checkpoint")
    return folder / rel


def train_cached(
    config: TrainConfig, cache: str | os.PathLike, *, progress: bool | str = True
) -> Path:
    """Checkpoint folder of ``config``: from ``cache/<model_key(config)>/``, or trained now.

    Training runs in ``<key>.partial`` (resumed there after an interruption) and the folder is
    renamed to ``<key>`` only once training finished, so a cache hit is always a complete
    model. A damaged entry (or a damaged partial run) is said so and retrained, never a dead
    end. Each entry has a lock (``<key>.lock``): concurrent sweeps or shards sharing the cache
    train a model once, the others wait and reuse it. If the disk fills or another file error
    stops training, the partial folder is removed. On CPU training uses one torch thread,
    whether it runs in-process or in one of several parallel workers: float reductions then run
    in one order, so a cached model's weights depend on its config and data alone, never on how
    many jobs trained it.
    """

    cache = Path(cache)
    key = model_key(config)
    final = cache / key
    lock = cache / f"{key}.lock"
    with file_lock(lock, f"model cache entry {final} ({config.method})"):
        try:
            found = cached_model(final, config.hash())
        except CheckpointError as exc:
            log.warning("model cache entry %s is damaged (%s); retraining it", final, exc)
            shutil.rmtree(final)
            found = None
        if found is not None:
            return found
        partial = cache / f"{key}.partial"
        log.info(
            "training %s (fold %d, seed %d) -> %s", config.method, config.fold, config.seed, final
        )
        if pick_device(None if config.device == "auto" else config.device).type == "cpu":
            config = dataclasses.replace(config, num_threads=1)
        try:
            try:
                ckpt = Path(train(config, partial, resume=True, progress=progress))
            except (CheckpointError, ConfigError) as exc:
                if not partial.exists() or not any(partial.iterdir()):
                    raise
                log.warning("discarding the damaged partial run %s (%s); restarting", partial, exc)
                shutil.rmtree(partial)
                ckpt = Path(train(config, partial, resume=True, progress=progress))
            rel = ckpt.resolve().relative_to(partial.resolve())
            atomic_write_json(
                partial / CACHE_MARKER,
                {"checkpoint": str(rel), "config": dataclasses.asdict(config), "hash": key},
            )
        except OSError:
            # A full disk: nothing of this entry stays, its lock file included (a process
            # waiting on it would then lock a removed file; it fails on the same disk anyway).
            shutil.rmtree(partial, ignore_errors=True)
            lock.unlink(missing_ok=True)
            raise
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        return final / rel
