"""Study kind ``features2d`` (the paper's Figure 1): a 2-d embedding per model, its test
features scattered by class (the learned R as a circle for ``+R`` models), test accuracy from
the head's logits, and the features in ``features.csv``."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lowres.checkpoint import load_checkpoint
from lowres.data import get_split
from lowres.errors import ConfigError
from lowres.files import atomic_write_csv
from lowres.plots import figure_features2d
from lowres.study.schema import ModelItem, Study, StudyResult
from lowres.study.training import cache_root, train_all
from lowres.train import clean_features

FEATURE_COLUMNS = ["model", "fold", "seed", "image", "label", "f0", "f1"]


def run(study: Study, out_dir: Path, workers: int) -> StudyResult:
    """Train every (model, fold, seed), evaluate each on its fold's test split, write
    ``results.csv`` and ``features.csv`` and draw the scatter figure."""
    folds, seeds = study.evaluate["folds"], study.evaluate["seeds"]
    timings: dict[str, float] = {}
    units = [(item, fold, seed) for item in study.models for fold in folds for seed in seeds]
    jobs = [
        ((item.label, fold, seed), study.train_config(item, fold, seed).to_dict())
        for item, fold, seed in units
    ]
    t0 = time.perf_counter()
    ckpts = train_all(jobs, cache_root(study), workers)
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows, feature_rows, hashes = [], [], {}
    splits: dict[tuple, Any] = {}
    for item, fold, seed in units:
        tc = study.train_config(item, fold, seed)
        split_key = (tc.data, tc.preset, tc.split_seed, fold)
        if split_key not in splits:
            splits[split_key] = get_split(tc.data, fold=fold, seed=tc.split_seed, preset=tc.preset)
        path = ckpts[(item.label, fold, seed)]
        row, features = _evaluate(item, fold, seed, tc, splits[split_key], path)
        rows.append(row)
        feature_rows += features
        hashes[f"{item.label}|fold{fold}|seed{seed}"] = {
            "config_hash": tc.hash(),
            "checkpoint": str(path),
        }
    results = pd.DataFrame(rows)
    features = pd.DataFrame(feature_rows, columns=FEATURE_COLUMNS)
    timings["evaluate"] = time.perf_counter() - t0
    atomic_write_csv(out_dir / "results.csv", results, "%.6g")
    atomic_write_csv(out_dir / "features.csv", features, "%.6g")

    t0 = time.perf_counter()
    figures = figure_features2d(
        features,
        results,
        out_dir / "figures",
        title=study.title,
        max_points=study.evaluate["max_points"],
        seed=int(np.int64(seeds[0])),
    )
    timings["plot"] = time.perf_counter() - t0
    return StudyResult(
        out=out_dir,
        tables={"results": results, "features": features},
        figures=figures,
        timings=timings,
        summary=_features_summary(results),
        extra={"models": hashes, "split": _split_note(splits)},
    )


def _evaluate(item: ModelItem, fold: int, seed: int, tc, split, path: Path):
    """One trained model on its test split: (its results row, its feature rows)."""
    train_set, test_set = split
    loaded = load_checkpoint(path)
    dim = int(loaded.sidecar["embed_dim"])
    if dim != 2:
        raise ConfigError(
            f"{item.label}: kind features2d needs a 2-d embedding, the model has "
            f'{dim}; set embed_dim = 2 (or model = "lenetpp") in [train]'
        )
    feats = clean_features(loaded.model, test_set.images, loaded.adapter, torch.device("cpu"))
    labels = test_set.labels
    train_labels = _labels_in_train_space(train_set, test_set)
    if train_labels is None:
        # Identity-disjoint test classes: the head has no logit for them.
        accuracy, errors = math.nan, None
    else:
        with torch.no_grad():
            logits = loaded.loss(feats, train_labels).logits
        correct = (logits.argmax(1) == train_labels).double()
        accuracy, errors = float(correct.mean()), int((1 - correct).sum())
    norms = torch.linalg.vector_norm(feats.double(), dim=1)
    stats = {k: float(v) for k, v in loaded.loss.stats().items()}
    metrics = loaded.sidecar.get("metrics", {})
    row = {
        "model": item.label,
        "method": item.method,
        "dataset": test_set.name,
        "fold": fold,
        "seed": seed,
        "n_train": int(train_set.images.shape[0]),
        "n_test": int(labels.numel()),
        "epochs": int(loaded.sidecar.get("epochs", 0)),
        "test_accuracy": accuracy,
        "test_errors": errors,
        "train_accuracy": metrics.get("train_clean_acc"),
        "R": stats.get("R", math.nan),
        "norm_mean": float(norms.mean()),
        "norm_std": float(norms.std(unbiased=False)),
        "norm_cv": float(norms.std(unbiased=False) / norms.mean()),
        "train_seconds": metrics.get("wall_seconds"),
        "config_hash": tc.hash(),
    }
    f = feats.double().numpy()
    features = [
        (item.label, fold, seed, i, int(labels[i]), f[i, 0], f[i, 1]) for i in range(f.shape[0])
    ]
    return row, features


def _labels_in_train_space(train_set, test_set):
    """Test labels as indices of the training classes (the head's logits), or None when a test
    class was never trained (identity-disjoint splits: classification accuracy is undefined)."""
    index = {name: i for i, name in enumerate(train_set.identities)}
    if any(name not in index for name in test_set.identities):
        return None
    mapping = torch.tensor([index[name] for name in test_set.identities], dtype=torch.int64)
    return mapping[test_set.labels]


def _split_note(splits: dict) -> list[dict]:
    notes = []
    for (data, preset, split_seed, fold), (train, test) in splits.items():
        proto = (train.meta or {}).get("protocol", {}) or {}
        notes.append(
            {
                "data": data,
                "preset": preset,
                "split_seed": split_seed,
                "fold": fold,
                "protocol": proto.get("type", ""),
                "train_images": int(train.images.shape[0]),
                "test_images": int(test.images.shape[0]),
                "classes": int(test.num_identities),
            }
        )
    return notes


def _features_summary(results) -> str:
    grouped = results.groupby("model", sort=False).agg(
        test_accuracy=("test_accuracy", "mean"),
        R=("R", "mean"),
        norm_mean=("norm_mean", "mean"),
        norm_cv=("norm_cv", "mean"),
        n_test=("n_test", "sum"),
    )
    return "test accuracy (head logits), feature norms on test images\n" + grouped.to_string(
        float_format=lambda v: f"{v:.4f}", na_rep="-"
    )
