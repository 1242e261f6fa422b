"""Contact sheets: identities side by side, one identity across the sweep's scales."""

from __future__ import annotations

import io
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from lowres.data.synthetic.knobs import (
    DEFAULT_KNOBS,
    PRESETS,
    SWEEP_SCALES,
    SynthKnobs,
    check_preset,
    preset_knobs,
)
from lowres.data.synthetic.split import check_size, identity_indices, render_faces
from lowres.errors import ConfigError, DataError
from lowres.files import atomic_write_bytes


def down_up(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Downsample by ``scale`` of the side (area) and upsample back (bicubic), as the sweep does.

    Args:
        images: uint8 or float (B, C, H, W); float images are taken as 0..255 if uint8 input.
        scale: 0 < s <= 1; target (round(H*s), round(W*s)), each >= 1.

    Returns:
        Same dtype and shape as ``images``.
    """
    if not 0 < scale <= 1:
        raise ConfigError(f"scale must satisfy 0 < s <= 1, got {scale!r}")
    h, w = images.shape[-2:]
    small = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = images.float()
    if small != (h, w):
        x = F.interpolate(x, size=small, mode="area")
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
    if images.dtype == torch.uint8:
        return x.clamp_(0, 255).round_().to(torch.uint8)
    return x.to(images.dtype)


def _grid(images: torch.Tensor, rows: int, cols: int, gap: int = 2) -> torch.Tensor:
    """(rows*cols, C, H, W) uint8 -> (C, rows*(H+gap)-gap, cols*(W+gap)-gap), white gaps."""
    _, c, h, w = images.shape
    out = torch.full((c, rows * (h + gap) - gap, cols * (w + gap) - gap), 255, dtype=torch.uint8)
    for k in range(rows * cols):
        r, q = divmod(k, cols)
        out[:, r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = images[k]
    return out


def _sheet_images(
    identity_index: torch.Tensor,
    sample_index: torch.Tensor,
    seed: int,
    knobs: SynthKnobs,
    preset: str | None,
    size: tuple[int, int] | None,
    channels: int | None,
) -> torch.Tensor:
    pre = PRESETS[check_preset(preset)]
    knobs = preset_knobs(preset, knobs)
    size = pre.size if size is None else check_size(size, "size")
    render_size = pre.render_size if size == pre.size else size
    return render_faces(
        identity_index,
        sample_index,
        seed=seed,
        knobs=knobs,
        size=size,
        render_size=render_size,
        channels=channels or pre.channels,
    )


def identity_sheet(
    num_identities: int = 8,
    num_samples: int = 8,
    *,
    split: str = "test",
    fold: int = 0,
    seed: int = 0,
    knobs: SynthKnobs = DEFAULT_KNOBS,
    preset: str | None = None,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> torch.Tensor:
    """Contact sheet: rows = identities (consecutive indices, so each family of
    ``knobs.family_size`` look-alikes sits together), columns = images under random nuisance.

    Size and channels default to the preset's ("cpu": 56x48 grey, "gpu": 112x96 RGB).

    Returns:
        uint8 (C, H', W'), 2-pixel white gaps between cells.
    """
    if num_identities < 1 or num_samples < 1:
        raise ConfigError("identity_sheet needs num_identities >= 1 and num_samples >= 1")
    ids = identity_indices(split, num_identities, fold).repeat_interleave(num_samples)
    samples = torch.arange(num_samples).repeat(num_identities)
    imgs = _sheet_images(ids, samples, seed, knobs, preset, size, channels)
    return _grid(imgs, num_identities, num_samples)


def scale_sheet(
    identity: int = 0,
    scales: tuple[float, ...] = SWEEP_SCALES,
    num_samples: int = 4,
    *,
    split: str = "test",
    fold: int = 0,
    seed: int = 0,
    knobs: SynthKnobs = DEFAULT_KNOBS,
    preset: str | None = None,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> torch.Tensor:
    """One identity at the sweep's scales: rows = images of the identity, columns = scales
    1, 1/2, 1/4, 1/8, 1/16 (area downsample to round(side * s), bicubic upsample back).

    Returns:
        uint8 (C, H', W'), 2-pixel white gaps between cells.
    """
    if num_samples < 1 or not scales or identity < 0:
        raise ConfigError("scale_sheet needs identity >= 0, num_samples >= 1 and a scale")
    ids = identity_indices(split, identity + 1, fold)[-1:].repeat(num_samples)
    imgs = _sheet_images(ids, torch.arange(num_samples), seed, knobs, preset, size, channels)
    cols = torch.stack([down_up(imgs, float(s)) for s in scales], 1).flatten(0, 1)
    return _grid(cols, num_samples, len(scales))


def _write_png(sheet: torch.Tensor, path: Path) -> Path:
    """Write a uint8 (C, H, W) sheet as a PNG atomically (temporary file + os.replace)."""
    if not path.parent.is_dir():
        raise DataError(f"folder {path.parent} for the sheet does not exist; create it first")
    arr = sheet.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG")
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        raise DataError(f"cannot write sheet {path}: {exc}; choose a writable path") from None
    return path


def scales_sheet_path(path: str | Path) -> Path:
    """Where the scale sheet goes next to an identity sheet: ``<stem>_scales.png``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_scales.png")


def write_scale_sheet(
    path: str | Path,
    *,
    identity: int = 0,
    num_samples: int = 4,
    seed: int = 0,
    fold: int = 0,
    preset: str | None = None,
    knobs: SynthKnobs = DEFAULT_KNOBS,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> Path:
    """Write ``scale_sheet`` of test identity ``identity`` to ``scales_sheet_path(path)``.

    ``path`` is the identity (contact) sheet's path; ``lowres data show synth --sheet PATH``
    calls this so both sheets sit side by side. Returns the written path.
    """
    sheet = scale_sheet(
        identity,
        num_samples=num_samples,
        fold=fold,
        seed=seed,
        knobs=knobs,
        preset=preset,
        size=size,
        channels=channels,
    )
    return _write_png(sheet, scales_sheet_path(path))


def write_sheets(
    path: str | Path,
    *,
    seed: int = 0,
    fold: int = 0,
    preset: str | None = None,
    knobs: SynthKnobs = DEFAULT_KNOBS,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> tuple[Path, Path]:
    """Write ``identity_sheet`` (8 identities x 8 images) to ``path`` and the scale sheet to
    ``<stem>_scales.png`` beside it. Returns both paths."""
    common = dict(seed=seed, fold=fold, preset=preset, knobs=knobs, size=size, channels=channels)
    first = _write_png(identity_sheet(**common), Path(path))
    return first, write_scale_sheet(path, **common)
