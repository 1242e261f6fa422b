"""The in-memory face dataset every stage consumes: decoded uint8 images, labels, names."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from lowres.data.protocols import PairList
from lowres.data.stream import DiskImages
from lowres.errors import DataError

__all__ = ["GALLERY", "PROBE", "ROLE_NAMES", "FaceDataset"]

GALLERY = 0
"""``FaceDataset.roles`` code of a gallery (enrolment) image of a fixed gallery/probe protocol."""
PROBE = 1
"""``FaceDataset.roles`` code of a probe image."""
ROLE_NAMES = ("gallery", "probe")
"""Role names by code."""


@dataclass
class FaceDataset:
    """Decoded images with contiguous identity labels.

    Attributes:
        name: dataset name (manifest ``name`` or builtin name).
        images: uint8 (N, C, H, W), C in {1, 3}, RGB order: a tensor, or for a large set
            read from files a :class:`~lowres.data.stream.DiskImages` that reads on demand.
        labels: int64 (N,), contiguous 0..K-1.
        identities: K identity names; ``identities[label]`` names a label.
        meta: manifest facts (credit, alignment, source, licence, citation, protocol, ...).
        pairs: a fixed pair protocol attached to this dataset (``idx_a``/``idx_b`` index
            ``images``), or None when verification is all-vs-all.
        roles: uint8 (N,) :data:`GALLERY` / :data:`PROBE` per image for a set whose published
            protocol fixes who is gallery and who is probe (TinyFace's folders, SCface's
            mugshots vs surveillance cameras), or None: the sweep protocols pick the gallery
            (:mod:`lowres.sweep.protocols`) and verification is all-vs-all. With roles,
            verification pairs every gallery image with every probe.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    identities: list[str]
    meta: dict = field(default_factory=dict)
    pairs: PairList | None = None
    roles: torch.Tensor | None = None

    def __post_init__(self) -> None:
        imgs, labels = self.images, self.labels
        if isinstance(imgs, DiskImages):
            pass  # built by lowres.data.stream: uint8 (N, C, H, W) by construction
        elif not isinstance(imgs, torch.Tensor) or imgs.dtype != torch.uint8 or imgs.dim() != 4:
            raise DataError(
                f"dataset {self.name!r}: images must be a uint8 (N, C, H, W) tensor, got "
                f"{getattr(imgs, 'dtype', type(imgs).__name__)} {tuple(getattr(imgs, 'shape', ()))}"
            )
        if imgs.shape[1] not in (1, 3):
            raise DataError(f"dataset {self.name!r}: channels must be 1 or 3, got {imgs.shape[1]}")
        if labels.dtype != torch.int64 or labels.shape != (imgs.shape[0],):
            raise DataError(
                f"dataset {self.name!r}: labels must be int64 ({imgs.shape[0]},), got "
                f"{labels.dtype} {tuple(labels.shape)}"
            )
        roles = self.roles
        if roles is not None and (roles.dtype != torch.uint8 or roles.shape != labels.shape):
            raise DataError(
                f"dataset {self.name!r}: roles must be uint8 ({imgs.shape[0]},), got "
                f"{roles.dtype} {tuple(roles.shape)}"
            )
        k = len(self.identities)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise DataError(
                f"dataset {self.name!r}: labels must lie in 0..{k - 1} (one per identity name)"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def content_digest(self) -> str:
        """sha256 (hex) of what every number computed from this set depends on: the decoded
        pixels with their shape, the labels and the fixed pair list (if any). Names and file
        paths do not enter it: new pixels behind the same file names give a new digest, a moved
        folder the same one. Computed once per object (the set is never modified in place).

        >>> pixels, labels = torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 0])
        >>> a, b = FaceDataset("a", pixels, labels, ["x"]), FaceDataset("b", pixels, labels, ["y"])
        >>> a.content_digest() == b.content_digest()
        True
        """
        cached = self.__dict__.get("_digest")
        if cached is not None:
            return cached
        digest = hashlib.sha256(b"lowres-dataset/1\0")
        parts = [("images", self.images), ("labels", self.labels)]
        if self.pairs is not None and self.pairs.idx_a is not None:
            parts += [
                ("pair_a", self.pairs.idx_a),
                ("pair_b", self.pairs.idx_b),
                ("issame", self.pairs.issame),
                ("pair_fold", self.pairs.fold),
            ]
        if self.roles is not None:
            parts.append(("roles", self.roles))
        for name, tensor in parts:
            if isinstance(tensor, DiskImages):
                # Read in chunks: the same digest as the in-memory tensor of these pixels.
                digest.update(f"{name}:|u1:{tuple(tensor.shape)}\0".encode())
                for chunk in tensor.chunks():
                    digest.update(chunk.numpy().data)
                continue
            arr = np.ascontiguousarray(tensor.detach().cpu().numpy())
            digest.update(f"{name}:{arr.dtype.str}:{arr.shape}\0".encode())
            digest.update(arr.data)
        self.__dict__["_digest"] = digest.hexdigest()
        return self.__dict__["_digest"]

    @property
    def num_identities(self) -> int:
        return len(self.identities)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def subset(self, index: torch.Tensor) -> FaceDataset:
        """The images selected by ``index``, relabelled 0..K'-1 in order of first label value.

        Args:
            index: int64 (M,) image indices or bool (N,) mask.

        Returns:
            A new FaceDataset that keeps the identity names of the labels it still uses. Fixed
            pairs survive when both of their images are selected, re-indexed into the subset;
            roles follow their images.
        """
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = torch.nonzero(index, as_tuple=False).flatten()
        index = index.to(torch.int64)
        old = self.labels[index]
        kept, new = torch.unique(old, sorted=True, return_inverse=True)
        pairs = None
        if self.pairs is not None and self.pairs.idx_a is not None:
            position = torch.full((len(self),), -1, dtype=torch.int64)
            position[index] = torch.arange(index.numel())
            a, b = position[self.pairs.idx_a], position[self.pairs.idx_b]
            keep = (a >= 0) & (b >= 0)
            pairs = self.pairs.select(keep)
            pairs.idx_a, pairs.idx_b = a[keep], b[keep]
        return FaceDataset(
            name=self.name,
            images=self.images[index],
            labels=new.to(torch.int64),
            identities=[self.identities[i] for i in kept.tolist()],
            meta=dict(self.meta),
            pairs=pairs,
            roles=None if self.roles is None else self.roles[index],
        )

    def select_identities(self, ids: torch.Tensor) -> FaceDataset:
        """Subset holding every image whose label is in ``ids`` (int64 labels)."""
        return self.subset(torch.isin(self.labels, torch.as_tensor(ids, dtype=torch.int64)))
