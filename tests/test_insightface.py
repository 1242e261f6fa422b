"""InsightFace formats: `.bin` verification sets (restricted unpickler) and RecordIO packs.

References are independent of the reader: the native ORL path (same pixels, same pairs), naive
per-pair numpy cosines, hand-framed RecordIO bytes, and training from an identity folder.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from lowres.cli import cli
from lowres.data import get_split, list_datasets, load_dataset
from lowres.data.insightface import (
    MAGIC,
    BinUnpickler,
    IRHeader,
    RecordReader,
    RecordWriter,
    encode_image,
    load_bin,
    load_rec_pack,
    pack_record,
    unpack_record,
    write_bin,
    write_rec_pack,
)
from lowres.data.manifest import load_manifest
from lowres.errors import DataError

MANIFESTS = Path(__file__).resolve().parents[1] / "data_manifests"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRES_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def orl(tmp_path_factory):
    return load_dataset("orl", cache_dir=tmp_path_factory.mktemp("orlcache"))


def orl_pairs(orl, per_fold: int = 5, folds: int = 10, seed: int = 0):
    """InsightFace layout: per fold `per_fold` genuine then `per_fold` impostor ORL pairs."""
    gen = torch.Generator().manual_seed(seed)
    labels = orl.labels
    a, b, same = [], [], []
    for _ in range(folds):
        for genuine in (True, False):
            for _ in range(per_fold):
                while True:
                    i, j = torch.randint(len(labels), (2,), generator=gen).tolist()
                    if i != j and bool(labels[i] == labels[j]) == genuine:
                        break
                a.append(i)
                b.append(j)
                same.append(genuine)
    return torch.tensor(a), torch.tensor(b), torch.tensor(same)


def interleave(images, a, b):
    return torch.stack([images[a], images[b]], dim=1).flatten(0, 1)


# ----------------------------------------------------------------------------------------------
# .bin
# ----------------------------------------------------------------------------------------------


def test_bin_from_orl_equals_native_orl_path(orl, tmp_path):
    from lowres.metrics import auc, eer, kfold_accuracy, pairs_scores, tar_at_far

    a, b, same = orl_pairs(orl)  # 50 genuine + 50 impostor in 10 folds
    path = write_bin(tmp_path / "orl.bin", interleave(orl.images, a, b), same.tolist())
    ds = load_dataset(str(path))
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (200, 1, 112, 92)
    assert torch.equal(ds.images, interleave(orl.images, a, b))
    p = ds.pairs
    assert torch.equal(p.issame, same) and (p.num_genuine, p.num_impostor) == (50, 50)
    assert torch.equal(p.fold, torch.arange(100) // 10)
    assert torch.equal(p.idx_a, torch.arange(100) * 2) and torch.equal(p.idx_b, p.idx_a + 1)
    # pseudo-identities: genuine pairs share a label, impostor pairs never do
    assert torch.equal(ds.labels[p.idx_a] == ds.labels[p.idx_b], same)

    native = orl.images.flatten(1).double()
    mine = ds.images.flatten(1).double()
    s_native = pairs_scores(native, native, a, b)
    s_bin = pairs_scores(mine, mine, p.idx_a, p.idx_b)
    np.testing.assert_array_equal(s_bin, s_native)
    naive = np.array(
        [
            float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y))
            for x, y in zip(native[a].numpy(), native[b].numpy(), strict=True)
        ]
    )
    np.testing.assert_allclose(s_bin, naive, rtol=1e-12)
    y = same.numpy()
    assert kfold_accuracy(s_bin, y, p.fold.numpy()) == kfold_accuracy(s_native, y, 10)
    assert eer(s_bin, y) == eer(s_native, y) and auc(s_bin, y) == auc(s_native, y)
    assert tar_at_far(s_bin, y, 0.1) == tar_at_far(s_native, y, 0.1)

    # a sweep's test split: the images of fold 0's pairs, pairs re-indexed into them
    _, test = get_split(str(path), fold=0)
    assert len(test.pairs) == 10 and torch.equal(test.images[test.pairs.idx_a], orl.images[a[:10]])


@pytest.mark.parametrize("protocol", [4, 5])
def test_bin_with_numpy_issame_and_jpeg(orl, tmp_path, protocol):
    imgs = torch.cat([orl.images[:4].expand(-1, 3, -1, -1)] * 1)
    blobs = [encode_image(im, "jpg") for im in imgs]
    path = tmp_path / "x.bin"
    path.write_bytes(pickle.dumps((blobs, np.array([True, False])), protocol=protocol))
    ds = load_bin(path)
    assert ds.images.shape == (4, 3, 112, 92) and ds.pairs.issame.tolist() == [True, False]
    assert (ds.images.int() - imgs.int()).abs().float().mean() < 3  # JPEG is lossy


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_bin_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([b"x", _Evil(marker)], [True]), protocol=2))
    with pytest.raises(DataError, match=r"refusing to load .*evil\.bin: it asks to import "):
        load_dataset(str(path))
    assert not marker.exists()
    result = CliRunner().invoke(cli, ["data", "show", str(path)])
    assert result.exit_code == 2 and "never contains" in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not marker.exists()
    # also a numpy global outside the three a bool array needs, and eval
    for module, name in (("numpy", "load"), ("builtins", "eval")):
        raw = f"c{module}\n{name}\n(S'1'\ntR.".encode()
        with pytest.raises(DataError, match=f"import {module}.{name}, which an InsightFace"):
            BinUnpickler(__import__("io").BytesIO(raw), "x.bin").load()


def test_bin_bad_entries_name_the_index(orl, tmp_path):
    good = [encode_image(im) for im in orl.images[:4]]
    cases = [
        (([*good[:3], 42], [True, False]), "image entry 3 is int"),
        (([*good[:2], b"not an image", good[3]], [True, False]), "cannot decode bad.bin image 2"),
        ((good, [True]), "holds 4 images and 1 pair flags"),
        ((good, [True, "yes"]), "issame entry 1 is str"),
        ({"images": good}, "expected a pickled (images, issame) pair"),
    ]
    path = tmp_path / "bad.bin"
    for obj, message in cases:
        path.write_bytes(pickle.dumps(obj, protocol=4))
        with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_bin(path, cache_dir=False)
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match=r"not a readable InsightFace .bin"):
        load_bin(path, cache_dir=False)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "missing.bin"))


def test_data_show_summarises_a_bin(orl, tmp_path):
    a, b, same = orl_pairs(orl, per_fold=2, folds=10)
    path = write_bin(tmp_path / "small.bin", interleave(orl.images, a, b), same)
    result = CliRunner().invoke(cli, ["data", "show", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "images      80" in out and "image size  112x92" in out
    assert "fixed pairs: 40 (20 genuine, 20 impostor) in 10 folds of 4" in out
    assert "pseudo-identities" in out and "all-vs-all" not in out


# ----------------------------------------------------------------------------------------------
# RecordIO
# ----------------------------------------------------------------------------------------------


def test_rec_pack_round_trip_and_insightface_header(orl, tmp_path):
    images = orl.images[:12]
    raw = [10, 10, 10, 5, 5, 5, 5, 20, 20, 3, 3, 3]  # contiguous runs, arbitrary values
    rec = write_rec_pack(tmp_path / "pack", images, raw)
    ds = load_dataset(str(tmp_path / "pack"))
    assert torch.equal(ds.images, images)
    order = sorted(set(raw))
    assert ds.identities == [str(v) for v in order]
    assert ds.labels.tolist() == [order.index(v) for v in raw]
    assert ds.meta["protocol"]["type"] == "identity-folds"
    with RecordReader(rec) as r:
        head, img = r.read_record(0)
        assert head.flag == 2 and head.label == (13.0, 17.0) and img == b""
        ranges = [r.read_record(k)[0].label for k in range(13, 17)]
    assert ranges == [(10.0, 13.0), (4.0, 8.0), (1.0, 4.0), (8.0, 10.0)]
    assert (tmp_path / "pack" / "property").read_text() == "4,112,92\n"


def test_random_access_equals_sequential_read(orl, tmp_path):
    rec = write_rec_pack(tmp_path / "p", orl.images[:6], [0, 0, 1, 1, 2, 2])
    with RecordReader(rec) as r:
        sequential = list(r.sequential())
        assert len(r) == len(sequential) == 1 + 6 + 3
        for k in [7, 2, 9, 0, 4]:
            assert r.read_payload(k) == sequential[k]
        header, img = r.read_record(3)
    assert header == IRHeader(0, 1.0, 3, 0) and img == encode_image(orl.images[2])


def test_pack_without_insightface_header_and_bad_labels(orl, tmp_path):
    rec = tmp_path / "plain" / "train.rec"
    with RecordWriter(rec) as w:  # im2rec style: every key an image, labels as flag-1 arrays
        for k, lab in zip([5, 2, 9], [4.0, 1.0, 4.0], strict=True):
            w.write(k, pack_record(IRHeader(1, (lab,), k, 0), encode_image(orl.images[k])))
    ds = load_rec_pack(rec)
    assert torch.equal(ds.images, orl.images[[5, 2, 9]]) and ds.labels.tolist() == [1, 0, 1]
    with RecordWriter(rec) as w:
        w.write(0, pack_record(IRHeader(0, 2.5, 0, 0), encode_image(orl.images[0])))
    with pytest.raises(DataError, match=r"record 0 has label 2\.5; identity labels must be"):
        load_rec_pack(rec)


def test_record_framing_matches_dmlc_bytes(tmp_path):
    magic = struct.pack("<I", MAGIC)
    payload = b"\x01\x02\x03\x04" + magic + b"\x05\x06" + magic[:3]  # aligned magic at 4 only
    with RecordWriter(tmp_path / "t.rec") as w:
        w.write(0, payload)
        w.write(1, magic)
    expected = (
        magic
        + struct.pack("<I", (1 << 29) | 4)
        + b"\x01\x02\x03\x04"
        + magic
        + struct.pack("<I", (3 << 29) | 5)
        + b"\x05\x06"
        + magic[:3]
        + b"\0\0\0"
    )
    second = magic + struct.pack("<I", (1 << 29) | 0) + magic + struct.pack("<I", 3 << 29)
    assert (tmp_path / "t.rec").read_bytes() == expected + second
    assert (tmp_path / "t.idx").read_text() == f"0\t0\n1\t{len(expected)}\n"
    with RecordReader(tmp_path / "t.rec") as r:
        assert r.read_payload(0) == payload and r.read_payload(1) == magic
    head = IRHeader(3, (1.0, 2.0, 3.0), 7, 9)
    assert unpack_record(pack_record(head, b"img")) == (head, b"img")


def test_truncated_rec_names_record_and_offset(orl, tmp_path):
    rec = write_rec_pack(tmp_path / "p", orl.images[:4], [0, 0, 1, 1])
    last_offset = int(rec.with_suffix(".idx").read_text().splitlines()[4].split("\t")[1])
    data = rec.read_bytes()
    rec.write_bytes(data[: last_offset + 30])  # inside record 4's image
    with pytest.raises(DataError, match=f"truncated: record 4 at byte {last_offset} needs"):
        load_dataset(str(rec))
    rec.write_bytes(data[: last_offset + 5])  # inside record 4's frame header
    with pytest.raises(DataError, match=f"truncated: record 4 at byte {last_offset} needs an 8"):
        RecordReader(rec)


def test_index_that_disagrees_with_rec(orl, tmp_path):
    rec = write_rec_pack(tmp_path / "p", orl.images[:4], [0, 0, 1, 1])
    idx = rec.with_suffix(".idx")
    lines = idx.read_text().splitlines()
    key, off = lines[2].split("\t")
    idx.write_text("\n".join([*lines[:2], f"{key}\t{int(off) + 4}", *lines[3:]]) + "\n")
    with pytest.raises(DataError, match=f"key 2 points at byte {int(off) + 4} of .*not the start"):
        load_rec_pack(rec)
    idx.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"lists 6 records but .*train.rec holds 7"):
        load_rec_pack(rec)
    idx.write_text("\n".join([*lines[:-1], "6 oops"]) + "\n")
    with pytest.raises(DataError, match=r"train.idx:7: expected 'key<TAB>offset'"):
        load_rec_pack(rec)
    idx.unlink()
    with pytest.raises(DataError, match=r"index .*train.idx not found"):
        load_rec_pack(tmp_path / "p")
    rec.write_bytes(b"\0" * 16)
    idx.write_text("0\t0\n")
    with pytest.raises(DataError, match="record 0 at byte 0 does not start with the RecordIO"):
        load_rec_pack(rec)


def test_pack_trains_the_same_model_as_an_identity_folder(orl, tmp_path):
    from PIL import Image

    from lowres.train import TrainConfig, train

    keep = orl.labels < 8
    images, labels = orl.images[keep][::2], orl.labels[keep][::2]  # 8 ids x 5 images
    write_rec_pack(tmp_path / "pack", images, labels)
    root = tmp_path / "folders"
    for i, (img, lab) in enumerate(zip(images, labels.tolist(), strict=True)):
        (root / f"id{lab:02d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(root / f"id{lab:02d}" / f"{i:03d}.png")
    manifest = tmp_path / "folders.toml"
    manifest.write_text(
        f'name = "folders"\nkind = "identity-folders"\nroot = "{root}"\nchannels = 1\n'
        '[protocol]\ntype = "identity-folds"\nn_folds = 4\n'
    )
    common = dict(
        method="SM", model="cpunet", epochs=1, batch_size=8, input_size=(28, 24), embed_dim=8,
        augment=False, device="cpu", num_threads=1, seed=3,
    )  # fmt: skip
    out_pack = train(
        TrainConfig(data=str(tmp_path / "pack" / "train.rec"), **common),
        tmp_path / "a",
        progress=False,
    )
    out_dir = train(TrainConfig(data=str(manifest), **common), tmp_path / "b", progress=False)
    wa, wb = (
        load_file(str(out_pack / "model.safetensors")),
        load_file(str(out_dir / "model.safetensors")),
    )
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    tr_pack, _ = get_split(str(tmp_path / "pack"))
    tr_dir, _ = get_split(str(manifest))
    assert torch.equal(tr_pack.images, tr_dir.images) and tr_pack.num_identities == 6


# ----------------------------------------------------------------------------------------------
# manifests
# ----------------------------------------------------------------------------------------------


def test_shipped_insightface_manifests(orl, tmp_path, monkeypatch):
    kinds = {
        "lfw_bin": "insightface-bin",
        "cfp_fp": "insightface-bin",
        "agedb_30": "insightface-bin",
        "casia_webface": "recordio",
        "ms1m_rec": "recordio",
        "tinyface": "tinyface",
        "scface": "scface",
    }
    for name, kind in kinds.items():
        m = load_manifest(MANIFESTS / f"{name}.toml")
        assert (m.name, m.kind) == (name, kind) and m.credit and m.citation and m.source_text
    monkeypatch.setenv("LOWRES_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"faces_emore does not exist .*cfp_fp.bin exists"):
        load_dataset("cfp_fp")
    (tmp_path / "faces_emore").mkdir()
    with pytest.raises(DataError, match=r"faces_emore/cfp_fp.bin does not exist \(file = "):
        load_dataset("cfp_fp")
    rgb = torch.nn.functional.pad(orl.images[:4], (10, 10, 0, 0)).expand(-1, 3, -1, -1)
    write_bin(tmp_path / "faces_emore" / "cfp_fp.bin", rgb, [True, False])
    ds = load_dataset("cfp_fp")
    assert ds.image_size == (112, 112) and ds.meta["credit"].startswith("Soumyadip")
    listed = {r["name"]: r["available"] for r in list_datasets()}
    assert listed["cfp_fp"] and not listed["agedb_30"] and not listed["ms1m_rec"]


def test_manifest_file_key_is_checked(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nkind = "insightface-bin"\nroot = "."\n')
    with pytest.raises(DataError, match="needs 'file'"):
        load_manifest(bad)
    bad.write_text('name = "x"\nkind = "identity-folders"\nroot = "."\nfile = "a.bin"\n')
    with pytest.raises(DataError, match="'file' is only used by"):
        load_manifest(bad)
