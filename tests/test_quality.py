"""The norm as a quality score (lowres.quality) against independent references: closed-form
EDCs of constructed cases, a naive per-fraction loop, physically duplicated probes for the
bootstrap weights, scipy's Spearman and sklearn's ROC AUC."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from lowres.errors import ConfigError
from lowres.quality import (
    DISCARD_FRACTIONS,
    ProbeErrors,
    edc,
    edc_pauc,
    edc_pauc_bootstrap,
    identity_weights,
    norm_auc,
    probe_errors,
    spearman,
)


def _one_pair_each(fails: np.ndarray) -> ProbeErrors:
    n = fails.size
    return ProbeErrors(np.ones(n, np.int64), fails.astype(np.int64), np.arange(n))


def test_quality_that_knows_the_errors_gives_the_known_curve():
    n, bad = 100, 20
    fails = np.zeros(n, bool)
    fails[:bad] = True
    quality = np.arange(n, dtype=float)  # the failing probes have the lowest quality
    got = edc(quality, _one_pair_each(fails))
    k = np.floor(DISCARD_FRACTIONS * n + 1e-9)
    expected = np.maximum(bad - k, 0) / (n - k)
    np.testing.assert_allclose(got, expected, atol=1e-15)
    assert got[0] == pytest.approx(0.2) and got[20] == 0.0 and got[-1] == 0.0


def test_quality_uncorrelated_with_errors_leaves_the_fnmr_flat():
    n = 100
    fails = np.arange(n) % 5 == 4  # one failure in every 5 consecutive qualities
    quality = np.arange(n, dtype=float)
    fractions = np.arange(0, 0.51, 0.05)
    got = edc(quality, _one_pair_each(fails), fractions)
    np.testing.assert_allclose(got, 0.2, atol=1e-12)
    assert edc_pauc(got, fractions) == pytest.approx(0.2)


def test_quality_that_is_backwards_makes_it_worse():
    fails = np.zeros(100, bool)
    fails[:20] = True
    got = edc(-np.arange(100.0), _one_pair_each(fails))  # keeps the failures longest
    assert got[0] == pytest.approx(0.2) and got[-1] == pytest.approx(0.4)


def _naive_edc(quality, genuine, rejected, fractions):
    order = sorted(range(len(quality)), key=lambda i: quality[i])
    out = []
    for f in fractions:
        kept = order[math.floor(f * len(quality) + 1e-9) :]
        g = sum(genuine[i] for i in kept)
        out.append(sum(rejected[i] for i in kept) / g if g else math.nan)
    return np.array(out)


def test_edc_equals_a_naive_loop_with_several_pairs_per_probe():
    rng = np.random.default_rng(3)
    n = 257
    genuine = rng.integers(0, 6, n)
    rejected = np.minimum(genuine, rng.integers(0, 4, n))
    quality = rng.normal(size=n)
    errors = ProbeErrors(genuine, rejected, np.arange(n) // 3)
    np.testing.assert_allclose(
        edc(quality, errors), _naive_edc(quality, genuine, rejected, DISCARD_FRACTIONS)
    )


def test_bootstrap_weights_equal_duplicated_probes():
    rng = np.random.default_rng(5)
    n = 60
    genuine = rng.integers(1, 4, n)
    rejected = np.minimum(genuine, rng.integers(0, 3, n))
    identity = np.arange(n) // 4
    quality = rng.normal(size=n)
    errors = ProbeErrors(genuine, rejected, identity)
    weights = identity_weights(identity, 7, seed=1)
    got = edc(quality, errors, weights=weights)
    for b in range(7):
        rep = np.repeat(np.arange(n), weights[b].astype(int))
        dup = ProbeErrors(genuine[rep], rejected[rep], identity[rep])
        np.testing.assert_allclose(got[b], edc(quality[rep], dup), atol=1e-12)
    # An identity drawn k times counts k times; every identity's probes move together.
    assert np.all(weights[:, ::4] == weights[:, 3::4])
    assert np.all(weights.sum(1) == n)


def test_bootstrap_interval_contains_the_point_and_is_seeded():
    rng = np.random.default_rng(0)
    n = 300
    quality = rng.normal(size=n)
    fails = rng.random(n) < 1 / (1 + np.exp(3 * quality))  # low quality fails more
    errors = ProbeErrors(np.ones(n, np.int64), fails.astype(np.int64), np.arange(n) // 5)
    point, low, high = edc_pauc_bootstrap(quality, errors, n_boot=200, seed=4)
    assert low <= point <= high and high - low < 0.2
    assert edc_pauc_bootstrap(quality, errors, n_boot=200, seed=4) == (point, low, high)


def test_probe_errors_counts_the_probe_side():
    labels = np.array([0, 0, 0, 1, 1])
    a, b = np.triu_indices(5, k=1)
    scores = np.linspace(-1, 1, a.size)
    issame = labels[a] == labels[b]
    got = probe_errors(scores, issame, b, labels, threshold=0.0)
    gen = np.zeros(5, int)
    rej = np.zeros(5, int)
    for s, same, j in zip(scores, issame, b, strict=True):
        if same:
            gen[j] += 1
            rej[j] += s < 0.0  # accept iff score >= threshold
    assert got.genuine.tolist() == gen.tolist() and got.rejected.tolist() == rej.tolist()


def test_norm_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(2)
    clean = rng.integers(0, 8, 50).astype(float)
    degraded = rng.integers(0, 6, 70).astype(float)
    y = np.r_[np.ones(50), np.zeros(70)]
    assert norm_auc(clean, degraded) == pytest.approx(roc_auc_score(y, np.r_[clean, degraded]))
    assert norm_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0


def test_spearman_equals_scipy_with_ties():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, 200).astype(float)
    y = x + rng.integers(0, 3, 200)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert math.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_bad_input_is_one_line():
    errors = _one_pair_each(np.zeros(4, bool))
    with pytest.raises(ConfigError, match="quality has shape"):
        edc(np.zeros(3), errors)
    with pytest.raises(ConfigError, match=r"discard fractions must lie in \[0, 1\)"):
        edc(np.zeros(4), errors, [0.5, 1.0])
    with pytest.raises(ConfigError, match="norm AUC needs"):
        norm_auc(np.zeros(0), np.ones(3))


def test_a_threshold_just_above_tied_float32_scores_rejects_them():
    """Collapsed features score 1.0 everywhere: tar_at_far puts the threshold at the next
    float64 above 1, and every genuine pair must count as rejected (FNMR 1), not accepted."""
    from lowres.metrics import tar_at_far

    labels = np.repeat(np.arange(4), 3)
    a, b = np.triu_indices(labels.size, k=1)
    scores = np.ones(a.size, dtype=np.float32)
    issame = labels[a] == labels[b]
    t = tar_at_far(scores, issame, 1e-2).threshold
    got = probe_errors(scores, issame, b, labels, t)
    assert got.rejected.sum() == got.genuine.sum() == issame.sum()
    assert edc(np.ones(labels.size), got)[0] == 1.0
