"""Manifests (schema, env expansion, builtins agreeing with code), pairs-kind datasets, MNIST-5k."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from lowres.data import get_split, list_datasets, load_dataset, split_dataset
from lowres.data.manifest import expand_path, load_manifest
from lowres.data.mnist import mnist_split
from lowres.errors import DataError
from lowres.files import sha256_file

MANIFESTS = Path(__file__).resolve().parents[1] / "data_manifests"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRES_CACHE", str(tmp_path / "cache"))


def test_every_shipped_manifest_is_valid():
    names = {load_manifest(p).name for p in MANIFESTS.glob("*.toml")}
    assert {"orl", "lfw", "mnist", "example_identity_folders"} <= names
    listed = {row["name"]: row for row in list_datasets()}
    assert listed["orl"]["available"] and listed["orl"]["kind"] == "builtin"
    assert {"orl", "mnist", "synth", "lfw", "example_identity_folders"} <= set(listed)


def test_builtin_manifests_agree_with_the_loaded_data():
    for name in ("orl", "mnist"):
        m = load_manifest(MANIFESTS / f"{name}.toml")
        ds = load_dataset(name)
        assert ds.image_size == m.image_size and ds.channels == m.channels
        assert ds.meta["credit"] == m.credit


def test_root_env_expansion_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRES_TEST_ROOT", str(tmp_path / "data"))
    assert expand_path("$LOWRES_TEST_ROOT/x", None, what="root") == tmp_path / "data" / "x"
    assert expand_path("${LOWRES_TEST_ROOT}/x", None, what="root") == tmp_path / "data" / "x"
    assert expand_path("rel/x", tmp_path, what="root") == tmp_path / "rel" / "x"
    monkeypatch.delenv("LOWRES_TEST_ROOT")
    with pytest.raises(DataError, match="LOWRES_TEST_ROOT, which is not set"):
        expand_path("$LOWRES_TEST_ROOT/x", None, what="root")


def _lfw_like(tmp_path: Path) -> Path:
    """Two folds of 1 genuine + 1 impostor pair over 4 people, LFW file layout."""
    root = tmp_path / "lfwmini"
    people = {"Ann_A": 2, "Bob_B": 1, "Cid_C": 2, "Dee_D": 1}
    for p, (name, count) in enumerate(people.items()):
        for k in range(1, count + 1):
            path = root / name / f"{name}_{k:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 10), (40 * p, 20 * k, 100)).save(path)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\t1\nAnn_A\t1\t2\nAnn_A\t1\tBob_B\t1\nCid_C\t1\t2\nCid_C\t2\tDee_D\t1\n")
    (tmp_path / "lfwmini.toml").write_text(
        f'name = "lfwmini"\nkind = "pairs"\nroot = "lfwmini"\nimage_size = [10, 12]\n'
        f'channels = 3\n[protocol]\ntype = "lfw-pairs"\ndefault = "view2"\n'
        f'[protocol.files.view2]\npath = "pairs.txt"\nsha256 = "{sha256_file(pairs)}"\n'
    )
    return tmp_path / "lfwmini.toml"


def test_pairs_kind_attaches_pairs_and_splits_by_fold(tmp_path):
    ds = load_dataset(_lfw_like(tmp_path))
    assert len(ds) == 6 and ds.identities == ["Ann_A", "Bob_B", "Cid_C", "Dee_D"]
    assert ds.images.shape == (6, 3, 10, 12)
    p = ds.pairs
    assert len(p) == 4 and p.issame.tolist() == [True, False, True, False]
    for i in range(4):
        assert ds.identities[ds.labels[p.idx_a[i]]] == p.name_a[i]
        assert ds.identities[ds.labels[p.idx_b[i]]] == p.name_b[i]
    train, test = split_dataset(ds, fold=1)
    assert test.identities == ["Cid_C", "Dee_D"] and train.identities == ["Ann_A", "Bob_B"]
    assert len(test.pairs) == 2 and bool(test.pairs.issame[0])
    a, b = test.pairs.idx_a[0], test.pairs.idx_b[0]
    assert test.labels[a] == test.labels[b]


def test_mnist_5k_and_its_fixed_split():
    ds = load_dataset("mnist")
    assert ds.images.shape == (5000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [500] * 10
    train, test = get_split("mnist", fold=0)
    assert (len(train), len(test)) == (4000, 1000)
    assert torch.bincount(test.labels).tolist() == [100] * 10
    tests = torch.cat([mnist_split(ds.labels, f)[1] for f in range(5)])
    assert sorted(tests.tolist()) == list(range(5000))


def test_orl_default_split_is_30_train_and_10_test_identities():
    for fold in range(4):
        train, test = get_split("orl", fold=fold)
        assert (train.num_identities, test.num_identities) == (30, 10)
        assert (len(train), len(test)) == (300, 100)
        assert not set(train.identities) & set(test.identities)
