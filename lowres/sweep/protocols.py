"""The identification protocols of a sweep (``SweepConfig.protocol``): who is gallery and who
is probe, the per-cell search arrays and rows, and the assembled rows and CMC table.

* ``verification`` (default): nothing here runs; cells and tables are the verification ones.
* ``identification`` (closed set): per test identity the first image (in index order) is the
  gallery; every other image of that identity is a probe. Each probe searches the gallery
  (:func:`lowres.identification.closed_set_search`, pessimistic ties: rank = 1 + #other
  identities scoring >= the true one). Rows ``rank1``, ``rank5``, ``rank10`` (a rank k only
  when the gallery has more than k identities) with Clopper-Pearson intervals; ``n_genuine`` =
  probes, ``n_impostor`` empty. ``cmc.csv`` holds the CMC curves; ``ring_margin_rank1`` rows
  hold rank-1 of ``X+R`` minus rank-1 of ``X`` with a paired bootstrap over identities.
* ``open-set``: the test identities are split by :data:`OPEN_SET_SEED` into enrolled (half,
  rounded down, at least one) and non-enrolled; an enrolled identity's first image is the
  gallery and its other images are mated probes, every image of a non-enrolled identity is a
  non-mated probe. Rows ``tpir`` per FPIR target (the sweep's FARs, in the ``far`` column) with
  Clopper-Pearson interval, threshold and achieved FPIR (``far_achieved``); ``n_genuine`` =
  mated, ``n_impostor`` = non-mated searches.

With several folds, the rows are also pooled (``fold = -1``): every fold's probes, each
searched in its own fold's gallery, counted together; the rank-1 margins and ``cmc.csv`` are
read at that level (one fold's, or the pooled one).

The gallery holds the clean features with ``pairing="probe"`` (the degraded ones with
``"both"``); probes are degraded. Verification rows are computed for every protocol as before.

Sets with fixed roles (``FaceDataset.roles``: TinyFace's Gallery_Match / Probe folders, SCface's
mugshots / surveillance cameras) keep them: the gallery is every role-gallery image (an
identity with several scores its best, :mod:`lowres.identification`), the probes are the
role-probe images; open-set enrols half the identities as above, and the role-probe images of
the others are the non-mated probes.

Distractors (``lowres sweep --distractors``, :mod:`lowres.sweep.distractors`): features of
people in no gallery, embedded like the gallery side, join every search as candidates that are
nobody's mate, each image its own candidate (the rule of TinyFace's evaluation); such cells
also hold ``id_distractors`` (their count). Without distractors the cells are as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lowres.cells import CellStore
from lowres.data.dataset import GALLERY, PROBE
from lowres.errors import ConfigError, DataError
from lowres.identification import (
    bootstrap_rank_k,
    closed_set_search,
    cmc,
    open_set_search,
    rank_k_accuracy,
    tpir_at_fpir,
)
from lowres.results import POOLED, make_row, stamp_rows

PROTOCOLS = ("verification", "identification", "open-set")

RANKS = (1, 5, 10)
"""The rank-k rows of ``identification`` (k only when the gallery has more than k identities)."""

OPEN_SET_SEED = 0
"""Seed of the enrolled / non-enrolled split of ``open-set`` (fixed: every model, seed and width
sees the same split)."""

CMC_COLUMNS = ("model", "method", "seed", "scale", "size_px", "rank", "rate")


@dataclass(frozen=True)
class ProtocolSets:
    """Image indices of one test split under a protocol."""

    gallery: np.ndarray
    probes: np.ndarray  # mated probes
    nonmated: np.ndarray  # empty for identification


def check_protocol_name(protocol: str) -> None:
    """ConfigError for a protocol that is not one of :data:`PROTOCOLS`."""
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}; e.g. --protocol "
            "identification"
        )


def protocol_sets(
    labels: np.ndarray, protocol: str, roles: np.ndarray | None = None
) -> ProtocolSets:
    """Gallery, mated and non-mated probe indices of a split (module docstring for the rules);
    ``roles``: the split's fixed gallery/probe roles, if it has them."""
    labels = np.asarray(labels, dtype=np.int64)
    ids, first = np.unique(labels, return_index=True)
    if protocol == "open-set":
        order = np.random.Generator(np.random.PCG64(OPEN_SET_SEED)).permutation(ids.size)
        enrolled = np.sort(ids[order[: max(1, ids.size // 2)]])
    else:
        enrolled = ids
    if roles is not None:
        return role_sets(labels, np.asarray(roles), enrolled)
    gallery = np.sort(first[np.isin(ids, enrolled)])
    is_gallery = np.zeros(labels.size, bool)
    is_gallery[gallery] = True
    in_enrolled = np.isin(labels, enrolled)
    probes = np.flatnonzero(in_enrolled & ~is_gallery)
    nonmated = np.flatnonzero(~in_enrolled)
    return ProtocolSets(gallery, probes, nonmated)


def check_protocol(test, fold: int, protocol: str) -> None:
    """DataError when ``test`` cannot hold ``protocol``: found before any model trains."""
    if protocol == "verification":
        return
    labels = test.labels.numpy().astype(np.int64)
    ids, counts = np.unique(labels, return_counts=True)
    if ids.size < 2:
        raise DataError(
            f"fold {fold} of {test.name} has {ids.size} identity; {protocol} needs at least two "
            "(use a larger preset or --protocol verification)"
        )
    if getattr(test, "roles", None) is not None:
        return check_role_protocol(test, fold, protocol)
    if protocol == "identification" and (counts < 2).any():
        bad = int(ids[np.argmax(counts < 2)])
        raise DataError(
            f"identity {bad} of fold {fold} of {test.name} has a single image, so no probe "
            f"besides its gallery image ({int((counts < 2).sum())} such identities); closed-set "
            "identification needs two images per identity: drop them or use --protocol "
            "verification"
        )
    if protocol == "open-set" and protocol_sets(labels, protocol).probes.size == 0:
        raise DataError(
            f"fold {fold} of {test.name}: no enrolled identity has a second image, so open-set "
            "has no mated probe; use a dataset with several images per identity"
        )


def protocol_cell(
    protocol: str,
    labels: np.ndarray,
    gallery,
    probe,
    fars: Sequence[float],
    *,
    roles: np.ndarray | None = None,
    distractors=None,
):
    """(arrays, rows) a cell adds for ``protocol`` from its gallery and probe features (torch
    (N, D) each); ``({}, [])`` for verification, whose cells stay as they were. ``roles``: the
    split's fixed roles; ``distractors``: (M, D) features of people in no gallery, or None."""
    if protocol == "verification":
        return {}, []
    labels = np.asarray(labels, dtype=np.int64)
    sets = protocol_sets(labels, protocol, roles)
    g = gallery.float()[sets.gallery]
    p = probe.float()
    extra = {} if distractors is None else {"distractors": distractors.float()}
    if protocol == "identification":
        search = closed_set_search(
            g, labels[sets.gallery], p[sets.probes], labels[sets.probes], **extra
        )
        nonmated_top = np.zeros(0, np.float32)
    else:
        found = open_set_search(
            g, labels[sets.gallery], p[sets.probes], labels[sets.probes], p[sets.nonmated], **extra
        )
        search, nonmated_top = found.mated, found.nonmated_top_scores.astype(np.float32)
    arrays = dict(
        id_probe=sets.probes.astype(np.int32),
        id_rank=search.ranks.astype(np.int32),
        id_true=search.true_scores.astype(np.float32),
        id_top=search.top_scores.astype(np.float32),
        id_nonmated=sets.nonmated.astype(np.int32),
        id_nonmated_top=nonmated_top,
        # gallery identities (one image each unless the set has roles)
        id_gallery_size=np.array([np.unique(labels[sets.gallery]).size], np.int64),
    )
    if distractors is not None:
        arrays["id_distractors"] = np.array([distractors.shape[0]], np.int64)
    return arrays, protocol_rows(protocol, arrays, fars)


def protocol_rows(protocol: str, arrays: dict[str, np.ndarray], fars: Sequence[float]) -> list:
    """The rows of one cell (or of several folds' arrays joined) from its ``id_*`` arrays; the
    numbers come from the stored (float32) scores, as a resumed cell reads them back."""
    ranks = arrays["id_rank"].astype(np.int64)
    if protocol == "identification":
        n_gallery = int(arrays["id_gallery_size"].min())
        rows = []
        for k in RANKS:
            if k > 1 and k >= n_gallery:
                continue
            r = rank_k_accuracy(ranks, k)
            rows.append(
                dict(
                    metric=f"rank{k}",
                    value=r.accuracy,
                    ci_low=r.ci_low,
                    ci_high=r.ci_high,
                    n_genuine=r.n_probes,
                )
            )
        return rows
    rows = []
    for far in fars:
        t = tpir_at_fpir(
            arrays["id_true"].astype(np.float64),
            ranks,
            arrays["id_nonmated_top"].astype(np.float64),
            far,
        )
        rows.append(
            dict(
                metric="tpir",
                far=far,
                value=t.tpir,
                ci_low=t.ci_low,
                ci_high=t.ci_high,
                threshold=t.threshold,
                far_achieved=t.fpir_achieved,
                flagged=bool(t.flagged),
                n_genuine=t.n_mated,
                n_impostor=t.n_nonmated,
            )
        )
    return rows


def level_arrays(store: CellStore, name: str, seed: int, scale: float, folds: Sequence[int]):
    """A model's ``id_*`` arrays over ``folds`` joined, with each probe's identity (``id_label``,
    offset per fold so identities stay distinct)."""
    parts, offset = [], 0
    for fold in folds:
        a = store.arrays((name, fold, seed, scale))
        labels = a["labels"].astype(np.int64)
        parts.append((a, labels[a["id_probe"].astype(np.int64)] + offset))
        offset += int(labels.max()) + 1
    keys = ("id_rank", "id_true", "id_nonmated_top", "id_gallery_size")
    out = {k: np.concatenate([a[k] for a, _ in parts]) for k in keys}
    out["id_label"] = np.concatenate([lab for _, lab in parts])
    return out


def pooled_protocol_rows(store, model_info, grid, folds, seeds, fars, context, protocol):
    """The protocol rows of the folds pooled (``fold = -1``; several folds only)."""
    rows = []
    for name in sorted(model_info):
        for seed in seeds:
            for scale, size in grid:
                arrays = level_arrays(store, name, seed, scale, folds)
                rows += stamp_rows(
                    protocol_rows(protocol, arrays, fars),
                    **context,
                    model=name,
                    method=model_info[name].method,
                    scale=scale,
                    size_px=size,
                    fold=POOLED,
                    seed=seed,
                )
    return rows


def rank1_margin_rows(store, pairs, model_info, grid, folds, seeds, level_fold, context, config):
    """``ring_margin_rank1`` rows: rank-1 of each ``+R`` model minus its base's, per width, with
    a paired percentile bootstrap over test identities (both models resampled with the same
    identity draws: :func:`lowres.identification.bootstrap_rank_k` with one seed on the same
    probes; several seeds pool their probes per identity). ``pairs``: (model, base) ids."""
    rows = []
    for name, base in pairs:
        for scale, size in grid:
            boots = []
            for model in (name, base):
                parts = [level_arrays(store, model, s, scale, folds) for s in seeds]
                ranks = np.concatenate([p["id_rank"] for p in parts]).astype(np.int64)
                labels = np.concatenate([p["id_label"] for p in parts])
                boots.append(
                    bootstrap_rank_k(ranks, labels, 1, n_boot=config.n_boot, seed=config.boot_seed)
                )
            diff = boots[0]["reps"][:, 0] - boots[1]["reps"][:, 0]
            rows.append(
                make_row(
                    **context,
                    model=name,
                    method=model_info[name].method,
                    scale=scale,
                    size_px=size,
                    fold=level_fold,
                    seed=seeds[0] if len(seeds) == 1 else None,
                    metric="ring_margin_rank1",
                    value=float(boots[0]["point"][0] - boots[1]["point"][0]),
                    ci_low=float(np.quantile(diff, 0.025)),
                    ci_high=float(np.quantile(diff, 0.975)),
                    n_genuine=int(ranks.size),
                    reference=base,
                )
            )
    return rows


def cmc_frame(store: CellStore, model_info, grid, folds, seeds, context) -> pd.DataFrame:
    """``cmc.csv``: rank-k accuracy for k = 1..gallery size per model, seed and width (folds
    joined), the CMC figure's source."""
    rows: list[tuple[Any, ...]] = []
    for name in sorted(model_info):
        method = model_info[name].method
        for seed in seeds:
            for scale, size in grid:
                arrays = level_arrays(store, name, seed, scale, folds)
                max_rank = int(arrays["id_gallery_size"].max())
                curve = cmc(arrays["id_rank"].astype(np.int64), max_rank)
                rows += [
                    (name, method, seed, scale, size, k + 1, float(v)) for k, v in enumerate(curve)
                ]
    frame = pd.DataFrame(rows, columns=list(CMC_COLUMNS))
    frame.insert(0, "pairing", context["pairing"])
    frame.insert(0, "dataset", context["dataset"])
    return frame


# --------------------------------------------------------------------------------------------
# sets whose published protocol fixes gallery and probe (FaceDataset.roles)
# --------------------------------------------------------------------------------------------


def role_sets(labels: np.ndarray, roles: np.ndarray, enrolled: np.ndarray) -> ProtocolSets:
    """Gallery, mated and non-mated probes of a split with fixed roles: the role-gallery images
    of the ``enrolled`` identities, their role-probe images, the others' role-probe images."""
    in_enrolled = np.isin(labels, enrolled)
    is_probe = roles == PROBE
    return ProtocolSets(
        np.flatnonzero((roles == GALLERY) & in_enrolled),
        np.flatnonzero(is_probe & in_enrolled),
        np.flatnonzero(is_probe & ~in_enrolled),
    )


def check_role_protocol(test, fold: int, protocol: str) -> None:
    """DataError when a split with fixed roles cannot hold ``protocol``: no probe, or (closed
    set) a probe identity without a gallery image."""
    labels = test.labels.numpy().astype(np.int64)
    roles = test.roles.numpy()
    probes, gallery = labels[roles == PROBE], labels[roles == GALLERY]
    if probes.size == 0 or gallery.size == 0:
        raise DataError(
            f"fold {fold} of {test.name} has {gallery.size} gallery and {probes.size} probe "
            f"images; {protocol} needs both (check the set's folders)"
        )
    orphans = np.setdiff1d(probes, gallery)
    if protocol == "identification" and orphans.size:
        raise DataError(
            f"identity {test.identities[int(orphans[0])]!r} of fold {fold} of {test.name} has "
            f"probes but no gallery image ({orphans.size} such identities); closed-set "
            "identification needs every probe enrolled: add its gallery image, or use "
            "--protocol open-set"
        )
    if protocol == "open-set" and protocol_sets(labels, protocol, roles).probes.size == 0:
        raise DataError(
            f"fold {fold} of {test.name}: no enrolled identity has a probe image, so open-set "
            "has no mated probe"
        )
