"""The data a run trains and validates on: the training split (and its test identities), the
held-out validation identities, and clean-image features, norms and verification figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from lowres import metrics as M
from lowres.data import get_split, load_dataset
from lowres.data.registry import has_own_split
from lowres.embed import adapt
from lowres.errors import ConfigError
from lowres.train.config import TrainConfig, mix_seed


def load_split(config: TrainConfig) -> tuple[Any, Any]:
    """(train, held-out) sets; with ``train_split="all"`` the held-out set is empty."""
    if config.train_split == "all":
        if has_own_split(config.data):
            train = get_split(config.data, fold=0, seed=config.split_seed, preset=config.preset)[0]
        else:
            train = load_dataset(config.data, seed=config.split_seed, preset=config.preset)
        return train, train.subset(torch.zeros(0, dtype=torch.int64))
    return get_split(config.data, fold=config.fold, seed=config.split_seed, preset=config.preset)


VAL_FAR = 1e-2
"""The FAR of the per-epoch held-out figure ``val_tar``."""


def hold_out_identities(train: Any, count: int, seed: int) -> tuple[Any, Any]:
    """(train without ``count`` identities, those identities): a seeded choice, so every method
    and training seed of one split validates on the same faces.

    Raises:
        ConfigError: fewer than two identities would be held out or left to train on.
    """
    if count == 0:
        return train, None
    k = train.num_identities
    if not 2 <= count <= k - 2:
        raise ConfigError(
            f"val_identities {count} must be in 2..{k - 2} for a training split of {k} identities"
        )
    order = torch.randperm(k, generator=torch.Generator().manual_seed(mix_seed(seed, 7919)))
    return train.select_identities(order[count:]), train.select_identities(order[:count])


@torch.no_grad()
def validation_metrics(model: nn.Module, val_set: Any, adapter: Any, device: torch.device) -> dict:
    """``val_tar`` (exact TAR at :data:`VAL_FAR`) and ``val_auc`` of clean all-vs-all pairs."""

    feats = clean_features(model, val_set.images, adapter, device).double().cpu()
    feats = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    idx_a, idx_b = torch.triu_indices(feats.shape[0], feats.shape[0], offset=1)
    scores = (feats[idx_a] * feats[idx_b]).sum(1).clamp(-1, 1).numpy()
    labels = val_set.labels
    issame = (labels[idx_a] == labels[idx_b]).numpy()
    return {
        "val_tar": float(M.tar_at_far(scores, issame, VAL_FAR).tar),
        "val_auc": float(M.auc(scores, issame)),
    }


def clean_batches(
    model: nn.Module,
    images: Any,
    adapter: Any,
    device: torch.device,
    batch_size: int = 256,
    index: Tensor | None = None,
) -> Iterator[Tensor]:
    """Embeddings of clean images in eval mode, fed the way evaluation feeds the model, one
    batch at a time: the caller keeps what it needs (norms, logits) and memory does not grow
    with the number of images.

    Args:
        model: a FaceModel.
        images: uint8 (N, C, H, W) tensor or :class:`lowres.data.stream.DiskImages`.
        adapter: InputAdapter.
        device: where to run.
        batch_size: images per forward pass.
        index: which images (default: all, in order); read a batch at a time.

    Yields:
        float32 (b, D) on ``device``.
    """
    was_training = model.training
    model.eval()
    count = images.shape[0] if index is None else index.numel()
    try:
        for start in range(0, count, batch_size):
            rows = slice(start, start + batch_size)
            batch = images[rows] if index is None else images[index[rows]]
            # Converted and adapted 32 images at a time: 256 RGB 112x112 images in float are
            # 38 MB, and the whole batch at once raised the peak by 85 MB against 34 MB.
            x = torch.cat(
                [
                    adapt(batch[i : i + 32].to(device).float().div_(255.0), adapter)
                    for i in range(0, batch.shape[0], 32)
                ]
            )
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():  # not around the yield: grad mode is global state
                features = model(x).float()
            yield features
    finally:
        model.train(was_training)


def clean_features(
    model: nn.Module, images: Tensor, adapter: Any, device: torch.device, batch_size: int = 256
) -> Tensor:
    """Embeddings of clean images in eval mode, fed the way evaluation feeds the model.

    Args:
        model: a FaceModel.
        images: uint8 (N, C, H, W).
        adapter: InputAdapter.
        device: where to run.

    Returns:
        float32 (N, D) on ``device``.
    """
    features = list(clean_batches(model, images, adapter, device, batch_size))
    return torch.cat(features) if features else torch.zeros(0, 0, device=device)


def feature_norms(
    model: nn.Module, images: Any, adapter: Any, device: torch.device, batch_size: int = 256
) -> Tensor:
    """float32 (N,) CPU norms of :func:`clean_features`, computed batch by batch."""
    norms = [
        torch.linalg.vector_norm(f, dim=1).cpu()
        for f in clean_batches(model, images, adapter, device, batch_size)
    ]
    return torch.cat(norms) if norms else torch.zeros(0)


# Clean training accuracy is measured on at most this many evenly spaced training images, so the
# check costs seconds, not an epoch, on large sets.
CLEAN_EVAL_IMAGES = 2000


def norm_cv(norms: Tensor) -> float:
    if norms.numel() < 2:
        return float("nan")
    n = norms.double()
    return float(n.std(unbiased=False) / n.mean())
