"""Metrics against independent references: sklearn, scipy, naive loops, materialised scores."""

import math

import numpy as np
import pytest
import torch
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score, roc_curve

from lowres import metrics
from lowres.errors import ConfigError
from lowres.metrics import (
    TarAtFar,
    all_vs_all_verification,
    auc,
    clopper_pearson,
    cross_verification,
    dprime,
    eer,
    kfold_accuracy,
    pairs_scores,
    rank1,
    rates_at_threshold,
    roc,
    tar_at_far,
)

FARS = (1e-3, 0.01, 0.05, 0.1, 0.3, 0.5, 0.9)


def _random(seed, n=600):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    s = rng.normal(size=n) + 1.2 * y
    return s, y


def _tied(seed, n=800):
    s, y = _random(seed, n)
    return np.round(s, 1), y


def _separated(seed, n=300):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.5
    s = np.where(y, rng.uniform(1, 2, n), rng.uniform(-1, 0.5, n))
    return s, y


CASES = [
    pytest.param(_random, id="random"),
    pytest.param(_tied, id="tied"),
    pytest.param(_separated, id="separated"),
]


def _brute_force(s, y, far):
    """Max TPR over sklearn's ROC points with FPR <= far, and that point's threshold."""
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    ok = np.flatnonzero(fpr <= far)
    best = ok[np.argmax(tpr[ok])]  # thresholds descend, so argmax picks the highest of ties
    return fpr[best], tpr[best], thr[best]


@pytest.mark.parametrize("make", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_match_sklearn(make, seed):
    s, y = make(seed)
    far, tar, thr = roc(s, y)
    ref_far, ref_tar, ref_thr = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_array_equal(far, ref_far)
    np.testing.assert_array_equal(tar, ref_tar)
    np.testing.assert_array_equal(thr, ref_thr)
    assert auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-14)
    # torch input and 0/1 integer labels give the same curve
    far_t, _, _ = roc(torch.as_tensor(s), torch.as_tensor(y.astype(np.int64)))
    np.testing.assert_array_equal(far_t, far)


@pytest.mark.parametrize("make", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tar_at_far_matches_brute_force(make, seed):
    s, y = make(seed)
    n_imp = int((~y).sum())
    for target in (*FARS, 0.5 / n_imp, 1.0 / n_imp, 3.0 / n_imp, 7.0 / n_imp):
        r = tar_at_far(s, y, target)
        fpr, tpr, thr = _brute_force(s, y, target)
        assert r.far_achieved == fpr <= target
        assert r.tar == tpr
        if np.isfinite(thr):
            assert r.threshold == thr
        else:  # sklearn's inf point: we report the next float above the boundary impostor
            assert r.tar == 0 and r.threshold == np.nextafter(s[~y].max(), np.inf)
        # the threshold reproduces the reported rates (accept iff score >= threshold)
        far_t, frr_t = rates_at_threshold(s, y, r.threshold)
        assert far_t == r.far_achieved and frr_t == pytest.approx(1 - r.tar, abs=1e-15)
        assert (r.n_genuine, r.n_impostor) == (int(y.sum()), n_imp)
        assert r.flagged == (target < 1 / n_imp)


def test_flagged_target_reports_far_zero_point():
    s, y = _random(3)
    n_imp = int((~y).sum())
    r = tar_at_far(s, y, 0.5 / n_imp)
    assert r.flagged and r.far_achieved == 0.0
    max_imp = s[~y].max()
    assert r.threshold > max_imp
    assert r.tar == np.mean(s[y] > max_imp)
    # max impostor is the top score: nothing is above it, threshold = next float
    s2 = np.array([0.9, 0.5, 0.4, 0.1])
    y2 = np.array([False, True, True, False])
    r2 = tar_at_far(s2, y2, 0.1)
    assert r2.flagged and r2.tar == 0.0 and r2.threshold == np.nextafter(0.9, np.inf)


def test_tied_impostors_at_threshold_are_all_accepted():
    # impostors tied at 0.8: accepting one accepts all three
    s = np.array([0.9, 0.8, 0.8, 0.8, 0.7, 0.95, 0.85, 0.6, 0.5, 0.4, 0.3, 0.2])
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    r = tar_at_far(s, y, 2 / 8)  # two impostors allowed, but the next three are tied
    assert r.threshold == 0.85 and r.far_achieved == 0.0 and r.tar == 0.75
    r = tar_at_far(s, y, 3 / 8)
    assert r.threshold == 0.7 and r.far_achieved == 3 / 8 and r.tar == 1.0


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (3, 17), (250, 1000), (1, 2)])
def test_clopper_pearson_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
    low, high = clopper_pearson(k, n, 0.9)
    assert low == pytest.approx(ref.low, abs=1e-9)
    assert high == pytest.approx(ref.high, abs=1e-9)


def test_tar_at_far_ci_is_clopper_pearson_on_tar():
    s, y = _random(4)
    r = tar_at_far(s, y, 0.05, ci=0.99)
    ref = binomtest(r.n_accepted_genuine, r.n_genuine).proportion_ci(0.99, method="exact")
    assert (r.ci_low, r.ci_high) == pytest.approx((ref.low, ref.high), abs=1e-9)
    assert r.ci_level == 0.99 and r.ci_low <= r.tar <= r.ci_high
    with pytest.raises(AttributeError):
        r.tar = 1.0  # frozen


@pytest.mark.parametrize("make", CASES)
def test_eer_matches_brentq_on_sklearn_roc(make):
    for seed in range(3):
        s, y = make(seed)
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        ref = brentq(lambda x, f=fpr, t=tpr: 1.0 - x - interp1d(f, t)(x), 0.0, 1.0, xtol=1e-14)
        assert eer(s, y) == pytest.approx(ref, abs=1e-10)


def test_dprime_formula():
    s, y = _random(5)
    g, i = s[y], s[~y]
    ref = abs(g.mean() - i.mean()) / math.sqrt((g.var() + i.var()) / 2)
    assert dprime(s, y) == pytest.approx(ref, rel=1e-14)


def _naive_kfold(s, y, fold_id):
    accs = []
    for f in np.unique(fold_id):
        train, test = fold_id != f, fold_id == f
        best_t, best_acc = None, -1.0
        for t in np.unique(s[train]):  # ascending, strict '>' keeps the smallest on ties
            acc = np.mean((s[train] >= t) == y[train])
            if acc > best_acc:
                best_t, best_acc = t, acc
        accs.append(np.mean((s[test] >= best_t) == y[test]))
    return np.mean(accs), np.std(accs)


@pytest.mark.parametrize("make", CASES)
def test_kfold_accuracy_matches_naive(make):
    s, y = make(6, n=407)  # 407 does not split evenly into 10 folds
    contiguous = np.repeat(np.arange(10), [len(a) for a in np.array_split(np.arange(407), 10)])
    mean, std = kfold_accuracy(s, y, 10)
    ref_mean, ref_std = _naive_kfold(s, y, contiguous)
    assert mean == pytest.approx(ref_mean, abs=1e-15) and std == pytest.approx(ref_std, abs=1e-15)
    ids = np.random.default_rng(0).integers(0, 5, s.size)
    assert kfold_accuracy(s, y, ids) == pytest.approx(_naive_kfold(s, y, ids), abs=1e-15)


def _clustered(seed, n_ids=13, per_id=5, dim=8, dyadic=False):
    """Features; dyadic ones have four +-1 entries so normalised rows are exactly +-0.5."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_ids).repeat_interleave(per_id)
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    if dyadic:
        feats = torch.zeros(labels.numel(), dim, dtype=torch.float64)
        for row in range(labels.numel()):
            base = int(labels[row]) % dim
            cols = [(base + o) % dim for o in (0, 1, 2)]
            cols.append(int(torch.randint(dim, (1,), generator=g)))
            for c in cols:
                feats[row, c] += 1.0 if torch.rand(1, generator=g) < 0.8 else -1.0
            if (feats[row] != 0).sum() != 4:  # collided column: fall back to four fixed ones
                feats[row] = 0
                feats[row, :4] = 1.0
        return feats, labels
    centers = torch.randn(n_ids, dim, generator=g)
    feats = centers[labels] + 0.8 * torch.randn(labels.numel(), dim, generator=g)
    return feats, labels


def _materialised(gallery, probe, labels, normalize=True):
    if normalize:
        gallery = gallery / gallery.norm(dim=1, keepdim=True)
        probe = probe / probe.norm(dim=1, keepdim=True)
    i, j = torch.triu_indices(gallery.shape[0], gallery.shape[0], offset=1)
    scores = (gallery[i] * probe[j]).sum(dim=1)
    return scores.double().numpy(), (labels[i] == labels[j]).numpy()


@pytest.mark.parametrize("dyadic,normalize", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("reducer", ["numpy", "torch"])
def test_streaming_equals_materialised(dyadic, normalize, cross, reducer, monkeypatch):
    # the torch reducer is what accelerators run; force it here to test it on CPU
    monkeypatch.setattr(metrics, "_reduce_with_numpy", lambda device: reducer == "numpy")
    feats, labels = _clustered(7, dyadic=dyadic)
    if not dyadic:  # integer-valued features: every dot product is exact in any order
        feats = torch.round(feats * 4).double()
    probe = feats.roll(1, dims=1) if cross else feats  # rolled rows stay exactly normalisable
    s, y = _materialised(feats, probe, labels, normalize)
    fars = (1e-4, 0.004, 0.01, 0.1, 0.5)  # 1e-4 < 1 / n_impostor: flagged
    ref = {f: tar_at_far(s, y, f) for f in fars}
    assert ref[1e-4].flagged
    assert not dyadic or len(np.unique(s)) < s.size / 50  # dyadic scores are heavily tied
    for block in (3, 13, 16, 1000):  # 65 rows: 3 and 16 do not divide it
        res = all_vs_all_verification(
            feats,
            labels,
            fars,
            block=block,
            probe_features=probe if cross else None,
            normalize=normalize,
            histogram_bins=20,
            histogram_range=(float(s.min()), float(s.max())),
            roc_summary=True,
        )
        assert res.n_genuine == int(y.sum()) and res.n_impostor == int((~y).sum())
        for f in fars:
            assert res[f] == ref[f]  # every field: threshold, counts, CI, flag
        np.testing.assert_array_equal(np.sort(res.genuine_scores), np.sort(s[y]))
        k = res.impostor_top.size
        np.testing.assert_array_equal(res.impostor_top, np.sort(s[~y])[::-1][:k])
        assert res.auc == auc(s, y) and res.eer == pytest.approx(eer(s, y), abs=1e-15)
        assert res.impostor_mean == pytest.approx(s[~y].mean(), abs=1e-12)
        assert res.dprime == pytest.approx(dprime(s, y), rel=1e-9)
        counts, edges = res.impostor_histogram
        ref_counts, _ = np.histogram(s[~y], bins=edges)
        np.testing.assert_array_equal(counts, ref_counts)


def test_streaming_random_features_and_cross_helper():
    feats, labels = _clustered(8, n_ids=20, per_id=6, dim=16)
    noisy = feats + 0.3 * torch.randn(feats.shape, generator=torch.Generator().manual_seed(1))
    s, y = _materialised(feats.double(), noisy.double(), labels)
    res = cross_verification(feats.double(), noisy.double(), labels, (0.01, 0.1), block=33)
    for f in (0.01, 0.1):
        ref = tar_at_far(s, y, f)
        assert res[f].tar == ref.tar and res[f].far_achieved == ref.far_achieved
        assert res[f].threshold == pytest.approx(ref.threshold, abs=1e-12)
    # float32 numpy input works and agrees on counts
    res32 = all_vs_all_verification(feats.numpy(), labels.numpy(), 0.1, block=50)
    s32, y32 = _materialised(feats, feats, labels)
    assert res32[0.1].tar == tar_at_far(s32, y32, 0.1).tar


def test_pairs_scores_and_rank1():
    feats, labels = _clustered(9, n_ids=10, per_id=4, dim=16)
    idx_a, idx_b = torch.tensor([0, 3, 5, 7]), torch.tensor([1, 2, 9, 7])
    got = pairs_scores(feats, feats, idx_a, idx_b)
    fn = feats.double() / feats.double().norm(dim=1, keepdim=True)
    ref = (fn[idx_a] * fn[idx_b]).sum(1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert got[3] == pytest.approx(1.0, abs=1e-6)

    gallery_mask = torch.zeros(labels.numel(), dtype=torch.bool)
    for c in range(10):
        gallery_mask[torch.nonzero(labels == c)[0, 0]] = True
    g, gy = feats[gallery_mask], labels[gallery_mask]
    p, py = feats[~gallery_mask], labels[~gallery_mask]
    distractors = torch.randn(50, 16, generator=torch.Generator().manual_seed(2))

    def naive(dis):
        pool = torch.cat([g, dis]) if dis is not None else g
        pool_y = torch.cat([gy, torch.full((len(pool) - len(g),), -1)])
        pool = pool / pool.norm(dim=1, keepdim=True)
        q = p / p.norm(dim=1, keepdim=True)
        hits = [
            int(pool_y[int(torch.argmax(pool @ qi))]) == int(qy)
            for qi, qy in zip(q, py, strict=True)
        ]
        return float(np.mean(hits))

    assert rank1(g, gy, p, py) == naive(None)
    assert rank1(g, gy, p, py, distractors, block=7) == naive(distractors)
    with pytest.raises(ConfigError):
        rank1(g[1:], gy[1:], p, py)  # a probe identity missing from the gallery


@pytest.mark.parametrize("far", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_bad_far_raises(far):
    s, y = _random(0)
    with pytest.raises(ConfigError, match="FAR"):
        tar_at_far(s, y, far)
    feats, labels = _clustered(0)
    with pytest.raises(ConfigError, match="FAR"):
        all_vs_all_verification(feats, labels, [0.01, far])


def test_bad_inputs_raise_one_line_config_errors():
    s, y = _random(0)
    feats, labels = _clustered(0)
    bad_feats = feats.clone()
    bad_feats[3, 2] = float("nan")
    s_nan = s.copy()
    s_nan[5] = np.nan
    calls = [
        lambda: all_vs_all_verification(bad_feats, labels, 0.01),
        lambda: all_vs_all_verification(feats, labels[:-1], 0.01),
        lambda: all_vs_all_verification(feats, torch.arange(len(labels)), 0.01),  # no genuine
        lambda: pairs_scores(bad_feats, feats, [0], [1]),
        lambda: rank1(bad_feats, labels, feats, labels),
        lambda: tar_at_far(s_nan, y, 0.01),
        lambda: tar_at_far(s[:-1], y, 0.01),
        lambda: tar_at_far(s[y], y[y], 0.01),  # no impostors
        lambda: tar_at_far(s[~y], y[~y], 0.01),  # no genuine
        lambda: roc([], []),
        lambda: roc(s, np.where(y, 2, 0)),
        lambda: kfold_accuracy(s, y, 1),
        lambda: kfold_accuracy(s, y, np.zeros(s.size, dtype=int)),
        lambda: rates_at_threshold(s, y, float("nan")),
        lambda: clopper_pearson(3, 2),
    ]
    for call in calls:
        with pytest.raises(ConfigError) as info:
            call()
        assert "\n" not in str(info.value)


def test_tar_at_far_is_frozen_dataclass_with_contract_fields():
    r = tar_at_far(*_random(1), 0.1)
    assert isinstance(r, TarAtFar)
    for name in ("far_target", "threshold", "far_achieved", "tar", "n_genuine", "n_impostor"):
        assert hasattr(r, name)
    assert r.far_target == 0.1 and r.far_achieved <= 0.1
