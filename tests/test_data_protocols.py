"""Protocols: LFW pair lists, all-vs-all pairs against a naive loop, identity-disjoint folds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lowres.data.dataset import FaceDataset
from lowres.data.manifest import load_manifest
from lowres.data.protocols import (
    all_vs_all_pairs,
    identity_folds,
    pair_counts,
    read_lfw_pairs,
)
from lowres.errors import DataError

LFW = Path(__file__).resolve().parents[1] / "data_manifests" / "lfw"


def test_lfw_view2_has_6000_pairs_in_10_folds_of_300_plus_300():
    pairs = read_lfw_pairs(LFW / "pairs.txt")
    assert len(pairs) == 6000
    assert (pairs.num_genuine, pairs.num_impostor) == (3000, 3000)
    assert pairs.num_folds == 10
    for f in range(10):
        in_fold = pairs.fold == f
        assert int(in_fold.sum()) == 600
        assert int(pairs.issame[in_fold].sum()) == 300
    genuine = torch.nonzero(pairs.issame).flatten().tolist()
    assert all(pairs.name_a[i] == pairs.name_b[i] for i in genuine)
    assert (pairs.name_a[0], int(pairs.num_a[0]), int(pairs.num_b[0])) == ("Abel_Pacheco", 1, 4)


def test_lfw_view1_has_2200_train_and_1000_test_pairs():
    train = read_lfw_pairs(LFW / "pairsDevTrain.txt")
    test = read_lfw_pairs(LFW / "pairsDevTest.txt")
    assert (len(train), train.num_genuine, train.num_folds) == (2200, 1100, 1)
    assert (len(test), test.num_genuine, test.num_folds) == (1000, 500, 1)


def test_lfw_pair_lists_match_the_sha256_in_the_manifest():
    m = load_manifest(LFW.parent / "lfw.toml")
    assert set(m.protocol_files) == {"view1_train", "view1_test", "view2"}
    for pf in m.protocol_files.values():
        assert pf.verify() == pf.path


def test_truncated_pair_list_is_a_data_error(tmp_path):
    bad = tmp_path / "pairs.txt"
    bad.write_text("\n".join((LFW / "pairs.txt").read_text().splitlines()[:-3]) + "\n")
    with pytest.raises(DataError, match="truncated"):
        read_lfw_pairs(bad)
    bad.write_text("2\nA 1 2\nA x 3\nA 1 B 1\nA 2 B 2\n")
    with pytest.raises(DataError, match=r"pairs.txt:3: expected an integer"):
        read_lfw_pairs(bad)


def test_all_vs_all_matches_a_naive_double_loop():
    labels = torch.randint(0, 6, (37,), generator=torch.Generator().manual_seed(1))
    idx_a, idx_b, same = all_vs_all_pairs(labels)
    naive = [(i, j, bool(labels[i] == labels[j])) for i in range(37) for j in range(37) if i < j]
    assert list(zip(idx_a.tolist(), idx_b.tolist(), same.tolist(), strict=True)) == naive
    assert idx_a.dtype == torch.int64 and same.dtype == torch.bool
    genuine = sum(s for _, _, s in naive)
    assert pair_counts(labels) == (genuine, len(naive) - genuine)


def test_identity_folds_are_disjoint_cover_all_ids_and_are_seeded():
    labels = torch.arange(40).repeat_interleave(10)
    folds = identity_folds(labels, 4, seed=0)
    tests = [te for _, te in folds]
    assert [len(te) for te in tests] == [10] * 4
    assert sorted(torch.cat(tests).tolist()) == list(range(40))
    for train, test in folds:
        assert len(train) == 30
        assert not set(train.tolist()) & set(test.tolist())
        assert sorted(train.tolist() + test.tolist()) == list(range(40))
    again = identity_folds(labels, 4, seed=0)
    other = identity_folds(labels, 4, seed=1)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))
    uneven = identity_folds(torch.arange(7), 3, seed=0)
    assert sorted(len(te) for _, te in uneven) == [2, 2, 3]
    with pytest.raises(DataError, match="n_folds"):
        identity_folds(labels, 41)


def test_subset_relabels_contiguously_and_keeps_names_and_pairs():
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    ds = FaceDataset("t", images, torch.tensor([0, 0, 1, 1, 2, 2]), ["a", "b", "c"])
    sub = ds.select_identities(torch.tensor([0, 2]))
    assert sub.identities == ["a", "c"]
    assert sub.labels.tolist() == [0, 0, 1, 1]
    assert sub.images[:, 0, 0, 0].tolist() == [0, 1, 4, 5]
    assert sub.image_size == (2, 2) and sub.channels == 1


@pytest.mark.parametrize("name", ["orl", "synth"])
def test_test_split_alone_equals_the_test_part_of_the_split(name, monkeypatch):
    from lowres.data import get_split, get_test_split, synthetic

    tiny = synthetic.SynthPreset(40, 4, 12, 4, (28, 24), (56, 48), 1)
    monkeypatch.setitem(synthetic.PRESETS, "tinydata", tiny)
    preset = "tinydata" if name == "synth" else None
    _, test = get_split(name, fold=1, seed=0, preset=preset)
    alone = get_test_split(name, fold=1, seed=0, preset=preset)
    assert torch.equal(alone.images, test.images)
    assert torch.equal(alone.labels, test.labels)
    assert alone.identities == test.identities
