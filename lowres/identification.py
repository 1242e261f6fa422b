"""Identification metrics as pure functions: closed-set rank/CMC, open-set TPIR at FPIR, templates.

Conventions (every function here):

* Scores are cosine similarities (rows L2-normalised), higher = more similar, computed in float32
  unless an input is float64; matrix products run in torch on ``device`` (default: where the
  probes live), so the same call runs on CPU or GPU.
* **Identity score.** A gallery identity with several images scores its BEST image (the max of
  its images' cosines): the usual "max over the gallery set" rule of closed-set search.
* **Pessimistic ties.** A probe's rank is ``1 + #other candidates whose score is >= the true
  identity's score``: every exact tie is counted against the probe, so a feature extractor that
  maps everything to one point gets the worst rank, never rank 1. Candidates are the other
  gallery identities and the distractors: labelled distractors are grouped by label (max over
  their images, like gallery identities); unlabelled distractors count one candidate per image.
* **Streaming.** :func:`closed_set_search` never forms the probes x (gallery + distractors)
  matrix. The true identity's score is computed first from the gallery's own images of that
  identity (a small gather), then gallery and distractors are streamed in blocks of at most
  ``block`` rows (whole identities per block; one identity larger than ``block`` forms its own
  block), keeping per probe only the running count of other candidates scoring >= that score
  and the running top score. Memory is ``O(probe_block x block)`` plus the probes and gallery.
  The rank equals the one read off the full score matrix whenever the scores are bitwise equal
  (always when the cosines are exactly representable, as in the tests' tie cases); the gather
  and the block products may round a cosine differently in its last bit, so two scores within
  float rounding of each other (~1e-7 in float32) can tie in one and not in the other.
* **Open set** (NIST FRVT 1:N): for a threshold t, FPIR(t) = share of non-mated searches whose
  top score is >= t; TPIR(t) = 1 - FNIR(t) = share of mated searches whose mate is at rank 1
  (pessimistic ties: strictly above every other candidate) with score >= t. TPIR at a target
  FPIR is read exactly as :func:`lowres.metrics.tar_at_far` reads TAR at FAR, with the
  non-mated top scores as impostors and the mated rank-1 scores as genuine scores; a mated
  search whose mate is not at rank 1 is a miss at every threshold (a genuine score below all
  others). So: the achieved FPIR is at most the target; the threshold is the smallest mated
  rank-1 score above the ``(c+1)``-th largest non-mated top score (``c`` the largest count with
  ``c / n_nonmated <= fpir``); non-mated scores tied with that boundary are all rejected, those
  tied with the threshold all accepted and counted in ``fpir_achieved``; with TPIR 0 the
  threshold is the next float above the largest non-mated top score; a target below
  ``1 / n_nonmated`` is flagged.
* **Templates** (IJB-A / IJB-C practice): a template's feature is the mean of its media's
  L2-normalised features, L2-normalised again (:func:`pool_templates`).

Bad input raises :class:`lowres.errors.ConfigError` (settings, shapes) or
:class:`lowres.errors.DataError` (an identity or template without images), one line each.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lowres.errors import ConfigError, DataError
from lowres.metrics import clopper_pearson, tar_at_far

__all__ = [
    "IdentificationSearch",
    "OpenSetSearch",
    "RankAccuracy",
    "TpirAtFpir",
    "bootstrap_rank_k",
    "closed_set_search",
    "cmc",
    "open_set_rates",
    "open_set_search",
    "pool_templates",
    "rank_k_accuracy",
    "tpir_at_fpir",
]

ArrayLike = np.ndarray | torch.Tensor | Sequence


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _tensor(x: ArrayLike) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _feature_matrix(x: ArrayLike, name: str) -> torch.Tensor:
    """(N, D) float tensor where it lives (half precision promoted to float32); not normalised."""
    t = _tensor(x)
    if t.ndim != 2:
        raise ConfigError(f"{name} must be 2-D (N, D), got shape {tuple(t.shape)}")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t


def _normalize(t: torch.Tensor, name: str, rows: np.ndarray | int = 0) -> torch.Tensor:
    """Rows L2-normalised; ConfigError on a NaN/inf or all-zero row.

    ``rows`` maps a local row to the index named in the error: an offset, or an index array.
    """
    norms = torch.linalg.vector_norm(t, dim=1, keepdim=True)
    bad_rows = ~torch.isfinite(norms[:, 0]) | (norms[:, 0] == 0)
    if bool(bad_rows.any()):
        local = int(torch.nonzero(bad_rows)[0, 0])
        bad = int(rows[local]) if isinstance(rows, np.ndarray) else rows + local
        what = "is all zeros" if float(norms[local, 0]) == 0 else "contains NaN/inf"
        raise ConfigError(f"{name} row {bad} {what}; cosine similarity needs finite, nonzero rows")
    return t / norms


def _label_vector(x: ArrayLike, n: int, name: str) -> np.ndarray:
    y = _tensor(x).detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if y.shape != (n,):
        raise ConfigError(f"{name} must have shape ({n},), one label per row, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"{name} must be integer identity ids, got dtype {y.dtype}")
    return y.astype(np.int64)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_ranks(ranks: ArrayLike) -> np.ndarray:
    r = np.asarray(_tensor(ranks).cpu()) if isinstance(ranks, torch.Tensor) else np.asarray(ranks)
    if r.ndim != 1 or r.size == 0:
        raise ConfigError(f"ranks must be a non-empty 1-D array, got shape {r.shape}")
    if not np.issubdtype(r.dtype, np.integer) or int(r.min()) < 1:
        raise ConfigError("ranks must be integers >= 1 (1 = best); pass IdentificationSearch.ranks")
    return r.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# closed-set rank, CMC and their intervals
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankAccuracy:
    """Rank-k identification accuracy with a Clopper-Pearson interval (binomial over probes).

    Attributes:
        k: the rank.
        accuracy: share of probes with rank <= k.
        n_correct, n_probes: the counts behind it.
        ci_low, ci_high: exact binomial interval at ``ci_level``; it treats probes as
            independent (see :func:`bootstrap_rank_k` for an interval over identities).
        ci_level: confidence level.
    """

    k: int
    accuracy: float
    n_correct: int
    n_probes: int
    ci_low: float
    ci_high: float
    ci_level: float = 0.95


def rank_k_accuracy(ranks: ArrayLike, k: int = 1, ci: float = 0.95) -> RankAccuracy:
    """Share of probes whose true identity is within the top ``k``, with an exact interval.

    Args:
        ranks: (P,) ranks from :func:`closed_set_search` (1 = best, pessimistic ties).
        k: the rank, >= 1.
        ci: confidence level of the Clopper-Pearson interval.

    Returns:
        RankAccuracy.

    Raises:
        ConfigError: ranks not positive integers, k < 1, ci outside (0, 1).
    """
    r = _check_ranks(ranks)
    k = _positive_int(k, "k")
    hits = int(np.count_nonzero(r <= k))
    low, high = clopper_pearson(hits, r.size, ci)
    return RankAccuracy(k, hits / r.size, hits, int(r.size), low, high, float(ci))


def cmc(ranks: ArrayLike, max_rank: int) -> np.ndarray:
    """Cumulative match characteristic: rank-k accuracy for k = 1..max_rank.

    Args:
        ranks: (P,) ranks (1 = best).
        max_rank: K, the last rank of the curve.

    Returns:
        (K,) float64, entry ``k - 1`` = share of probes with rank <= k (non-decreasing).
    """
    r = _check_ranks(ranks)
    k = _positive_int(max_rank, "max_rank")
    counts = np.bincount(np.minimum(r, k + 1), minlength=k + 2)[1 : k + 1]
    return np.cumsum(counts) / r.size


def bootstrap_rank_k(
    ranks: ArrayLike,
    probe_labels: ArrayLike,
    ks: int | Sequence[int] = (1,),
    *,
    n_boot: int = 1000,
    seed: int = 1000,
    level: float = 0.95,
) -> dict[str, np.ndarray]:
    """Bootstrap of rank-k accuracy over probe identities (the probes of one identity move
    together).

    A replicate draws the probe identities with replacement (multiplicities w, numpy PCG64 with
    ``seed``) and takes every probe of a drawn identity w times: accuracy =
    ``sum_i w[id_i] [rank_i <= k] / sum_i w[id_i]``, computed exactly from per-identity counts.

    Args:
        ranks: (P,) ranks.
        probe_labels: (P,) integer identity of each probe.
        ks: one rank or several.
        n_boot: replicates (>= 1).
        seed: RNG seed.
        level: central percentile-interval level.

    Returns:
        ``{"point": (K,), "reps": (n_boot, K), "low": (K,), "high": (K,)}`` for the ks in order.
    """
    r = _check_ranks(ranks)
    labels = _label_vector(probe_labels, r.size, "probe_labels")
    k_list = [_positive_int(k, "k") for k in ([ks] if np.isscalar(ks) else list(ks))]
    if not k_list:
        raise ConfigError("no ranks given; pass e.g. ks=(1, 5)")
    n_boot = _positive_int(n_boot, "n_boot")
    if not 0.0 < float(level) < 1.0:
        raise ConfigError(f"level must lie in (0, 1), got {level!r}; e.g. 0.95")
    _, ident = np.unique(labels, return_inverse=True)
    n_ids = int(ident.max()) + 1
    per_id = np.bincount(ident, minlength=n_ids).astype(np.float64)
    hits = np.stack([np.bincount(ident, weights=(r <= k), minlength=n_ids) for k in k_list], axis=1)
    rng = np.random.Generator(np.random.PCG64(seed))
    weights = rng.multinomial(n_ids, np.full(n_ids, 1.0 / n_ids), size=n_boot).astype(np.float64)
    reps = (weights @ hits) / (weights @ per_id)[:, None]
    alpha = (1.0 - float(level)) / 2.0
    return {
        "point": hits.sum(axis=0) / r.size,
        "reps": reps,
        "low": np.quantile(reps, alpha, axis=0),
        "high": np.quantile(reps, 1.0 - alpha, axis=0),
    }


# ----------------------------------------------------------------------------------------------
# the streaming search
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidates:
    """One set of search candidates (gallery or distractors) arranged in identity blocks."""

    features: torch.Tensor  # (N, D), wherever it was given, or normalised on the device
    normalized: bool  # features already L2-normalised (the gallery) or normalised per block
    name: str
    order: np.ndarray | None  # rows sorted by label (None: natural order)
    labels: np.ndarray | None  # labels in ``order`` (None: every row its own candidate)
    blocks: list[tuple[int, int]]  # [start, end) in ``order``, whole identities each
    own_excluded: bool  # the gallery: a probe's own identity is not an "other" candidate


def _identity_blocks(sorted_labels: np.ndarray | None, n: int, block: int) -> list:
    """[start, end) blocks of at most ``block`` rows that never split an identity."""
    if sorted_labels is None:
        return [(s, min(n, s + block)) for s in range(0, n, block)]
    bounds = np.r_[np.flatnonzero(np.diff(sorted_labels)) + 1, n]  # end of every identity
    blocks, start = [], 0
    while start < n:
        j = int(np.searchsorted(bounds, start + block, side="right")) - 1
        end = int(bounds[j]) if j >= 0 and bounds[j] > start else int(bounds[j + 1])
        blocks.append((start, end))
        start = end
    return blocks


def _candidates(
    x: torch.Tensor, labels, name: str, block: int, own_excluded: bool, normalized: bool
) -> _Candidates:
    if labels is None:
        blocks = _identity_blocks(None, len(x), block)
        return _Candidates(x, normalized, name, None, None, blocks, False)
    y = _label_vector(labels, x.shape[0], f"{name} labels")
    order = np.argsort(y, kind="stable")
    sorted_y = y[order]
    blocks = _identity_blocks(sorted_y, len(x), block)
    return _Candidates(x, normalized, name, order, sorted_y, blocks, own_excluded)


def _block_rows(c: _Candidates, start: int, end: int, device, dtype) -> torch.Tensor:
    if c.order is None:
        rows, index = c.features[start:end], start
    else:
        index = c.order[start:end]
        rows = c.features[torch.as_tensor(index, device=c.features.device)]
    rows = rows.to(device=device, dtype=dtype)
    return rows if c.normalized else _normalize(rows, c.name, index)


@dataclass(frozen=True)
class _BlockLabels:
    """A block's labels for the reductions: own-identity mask and identity grouping."""

    labels: np.ndarray | None  # (b,) sorted labels, None for unlabelled candidates
    starts: np.ndarray | None  # first row of every identity, None when no identity repeats
    labels_t: torch.Tensor | None  # the same on the compute device (torch path)
    segment_t: torch.Tensor | None  # (b,) identity index within the block (torch path)


def _block_labels(c: _Candidates, start: int, end: int, device) -> _BlockLabels:
    if c.labels is None:
        return _BlockLabels(None, None, None, None)
    lab = c.labels[start:end]
    labels_t = torch.as_tensor(lab, device=device)
    if not np.any(lab[1:] == lab[:-1]):  # one row per identity: nothing to group
        return _BlockLabels(lab, None, labels_t, None)
    new = np.r_[True, lab[1:] != lab[:-1]]
    segment = torch.as_tensor(np.cumsum(new) - 1, device=device)
    return _BlockLabels(lab, np.flatnonzero(new), labels_t, segment)


def _counts_numpy(sim, true, own, b: _BlockLabels) -> np.ndarray:
    """Per probe: candidates in the block scoring >= its true score (CPU, numpy)."""
    ge = sim >= true[:, None]
    if own is not None:
        ge &= ~own
    if b.starts is not None:
        ge = np.logical_or.reduceat(ge, b.starts, axis=1)  # an identity counts once
    return np.count_nonzero(ge, axis=1)


def _counts_torch(sim, true, own, b: _BlockLabels) -> torch.Tensor:
    """The same on an accelerator, in torch."""
    ge = sim >= true[:, None]
    if own is not None:
        ge &= ~own
    if b.segment_t is None:
        return ge.sum(dim=1)
    per_seg = torch.zeros(sim.shape[0], b.starts.size, dtype=torch.int32, device=sim.device)
    per_seg.index_add_(1, b.segment_t, ge.to(torch.int32))
    return (per_seg > 0).sum(dim=1)


def _reduce_with_numpy(device: torch.device) -> bool:
    """Whether block reductions run in numpy (CPU) rather than torch (accelerators)."""
    return device.type == "cpu"


def _stream(
    probes: torch.Tensor,
    probe_labels: np.ndarray | None,
    true: torch.Tensor | None,
    sets: list[_Candidates],
    probe_block: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Running (count of other candidates >= true score, top score) over every block.

    The products run in torch; on CPU the block reductions run in numpy, which reduces a
    comparison without materialising it as int64 (torch's CPU sum of a bool matrix does: 8
    bytes per score) and is ~5x faster there (measured on 2 cores); elsewhere they stay in torch.
    """
    n, device = probes.shape[0], probes.device
    use_numpy = _reduce_with_numpy(device)
    count = torch.zeros(n, dtype=torch.int64, device=device)
    top = torch.full((n,), -math.inf, dtype=probes.dtype, device=device)
    if use_numpy:
        count, top = count.numpy(), top.numpy()
        true = None if true is None else true.numpy()
    py_t = None if probe_labels is None else torch.as_tensor(probe_labels, device=device)
    for c in sets:
        for start, end in c.blocks:
            rows = _block_rows(c, start, end, device, probes.dtype)
            b = _block_labels(c, start, end, device)
            own_needed = true is not None and c.own_excluded and probe_labels is not None
            for p0 in range(0, n, probe_block):
                sl = slice(p0, p0 + probe_block)
                sim = probes[sl] @ rows.T
                if use_numpy:
                    sim = sim.numpy()
                    top[sl] = np.maximum(top[sl], sim.max(axis=1))
                    if true is not None:
                        own = probe_labels[sl, None] == b.labels[None, :] if own_needed else None
                        count[sl] += _counts_numpy(sim, true[sl], own, b)
                else:
                    top[sl] = torch.maximum(top[sl], sim.amax(dim=1))
                    if true is not None:
                        own = py_t[sl, None] == b.labels_t[None, :] if own_needed else None
                        count[sl] += _counts_torch(sim, true[sl], own, b)
    if use_numpy:
        return count, top
    return count.cpu().numpy(), top.cpu().numpy()


def _true_scores(
    probes: torch.Tensor, probe_labels: np.ndarray, gallery: _Candidates, block: int
) -> torch.Tensor:
    """Each probe's best cosine over the gallery images of its own identity (a gather)."""
    ids, starts, sizes = np.unique(gallery.labels, return_index=True, return_counts=True)
    pos = np.searchsorted(ids, probe_labels)
    missing = (pos >= ids.size) | (ids[np.minimum(pos, ids.size - 1)] != probe_labels)
    if missing.any():
        bad = int(probe_labels[np.flatnonzero(missing)[0]])
        raise DataError(
            f"probe identity {bad} has no gallery image; closed-set search needs every probe "
            "enrolled (use open_set_search for non-mated probes)"
        )
    width = int(sizes.max())
    true = torch.empty(probes.shape[0], dtype=probes.dtype, device=probes.device)
    chunk = max(1, block // width)
    offsets = np.arange(width)
    for p0 in range(0, probes.shape[0], chunk):
        sl = slice(p0, p0 + chunk)
        valid = offsets[None, :] < sizes[pos[sl]][:, None]
        first = starts[pos[sl]][:, None]
        local = np.where(valid, first + offsets[None, :], first)
        index = torch.as_tensor(gallery.order[local], device=gallery.features.device)
        sims = torch.einsum("pd,pmd->pm", probes[sl], gallery.features[index])
        sims[~torch.as_tensor(valid, device=probes.device)] = -math.inf
        true[sl] = sims.max(dim=1).values
    return true


@dataclass(frozen=True)
class IdentificationSearch:
    """Per-probe outcome of a closed-set search.

    Attributes:
        ranks: (P,) int64, ``1 + #other candidates scoring >= the true identity's score``.
        true_scores: (P,) float64, the true identity's score (its best gallery image).
        top_scores: (P,) float64, the best score over the whole gallery and distractors.
        n_candidates: gallery identities plus distractor candidates searched (the worst rank).
    """

    ranks: np.ndarray
    true_scores: np.ndarray
    top_scores: np.ndarray
    n_candidates: int


def _search_setup(gallery, gallery_labels, probes, distractors, distractor_labels, kw):
    """Validated (probe tensor, gallery candidates, candidate sets) for the searches."""
    block = _positive_int(kw["block"], "block")
    _positive_int(kw["probe_block"], "probe_block")
    g = _feature_matrix(gallery, "gallery")
    if g.shape[0] == 0:
        raise DataError("the gallery is empty; enrol at least one identity")
    p = _feature_matrix(probes, "probes")
    if p.shape[1] != g.shape[1]:
        raise ConfigError(f"probe width {p.shape[1]} differs from gallery width {g.shape[1]}")
    device = kw["device"] if kw["device"] is not None else p.device
    dtype = torch.promote_types(p.dtype, g.dtype)
    d = None if distractors is None else _feature_matrix(distractors, "distractors")
    if d is not None:
        dtype = torch.promote_types(dtype, d.dtype)
    p = _normalize(p.to(device=device, dtype=dtype), "probes")
    g = _normalize(g.to(device=device, dtype=dtype), "gallery")
    gal = _candidates(g, gallery_labels, "gallery", block, own_excluded=True, normalized=True)
    enrolled = kw["enrolled"]
    if enrolled is not None:
        want = np.unique(np.asarray(enrolled, dtype=np.int64))
        absent = np.setdiff1d(want, gal.labels)
        if absent.size:
            raise DataError(
                f"enrolled identity {int(absent[0])} has no gallery image ({absent.size} "
                "missing); add its images or drop it from the enrolled list"
            )
    sets = [gal]
    if d is not None:
        dis = _candidates(d, distractor_labels, "distractors", block, False, normalized=False)
        if dis.features.shape[0] == 0:
            raise DataError("distractors has 0 rows; load the distractor features or pass None")
        if dis.features.shape[1] != p.shape[1]:
            raise ConfigError(f"distractor width {dis.features.shape[1]} differs from {p.shape[1]}")
        if dis.labels is not None and np.isin(dis.labels, gal.labels).any():
            raise DataError(
                "distractor labels overlap gallery identities; distractors must be other people "
                "(relabel them, e.g. with negative ids)"
            )
        sets.append(dis)
    return p, gal, sets


def _n_candidates(sets: list[_Candidates]) -> int:
    return sum(
        c.features.shape[0] if c.labels is None else int(np.unique(c.labels).size) for c in sets
    )


def closed_set_search(
    gallery: ArrayLike,
    gallery_labels: ArrayLike,
    probes: ArrayLike,
    probe_labels: ArrayLike,
    *,
    distractors: ArrayLike | None = None,
    distractor_labels: ArrayLike | None = None,
    enrolled: ArrayLike | None = None,
    block: int = 65536,
    probe_block: int = 1024,
    device: torch.device | str | None = None,
) -> IdentificationSearch:
    """Closed-set 1:N search by cosine similarity, streamed over gallery + distractors.

    Rank rules (module docstring): an identity scores its best image; ties are pessimistic,
    ``rank = 1 + #other candidates scoring >= the true identity's score``; labelled distractors
    group by label, unlabelled ones count per image.

    Args:
        gallery: (G, D) gallery features; gallery_labels: (G,) integer identities.
        probes: (P, D) probe features; probe_labels: (P,) identities, each in the gallery.
        distractors: (M, D) features of people outside the gallery, or None.
        distractor_labels: (M,) their identities (grouped with max), or None (one per image).
        enrolled: identity ids that must each have a gallery image (checked), or None.
        block: candidate rows per streamed block (memory ``probe_block x block`` scores).
        probe_block: probes per matrix product.
        device: compute device (default: the probes' device).

    Returns:
        IdentificationSearch (ranks, true and top scores, number of candidates).

    Raises:
        DataError: a probe or enrolled identity without gallery image, an empty gallery or
            distractor set, distractor labels that are gallery identities.
        ConfigError: shape or width mismatch, NaN/inf or all-zero features, bad block sizes.
    """
    kw = dict(block=block, probe_block=probe_block, device=device, enrolled=enrolled)
    p, gal, sets = _search_setup(
        gallery, gallery_labels, probes, distractors, distractor_labels, kw
    )
    py = _label_vector(probe_labels, p.shape[0], "probe_labels")
    true = _true_scores(p, py, gal, int(block))
    count, top = _stream(p, py, true, sets, int(probe_block))
    return IdentificationSearch(
        ranks=count.astype(np.int64) + 1,
        true_scores=true.cpu().numpy().astype(np.float64),
        top_scores=top.astype(np.float64),
        n_candidates=_n_candidates(sets),
    )


# ----------------------------------------------------------------------------------------------
# open set
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenSetSearch:
    """Mated searches (a closed-set search) and the non-mated searches' top scores."""

    mated: IdentificationSearch
    nonmated_top_scores: np.ndarray


def open_set_search(
    gallery: ArrayLike,
    gallery_labels: ArrayLike,
    mated_probes: ArrayLike,
    mated_labels: ArrayLike,
    nonmated_probes: ArrayLike,
    *,
    nonmated_labels: ArrayLike | None = None,
    distractors: ArrayLike | None = None,
    distractor_labels: ArrayLike | None = None,
    enrolled: ArrayLike | None = None,
    block: int = 65536,
    probe_block: int = 1024,
    device: torch.device | str | None = None,
) -> OpenSetSearch:
    """Open-set 1:N search: mated probes ranked as in :func:`closed_set_search`, non-mated
    probes reduced to their top score over the same gallery (+ distractors).

    Args:
        gallery, gallery_labels, mated_probes, mated_labels: as in :func:`closed_set_search`.
        nonmated_probes: (N, D) probes of people not in the gallery.
        nonmated_labels: (N,) their identities, checked to be absent from the gallery, or None.
        distractors, distractor_labels, enrolled, block, probe_block, device: as in
            :func:`closed_set_search`.

    Returns:
        OpenSetSearch; feed it to :func:`tpir_at_fpir`.

    Raises:
        DataError: as :func:`closed_set_search`, or a non-mated label that is enrolled.
    """
    mated = closed_set_search(
        gallery,
        gallery_labels,
        mated_probes,
        mated_labels,
        distractors=distractors,
        distractor_labels=distractor_labels,
        enrolled=enrolled,
        block=block,
        probe_block=probe_block,
        device=device,
    )
    kw = dict(block=block, probe_block=probe_block, device=device, enrolled=None)
    p, gal, sets = _search_setup(
        gallery, gallery_labels, nonmated_probes, distractors, distractor_labels, kw
    )
    if nonmated_labels is not None:
        labels = _label_vector(nonmated_labels, p.shape[0], "nonmated_labels")
        if np.isin(labels, gal.labels).any():
            bad = int(labels[np.isin(labels, gal.labels)][0])
            raise DataError(
                f"non-mated probe identity {bad} is enrolled in the gallery; "
                "pass its probes as mated probes"
            )
    _, top = _stream(p, None, None, sets, int(probe_block))
    return OpenSetSearch(mated, top.astype(np.float64))


@dataclass(frozen=True)
class TpirAtFpir:
    """TPIR (= 1 - FNIR) at "FPIR at most the target", exact, with its threshold.

    Attributes:
        fpir_target: the requested FPIR.
        threshold: a search alarms iff its (rank-1) score is >= threshold.
        fpir_achieved: non-mated searches alarming / n_nonmated; always <= fpir_target.
        tpir: mated searches with the mate at rank 1 and score >= threshold / n_mated.
        fnir: 1 - tpir.
        n_mated, n_nonmated: searches behind the estimate.
        ci_low, ci_high: Clopper-Pearson interval on tpir (binomial over mated searches).
        flagged: fpir_target < 1 / n_nonmated; the FPIR-0 point is reported instead.
        ci_level: the interval's confidence level.
    """

    fpir_target: float
    threshold: float
    fpir_achieved: float
    tpir: float
    fnir: float
    n_mated: int
    n_nonmated: int
    ci_low: float
    ci_high: float
    flagged: bool
    ci_level: float = 0.95


def _open_set_arrays(mated_scores, mated_ranks, nonmated_top_scores):
    s = np.asarray(mated_scores, dtype=np.float64)
    r = _check_ranks(mated_ranks)
    n = np.asarray(nonmated_top_scores, dtype=np.float64)
    if s.ndim != 1 or s.shape != r.shape:
        raise ConfigError(
            f"mated_scores {s.shape} and mated_ranks {r.shape} must be 1-D of one length"
        )
    if n.ndim != 1 or n.size == 0:
        raise ConfigError(f"nonmated_top_scores must be a non-empty 1-D array, got {n.shape}")
    if not (np.isfinite(s).all() and np.isfinite(n).all()):
        raise ConfigError("open-set scores contain NaN/inf; check the features")
    return s, r, n


def tpir_at_fpir(
    mated_scores: ArrayLike,
    mated_ranks: ArrayLike,
    nonmated_top_scores: ArrayLike,
    fpir: float,
    ci: float = 0.95,
) -> TpirAtFpir:
    """Exact TPIR at "FPIR at most ``fpir``", read like :func:`lowres.metrics.tar_at_far`.

    Mated rank-1 scores play the genuine scores and non-mated top scores the impostors; a mated
    search whose mate is not at rank 1 counts as a miss at every threshold (module docstring
    for the tie rules).

    Args:
        mated_scores: (P,) true-identity scores of the mated searches
            (``OpenSetSearch.mated.true_scores``).
        mated_ranks: (P,) their ranks (``OpenSetSearch.mated.ranks``).
        nonmated_top_scores: (N,) top scores of the non-mated searches.
        fpir: target FPIR in (0, 1).
        ci: confidence level of the Clopper-Pearson interval on TPIR.

    Returns:
        TpirAtFpir.

    Raises:
        ConfigError: fpir outside (0, 1), mismatched or empty inputs, NaN scores.
    """
    try:
        target = float(fpir)
    except (TypeError, ValueError):
        raise ConfigError(f"FPIR must be a number in (0, 1), got {fpir!r}") from None
    if not 0.0 < target < 1.0:  # also rejects NaN
        raise ConfigError(f"FPIR must lie strictly between 0 and 1, got {fpir!r}; e.g. 1e-2")
    s, r, n = _open_set_arrays(mated_scores, mated_ranks, nonmated_top_scores)
    hit = r == 1
    # A miss is a genuine score below every non-mated score: never above the boundary.
    floor = min(float(n.min()), float(s.min())) - 1.0
    genuine = np.where(hit, s, floor)
    scores = np.concatenate([genuine, n])
    labels = np.r_[np.ones(s.size, bool), np.zeros(n.size, bool)]
    res = tar_at_far(scores, labels, target, ci)
    return TpirAtFpir(
        fpir_target=target,
        threshold=res.threshold,
        fpir_achieved=res.far_achieved,
        tpir=res.tar,
        fnir=1.0 - res.tar,
        n_mated=int(s.size),
        n_nonmated=int(n.size),
        ci_low=res.ci_low,
        ci_high=res.ci_high,
        flagged=res.flagged,
        ci_level=res.ci_level,
    )


def open_set_rates(
    mated_scores: ArrayLike,
    mated_ranks: ArrayLike,
    nonmated_top_scores: ArrayLike,
    threshold: float,
) -> tuple[float, float]:
    """FPIR and TPIR at a fixed threshold (alarm iff score >= threshold), for threshold transfer.

    Returns:
        ``(fpir, tpir)``.
    """
    s, r, n = _open_set_arrays(mated_scores, mated_ranks, nonmated_top_scores)
    t = float(threshold)
    if math.isnan(t):
        raise ConfigError("threshold is NaN; pass a number (e.g. TpirAtFpir.threshold)")
    fpir = float(np.count_nonzero(n >= t)) / n.size
    tpir = float(np.count_nonzero((r == 1) & (s >= t))) / s.size
    return fpir, tpir


# ----------------------------------------------------------------------------------------------
# templates
# ----------------------------------------------------------------------------------------------


def _template_groups(ids: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    order = np.argsort(ids, kind="stable")
    uniq, starts = np.unique(ids[order], return_index=True)
    ends = np.r_[starts[1:], ids.size]
    for t, s, e in zip(uniq, starts, ends, strict=True):
        yield int(t), order[s:e]


def pool_templates(
    features: ArrayLike, template_ids: ArrayLike, *, templates: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray | torch.Tensor]:
    """One feature per template: the mean of its media's L2-normalised features, re-normalised.

    The IJB-A / IJB-C (CS3) practice: every image or video frame of a template is one medium;
    normalising before averaging gives each medium the same weight whatever its feature norm.

    Args:
        features: (N, D) media features (numpy or torch).
        template_ids: (N,) integer template id of each medium.
        templates: the template ids wanted, in output order; each must have a medium. Default:
            every id in ``template_ids``, ascending.

    Returns:
        ``(ids (T,) int64, pooled (T, D))``; pooled is a tensor on the input's device if the
        input was a tensor, else a numpy array; unit-norm rows.

    Raises:
        DataError: a requested template with no media, or media that cancel to a zero mean.
        ConfigError: shape mismatch, NaN/inf or all-zero features.
    """
    x = _feature_matrix(features, "features")
    tid = _label_vector(template_ids, x.shape[0], "template_ids")
    xn = _normalize(x, "features")
    groups = dict(_template_groups(tid))
    wanted = np.unique(tid) if templates is None else np.asarray(templates, dtype=np.int64)
    if wanted.ndim != 1 or wanted.size == 0:
        raise ConfigError("templates must be a non-empty 1-D list of template ids")
    pooled = torch.empty(wanted.size, x.shape[1], dtype=xn.dtype, device=xn.device)
    for i, t in enumerate(wanted.tolist()):
        rows = groups.get(int(t))
        if rows is None:
            raise DataError(f"template {t} has no media; drop it or add its images' features")
        mean = xn[torch.as_tensor(rows, device=xn.device)].mean(dim=0)
        norm = torch.linalg.vector_norm(mean)
        if float(norm) == 0.0:
            raise DataError(f"template {t}'s media features cancel to a zero mean; check them")
        pooled[i] = mean / norm
    out = pooled if isinstance(features, torch.Tensor) else pooled.numpy()
    return wanted.astype(np.int64), out
