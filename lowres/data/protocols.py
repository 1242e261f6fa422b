"""Verification protocols: identity-disjoint folds, all-vs-all pairs, LFW pair lists.

All functions are pure: they take labels or a file path and return tensors; nothing here touches
pixels. Indices are int64 tensors, same/different flags are bool tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from lowres.errors import DataError
from lowres.files import sha256_file

__all__ = [
    "PairList",
    "all_vs_all_pairs",
    "identity_folds",
    "lfw_image_path",
    "pair_counts",
    "read_lfw_pairs",
    "verify_sha256",
]


@dataclass
class PairList:
    """A fixed list of verification pairs, as in LFW's ``pairs.txt``.

    Attributes:
        name_a: identity name of the first image of each pair, length P.
        num_a: image number (1-based, as in LFW file names) of the first image, int64 (P,).
        name_b: identity name of the second image, length P.
        num_b: image number of the second image, int64 (P,).
        issame: True for a genuine pair, bool (P,).
        fold: fold index 0..F-1 of each pair, int64 (P,).
        idx_a: index of the first image in the owning ``FaceDataset.images`` (P,), or None when
            the list is not attached to a dataset.
        idx_b: index of the second image, like ``idx_a``.
    """

    name_a: list[str]
    num_a: torch.Tensor
    name_b: list[str]
    num_b: torch.Tensor
    issame: torch.Tensor
    fold: torch.Tensor
    idx_a: torch.Tensor | None = field(default=None, repr=False)
    idx_b: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.name_a)

    @property
    def num_folds(self) -> int:
        """Number of folds F (1 for View 1 files)."""
        return int(self.fold.max().item()) + 1 if len(self) else 0

    @property
    def num_genuine(self) -> int:
        return int(self.issame.sum().item())

    @property
    def num_impostor(self) -> int:
        return len(self) - self.num_genuine

    def select(self, mask: torch.Tensor) -> PairList:
        """Pairs where ``mask`` (bool (P,)) is True, with their attached indices if any."""
        keep = torch.nonzero(mask, as_tuple=False).flatten().tolist()
        return PairList(
            name_a=[self.name_a[i] for i in keep],
            num_a=self.num_a[mask],
            name_b=[self.name_b[i] for i in keep],
            num_b=self.num_b[mask],
            issame=self.issame[mask],
            fold=self.fold[mask],
            idx_a=None if self.idx_a is None else self.idx_a[mask],
            idx_b=None if self.idx_b is None else self.idx_b[mask],
        )

    def keys(self) -> set[tuple[str, int]]:
        """Every (identity, image number) the pairs refer to."""
        out = set(zip(self.name_a, self.num_a.tolist(), strict=True))
        out.update(zip(self.name_b, self.num_b.tolist(), strict=True))
        return out

    def attach(self, index: dict[tuple[str, int], int]) -> PairList:
        """Copy with ``idx_a``/``idx_b`` filled from ``index`` ((name, num) -> image index).

        Raises:
            DataError: a pair refers to an image that ``index`` lacks.
        """
        try:
            idx_a = [index[k] for k in zip(self.name_a, self.num_a.tolist(), strict=True)]
            idx_b = [index[k] for k in zip(self.name_b, self.num_b.tolist(), strict=True)]
        except KeyError as exc:
            name, num = exc.args[0]
            raise DataError(
                f"pair list refers to {lfw_image_path(name, num)} which is not in the dataset; "
                "check that the image folder is complete"
            ) from None
        return PairList(
            self.name_a,
            self.num_a,
            self.name_b,
            self.num_b,
            self.issame,
            self.fold,
            idx_a=torch.tensor(idx_a, dtype=torch.int64),
            idx_b=torch.tensor(idx_b, dtype=torch.int64),
        )


def _check_labels(labels: torch.Tensor) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise DataError(f"labels must be a 1-D tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    return labels.to(torch.int64)


def identity_folds(
    labels: torch.Tensor, n_folds: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split the identities into ``n_folds`` disjoint test blocks.

    The distinct labels are shuffled with a ``torch.Generator`` seeded by ``seed`` and cut into
    ``n_folds`` blocks whose sizes differ by at most one (``torch.tensor_split``). Fold k tests on
    block k and trains on every other identity, so each identity is tested exactly once.

    Args:
        labels: int64 (N,) identity label of each image.
        n_folds: number of folds, 2 <= n_folds <= number of identities.
        seed: shuffle seed; the same seed gives the same folds.

    Returns:
        ``n_folds`` pairs ``(train_ids, test_ids)``, each a sorted int64 tensor of labels.

    Example:
        >>> folds = identity_folds(torch.arange(40).repeat_interleave(10), 4, seed=0)
        >>> [(len(tr), len(te)) for tr, te in folds]
        [(30, 10), (30, 10), (30, 10), (30, 10)]
    """
    labels = _check_labels(labels)
    ids = torch.unique(labels)
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or not 2 <= n_folds <= len(ids):
        raise DataError(
            f"n_folds must be an integer between 2 and the number of identities ({len(ids)}), "
            f"got {n_folds!r}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    shuffled = ids[torch.randperm(len(ids), generator=gen)]
    out = []
    for block in torch.tensor_split(shuffled, n_folds):
        test = torch.sort(block).values
        train = ids[~torch.isin(ids, test)]
        out.append((train, test))
    return out


def all_vs_all_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every unordered pair of images i < j, in row-major order.

    Materialises N(N-1)/2 pairs; for large sets stream with ``lowres.metrics`` instead and use
    :func:`pair_counts` for the totals.

    Args:
        labels: int64 (N,) identity label of each image.

    Returns:
        ``(idx_a, idx_b, issame)``: int64 (P,), int64 (P,), bool (P,) with P = N(N-1)/2;
        ``issame[p] == (labels[idx_a[p]] == labels[idx_b[p]])``.
    """
    labels = _check_labels(labels)
    n = labels.numel()
    idx = torch.triu_indices(n, n, offset=1)
    idx_a, idx_b = idx[0].contiguous(), idx[1].contiguous()
    return idx_a, idx_b, labels[idx_a] == labels[idx_b]


def pair_counts(labels: torch.Tensor) -> tuple[int, int]:
    """(genuine, impostor) counts of :func:`all_vs_all_pairs` without building the pairs."""
    labels = _check_labels(labels)
    n = labels.numel()
    per_id = torch.bincount(labels - labels.min()) if n else torch.zeros(0, dtype=torch.int64)
    genuine = int((per_id * (per_id - 1) // 2).sum().item())
    return genuine, n * (n - 1) // 2 - genuine


def lfw_image_path(name: str, num: int) -> str:
    """Relative path of an LFW image: ``<name>/<name>_<4-digit num>.jpg``."""
    return f"{name}/{name}_{int(num):04d}.jpg"


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise DataError unless ``path`` exists and its sha256 equals ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"protocol file {path} is missing; restore it from the repository")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise DataError(
            f"protocol file {path} has sha256 {actual[:12]}..., expected {expected[:12]}...; "
            "the file was changed or is a different version: restore the original"
        )


MAX_NUMBER = 10**9
"""Largest image number (and pair count) a pair list may hold, plus one: LFW's are 4 digits."""


def _int(token: str, path: Path, lineno: int) -> int:
    try:
        value = int(token)
    except ValueError:
        raise DataError(f"{path}:{lineno}: expected an integer, got {token!r}") from None
    if not 0 <= value < MAX_NUMBER:
        raise DataError(
            f"{path}:{lineno}: expected an integer in 0..{MAX_NUMBER - 1:,}, got {token}; fix "
            "the pair list"
        )
    return value


def read_lfw_pairs(path: str | Path) -> PairList:
    """Parse an LFW pair list (``pairs.txt``, ``pairsDevTrain.txt``, ``pairsDevTest.txt``).

    Format: a header ``<folds>\\t<n>`` (View 2) or ``<n>`` (View 1, one fold), then per fold
    ``n`` genuine lines ``name i j`` followed by ``n`` impostor lines ``name1 i name2 j``.

    Args:
        path: the pair-list file.

    Returns:
        PairList with ``2 * n * folds`` pairs; ``fold`` counts from 0.

    Raises:
        DataError: the file is missing or not in that format (message names the line).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"pair list {path} not found; restore it from the repository") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read pair list {path}: {exc}") from None
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise DataError(f"pair list {path} is empty; restore it from the repository")
    head = lines[0].split()
    if len(head) == 1:
        n_folds, per = 1, _int(head[0], path, 1)
    elif len(head) == 2:
        n_folds, per = _int(head[0], path, 1), _int(head[1], path, 1)
    else:
        raise DataError(f"{path}:1: header must be '<folds> <n>' or '<n>', got {lines[0]!r}")
    expected = n_folds * 2 * per
    if len(lines) - 1 != expected:
        raise DataError(
            f"pair list {path} has {len(lines) - 1} pair lines, header promises {expected} "
            f"({n_folds} folds x {per} genuine + {per} impostor); the file is truncated or edited"
        )
    name_a, num_a, name_b, num_b, same, fold = [], [], [], [], [], []
    for k, line in enumerate(lines[1:]):
        lineno = k + 2
        tokens = line.split()
        genuine = (k % (2 * per)) < per
        if genuine and len(tokens) == 3:
            a, i, j = tokens
            b = a
        elif not genuine and len(tokens) == 4:
            a, i, b, j = tokens
        else:
            want = "'name i j'" if genuine else "'name1 i name2 j'"
            raise DataError(f"{path}:{lineno}: expected {want}, got {line.strip()!r}")
        name_a.append(a)
        num_a.append(_int(i, path, lineno))
        name_b.append(b)
        num_b.append(_int(j, path, lineno))
        same.append(genuine)
        fold.append(k // (2 * per))
    return PairList(
        name_a=name_a,
        num_a=torch.tensor(num_a, dtype=torch.int64),
        name_b=name_b,
        num_b=torch.tensor(num_b, dtype=torch.int64),
        issame=torch.tensor(same, dtype=torch.bool),
        fold=torch.tensor(fold, dtype=torch.int64),
    )
