"""lowres.bootstrap: exact identity-resampled TAR@FAR against a naive weighted loop, the
point against lowres.metrics, interval behaviour, seeding and seed pairing."""

from __future__ import annotations

import numpy as np
import pytest

from lowres import bootstrap as B
from lowres.errors import ConfigError


def _pairs(n_ids: int, per_id: int, sep: float, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_ids), per_id)
    a, b = np.triu_indices(labels.size, 1)
    ia, ib = labels[a], labels[b]
    scores = np.round(rng.normal(0, 0.2, a.size) + sep * (ia == ib), 2)  # rounding: ties
    return scores, ia, ib


def _naive_weighted_tar(scores, ia, ib, k, far):
    same = ia == ib
    wg, gs = k[ia[same]], scores[same]
    wi, si = k[ia[~same]] * k[ib[~same]], scores[~same]
    total = wi.sum()
    for v in np.unique(si)[::-1]:
        if wi[si >= v].sum() / total > far:
            return wg[gs > v].sum() / wg.sum()
    return 1.0


def test_weighted_tar_matches_naive_and_metrics():
    from lowres.metrics import tar_at_far

    fars = [0.01, 0.05, 0.3]
    scores, ia, ib = _pairs(15, 4, 0.3, 0)
    data = B.boot_data(scores, ia, ib, 15, max(fars))
    rng = np.random.default_rng(1)
    for _ in range(15):
        k = rng.multinomial(15, np.full(15, 1 / 15))
        got = B.weighted_tar(data, k[None, :], fars)[0]
        want = [_naive_weighted_tar(scores, ia, ib, k, f) for f in fars]
        np.testing.assert_allclose(got, want)
    ones = B.weighted_tar(data, np.ones((1, 15), np.int64), fars)[0]
    np.testing.assert_allclose(ones, [tar_at_far(scores, ia == ib, f).tar for f in fars])


def test_bootstrap_interval_contains_point_and_shrinks():
    fars = [0.01, 0.1]

    def width(n_ids):
        better, ia, ib = _pairs(n_ids, 4, 0.35, 2)
        worse, _, _ = _pairs(n_ids, 4, 0.25, 3)
        out = B.bootstrap_tar([[(better, ia, ib), (worse, ia, ib)]], fars, n_boot=300, seed=7)
        assert np.all(out["diff_low"] <= out["diff_point"])
        assert np.all(out["diff_point"] <= out["diff_high"])
        assert np.all(out["low"] <= out["point"]) and np.all(out["point"] <= out["high"])
        return out["diff_high"] - out["diff_low"]

    assert np.all(width(80) < width(10))


def test_bootstrap_is_seeded_and_pairs_seeds():
    a, ia, ib = _pairs(12, 3, 0.3, 4)
    b, _, _ = _pairs(12, 3, 0.3, 5)
    one = B.bootstrap_tar([[(a, ia, ib), (b, ia, ib)]], [0.1], n_boot=100, seed=3)
    two = B.bootstrap_tar([[(a, ia, ib), (b, ia, ib)]], [0.1], n_boot=100, seed=3)
    np.testing.assert_array_equal(one["reps"], two["reps"])
    seeds = B.bootstrap_tar(
        [[(a, ia, ib), (b, ia, ib)], [(b, ia, ib), (a, ia, ib)]], [0.1], n_boot=100, seed=3
    )
    # Two seeds with the models swapped: the mean difference is exactly zero.
    np.testing.assert_allclose(seeds["diff_point"], 0.0, atol=1e-12)


def test_bad_input_is_a_config_error():
    scores, ia, ib = _pairs(5, 2, 0.3, 9)
    with pytest.raises(ConfigError, match="at least one"):
        B.bootstrap_tar([], [0.1])
    with pytest.raises(ConfigError, match="replicates"):
        B.bootstrap_tar([[(scores, ia, ib)]], [0.1], n_boot=0)
