"""Embed and score the missing cells of one (fold, seed): each probe width's images degraded
once, every model run on the same pixels, every pair scored, each cell written as it is done."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lowres.cells import CellStore, cell_metric_rows, pair_scores, role_pairs
from lowres.data import get_test_split
from lowres.embed import embed_many, pick_device
from lowres.errors import ConfigError
from lowres.progress import Stage
from lowres.sweep.config import MAX_PAIRS, SweepConfig, template_size_of
from lowres.sweep.models import Prepared
from lowres.sweep.protocols import protocol_cell

log = logging.getLogger("lowres.sweep")

SPLIT_SEED = 0
"""Seed of the identity folds: fixed, like ``TrainConfig.split_seed``, so every training seed
holds out the same test identities and a model never sees its test faces."""


def sweep_test_split(config: SweepConfig, fold: int):
    """The held-out test identities of ``fold`` (fixed :data:`SPLIT_SEED`)."""
    kwargs: dict[str, Any] = {"fold": fold, "seed": SPLIT_SEED}
    if config.preset is not None:
        kwargs["preset"] = config.preset
    return get_test_split(config.data, **kwargs)


def protocol_pairs(test) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(idx_a, idx_b, issame, pair_folds or None) of a test set: its fixed pair list, every
    gallery image with every probe for a set with roles, or every pair i < j (all-vs-all); the
    last two up to :data:`MAX_PAIRS`."""
    labels = test.labels.numpy()
    roles = getattr(test, "roles", None)
    if roles is not None:
        idx_a, idx_b = role_pairs(roles.numpy())
        _check_pair_count(test, idx_a.size, f"{labels.size} images ({idx_a.size:,} gallery x probe")
        return idx_a, idx_b, labels[idx_a] == labels[idx_b], None
    pairs = getattr(test, "pairs", None)
    if pairs is not None:
        if pairs.idx_a is None or pairs.idx_b is None:
            raise ConfigError(
                f"dataset {test.name} has a pair list not attached to its images; reload it"
            )
        return (
            pairs.idx_a.numpy().astype(np.int64),
            pairs.idx_b.numpy().astype(np.int64),
            pairs.issame.numpy().astype(bool),
            pairs.fold.numpy().astype(np.int64),
        )
    n_pairs = labels.size * (labels.size - 1) // 2
    _check_pair_count(test, n_pairs, f"{labels.size} images ({n_pairs:,} all-vs-all")
    idx_a, idx_b = np.triu_indices(labels.size, k=1)
    return idx_a, idx_b, labels[idx_a] == labels[idx_b], None


def _check_pair_count(test, n_pairs: int, what: str) -> None:
    if n_pairs > MAX_PAIRS:
        raise ConfigError(
            f"{test.name}'s test split has {what} pairs); sweeps store every pair score and "
            f"allow at most {MAX_PAIRS:,}: use a smaller preset or a dataset with a fixed pair "
            "list"
        )


def check_pairs(test, fold: int) -> None:
    """A test split needs genuine and impostor pairs: found before any model trains."""
    issame = protocol_pairs(test)[2]
    n_gen = int(np.count_nonzero(issame))
    if n_gen == 0 or n_gen == issame.size:
        raise ConfigError(
            f"fold {fold} of {test.name} has {n_gen} genuine and {issame.size - n_gen} impostor "
            "pairs; verification needs both (at least two images of some identity, and two "
            "identities)"
        )


@dataclass
class Unit:
    """One (fold, seed) of a sweep: its test split, the models ready for it, the probe grid,
    the degradation chain, the FARs and every cell's key by (model id, scale)."""

    config: SweepConfig
    fold: int
    seed: int
    test: Any
    prepared: list[Prepared]
    grid: list[tuple[float, int]]
    chain: Any
    fars: tuple[float, ...]
    keys: dict[tuple[str, float], dict[str, Any]]
    distractors: Any = None  # FaceDataset of the distractors (lowres.sweep.distractors), or None

    def index(self, name: str, scale: float) -> tuple[str, int, int, float]:
        """The cell index of model ``name`` at ``scale`` in this unit."""
        return (name, self.fold, self.seed, scale)


@dataclass
class Counts:
    """What :func:`compute_cells` did, for the provenance."""

    cells: int = 0
    images: int = 0
    model_images: int = 0


def _embedder(unit: Unit, images: torch.Tensor, device, timings: dict[str, float]):
    """``run(models, scale)``: every model's features of ``images`` degraded to ``scale``
    (identical pixels for every model), timed into ``timings["embed"]``; NaN features fail."""
    size_of = dict(unit.grid)
    width = images.shape[-1]

    def run(models: dict[str, Prepared], scale: float):
        t0 = time.perf_counter()
        emb = embed_many(
            images,
            {n: (p.module, p.adapter) for n, p in models.items()},
            scale=scale,
            size_px=None if scale == 1.0 else size_of[scale],
            spec=unit.chain,
            batch_size=int(unit.config.batch_size),
            device=device,
            seed=unit.seed,
        )
        timings["embed"] += time.perf_counter() - t0
        for name, e in emb.items():
            bad = int((~torch.isfinite(e.features).all(dim=1)).sum())
            if bad:
                raise ConfigError(
                    f"model {name} gives NaN/inf features for {bad} of {e.features.shape[0]} "
                    f"test images at {size_of.get(scale, width)} px; check the model (an external "
                    "model's adapter normalisation, or retrain a diverged one)"
                )
        return emb

    return run


def _write_one(
    unit: Unit, store: CellStore, name: str, scale: float, gallery, probe, protocol, distractors
):
    """Score one model at one scale from its gallery and probe features and write the cell;
    returns its table rows. An identification protocol adds its search arrays and rows
    (:func:`lowres.sweep.protocols.protocol_cell`, searching the ``distractors`` features too
    when there are any); a verification cell is as it always was; a set with roles also
    stores them (its pairs are gallery x probe)."""
    idx_a, idx_b, issame, pair_folds = protocol
    t0 = time.perf_counter()
    # Metrics are computed from the float32 scores stored in the cell, the same numbers
    # pooling, the bootstrap and the ROC figure read back later.
    scores = pair_scores(
        gallery.features.float().cpu().numpy(),
        probe.features.float().cpu().numpy(),
        idx_a,
        idx_b,
    ).astype(np.float32)
    norms = probe.norms.float().cpu().numpy()
    flags = {k: v.numpy().astype(bool) for k, v in probe.flags.items()}
    clean_ref = None
    if scale != 1.0:
        clean_ref = store.clean_reference(unit.index(name, 1.0), unit.keys[(name, 1.0)])
    rows, own_ref = cell_metric_rows(
        scores.astype(np.float64),
        issame,
        norms,
        fars=unit.fars,
        clean=clean_ref,
        pair_folds=pair_folds,
        flags=flags,
    )
    fixed = pair_folds is not None
    arrays = dict(
        scores=scores,
        labels=unit.test.labels.numpy().astype(np.int64).astype(np.int32),
        norms=norms.astype(np.float32),
        pair_a=idx_a.astype(np.int32) if fixed else np.zeros(0, np.int32),
        pair_b=idx_b.astype(np.int32) if fixed else np.zeros(0, np.int32),
        issame=issame if fixed else np.zeros(0, bool),
        pair_folds=pair_folds if fixed else np.zeros(0, np.int64),
        **{f"flag_{k}": v for k, v in flags.items()},
    )
    roles = getattr(unit.test, "roles", None)
    if roles is not None:
        arrays["roles"] = roles.numpy().astype(np.uint8)
    id_arrays, id_rows = protocol_cell(
        unit.config.protocol,
        arrays["labels"],
        gallery.features,
        probe.features,
        unit.fars,
        template_size=template_size_of(unit.config),
        roles=arrays.get("roles"),
        distractors=distractors,
    )
    arrays.update(id_arrays)
    rows = rows + id_rows
    store.write(
        unit.index(name, scale),
        unit.keys[(name, scale)],
        arrays,
        rows=rows,
        clean_ref=own_ref if scale == 1.0 else clean_ref,
        seconds=time.perf_counter() - t0,
    )
    return rows


class _DistractorSide:
    """The distractors' features of a unit, embedded like the gallery side: once clean with
    ``pairing="probe"`` (on first use, for every model that needs a cell), at each scale with
    ``"both"``; nothing when the unit has no distractors."""

    def __init__(self, unit: Unit, device, timings: dict[str, float]):
        self.unit = unit
        self.clean: dict | None = None
        ds = unit.distractors
        self.n = 0 if ds is None else len(ds)
        self.run = None if ds is None else _embedder(unit, ds.images.to(device), device, timings)

    def features(self, models: dict[str, Prepared], scale: float, counts: Counts):
        """name -> Embeddings of the distractors for ``models`` at ``scale`` (None without
        distractors), counted in ``counts``."""
        if self.run is None:
            return None
        if scale == 1.0 or self.unit.config.pairing == "probe":
            clean = self.clean or {}
            models = {n: p for n, p in models.items() if n not in clean}
            scale = 1.0
        if models:
            counts.images += self.n
            counts.model_images += self.n * len(models)
            found = self.run(models, scale)
            if scale != 1.0:
                return found
            self.clean = (self.clean or {}) | found
        return self.clean


def compute_cells(
    unit: Unit,
    store: CellStore,
    missing: dict[float, list[Prepared]],
    timings: dict[str, float],
    on_cell: Callable[[dict[str, Any]], None] | None = None,
) -> Counts:
    """Embed and score every missing cell of ``unit`` (``missing``: scale -> models) into
    ``store``; the clean features are the gallery of every ``pairing="probe"`` cell and the
    clean reference. Returns the counts for the provenance."""
    config = unit.config
    device = pick_device(None if config.device == "auto" else config.device)
    protocol = protocol_pairs(unit.test)
    # Onto the device once for every scale (embed_many would copy it again for each call).
    images = unit.test.images.to(device)
    size_of = dict(unit.grid)
    need = {p.entry.name: p for ps in missing.values() for p in ps}
    total = sum(len(v) for v in missing.values())
    run = _embedder(unit, images, device, timings)
    side = _DistractorSide(unit, device, timings)
    t_start = time.perf_counter()
    where = f"fold {unit.fold} seed {unit.seed}"
    with Stage(f"{where}: cells", total, log=log, step_lines=True) as stage:
        clean = run(need, 1.0)
        counts = Counts(images=images.shape[0], model_images=images.shape[0] * len(need))
        for scale, _ in unit.grid:
            todo = missing.get(scale)
            if not todo:
                continue
            if scale == 1.0:
                emb = {p.entry.name: clean[p.entry.name] for p in todo}
            else:
                emb = run({p.entry.name: p for p in todo}, scale)
                counts.images += images.shape[0]
                counts.model_images += images.shape[0] * len(todo)
            d_emb = side.features({p.entry.name: p for p in todo}, scale, counts)
            for p in todo:
                t0 = time.perf_counter()
                name = p.entry.name
                gallery = clean[name] if config.pairing == "probe" else emb[name]
                d_feats = None if d_emb is None else d_emb[name].features
                rows = _write_one(unit, store, name, scale, gallery, emb[name], protocol, d_feats)
                timings["score"] += time.perf_counter() - t0
                counts.cells += 1
                stage.advance(
                    1,
                    f"[{counts.cells:{len(str(total))}d}/{total}] {name:<14} "
                    f"{size_of[scale]:4d} px  {where}  TAR@{unit.fars[0]:g}={rows[0]['value']:.3f}",
                )
                if on_cell is not None:
                    on_cell(unit.keys[(name, scale)])
        stage.done(f"{where}: {counts.cells} cells in {time.perf_counter() - t_start:.1f} s")
    return counts
