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

* ``template`` (template 1:1, the IJB-A / Janus CS3 verification between templates): per test
  identity its images in index order are cut into consecutive templates of ``template_size``
  images (media; :data:`lowres.sweep.config.DEFAULT_TEMPLATE_SIZE` = 2 unless set); the
  remainder (fewer than ``template_size`` images) joins the identity's last template, so every
  image is in exactly one template and a template holds ``template_size`` to
  ``2 * template_size - 1`` media (synth's five images per identity: templates of 2 and 3).
  Templates are numbered by identity (ascending), then by first image. A template's feature is
  the mean of its media's L2-normalised features, L2-normalised again
  (:func:`lowres.identification.pool_templates`, in float64), once from the gallery features
  and once from the probe features. Every pair of templates (s, t) with s < t is scored,
  template s on the gallery side and t on the probe side (as verification pairs images i < j);
  genuine = same identity, impostor = every other pair (no subset). Rows ``template_tar`` per
  FAR: exact TAR at FAR (:func:`lowres.metrics.tar_at_far`) with Clopper-Pearson interval,
  threshold and achieved FAR, ``n_genuine`` / ``n_impostor`` = template pairs; with a ``+R``
  model and its base, ``ring_margin_template`` rows (template TAR of ``X+R`` minus ``X``, per
  FAR and width, paired bootstrap over test identities and seeds, like ``ring_margin``). Refused
  (one line, before anything is written): ``template_size`` below 1, an identity with fewer
  images than ``template_size`` (its template would have no media), or no identity with two
  templates (no genuine template pair).

With several folds, the rows are also pooled (``fold = -1``): every fold's probes, each
searched in its own fold's gallery, counted together (template pairs: each fold's pairs,
within the fold, counted together under one threshold); the rank-1 and template margins and
``cmc.csv`` are read at that level (one fold's, or the pooled one).

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

from lowres.cells import CellStore, tar_row
from lowres.data.dataset import GALLERY, PROBE
from lowres.errors import ConfigError, DataError
from lowres.identification import (
    bootstrap_rank_k,
    closed_set_search,
    cmc,
    open_set_search,
    pool_templates,
    rank_k_accuracy,
    tpir_at_fpir,
)
from lowres.metrics import tar_at_far
from lowres.results import POOLED, make_row, stamp_rows
from lowres.sweep.config import DEFAULT_TEMPLATE_SIZE, MAX_PAIRS

PROTOCOLS = ("verification", "identification", "open-set", "template")

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


def check_template_size(protocol: str, template_size) -> None:
    """ConfigError for a template size below 1 (a template with no media), not a whole number,
    or set for a protocol that forms no templates; None (the default) always passes."""
    if template_size is None:
        return
    if protocol != "template":
        raise ConfigError(
            f"template size {template_size!r} is set but the protocol is {protocol!r}; "
            "--template-size applies to --protocol template only"
        )
    if isinstance(template_size, bool) or not isinstance(template_size, (int, np.integer)):
        raise ConfigError(
            f"template size {template_size!r} is not a whole number of images; use e.g. "
            "--template-size 2"
        )
    if template_size < 1:
        raise ConfigError(
            f"template size {template_size} is below 1, so every template would have no media; "
            "use --template-size 1 or more (default 2)"
        )


def check_protocol(test, fold: int, protocol: str, template_size: int | None = None) -> None:
    """DataError when ``test`` cannot hold ``protocol`` (``template_size``: images per template
    of ``template``, None for the default): found before any model trains."""
    if protocol == "verification":
        return
    labels = test.labels.numpy().astype(np.int64)
    ids, counts = np.unique(labels, return_counts=True)
    if ids.size < 2:
        raise DataError(
            f"fold {fold} of {test.name} has {ids.size} identity; {protocol} needs at least two "
            "(use a larger preset or --protocol verification)"
        )
    if protocol == "template":
        size = DEFAULT_TEMPLATE_SIZE if template_size is None else template_size
        check_templates(ids, counts, f"fold {fold} of {test.name}", size)
        return
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
    template_size: int | None = None,
    *,
    roles: np.ndarray | None = None,
    distractors=None,
):
    """(arrays, rows) a cell adds for ``protocol`` from its gallery and probe features (torch
    (N, D) each); ``({}, [])`` for verification, whose cells stay as they were.
    ``template_size``: images per template of ``template``, None for
    :data:`~lowres.sweep.config.DEFAULT_TEMPLATE_SIZE`; ``roles``: the split's fixed roles;
    ``distractors``: (M, D) features of people in no gallery, or None."""
    if protocol == "verification":
        return {}, []
    labels = np.asarray(labels, dtype=np.int64)
    if protocol == "template":
        size = DEFAULT_TEMPLATE_SIZE if template_size is None else template_size
        return template_cell(labels, gallery, probe, fars, size)
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
    """The protocol rows of the folds pooled (``fold = -1``; several folds only); template pairs
    are each fold's own, joined under one threshold per FAR."""
    rows = []
    for name in sorted(model_info):
        for seed in seeds:
            for scale, size in grid:
                if protocol == "template":
                    found = template_rows(*template_level(store, name, seed, scale, folds), fars)
                else:
                    found = protocol_rows(
                        protocol, level_arrays(store, name, seed, scale, folds), fars
                    )
                rows += stamp_rows(
                    found,
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


# ----------------------------------------------------------------------------------------------
# template 1:1
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Templates:
    """The templates of one test split (module docstring for the rules)."""

    of_image: np.ndarray  # (N,) template id of each image
    labels: np.ndarray  # (T,) identity of each template


def check_templates(ids: np.ndarray, counts: np.ndarray, where: str, template_size: int) -> None:
    """DataError when the identities ``ids`` with ``counts`` images each cannot form templates
    of ``template_size`` images with at least one genuine pair, or give more template pairs
    than :data:`lowres.sweep.config.MAX_PAIRS` (``where``: the split, for the message);
    ConfigError for a template size below 1."""
    check_template_size("template", template_size)
    k = template_size
    short = counts < k
    if short.any():
        raise DataError(
            f"identity {int(ids[np.argmax(short)])} of {where} has "
            f"{int(counts[np.argmax(short)])} image(s), fewer than the template size {k}, so its "
            f"template would have no media ({int(short.sum())} such identities); use a smaller "
            "--template-size or a dataset with more images per identity"
        )
    n_templates = counts // k
    if not (n_templates >= 2).any():
        fix = (
            f"use --template-size {int(counts.max()) // 2} or less"
            if counts.max() >= 2
            else "use a dataset with several images per identity"
        )
        raise DataError(
            f"{where}: no identity has {2 * k} images, so none forms two templates of {k} and "
            f"template 1:1 has no genuine template pair; {fix}"
        )
    total = int(n_templates.sum())
    if total * (total - 1) // 2 > MAX_PAIRS:
        raise DataError(
            f"{where} forms {total} templates ({total * (total - 1) // 2:,} template pairs); "
            f"sweeps store every pair score and allow at most {MAX_PAIRS:,}: use a larger "
            "--template-size or a smaller test split"
        )


def form_templates(labels: np.ndarray, template_size: int) -> Templates:
    """The templates of a split with image identities ``labels``: each identity's images in
    index order cut into templates of ``template_size``, the remainder joining its last
    template; templates numbered by identity (ascending), then by first image.

    >>> t = form_templates(np.array([1, 0, 1, 0, 1, 0, 0]), 2)
    >>> t.of_image.tolist(), t.labels.tolist()
    ([2, 0, 2, 0, 2, 1, 1], [0, 0, 1])

    Raises:
        DataError: an identity with fewer than ``template_size`` images (a template with no
            media); ConfigError: ``template_size`` below 1.
    """
    check_template_size("template", template_size)
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")  # by identity, each in index order
    ids, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    per_id = counts // template_size
    if (per_id == 0).any():
        bad = int(np.argmax(per_id == 0))
        raise DataError(
            f"identity {int(ids[bad])} has {int(counts[bad])} image(s), fewer than the template "
            f"size {template_size}: its template would have no media; use a smaller "
            "--template-size"
        )
    group = np.repeat(np.arange(ids.size), counts)
    position = np.arange(labels.size) - starts[group]
    within = np.minimum(position // template_size, per_id[group] - 1)
    first = np.concatenate([[0], np.cumsum(per_id)[:-1]])
    of_image = np.empty(labels.size, np.int64)
    of_image[order] = first[group] + within
    return Templates(of_image, np.repeat(ids, per_id))


def template_scores(gallery: np.ndarray, probe: np.ndarray, templates: Templates) -> np.ndarray:
    """(P,) float32 cosine of every template pair (s, t), s < t, in ``np.triu_indices`` order:
    template s pooled from ``gallery``, t from ``probe`` ((N, D) features each; pooled in
    float64 by :func:`lowres.identification.pool_templates`), clipped to [-1, 1]."""
    wanted = np.arange(templates.labels.size)
    g = pool_templates(np.asarray(gallery, np.float64), templates.of_image, templates=wanted)[1]
    p = pool_templates(np.asarray(probe, np.float64), templates.of_image, templates=wanted)[1]
    a, b = np.triu_indices(wanted.size, k=1)
    out = np.empty(a.size, np.float32)
    block = 1024  # gallery templates per matrix product: bounds memory at block x T
    for start in range(0, wanted.size, block):
        lo, hi = np.searchsorted(a, [start, start + block])
        sims = g[start : start + block] @ p.T
        out[lo:hi] = np.clip(sims[a[lo:hi] - start, b[lo:hi]], -1.0, 1.0)
    return out


def template_cell(labels: np.ndarray, gallery, probe, fars: Sequence[float], template_size: int):
    """(arrays, rows) of one ``template`` cell: ``tpl_image`` (N,) the template of each image,
    ``tpl_labels`` (T,) each template's identity, ``tpl_scores`` (P,) float32 template-pair
    scores (:func:`template_scores`) and the ``template_tar`` rows read from them."""
    templates = form_templates(labels, template_size)
    scores = template_scores(
        gallery.detach().float().cpu().numpy(), probe.detach().float().cpu().numpy(), templates
    )
    arrays = dict(
        tpl_image=templates.of_image.astype(np.int32),
        tpl_labels=templates.labels.astype(np.int32),
        tpl_scores=scores,
    )
    return arrays, template_rows(*template_pairs(arrays), fars)


def template_pairs(arrays: dict[str, np.ndarray], offset: int = 0):
    """(scores float64, id_a, id_b) of a cell's template pairs from its ``tpl_*`` arrays, the
    identities offset by ``offset`` (folds joined)."""
    labels = arrays["tpl_labels"].astype(np.int64) + offset
    a, b = np.triu_indices(labels.size, k=1)
    return arrays["tpl_scores"].astype(np.float64), labels[a], labels[b]


def template_level(store: CellStore, name: str, seed: int, scale: float, folds: Sequence[int]):
    """(scores, id_a, id_b) of a model's template pairs over ``folds`` joined (each fold's pairs
    within the fold; identities offset per fold as :func:`level_arrays` does)."""
    parts, offset = [], 0
    for fold in folds:
        a = store.arrays((name, fold, seed, scale))
        parts.append(template_pairs(a, offset))
        offset += int(a["labels"].astype(np.int64).max()) + 1
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def template_rows(scores: np.ndarray, id_a: np.ndarray, id_b: np.ndarray, fars) -> list:
    """``template_tar`` rows (one per FAR) of template pairs: the exact TAR at FAR of
    :func:`lowres.metrics.tar_at_far`, as the verification ``tar`` rows, genuine = same
    identity."""
    same = id_a == id_b
    rows = []
    for far in fars:
        rows.append(tar_row("template_tar", far, tar_at_far(scores, same, far)))
    return rows


def template_rules(template_size: int) -> dict[str, Any]:
    """The template protocol's rules, for the provenance."""
    k = template_size
    return {
        "template_size": k,
        "templates": f"each test identity's images in index order cut into templates of {k}; "
        f"the remainder (fewer than {k}) joins the identity's last template",
        "pooling": "mean of the media's L2-normalised features, L2-normalised (IJB-A / CS3)",
        "pairs": "every template pair (s, t), s < t (by identity, then first image): s on the "
        "gallery side, t on the probe side; genuine = same identity, every other pair impostor",
        "tar": "exact TAR at FAR over template pairs, Clopper-Pearson interval",
    }


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
