"""Identity folders (grey/colour, png/jpg/pgm), per-image reference decode, and the disk cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lowres.data.images as images_mod
from lowres.data.images import decode_image, load_identity_folders
from lowres.errors import DataError


def _face(seed: int, colour: bool, size=(20, 16)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (*size, 3) if colour else size
    return rng.integers(0, 256, shape, dtype=np.uint8)


def make_tree(root: Path) -> list[Path]:
    """alice: grey png + grey pgm; bob: colour png + colour jpg + grey png."""
    files = {
        "alice/1.png": (_face(1, False), "PNG"),
        "alice/2.pgm": (_face(2, False), "PPM"),
        "bob/a.png": (_face(3, True), "PNG"),
        "bob/b.jpg": (_face(4, True), "JPEG"),
        "bob/c.png": (_face(5, False), "PNG"),
    }
    out = []
    for rel, (arr, fmt) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path, format=fmt)
        out.append(path)
    return out


def reference(path: Path, mode: str) -> np.ndarray:
    arr = np.asarray(Image.open(path).convert(mode))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def test_identity_folders_mixed_grey_and_colour_decode_like_pillow(tmp_path):
    files = make_tree(tmp_path / "faces")
    ds = load_identity_folders(tmp_path / "faces", cache_dir=tmp_path / "cache")
    assert ds.identities == ["alice", "bob"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 1]
    assert ds.images.shape == (5, 3, 20, 16) and ds.images.dtype == torch.uint8
    order = [files[0], files[1], files[2], files[3], files[4]]
    for img, path in zip(ds.images, order, strict=True):
        assert np.array_equal(img.numpy(), reference(path, "RGB")), path
    grey = load_identity_folders(tmp_path / "faces", channels=1, cache_dir=False)
    assert grey.channels == 1
    for img, path in zip(grey.images, order, strict=True):
        assert np.array_equal(img.numpy(), reference(path, "L")), path


def test_all_grey_tree_stays_single_channel(tmp_path):
    for ident in ("x", "y"):
        for k in range(2):
            path = tmp_path / ident / f"{k}.pgm"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_face(k + 7 * len(ident), False)).save(path)
    ds = load_identity_folders(tmp_path, cache_dir=False)
    assert ds.images.shape == (4, 1, 20, 16)


def test_cache_hit_is_identical_and_skips_decoding(tmp_path, monkeypatch):
    make_tree(tmp_path / "faces")
    cache = tmp_path / "cache"
    first = load_identity_folders(tmp_path / "faces", cache_dir=cache)
    assert len(list((cache / "decoded").glob("*.pt"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("decoded again despite a cache hit")

    monkeypatch.setattr(images_mod, "decode_image", boom)
    second = load_identity_folders(tmp_path / "faces", cache_dir=cache)
    assert torch.equal(first.images, second.images)


def test_changed_file_invalidates_the_cache(tmp_path):
    make_tree(tmp_path / "faces")
    cache = tmp_path / "cache"
    first = load_identity_folders(tmp_path / "faces", cache_dir=cache)
    target = tmp_path / "faces" / "alice" / "1.png"
    Image.fromarray(_face(99, False)).save(target)  # same size, new pixels
    second = load_identity_folders(tmp_path / "faces", cache_dir=cache)
    assert not torch.equal(first.images[0], second.images[0])
    assert np.array_equal(second.images[0].numpy(), reference(target, "RGB"))
    assert len(list((cache / "decoded").glob("*.pt"))) == 2


def test_damaged_cache_file_is_rebuilt(tmp_path):
    make_tree(tmp_path / "faces")
    cache = tmp_path / "cache"
    first = load_identity_folders(tmp_path / "faces", cache_dir=cache)
    (entry,) = (cache / "decoded").glob("*.pt")
    entry.write_bytes(b"not a torch file")
    second = load_identity_folders(tmp_path / "faces", cache_dir=cache)
    assert torch.equal(first.images, second.images)


def test_mixed_sizes_and_bad_files_are_data_errors(tmp_path):
    make_tree(tmp_path / "faces")
    Image.fromarray(_face(6, False, size=(21, 16))).save(tmp_path / "faces" / "bob" / "d.png")
    with pytest.raises(DataError, match="share one size"):
        load_identity_folders(tmp_path / "faces", cache_dir=False)
    bad = tmp_path / "bad.jpg"
    good = tmp_path / "faces" / "bob" / "b.jpg"
    bad.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match=r"bad\.jpg"):
        decode_image(bad)
    with pytest.raises(DataError, match="not a folder"):
        load_identity_folders(tmp_path / "nowhere", cache_dir=False)


def _rss_anon_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.mark.skipif(_rss_anon_kib() is None, reason="needs Linux /proc/self/status")
def test_a_decode_cache_hit_maps_the_file_instead_of_copying_it(tmp_path):
    """A cached set is memory-mapped: its pages are the file's (shared by every process that
    loads it), not a private copy; the writer streams into the file."""
    n = 64 * 1024 * 1024  # 64 MiB of pixels
    source = tmp_path / "src.bin"
    source.write_bytes(b"x")

    def decode() -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (n // 4096, 1, 64, 64), generator=g, dtype=torch.uint8)

    first = images_mod.cached_images([source], decode, tag="mmap", cache_dir=tmp_path / "c")
    del first
    before = _rss_anon_kib()
    again = images_mod.cached_images(
        [source], lambda: pytest.fail("decoded again"), tag="mmap", cache_dir=tmp_path / "c"
    )
    grown = _rss_anon_kib() - before
    assert again.shape == (n // 4096, 1, 64, 64) and int(again.sum()) > 0  # every page read
    # A copy would add 64 MiB of anonymous memory; the mapping adds (almost) none.
    assert grown < 16 * 1024, f"anonymous memory grew by {grown} KiB"
    assert torch.equal(again, decode())
    assert not list((tmp_path / "c" / "decoded").glob(".*.tmp"))  # no temporary left
