"""Exact verification and identification metrics, including a streaming all-vs-all path.

Conventions shared by every function here:

* A pair is **accepted** iff ``score >= threshold`` (higher score = more similar).
* ``labels`` for score lists are "is the same identity": bool, or integers in {0, 1}.
* Everything is computed exactly in float64 from the given scores: no threshold grids, no
  interpolation of TAR at a FAR. The only interpolation anywhere is EER, which is by definition
  the crossing of the ROC polyline with ``FAR = FRR`` (see :func:`eer`).
* Bad input raises :class:`lowres.errors.ConfigError` with a one-line message.

Threshold semantics of :func:`tar_at_far` (shared by :func:`all_vs_all_verification`): let ``c``
be the largest impostor count with ``c / n_impostor <= far`` (the same float division sklearn's
``roc_curve`` uses) and ``b`` the ``(c+1)``-th largest impostor score. A threshold keeps FAR at
most the target iff it lies above ``b``, and TAR only grows as the threshold falls, so the best
TAR is ``#(genuine > b) / n_genuine``. Among the thresholds reaching it, the reported one is the
one with the lowest FAR, i.e. the ROC corner: the smallest genuine score above ``b``. That is
exactly the point and threshold a brute-force search over ``sklearn.metrics.roc_curve`` finds
(max TPR with FPR <= target; highest threshold among equal TPR). Impostors tied with ``b`` are
all rejected; impostors tied with the threshold are all accepted and counted in
``far_achieved``. When no genuine score exceeds ``b`` (TAR 0, sklearn's ``inf`` point) the
threshold is ``np.nextafter(max_impostor, inf)``: it accepts no impostor, like ``inf``, but stays
finite and usable for threshold transfer. A target below ``1 / n_impostor`` (``c == 0``) is
``flagged``: its answer is the FAR-0 point (threshold = smallest genuine above the largest
impostor, or the next float above that impostor), never an interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lowres.errors import ConfigError

__all__ = [
    "TarAtFar",
    "VerificationResult",
    "all_vs_all_verification",
    "auc",
    "clopper_pearson",
    "cross_verification",
    "dprime",
    "eer",
    "kfold_accuracy",
    "pairs_scores",
    "rank1",
    "rates_at_threshold",
    "roc",
    "tar_at_far",
]

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_scores_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(scores float64 (P,), is_same bool (P,))`` or raise ConfigError."""
    s = _to_numpy(scores)
    y = _to_numpy(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise ConfigError(
            f"scores and labels must be 1-D, got shapes {s.shape} and {y.shape}; flatten them"
        )
    if s.shape[0] != y.shape[0]:
        raise ConfigError(
            f"scores and labels differ in length ({s.shape[0]} vs {y.shape[0]}); "
            "pass one label per score"
        )
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise ConfigError(f"scores must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if not np.isfinite(s).all():
        bad = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ConfigError(
            f"scores contain NaN/inf (first at index {bad}); check the features for NaN"
        )
    if y.dtype != np.bool_:
        if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
            raise ConfigError(f"labels must be bool or 0/1, got dtype {y.dtype}")
        if not np.isin(y, (0, 1)).all():
            raise ConfigError("labels must be bool or 0/1 (1 = same identity); got other values")
        y = y.astype(bool)
    n_gen = int(y.sum())
    if n_gen == 0 or n_gen == y.shape[0]:
        kind = "genuine (label 1)" if n_gen == 0 else "impostor (label 0)"
        raise ConfigError(f"no {kind} pairs among {y.shape[0]} scores; both kinds are needed")
    return s, y


def _check_far(far: float) -> float:
    try:
        value = float(far)
    except (TypeError, ValueError):
        raise ConfigError(f"FAR must be a number in (0, 1), got {far!r}") from None
    if not 0.0 < value < 1.0:  # also rejects NaN
        raise ConfigError(f"FAR must lie strictly between 0 and 1, got {far!r}; e.g. 1e-3")
    return value


def _check_fars(fars: float | Sequence[float]) -> list[float]:
    items = [fars] if np.isscalar(fars) else list(fars)  # type: ignore[arg-type]
    if not items:
        raise ConfigError("no FAR targets given; pass e.g. fars=(1e-4, 1e-3)")
    return [_check_far(f) for f in items]


def _check_ci(ci: float) -> float:
    try:
        value = float(ci)
    except (TypeError, ValueError):
        raise ConfigError(f"confidence level must be a number in (0, 1), got {ci!r}") from None
    if not 0.0 < value < 1.0:
        raise ConfigError(f"confidence level must lie in (0, 1), got {ci!r}; e.g. 0.95")
    return value


def _allowed_impostors(far: float, n_impostor: int) -> int:
    """Largest count ``c`` with ``c / n_impostor <= far`` under float64 division (as sklearn)."""
    c = min(max(math.floor(far * n_impostor), 0), n_impostor)
    while c + 1 <= n_impostor and (c + 1) / n_impostor <= far:
        c += 1
    while c > 0 and c / n_impostor > far:
        c -= 1
    return c


# ----------------------------------------------------------------------------------------------
# ROC and friends
# ----------------------------------------------------------------------------------------------


def roc(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC curve, identical to ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.

    One point per distinct score (tied scores form a single point, possibly a diagonal step),
    preceded by the ``(0, 0)`` point whose threshold is ``inf``.

    Args:
        scores: (P,) similarity scores, higher = more similar.
        labels: (P,) bool or 0/1, 1 = genuine (same identity).

    Returns:
        ``(far, tar, thresholds)``, each float64 of shape (T + 1,) where T is the number of
        distinct scores; ``thresholds`` is strictly decreasing, and point ``k`` accepts
        ``score >= thresholds[k]``.
    """
    s, y = _check_scores_labels(scores, labels)
    order = np.argsort(s, kind="mergesort")[::-1]
    s_sorted = s[order]
    y_sorted = y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(y_sorted, dtype=np.int64)[last_of_group]
    fps = (last_of_group + 1) - tps
    far = np.r_[0.0, fps / fps[-1]]
    tar = np.r_[0.0, tps / tps[-1]]
    thresholds = np.r_[np.inf, s_sorted[last_of_group]]
    return far, tar, thresholds


@dataclass(frozen=True)
class TarAtFar:
    """TAR at a FAR target, with everything needed to judge it.

    Attributes:
        far_target: the requested FAR.
        threshold: accept iff ``score >= threshold`` (see module docstring for the choice).
        far_achieved: impostors accepted / ``n_impostor``; always ``<= far_target``.
        tar: genuine pairs accepted / ``n_genuine``.
        n_genuine, n_impostor: number of pairs behind the estimate.
        ci_low, ci_high: Clopper-Pearson interval on ``tar`` at ``ci_level``.
        flagged: ``far_target < 1 / n_impostor``; the FAR-0 point is reported instead.
        ci_level: confidence level of the interval.
    """

    far_target: float
    threshold: float
    far_achieved: float
    tar: float
    n_genuine: int
    n_impostor: int
    ci_low: float
    ci_high: float
    flagged: bool
    ci_level: float = 0.95

    @property
    def n_accepted_genuine(self) -> int:
        return round(self.tar * self.n_genuine)

    @property
    def n_accepted_impostor(self) -> int:
        return round(self.far_achieved * self.n_impostor)


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided binomial interval for ``successes / trials``.

    Equals ``scipy.stats.binomtest(k, n).proportion_ci(level, method="exact")``; computed with
    the inverse regularised incomplete beta function instead of root finding.
    """
    from scipy.special import betaincinv  # here, not at the top: scipy adds 0.5 s to start-up

    level = _check_ci(level)
    if trials <= 0 or not 0 <= successes <= trials:
        raise ConfigError(f"need 0 <= successes <= trials, trials > 0; got {successes}/{trials}")
    alpha = (1.0 - level) / 2.0
    low = 0.0 if successes == 0 else float(betaincinv(successes, trials - successes + 1, alpha))
    high = (
        1.0
        if successes == trials
        else float(betaincinv(successes + 1, trials - successes, 1 - alpha))
    )
    return low, high


def _tar_at_far_sorted(
    genuine_desc: np.ndarray,
    impostor_top_desc: np.ndarray,
    n_impostor: int,
    far: float,
    ci: float,
) -> TarAtFar:
    """Core of :func:`tar_at_far` from sorted scores.

    ``impostor_top_desc`` holds (at least) the ``c + 1`` largest impostor scores in descending
    order, where ``c`` is the allowed impostor count at ``far``; that is all the answer needs,
    which is what lets the streaming path keep only a top-k.
    """
    n_genuine = genuine_desc.size
    c = _allowed_impostors(far, n_impostor)
    boundary = impostor_top_desc[c]
    n_gen_above = int(np.searchsorted(-genuine_desc, -boundary, side="left"))
    if n_gen_above:
        threshold = float(genuine_desc[n_gen_above - 1])
    else:  # TAR is 0 at every allowed threshold; the best of them rejects every impostor
        threshold = float(np.nextafter(impostor_top_desc[0], np.inf))
    # every accepted impostor is above the boundary, hence among the top c
    accepted_imp = int(np.count_nonzero(impostor_top_desc[:c] >= threshold))
    ci_low, ci_high = clopper_pearson(n_gen_above, n_genuine, ci)
    return TarAtFar(
        far_target=far,
        threshold=threshold,
        far_achieved=accepted_imp / n_impostor,
        tar=n_gen_above / n_genuine,
        n_genuine=int(n_genuine),
        n_impostor=int(n_impostor),
        ci_low=ci_low,
        ci_high=ci_high,
        flagged=c == 0,
        ci_level=ci,
    )


def _top_desc(values: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest values, descending (O(n) selection, then a sort of k)."""
    if k >= values.size:
        return np.sort(values)[::-1]
    part = np.partition(values, values.size - k)[values.size - k :]
    return np.sort(part)[::-1]


def tar_at_far(scores: ArrayLike, labels: ArrayLike, far: float, ci: float = 0.95) -> TarAtFar:
    """Exact TAR at "FAR at most ``far``", with threshold, impostor count and a CI.

    Maximises TAR over all thresholds whose achieved FAR is ``<= far``; no interpolation. The
    result equals the best point of ``sklearn.metrics.roc_curve`` with ``fpr <= far`` (same TAR,
    same FAR, same threshold, except that sklearn's ``inf`` becomes
    ``nextafter(max_impostor, inf)``); see the module docstring.

    Args:
        scores: (P,) similarity scores.
        labels: (P,) bool or 0/1, 1 = genuine.
        far: target FAR in (0, 1).
        ci: confidence level of the Clopper-Pearson interval on TAR.

    Returns:
        TarAtFar; ``flagged`` when ``far < 1 / n_impostor``.
    """
    far = _check_far(far)
    ci = _check_ci(ci)
    s, y = _check_scores_labels(scores, labels)
    imp = s[~y]
    c = _allowed_impostors(far, imp.size)
    genuine_desc = np.sort(s[y])[::-1]
    return _tar_at_far_sorted(genuine_desc, _top_desc(imp, c + 1), imp.size, far, ci)


def rates_at_threshold(
    scores: ArrayLike, labels: ArrayLike, threshold: float
) -> tuple[float, float]:
    """FAR and FRR at a fixed threshold (accept iff ``score >= threshold``).

    Use it for threshold transfer: fix ``threshold`` with :func:`tar_at_far` on clean data, then
    measure the achieved error rates on degraded data.

    Returns:
        ``(far, frr)``: impostors accepted / impostors, genuine rejected / genuine.
    """
    s, y = _check_scores_labels(scores, labels)
    t = float(threshold)
    if math.isnan(t):
        raise ConfigError("threshold is NaN; pass a number (e.g. TarAtFar.threshold)")
    accepted = s >= t
    far = float(np.count_nonzero(accepted & ~y)) / np.count_nonzero(~y)
    frr = float(np.count_nonzero(~accepted & y)) / np.count_nonzero(y)
    return far, frr


def _impostor_counts_at(values: np.ndarray, impostors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ascending ``values``: #impostors < v and #impostors <= v, for each v (int64)."""
    imp_sorted = np.sort(impostors)
    lt = np.searchsorted(imp_sorted, values, side="left").astype(np.int64)
    le = np.searchsorted(imp_sorted, values, side="right").astype(np.int64)
    return lt, le


def _auc_from_counts(
    counts: np.ndarray, imp_lt: np.ndarray, imp_le: np.ndarray, n_impostor: int
) -> float:
    """P(g > i) + P(g == i) / 2 from per-unique-genuine-value counts (exact integer sum)."""
    n_genuine = int(counts.sum())
    # the sum is at most 2 * n_genuine * n_impostor; Python ints once that could overflow int64
    wide = 2 * n_genuine * n_impostor >= 2**63
    terms = counts.astype(object if wide else np.int64) * (imp_lt + imp_le)
    twice_wins = int(terms.sum())
    return twice_wins / (2 * n_genuine * n_impostor)


def _eer_from_counts(
    counts: np.ndarray, imp_lt: np.ndarray, imp_le: np.ndarray, n_impostor: int
) -> float:
    """EER on the ROC polyline, from the vertices at every distinct genuine value.

    Between two distinct genuine values the ROC is horizontal (only impostors cross), so the
    points just above and at each genuine value (``Q_u``, ``P_u``) are the only corners; the
    polyline through them is the full ``roc`` polyline.
    """
    n_genuine = int(counts.sum())
    gen_ge = np.cumsum(counts[::-1])[::-1]  # #genuine >= value[u]
    gen_gt = gen_ge - counts
    # descending threshold order: for u = G-1 .. 0: Q_u (just above value u), then P_u
    fps = np.empty(2 * counts.size + 2, dtype=np.int64)
    tps = np.empty_like(fps)
    fps[0], tps[0] = 0, 0
    fps[1:-1:2] = (n_impostor - imp_le)[::-1]
    tps[1:-1:2] = gen_gt[::-1]
    fps[2:-1:2] = (n_impostor - imp_lt)[::-1]
    tps[2:-1:2] = gen_ge[::-1]
    fps[-1], tps[-1] = n_impostor, n_genuine
    far = fps / n_impostor
    frr = 1.0 - tps / n_genuine
    diff = far - frr  # non-decreasing from -1 to 1
    k = int(np.argmax(diff >= 0))
    if diff[k] == 0 or k == 0:
        return float(far[k])
    t = -diff[k - 1] / (diff[k] - diff[k - 1])
    return float(far[k - 1] + t * (far[k] - far[k - 1]))


def auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Exact area under the ROC curve, equal to ``sklearn.metrics.roc_auc_score``.

    Computed as the Mann-Whitney statistic ``P(g > i) + P(g == i) / 2`` in integer arithmetic,
    which is the trapezoidal area of the tie-aware ROC.
    """
    s, y = _check_scores_labels(scores, labels)
    values, counts = np.unique(s[y], return_counts=True)
    lt, le = _impostor_counts_at(values, s[~y])
    return _auc_from_counts(counts, lt, le, int((~y).sum()))


def eer(scores: ArrayLike, labels: ArrayLike) -> float:
    """Equal error rate: where the ROC polyline of :func:`roc` crosses ``FAR = FRR``.

    A straight ROC segment between two adjacent thresholds is what randomising between them
    achieves, so the crossing is interpolated linearly on that segment (the same value as
    ``brentq(lambda x: 1 - x - interp1d(far, tar)(x), 0, 1)`` on the sklearn ROC).
    """
    s, y = _check_scores_labels(scores, labels)
    values, counts = np.unique(s[y], return_counts=True)
    lt, le = _impostor_counts_at(values, s[~y])
    return _eer_from_counts(counts, lt, le, int((~y).sum()))


def _dprime_from_moments(mu_g: float, var_g: float, mu_i: float, var_i: float) -> float:
    spread = math.sqrt((var_g + var_i) / 2.0)
    gap = abs(mu_g - mu_i)
    if spread == 0.0:
        # One constant for both (a model giving every image the same feature): the two
        # distributions coincide, so there is no separation, d' = 0 rather than 0/0.
        return 0.0 if gap == 0.0 else math.inf
    return gap / spread


def dprime(scores: ArrayLike, labels: ArrayLike) -> float:
    """Decidability ``d' = |mu_g - mu_i| / sqrt((var_g + var_i) / 2)``.

    Variances are population variances (ddof=0). ``inf`` when both sets are constant and differ;
    0 when both are one and the same constant (no separation).

    >>> dprime([0.5, 0.5, 0.5], [1, 0, 0])
    0.0
    """
    s, y = _check_scores_labels(scores, labels)
    g, i = s[y], s[~y]
    return _dprime_from_moments(float(g.mean()), float(g.var()), float(i.mean()), float(i.var()))


# ----------------------------------------------------------------------------------------------
# LFW-style k-fold accuracy
# ----------------------------------------------------------------------------------------------


def _best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold among the unique ``scores`` maximising accuracy; the smallest one on ties."""
    values, inverse = np.unique(scores, return_inverse=True)
    gen_at = np.bincount(inverse, weights=labels, minlength=values.size)
    imp_at = np.bincount(inverse, weights=~labels, minlength=values.size)
    # threshold values[u]: genuine accepted = genuine >= values[u]; impostors rejected = < values[u]
    gen_ge = np.cumsum(gen_at[::-1])[::-1]
    imp_lt = np.cumsum(imp_at) - imp_at
    correct = gen_ge + imp_lt
    return float(values[int(np.argmax(correct))])


def kfold_accuracy(
    scores: ArrayLike, labels: ArrayLike, folds: int | ArrayLike = 10
) -> tuple[float, float]:
    """LFW-style verification accuracy: threshold picked on k-1 folds, scored on the held-out one.

    For each fold, the threshold is the unique score of the *training* folds with the highest
    training accuracy (accept iff ``score >= threshold``; the smallest such score on ties),
    searched exactly over all of them; it is then applied to the held-out fold.

    Args:
        scores: (P,) similarity scores.
        labels: (P,) bool or 0/1, 1 = genuine.
        folds: number of contiguous, near-equal folds in the given order (LFW's pairs.txt lists
            its 10 folds of 600 one after another), or an explicit (P,) integer fold id per pair.

    Returns:
        ``(mean, std)`` of the per-fold accuracies; std is the population std (ddof=0), as in
        the LFW evaluation code.
    """
    s, y = _check_scores_labels(scores, labels)
    n = s.size
    if isinstance(folds, (int, np.integer)) and not isinstance(folds, bool):
        k = int(folds)
        if not 2 <= k <= n:
            raise ConfigError(f"folds must be between 2 and the number of pairs ({n}), got {k}")
        fold_id = np.repeat(np.arange(k), [len(a) for a in np.array_split(np.arange(n), k)])
    else:
        fold_id = _to_numpy(folds)
        if fold_id.shape != (n,) or not np.issubdtype(fold_id.dtype, np.integer):
            raise ConfigError(
                f"folds must be an int or an integer array of shape ({n},), "
                f"got {fold_id.dtype} {fold_id.shape}"
            )
    fold_values = np.unique(fold_id)
    if fold_values.size < 2:
        raise ConfigError("k-fold accuracy needs at least 2 distinct folds; check the fold ids")
    accuracies = []
    for f in fold_values:
        test = fold_id == f
        threshold = _best_threshold(s[~test], y[~test])
        accuracies.append(float(np.mean((s[test] >= threshold) == y[test])))
    acc = np.asarray(accuracies)
    return float(acc.mean()), float(acc.std())


# ----------------------------------------------------------------------------------------------
# feature-level helpers
# ----------------------------------------------------------------------------------------------


def _features(x: ArrayLike, name: str, device: torch.device | str | None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ConfigError(f"{name} must be 2-D (N, D), got shape {tuple(t.shape)}")
    if not torch.is_floating_point(t):
        t = t.float()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()  # half/bfloat16 embeddings: score in float32
    if device is not None:
        t = t.to(device)
    if not torch.isfinite(t).all():
        bad = int(torch.nonzero(~torch.isfinite(t).all(dim=1))[0, 0])
        raise ConfigError(f"{name} contain NaN/inf (first in row {bad}); re-run the embedding")
    return t


def _normalized(t: torch.Tensor, name: str) -> torch.Tensor:
    norms = torch.linalg.vector_norm(t, dim=1, keepdim=True)
    if bool((norms == 0).any()):
        bad = int(torch.nonzero(norms[:, 0] == 0)[0, 0])
        raise ConfigError(f"{name} row {bad} is all zeros; cosine similarity is undefined")
    return t / norms


def _labels(x: ArrayLike, n: int, name: str, device: torch.device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.shape != (n,):
        raise ConfigError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ConfigError(f"{name} must be integer identity ids, got {t.dtype}")
    return t.to(device=device, dtype=torch.int64)


def pairs_scores(
    features_a: ArrayLike,
    features_b: ArrayLike,
    idx_a: ArrayLike,
    idx_b: ArrayLike,
    *,
    normalize: bool = True,
    block: int = 65536,
) -> np.ndarray:
    """Scores of an explicit pair list (LFW pairs.txt, InsightFace ``.bin``).

    Pair ``p`` is ``features_a[idx_a[p]]`` vs ``features_b[idx_b[p]]``; pass the same features
    twice for one-set protocols, or clean vs degraded features for cross-resolution pairs.

    Args:
        features_a: (Na, D) features.
        features_b: (Nb, D) features.
        idx_a, idx_b: (P,) integer row indices.
        normalize: cosine similarity if True, plain dot product otherwise.
        block: pairs scored per step (bounds memory to ``block * D`` floats).

    Returns:
        (P,) float64 scores.
    """
    a = _features(features_a, "features_a", None)
    b = _features(features_b, "features_b", a.device)
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"feature widths differ ({a.shape[1]} vs {b.shape[1]}); same model?")
    if normalize:
        a, b = _normalized(a, "features_a"), _normalized(b, "features_b")
    ia = torch.as_tensor(_to_numpy(idx_a)).to(a.device)
    ib = torch.as_tensor(_to_numpy(idx_b)).to(a.device)
    integer = not any(t.dtype.is_floating_point or t.dtype == torch.bool for t in (ia, ib))
    if ia.ndim != 1 or ia.shape != ib.shape or not integer:
        raise ConfigError("idx_a and idx_b must be integer arrays of one common shape (P,)")
    for idx, n, name in ((ia, a.shape[0], "idx_a"), (ib, b.shape[0], "idx_b")):
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ConfigError(f"{name} has indices outside 0..{n - 1}; check the pair list")
    dtype = torch.promote_types(a.dtype, b.dtype)
    out = torch.empty(ia.numel(), dtype=dtype, device=a.device)
    for start in range(0, ia.numel(), block):
        sl = slice(start, start + block)
        out[sl] = (a[ia[sl]].to(dtype) * b[ib[sl]].to(dtype)).sum(dim=1)
    return out.cpu().numpy().astype(np.float64)


def rank1(
    gallery_f: ArrayLike,
    gallery_y: ArrayLike,
    probe_f: ArrayLike,
    probe_y: ArrayLike,
    distractors_f: ArrayLike | None = None,
    *,
    block: int = 8192,
    device: torch.device | str | None = None,
) -> float:
    """Closed-set rank-1 identification rate by cosine similarity, with optional distractors.

    A probe is correct iff its most similar entry among gallery + distractors is a gallery
    entry of its own identity. Exact ties go to the gallery entry listed first (gallery before
    distractors). Scored in blocks of ``block`` gallery/distractor rows.

    Args:
        gallery_f: (G, D) gallery features; gallery_y: (G,) integer identities.
        probe_f: (Q, D) probe features; probe_y: (Q,) identities, each present in the gallery.
        distractors_f: (M, D) features of identities outside the gallery, or None.

    Returns:
        Fraction of probes identified correctly at rank 1.
    """
    g = _normalized(_features(gallery_f, "gallery_f", device), "gallery_f")
    p = _normalized(_features(probe_f, "probe_f", g.device), "probe_f")
    gy = _labels(gallery_y, g.shape[0], "gallery_y", g.device)
    py = _labels(probe_y, p.shape[0], "probe_y", g.device)
    if g.shape[1] != p.shape[1]:
        raise ConfigError(f"gallery and probe widths differ ({g.shape[1]} vs {p.shape[1]})")
    if not bool(torch.isin(py, gy).all()):
        raise ConfigError(
            "some probe identities are missing from the gallery; rank-1 is closed-set"
        )
    sets = [(g, gy)]
    if distractors_f is not None:
        d = _normalized(_features(distractors_f, "distractors_f", g.device), "distractors_f")
        if d.shape[1] != g.shape[1]:
            raise ConfigError(f"distractor width {d.shape[1]} differs from gallery {g.shape[1]}")
        sets.append((d, torch.full((d.shape[0],), -1, dtype=torch.int64, device=g.device)))
    dtype = torch.promote_types(g.dtype, p.dtype)
    best = torch.full((p.shape[0],), -math.inf, dtype=dtype, device=g.device)
    best_y = torch.full((p.shape[0],), -1, dtype=torch.int64, device=g.device)
    for feats, ids in sets:
        for start in range(0, feats.shape[0], block):
            sim = p.to(dtype) @ feats[start : start + block].to(dtype).T
            val, arg = sim.max(dim=1)
            better = val > best  # strict: earlier entries win exact ties
            best = torch.where(better, val, best)
            best_y = torch.where(better, ids[start : start + block][arg], best_y)
    return float((best_y == py).double().mean())


# ----------------------------------------------------------------------------------------------
# streaming all-vs-all verification
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerificationResult:
    """Result of :func:`all_vs_all_verification`.

    Attributes:
        tar_at_far: FAR target -> exact TarAtFar (identical to :func:`tar_at_far` on all scores).
        genuine_scores: (n_genuine,) float64, every genuine score, in block order.
        n_genuine, n_impostor: pair counts.
        impostor_top: (k,) float64, the k largest impostor scores, descending; k is
            ``c_max + 1`` for the largest target, enough to place every threshold exactly.
        impostor_mean, impostor_var: mean and population variance of all impostor scores
            (float64 running sums; equal to the materialised values up to float64 rounding).
        impostor_histogram: ``(counts int64 (B,), edges float64 (B+1,))`` or None.
        auc, eer: exact AUC/EER (second pass, ``roc_summary=True``) or None.
    """

    tar_at_far: dict[float, TarAtFar]
    genuine_scores: np.ndarray
    n_genuine: int
    n_impostor: int
    impostor_top: np.ndarray
    impostor_mean: float
    impostor_var: float
    impostor_histogram: tuple[np.ndarray, np.ndarray] | None = None
    auc: float | None = None
    eer: float | None = None
    extra: dict = field(default_factory=dict)

    def __getitem__(self, far: float) -> TarAtFar:
        return self.tar_at_far[far]

    @property
    def dprime(self) -> float:
        g = self.genuine_scores
        return _dprime_from_moments(
            float(g.mean()), float(g.var()), self.impostor_mean, self.impostor_var
        )


def _pair_blocks(
    gallery: torch.Tensor, probe: torch.Tensor, labels: torch.Tensor, block: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(sim, same, upper)`` for each block of the upper triangle (pairs ``i < j``).

    ``sim`` (b1, b2) similarities, ``same`` (b1, b2) bool same-identity, ``upper`` the ``j > i``
    mask on diagonal blocks and None elsewhere (every pair there has ``i < j``).
    """
    n = gallery.shape[0]
    for r0 in range(0, n, block):
        rows = gallery[r0 : r0 + block]
        row_lab = labels[r0 : r0 + block]
        for c0 in range(r0, n, block):
            sim = rows @ probe[c0 : c0 + block].T
            same = row_lab[:, None] == labels[c0 : c0 + block][None, :]
            upper = torch.ones_like(same).triu_(diagonal=1) if c0 == r0 else None
            yield sim, same, upper


def _reduce_with_numpy(device: torch.device) -> bool:
    """Whether block reductions run in numpy (CPU) rather than torch (accelerators)."""
    return device.type == "cpu"


class _Accumulator:
    """Reduces similarity blocks to genuine scores, impostor top-k, moments and histogram.

    On CPU the block work runs in numpy: boolean indexing and reductions over a 4096^2 block
    are 5-15x faster there than in torch's CPU kernels (measured on 2 cores), while the
    matrix product itself stays in torch. On other devices everything stays in torch.
    """

    def __init__(self, k: int, edges: np.ndarray | None, device: torch.device) -> None:
        self.k = k
        self.edges = edges
        self.use_numpy = _reduce_with_numpy(device)
        self.genuine: list = []
        self.top: list = []
        self.top_size = 0
        self.kth = -math.inf  # k-th largest impostor so far; smaller ones never enter the top-k
        self.sum = 0.0
        self.sumsq = 0.0
        self.hist = np.zeros(0 if edges is None else edges.size - 1, dtype=np.int64)
        if not self.use_numpy and edges is not None:
            self.edges_t = torch.as_tensor(edges, device=device)
            self.hist_t = torch.zeros(edges.size - 1, dtype=torch.int64, device=device)
        if not self.use_numpy:
            self.sum_t = torch.zeros((), dtype=torch.float64, device=device)
            self.sumsq_t = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, sim: torch.Tensor, same: torch.Tensor, upper: torch.Tensor | None) -> None:
        if self.use_numpy:
            self._add_numpy(sim.numpy(), same.numpy(), None if upper is None else upper.numpy())
        else:
            self._add_torch(sim, same, upper)
        if self.top_size >= 2 * self.k:
            self._compress()

    def _add_numpy(self, sim: np.ndarray, same: np.ndarray, upper: np.ndarray | None) -> None:
        gen_mask = same if upper is None else same & upper
        imp_mask = ~same if upper is None else ~same & upper
        gen = sim[gen_mask]
        self.genuine.append(gen)
        imp = None
        if upper is None and self.edges is None:
            # whole block minus the few genuine scores: no copy of the impostors needed
            self.sum += float(sim.sum(dtype=np.float64)) - float(gen.sum(dtype=np.float64))
            self.sumsq += float(np.einsum("ij,ij->", sim, sim, dtype=np.float64)) - float(
                np.dot(gen.astype(np.float64), gen.astype(np.float64))
            )
        else:
            imp = sim[imp_mask].astype(np.float64)
            self.sum += float(imp.sum())
            self.sumsq += float(np.dot(imp, imp))
            if self.edges is not None:
                lo, hi = self.edges[0], self.edges[-1]
                self.hist += np.histogram(np.clip(imp, lo, hi), bins=self.edges)[0]
        if self.kth == -math.inf:
            cand = sim[imp_mask] if imp is None else imp.astype(sim.dtype)
        else:
            cand = sim[imp_mask & (sim > self.kth)]
        self.top.append(cand)
        self.top_size += cand.size

    def _add_torch(self, sim: torch.Tensor, same: torch.Tensor, upper: torch.Tensor | None) -> None:
        gen_mask = same if upper is None else same & upper
        imp_mask = ~same if upper is None else ~same & upper
        self.genuine.append(sim[gen_mask])
        imp = sim[imp_mask]
        imp64 = imp.double()
        self.sum_t += imp64.sum()
        self.sumsq_t += torch.dot(imp64, imp64)
        if self.edges is not None:
            # np.histogram's bins: [e_b, e_{b+1}), the last one closed; outliers clipped in
            pos = torch.searchsorted(self.edges_t, imp64, right=True) - 1
            self.hist_t += torch.bincount(
                pos.clamp_(0, self.hist_t.numel() - 1), minlength=self.hist_t.numel()
            )
        cand = imp[imp > self.kth]
        self.top.append(cand)
        self.top_size += cand.numel()

    def _compress(self) -> None:
        k = self.k
        if self.use_numpy:
            buf = np.concatenate(self.top)
            if buf.size > k:
                buf = np.partition(buf, buf.size - k)[buf.size - k :]
                self.kth = float(buf.min())
        else:
            buf = torch.cat(self.top)
            if buf.numel() > k:
                buf = torch.topk(buf, k, sorted=False).values
                self.kth = float(buf.min())
        self.top = [buf]
        self.top_size = len(buf)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(genuine float64, impostor top-k float64 descending)``; fix the moments."""
        self._compress()
        top, gen = self.top[0], self.genuine
        if not self.use_numpy:
            top, gen = top.cpu().numpy(), [g.cpu().numpy() for g in gen]
            self.sum, self.sumsq = float(self.sum_t), float(self.sumsq_t)
            if self.edges is not None:
                self.hist = self.hist_t.cpu().numpy()
        genuine = np.concatenate(gen).astype(np.float64)
        return genuine, np.sort(top.astype(np.float64))[::-1]


def _impostor_counts_streaming(
    values: np.ndarray,
    blocks: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """#impostors < v and <= v for each ascending genuine value v, over a pass of blocks."""
    # x < values[u] iff #(values <= x) <= u, so a cumsum over right-insertion positions
    # counts impostors below each value; left positions count those at or below it
    lt = np.zeros(values.size + 1, dtype=np.int64)
    le = np.zeros_like(lt)
    vals_t = torch.as_tensor(values, dtype=torch.float64, device=device)
    for sim, same, upper in blocks:
        imp_mask = ~same if upper is None else ~same & upper
        if _reduce_with_numpy(device):
            imp = sim.numpy()[imp_mask.numpy()].astype(np.float64)
            lt += np.bincount(np.searchsorted(values, imp, side="right"), minlength=lt.size)
            le += np.bincount(np.searchsorted(values, imp, side="left"), minlength=lt.size)
        else:
            imp = sim[imp_mask].double()
            for side_right, out in ((True, lt), (False, le)):
                pos = torch.searchsorted(vals_t, imp, right=side_right)
                out += torch.bincount(pos, minlength=lt.size).cpu().numpy()
    return np.cumsum(lt)[:-1], np.cumsum(le)[:-1]


def _gallery_and_probe(features, probe_features, normalize: bool, device):
    """(gallery, probe, dtype): the features as tensors of one promoted dtype on the compute
    device, L2-normalised for cosine; probe is the gallery itself without ``probe_features``."""
    gallery = _features(features, "features", device)
    if probe_features is None:
        probe = gallery
    else:
        probe = _features(probe_features, "probe_features", gallery.device)
        if probe.shape != gallery.shape:
            raise ConfigError(
                f"probe_features shape {tuple(probe.shape)} differs from features "
                f"{tuple(gallery.shape)}; they must be the same images"
            )
    dtype = torch.promote_types(gallery.dtype, probe.dtype)
    gallery, probe = gallery.to(dtype), probe.to(dtype)
    if normalize:
        gallery = _normalized(gallery, "features")
        probe = gallery if probe_features is None else _normalized(probe, "probe_features")
    return gallery, probe, dtype


def _all_vs_all_counts(lab: torch.Tensor, n: int) -> tuple[int, int]:
    """(genuine, impostor) pair counts of all-vs-all over ``n`` labelled images; both > 0."""
    _, per_id = torch.unique(lab, return_counts=True)
    n_genuine = int((per_id * (per_id - 1) // 2).sum())
    n_impostor = n * (n - 1) // 2 - n_genuine
    if n_genuine == 0:
        raise ConfigError("no identity has two images; all-vs-all needs genuine pairs")
    if n_impostor == 0:
        raise ConfigError("all images share one identity; all-vs-all needs impostor pairs")
    return n_genuine, n_impostor


def _histogram_edges(bins: int, value_range: tuple[float, float]) -> np.ndarray | None:
    """``bins + 1`` equal-width edges over ``value_range``, or None for no histogram."""
    if bins < 0:
        raise ConfigError(f"histogram_bins must be >= 0, got {bins}")
    lo, hi = (float(v) for v in value_range)
    if bins and not lo < hi:
        raise ConfigError(f"histogram_range must be (low, high) with low < high, got {value_range}")
    return np.linspace(lo, hi, bins + 1) if bins else None


def all_vs_all_verification(
    features: ArrayLike,
    labels: ArrayLike,
    fars: float | Sequence[float] = (1e-4, 1e-3, 1e-2),
    *,
    block: int = 4096,
    probe_features: ArrayLike | None = None,
    normalize: bool = True,
    ci: float = 0.95,
    histogram_bins: int = 0,
    histogram_range: tuple[float, float] = (-1.0, 1.0),
    roc_summary: bool = False,
    device: torch.device | str | None = None,
) -> VerificationResult:
    """All-vs-all verification over N embeddings without materialising the N^2 scores.

    Pairs are all ``(i, j)`` with ``i < j``; a pair is genuine iff ``labels[i] == labels[j]``.
    Similarities are computed ``block x block`` at a time (upper triangle only). All genuine
    scores are kept (there are few); of the impostors only a running top-k is kept, with
    ``k = c_max + 1`` where ``c_max`` is the impostor count allowed at the largest FAR target,
    which is exactly what :func:`tar_at_far` needs. Memory is ``O(block^2 + k + n_genuine)``.
    The result equals :func:`tar_at_far` on the materialised score list (same thresholds, same
    counts) whenever the scores themselves are bitwise equal.

    Cross-resolution: with ``probe_features`` (e.g. clean gallery vs degraded probes), pair
    ``(i, j)``, ``i < j``, scores ``features[i]`` against ``probe_features[j]``: the same pair set
    and labels as plain all-vs-all, only the second image of each pair is the degraded one.
    Same-image pairs ``(i, i)`` are never scored.

    Scores are computed in float32 unless the features are float64; ``device`` picks where
    (default: where ``features`` lives).

    Args:
        features: (N, D) embeddings (torch or numpy).
        labels: (N,) integer identity ids.
        fars: one FAR target or several, each in (0, 1).
        block: rows/columns per similarity block.
        probe_features: (N, D) second-image embeddings, or None.
        normalize: cosine similarity if True (rows L2-normalised), dot product otherwise.
        ci: confidence level of the TAR intervals.
        histogram_bins: if > 0, also count impostor scores in this many equal bins over
            ``histogram_range`` (scores outside are clipped into the end bins).
        roc_summary: if True, a second pass over the blocks counts impostors against the sorted
            genuine scores and gives exact AUC and EER (about twice the time).
        device: compute device.

    Returns:
        VerificationResult (indexable by FAR target: ``result[1e-3]`` is a TarAtFar).
    """
    far_list = _check_fars(fars)
    ci = _check_ci(ci)
    if int(block) < 1:
        raise ConfigError(f"block must be a positive integer, got {block!r}")
    block = int(block)
    gallery, probe, dtype = _gallery_and_probe(features, probe_features, normalize, device)
    n = gallery.shape[0]
    lab = _labels(labels, n, "labels", gallery.device)
    n_genuine, n_impostor = _all_vs_all_counts(lab, n)
    k = _allowed_impostors(max(far_list), n_impostor) + 1
    edges = _histogram_edges(histogram_bins, histogram_range)
    acc = _Accumulator(k, edges, gallery.device)
    for sim, same, upper in _pair_blocks(gallery, probe, lab, block):
        acc.add(sim, same, upper)
    genuine, top_desc = acc.finish()
    genuine_desc = np.sort(genuine)[::-1]

    results = {
        far: _tar_at_far_sorted(genuine_desc, top_desc, n_impostor, far, ci) for far in far_list
    }
    mean = acc.sum / n_impostor
    var = max(acc.sumsq / n_impostor - mean * mean, 0.0)
    histogram = None if edges is None else (acc.hist, edges)

    auc_value = eer_value = None
    if roc_summary:
        values, counts = np.unique(genuine, return_counts=True)
        blocks = _pair_blocks(gallery, probe, lab, block)
        imp_lt, imp_le = _impostor_counts_streaming(values, blocks, gallery.device)
        auc_value = _auc_from_counts(counts, imp_lt, imp_le, n_impostor)
        eer_value = _eer_from_counts(counts, imp_lt, imp_le, n_impostor)

    return VerificationResult(
        tar_at_far=results,
        genuine_scores=genuine,
        n_genuine=n_genuine,
        n_impostor=n_impostor,
        impostor_top=top_desc,
        impostor_mean=mean,
        impostor_var=var,
        impostor_histogram=histogram,
        auc=auc_value,
        eer=eer_value,
        extra={"block": block, "k": k, "device": str(gallery.device), "dtype": str(dtype)},
    )


def cross_verification(
    features_a: ArrayLike,
    features_b: ArrayLike,
    labels: ArrayLike,
    fars: float | Sequence[float] = (1e-4, 1e-3, 1e-2),
    **kwargs,
) -> VerificationResult:
    """Gallery ``features_a`` (e.g. clean) vs probe ``features_b`` (e.g. degraded), all-vs-all.

    Same as ``all_vs_all_verification(features_a, labels, fars, probe_features=features_b,
    **kwargs)``: pair ``(i, j)``, ``i < j``, scores ``features_a[i]`` against ``features_b[j]``.
    """
    return all_vs_all_verification(features_a, labels, fars, probe_features=features_b, **kwargs)
