"""lowres.identification against naive references written here: full score matrices, argsort
loops with explicit pessimistic ties, and a threshold sweep over every candidate threshold."""

import itertools

import numpy as np
import pytest
import scipy.stats
import torch

from lowres import identification
from lowres.errors import ConfigError, DataError
from lowres.identification import (
    bootstrap_rank_k,
    closed_set_search,
    cmc,
    open_set_rates,
    open_set_search,
    pool_templates,
    rank_k_accuracy,
    tpir_at_fpir,
)

# ----------------------------------------------------------------------------------------------
# naive references
# ----------------------------------------------------------------------------------------------


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def candidate_scores(scores_row, labels):
    """{label: best score} over one row of a score matrix."""
    out = {}
    for s, y in zip(scores_row, labels, strict=True):
        out[y] = max(out.get(y, -np.inf), s)
    return out


def naive_ranks(gallery, gy, probes, py, distractors=None, dy=None):
    """Full score matrix; per probe, candidates sorted by (score desc, true identity LAST)."""
    s_gal = unit(probes) @ unit(gallery).T
    s_dis = None if distractors is None else unit(probes) @ unit(distractors).T
    ranks, true_scores, top = [], [], []
    for i in range(len(probes)):
        per_id = candidate_scores(s_gal[i], gy)
        cands = [(score, y == py[i]) for y, score in per_id.items()]
        if s_dis is not None:
            if dy is None:
                cands += [(score, False) for score in s_dis[i]]
            else:
                cands += [(score, False) for score in candidate_scores(s_dis[i], dy).values()]
        scores = np.array([c[0] for c in cands])
        is_true = np.array([c[1] for c in cands])
        order = np.lexsort((is_true, -scores))  # ties: the true identity after all the others
        ranks.append(int(np.flatnonzero(is_true[order])[0]) + 1)
        true_scores.append(per_id[py[i]])
        top.append(scores.max())
    return np.array(ranks), np.array(true_scores), np.array(top)


def tie_features(rng, n, pool):
    """Rows drawn from a small pool of integer vectors with 4 nonzeros of one magnitude, scaled
    by 1..3: normalised entries are +-0.5 or 0, so every cosine is exact (a multiple of 1/4)
    and equal scores tie bit for bit in any summation order."""
    return pool[rng.integers(0, len(pool), n)] * rng.integers(1, 4, (n, 1))


def make_pool(rng, size, dim=6):
    vecs = []
    for pos in itertools.combinations(range(dim), 4):
        for signs in itertools.product((-1, 1), repeat=4):
            v = np.zeros(dim)
            v[list(pos)] = signs
            vecs.append(v)
    vecs = np.array(vecs)
    return vecs[rng.choice(len(vecs), size, replace=False)]


# ----------------------------------------------------------------------------------------------
# closed set
# ----------------------------------------------------------------------------------------------


@pytest.fixture(params=["numpy", "torch"])
def reduce_path(request, monkeypatch):
    """Run the block reductions through numpy (the CPU path) and through torch (the path used
    on accelerators), both on this CPU."""
    if request.param == "torch":
        monkeypatch.setattr(identification, "_reduce_with_numpy", lambda device: False)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(4))
def test_ranks_with_exact_ties_equal_naive(seed, dtype, reduce_path):
    rng = np.random.default_rng(seed)
    pool = make_pool(rng, 6)
    n_ids = 8
    gy = np.r_[np.arange(n_ids), rng.integers(0, n_ids, 10)]
    gallery = torch.tensor(tie_features(rng, len(gy), pool), dtype=dtype)
    py = rng.integers(0, n_ids, 30)
    probes = torch.tensor(tie_features(rng, len(py), pool), dtype=dtype)
    distractors = torch.tensor(tie_features(rng, 12, pool), dtype=dtype)
    dy = 100 + rng.integers(0, 4, 12)
    for dis, labels in ((None, None), (distractors, None), (distractors, dy)):
        ref_rank, ref_true, ref_top = naive_ranks(gallery, gy, probes, py, dis, labels)
        for block, probe_block in ((65536, 1024), (3, 2), (1, 1)):
            got = closed_set_search(
                gallery,
                gy,
                probes,
                py,
                distractors=dis,
                distractor_labels=labels,
                block=block,
                probe_block=probe_block,
            )
            np.testing.assert_array_equal(got.ranks, ref_rank)
            np.testing.assert_array_equal(got.true_scores, ref_true)
            np.testing.assert_array_equal(got.top_scores, ref_top)
        assert (ref_rank > 1).any() and len(np.unique(ref_true)) < len(ref_true)  # ties present


def test_pessimistic_tie_rule_by_hand():
    # probe = e0; identity 0 scores 1/sqrt(2), identity 1 ties it, identity 2 beats it
    gallery = np.array([[1, 1, 0], [1, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=np.float64)
    gy = np.array([0, 1, 2, 0])
    probes = np.array([[1.0, 0, 0], [0, 0, 1.0]])
    got = closed_set_search(gallery, gy, probes, np.array([0, 1]))
    # probe 0: others >= 0.707: identity 1 (tie) and 2 (1.0) -> rank 3
    # probe 1: identity 1 scores 0.707, nobody else > 0 ... identity 0's best is 0 -> rank 1
    np.testing.assert_array_equal(got.ranks, [3, 1])
    # a constant feature extractor gets the worst rank, never rank 1
    same = closed_set_search(np.ones((3, 2)), [0, 1, 2], np.ones((2, 2)), [0, 2])
    np.testing.assert_array_equal(same.ranks, [3, 3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streaming_tiny_blocks_equal_naive_on_random_data(dtype, reduce_path):
    rng = np.random.default_rng(5)
    n_ids, dim = 40, 16
    gy = np.r_[np.arange(n_ids), rng.integers(0, n_ids, 60)]
    centres = rng.normal(size=(n_ids, dim))
    gallery = (centres[gy] + 0.9 * rng.normal(size=(len(gy), dim))).astype(dtype)
    py = rng.integers(0, n_ids, 70)
    probes = (centres[py] + 0.9 * rng.normal(size=(len(py), dim))).astype(dtype)
    distractors = rng.normal(size=(150, dim)).astype(dtype)
    dy = -1 - rng.integers(0, 50, 150)
    for labels in (None, dy):
        ref_rank, ref_true, _ = naive_ranks(gallery, gy, probes, py, distractors, labels)
        got = closed_set_search(
            torch.from_numpy(gallery),
            gy,
            torch.from_numpy(probes),
            py,
            distractors=distractors,
            distractor_labels=labels,
            block=3,
            probe_block=7,
        )
        np.testing.assert_array_equal(got.ranks, ref_rank)
        np.testing.assert_allclose(
            got.true_scores, ref_true, atol=1e-5 if dtype == np.float32 else 1e-12
        )
        assert 1 < ref_rank.max() and (ref_rank == 1).any()
        n_dis = 150 if labels is None else len(np.unique(dy))
        assert got.n_candidates == n_ids + n_dis


def test_rank_k_cmc_and_clopper_pearson():
    ranks = np.array([1, 1, 2, 5, 3, 1, 9, 2, 1, 4])
    curve = cmc(ranks, 6)
    naive = [np.mean(ranks <= k) for k in range(1, 7)]
    np.testing.assert_allclose(curve, naive)
    for k in (1, 2, 5):
        acc = rank_k_accuracy(ranks, k, ci=0.9)
        n = int(np.sum(ranks <= k))
        assert (acc.k, acc.n_correct, acc.n_probes, acc.accuracy) == (k, n, 10, n / 10)
        ref = scipy.stats.binomtest(n, 10).proportion_ci(0.9, method="exact")
        np.testing.assert_allclose((acc.ci_low, acc.ci_high), (ref.low, ref.high), rtol=1e-9)


def test_bootstrap_over_identities_equals_expanded_probes():
    rng = np.random.default_rng(3)
    labels = np.array([7, 7, 7, 2, 2, 9, 4, 4, 4, 4])
    ranks = rng.integers(1, 4, labels.size)
    out = bootstrap_rank_k(ranks, labels, (1, 2), n_boot=50, seed=11)
    again = bootstrap_rank_k(ranks, labels, (1, 2), n_boot=50, seed=11)
    np.testing.assert_array_equal(out["reps"], again["reps"])
    assert not np.array_equal(
        out["reps"], bootstrap_rank_k(ranks, labels, (1, 2), seed=12)["reps"][:50]
    )
    np.testing.assert_allclose(out["point"], [np.mean(ranks <= 1), np.mean(ranks <= 2)])
    # replicate r: draw identities with replacement, take all their probes, recompute
    ids = np.unique(labels)
    draws = np.random.Generator(np.random.PCG64(11)).multinomial(
        ids.size, np.full(ids.size, 1 / ids.size), size=50
    )
    for r in range(50):
        drawn = np.repeat(ids, draws[r])
        sample = np.concatenate([ranks[labels == i] for i in drawn])
        np.testing.assert_allclose(out["reps"][r], [np.mean(sample <= 1), np.mean(sample <= 2)])
    assert np.all(out["low"] <= out["high"])


# ----------------------------------------------------------------------------------------------
# open set
# ----------------------------------------------------------------------------------------------


def naive_tpir_at_fpir(mated_scores, mated_ranks, nonmated, fpir):
    """Sweep every candidate threshold: best TPIR with FPIR <= target; on equal TPIR the
    highest threshold (lowest FPIR)."""
    hits = mated_scores[mated_ranks == 1]
    candidates = np.unique(np.r_[hits, nonmated, np.nextafter(nonmated.max(), np.inf)])
    best = None
    for t in candidates:
        f = np.mean(nonmated >= t)
        tp = np.sum(hits >= t) / mated_scores.size
        if f <= fpir and (best is None or tp > best[0] or (tp == best[0] and t > best[2])):
            best = (tp, f, t)
    if best[0] == 0:  # every threshold above the non-mated maximum: the next float above it
        t = np.nextafter(nonmated.max(), np.inf)
        best = (0.0, 0.0, t)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_tpir_at_fpir_equals_threshold_sweep_with_ties(seed):
    rng = np.random.default_rng(seed)
    grid = np.round(np.linspace(0, 1, 9), 3)  # few values: many ties
    mated = rng.choice(grid, 40)
    ranks = np.where(rng.random(40) < 0.8, 1, rng.integers(2, 5, 40))
    nonmated = rng.choice(grid[:-2], 25)
    for fpir in (0.01, 0.04, 0.1, 0.2, 0.33, 0.5, 0.9):
        got = tpir_at_fpir(mated, ranks, nonmated, fpir)
        tp, f, t = naive_tpir_at_fpir(mated, ranks, nonmated, fpir)
        assert (got.tpir, got.fpir_achieved, got.threshold) == (tp, f, t), fpir
        assert got.fnir == 1 - got.tpir and got.fpir_achieved <= fpir
        assert got.flagged == (fpir < 1 / 25)
        assert open_set_rates(mated, ranks, nonmated, got.threshold) == (f, tp)
        ref = scipy.stats.binomtest(round(tp * 40), 40).proportion_ci(0.95, method="exact")
        np.testing.assert_allclose((got.ci_low, got.ci_high), (ref.low, ref.high), rtol=1e-9)


def test_open_set_search_end_to_end(reduce_path):
    rng = np.random.default_rng(9)
    pool = make_pool(rng, 8)
    gy = np.arange(6)
    gallery = tie_features(rng, 6, pool)
    mated_y = rng.integers(0, 6, 20)
    mated = tie_features(rng, 20, pool)
    nonmated = tie_features(rng, 15, pool)
    res = open_set_search(gallery, gy, mated, mated_y, nonmated, nonmated_labels=np.arange(50, 65))
    ref_rank, ref_true, _ = naive_ranks(gallery, gy, mated, mated_y)
    np.testing.assert_array_equal(res.mated.ranks, ref_rank)
    np.testing.assert_array_equal(
        res.nonmated_top_scores, (unit(nonmated) @ unit(gallery).T).max(1)
    )
    got = tpir_at_fpir(res.mated.true_scores, res.mated.ranks, res.nonmated_top_scores, 0.2)
    tp, f, t = naive_tpir_at_fpir(ref_true, ref_rank, res.nonmated_top_scores, 0.2)
    assert (got.tpir, got.fpir_achieved, got.threshold) == (tp, f, t)


# ----------------------------------------------------------------------------------------------
# templates
# ----------------------------------------------------------------------------------------------


def test_pool_templates_by_hand():
    features = np.array([[3.0, 0], [0, 10.0], [0, 2.0], [-5.0, 0], [1.0, 1.0]])
    ids, pooled = pool_templates(features, [4, 4, 9, 2, 2])
    np.testing.assert_array_equal(ids, [2, 4, 9])
    # template 4: mean of (1, 0) and (0, 1) = (.5, .5) -> (1, 1)/sqrt2; the norm 10 does not weigh
    # template 2: mean of (-1, 0) and (1, 1)/sqrt2, normalised
    m2 = np.array([-1 + 2**-0.5, 2**-0.5]) / 2
    expected = np.array([m2 / np.linalg.norm(m2), [2**-0.5, 2**-0.5], [0, 1.0]])
    np.testing.assert_allclose(pooled, expected, atol=1e-12)
    ids2, pooled_t = pool_templates(
        torch.from_numpy(features), np.array([4, 4, 9, 2, 2]), templates=[9, 4]
    )
    assert isinstance(pooled_t, torch.Tensor)
    np.testing.assert_array_equal(ids2, [9, 4])
    np.testing.assert_allclose(pooled_t.numpy(), expected[[2, 1]], atol=1e-12)


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)


def test_errors():
    g, gy = np.eye(3), np.array([0, 1, 2])
    cases = [
        (
            DataError,
            "enrolled identity 5 has no gallery image",
            lambda: closed_set_search(g, gy, g, gy, enrolled=[0, 1, 5]),
        ),
        (
            DataError,
            "probe identity 7 has no gallery image",
            lambda: closed_set_search(g, gy, g, [0, 1, 7]),
        ),
        (
            DataError,
            "distractors has 0 rows",
            lambda: closed_set_search(g, gy, g, gy, distractors=np.zeros((0, 3))),
        ),
        (
            DataError,
            "distractor labels overlap",
            lambda: closed_set_search(g, gy, g, gy, distractors=g, distractor_labels=[9, 1, 8]),
        ),
        (
            DataError,
            "non-mated probe identity 2 is enrolled",
            lambda: open_set_search(g, gy, g, gy, g, nonmated_labels=[5, 2, 6]),
        ),
        (
            ConfigError,
            "FPIR must lie strictly between 0 and 1",
            lambda: tpir_at_fpir([0.5], [1], [0.2], 1.0),
        ),
        (
            ConfigError,
            "FPIR must lie strictly between 0 and 1",
            lambda: tpir_at_fpir([0.5], [1], [0.2], 0),
        ),
        (
            DataError,
            "template 3 has no media",
            lambda: pool_templates(g, [0, 0, 1], templates=[0, 3]),
        ),
        (
            ConfigError,
            "probe width 2 differs from gallery width 3",
            lambda: closed_set_search(g, gy, np.eye(2), [0, 1]),
        ),
        (
            ConfigError,
            "gallery labels must have shape",
            lambda: closed_set_search(g, [0, 1], g, gy),
        ),
        (ConfigError, "probe_labels must have shape", lambda: closed_set_search(g, gy, g, [0, 1])),
        (
            ConfigError,
            "distractor width 2 differs",
            lambda: closed_set_search(g, gy, g, gy, distractors=np.eye(2)),
        ),
        (ConfigError, "template_ids must have shape", lambda: pool_templates(g, [0, 1])),
        (
            ConfigError,
            "mated_scores .* must be 1-D of one length",
            lambda: tpir_at_fpir([0.5, 0.4], [1], [0.2], 0.1),
        ),
        (
            ConfigError,
            "distractors row 1 is all zeros",
            lambda: closed_set_search(g, gy, g, gy, distractors=np.array([[1.0, 0, 0], [0, 0, 0]])),
        ),
        (
            ConfigError,
            "block must be a positive integer",
            lambda: closed_set_search(g, gy, g, gy, block=0),
        ),
        (
            DataError,
            "cancel to a zero mean",
            lambda: pool_templates(np.array([[1.0, 0], [-1.0, 0]]), [0, 0]),
        ),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message) as excinfo:
            call()
        _one_line(excinfo)
