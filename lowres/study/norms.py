"""Study kind ``norms``: beside the sweep's per-image norms, the angular spread of each
person's features (the angle between an image's feature at each probe width and the direction
of its identity's *other* clean images) against the norm: ``angles.csv``, ``norm_angle.csv``."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from lowres.checkpoint import load_checkpoint
from lowres.degrade import DEFAULT, parse_degrade
from lowres.embed import embed_many, pick_device
from lowres.sweep import probe_grid, resolve_models, sweep_test_split, trained_checkpoint

ANGLE_COLUMNS = [
    *("model", "method", "fold", "seed", "scale", "size_px"),
    *("image", "label", "norm", "norm_rel", "angle_deg"),
]


def angle_to_identity(clean, probe, labels):
    """Angle (degrees) between each probe feature and its identity's other clean images.

    The identity direction of image i is the sum of the unit clean features of the *other*
    images of its identity (leave-one-out), so an image is never compared with its own clean
    version. Images whose identity has no other image get NaN.

    Args:
        clean: float (N, D) clean-image features.
        probe: float (N, D) features of the same images, degraded.
        labels: int (N,) identity labels.

    Returns:
        float64 numpy (N,) angles in degrees.
    """
    clean = np.asarray(clean, dtype=np.float64)
    probe = np.asarray(probe, dtype=np.float64)
    labels = np.asarray(labels)
    unit = clean / np.maximum(np.linalg.norm(clean, axis=1, keepdims=True), 1e-12)
    _, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((inverse.max() + 1, clean.shape[1]))
    np.add.at(sums, inverse, unit)
    counts = np.bincount(inverse)
    direction = sums[inverse] - unit
    pnorm = np.linalg.norm(probe, axis=1)
    dnorm = np.linalg.norm(direction, axis=1)
    cos = (probe * direction).sum(1) / np.maximum(pnorm * dnorm, 1e-12)
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    angle[(counts[inverse] < 2) | (dnorm < 1e-9)] = np.nan
    return angle


def norm_angle_tables(config):
    """Per-image (norm, angle to identity) for every trained model, fold, seed and scale of a
    sweep config, from the cached models (the sweep trained them).

    Returns:
        (angles, per_scale): tidy DataFrames. ``angles``: model, method, fold, seed, scale,
        size_px, image, label, norm, norm_rel (norm / the model's mean clean norm on that fold),
        angle_deg. ``per_scale``: per model x scale: mean and quartiles of norm_rel and of the
        angle, and the Spearman correlation of norm and angle within the scale.
    """
    spec = DEFAULT if config.degrade is None else parse_degrade(config.degrade)
    device = pick_device(None if config.device == "auto" else config.device)
    entries = resolve_models(config.models, config.variants)
    methods = {e.name: e.method for e in entries}
    rows = []
    for fold in config.folds:
        test = sweep_test_split(config, fold)
        grid = probe_grid(config, test.image_size[1])
        labels = test.labels.numpy()
        for seed in config.seeds:
            models = {}
            for entry in entries:
                loaded = load_checkpoint(trained_checkpoint(entry, config, fold, seed))
                models[entry.name] = (loaded.model, loaded.adapter)
            clean = None
            for scale, size in grid:
                emb = embed_many(
                    test.images,
                    models,
                    scale=scale,
                    size_px=None if scale == 1.0 else size,
                    spec=spec,
                    batch_size=int(config.batch_size),
                    device=device,
                    seed=seed,
                )
                if clean is None:
                    clean = {k: v.features.float().cpu().numpy() for k, v in emb.items()}
                for name, e in emb.items():
                    head = (name, methods[name], fold, seed, scale, size)
                    rows += _angle_rows(head, clean[name], e, labels)
    angles = pd.DataFrame(rows, columns=ANGLE_COLUMNS)
    return angles, _per_scale(angles)


def _angle_rows(head: tuple, clean: np.ndarray, emb, labels: np.ndarray) -> list[tuple]:
    """One model's rows at one width: ``head`` + (image, label, norm, norm_rel, angle)."""
    feats = emb.features.float().cpu().numpy()
    norms = torch.as_tensor(emb.norms).double().cpu().numpy()
    clean_mean = float(np.linalg.norm(clean, axis=1).mean())
    angle = angle_to_identity(clean, feats, labels)
    return [
        (
            *head,
            i,
            int(labels[i]),
            norms[i],
            norms[i] / clean_mean if clean_mean > 0 else math.nan,
            angle[i],
        )
        for i in range(len(labels))
    ]


def _per_scale(angles: pd.DataFrame) -> pd.DataFrame:
    """Per model x width: norm_rel and angle means and quartiles, and the Spearman correlation
    of norm and angle within the width."""
    per_scale = []
    for (model, scale, size), g in angles.groupby(["model", "scale", "size_px"], sort=True):
        ok = g.dropna(subset=["angle_deg"])
        rho = (
            float(ok["norm"].rank().corr(ok["angle_deg"].rank()))
            if len(ok) > 2 and ok["norm"].nunique() > 1
            else math.nan
        )
        per_scale.append(
            {
                "model": model,
                "method": g["method"].iloc[0],
                "scale": scale,
                "size_px": size,
                "n_images": len(g),
                "norm_rel_mean": g["norm_rel"].mean(),
                "norm_rel_q25": g["norm_rel"].quantile(0.25),
                "norm_rel_q75": g["norm_rel"].quantile(0.75),
                "angle_mean": ok["angle_deg"].mean(),
                "angle_q25": ok["angle_deg"].quantile(0.25),
                "angle_q75": ok["angle_deg"].quantile(0.75),
                "spearman_norm_angle": rho,
            }
        )
    frame = pd.DataFrame(per_scale).sort_values(["model", "scale"], ascending=[True, False])
    return frame.reset_index(drop=True)


def norm_angle_summary(per_scale) -> str:
    """The norms study's terminal summary: mean relative norm and mean angle per width."""
    wide = per_scale.pivot_table(index="model", columns="size_px", values="norm_rel_mean")
    wide = wide[sorted(wide.columns, reverse=True)]
    wide.columns = [f"{int(c)}px" for c in wide.columns]
    ang = per_scale.pivot_table(index="model", columns="size_px", values="angle_mean")
    ang = ang[sorted(ang.columns, reverse=True)]
    ang.columns = [f"{int(c)}px" for c in ang.columns]
    fmt = {"float_format": lambda v: f"{v:.2f}", "na_rep": "-"}
    return (
        "mean feature norm / clean mean norm, by probe face width\n"
        + wide.to_string(**fmt)
        + "\n\nmean angle to the identity's other clean images (degrees)\n"
        + ang.to_string(float_format=lambda v: f"{v:.1f}", na_rep="-")
    )
