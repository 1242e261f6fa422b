"""TinyFace (Cheng, Zhu and Gong, ACCV 2018) in its published layout.

The release (https://qmul-tinyface.github.io/) unpacks to::

    tinyface/
      Training_Set/<id>/<id>_<n>.jpg          2,570 identities, 7,804 images
      Testing_Set/Probe/<id>_<n>.jpg          3,728 probes
      Testing_Set/Gallery_Match/<id>_<n>.jpg  4,443 gallery images of the probes' 2,569 ids
      Testing_Set/Gallery_Distractor/...      153,428 unlabelled distractor images

The identity of a Probe or Gallery_Match image is its file name up to the first ``_`` (the
rule of the set's evaluation code: ``int(basename.split('_')[0])``, which matches the
``*_img_ID_pairs.mat`` lists); Training_Set images take the identity of their folder. The
evaluation searches each probe in Gallery_Match + Gallery_Distractor; a distractor is nobody's
mate (label -100 there): here each distractor image is its own candidate.

lowres reads the manifest's ``root`` as the ``tinyface`` folder above: the test set is
Gallery_Match (role gallery) then Probe (role probe), each in file-name order; the training set
(``get_split(..., fold=0)[0]``) is Training_Set, needed only when a model trains on TinyFace;
the distractors are :func:`load_tinyface_distractors`. Every crop is resized to the manifest's
``image_size`` (:mod:`lowres.data.layouts`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lowres.data.dataset import GALLERY, PROBE, FaceDataset
from lowres.data.images import scan_identity_folders
from lowres.data.layouts import (
    Entry,
    check_no_preset,
    list_images,
    load_entries,
    require_folder,
)
from lowres.data.manifest import Manifest, require_root
from lowres.errors import DataError

__all__ = [
    "DISTRACTOR_DIR",
    "GALLERY_DIR",
    "PROBE_DIR",
    "TRAIN_DIR",
    "load_tinyface_distractors",
    "load_tinyface_split",
    "load_tinyface_test",
    "require_training_set",
    "tinyface_identity",
    "tinyface_train_labels",
]

PROBE_DIR = "Testing_Set/Probe"
GALLERY_DIR = "Testing_Set/Gallery_Match"
DISTRACTOR_DIR = "Testing_Set/Gallery_Distractor"
TRAIN_DIR = "Training_Set"


def tinyface_identity(path: Path) -> str:
    """The identity a Probe / Gallery_Match file name carries (``12_3.jpg`` -> ``"12"``).

    Raises:
        DataError: a name without ``<id>_`` in front.
    """
    head, sep, _ = path.stem.partition("_")
    if not sep or not head:
        raise DataError(
            f"TinyFace file {path} does not carry an identity id (<id>_<n>.jpg, as in the "
            "published Probe and Gallery_Match folders); remove it or restore its name"
        )
    return head


def _role_entries(m: Manifest, root: Path, relative: str, role: int, what: str) -> list[Entry]:
    folder = require_folder(m, root, relative, what)
    return [Entry(f, tinyface_identity(f), role) for f in list_images(folder)]


def load_tinyface_test(m: Manifest, *, preset: str | None = None, cache_dir=None) -> FaceDataset:
    """Gallery_Match (role gallery) then Probe (role probe), one label per identity."""
    check_no_preset(m, preset)
    root = require_root(m)
    entries = _role_entries(m, root, GALLERY_DIR, GALLERY, "gallery (Gallery_Match)")
    entries += _role_entries(m, root, PROBE_DIR, PROBE, "probe (Probe)")
    return load_entries(entries, m, root, part="test", cache_dir=cache_dir)


def load_tinyface_distractors(m: Manifest, *, cache_dir=None) -> FaceDataset:
    """Every image under Testing_Set/Gallery_Distractor (its whole tree, path order), each its
    own identity (named by its path): the non-mated gallery candidates of the evaluation."""
    root = require_root(m)
    folder = require_folder(m, root, DISTRACTOR_DIR, "distractor (Gallery_Distractor)")
    entries = [Entry(f, str(f.relative_to(folder))) for f in list_images(folder, recursive=True)]
    if not entries:
        raise DataError(
            f"dataset {m.name!r}: the distractor set {folder} is empty; it holds 153,428 images "
            f"in the release (get the data: {m.where_to_get()}), or sweep with --distractors none"
        )
    ds = load_entries(entries, m, root, part="distractors", cache_dir=cache_dir)
    ds.name = f"{m.name}-distractors"
    return ds


def require_training_set(m: Manifest) -> Path:
    """The Training_Set folder, or a one-line DataError: models that train on TinyFace need it
    (the test set loads without it)."""
    return require_folder(m, require_root(m), TRAIN_DIR, "training (Training_Set)")


def tinyface_train_labels(m: Manifest) -> torch.Tensor:
    """Training_Set's labels without decoding an image (empty when the folder is absent: a
    copy of the test set alone)."""
    folder = require_root(m) / TRAIN_DIR
    if not folder.is_dir():
        return torch.zeros(0, dtype=torch.int64)
    groups = scan_identity_folders(folder)
    return torch.tensor([k for k, (_, fs) in enumerate(groups) for _ in fs], dtype=torch.int64)


def _load_train(m: Manifest, root: Path, cache_dir) -> FaceDataset:
    folder = require_training_set(m)
    entries = [Entry(f, ident) for ident, files in scan_identity_folders(folder) for f in files]
    return load_entries(entries, m, root, part="train", cache_dir=cache_dir)


def load_tinyface_split(
    m: Manifest, *, fold: int = 0, preset: str | None = None, cache_dir=None
) -> tuple[FaceDataset, FaceDataset]:
    """(Training_Set, test set): TinyFace's one fixed split (fold 0)."""
    check_no_preset(m, preset)
    if fold != 0:
        raise DataError(f"dataset {m.name!r} has one fixed train/test split (fold 0), got {fold}")
    test = load_tinyface_test(m, cache_dir=cache_dir)
    return _load_train(m, require_root(m), cache_dir), test
