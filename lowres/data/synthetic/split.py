"""Splits: identity ranges, rendering a split (cached on disk by the generator's source, the
torch version and every argument), and the ``synth`` builtin dataset."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lowres import rng
from lowres.data.dataset import FaceDataset
from lowres.data.images import cached_images
from lowres.data.synthetic.knobs import (
    CACHE_MAX_BYTES,
    DEFAULT_KNOBS,
    DISTRACTOR_BASE,
    MAX_IMAGES_PER_IDENTITY,
    MAX_TEST_FOLDS,
    PRESETS,
    TEST_BASE,
    TEST_BLOCK,
    SynthKnobs,
    SynthPreset,
    check_preset,
    preset_knobs,
)
from lowres.data.synthetic.paint import render
from lowres.data.synthetic.params import check_seed, image_keys, sample_identities, sample_nuisance
from lowres.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Splits, datasets and sheets
# --------------------------------------------------------------------------------------------


@dataclass
class SynthSplit:
    """A rendered split.

    Attributes:
        images: uint8 (N, C, H, W), identity-major (all images of identity 0 first).
        labels: int64 (N,), contiguous 0..K-1.
        identity_index: int64 (K,) global identity indices (train/test ranges never overlap).
        identities: K names, ``f"synth-s{seed}-{index}"``.
        knobs: the generator settings used.
        seed: identity seed (the sample seed is recorded in ``sample_seed``).
        sample_seed: seed of the per-image nuisance and noise.
    """

    images: torch.Tensor
    labels: torch.Tensor
    identity_index: torch.Tensor
    identities: list[str]
    knobs: SynthKnobs
    seed: int
    sample_seed: int


SPLITS = ("train", "test", "distractor")
"""The synth splits: training identities, a test fold, and the distractors (people in neither)."""


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"synth split must be one of {', '.join(SPLITS)}, got {split!r}")


def identity_indices(split: str, num_identities: int, fold: int = 0) -> torch.Tensor:
    """Global identity indices of a split: train ``0..n-1``; test fold f from ``TEST_BASE``;
    distractors from ``DISTRACTOR_BASE`` (one block for every fold).

    Args:
        split: "train", "test" or "distractor".
        num_identities: n >= 1 (train: < TEST_BASE; test and distractor: < TEST_BLOCK).
        fold: test block number (used by test only), 0 <= fold < 256.

    Returns:
        int64 (n,).
    """
    _check_split(split)
    if isinstance(num_identities, bool) or not isinstance(num_identities, int):
        raise ConfigError(f"num_identities must be an int >= 1, got {num_identities!r}")
    limit = TEST_BASE if split == "train" else TEST_BLOCK
    if not 1 <= num_identities < limit:
        raise ConfigError(f"num_identities must be in 1..{limit - 1}, got {num_identities}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < MAX_TEST_FOLDS:
        raise ConfigError(f"synth fold must be an int in 0..{MAX_TEST_FOLDS - 1}, got {fold!r}")
    base = {"train": 0, "test": TEST_BASE + fold * TEST_BLOCK, "distractor": DISTRACTOR_BASE}
    return base[split] + torch.arange(num_identities, dtype=torch.int64)


def check_size(size, what: str) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be (H, W) in pixels, got {size!r}") from None
    if h < 8 or w < 8:
        raise ConfigError(f"{what} must be at least 8x8 pixels, got {size!r}")
    return h, w


def render_faces(
    identity_index: torch.Tensor,
    sample_index: torch.Tensor,
    *,
    seed: int = 0,
    sample_seed: int | None = None,
    knobs: SynthKnobs = DEFAULT_KNOBS,
    size: tuple[int, int] = (112, 96),
    render_size: tuple[int, int] | None = None,
    channels: int = 1,
    device: torch.device | str | None = None,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Render image ``sample_index[i]`` of identity ``identity_index[i]`` for every i.

    Args:
        identity_index: int64 (N,) global identity indices.
        sample_index: int64 (N,) per-identity image numbers (< 65536).
        seed: identity seed. sample_seed: nuisance/noise seed (default: ``seed``).
        knobs: generator settings.
        size: returned (H, W). render_size: (H, W) to render at before an area downsample
            to ``size`` (default: ``size``, no resampling).
        channels: 1 or 3. device: where to render. batch_size: images per render call.

    Returns:
        uint8 (N, channels, H, W) on the CPU.
    """
    size = check_size(size, "size")
    render_size = size if render_size is None else check_size(render_size, "render_size")
    sample_seed = seed if sample_seed is None else check_seed(sample_seed)
    identity_index = torch.as_tensor(identity_index, dtype=torch.int64)
    sample_index = torch.as_tensor(sample_index, dtype=torch.int64)
    if identity_index.shape != sample_index.shape or identity_index.dim() != 1:
        raise ConfigError("identity_index and sample_index must be 1-D tensors of equal length")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    keys = image_keys(identity_index, sample_index)
    out = torch.empty(len(keys), channels, *size, dtype=torch.uint8)
    for i in range(0, len(keys), batch_size):
        j = min(len(keys), i + batch_size)
        ids = sample_identities(identity_index[i:j].to(dev), seed, knobs)
        nui = sample_nuisance(keys[i:j].to(dev), sample_seed, knobs)
        img = render(ids, nui, render_size, channels)
        if render_size != size:
            img = F.interpolate(img.float(), size=size, mode="area").round_().to(torch.uint8)
        out[i:j] = img.cpu()
    return out


def make_split(
    split: str = "train",
    preset: str | None = "cpu",
    seed: int = 0,
    fold: int = 0,
    *,
    num_identities: int | None = None,
    images_per_identity: int | None = None,
    size: tuple[int, int] | None = None,
    render_size: tuple[int, int] | None = None,
    channels: int | None = None,
    knobs: SynthKnobs = DEFAULT_KNOBS,
    sample_seed: int | None = None,
    device: torch.device | str | None = None,
    cache: bool = True,
) -> SynthSplit:
    """Render a train split, a test fold or the distractors; ``None`` arguments come from
    ``PRESETS[preset]``.

    Splits up to :data:`CACHE_MAX_BYTES` are rendered once and then read from the decoded-image
    cache (``$LOWRES_CACHE/decoded``; the cpu preset's 16,000 training faces are 43 MB and take
    about half a minute to render); ``cache=False`` always renders.

    Train and test identities are disjoint by construction (``identity_indices``), and test
    folds are disjoint from each other; the distractor split (one image of each of the preset's
    ``distractor_identities``, the same for every fold) is disjoint from all of them. The test
    split of the cpu preset (300 identities x 5 images) gives 3,000 genuine and 1,121,250
    impostor all-vs-all pairs.

    Returns:
        SynthSplit with identity-major images.
    """
    pre, k, m = _split_counts(split, preset)
    knobs = preset_knobs(preset, knobs)
    seed = check_seed(seed)
    k = num_identities or k
    m = images_per_identity or m
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_IMAGES_PER_IDENTITY:
        raise ConfigError(
            f"images_per_identity must be an int in 1..{MAX_IMAGES_PER_IDENTITY}, got {m!r}"
        )
    channels = channels or pre.channels
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels!r}")
    size = check_size(size or pre.size, "size")
    if render_size is None:
        render_size = pre.render_size if size == pre.size else size
    ids = identity_indices(split, k, fold)
    identity_index = ids.repeat_interleave(m)
    sample_index = torch.arange(m, dtype=torch.int64).repeat(k)

    def render() -> torch.Tensor:
        return render_faces(
            identity_index,
            sample_index,
            seed=seed,
            sample_seed=sample_seed,
            knobs=knobs,
            size=size,
            render_size=render_size,
            channels=channels,
            device=device,
        )

    if cache and _fits_cache(k * m, channels, size):
        # Keyed by the generator's source bytes (any change to it renders anew), the torch
        # version and every argument the pixels depend on; the device is not one of them.
        tag = (
            f"synth-{split}|torch {torch.__version__}|ids {int(ids[0])}+{k}|m {m}|"
            f"seed {seed}|sample_seed {sample_seed}|size {size}|render {render_size}|"
            f"channels {channels}|knobs {sorted(asdict(knobs).items())}"
        )
        package = Path(__file__).parent
        # The generator (every module of this package) and its counter hash.
        sources = [*sorted(package.glob("*.py")), Path(rng.__file__)]
        images = cached_images(sources, render, tag=tag, base=package)
    else:
        images = render()
    return SynthSplit(
        images=images,
        labels=torch.arange(k, dtype=torch.int64).repeat_interleave(m),
        identity_index=ids,
        identities=[f"synth-s{seed}-{int(i)}" for i in ids],
        knobs=knobs,
        seed=seed,
        sample_seed=seed if sample_seed is None else sample_seed,
    )


def _split_counts(split: str, preset: str | None) -> tuple[SynthPreset, int, int]:
    """(the preset's sizes, identities, images per identity) of its ``split``."""
    pre = PRESETS[check_preset(preset)]
    _check_split(split)
    if split == "train":
        return pre, pre.train_identities, pre.train_images
    if split == "distractor":
        return pre, pre.distractor_identities, 1
    return pre, pre.test_identities, pre.test_images


def _fits_cache(n_images: int, channels: int, size: tuple[int, int]) -> bool:
    return n_images * channels * size[0] * size[1] <= CACHE_MAX_BYTES


def split_labels(split: str = "train", preset: str | None = "cpu") -> torch.Tensor:
    """The labels of ``make_split(split, preset)`` (identity-major, 0..k-1) without rendering a
    face: what a protocol summary needs, in microseconds instead of a minute for the train split.
    """
    _, k, m = _split_counts(split, preset)
    return torch.arange(k, dtype=torch.int64).repeat_interleave(m)


def is_cached_size(split: str = "train", preset: str | None = "cpu") -> bool:
    """True when ``make_split(split, preset)`` fits :data:`CACHE_MAX_BYTES` (so it is cached)."""
    pre, k, m = _split_counts(split, preset)
    return _fits_cache(k * m, pre.channels, pre.size)


def load_synth(
    split: str = "train", preset: str | None = "cpu", seed: int = 0, fold: int = 0, **kwargs
):
    """The ``synth`` builtin as a FaceDataset (extra keyword arguments go to ``make_split``).

    Returns:
        lowres.data.dataset.FaceDataset named "synth", all-vs-all verification (pairs None).
    """

    preset = "cpu" if preset is None else str(preset).strip()
    check_preset(preset)
    s = make_split(split, preset, seed, fold, **kwargs)
    meta = {
        "source": "procedural (lowres.data.synthetic)",
        "credit": "lowres developers (procedural generator)",
        "licence": "generated data; same licence as lowres (MIT)",
        "alignment": "rendered upright and centred; per-image pose, roll, scale and shift jitter",
        # Same table as data_manifests/synth.toml: train/test come from the generator itself.
        "protocol": {"type": "fixed-split"},
        "protocol_note": "identity-disjoint train/test by construction; all-vs-all test pairs",
        "split": split,
        "preset": preset,
        "seed": seed,
        "sample_seed": s.sample_seed,
        "fold": fold if split == "test" else None,
        "knobs": asdict(s.knobs),
        "identity_index_range": [int(s.identity_index[0]), int(s.identity_index[-1])],
    }
    return FaceDataset(
        name="synth", images=s.images, labels=s.labels, identities=s.identities, meta=meta
    )
