"""Datasets: manifests, builtin ORL / MNIST-5k / synthetic faces, identity folders, protocols.

Public API::

    FaceDataset, PairList
    list_datasets() -> list[dict]
    load_dataset(name_or_path, *, seed=0, preset=None, cache_dir=None) -> FaceDataset
    get_split(name, *, fold=0, seed=0, preset=None) -> (train, test)

Everything here returns uint8 (N, C, H, W) images decoded once and cached on disk.
"""

from lowres.data.dataset import FaceDataset
from lowres.data.protocols import PairList
from lowres.data.registry import (
    get_split,
    get_test_split,
    list_datasets,
    load_dataset,
    split_dataset,
)

__all__ = [
    "FaceDataset",
    "PairList",
    "get_split",
    "get_test_split",
    "list_datasets",
    "load_dataset",
    "split_dataset",
]
