"""Contact sheet of a dataset: rows = identities, columns = samples; written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from lowres.data.dataset import FaceDataset
from lowres.errors import DataError
from lowres.files import atomic_write_bytes

__all__ = ["sheet_indices", "write_contact_sheet"]


def sheet_indices(ds: FaceDataset, ids: int, per_id: int) -> list[tuple[str, list[int]]]:
    """The first ``ids`` identities (label order) with up to ``per_id`` image indices each."""
    if ids < 1 or per_id < 1:
        raise DataError(f"--ids and --per-id must be >= 1, got {ids} and {per_id}")
    rows = []
    for label in range(min(ids, ds.num_identities)):
        where = torch.nonzero(ds.labels == label, as_tuple=False).flatten()[:per_id].tolist()
        rows.append((ds.identities[label], where))
    return rows


def write_contact_sheet(
    ds: FaceDataset, path: str | Path, *, ids: int = 8, per_id: int = 6
) -> Path:
    """Draw a grid of faces with identity labels and write it as a PNG.

    The figure goes to a temporary file next to ``path`` and is moved into place with
    ``os.replace``, so an error never leaves a half-written sheet.

    Args:
        ds: dataset whose uint8 (N, C, H, W) images are shown unscaled (grey with a grey map).
        path: output PNG; its folder must exist.
        ids: number of identity rows.
        per_id: images per row.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError(f"folder {path.parent} for the sheet does not exist; create it first")
    rows = sheet_indices(ds, ids, per_id)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = ds.image_size
    cols = max(len(idx) for _, idx in rows)
    cell = 1.1  # inches for the longer image side
    # inches for the identity labels (about 0.07 in per character at 8 pt) and the title
    left, top = 0.25 + 0.07 * max(len(name) for name, _ in rows), 0.4
    fig_w = cols * cell * w / max(h, w) * 1.04 + left
    fig_h = len(rows) * cell * h / max(h, w) * 1.06 + top
    fig, axes = plt.subplots(len(rows), cols, figsize=(fig_w, fig_h), squeeze=False)
    try:
        for r, (name, idx) in enumerate(rows):
            for c in range(cols):
                ax = axes[r][c]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if c < len(idx):
                    img = ds.images[idx[c]]
                    if img.shape[0] == 1:
                        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=255)
                    else:
                        ax.imshow(img.permute(1, 2, 0).numpy())
                if c == 0:
                    ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        fig.suptitle(
            f"{ds.name}: {ds.num_identities} identities, {len(ds)} images, {h}x{w}",
            fontsize=9,
            y=1 - 0.08 / fig_h,
            va="top",
        )
        fig.subplots_adjust(
            left=left / fig_w,
            right=0.995,
            bottom=0.05 / fig_h,
            top=1 - top / fig_h,
            wspace=0.04,
            hspace=0.06,
        )
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        atomic_write_bytes(path, buf.getvalue())
    finally:
        plt.close(fig)
    return path
