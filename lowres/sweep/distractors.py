"""Distractors of identification and open-set sweeps: ``lowres sweep --distractors DATASET``.

A distractor is a face of somebody in no gallery: it joins every search as a candidate that is
nobody's mate, so a probe's true identity must outscore it too (MegaFace, TinyFace's
Gallery_Distractor). Each distractor image is its own candidate, as in TinyFace's evaluation
code (distractors there carry label -100, which matches no probe).

``DATASET`` is one of:

* ``synth`` (source ``synth-distractors``): the synthetic generator's distractor split
  (:mod:`lowres.data.synthetic`: one face of each of the preset's ``distractor_identities``,
  global identity indices from ``DISTRACTOR_BASE`` = 2^41, above every training index and every
  test fold, so no model trained on them and no gallery holds them), rendered at the test
  images' size and channels with the sweep's preset when the test data is synth (else the cpu
  preset's 1,000), identity seed :data:`lowres.sweep.compute.SPLIT_SEED` like the test split;
* a dataset with a distractor role of its own (a ``tinyface`` manifest: its
  Testing_Set/Gallery_Distractor folder);
* a folder: every image under it (its whole tree), each one person;
* any other dataset name or manifest (``lowres.data.load_dataset``): all of its images;
* ``none``: no distractors, also for a dataset that has its own.

Without ``--distractors``, an identification or open-set sweep of a dataset with its own
distractor role (TinyFace) uses them, as its published protocol does; other datasets have none.

Distractor images of another size or channel count than the test images are fitted to them
(resized by the rule of :mod:`lowres.data.layouts`, grey repeated to RGB or RGB converted to
grey), then embedded like the gallery side: clean with ``pairing="probe"``, degraded at each
scale with ``"both"`` (noise seed = the sweep's seed). The distractor set (its source, the set's
name, with its count and content digest) enters the sweep's settings and every cell key, so
cells with other distractors are never reused, and the ``dataset`` column of every row of the
sweep reads ``<test set>+<count> distractors (<source>)``, e.g. ``synth+1000 distractors
(synth-distractors)`` or ``tinyface+153428 distractors (tinyface-distractors)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lowres.data import load_dataset
from lowres.data.dataset import FaceDataset
from lowres.data.layouts import Entry, list_images, load_entries, resize_image
from lowres.data.manifest import Manifest
from lowres.data.registry import has_distractor_role, load_distractor_role
from lowres.data.synthetic import load_synth
from lowres.errors import ConfigError, DataError
from lowres.sweep.compute import SPLIT_SEED

__all__ = ["NONE", "DistractorSet", "fit_images", "resolve_distractors"]

NONE = "none"
"""``--distractors none``: no distractors, also for a dataset that brings its own."""


@dataclass(frozen=True)
class DistractorSet:
    """The distractors of a sweep: where they came from and their images (fitted to the test
    images' size and channels)."""

    source: str
    dataset: FaceDataset

    @property
    def count(self) -> int:
        return len(self.dataset)

    def key(self) -> dict[str, Any]:
        """What cells depend on: source, count and the images' content digest."""
        return {
            "source": self.source,
            "count": self.count,
            "digest": self.dataset.content_digest(),
        }

    def label(self, test_name: str) -> str:
        """The ``dataset`` column of a sweep with these distractors.

        >>> pixels = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
        >>> ds = FaceDataset("d", pixels, torch.arange(3), ["a", "b", "c"])
        >>> DistractorSet("synth", ds).label("orl")
        'orl+3 distractors (synth)'
        """
        return f"{test_name}+{self.count} distractors ({self.source})"


def fit_images(images: torch.Tensor, size: tuple[int, int], channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> (N, channels, size): channels converted (grey repeated to RGB, RGB
    to grey with Pillow's ITU-R 601 luma), sides resized by :func:`resize_image`; unchanged
    when they already match."""
    if images.shape[1] == channels and tuple(images.shape[2:]) == tuple(size):
        return images
    out = []
    for img in images:
        if img.shape[0] != channels:
            img = img.expand(3, -1, -1) if channels == 3 else _luma(img)
        out.append(resize_image(img.contiguous(), size))
    return torch.stack(out)


def _luma(img: torch.Tensor) -> torch.Tensor:
    grey = Image.fromarray(img.numpy().transpose(1, 2, 0)).convert("L")
    return torch.from_numpy(np.asarray(grey, dtype=np.uint8).copy())[None]


def _folder_set(folder: Path, test: FaceDataset) -> FaceDataset:
    """Every image under ``folder``, each its own identity (its path), at the test's size."""
    files = list_images(folder, recursive=True)
    if not files:
        raise DataError(
            f"distractor folder {folder} holds no image (jpg/jpeg/png/pgm/ppm/bmp, any depth); "
            "give a folder of face crops, or --distractors none"
        )
    m = Manifest(
        name=f"{folder.name or 'folder'}-distractors",
        kind="identity-folders",
        path=None,
        root_text=str(folder),
        image_size=test.image_size,
        channels=test.channels,
        source_text=str(folder),
    )
    entries = [Entry(f, str(f.relative_to(folder))) for f in files]
    return load_entries(entries, m, folder, part="distractors")


def _load(text: str, config, test: FaceDataset) -> tuple[str, FaceDataset]:
    """(source, dataset) of ``--distractors text``; the source is the set's name."""
    if text == "synth":
        preset = config.preset if str(config.data) == "synth" else None
        ds = load_synth(
            "distractor", preset, SPLIT_SEED, size=test.image_size, channels=test.channels
        )
        return "synth-distractors", ds
    if not Path(text).exists() and ("/" in text or text.endswith(".toml")):
        raise DataError(
            f"--distractors {text}: no such folder or manifest; give synth, a dataset name "
            "(lowres data list), an existing folder of face crops, or none"
        )
    if Path(text).is_dir() and not (Path(text) / "train.rec").is_file():
        ds = _folder_set(Path(text), test)
        return ds.name, ds
    if has_distractor_role(text):
        ds = load_distractor_role(text)
        return ds.name, ds
    if text == str(config.data):
        raise ConfigError(
            f"--distractors {text} is the test set itself: distractors must be people in no "
            "gallery; give another set (e.g. synth or a folder of other faces)"
        )
    ds = load_dataset(text)
    return ds.name, ds


def resolve_distractors(config, test: FaceDataset) -> DistractorSet | None:
    """The distractors of a sweep (module docstring), loaded, checked and fitted to ``test``;
    None when it has none.

    Raises:
        ConfigError: distractors with ``--protocol verification`` or ``template`` (pair
            protocols: nothing is searched), or the test set itself.
        DataError: an empty distractor set, a path that does not exist, a missing dataset
            (says where to get it).
    """
    text = None if config.distractors is None else str(config.distractors).strip()
    if config.protocol in ("verification", "template"):
        if text not in (None, NONE):
            raise ConfigError(
                f"--distractors {text} with --protocol {config.protocol}: distractors join "
                "identification searches; use them with --protocol identification or open-set"
            )
        return None
    if text is None:
        if not has_distractor_role(config.data):
            return None
        text = str(config.data)
    if text == "":
        raise ConfigError(
            "--distractors is empty; give synth, a dataset, a folder of faces, or none"
        )
    if text.lower() == NONE:
        return None
    source, ds = _load(text, config, test)
    if len(ds) == 0:
        raise DataError(
            f"distractor set {text} is empty (0 images); give a set with images, or "
            "--distractors none"
        )
    fitted = fit_images(ds.images, test.image_size, test.channels)
    if fitted is not ds.images:
        ds = FaceDataset(ds.name, fitted, ds.labels, ds.identities, dict(ds.meta))
    return DistractorSet(source, ds)
