"""Sets read in their published folder layouts (TinyFace, SCface): shared pieces.

Each image's identity and role (gallery or probe, :data:`lowres.data.dataset.GALLERY` /
:data:`~lowres.data.dataset.PROBE`) come from the folder it sits in and its file name, as each
set's own evaluation code reads them; nothing has to be re-organised.

**Resize rule.** These sets hold crops of many sizes (TinyFace's native faces average 20x16
px; SCface's cameras give larger crops the closer the subject stands). A FaceDataset holds one
size, so every image is decoded (:func:`lowres.data.images.decode_image`: converted to the
manifest's ``channels``) and, when its size differs, resized to the manifest's ``image_size``
(H, W) with Pillow's bicubic filter on the uint8 image, aspect ratio not kept (the resize of the
sets' own evaluation code). A sweep's scales are then fractions of that resized width: a probe
at scale 1/2 keeps half of ``image_size``'s width, whatever its native size was. The decoded,
resized images are cached like every other set (keyed by the files' bytes, the size and the
channels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lowres.data.dataset import FaceDataset
from lowres.data.images import IMAGE_EXTENSIONS, cached_images, decode_image
from lowres.data.manifest import Manifest
from lowres.errors import ConfigError, DataError

__all__ = [
    "RESAMPLE",
    "Entry",
    "check_no_preset",
    "identity_order",
    "list_images",
    "load_entries",
    "require_folder",
    "resize_image",
]

RESAMPLE = "bicubic"
"""The filter every crop is resized with (Pillow's ``Image.Resampling.BICUBIC``)."""


@dataclass(frozen=True)
class Entry:
    """One image of a layout: its file, identity name and role code (None: no role)."""

    path: Path
    identity: str
    role: int | None = None


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """uint8 (C, H, W) -> uint8 (C, size[0], size[1]) by the module's resize rule (unchanged
    when it already has that size).

    >>> resize_image(torch.zeros(1, 5, 4, dtype=torch.uint8), (8, 6)).shape
    torch.Size([1, 8, 6])
    """
    h, w = int(size[0]), int(size[1])
    if tuple(image.shape[1:]) == (h, w):
        return image
    arr = image.numpy()
    pil = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    out = np.array(pil.resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)
    out = out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(out))


def identity_order(name: str) -> tuple[int, int, str]:
    """Sort key of identity names: numbers in numeric order first, then the rest by text.

    >>> sorted(["10", "9", "b", "a"], key=identity_order)
    ['9', '10', 'a', 'b']
    """
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def list_images(folder: Path, *, recursive: bool = False) -> list[Path]:
    """The image files of ``folder`` (or of its whole tree), hidden ones skipped, in sorted
    path order."""
    exts = set(IMAGE_EXTENSIONS)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        f
        for f in found
        if f.suffix.lower() in exts
        and f.is_file()
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    )


def require_folder(m: Manifest, root: Path, relative: str, what: str) -> Path:
    """``root/relative`` when it is a folder, else a one-line DataError naming the layout and
    where to get the set."""
    folder = root / relative
    if not folder.is_dir():
        raise DataError(
            f"dataset {m.name!r}: {what} folder {folder} does not exist; {m.name} is read in its "
            f"published layout (see {m.path}); get the data: {m.where_to_get()}"
        )
    return folder


def check_no_preset(m: Manifest, preset: str | None) -> None:
    """Presets size the synthetic generator only."""
    if preset is not None:
        raise ConfigError(
            f"preset {preset!r} applies only to the synthetic dataset (synth), not to "
            f"{m.name}; drop it"
        )


def load_entries(
    entries: Sequence[Entry],
    m: Manifest,
    root: Path,
    *,
    part: str,
    cache_dir=None,
    meta: dict | None = None,
) -> FaceDataset:
    """A FaceDataset of ``entries`` in their order: labels by identity (:func:`identity_order`),
    roles when every entry has one, images decoded and resized by the module's rule (cached).

    Raises:
        DataError: no entries (names the part), or an image that cannot be decoded.
    """
    if not entries:
        raise DataError(
            f"dataset {m.name!r}: its {part} holds no image under {root}; get the data: "
            f"{m.where_to_get()}"
        )
    size = m.image_size
    assert size is not None  # load_manifest requires it for layout kinds
    channels = m.channels or 3
    names = sorted({e.identity for e in entries}, key=identity_order)
    index = {n: i for i, n in enumerate(names)}
    files = [e.path for e in entries]

    def decode_all() -> torch.Tensor:
        return torch.stack([resize_image(decode_image(f, channels), size) for f in files])

    tag = f"{m.name}-{part}-{size[0]}x{size[1]}-c{channels}-{RESAMPLE}"
    images = cached_images(
        files, decode_all, tag=tag, base=root, cache_dir=cache_dir, count=len(files)
    )
    with_roles = all(e.role is not None for e in entries)
    info = m.meta() | {
        "root": str(root),
        "part": part,
        "resize": f"{RESAMPLE} to {size[0]}x{size[1]} (H x W), aspect ratio not kept",
        "files": [str(f.relative_to(root)) for f in files],
    }
    return FaceDataset(
        name=m.name,
        images=images,
        labels=torch.tensor([index[e.identity] for e in entries], dtype=torch.int64),
        identities=names,
        meta=info | (meta or {}),
        roles=torch.tensor([e.role for e in entries], dtype=torch.uint8) if with_roles else None,
    )
