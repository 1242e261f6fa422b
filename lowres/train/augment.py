"""Training augmentation: flip, small affine and brightness/contrast seeded per image, by two
backends that draw the same distribution of transforms (``"torch"``: batched on the training
device through kornia's warp; ``"albumentations"``: per image on the CPU, the recipe before
training format 3), and random-resolution degradation through the evaluation's chain.
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
from lowres.rng import M32, hash32
from lowres.train.config import TrainConfig, mix_seed

FLIP_P = 0.5
AFFINE_P, SCALE, TRANSLATE, ROTATE = 0.8, (0.95, 1.05), (-0.04, 0.04), (-8.0, 8.0)
BC_P, BRIGHTNESS, CONTRAST = 0.5, 0.2, 0.2
"""The per-image transform both backends draw: a horizontal flip with probability FLIP_P; with
probability AFFINE_P an affine map about the image centre with x and y scales drawn apart from
SCALE, a whole-pixel shift of ``int(u * side)`` for u in TRANSLATE, and a rotation in ROTATE
degrees, borders reflected about the edge pixel; with probability BC_P ``x * alpha + beta``
(alpha = 1 + U(+-CONTRAST), beta = 255 U(+-BRIGHTNESS)) clipped to the pixel range."""


def build_augmentation() -> Any:
    """The albumentations pipeline (``augment_backend="albumentations"``): flip, small
    shift/scale/rotate, brightness/contrast, with the constants above.

    albumentations works per image on numpy: on this machine (one thread) 6,500 img/s on 56x48
    grey, 5,200 on 112x92 grey, 4,200 on 112x96 RGB, about a fifth of a ``cpunet-s`` step on
    synth; the batched backend (:func:`augment_batch_torch`) is the default for that reason
    (``benchmarks/augment.py``). Seeding each image costs 0.08 ms.
    """
    # Imported here: albumentations adds 1.0 s to start-up (2-core machine) and only the
    # per-image backend uses it; its update check must be off before the import.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A
    import cv2

    return A.Compose(
        [
            A.HorizontalFlip(p=FLIP_P),
            # Small geometric jitter, as face crops from a detector would have; reflected
            # borders avoid black wedges the network could learn as a cue.
            A.Affine(
                scale=SCALE,
                translate_percent=TRANSLATE,
                rotate=ROTATE,
                border_mode=cv2.BORDER_REFLECT_101,
                p=AFFINE_P,
            ),
            A.RandomBrightnessContrast(
                brightness_limit=BRIGHTNESS, contrast_limit=CONTRAST, p=BC_P
            ),
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


def counter_uniforms(seed: int, positions: Tensor, count: int) -> Tensor:
    """``count`` uniforms in (0, 1) per position, a pure function of (seed, position, k): the
    same numbers on every device, batch size and shard.

    Args:
        seed: a 63-bit seed (e.g. :func:`lowres.train.config.mix_seed` of the batch).
        positions: int64 (N,) non-negative positions (< 2^32).
        count: uniforms per position.

    Returns:
        float64 (N, count) on ``positions``' device.

    >>> u = counter_uniforms(7, torch.arange(3), 2)
    >>> u.shape, bool(((u > 0) & (u < 1)).all())
    (torch.Size([3, 2]), True)
    """
    seed = int(seed)
    key = hash32(hash32((positions.to(torch.int64) & M32) ^ (seed & M32)) ^ ((seed >> 32) & M32))
    k = torch.arange(count, dtype=torch.int64, device=positions.device)
    bits = hash32(key[:, None] ^ ((k * 0x9E3779B9 + 0x632BE5AB) & M32)[None, :])
    return (bits.to(torch.float64) + 0.5) / 2.0**32


def draw_augment_params(seed: int, positions: Tensor, height: int, width: int) -> dict:
    """The transforms of the images at ``positions`` of a batch seeded ``seed``, drawn as
    albumentations draws them (module constants; shifts truncated to whole pixels).

    Returns:
        dict of (N,) tensors: ``flip``, ``affine``, ``bc`` (bool: applied?), ``scale_x``,
        ``scale_y``, ``rotate`` (degrees), ``shift_x``, ``shift_y`` (pixels), ``alpha``,
        ``beta`` (float64; meaningful where the transform applies).
    """
    u = counter_uniforms(seed, positions, 10)

    def between(column: int, bounds: tuple[float, float]) -> Tensor:
        return bounds[0] + u[:, column] * (bounds[1] - bounds[0])

    return {
        "flip": u[:, 0] < FLIP_P,
        "affine": u[:, 1] < AFFINE_P,
        "scale_x": between(2, SCALE),
        "scale_y": between(3, SCALE),
        "shift_x": torch.trunc(between(4, TRANSLATE) * width),
        "shift_y": torch.trunc(between(5, TRANSLATE) * height),
        "rotate": between(6, ROTATE),
        "bc": u[:, 7] < BC_P,
        "alpha": 1.0 + between(8, (-CONTRAST, CONTRAST)),
        "beta": 255.0 * between(9, (-BRIGHTNESS, BRIGHTNESS)),
    }


def affine_matrices(params: dict, height: int, width: int) -> Tensor:
    """(N, 2, 3) float64 forward maps (source pixel -> output pixel, OpenCV's convention) about
    the image centre ``(w/2 - 0.5, h/2 - 0.5)``: centre @ shift @ rotate @ scale @ uncentre,
    the composition albumentations' ``Affine`` builds (no shear)."""
    angle = torch.deg2rad(params["rotate"])
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx, sy = params["scale_x"], params["scale_y"]
    cx, cy = width / 2 - 0.5, height / 2 - 0.5
    a, b = cos * sx, sin * sy
    c, d = -sin * sx, cos * sy
    tx = cx + params["shift_x"] - (a * cx + b * cy)
    ty = cy + params["shift_y"] - (c * cx + d * cy)
    return torch.stack([torch.stack([a, b, tx], -1), torch.stack([c, d, ty], -1)], -2)


def augment_batch_torch(images: Tensor, seed: int, *, index_offset: int = 0) -> Tensor:
    """Augment a batch on its own device (``augment_backend="torch"``): the transforms of
    :func:`draw_augment_params`, one kornia warp for the images that get an affine map.

    Image ``i`` draws from ``(seed, index_offset + i)``, so a slice of a batch (a data-parallel
    shard) is augmented exactly as inside the whole batch. The warp is bilinear with borders
    reflected about the edge pixel, as OpenCV's ``BORDER_REFLECT_101`` (kornia's reflection
    with ``align_corners=True``); unlike the albumentations backend nothing is rounded to whole
    gray levels between the steps (``tests/test_augment.py`` measures the difference).

    Args:
        images: uint8 or float (B, C, H, W) in 0..255, on any device.
        seed: the batch's seed (same seed, same output).
        index_offset: position of ``images[0]`` in the whole batch.

    Returns:
        float32 (B, C, H, W) in [0, 1].
    """
    return apply_augment(images, batch_augment_params(images, seed, index_offset))


def batch_augment_params(images: Tensor, seed: int, index_offset: int) -> dict:
    """:func:`draw_augment_params` for the images of a batch (positions ``index_offset...``)."""
    batch, _, height, width = images.shape
    positions = torch.arange(index_offset, index_offset + batch, device=images.device)
    return draw_augment_params(seed, positions, height, width)


def apply_augment(images: Tensor, params: dict) -> Tensor:
    """The transforms ``params`` (one entry per image, from :func:`draw_augment_params`) applied
    to uint8 or float (B, C, H, W) images in 0..255; float32 in [0, 1] out. Each image depends
    only on itself and its own entries, so pieces of a batch give the whole batch's pixels."""
    # kornia loads on first use, as in lowres.degrade (its import adds ~0.5 s to start-up).
    from kornia.geometry.transform import warp_affine

    _, _, height, width = images.shape
    x = images.float()
    x = torch.where(params["flip"].view(-1, 1, 1, 1), x.flip(-1), x)
    chosen = torch.nonzero(params["affine"]).flatten()
    if chosen.numel():
        picked = {k: v[chosen] for k, v in params.items()}
        matrices = affine_matrices(picked, height, width).to(x.dtype)
        x[chosen] = warp_affine(
            x[chosen], matrices, (height, width), padding_mode="reflection", align_corners=True
        )
    alpha = torch.where(params["bc"], params["alpha"], 1.0).to(x.dtype).view(-1, 1, 1, 1)
    beta = torch.where(params["bc"], params["beta"], 0.0).to(x.dtype).view(-1, 1, 1, 1)
    return (x * alpha + beta).clamp_(0.0, 255.0).div_(255.0)


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
