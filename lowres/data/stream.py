"""Images that stay on disk: a raw uint8 file decoded once, read back batch by batch.

A large training set (CASIA-WebFace: 494k 112x112 RGB images, 19 GB decoded; MS1M: 220 GB) does
not fit in memory. Its decode cache is therefore written incrementally, a chunk of images at a
time, into one raw file (``N x C x H x W`` bytes, row-major) with a JSON note beside it, and read
back with ``os.pread`` per image: the process holds the index (one int64 per image) and the
batches in flight, never the set. The kernel's page cache, not the process, keeps recently read
images; it is shared by every loader worker and released under memory pressure.

:class:`DiskImages` behaves like the uint8 ``(N, C, H, W)`` tensor it replaces where the code
needs it to: ``shape``, ``len``, indexing with an int (one image, a tensor), and with a slice,
an index tensor or a mask (a lazy view that reads nothing), ``read(index)`` and ``.to(device)``
(the images, read). Small sets stay in memory, where indexing a tensor is faster than reading a
file (``benchmarks/train_pipeline.py``): :func:`should_stream` decides by size.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowres.errors import DataError
from lowres.files import atomic_write_with

__all__ = [
    "STREAM_MIN_BYTES",
    "DiskImages",
    "as_tensor",
    "batch_stream",
    "bounded_heap",
    "open_images_file",
    "should_stream",
    "write_images_file",
]

STREAM_FORMAT = 1

STREAM_MIN_BYTES = 2 << 30
"""Decoded sets of at least this many bytes (2 GiB) stream from disk; smaller ones are held in
memory. ``LOWRES_STREAM_MIN_BYTES`` overrides it (0: stream every set read from files)."""

CHUNK_IMAGES = 1024
"""Images decoded and written per chunk while a streamed cache entry is built."""


def should_stream(count: int, image_bytes: int) -> bool:
    """True when ``count`` images of ``image_bytes`` each are at least the streaming threshold."""
    threshold = os.environ.get("LOWRES_STREAM_MIN_BYTES")
    try:
        limit = int(threshold) if threshold not in (None, "") else STREAM_MIN_BYTES
    except ValueError:
        raise DataError(
            f"LOWRES_STREAM_MIN_BYTES must be a whole number of bytes, got {threshold!r}"
        ) from None
    return count * image_bytes >= limit


class DiskImages:
    """A uint8 ``(N, C, H, W)`` image set in a raw file, read on demand.

    Args:
        path: the raw file (``total x C x H x W`` bytes).
        image_shape: ``(C, H, W)``.
        total: the number of images in the file.
        rows: the file rows this view holds, in order (default: all).
        digest: sha256 of the file's pixels (what :meth:`FaceDataset.content_digest` uses).
    """

    dtype = torch.uint8
    device = torch.device("cpu")

    def __init__(
        self,
        path: str | Path,
        image_shape: tuple[int, int, int],
        total: int,
        rows: torch.Tensor | None = None,
        digest: str = "",
    ) -> None:
        self.path = Path(path)
        self.image_shape = tuple(int(v) for v in image_shape)
        self.total = int(total)
        self.rows = torch.arange(self.total) if rows is None else rows.to(torch.int64)
        self.digest = digest
        self._fd: int | None = None
        self._pid = -1

    # -- the tensor-like surface -----------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.rows.numel(), *self.image_shape))

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return int(self.rows.numel())

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)):
            return self.read(torch.tensor([int(index)]))[0]
        if isinstance(index, slice):
            return self._view(self.rows[index])
        index = torch.as_tensor(index)
        if index.dim() == 0:
            return self.read(index.reshape(1))[0]
        if index.dtype == torch.bool:
            index = torch.nonzero(index, as_tuple=False).flatten()
        return self._view(self.rows[index.to(torch.int64)])

    def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The images of this view, read into a tensor and moved like ``Tensor.to``."""
        return self.load().to(*args, **kwargs)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fd"], state["_pid"] = None, -1  # a worker opens its own descriptor
        return state

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass

    # -- reading ---------------------------------------------------------------------------
    def _view(self, rows: torch.Tensor) -> DiskImages:
        return DiskImages(self.path, self.image_shape, self.total, rows, self.digest)

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, index: torch.Tensor | Iterable[int]) -> torch.Tensor:
        """uint8 ``(len(index), C, H, W)``: the images at positions ``index`` of this view."""
        positions = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        rows = self.rows[positions].tolist()
        size = int(np.prod(self.image_shape))
        out = np.empty((len(rows), size), dtype=np.uint8)
        fd = self._descriptor()
        for i, row in enumerate(rows):
            got = os.preadv(fd, [memoryview(out[i])], row * size)
            if got != size:
                raise DataError(
                    f"{self.path}: image {row} is cut short ({got} of {size} bytes); delete the "
                    "file so the decode cache is rebuilt"
                )
        return torch.from_numpy(out).view(len(rows), *self.image_shape)

    def load(self) -> torch.Tensor:
        """Every image of this view, read into one tensor."""
        return self.read(torch.arange(len(self)))

    def chunks(self, size: int = CHUNK_IMAGES) -> Iterator[torch.Tensor]:
        """The view's images in order, ``size`` at a time (memory bounded by one chunk)."""
        for start in range(0, len(self), size):
            yield self.read(torch.arange(start, min(len(self), start + size)))


def as_tensor(images: torch.Tensor | DiskImages) -> torch.Tensor:
    """The images as an in-memory tensor (a tensor is returned as it is)."""
    return images.load() if isinstance(images, DiskImages) else images


# ----------------------------------------------------------------------------------------------
# the on-disk cache entry: ``NAME.u8`` (pixels) + ``NAME.json`` (shape, count, sha256)
# ----------------------------------------------------------------------------------------------


def _note_path(path: Path) -> Path:
    return path.with_suffix(".json")


def write_images_file(
    path: str | Path,
    count: int,
    chunks: Iterable[torch.Tensor],
) -> DiskImages:
    """Write images chunk by chunk to ``path`` (raw) and its note (written last, so a file
    without a note is an unfinished entry), and open the result.

    Args:
        path: the raw file to write (replaced atomically).
        count: the number of images the chunks hold in all.
        chunks: uint8 ``(n, C, H, W)`` tensors of one shape ``(C, H, W)``.

    Raises:
        DataError: the chunks hold another number of images or change shape.
    """
    path = Path(path)
    digest = hashlib.sha256()
    seen = {"count": 0, "shape": None}

    def write(fh) -> None:
        for chunk in chunks:
            if chunk.dtype != torch.uint8 or chunk.dim() != 4:
                raise DataError(f"{path}: chunks must be uint8 (n, C, H, W)")
            shape = tuple(int(v) for v in chunk.shape[1:])
            if seen["shape"] is None:
                seen["shape"] = shape
                digest.update(str((count, *shape)).encode())
            elif shape != seen["shape"]:
                raise DataError(f"{path}: image shape changed from {seen['shape']} to {shape}")
            data = np.ascontiguousarray(chunk.numpy())
            fh.write(memoryview(data).cast("B"))
            digest.update(memoryview(data).cast("B"))
            seen["count"] += int(chunk.shape[0])
        if seen["count"] != count:
            raise DataError(f"{path}: expected {count} images, the decoder made {seen['count']}")

    atomic_write_with(path, write)
    note = {
        "format": STREAM_FORMAT,
        "count": count,
        "shape": list(seen["shape"]),
        "sha256": digest.hexdigest(),
    }
    atomic_write_with(_note_path(path), lambda fh: fh.write(json.dumps(note).encode()))
    return DiskImages(path, seen["shape"], count, digest=note["sha256"])


def open_images_file(path: str | Path, count: int | None = None) -> DiskImages | None:
    """The entry at ``path`` when its note and size agree (and it holds ``count`` images when
    given); None when it is missing, unfinished or foreign."""
    path = Path(path)
    try:
        note = json.loads(_note_path(path).read_text())
        shape = tuple(int(v) for v in note["shape"])
        total = int(note["count"])
        if note.get("format") != STREAM_FORMAT or len(shape) != 3:
            return None
        if path.stat().st_size != total * int(np.prod(shape)):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if count is not None and total != count:
        return None
    return DiskImages(path, shape, total, digest=str(note["sha256"]))


def chunked(count: int, decode: Callable[[int], torch.Tensor], size: int = CHUNK_IMAGES):
    """``decode(i)`` for i in 0..count-1, stacked ``size`` at a time."""
    for start in range(0, count, size):
        yield torch.stack([decode(i) for i in range(start, min(count, start + size))])


# ----------------------------------------------------------------------------------------------
# batches for training: in memory, or read ahead by DataLoader workers
# ----------------------------------------------------------------------------------------------


M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter for the size above which ``malloc`` maps fresh memory."""
WORKER_MMAP_THRESHOLD = 1 << 20
"""The threshold :func:`bounded_heap` fixes in loader workers: larger buffers are fresh pages."""


def bounded_heap(_worker_id: int = 0) -> None:
    """Loader-worker start: fix glibc's mmap threshold at 1 MiB.

    glibc raises the threshold to the largest block freed, after which every batch-sized
    buffer comes from the heap; a worker hands each batch to the training process and frees
    it, and its heap then grows by about a batch per step (measured on this machine: +18 MB
    per step with 128 RGB 112x112 batches, 2.2 GB after 100 steps; flat at 0.3 GB with the
    threshold fixed). Elsewhere than glibc this does nothing.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, WORKER_MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


class _Batches(torch.utils.data.Dataset):
    """Item ``i``: the images of batch ``i``, read (and transformed) in a loader worker."""

    def __init__(self, images, batches: list[torch.Tensor], transform, seeds) -> None:
        self.images, self.batches, self.transform, self.seeds = images, batches, transform, seeds

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        index = self.batches[i]
        batch = (
            self.images.read(index) if isinstance(self.images, DiskImages) else self.images[index]
        )
        return batch if self.transform is None else self.transform(batch, self.seeds[i])


def batch_stream(
    images: torch.Tensor | DiskImages,
    batches: list[torch.Tensor],
    *,
    workers: int = 0,
    pin_memory: bool = False,
    prefetch: int = 4,
    transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    seeds: list[int] | None = None,
) -> Iterator[torch.Tensor]:
    """The images of each index batch, in order, optionally passed through
    ``transform(batch, seeds[i])`` (the CPU augmentation, so that it runs beside the step).

    With 0 workers the batches are read (a tensor is indexed) in this process. Otherwise
    ``workers`` DataLoader processes read them ``prefetch`` batches ahead, into pinned memory
    when asked. The batches are the same tensors whatever the worker count: the order and the
    seeds are fixed by the caller, and reading and the transform are deterministic.
    """
    dataset = _Batches(images, batches, transform, seeds or [0] * len(batches))
    if workers == 0:
        for i in range(len(dataset)):
            batch = dataset[i]
            yield batch.pin_memory() if pin_memory else batch
        return
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch,
        worker_init_fn=bounded_heap,
    )
    yield from loader
