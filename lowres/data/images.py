"""Image decoding, identity-folder datasets and the decode-once uint8 cache.

Layout of an identity-folder dataset: ``root/<identity>/<image>.{jpg,jpeg,png,pgm,ppm,bmp}``;
the folder name is the identity. Images are decoded with Pillow into uint8 (C, H, W), C = 1 for
grey and 3 for colour (RGB). The stacked (N, C, H, W) tensor is cached on disk as a ``.pt`` file
holding only tensors (loaded with ``weights_only=True``), keyed by a sha256 over the relative file
list and every file's bytes, so any added, removed, renamed or edited image misses the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lowres.data.dataset import FaceDataset
from lowres.data.stream import (
    DiskImages,
    chunked,
    open_images_file,
    should_stream,
    write_images_file,
)
from lowres.errors import DataError
from lowres.files import atomic_write_with

__all__ = [
    "IMAGE_EXTENSIONS",
    "FaceDataset",
    "cache_dir_default",
    "cached_image_stream",
    "cached_images",
    "decode_image",
    "load_identity_folders",
    "scan_identity_folders",
]

log = logging.getLogger("lowres")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp")
CACHE_FORMAT = 2  # bump when the cached file layout changes, so old files are not reused
# 2: the file records the sha256 of its pixels, checked on every load


def decode_image(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """Decode one image file to uint8 (C, H, W).

    Args:
        path: a jpg/png/pgm/ppm/bmp file. 16-bit grey is scaled to 8 bits (``v / 257``,
            rounded); 16-bit colour is read by Pillow as its high byte.
        channels: 1 converts to grey, 3 to RGB; None keeps grey as 1 and everything else as 3.

    Returns:
        uint8 (C, H, W) tensor.

    Raises:
        DataError: the file is missing, truncated or not an image (the message names it).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns (and errors above twice the limit) for images of over 89 M pixels;
            # the error becomes the one-line DataError below, the warning is not repeated.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                if im.mode in _WIDE_GREY:
                    arr = _grey_to_8bit(np.asarray(im), path)
                    if channels == 3:
                        arr = np.repeat(arr[..., None], 3, axis=2)
                elif channels == 1 or (channels is None and im.mode in ("1", "L", "LA")):
                    arr = np.asarray(im.convert("L"), dtype=np.uint8)
                else:
                    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(
            f"image {path} not found; the dataset folder changed while reading"
        ) from None
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"cannot decode image {path} ({reason}); the file is corrupt or truncated: "
            "re-download it or remove it"
        ) from None
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = np.ascontiguousarray(arr.transpose(2, 0, 1))
    return torch.from_numpy(arr.copy())


_WIDE_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N")
"""Pillow's modes of 16-bit (and 32-bit integer) grey images."""


def _grey_to_8bit(arr: np.ndarray, path: Path) -> np.ndarray:
    """16-bit grey (0..65535) to uint8 by rounding ``v / 257``, the inverse of the usual
    8 -> 16-bit expansion ``v * 257``; Pillow's own ``convert("L")`` would clip at 255.

    >>> _grey_to_8bit(np.array([0, 257, 32896, 65535]), Path("x.png")).tolist()
    [0, 1, 128, 255]
    """
    wide = arr.astype(np.int64)
    if wide.size and (wide.min() < 0 or wide.max() > 65535):
        raise DataError(
            f"image {path} is integer grey with values outside 0..65535; convert it to 8-bit first"
        )
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def scan_identity_folders(
    root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> list[tuple[str, list[Path]]]:
    """List ``root/<identity>/<image>`` files, identities and files in sorted order.

    Hidden entries (starting with '.') are skipped. Folders without images are skipped.

    Raises:
        DataError: ``root`` is not a folder or holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} is not a folder")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    out = []
    for ident in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f
            for f in ident.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in exts
        )
        for path in (ident, *files):
            try:
                path.name.encode("utf-8")
            except UnicodeEncodeError:
                raise DataError(
                    f"{os.fsdecode(path)!r} under {root} has a name that is not valid UTF-8; "
                    "rename it (identity names enter every results table)"
                ) from None
        if files:
            out.append((ident.name, files))
    if not out:
        raise DataError(
            f"no images found under {root}; expected root/<identity>/<image> with extension "
            f"{'/'.join(e.lstrip('.') for e in exts)}"
        )
    return out


def cache_dir_default() -> Path:
    """``$LOWRES_CACHE`` if set, else ``~/.cache/lowres``."""
    env = os.environ.get("LOWRES_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lowres"


def content_key(files: Sequence[Path], base: Path | None, tag: str) -> str:
    """sha256 over ``tag``, each file's path (relative to ``base``), size and bytes."""
    digest = hashlib.sha256(f"lowres-decoded-v{CACHE_FORMAT}\0{tag}\0".encode())
    for f in files:
        rel = os.path.relpath(f, base) if base is not None else str(f)
        try:
            data = Path(f).read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {f}: {exc.strerror}; check the dataset folder") from None
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


def cached_images(
    files: Sequence[Path],
    decode_all: Callable[[], torch.Tensor],
    *,
    tag: str,
    base: Path | None = None,
    cache_dir: str | Path | None = None,
    count: int | None = None,
) -> torch.Tensor:
    """Return ``decode_all()``, decoding once and reusing a cached copy afterwards.

    Args:
        files: the source files whose bytes define the cache key.
        decode_all: builds the uint8 (N, C, H, W) tensor from ``files``.
        tag: dataset tag; also includes decode options so different options do not collide.
        base: paths are keyed relative to it so moving a dataset folder keeps the cache.
        cache_dir: cache folder; None -> :func:`cache_dir_default`. ``False`` disables caching.
        count: the number of images ``decode_all`` makes, when known: a cached tensor of
            another length (a damaged or foreign entry) is rebuilt, not used.

    Returns:
        uint8 (N, C, H, W) tensor, identical on a cache hit and a miss.
    """
    if cache_dir is False:
        return decode_all()
    folder = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    key = content_key(files, base, tag)
    safe_tag = "".join(c if c.isalnum() or c in "-_" else "_" for c in tag)[:40]
    path = folder / "decoded" / f"{safe_tag}-{key[:24]}.pt"
    if path.is_file():
        try:
            # Memory-mapped: the pixels stay in the page cache, shared by every process that
            # loads this entry (two training workers hold one copy), and private on write.
            blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            images = blob["images"]
            if (
                isinstance(images, torch.Tensor)
                and images.dtype == torch.uint8
                and images.dim() == 4
                and (count is None or images.shape[0] == count)
                and blob.get("sha256") == _pixels_sha256(images)
            ):
                return images
            log.info("rebuilding decode cache %s: it does not hold this dataset's images", path)
        except Exception as exc:  # a damaged cache entry is rebuilt, never trusted
            log.info("rebuilding unreadable decode cache %s (%s)", path, _first_line(exc))
    images = decode_all()
    sha = _pixels_sha256(images)
    blob = {"images": images, "format": torch.tensor(CACHE_FORMAT), "sha256": sha}
    try:
        # Streamed into the file (no second in-memory copy of the pixels).
        atomic_write_with(path, lambda fh: torch.save(blob, fh))
    except OSError as exc:
        # a read-only or full cache folder must not stop the run; decoding already succeeded
        log.info("could not write decode cache %s (%s)", path, exc.strerror)
    return images


class RestartInRGB(Exception):
    """A colour image met after grey ones while decoding with ``channels=None``: decode again
    in RGB."""


def cached_image_stream(
    key: str,
    tag: str,
    count: int,
    chunks: Callable[[int | None], Iterator[torch.Tensor]],
    channels: int | None,
    cache_dir: str | Path | None = None,
) -> DiskImages:
    """The streamed twin of :func:`cached_images`, for sets too large to hold in memory.

    Args:
        key: sha256 (hex) of the source files' bytes.
        tag: dataset tag (with the decode options).
        count: the number of images.
        chunks: ``chunks(channels)`` yields uint8 ``(n, C, H, W)`` chunks of every image in
            order; it raises :class:`RestartInRGB` when ``channels=None`` meets colour after grey.
        channels: 1, 3 or None (grey if every image is, else RGB).
        cache_dir: as for :func:`cached_images` (``False`` is not allowed: the file is the set).

    Returns:
        DiskImages over ``<cache>/decoded/<tag>-<key>.u8``, decoded a chunk at a time on a miss.
    """
    folder = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    safe_tag = "".join(c if c.isalnum() or c in "-_" else "_" for c in tag)[:40]
    path = folder / "decoded" / f"{safe_tag}-{key[:24]}.u8"
    found = open_images_file(path, count)
    if found is not None:
        return found
    try:
        return write_images_file(path, count, chunks(channels))
    except RestartInRGB:
        return write_images_file(path, count, chunks(3))


def _pixels_sha256(images: torch.Tensor) -> str:
    """sha256 of a uint8 tensor's bytes and shape: a cache file whose pixels were altered (same
    shape, other values) is rebuilt, never used."""
    digest = hashlib.sha256(str(tuple(images.shape)).encode())
    digest.update(memoryview(images.contiguous().numpy()).cast("B"))
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _stack(images: list[torch.Tensor], files: Sequence[Path]) -> torch.Tensor:
    ref = images[0].shape[1:]
    for img, f in zip(images, files, strict=True):
        if img.shape[1:] != ref:
            raise DataError(
                f"image {f} is {img.shape[1]}x{img.shape[2]} but {files[0]} is {ref[0]}x{ref[1]}; "
                "all images of a dataset must share one size (crop/align them first)"
            )
    return torch.stack(images)


def _peek_bytes(path: Path, channels: int | None) -> int:
    """Decoded bytes of one image, from its header (nothing is decoded); 0 if unreadable (the
    decoder then reports the file)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            c = channels or (1 if im.mode in ("1", "L", "I", "I;16", "F") else 3)
    except Exception:  # decode_image raises the one-line error for this file
        return 0
    return width * height * c


def _folder_chunks(files: Sequence[Path], channels: int | None) -> Iterator[torch.Tensor]:
    """Decoded images of ``files`` in chunks, one size, as :func:`cached_image_stream` wants."""
    first = decode_image(files[0], channels)

    def one(i: int) -> torch.Tensor:
        img = first if i == 0 else decode_image(files[i], channels)
        if img.shape[0] != first.shape[0]:
            if first.shape[0] == 1:
                raise RestartInRGB
            img = img.expand(3, -1, -1)
        if img.shape[1:] != first.shape[1:]:
            _stack([first, img], [files[0], files[i]])  # raises the one-line size error
        return img

    yield from chunked(len(files), one)


def load_identity_folders(
    root: str | Path,
    *,
    name: str | None = None,
    channels: int | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    min_per_identity: int = 2,
    cache_dir: str | Path | None = None,
    meta: dict | None = None,
) -> FaceDataset:
    """Load ``root/<identity>/<image>`` into a FaceDataset (decoded once, then cached).

    Args:
        root: dataset folder.
        name: dataset name (default: the folder name).
        channels: 1 (grey) or 3 (RGB); None -> 1 if every image is grey, else 3.
        extensions: image file extensions to read.
        min_per_identity: smallest allowed number of images per identity; verification needs
            2 (a genuine pair). Use 1 for pair-protocol datasets such as LFW.
        cache_dir: see :func:`cached_images`.
        meta: extra facts stored in ``FaceDataset.meta``.

    Returns:
        FaceDataset with images uint8 (N, C, H, W), labels in identity (sorted folder) order.

    Raises:
        DataError: missing root, no images, an identity with too few images, an undecodable
            image, or mixed image sizes.
    """
    root = Path(root)
    groups = scan_identity_folders(root, extensions)
    for ident, files in groups:
        if len(files) < min_per_identity:
            raise DataError(
                f"identity folder {root / ident} has {len(files)} image; verification needs >= "
                f"{min_per_identity} images per identity: add images or remove the folder"
            )
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    files = [f for _, fs in groups for f in fs]
    labels = torch.tensor([k for k, (_, fs) in enumerate(groups) for _ in fs], dtype=torch.int64)

    def decode_all() -> torch.Tensor:
        imgs = [decode_image(f, channels) for f in files]
        if channels is None and any(im.shape[0] == 3 for im in imgs):
            imgs = [im.expand(3, -1, -1) if im.shape[0] == 1 else im for im in imgs]
        return _stack(imgs, files)

    name = name or root.name
    tag = f"{name}-c{channels or 0}"
    if cache_dir is not False and should_stream(len(files), _peek_bytes(files[0], channels)):
        images = cached_image_stream(
            content_key(files, root, tag),
            tag,
            len(files),
            lambda c: _folder_chunks(files, c),
            channels,
            cache_dir,
        )
    else:
        images = cached_images(
            files, decode_all, tag=tag, base=root, cache_dir=cache_dir, count=len(files)
        )
    info = {"root": str(root), "files": [str(f.relative_to(root)) for f in files]}
    info.update(meta or {})
    return FaceDataset(
        name=name,
        images=images,
        labels=labels,
        identities=[ident for ident, _ in groups],
        meta=info,
    )
