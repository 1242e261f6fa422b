"""Streamed training sets (lowres.data.stream): a set read from disk per batch must give the same
pixels, digests and trained weights as the same set held in memory.

References: the in-memory tensor of the same images (plain tensor indexing), the in-memory load
path of the same pack or folder, and a model trained from memory.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lowres.data import load_dataset
from lowres.data.dataset import FaceDataset
from lowres.data.images import load_identity_folders
from lowres.data.insightface import load_rec_pack, write_rec_pack
from lowres.data.stream import (
    DiskImages,
    as_tensor,
    batch_stream,
    open_images_file,
    should_stream,
    write_images_file,
)
from lowres.errors import DataError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRES_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def orl(tmp_path_factory):
    return load_dataset("orl", cache_dir=tmp_path_factory.mktemp("orlcache"))


def _random_images(n=37, shape=(3, 5, 4), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8)


def _written(tmp_path, images, chunk=8):
    chunks = (images[i : i + chunk] for i in range(0, images.shape[0], chunk))
    return write_images_file(tmp_path / "set.u8", images.shape[0], chunks)


def test_disk_images_index_like_the_tensor(tmp_path):
    images = _random_images()
    disk = _written(tmp_path, images)
    assert disk.shape == images.shape and len(disk) == 37 and disk.dim() == 4
    gen = torch.Generator().manual_seed(1)
    index = torch.randint(0, 37, (50,), generator=gen)  # repeats and any order
    assert torch.equal(disk.read(index), images[index])
    assert torch.equal(disk[5], images[5]) and torch.equal(disk[torch.tensor(7)], images[7])
    mask = torch.rand(37, generator=gen) > 0.5
    for key in (slice(3, 30, 2), index, mask):
        view = disk[key]
        assert isinstance(view, DiskImages)  # a view reads nothing until asked
        assert torch.equal(view.load(), images[key])
        sub = torch.tensor([2, 0, 1])
        assert torch.equal(view[sub].load(), images[key][sub])
    assert torch.equal(disk[4:9].to(torch.float32), images[4:9].float())
    assert torch.equal(as_tensor(disk), images) and as_tensor(images) is images


def test_streamed_dataset_digest_equals_in_memory(tmp_path):
    images = _random_images(n=20, shape=(1, 6, 6))
    labels = torch.arange(20) % 5
    names = [f"p{i}" for i in range(5)]
    mem = FaceDataset("a", images, labels, names)
    disk = FaceDataset("a", _written(tmp_path, images), labels, names)
    assert disk.content_digest() == mem.content_digest()
    ids = torch.tensor([1, 3])
    sub_mem, sub_disk = mem.select_identities(ids), disk.select_identities(ids)
    assert isinstance(sub_disk.images, DiskImages)
    assert sub_disk.content_digest() == sub_mem.content_digest()
    changed = images.clone()
    changed[-1, 0, 0, 0] ^= 1
    other = FaceDataset("a", _written(tmp_path / "o", changed), labels, names)
    assert other.content_digest() != mem.content_digest()


def test_unfinished_or_foreign_entries_are_not_opened(tmp_path):
    images = _random_images()
    disk = _written(tmp_path, images)
    assert open_images_file(disk.path, 37) is not None
    assert open_images_file(disk.path, 36) is None  # another set's count
    with open(disk.path, "ab") as fh:  # a size that disagrees with the note
        fh.write(b"\0")
    assert open_images_file(disk.path) is None
    disk.path.with_suffix(".json").unlink()  # no note: the writer did not finish
    assert open_images_file(disk.path) is None


def test_writer_checks_count_and_shape(tmp_path):
    images = _random_images()
    with pytest.raises(DataError, match="expected 40 images, the decoder made 37"):
        write_images_file(tmp_path / "x.u8", 40, [images])
    with pytest.raises(DataError, match="image shape changed"):
        write_images_file(tmp_path / "y.u8", 2, [images[:1], images[:1, :1]])
    assert not list(tmp_path.glob("*.u8")) and not list(tmp_path.glob("*.json"))


def test_threshold_from_environment(monkeypatch):
    monkeypatch.setenv("LOWRES_STREAM_MIN_BYTES", "100")
    assert should_stream(10, 10) and not should_stream(9, 10)
    monkeypatch.setenv("LOWRES_STREAM_MIN_BYTES", "lots")
    with pytest.raises(DataError, match="LOWRES_STREAM_MIN_BYTES must be a whole number"):
        should_stream(1, 1)
    monkeypatch.delenv("LOWRES_STREAM_MIN_BYTES")
    assert not should_stream(1000, 112 * 112 * 3)  # a small set stays in memory


def test_rec_pack_streams_the_same_pixels(orl, tmp_path, monkeypatch):
    images, labels = orl.images[:24], orl.labels[:24]
    rec = write_rec_pack(tmp_path / "pack", images, labels)
    in_memory = load_rec_pack(rec, cache_dir=tmp_path / "c1")
    monkeypatch.setenv("LOWRES_STREAM_MIN_BYTES", "0")
    streamed = load_rec_pack(rec, cache_dir=tmp_path / "c2")
    assert isinstance(streamed.images, DiskImages) and not isinstance(in_memory.images, DiskImages)
    assert torch.equal(streamed.images.load(), in_memory.images)
    assert torch.equal(streamed.labels, in_memory.labels)
    assert streamed.content_digest() == in_memory.content_digest()
    entry = streamed.images.path
    stamp = entry.stat().st_mtime_ns
    again = load_rec_pack(rec, cache_dir=tmp_path / "c2")  # a hit: read, not decoded again
    assert again.images.path == entry and entry.stat().st_mtime_ns == stamp


def test_grey_then_colour_restarts_in_rgb(orl, tmp_path, monkeypatch):
    grey = orl.images[:6]
    colour = torch.stack([grey[0, 0], grey[0, 0] // 2, grey[0, 0] // 3])[None]
    images = [grey[i] for i in range(5)] + [colour[0]]
    root = tmp_path / "faces"
    for i, img in enumerate(images):
        (root / f"id{i % 2}").mkdir(parents=True, exist_ok=True)
        mode = img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy()
        Image.fromarray(mode).save(root / f"id{i % 2}" / f"{i}.png")
    in_memory = load_identity_folders(root, cache_dir=tmp_path / "c1")
    monkeypatch.setenv("LOWRES_STREAM_MIN_BYTES", "0")
    streamed = load_identity_folders(root, cache_dir=tmp_path / "c2")
    assert isinstance(streamed.images, DiskImages) and streamed.images.shape[1] == 3
    assert torch.equal(streamed.images.load(), in_memory.images)


def test_batch_stream_is_the_same_with_workers(tmp_path):
    images = _random_images(n=64)
    disk = _written(tmp_path, images)
    batches = list(torch.randperm(64, generator=torch.Generator().manual_seed(0)).split(10))
    expected = [images[b] for b in batches]
    for source in (images, disk):
        for workers in (0, 2):
            got = list(batch_stream(source, batches, workers=workers))
            assert len(got) == len(expected)
            assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("augment, rgb", [(True, False), (False, False), (True, True)])
def test_streamed_pack_trains_the_same_weights(orl, tmp_path, monkeypatch, augment, rgb):
    """Same seed, same weights: in memory with 0 or 1 loader workers (1: the CPU augmentation
    runs in the worker), and streamed with 0 or 2; also for an RGB pack and a grey net (the
    batch is turned grey before the augmentation, in the worker or in the trainer)."""
    from lowres.train import TrainConfig, train

    keep = orl.labels < 8
    images = orl.images[keep]
    if rgb:
        images = torch.cat([images, 255 - images, images // 2 + 64], dim=1)
    rec = write_rec_pack(tmp_path / "pack", images, orl.labels[keep])
    common = dict(
        data=str(rec), method="SM", model="cpunet", epochs=2, batch_size=8, input_size=(28, 24),
        embed_dim=8, augment=augment, device="cpu", num_threads=1, seed=3,
    )  # fmt: skip
    # Workers augment in pieces (forked: they see the patch); 3 images a piece here.
    monkeypatch.setattr("lowres.train.loop.WORKER_MMAP_THRESHOLD", 3 * 4 * 112 * 92 * 3)
    runs = {}
    for where, workers in (("memory", 0), ("memory", 1), ("stream", 0), ("stream", 2)):
        if where == "stream":
            monkeypatch.setenv("LOWRES_STREAM_MIN_BYTES", "0")
        config = TrainConfig(loader_workers=workers, **common)
        runs[where, workers] = train(config, tmp_path / f"{where}{workers}", progress=False)
    weights = {k: load_file(str(v / "model.safetensors")) for k, v in runs.items()}
    ref = weights["memory", 0]
    for name, got in weights.items():
        assert got.keys() == ref.keys()
        assert all(torch.equal(got[k], ref[k]) for k in ref), name


def _big_batch_with_worker_memory(batch: torch.Tensor, seed: int) -> torch.Tensor:
    """A 16 MB float batch whose first value is this worker's resident anonymous memory."""
    out = torch.zeros(128, 3, 112, 92)
    out += batch.float().mean()
    with open("/proc/self/status") as fh:
        anon = next(int(line.split()[1]) for line in fh if line.startswith("RssAnon"))
    out.view(-1)[0] = float(anon)
    return out


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="Linux /proc")
def test_a_loader_worker_does_not_grow_a_batch_per_step(tmp_path):
    """Without bounded_heap, glibc serves every batch buffer from a heap that grows by about a
    batch per step (measured: +18 MB per step); with it the worker stays flat."""
    images = _random_images(n=64)
    disk = _written(tmp_path, images)
    batches = [torch.arange(8)] * 48
    kib = [
        float(b.view(-1)[0])
        for b in batch_stream(
            disk, batches, workers=1, transform=_big_batch_with_worker_memory, seeds=[0] * 48
        )
    ]
    growth_mb = (max(kib[8:]) - kib[8]) / 1024
    assert growth_mb < 100, f"worker memory grew {growth_mb:.0f} MB over 40 batches"
