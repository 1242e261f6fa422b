"""Training augmentation: the albumentations pipeline (flip, small affine, brightness and
contrast) seeded per image, and random-resolution degradation through the evaluation's chain.
"""

from __future__ import annotations

import math
import os
import random
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lowres import degrade
from lowres.errors import ConfigError
from lowres.train.config import TrainConfig, mix_seed


def build_augmentation() -> Any:
    """The albumentations pipeline: flip, small shift/scale/rotate, brightness/contrast.

    albumentations works per image on numpy. Measured here (2 cores, one thread): 5,200 img/s
    on 112x92 grey, 4,200 img/s on 112x96 RGB, 6,500 img/s on 56x46, about 10x the ~600 img/s
    the CPU network trains at, so it costs ~10% of a step and the per-image library is kept
    (no batched torch re-implementation). Seeding each image costs 0.08 ms.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A
    import cv2

    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            # Small geometric jitter, as face crops from a detector would have; reflected
            # borders avoid black wedges the network could learn as a cue.
            A.Affine(
                scale=(0.95, 1.05),
                translate_percent=(-0.04, 0.04),
                rotate=(-8, 8),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.8,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        ],
        seed=0,
    )


def augment_batch(images: Tensor, pipeline: Any, seed: int, *, index_offset: int = 0) -> Tensor:
    """Augment a uint8 batch image by image, each with its own seeded random state.

    Image ``i`` draws from generators seeded with ``mix_seed(seed, index_offset + i)``, so a
    slice of a batch (a data-parallel shard) is augmented exactly as inside the whole batch.

    Args:
        images: uint8 (B, C, H, W) on CPU.
        pipeline: from :func:`build_augmentation`.
        seed: the batch's seed (same seed, same output).
        index_offset: position of ``images[0]`` in the whole batch.

    Returns:
        uint8 (B, C, H, W).
    """
    array = images.permute(0, 2, 3, 1).numpy()
    out = np.empty_like(array)
    for i in range(array.shape[0]):
        image_seed = mix_seed(seed, index_offset + i)
        pipeline.set_random_state(
            np.random.Generator(np.random.PCG64(image_seed)), random.Random(image_seed)
        )
        result = pipeline(image=np.ascontiguousarray(array[i]))["image"]
        out[i] = result.reshape(array.shape[1:])
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def random_resolution(
    images: Tensor,
    low: float,
    high: float,
    p: float,
    spec: Any,
    generator: torch.Generator,
    *,
    batch_size: int | None = None,
    index_offset: int = 0,
) -> Tensor:
    """Degrade a random subset of images, each at its own log-uniform scale.

    The draws (which images, which scale, the noise seed) are made for the whole batch of
    ``batch_size`` images, of which ``images`` are positions ``index_offset ...``, and an
    image's noise depends only on its position: a data-parallel shard is degraded exactly as
    inside the whole batch. Images sharing a target face width are degraded together (one
    ``degrade`` call per width; per run of consecutive positions when the chain adds noise),
    which equals per-image calls because the degradation of one image never depends on another.

    Args:
        images: float (B, C, H, W) in [0, 1].
        low, high: scale range (fractions of the side), 0 < low <= high <= 1.
        p: probability that an image is degraded.
        spec: lowres.degrade DegradeSpec.
        generator: CPU generator for the draws and the degradation noise seed.
        batch_size: images in the whole batch; None -> B.
        index_offset: position of ``images[0]`` in the whole batch.

    Returns:
        float (B, C, H, W) in [0, 1].

    Raises:
        ConfigError: ``images`` do not fit inside the batch at ``index_offset``.
    """

    batch, width = images.shape[0], images.shape[-1]
    total = batch if batch_size is None else int(batch_size)
    if index_offset < 0 or index_offset + batch > total:
        raise ConfigError(
            f"a slice of {batch} images at position {index_offset} does not fit in a batch of "
            f"{total}; pass the whole batch's size and the slice's start"
        )
    chosen = torch.rand(total, generator=generator) < p
    u = torch.rand(total, generator=generator, dtype=torch.float64)
    noise_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    window = slice(index_offset, index_offset + batch)
    chosen, u = chosen[window], u[window]
    scales = torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    widths = torch.clamp(torch.round(scales * width), min=1).to(torch.int64)
    out = images.clone()
    for size in torch.unique(widths[chosen]).tolist():
        members = torch.nonzero(chosen & (widths == size)).flatten()
        groups = _consecutive_runs(members) if spec.noise_std > 0 else [members]
        for index in groups:
            start = index_offset + int(index[0])
            index = index.to(images.device)
            out[index] = degrade.degrade(
                images[index], None, spec, seed=noise_seed, size_px=int(size), index_offset=start
            )
    return out


def _consecutive_runs(index: Tensor) -> list[Tensor]:
    """Split a sorted int64 (K,) index into runs of consecutive values.

    >>> [r.tolist() for r in _consecutive_runs(torch.tensor([0, 1, 3, 4, 5, 8]))]
    [[0, 1], [3, 4, 5], [8]]
    """
    breaks = (torch.nonzero(index.diff() != 1).flatten() + 1).tolist()
    return list(torch.tensor_split(index, breaks))


def degrade_chain(config: TrainConfig) -> Any:

    if config.degrade_spec is None:
        return degrade.DEFAULT
    return degrade.parse_degrade(config.degrade_spec)
