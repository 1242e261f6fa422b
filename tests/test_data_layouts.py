"""TinyFace and SCface read in their published layouts (lowres.data.tinyface / scface), on small
trees written in those layouts (tests/layout_trees.py), and the shipped manifests for them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from layout_trees import (
    SCFACE_SUBJECTS,
    TINYFACE_DISTRACTORS,
    TINYFACE_GALLERY,
    TINYFACE_PROBE,
    TINYFACE_TRAIN,
    write_manifest,
    write_scface,
    write_tinyface,
)
from tiny_sweep import cli

from lowres.data import get_split, get_test_split, load_dataset, split_dataset
from lowres.data.dataset import GALLERY, PROBE
from lowres.data.layouts import identity_order, resize_image
from lowres.data.manifest import load_manifest
from lowres.data.registry import has_distractor_role, has_own_split, load_distractor_role
from lowres.errors import ConfigError, DataError

MANIFESTS = Path(__file__).resolve().parents[1] / "data_manifests"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRES_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tinyface(tmp_path):
    return write_manifest(tmp_path / "tinyface.toml", "tinyface", write_tinyface(tmp_path))


@pytest.fixture
def scface(tmp_path):
    return write_manifest(tmp_path / "scface.toml", "scface", write_scface(tmp_path))


def _expected(counts: dict[str, int]) -> list[str]:
    return [ident for ident in sorted(counts, key=identity_order) for _ in range(counts[ident])]


def test_tinyface_roles_labels_and_resize(tinyface):
    test = load_dataset(str(tinyface))
    n_gallery = sum(TINYFACE_GALLERY.values())
    assert test.roles.tolist() == [GALLERY] * n_gallery + [PROBE] * sum(TINYFACE_PROBE.values())
    names = [test.identities[k] for k in test.labels.tolist()]
    # Gallery_Match then Probe, each in file-name order; the identity is the name's prefix
    assert names == _expected(TINYFACE_GALLERY) + _expected(TINYFACE_PROBE)
    assert test.image_size == (20, 16) and test.channels == 3  # every crop resized
    files = test.meta["files"]
    assert files[0] == "Testing_Set/Gallery_Match/1_1.jpg"
    assert files[n_gallery] == "Testing_Set/Probe/1_1.jpg"
    assert "bicubic" in test.meta["resize"]
    assert has_own_split(str(tinyface)) and has_distractor_role(str(tinyface))
    assert get_test_split(str(tinyface)).content_digest() == test.content_digest()


def test_tinyface_training_set_and_distractors(tinyface):
    train, test = get_split(str(tinyface))
    assert train.identities == sorted(TINYFACE_TRAIN) and train.roles is None
    assert len(train) == sum(TINYFACE_TRAIN.values())
    assert not set(train.identities) & set(test.identities)
    distractors = load_distractor_role(str(tinyface))
    assert len(distractors) == TINYFACE_DISTRACTORS == distractors.num_identities
    assert distractors.name == "tinyface-distractors"
    assert distractors.identities[0].startswith("a/")  # the folder's whole tree, path order
    assert load_distractor_role("orl") is None and not has_distractor_role("orl")
    with pytest.raises(DataError, match="one fixed train/test split"):
        get_split(str(tinyface), fold=1)
    with pytest.raises(ConfigError, match="only to the synthetic"):
        load_dataset(str(tinyface), preset="cpu")


def test_scface_roles_distances_and_cameras(tmp_path, scface):
    everything = load_dataset(str(scface))
    n = len(SCFACE_SUBJECTS)
    # mugshots, then cameras 1-5 (6 is infrared) at each of the three distances
    assert everything.roles.tolist() == [GALLERY] * n + [PROBE] * (n * 5 * 3)
    assert everything.identities == list(SCFACE_SUBJECTS)
    assert everything.meta["distances"] == [1, 2, 3] and everything.meta["cameras"] == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert everything.image_size == (24, 20)
    far = write_manifest(
        tmp_path / "far.toml", "scface", tmp_path / "SCface_database", distances=[1], cameras=[1, 6]
    )
    one = load_dataset(str(far))
    assert one.roles.tolist() == [GALLERY] * n + [PROBE] * (n * 2)
    assert all(f.startswith("surveillance_cameras_distance_1/") for f in one.meta["files"][n:])
    assert one.meta["distance_metres"] == [4.2]
    train, test = split_dataset(everything, fold=0)  # identity folds keep the roles
    assert test.roles is not None and set(test.roles.tolist()) == {GALLERY, PROBE}
    assert (test.roles == GALLERY).sum() == test.num_identities == n // 4
    assert not set(train.identities) & set(test.identities)


def test_data_show_describes_the_roles(tinyface, scface):
    shown = cli(["data", "show", str(tinyface)])
    assert shown.exit_code == 0, shown.output
    n_gal, n_probe = sum(TINYFACE_GALLERY.values()), sum(TINYFACE_PROBE.values())
    genuine = sum(TINYFACE_GALLERY[i] * TINYFACE_PROBE[i] for i in TINYFACE_GALLERY)
    assert f"fixed split: train {len(TINYFACE_TRAIN)} ids" in shown.output
    assert f"roles: {n_gal} gallery images" in shown.output
    impostor = n_gal * n_probe - genuine
    assert f"gallery x probe pairs: {genuine} genuine, {impostor} impostor" in shown.output
    shown = cli(["data", "show", str(scface)])
    assert shown.exit_code == 0 and "identity-disjoint folds: 4" in shown.output
    assert "roles: 2 gallery images (2 ids), 30 probes (2 ids)" in shown.output


def test_layout_errors_are_one_line(tmp_path, tinyface, scface):
    missing = write_manifest(tmp_path / "gone.toml", "tinyface", tmp_path / "nowhere")
    with pytest.raises(
        DataError, match=r"does not exist.*get the data: unpack tinyface.*example\.org"
    ):
        load_dataset(str(missing))
    (tmp_path / "tinyface" / "Testing_Set" / "Probe" / "noid.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="does not carry an identity id"):
        load_dataset(str(tinyface))
    bad = (
        tmp_path
        / "SCface_database"
        / "surveillance_cameras_distance_2"
        / "cam_1"
        / "001_cam1_3.jpg"
    )
    bad.write_bytes(b"x")
    with pytest.raises(
        DataError, match="says distance 3 but sits in surveillance_cameras_distance_2"
    ):
        load_dataset(str(scface))
    shutil.rmtree(tmp_path / "tinyface" / "Testing_Set" / "Probe")
    with pytest.raises(DataError, match=r"probe \(Probe\) folder .* does not exist.*example"):
        load_dataset(str(tinyface))


def test_manifest_checks_for_layout_kinds(tmp_path):
    base = 'name = "x"\nkind = "{kind}"\nroot = "r"\n'
    cases = {
        "needs 'image_size'": base.format(kind="tinyface"),
        "only used by kind 'scface'": base.format(kind="tinyface")
        + "image_size = [8, 8]\n[protocol]\ndistances = [1]\n",
        "non-empty list of \\[1, 2, 3\\]": base.format(kind="scface")
        + "image_size = [8, 8]\n[protocol]\ndistances = [4]\n",
        "uses protocol type 'fixed-split'": base.format(kind="tinyface")
        + 'image_size = [8, 8]\n[protocol]\ntype = "identity-folds"\n',
    }
    for message, text in cases.items():
        path = tmp_path / "x.toml"
        path.write_text(text)
        with pytest.raises(DataError, match=message):
            load_manifest(path)


def test_shipped_manifests_follow_the_published_layouts(monkeypatch, tmp_path):
    tiny = load_manifest(MANIFESTS / "tinyface.toml")
    assert tiny.kind == "tinyface" and tiny.protocol_type == "fixed-split"
    assert "qmul-tinyface.github.io" in tiny.source_url and "Cheng" in tiny.citation
    assert tiny.licence and tiny.image_size
    scf = {p.stem: load_manifest(p) for p in MANIFESTS.glob("scface*.toml")}
    assert scf["scface"].distances == (1, 2, 3) and scf["scface"].cameras == (1, 2, 3, 4, 5)
    assert {scf[f"scface_d{d}"].distances for d in (1, 2, 3)} == {(1,), (2,), (3,)}
    assert all("scface.org" in m.source_url and m.kind == "scface" for m in scf.values())
    # a missing set: one line that says where to get it, exit 2
    monkeypatch.setenv("LOWRES_DATA", str(tmp_path / "empty"))
    for name, where in (("tinyface", "qmul-tinyface.github.io"), ("scface_d1", "scface.org")):
        result = cli(["data", "show", name])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and where in lines[0] and "does not exist" in lines[0]


def test_resize_rule_is_pillow_bicubic():
    from PIL import Image

    img = torch.arange(5 * 4 * 3, dtype=torch.uint8).reshape(3, 5, 4)
    pil = Image.fromarray(img.numpy().transpose(1, 2, 0)).resize((6, 9), Image.Resampling.BICUBIC)
    assert np.array_equal(resize_image(img, (9, 6)).permute(1, 2, 0).numpy(), np.asarray(pil))
    assert resize_image(img, (5, 4)) is img
