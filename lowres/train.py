"""Training: one backbone + one method loss (paper notation), SGD with a multistep schedule.

Flow of one step::

    uint8 batch (CPU) -> albumentations (flip, small affine, brightness/contrast) -> device
    -> float [0, 1] -> optional random-resolution degradation (lowres.degrade, the evaluation's
    chain) -> lowres.embed.adapt (resize + normalise exactly as at evaluation) -> model
    -> MethodLoss (float32) -> SGD step -> MethodLoss.after_step()

Determinism: all randomness is counter-based. The model is initialised after
``torch.manual_seed(seed)``; the shuffling permutation of epoch ``e`` comes from a
``torch.Generator`` seeded with ``mix(seed, e)`` and the augmentation of image ``i`` of batch
``b`` from ``mix(mix(seed, e, b), i)``. The same seed therefore gives bit-identical weights on
CPU, and a run can stop after any step and resume to exactly the weights of an uninterrupted
run. On CUDA the same draws are made, but cuDNN's convolution backward and the atomic adds of
``index_add_`` (center loss) are not deterministic kernels, and AMP rounds differently: two CUDA
runs of one seed, or a resumed one, agree statistically, not bit for bit.

Data parallel (``torchrun --nproc_per_node=N -m lowres train ...``, see
:mod:`lowres.distributed`): ``batch_size`` stays the global batch of one step. Every process
draws the same order and takes its contiguous 1/N of each global batch; augmentation and
random-resolution draws are keyed by the image's position in the global batch, BatchNorm uses
global-batch statistics, DDP averages the gradients of the model and the loss parameters
(head weights, R) together, and centers move by all-reduced sums. N processes therefore train
the single-process model up to float reduction order (measured max |diff| in
``tests/test_ddp.py``). Only rank 0 writes checkpoints, the log and progress; the saved state
is the same on every rank, so a run can resume with another number of processes.

Checkpoints (see :mod:`lowres.checkpoint`) are written at the end of every epoch, and when
``max_steps`` stops a run mid-epoch, into ``out_dir``: ``model.safetensors``, ``model.json``,
``state.pt``, and the per-epoch log ``log.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lowres import distributed as ddp
from lowres.atomic import check_writable
from lowres.checkpoint import (
    SIDECAR_FILE,
    STATE_FILE,
    LoadedModel,
    atomic_write_text,
    library_versions,
    load_checkpoint,
    read_state,
    verify_weights,
    write_checkpoint,
)
from lowres.errors import CheckpointError, ConfigError, TrainingError
from lowres.processes import file_lock

__all__ = [
    "LOG_FILE",
    "LoadedModel",
    "TrainConfig",
    "augment_batch",
    "build_augmentation",
    "load_checkpoint",
    "random_resolution",
    "resolve_milestones",
    "train",
]

log = logging.getLogger("lowres.train")

LOG_FILE = "log.csv"
STATE_VERSION = 1

# Fields that say how a run executes, not what it trains: they are left out of the config hash
# so a model trained on a GPU or with more threads is found in the sweep's cache.
_EXECUTION_FIELDS = ("device", "num_threads", "amp")
_LATE_FIELDS = {"train_split": "fold", "val_identities": 0, "schedule": "step", "warmup": 0.0}

SCHEDULES = ("step", "cosine")
TRAIN_SPLITS = ("fold", "all")
TRAIN_FORMAT = 2
"""Version of the training recipe in :meth:`TrainConfig.hash` (2: per-image augmentation seeds)."""

# Default random-resolution range: a face side from 1/16 of the image up to full size, drawn
# log-uniformly (every octave equally often), applied to half the images so the network still
# sees mostly clean faces.
DEFAULT_RESOLUTION = (1.0 / 16.0, 1.0, 0.5)


def default_lr(model: str, batch_size: int) -> float:
    """Default base learning rate for ``model`` at ``batch_size``.

    The SphereFace residual nets (``sphere*``: PReLU, no BatchNorm) get SphereFace's recipe,
    lr 0.1 at batch 256, scaled linearly to the batch size (0.0125 at 32): at the small nets'
    0.05 with batch 32, SF on sphere20 diverged to a NaN loss within 7 ORL epochs on a GPU
    (fp16 autocast) and within 4 on CPU in float32, so it is the rate, not the precision; at
    0.0125 the same CPU run trains all 40 epochs to 99.3% training accuracy. Every other model
    (BatchNorm nets such as cpunet, LeNet++) gets 0.05 at batch 32 (tuned on ORL here), scaled
    linearly to the batch: 0.2 at the default 128, which the recipe search measured as the
    better of 0.1 and 0.2 with the cosine schedule (README, training length).
    """
    if str(model).startswith("sphere"):
        return 0.1 * batch_size / 256
    return 0.05 * batch_size / 32


@dataclass
class TrainConfig:
    """Everything that defines a trained model (and, in the execution fields, how to run it).

    Defaults are tuned for the embedded default: ``cpunet`` on 2 CPU cores; ORL fold 0 (30
    identities x 10 images) trains 40 epochs in well under a minute.

    Attributes:
        method: paper notation, e.g. ``"SM"``, ``"SF+R(0.01)"``, ``"l2-SM(30)"``, ``"SM+CL"``.
        model: registry name (``lowres.models.list_models()``).
        data: ``"orl"``, ``"synth"``, another builtin name, or a manifest path.
        fold: which identity-disjoint fold is held out (its test identities are not trained).
        train_split: ``"fold"`` (train on the identities outside ``fold``) or ``"all"`` (train
            on the whole dataset, e.g. CASIA-WebFace when the test set is another dataset such
            as LFW; synth/mnist: their whole training part). ``fold`` is ignored with ``"all"``.
        preset: dataset preset (e.g. ``"cpu"`` for synth); None -> the dataset's default.
        split_seed: seed of the identity folds; kept apart from ``seed`` so every method and
            training seed holds out the same identities.
        epochs: passes over the training images; None -> :func:`auto_epochs` of the steps per
            epoch: 12 to 40 epochs (synth's cpu preset: 12, ~100 s; ORL's 300
            training images at batch 32: 40 epochs).
        batch_size: images per step (default 128; :func:`train_batch` halves it, and the lr
            with it, for sets too small for 8 steps per epoch). Incomplete last batches are
            dropped (BatchNorm on a handful of images is noisy), unless the set is smaller than
            one batch.
        lr: base learning rate of the backbone and the head (R uses ``lr * lr_mult``); None ->
            :func:`default_lr` for the model and batch size.
        momentum, weight_decay: SGD settings (SphereFace's 0.9 and 5e-4).
        milestones: when to multiply the lr by ``lr_gamma``. Values all in (0, 1) are fractions
            of the total number of steps (default 0.5, 0.75: the shape of SphereFace's 16k/24k
            of 28k iterations); otherwise they are integer epoch numbers. The lr changes per
            step, as in SphereFace, so short runs (2 epochs) still get their drops.
        lr_gamma: lr factor at each milestone.
        schedule: ``"step"`` (multiply by ``lr_gamma`` at each milestone, SphereFace's shape) or
            ``"cosine"`` (half a cosine from the base lr to 0 over all steps; ``milestones`` and
            ``lr_gamma`` are then unused). Either is fitted to the run's length, since both are
            functions of the fraction of steps done.
        warmup: fraction of all steps (0 to 0.5) over which the lr rises linearly from
            ``lr / (warmup steps)`` to ``lr`` before the schedule takes over.
        seed: initialisation, shuffling and augmentation seed.
        augment: albumentations flip + small shift/scale/rotate + brightness/contrast.
        augment_resolution: False, True (= ``(1/16, 1, 0.5)``), or ``[low, high]`` /
            ``[low, high, p]``: with probability p an image is degraded with lowres.degrade at a
            log-uniform scale in [low, high], through the evaluation's chain ``degrade_spec``.
        degrade_spec: degradation chain for ``augment_resolution`` (``lowres.degrade`` CLI
            form); None -> ``lowres.degrade.DEFAULT``, the evaluation's default.
        input_size: (H, W) network input; None -> the model's default.
        channels: network input channels (1 grey, 3 RGB); None -> the model's default.
        embed_dim: embedding size; None -> the model's default.
        model_args: further keyword arguments of the model factory (e.g. cpunet ``widths``).
        grad_clip: max global gradient norm, or None for no clipping.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        num_threads: torch CPU threads; None leaves torch's setting alone.
        amp: fp16 autocast + GradScaler, used only on CUDA.
        val_identities: identities held out of the training split (chosen by ``split_seed``,
            never trained on, disjoint from the test identities) whose clean all-vs-all pairs
            give a verification figure after every epoch: ``val_tar`` (TAR at FAR
            :data:`VAL_FAR`) and ``val_auc`` in ``log.csv``, so convergence is seen on faces
            the model has not classified. 0: no validation (the default).
    """

    method: str
    model: str = "cpunet-s"
    data: str = "synth"
    fold: int = 0
    train_split: str = "fold"
    preset: str | None = None
    split_seed: int = 0
    epochs: int | None = None
    batch_size: int = 128
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.5, 0.75)
    lr_gamma: float = 0.1
    seed: int = 0
    augment: bool = True
    augment_resolution: Any = False
    degrade_spec: str | None = None
    input_size: tuple[int, int] | None = None
    channels: int | None = None
    embed_dim: int | None = None
    model_args: dict | None = None
    grad_clip: float | None = None
    device: str = "auto"
    num_threads: int | None = None
    amp: bool = True
    val_identities: int = 0
    schedule: str = "cosine"
    warmup: float = 0.05

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = default_lr(self.model, self.batch_size)
        self.milestones = tuple(self.milestones)
        if self.input_size is not None:
            self.input_size = tuple(int(v) for v in self.input_size)
        self.augment_resolution = _canonical_resolution(self.augment_resolution)
        self.validate()

    def validate(self) -> None:
        """Check value ranges (names are checked when the model/method is built)."""
        if not isinstance(self.method, str) or not self.method.strip():
            raise ConfigError("method must be a paper-notation string such as 'SF+R(0.01)'")
        if self.epochs is not None:
            _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 2)
        _check_int("fold", self.fold, 0)
        for name in ("seed", "split_seed"):
            _check_int(name, getattr(self, name), 0)
            if getattr(self, name) >= 1 << 63:
                raise ConfigError(f"{name} must be below 2^63, got {getattr(self, name)}")
        if self.train_split not in TRAIN_SPLITS:
            raise ConfigError(
                f"train_split must be one of {', '.join(TRAIN_SPLITS)}, got {self.train_split!r}"
            )
        for name in ("lr", "momentum", "weight_decay", "lr_gamma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        resolve_milestones(self.milestones, self.epochs or 1, 1)
        if self.model_args is not None and not isinstance(self.model_args, dict):
            raise ConfigError(f"model_args must be a dict, got {self.model_args!r}")
        if self.grad_clip is not None and not (
            isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0
        ):
            raise ConfigError(f"grad_clip must be a number > 0 or None, got {self.grad_clip!r}")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 8):
            raise ConfigError(f"input_size must be (H, W) with both >= 8, got {self.input_size}")
        if self.channels is not None and self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        if self.num_threads is not None:
            _check_int("num_threads", self.num_threads, 1)
        _check_int("val_identities", self.val_identities, 0)
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if (
            isinstance(self.warmup, bool)
            or not isinstance(self.warmup, (int, float))
            or not 0 <= self.warmup <= 0.5
        ):
            raise ConfigError(
                f"warmup must be a fraction of the steps in [0, 0.5], got {self.warmup!r}"
            )

    def to_dict(self) -> dict:
        """JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ConfigError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown training settings {unknown}; valid: {sorted(names)}")
        return cls(**values)

    def hash(self) -> str:
        """Stable 16-hex digest of the canonical JSON of everything but the execution fields
        (device, num_threads, amp), for caching trained models."""
        values = {k: v for k, v in self.to_dict().items() if k not in _EXECUTION_FIELDS}
        # Fields added after TRAIN_FORMAT 2 enter the hash only when set, so models cached
        # before they existed keep their hash (their weights do not depend on them).
        for key, default in _LATE_FIELDS.items():
            if values.get(key) == default:
                del values[key]
        # The training code's version: bump it whenever the same config would train different
        # weights (e.g. a changed augmentation stream), so stale cached models are not reused.
        values["_format"] = TRAIN_FORMAT
        text = json.dumps(values, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _canonical_resolution(value: Any) -> Any:
    """False | [low, high, p] (the forms True and [low, high] are expanded)."""
    if value is None or value is False:
        return False
    if value is True:
        return list(DEFAULT_RESOLUTION)
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.replace(",", " ").split()]
        except ValueError:
            raise ConfigError(
                f"augment_resolution {value!r} is not 'LOW HIGH [P]' numbers, e.g. '0.0625 1 0.5'"
            ) from None
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(
            f"augment_resolution must be a bool or [low, high(, p)], got {value!r}"
        ) from None
    if len(numbers) == 2:
        numbers.append(DEFAULT_RESOLUTION[2])
    if len(numbers) != 3:
        raise ConfigError(f"augment_resolution must be [low, high] or [low, high, p], got {value}")
    low, high, p = numbers
    if not (0 < low <= high <= 1) or not (0 < p <= 1):
        raise ConfigError(
            f"augment_resolution needs 0 < low <= high <= 1 and 0 < p <= 1, got {numbers}"
        )
    return numbers


def resolve_milestones(
    milestones: tuple[float, ...], epochs: int, steps_per_epoch: int
) -> list[int]:
    """Step numbers (optimizer steps) after which the lr drops.

    Values all strictly between 0 and 1 are fractions of the ``epochs * steps_per_epoch`` steps
    (rounded, at least 1); otherwise every value must be an integer epoch number.

    >>> resolve_milestones((0.5, 0.75), 40, 9)
    [180, 270]
    >>> resolve_milestones((10, 15), 20, 9)
    [90, 135]
    """
    values = list(milestones)
    if not values:
        return []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"milestones must be positive numbers, got {values}")
    if all(0 < v < 1 for v in values):
        return sorted({max(1, round(v * epochs * steps_per_epoch)) for v in values})
    if any(float(v) != int(v) for v in values):
        raise ConfigError(
            f"milestones {values} mix fractions and epochs; give all fractions in (0, 1) "
            "or all integer epoch numbers"
        )
    return sorted({int(v) * steps_per_epoch for v in values})


AUTO_MIN_EPOCHS, AUTO_MAX_EPOCHS, AUTO_STEPS = 12, 40, 1000
MIN_STEPS_PER_EPOCH = 8


def auto_epochs(steps_per_epoch: int) -> int:
    """Epochs when none are given: enough for about ``AUTO_STEPS`` optimizer steps, at least
    ``AUTO_MIN_EPOCHS`` and at most ``AUTO_MAX_EPOCHS``.

    Measured, not a fixed image count: with the default recipe (cosine, batch 128) synth's
    held-out TAR reaches its plateau within 12 epochs of 118 steps, and ORL's 9 steps per epoch
    need the 40 epochs it has always had.

    >>> auto_epochs(118), auto_epochs(9), auto_epochs(50)
    (12, 40, 20)
    """
    steps = max(1, int(steps_per_epoch))
    return int(min(AUTO_MAX_EPOCHS, max(AUTO_MIN_EPOCHS, math.ceil(AUTO_STEPS / steps))))


def train_batch(batch_size: int, num_images: int) -> int:
    """The batch a run uses: ``batch_size``, halved while an epoch would have fewer than
    ``MIN_STEPS_PER_EPOCH`` steps (not below 16, and never more than the set). The lr scales
    with it (linear scaling rule), so the default batch 128 trains ORL's 300 images at batch 32
    and lr 0.05, the recipe tuned there.

    >>> train_batch(128, 15_200), train_batch(128, 300), train_batch(64, 160), train_batch(32, 10)
    (128, 32, 16, 10)
    """
    bs = int(batch_size)
    while bs > 16 and num_images // bs < MIN_STEPS_PER_EPOCH:
        bs //= 2
    return max(1, min(bs, int(num_images)))


def mix_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (counter-based randomness: same inputs, same seed)."""
    text = ":".join(str(int(p)) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


# ---------------------------------------------------------------------------------------------
# augmentation


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
    from lowres.degrade import degrade

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
            out[index] = degrade(
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


# ---------------------------------------------------------------------------------------------
# progress, log


class _Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, one line per epoch
    otherwise, so CI logs stay readable)."""

    def __init__(self, enabled: bool, epochs: int, steps: int) -> None:
        self.enabled = enabled
        self.epochs, self.steps = epochs, steps
        self.tty = enabled and sys.stderr.isatty()
        self.last = 0.0

    def update(self, epoch: int, step: int, loss: float, acc: float, rate: float) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if step < self.steps and now - self.last < 0.2:
            return
        self.last = now
        filled = int(24 * step / max(1, self.steps))
        bar = "#" * filled + "." * (24 - filled)
        sys.stderr.write(
            f"\repoch {epoch}/{self.epochs} [{bar}] {step}/{self.steps} "
            f"loss {loss:.3f} acc {acc:.3f} {rate:.0f} img/s"
        )
        sys.stderr.flush()

    def epoch_done(self, row: dict) -> None:
        if not self.enabled:
            return
        text = (
            f"epoch {row['epoch']}/{self.epochs} loss {row['loss']:.4f} "
            f"acc {row['train_acc']:.3f} |f| {row['norm_mean']:.2f}+-{row['norm_std']:.2f} "
            f"lr {row['lr']:.3g} {row['seconds']:.1f}s"
        )
        if "val_tar" in row:
            text += f" val TAR@{VAL_FAR:g} {row['val_tar']:.3f}"
        sys.stderr.write(("\r" + text + " " * 10 + "\n") if self.tty else text + "\n")
        sys.stderr.flush()


def _write_log(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    return value


class _EpochStats:
    """Running sums of one epoch (float64 on the host; restorable from the state)."""

    def __init__(self, values: dict | None = None) -> None:
        values = values or {}
        self.loss = float(values.get("loss", 0.0))
        self.parts: dict[str, float] = dict(values.get("parts", {}))
        self.correct = int(values.get("correct", 0))
        self.count = int(values.get("count", 0))
        self.norm_sum = float(values.get("norm_sum", 0.0))
        self.norm_sq = float(values.get("norm_sq", 0.0))
        self.seconds = float(values.get("seconds", 0.0))
        self.steps = int(values.get("steps", 0))

    def add(
        self,
        loss_sum: float,
        part_sums: dict[str, float],
        correct: int,
        count: int,
        norm_sum: float,
        norm_sq: float,
    ) -> None:
        """Add one step's sums over its (global) batch: loss and parts times images, correct
        predictions, images, and the sum and sum of squares of feature norms."""
        self.loss += loss_sum
        for key, value in part_sums.items():
            self.parts[key] = self.parts.get(key, 0.0) + value
        self.correct += correct
        self.count += count
        self.norm_sum += norm_sum
        self.norm_sq += norm_sq
        self.steps += 1

    def to_dict(self) -> dict:
        return {
            "loss": self.loss,
            "parts": dict(self.parts),
            "correct": self.correct,
            "count": self.count,
            "norm_sum": self.norm_sum,
            "norm_sq": self.norm_sq,
            "seconds": self.seconds,
            "steps": self.steps,
        }

    def row(self, epoch: int, iteration: int, lr: float, stats: dict) -> dict:
        n = max(1, self.count)
        mean = self.norm_sum / n
        var = max(0.0, self.norm_sq / n - mean * mean)
        row: dict[str, Any] = {"epoch": epoch, "iter": iteration, "loss": self.loss / n}
        for key in sorted(self.parts):
            row[f"loss_{key}"] = self.parts[key] / n
        row.update(
            train_acc=self.correct / n,
            norm_mean=mean,
            norm_std=math.sqrt(var),
            R=float(stats.get("R", float("nan"))),
            lambda_sf=float(stats.get("lambda_sf", float("nan"))),
            lr=lr,
            seconds=self.seconds,
            img_per_s=self.count / self.seconds if self.seconds > 0 else float("nan"),
        )
        return row


# ---------------------------------------------------------------------------------------------
# building blocks


def _pick_device(name: str, world: ddp.World) -> torch.device:
    """The configured device; under torchrun on CUDA, ``cuda:LOCAL_RANK`` (one GPU each)."""
    from lowres.embed import pick_device

    device = pick_device(name)
    if not world.distributed or device.type != "cuda":
        return device
    if device.index is not None:
        raise ConfigError(
            f"device {name!r} names one GPU, but under torchrun each process uses "
            "cuda:LOCAL_RANK; pass --device cuda (or auto)"
        )
    if world.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK {world.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
            "start at most one process per GPU"
        )
    device = torch.device("cuda", world.local_rank)
    torch.cuda.set_device(device)
    return device


def _join_group(world: ddp.World, device: torch.device) -> bool:
    """Initialise the process group for a torchrun launch (NCCL on CUDA, gloo on CPU).

    Returns:
        True when this call created the group (and train() must destroy it).
    """
    import torch.distributed as dist

    if not world.distributed or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    available = dist.is_available() and (
        dist.is_nccl_available() if backend == "nccl" else dist.is_gloo_available()
    )
    if not available:
        raise ConfigError(
            f"torchrun started {world.size} processes but this torch has no {backend} backend; "
            "install a torch build with torch.distributed or train in one process"
        )
    if backend == "nccl":
        dist.init_process_group(backend, device_id=device)
    else:
        dist.init_process_group(backend)
    return True


class _Step(nn.Module):
    """Model and loss as one module, so DistributedDataParallel averages the gradients of the
    backbone and of every loss parameter (head weights, R) in one set of buckets."""

    def __init__(self, model: nn.Module, loss: nn.Module, amp: bool, device_type: str) -> None:
        super().__init__()
        self.model, self.loss = model, loss
        self.amp, self.device_type = amp, device_type

    def forward(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Any]:
        """(features (B, D), LossOutput) of a normalised batch (B, C, H, W)."""
        with torch.autocast(device_type=self.device_type, dtype=torch.float16, enabled=self.amp):
            features = self.model(x)
        return features, self.loss(features.float(), labels)


@torch.no_grad()
def _step_sums(features: Tensor, result: Any, labels: Tensor) -> tuple[float, dict, list]:
    """One step's logging sums over the global batch (all-reduced under DDP), in float64.

    Returns:
        (global mean loss, parts sums by name, [loss sum, correct, images, norm sum, norm sq]).
    """
    batch = labels.numel()
    keys = sorted(result.parts)
    norms = torch.linalg.vector_norm(features.detach().float(), dim=1).double()
    values = [result.loss.detach().double() * batch]
    values += [result.parts[k].double() * batch for k in keys]
    values += [
        (result.logits.argmax(dim=1) == labels).sum().double(),
        norms.new_tensor(float(batch)),
        norms.sum(),
        (norms * norms).sum(),
    ]
    sums = ddp.all_reduce_sum(torch.stack(values)).cpu().tolist()
    parts = dict(zip(keys, sums[1 : 1 + len(keys)], strict=True))
    loss_sum, correct, count, norm_sum, norm_sq = sums[0], *sums[1 + len(keys) :]
    return loss_sum / count, parts, [loss_sum, int(correct), int(count), norm_sum, norm_sq]


def _model_kwargs(config: TrainConfig) -> dict:
    kwargs: dict[str, Any] = {}
    if config.channels is not None:
        kwargs["in_channels"] = config.channels
    if config.input_size is not None:
        kwargs["input_size"] = tuple(config.input_size)
    if config.embed_dim is not None:
        kwargs["embed_dim"] = config.embed_dim
    kwargs.update(config.model_args or {})
    return kwargs


def _build(config: TrainConfig, num_classes: int) -> tuple[nn.Module, nn.Module, Any, dict]:
    """Create model + loss on CPU (after the caller seeded torch); returns the model kwargs
    recorded in the sidecar (the model's resolved input size, channels and embedding size)."""
    from lowres import models
    from lowres.methods import build_loss, parse_method

    spec = parse_method(config.method)
    model = models.create(config.model, **_model_kwargs(config))
    loss = build_loss(spec, int(model.embed_dim), int(num_classes))
    kwargs = json.loads(json.dumps(_model_kwargs(config)))
    kwargs.update(
        in_channels=int(model.in_channels),
        input_size=[int(v) for v in model.input_size],
        embed_dim=int(model.embed_dim),
    )
    return model, loss, spec, kwargs


def optimizer_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    """One optimizer step through AMP's GradScaler; False when the scaler skipped it.

    Under fp16 autocast (CUDA) the scaler skips a step whose gradients hold inf/NaN and lowers
    its scale; then the lr schedule, SphereFace's annealing and the centers must not move
    either (the caller checks this result). With the scaler disabled (CPU, or ``amp=False``)
    this is ``optimizer.step()`` and always True.
    """
    if not scaler.is_enabled():
        optimizer.step()
        return True
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= before


def check_names(config: TrainConfig) -> None:
    """Fail on an unknown method or model before any data is loaded (a sweep calls it for
    every model before it writes anything)."""
    from lowres import models
    from lowres.methods import parse_method

    parse_method(config.method)
    names = models.list_models()
    if config.model not in names:
        raise ConfigError(f"unknown model {config.model!r}; choose one of {', '.join(names)}")


def _adapter_for(model: nn.Module) -> Any:
    from lowres.embed import InputAdapter

    return InputAdapter.for_model(model)


def _param_groups(
    model: nn.Module, loss: nn.Module, config: TrainConfig, lr: float | None = None
) -> list[dict]:
    lr = config.lr if lr is None else lr
    groups = [{"params": list(model.parameters()), "weight_decay": config.weight_decay, "lr": lr}]
    groups.extend(loss.param_groups(lr, config.weight_decay))
    seen: set[int] = set()
    for group in groups:
        for param in group["params"]:
            if id(param) in seen:
                raise TrainingError(
                    "a parameter appears in two optimizer groups; MethodLoss.param_groups must "
                    "list each loss parameter once"
                )
            seen.add(id(param))
    missing = [n for n, p in loss.named_parameters() if id(p) not in seen]
    if missing:
        raise TrainingError(
            f"loss parameters {missing} are not in MethodLoss.param_groups, so they would never "
            "train; list them there"
        )
    return groups


def _load_split(config: TrainConfig) -> tuple[Any, Any]:
    """(train, held-out) sets; with ``train_split="all"`` the held-out set is empty."""
    import torch

    from lowres.data import get_split, load_dataset
    from lowres.data.registry import has_own_split

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
    from lowres import metrics as M

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


def _degrade_spec(config: TrainConfig) -> Any:
    from lowres import degrade

    if config.degrade_spec is None:
        return degrade.DEFAULT
    return degrade.parse_degrade(config.degrade_spec)


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def lr_factor(
    step: int,
    total: int,
    *,
    schedule: str = "step",
    milestones: tuple[int, ...] = (),
    gamma: float = 0.1,
    warmup: float = 0.0,
) -> float:
    """The lr multiplier after ``step`` optimizer steps of ``total``.

    >>> [round(lr_factor(s, 8, schedule="cosine", warmup=0.25), 3) for s in range(8)]
    [0.5, 1.0, 1.0, 0.933, 0.75, 0.5, 0.25, 0.067]
    >>> [lr_factor(s, 8, milestones=(4, 6)) for s in (3, 4, 6)]
    [1.0, 0.1, 0.010000000000000002]
    """
    warm = round(warmup * total)
    if step < warm:
        return (step + 1) / warm
    if schedule == "cosine":
        span = max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / span)))
    return gamma ** sum(1 for m in milestones if step >= m)


def _scheduler(optimizer: Any, config: TrainConfig, milestones: list[int], total: int) -> Any:
    if config.schedule == "step" and not config.warmup:
        # The original path, kept as it was so cached models and resumed runs stay bit-equal.
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=milestones, gamma=config.lr_gamma
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        functools.partial(
            lr_factor,
            total=total,
            schedule=config.schedule,
            milestones=tuple(milestones),
            gamma=config.lr_gamma,
            warmup=float(config.warmup),
        ),
    )


def _scheduler_state(scheduler: Any) -> dict:
    state = scheduler.state_dict()
    # Counter -> plain dict: state.pt holds plain data only.
    if "milestones" in state:
        state["milestones"] = {int(k): int(v) for k, v in state["milestones"].items()}
    state.pop("lr_lambdas", None)
    return state


def _restore_scheduler(scheduler: Any, state: dict) -> None:
    state = dict(state)
    if "milestones" in state:
        state["milestones"] = Counter({int(k): int(v) for k, v in state["milestones"].items()})
    if hasattr(scheduler, "lr_lambdas"):
        # The lambda is rebuilt from the config; only the step count comes from the state.
        state["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
    scheduler.load_state_dict(state)


@torch.no_grad()
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
    from lowres.embed import adapt

    was_training = model.training
    model.eval()
    features = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device).float().div_(255.0)
        x = adapt(x, adapter)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        features.append(model(x).float())
    model.train(was_training)
    return torch.cat(features) if features else torch.zeros(0, 0, device=device)


def feature_norms(
    model: nn.Module, images: Tensor, adapter: Any, device: torch.device, batch_size: int = 256
) -> Tensor:
    """float32 (N,) CPU norms of :func:`clean_features`."""
    return torch.linalg.vector_norm(
        clean_features(model, images, adapter, device, batch_size), dim=1
    ).cpu()


# Clean training accuracy is measured on at most this many evenly spaced training images, so the
# check costs seconds, not an epoch, on large sets.
CLEAN_EVAL_IMAGES = 2000


def _cv(norms: Tensor) -> float:
    if norms.numel() < 2:
        return float("nan")
    n = norms.double()
    return float(n.std(unbiased=False) / n.mean())


# ---------------------------------------------------------------------------------------------
# the loop


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    max_steps: int | None = None,
) -> Path:
    """Train ``config`` and write its checkpoint into ``out_dir``.

    Under torchrun (``WORLD_SIZE`` > 1 in the environment) every process calls this; it joins
    the process group (NCCL on CUDA, gloo on CPU), trains its shard of each global batch with
    DistributedDataParallel, and leaves the group at the end. Only rank 0 writes ``out_dir``.

    Args:
        config: what to train (``batch_size`` is the global batch over all processes).
        out_dir: checkpoint folder (only this folder is written).
        resume: continue from ``out_dir/state.pt`` if present (exactly where it stopped, with
            any number of processes); a finished run is returned as is. Without it, an
            ``out_dir`` that already holds a checkpoint, or any other file, is refused.
        progress: progress bar + one line per epoch on stderr (rank 0 only).
        max_steps: stop after this many optimizer steps in total (counting steps before a
            resume), writing a resumable checkpoint; None trains all epochs.

    Returns:
        The checkpoint folder (``model.safetensors`` + ``model.json`` + ``state.pt`` +
        ``log.csv``).

    Raises:
        ConfigError: unknown method/model/dataset, a resume with other settings, or a global
            batch that does not split evenly over the processes.
        CheckpointError: the checkpoint to resume is inconsistent or unsafe.
        TrainingError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"train() needs a TrainConfig, got {type(config).__name__}")
    if max_steps is not None:
        _check_int("max_steps", max_steps, 1)
    check_names(config)
    world = ddp.from_env()
    out = Path(out_dir)
    state_path, side_path = out / STATE_FILE, out / SIDECAR_FILE

    check_writable(out, "--out")
    state: dict | None = None
    if not resume and out.is_dir() and not (side_path.exists() or state_path.exists()):
        if any(out.iterdir()):
            # A sweep folder or someone's files: checkpoint files would be mixed into them.
            raise ConfigError(
                f"{out} is not empty and holds no checkpoint; choose an empty or new --out "
                "(or pass --resume to continue a run interrupted before its first checkpoint)"
            )
    if side_path.exists() or state_path.exists():
        if not resume:
            raise ConfigError(
                f"{out} already holds a checkpoint; pass --resume to continue it or choose "
                "another --out"
            )
        state = read_state(state_path)
        sidecar, _ = verify_weights(out)
        if state.get("config_hash") != config.hash():
            raise ConfigError(
                f"{out} was trained with other settings (config {state.get('config_hash')} != "
                f"{config.hash()}); resume with the same settings or choose another --out"
            )
        if sidecar.get("iteration") != state.get("iteration"):
            raise ConfigError(
                f"{out}: state.pt (step {state.get('iteration')}) and model.json (step "
                f"{sidecar.get('iteration')}) disagree, the last write was interrupted; "
                "delete the folder and re-train"
            )
        if state.get("finished"):
            if world.main:
                log.info("%s is already trained; nothing to do", out)
            return out

    # Checked before joining the group: a rank that fails alone would leave the others waiting.
    ddp.shard_bounds(config.batch_size, world)
    device = _pick_device(config.device, world)
    created_group = _join_group(world, device)
    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    fresh = not out.exists()
    try:
        return _train(config, out, state, world, device, progress=progress, max_steps=max_steps)
    except OSError:
        # A full disk (or a folder removed meanwhile) mid-run: a folder this run made holds
        # nothing worth resuming from, so it goes; an earlier run's checkpoints stay.
        if fresh and world.main:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        # The caller's thread count comes back: a sweep embeds with it after training.
        torch.set_num_threads(threads)
        if created_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    out: Path,
    state: dict | None,
    world: ddp.World,
    device: torch.device,
    *,
    progress: bool,
    max_steps: int | None,
) -> Path:
    """The loop of :func:`train`, after the checks and inside the process group."""
    from lowres.embed import adapt

    cuda = device.type == "cuda"
    use_amp = cuda and config.amp

    train_set, test_set = _load_split(config)
    train_set, val_set = hold_out_identities(train_set, config.val_identities, config.split_seed)
    num_classes = int(train_set.num_identities)
    n = train_set.images.shape[0]
    bs = train_batch(config.batch_size, n)
    lr_scale = bs / config.batch_size  # linear scaling when a small set lowers the batch
    shard_start, shard_stop = ddp.shard_bounds(bs, world)
    torch.manual_seed(config.seed)
    model, loss_fn, spec, model_kwargs = _build(config, num_classes)
    adapter = _adapter_for(model)
    if state is not None:
        # Verifies sha256, keys and shapes, then loads into these very modules.
        load_checkpoint(out, build=lambda _side: (model, loss_fn, spec))
    if world.distributed:
        # Per-process statistics would normalise each shard on its own: another model than the
        # single-process one. Global statistics keep N processes equal to one.
        model = ddp.convert_batchnorm(model, device)
    model.train()
    loss_fn.train()
    model.to(device)
    loss_fn.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    step_module = _Step(model, loss_fn, use_amp, device.type)
    runner: nn.Module = step_module
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (BatchNorm running stats, centers, R's flag) are equal on every rank by
        # construction, so DDP need not broadcast them each step.
        runner = DistributedDataParallel(
            step_module, device_ids=[device.index] if cuda else None, forward_sync_buffers=False
        )

    optimizer = torch.optim.SGD(
        _param_groups(model, loss_fn, config, config.lr * lr_scale),
        lr=config.lr * lr_scale,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = n // bs
    epochs = config.epochs if config.epochs is not None else auto_epochs(steps_per_epoch)
    milestones = resolve_milestones(config.milestones, epochs, steps_per_epoch)
    scheduler = _scheduler(optimizer, config, milestones, epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    pipeline = build_augmentation() if config.augment else None
    resolution = config.augment_resolution
    degrade_spec = _degrade_spec(config) if resolution else None

    images = train_set.images  # uint8 at rest; augmented on the CPU, then moved
    if not config.augment:
        images = images.to(device)
    labels = train_set.labels.to(device)

    epoch, step_in_epoch, iteration = 0, 0, 0
    rows: list[dict] = []
    epoch_stats = _EpochStats()
    wall = 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        _restore_scheduler(scheduler, state["scheduler"])
        if use_amp and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        epoch, step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        iteration = int(state["iteration"])
        rows = list(state["rows"])
        epoch_stats = _EpochStats(state["epoch_stats"])
        wall = float(state.get("wall_seconds", 0.0))
        # Every rank seeded and drew alike, so rank 0's RNG state is every rank's.
        torch.set_rng_state(state["rng"]["torch"])
        if cuda and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)

    bar = _Progress(progress and world.main, epochs, steps_per_epoch)
    base_sidecar = {
        "method": str(spec),
        "model": config.model,
        "model_kwargs": model_kwargs,
        "embed_dim": model_kwargs["embed_dim"],
        "num_classes": num_classes,
        "input_size": model_kwargs["input_size"],
        "channels": model_kwargs["in_channels"],
        "normalisation": {"mean": adapter.mean, "std": adapter.std, "scale": "0..255"},
        "adapter": json.loads(json.dumps(dataclasses.asdict(adapter))),
        "data": {
            "name": config.data,
            "dataset": train_set.name,
            "fold": config.fold,
            "preset": config.preset,
            "split_seed": config.split_seed,
            "manifest": json.loads(json.dumps(train_set.meta, default=str)),
            "train_images": int(n),
            "train_identities": num_classes,
            "test_identities": int(test_set.num_identities),
            "val_identities": 0 if val_set is None else int(val_set.num_identities),
            "image_size": [int(v) for v in train_set.images.shape[-2:]],
        },
        "seed": config.seed,
        "config": config.to_dict(),
        "config_hash": config.hash(),
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "batch_size_used": bs,
        "lr_used": config.lr * lr_scale,
        "milestone_steps": milestones,
        "versions": library_versions(),
    }

    def save(finished: bool) -> None:
        if world.main:
            metrics = _metrics(
                rows, wall, model, loss_fn, train_set, test_set, adapter, device, finished
            )
            sidecar = dict(base_sidecar)
            sidecar.update(
                epochs_completed=epoch,
                iteration=iteration,
                complete=finished,
                device=str(device),
                world_size=world.size,
                metrics=metrics,
            )
            train_state = {
                "version": STATE_VERSION,
                "config": config.to_dict(),
                "config_hash": config.hash(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "iteration": iteration,
                "finished": finished,
                "optimizer": optimizer.state_dict(),
                "scheduler": _scheduler_state(scheduler),
                "scaler": scaler.state_dict() if use_amp else {},
                "rng": _rng_state(device),
                "rows": rows,
                "epoch_stats": epoch_stats.to_dict(),
                "wall_seconds": wall,
                "world_size": world.size,
            }
            write_checkpoint(out, model, loss_fn, sidecar, train_state)
            _write_log(out / LOG_FILE, rows)
        if world.distributed:
            # No rank runs ahead of (or returns before) a checkpoint that is still being written.
            import torch.distributed as dist

            dist.barrier()

    last_good = (
        f"{out} (epoch {epoch}, step {iteration})"
        if state is not None
        else "nowhere (it failed before the first checkpoint)"
    )
    stopped = False
    while epoch < epochs and not stopped:
        order = torch.randperm(
            n, generator=torch.Generator().manual_seed(mix_seed(config.seed, epoch))
        )
        while step_in_epoch < steps_per_epoch:
            if max_steps is not None and iteration >= max_steps:
                stopped = True
                break
            t0 = time.perf_counter()
            start = step_in_epoch * bs
            index = order[start + shard_start : start + shard_stop]
            batch_seed = mix_seed(config.seed, epoch, step_in_epoch)
            if pipeline is not None:
                x8 = augment_batch(
                    images[index], pipeline, batch_seed, index_offset=shard_start
                ).to(device, non_blocking=True)
            else:
                x8 = images[index.to(images.device)]
            y = labels[index.to(device)]
            x = x8.float().div_(255.0)
            if resolution:
                gen = torch.Generator().manual_seed(mix_seed(config.seed, epoch, step_in_epoch, 1))
                x = random_resolution(
                    x, *resolution, degrade_spec, gen, batch_size=bs, index_offset=shard_start
                )
            x = adapt(x, adapter)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            features, result = runner(x, y)
            total = result.loss
            # Sums over the global batch, before backward: every rank sees the same loss, so a
            # NaN on one shard stops all of them together.
            loss_value, part_sums, sums = _step_sums(features, result, y)
            if not math.isfinite(loss_value):
                raise TrainingError(
                    f"loss became {loss_value} at epoch {epoch + 1} "
                    f"iter {iteration + 1}; "
                    f"last good checkpoint kept at {last_good}; lower --lr (now "
                    f"{config.lr:g}), set grad_clip, or use another --seed"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(
                    [p for g in optimizer.param_groups for p in g["params"]], config.grad_clip
                )
            if optimizer_step(scaler, optimizer):
                scheduler.step()
                loss_fn.after_step()
            else:
                loss_fn.skip_step()
            iteration += 1
            step_in_epoch += 1

            epoch_stats.add(sums[0], part_sums, *sums[1:])
            seconds = time.perf_counter() - t0
            epoch_stats.seconds += seconds
            wall += seconds
            bar.update(
                epoch + 1,
                step_in_epoch,
                epoch_stats.loss / max(1, epoch_stats.count),
                epoch_stats.correct / max(1, epoch_stats.count),
                epoch_stats.count / max(1e-9, epoch_stats.seconds),
            )
        if stopped:
            break
        lr_now = optimizer.param_groups[0]["lr"]
        epoch += 1
        row = epoch_stats.row(epoch, iteration, lr_now, loss_fn.stats())
        if val_set is not None and world.main:
            row.update(validation_metrics(model, val_set, adapter, device))
        rows.append(row)
        bar.epoch_done(row)
        epoch_stats = _EpochStats()
        step_in_epoch = 0
        save(epoch >= epochs)
        last_good = f"{out} (epoch {epoch}, step {iteration})"

    if stopped:
        save(False)
    return out


def _metrics(
    rows: list[dict],
    wall: float,
    model: nn.Module,
    loss_fn: nn.Module,
    train_set: Any,
    test_set: Any,
    adapter: Any,
    device: torch.device,
    finished: bool,
) -> dict:
    """Sidecar metrics. Once training finished: held-out clean-image norm spread, and accuracy
    (head's plain logits, eval mode) and norm spread on clean training images."""
    metrics: dict[str, Any] = {"wall_seconds": wall}
    metrics.update({k: float(v) for k, v in loss_fn.stats().items()})
    if rows:
        last = rows[-1]
        metrics.update({k: last[k] for k in ("val_tar", "val_auc") if k in last})
        metrics.update(
            train_acc=last["train_acc"],
            loss=last["loss"],
            train_norm_mean=last["norm_mean"],
            train_norm_std=last["norm_std"],
            train_norm_cv=last["norm_std"] / last["norm_mean"] if last["norm_mean"] else None,
        )
    if finished and test_set.images.shape[0] > 1:
        norms = feature_norms(model, test_set.images, adapter, device)
        metrics.update(
            test_norm_mean=float(norms.double().mean()),
            test_norm_std=float(norms.double().std(unbiased=False)),
            test_norm_cv=_cv(norms),
        )
    if finished:
        n = train_set.images.shape[0]
        index = torch.linspace(0, n - 1, min(n, CLEAN_EVAL_IMAGES)).round().long().unique()
        feats = clean_features(model, train_set.images[index], adapter, device)
        labels = train_set.labels[index].to(device)
        was_training = loss_fn.training
        loss_fn.eval()
        with torch.no_grad():
            logits = loss_fn(feats, labels).logits
        loss_fn.train(was_training)
        metrics.update(
            train_clean_acc=float((logits.argmax(1) == labels).double().mean()),
            train_clean_norm_cv=_cv(torch.linalg.vector_norm(feats, dim=1).cpu()),
            train_clean_images=int(index.numel()),
        )
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in metrics.items()
    }


CACHE_MARKER = "lowres-cache.json"
"""File that marks a finished model in a model cache folder (``<cache>/<model key>/``)."""


def model_key(config: TrainConfig) -> str:
    """The name of ``config``'s trained model in the model cache and in sweep cells: a 16-hex
    digest of :meth:`TrainConfig.hash` and the training split's content digest.

    Keyed by content, not by the dataset's name: new pixels behind the same manifest train a
    new model instead of reusing the one trained on the old images.
    """
    train_set, _ = _load_split(config)
    text = f"{config.hash()}:{train_set.content_digest()}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cached_model(folder: Path, config_hash: str) -> Path | None:
    """The checkpoint of a finished cache entry, or None when ``folder`` holds none.

    Args:
        folder: ``<cache>/<model key>``.
        config_hash: :meth:`TrainConfig.hash` of the model the entry must hold.

    Raises:
        CheckpointError: the entry exists but is damaged or foreign (unreadable marker, missing
            or altered weights, another model's checkpoint); the message says what is wrong.
    """
    marker = folder / CACHE_MARKER
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        rel = info["checkpoint"]
        if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise TypeError(rel)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"its marker {marker.name} is unreadable") from None
    sidecar, _ = verify_weights(folder / rel)
    if info.get("hash") != folder.name or sidecar.get("config_hash") != config_hash:
        raise CheckpointError("it holds another model's checkpoint")
    return folder / rel


def train_cached(config: TrainConfig, cache: str | os.PathLike, *, progress: bool = True) -> Path:
    """Checkpoint folder of ``config``: from ``cache/<model_key(config)>/``, or trained now.

    Training runs in ``<key>.partial`` (resumed there after an interruption) and the folder is
    renamed to ``<key>`` only once training finished, so a cache hit is always a complete
    model. A damaged entry (or a damaged partial run) is said so and retrained, never a dead
    end. Each entry has a lock (``<key>.lock``): concurrent sweeps or shards sharing the cache
    train a model once, the others wait and reuse it. If the disk fills or another file error
    stops training, the partial folder is removed. On CPU training uses one torch thread,
    whether it runs in-process or in one of several parallel workers: float reductions then run
    in one order, so a cached model's weights depend on its config and data alone, never on how
    many jobs trained it.
    """
    from lowres.embed import pick_device
    from lowres.results import atomic_write_json

    cache = Path(cache)
    key = model_key(config)
    final = cache / key
    lock = cache / f"{key}.lock"
    with file_lock(lock, f"model cache entry {final} ({config.method})"):
        try:
            found = cached_model(final, config.hash())
        except CheckpointError as exc:
            log.warning("model cache entry %s is damaged (%s); retraining it", final, exc)
            shutil.rmtree(final)
            found = None
        if found is not None:
            return found
        partial = cache / f"{key}.partial"
        log.info(
            "training %s (fold %d, seed %d) -> %s", config.method, config.fold, config.seed, final
        )
        if pick_device(None if config.device == "auto" else config.device).type == "cpu":
            config = dataclasses.replace(config, num_threads=1)
        try:
            try:
                ckpt = Path(train(config, partial, resume=True, progress=progress))
            except (CheckpointError, ConfigError) as exc:
                if not partial.exists() or not any(partial.iterdir()):
                    raise
                log.warning("discarding the damaged partial run %s (%s); restarting", partial, exc)
                shutil.rmtree(partial)
                ckpt = Path(train(config, partial, resume=True, progress=progress))
            rel = ckpt.resolve().relative_to(partial.resolve())
            atomic_write_json(
                partial / CACHE_MARKER,
                {"checkpoint": str(rel), "config": dataclasses.asdict(config), "hash": key},
            )
        except OSError:
            # A full disk: nothing of this entry stays, its lock file included (a process
            # waiting on it would then lock a removed file; it fails on the same disk anyway).
            shutil.rmtree(partial, ignore_errors=True)
            lock.unlink(missing_ok=True)
            raise
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        return final / rel
