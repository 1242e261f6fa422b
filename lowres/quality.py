"""The feature norm as a quality score: error-versus-discard and how well the norm tells a
degraded probe from a clean one.

Ring loss starts from the observation that low-resolution faces get low-norm features;
MagFace and AdaFace later used the norm as a face-quality score. These functions ask, of any
model, whether its norm still carries that signal on degraded probes:

* **EDC** (error-versus-discard characteristic, as in ISO/IEC 29794-5 and the face-quality
  literature): the probes of one probe width are pooled with the clean probes; with the
  threshold fixed on clean pairs, the FNMR of the genuine pairs whose probe is kept, after
  discarding the lowest-quality fraction of probes (0 to 50%). A quality score that knows
  which probes fail brings the FNMR down fast. Its summary is the partial area up to 20%
  discard, given as the mean FNMR over that range (lower is better).
* the **oracle** EDC discards by the true probe width (degraded probes first, in a seeded
  random order within a width): what a perfect resolution detector would give, per model.
* the **norm AUC** of one width: the probability that a clean probe's norm exceeds a degraded
  probe's (0.5: the norm does not tell them apart; 1: it always does; ties count half);
* the **Spearman** correlation of norm and probe width over every probe of every width.

Pure numpy. A pair's probe is the image whose side is degraded (the second image of a
pair). Every interval is a bootstrap over test identities: a replicate draws identities with
replacement, and a probe (with its genuine pairs) counts as often as its identity was drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lowres.errors import ConfigError

__all__ = [
    "DISCARD_FRACTIONS",
    "PAUC_UPTO",
    "ProbeErrors",
    "edc",
    "edc_pauc",
    "edc_pauc_bootstrap",
    "norm_auc",
    "probe_errors",
    "spearman",
]

DISCARD_FRACTIONS = np.round(np.arange(51) / 100.0, 2)
"""The EDC's discard fractions: 0, 1, ..., 50% of the probes."""

PAUC_UPTO = 0.2
"""The EDC's partial area is taken from 0 to this discard fraction."""


@dataclass(frozen=True)
class ProbeErrors:
    """Per probe image: its genuine pairs and how many of them the threshold rejects.

    Attributes:
        genuine: (N,) int64 genuine pairs with this image as the probe.
        rejected: (N,) int64 of those with score below the threshold.
        identity: (N,) int64 identity of each probe image (the bootstrap's unit).
    """

    genuine: np.ndarray
    rejected: np.ndarray
    identity: np.ndarray


def probe_errors(
    scores: np.ndarray,
    issame: np.ndarray,
    probe: np.ndarray,
    labels: np.ndarray,
    threshold: float,
) -> ProbeErrors:
    """Count each probe's genuine pairs and rejections (accept iff ``score >= threshold``, as
    :func:`lowres.metrics.rates_at_threshold`).

    Args:
        scores: (P,) pair scores. issame: (P,) bool.
        probe: (P,) index of each pair's probe image (0..N-1).
        labels: (N,) identity of each image.
        threshold: the clean threshold.
    """
    # float64: a float32 array would compare with the threshold rounded to float32, and a
    # threshold just above a tied score (tar_at_far's nextafter) would round back onto it.
    scores = np.asarray(scores, dtype=np.float64)
    issame, probe = np.asarray(issame, bool), np.asarray(probe)
    n = int(np.asarray(labels).size)
    gen = probe[issame]
    rejected = probe[issame & (scores < threshold)]
    return ProbeErrors(
        genuine=np.bincount(gen, minlength=n).astype(np.int64),
        rejected=np.bincount(rejected, minlength=n).astype(np.int64),
        identity=np.asarray(labels, dtype=np.int64),
    )


def _discard_order(quality: np.ndarray, seed: int) -> np.ndarray:
    """Probes from lowest to highest quality; equal qualities in a seeded random order."""
    tiebreak = np.random.default_rng(seed).permutation(quality.size)
    return np.lexsort((tiebreak, quality))


def edc(
    quality: np.ndarray,
    errors: ProbeErrors,
    fractions: Sequence[float] = DISCARD_FRACTIONS,
    *,
    weights: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """FNMR after discarding each fraction of the lowest-quality probes.

    Args:
        quality: (N,) quality score per probe (higher = better).
        errors: the probes' genuine pairs and rejections (:func:`probe_errors`).
        fractions: discard fractions in [0, 1).
        weights: (B, N) probe multiplicities (bootstrap replicates) or None (each probe once).
        seed: seed of the random order among equal qualities.

    Returns:
        (len(fractions),) FNMR, or (B, len(fractions)) with ``weights``; NaN where no genuine
        pair is left. ``floor(f * N)`` probes are discarded (with weights, ``floor(f * total
        weight)`` copies, a probe of weight k being k copies of one quality).
    """
    quality = np.asarray(quality, dtype=np.float64)
    if quality.shape != errors.genuine.shape:
        raise ConfigError(f"quality has shape {quality.shape}; expected {errors.genuine.shape}")
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.size == 0 or np.any((fr < 0) | (fr >= 1)):
        raise ConfigError("discard fractions must lie in [0, 1)")
    single = weights is None
    w = np.ones((1, quality.size)) if single else np.asarray(weights, dtype=np.float64)
    order = _discard_order(quality, seed)
    w = w[:, order]
    g, e = errors.genuine[order], errors.rejected[order]
    cum_w = np.cumsum(w, axis=1)
    # Suffix sums: the weighted pairs of probes k..N-1, with a zero past the end.
    pad = np.zeros((w.shape[0], 1))
    suffix_g = np.concatenate([np.cumsum((w * g)[:, ::-1], 1)[:, ::-1], pad], 1)
    suffix_e = np.concatenate([np.cumsum((w * e)[:, ::-1], 1)[:, ::-1], pad], 1)
    out = np.empty((w.shape[0], fr.size))
    for b in range(w.shape[0]):
        # Discard floor(f * total) copies: whole probes first, then part of the probe that
        # straddles the cut (a probe drawn k times is k copies of equal quality).
        cut = np.floor(fr * cum_w[b, -1] + 1e-9)
        k = np.searchsorted(cum_w[b], cut, side="right")
        inside = k < quality.size
        kk = np.minimum(k, quality.size - 1)
        part = np.where(inside, cum_w[b, kk] - cut, 0.0)
        kept_g = suffix_g[b, np.minimum(k + 1, quality.size)] + part * g[kk]
        kept_e = suffix_e[b, np.minimum(k + 1, quality.size)] + part * e[kk]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[b] = np.where(kept_g > 0, kept_e / kept_g, np.nan)
    return out[0] if single else out


def edc_pauc(fnmr: np.ndarray, fractions: Sequence[float] = DISCARD_FRACTIONS) -> np.ndarray:
    """Mean FNMR over discard fractions 0..:data:`PAUC_UPTO` (trapezoid area / 0.2): the
    partial area under the EDC on the FNMR scale (last axis of ``fnmr``)."""
    fr = np.asarray(fractions, dtype=np.float64)
    upto = fr <= PAUC_UPTO + 1e-12
    if upto.sum() < 2:
        raise ConfigError(f"the EDC needs at least two discard fractions in [0, {PAUC_UPTO}]")
    x, y = fr[upto], np.asarray(fnmr, dtype=np.float64)[..., upto]
    area = np.sum((y[..., 1:] + y[..., :-1]) * np.diff(x) / 2.0, axis=-1)
    return area / (x[-1] - x[0])


def identity_weights(identity: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, N) multiplicity of each probe: its identity's count in a draw of the
    identities with replacement."""
    ids, inverse = np.unique(np.asarray(identity), return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(ids.size, np.full(ids.size, 1.0 / ids.size), size=n_boot)
    return counts[:, inverse].astype(np.float64)


def edc_pauc_bootstrap(
    quality: np.ndarray,
    errors: ProbeErrors,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    tie_seed: int = 0,
) -> tuple[float, float, float]:
    """(point, low, high): the partial EDC area with a percentile interval over identities."""
    point = float(edc_pauc(edc(quality, errors, seed=tie_seed)))
    if n_boot <= 0:
        return point, float("nan"), float("nan")
    weights = identity_weights(errors.identity, n_boot, seed)
    reps = np.concatenate(
        [  # 100 replicates at a time: memory stays at a few (100, N) arrays
            edc_pauc(edc(quality, errors, weights=weights[i : i + 100], seed=tie_seed))
            for i in range(0, n_boot, 100)
        ]
    )
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return point, float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return point, float(low), float(high)


def norm_auc(clean: np.ndarray, degraded: np.ndarray) -> float:
    """P(clean norm > degraded norm) + P(equal) / 2: how well the norm separates the two."""
    c = np.sort(np.asarray(clean, dtype=np.float64))
    d = np.asarray(degraded, dtype=np.float64)
    if c.size == 0 or d.size == 0:
        raise ConfigError("norm AUC needs clean and degraded probes")
    below = np.searchsorted(c, d, side="left")  # clean norms < each degraded norm
    equal = np.searchsorted(c, d, side="right") - below
    greater = c.size - below - equal
    return float((greater.sum() + 0.5 * equal.sum()) / (c.size * d.size))


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = np.argsort(values, kind="stable")
    sorted_v = values[order]
    first = np.r_[True, sorted_v[1:] != sorted_v[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], values.size]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN if either is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise ConfigError("spearman needs two arrays of one shape with at least two values")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")
