"""The models a study needs, trained (or found) through the shared model cache, several at a
time in worker processes: the layout the sweep uses, so a study and a sweep share models."""

from __future__ import annotations

import os
from pathlib import Path

from lowres.processes import run_parallel
from lowres.study.schema import Study
from lowres.sweep.config import resolve_model_cache
from lowres.train import TrainConfig, train_cached


def cache_root(study: Study) -> Path:
    """The model cache of ``study`` (its ``model_cache`` or the default)."""
    return resolve_model_cache(study.model_cache)


def cached_train(config_dict: dict, cache: str | os.PathLike) -> str:
    """:func:`lowres.train.train_cached` from plain values, so it can run in a worker process."""
    return str(train_cached(TrainConfig.from_dict(config_dict), cache))


def train_all(jobs: list[tuple[object, dict]], cache: Path, workers: int) -> dict:
    """Train (or find) every (key, TrainConfig dict); ``workers`` > 1 trains in parallel
    processes with one torch thread each (two 1-thread jobs beat one 2-thread job on CPU).
    Returns key -> checkpoint folder."""
    if workers <= 1 or len(jobs) <= 1:
        return {key: Path(cached_train(cfg, cache)) for key, cfg in jobs}
    paths = run_parallel(cached_train, [(cfg, str(cache)) for _, cfg in jobs], workers)
    return {key: Path(path) for (key, _), path in zip(jobs, paths, strict=True)}
