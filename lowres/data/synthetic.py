"""Procedural synthetic-identity faces: thousands of identities, offline, in seconds, on CPU.

A face is drawn from two parameter sets: an *identity* (face and jaw shape, skin and hair tone,
hairline, eyes, brows, nose, mouth, plus identity-specific fine detail) and a per-image
*nuisance* (pose, roll, scale and translation jitter, expression, illumination, glasses,
occlusion, background, clothing, sensor noise). Rendering is soft-mask compositing of
signed-distance-like shapes on a pixel grid, batched and device-agnostic.

Randomness is counter-based: every random number is a hash of ``(seed, stream, key, dim)``,
where ``key`` is the global identity index (identity parameters) or a per-image key
(nuisance parameters and sensor noise). A face's pixels therefore depend only on its own seeds
and indices: rendering it in any batch, in any order, gives the same pixels as rendering it
alone (on a given device).

Look-alikes by construction: identities come in *families* of ``family_size`` consecutive
indices. Each coarse identity parameter is ``Phi(z)`` mapped into its range, with the latent
``z = sqrt(1 - s^2) * z_family + s * z_own`` (``s = family_spread``), so every coarse latent is
standard normal and two siblings' coarse latents correlate ``1 - s^2`` (0.64 at the default
0.6); unrelated identities correlate 0. Fine detail (skin texture, marks) is independent per
identity, so siblings are told apart best by exactly the cues that vanish at low resolution.

Fine detail and resolution: the skin texture is a sum of plane waves whose spatial frequency is
``texture_cycles`` (default 8) cycles per face width, +-25%. The face is about 55% of the image
width, so at 112x96 a face is ~53 px wide and the texture (period ~6.6 px) is resolved; at 1/2
scale (~26 px face, Nyquist 13 cycles) it survives; at 1/4 (~13 px face, Nyquist 6.5 cycles)
it is gone. The marks (moles, radius 1-2.5 px at 112x96) follow the same fate. Face shape,
tones, hairline and feature layout are coarse cues that survive down to ~1/8.

Difficulty (measured, benchmarks/synth_pixels.py, cpu-preset test split, 56x48 grey):
mean-centred raw-pixel cosine, clean gallery vs degraded probe, reaches TAR@FAR=1e-2 of
~0.135 at full resolution (AUC 0.75) at the defaults, ~0.28 at ``difficulty=0.5``, and falls
to ~0.10 at 1/8 of the side. Raw pixels barely use the fine cues (1 and 1/2 score alike); a
learned model has the fine cues, and pose/light invariance, left to win.

Identity ranges: train identities use global indices ``0 .. n-1``; test fold ``f`` uses
``TEST_BASE + f * TEST_BLOCK + (0 .. n-1)``, so train and test (and different test folds) are
disjoint by construction, and so are their families.

Example:
    >>> ids = sample_identities(4, seed=0)
    >>> nui = sample_nuisance(4, seed=0)
    >>> render(ids, nui, size=(112, 96), channels=1).shape
    torch.Size([4, 1, 112, 96])
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from lowres import rng
from lowres.data.dataset import FaceDataset
from lowres.data.images import cached_images
from lowres.errors import ConfigError, DataError
from lowres.files import atomic_write_bytes
from lowres.rng import M32, hash32

__all__ = [
    "DEFAULT_KNOBS",
    "PRESETS",
    "TEST_BASE",
    "TEST_BLOCK",
    "IdentityParams",
    "NuisanceParams",
    "SynthKnobs",
    "SynthPreset",
    "SynthSplit",
    "down_up",
    "identity_indices",
    "identity_sheet",
    "image_keys",
    "load_synth",
    "make_split",
    "parse_preset",
    "preset_knobs",
    "render",
    "render_faces",
    "sample_identities",
    "sample_nuisance",
    "scale_sheet",
    "scales_sheet_path",
    "write_scale_sheet",
    "write_sheets",
]

TEST_BASE = 1 << 40
"""First global identity index of the test blocks (train indices stay below it)."""
TEST_BLOCK = 1 << 32
"""Index stride between test folds: fold f owns ``TEST_BASE + f * TEST_BLOCK + [0, 2^32)``."""
_MAX_IMAGES_PER_IDENTITY = 1 << 16
SWEEP_SCALES = (1.0, 0.5, 0.25, 0.125, 0.0625)


# --------------------------------------------------------------------------------------------
# Knobs and presets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthKnobs:
    """Generator settings. Nuisance ranges are half-widths at ``difficulty=1``.

    Attributes:
        difficulty: multiplies every nuisance range below (0 = frontal, neutral, evenly lit,
            no jitter, no noise; 1 = default; >1 harder). Glasses/occlusion probabilities are
            multiplied too (capped at 1).
        family_size: identities per family (consecutive global indices). 1 = no look-alikes.
        family_spread: s in (0, 1]; sibling coarse latents correlate 1 - s^2. Smaller = more
            alike. 1 = siblings as different as strangers.
        texture_cycles: centre frequency of the identity skin texture, in cycles per face
            width (each wave's frequency is uniform in [0.75, 1.25] x this).
        texture_strength: relative contrast of the skin texture (0 disables it).
        marks: number of identity-specific moles at fixed places on the face (0..8).
        yaw_deg, pitch_deg: head rotation range; renders as feature displacement and
            foreshortening on a spherical head, with extra parallax for the nose.
        roll_deg: in-plane rotation range.
        scale_jitter: log-scale range of the face size (0.1 = about +-10%).
        shift_jitter: translation range as a fraction of the image half-width.
        expression: range of smile (mouth corners up, lips part), eye closing and brow raise.
        light_strength: directional light strength (the rest is ambient); direction uniform.
        exposure: global gain range (log scale) of the whole image.
        glasses_prob: probability that an image shows glasses (random frame tone and size).
        occlusion_prob: probability of a random occluder (blob of random tone) over the face.
        background: spread of background and clothing tones plus the amplitude of background
            gradients and blobs (0 = mid-grey background and clothes). Raw pixels are very
            sensitive to it (at 1.0 raw-pixel TAR@1e-2 drops to ~0.035); learned models are not.
        noise_std: std of additive Gaussian sensor noise on [0, 1] intensities.
    """

    difficulty: float = 1.0
    family_size: int = 4
    family_spread: float = 0.6
    texture_cycles: float = 8.0
    texture_strength: float = 0.045
    marks: int = 3
    yaw_deg: float = 25.0
    pitch_deg: float = 12.0
    roll_deg: float = 5.0
    scale_jitter: float = 0.05
    shift_jitter: float = 0.03
    expression: float = 1.0
    light_strength: float = 0.4
    exposure: float = 0.2
    glasses_prob: float = 0.15
    occlusion_prob: float = 0.10
    background: float = 0.25
    noise_std: float = 0.02

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"synth knob {f.name}={value!r} is invalid; use a finite number >= 0"
                )
        if int(self.family_size) != self.family_size or self.family_size < 1:
            raise ConfigError(
                f"synth knob family_size={self.family_size!r} is invalid; use an integer >= 1"
            )
        if not 0 < self.family_spread <= 1:
            raise ConfigError(
                f"synth knob family_spread={self.family_spread!r} is invalid; use 0 < s <= 1"
            )
        if int(self.marks) != self.marks or self.marks > 8:
            raise ConfigError(f"synth knob marks={self.marks!r} is invalid; use 0..8")
        if self.texture_cycles <= 0:
            raise ConfigError(
                f"synth knob texture_cycles={self.texture_cycles!r} is invalid; use > 0"
            )

    def with_(self, **changes) -> SynthKnobs:
        """A copy with ``changes`` applied (unknown names raise ConfigError)."""
        known = {f.name for f in fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise ConfigError(f"unknown synth knob(s) {bad}; valid: {sorted(known)}")
        return replace(self, **changes)


DEFAULT_KNOBS = SynthKnobs()


@dataclass(frozen=True)
class SynthPreset:
    """Sizes of a split family. ``size`` is what ``make_split`` returns; faces are rendered at
    ``render_size`` and area-downsampled to ``size`` when the two differ (anti-aliasing)."""

    train_identities: int
    train_images: int
    test_identities: int
    test_images: int
    size: tuple[int, int]
    render_size: tuple[int, int]
    channels: int


CACHE_MAX_BYTES = 1 << 30
"""Largest rendered split (uint8 bytes) kept in the disk cache; the gpu preset's 12.9 GB
training split is always rendered on the fly."""

PRESETS: dict[str, SynthPreset] = {
    # ~16k grey 56x48 training images: a small CPU net sees an epoch in ~20-30 s on 2 cores.
    # 300 x 5 test images -> 3,000 genuine and 1.12M impostor all-vs-all pairs (TAR@1e-3 ok).
    "cpu": SynthPreset(2000, 8, 300, 5, (56, 48), (112, 96), 1),
    # 400k colour 112x96 training images; 1,000 x 6 test images -> 15,000 genuine and ~18M
    # impostor pairs: TAR@1e-4 well supported, and under the sweep's MAX_PAIRS (it stores every
    # pair score of every cell), so `lowres sweep --preset gpu` runs.
    "gpu": SynthPreset(20000, 20, 1000, 6, (112, 96), (112, 96), 3),
}


# --------------------------------------------------------------------------------------------
# Counter-based randomness (exact integer hashing: same numbers on every device and batch)
# --------------------------------------------------------------------------------------------

_STREAMS = {"family": 1, "identity": 2, "fine": 3, "nuisance": 4, "noise": 5}


def _key_hash(seed: int, stream: str, keys: torch.Tensor) -> torch.Tensor:
    """Hash of (seed, stream, key) for int64 keys in [0, 2^63): int64 (n,) in [0, 2^32)."""
    s = hash32(torch.tensor([(seed & M32) ^ (_STREAMS[stream] << 24)], dtype=torch.int64))
    s = hash32(s ^ ((seed >> 32) & M32)).to(keys.device)
    h = hash32(s ^ (keys & M32))
    return hash32(h ^ ((keys >> 32) & M32))


def _uniform(seed: int, stream: str, keys: torch.Tensor, dims: int) -> torch.Tensor:
    """Uniform (0, 1) float32 (n, dims), a pure function of (seed, stream, key, dim)."""
    h = _key_hash(seed, stream, keys)[:, None]
    d = torch.arange(dims, dtype=torch.int64, device=keys.device)[None, :]
    u = hash32(hash32(h ^ d) ^ 0x9E3779B9)
    return ((u >> 8).to(torch.float32) + 0.5) / float(1 << 24)


def _normal(seed: int, stream: str, keys: torch.Tensor, dims: int) -> torch.Tensor:
    return torch.special.ndtri(_uniform(seed, stream, keys, dims))


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < (1 << 63):
        raise ConfigError(f"synth seed {seed!r} is invalid; use an integer in [0, 2^63)")
    return seed


def _as_keys(n_or_keys: int | torch.Tensor, what: str) -> torch.Tensor:
    if isinstance(n_or_keys, int) and not isinstance(n_or_keys, bool):
        if n_or_keys < 0:
            raise ConfigError(f"number of {what} must be >= 0, got {n_or_keys}")
        return torch.arange(n_or_keys, dtype=torch.int64)
    keys = torch.as_tensor(n_or_keys)
    if keys.dim() != 1 or keys.dtype not in (torch.int64, torch.int32):
        raise ConfigError(
            f"{what} must be an int count or a 1-D int64 tensor of indices, got "
            f"{keys.dtype} {tuple(keys.shape)}"
        )
    keys = keys.to(torch.int64)
    if keys.numel() and int(keys.min()) < 0:
        raise ConfigError(f"{what} indices must be >= 0")
    return keys


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------

# Coarse identity parameters: name -> (low, high). Value = low + (high - low) * Phi(z).
# Lengths are in face-frame units: 1 = half the image width.
_COARSE = {
    "face_w": (0.46, 0.60),  # face half-width
    "face_h": (0.64, 0.80),  # face half-height
    "jaw": (0.55, 0.92),  # chin half-width / face half-width
    "squareness": (1.8, 3.4),  # superellipse exponent of the face outline
    "skin": (0.0, 1.0),  # light -> dark skin tone
    "hair": (0.0, 1.0),  # black -> blond hair tone
    "hair_red": (0.0, 1.0),  # red tint (only the top third shows)
    "hairline": (0.08, 0.26),  # forehead height as a fraction of face height
    "hairline_curve": (-0.05, 0.30),  # how far hair comes down at the temples
    "hair_part": (-0.12, 0.12),  # hairline asymmetry
    "hair_volume": (0.02, 0.16),  # hair thickness around the head
    "hair_length": (0.0, 1.0),  # short -> shoulder length (sides)
    "eye_spacing": (0.19, 0.29),  # half distance between eye centres
    "eye_y": (-0.14, 0.0),  # eye line relative to face centre
    "eye_size": (0.075, 0.105),  # eye half-width
    "eye_shape": (0.32, 0.58),  # eye height / width
    "eye_tilt": (-0.18, 0.18),  # canthal tilt (radians)
    "iris": (0.0, 1.0),  # dark -> light iris
    "brow_gap": (0.07, 0.15),  # brow above eye centre
    "brow_arch": (0.0, 0.05),
    "brow_thick": (0.014, 0.036),
    "brow_tilt": (-0.25, 0.25),
    "brow_len": (0.09, 0.15),
    "nose_len": (0.17, 0.31),  # eye line -> nose base
    "nose_w": (0.055, 0.11),  # nostril half-width
    "mouth_gap": (0.09, 0.17),  # nose base -> mouth line
    "mouth_w": (0.13, 0.23),  # mouth half-width
    "mouth_curve": (-0.025, 0.02),  # resting corner drop (+) or lift (-)
    "lip_upper": (0.012, 0.035),
    "lip_lower": (0.018, 0.045),
    "lip_tone": (0.0, 1.0),
    "beard": (0.0, 1.0),  # only the top quarter grows a beard
}
_TEXTURE_WAVES = 10
_MARK_DIMS = 4  # x, y, radius, darkness


@dataclass
class IdentityParams:
    """Identity parameters of n faces. Every tensor has leading dimension n.

    Attributes:
        index: int64 (n,) global identity indices (family = index // family_size).
        coarse: float32 (n, len(COARSE_NAMES)) coarse parameters in their ranges (see
            ``coarse_names``/``get``); lengths in half-image-width units.
        texture: float32 (n, W, 4) skin-texture plane waves: (fx, fy, phase, amplitude), with
            (fx, fy) in radians per face-frame unit.
        marks: float32 (n, M, 4) moles: (x, y) in face-relative units, radius, darkness.
    """

    index: torch.Tensor
    coarse: torch.Tensor
    texture: torch.Tensor
    marks: torch.Tensor

    coarse_names = tuple(_COARSE)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def get(self, name: str) -> torch.Tensor:
        """The (n,) column of coarse parameter ``name``."""
        return self.coarse[:, self.coarse_names.index(name)]

    def take(self, index: torch.Tensor) -> IdentityParams:
        """Rows ``index`` (e.g. repeat each identity once per image)."""
        index = torch.as_tensor(index, dtype=torch.int64, device=self.index.device)
        return IdentityParams(*(getattr(self, f.name)[index] for f in fields(self)))

    def to(self, device: torch.device | str | None) -> IdentityParams:
        return IdentityParams(*(getattr(self, f.name).to(device) for f in fields(self)))


_NUISANCE = (
    "yaw",
    "pitch",
    "roll",
    "log_scale",
    "shift_x",
    "shift_y",
    "smile",
    "eye_open",
    "brow_raise",
    "gaze_x",
    "light_az",
    "light_el",
    "light",
    "log_gain",
    "glasses",
    "glasses_tone",
    "glasses_size",
    "occluder",
    "occ_x",
    "occ_y",
    "occ_a",
    "occ_b",
    "occ_tone",
    "bg_r",
    "bg_g",
    "bg_b",
    "bg_grad_angle",
    "bg_grad",
    "blob_x",
    "blob_y",
    "blob_r",
    "blob_tone",
    "cloth_r",
    "cloth_g",
    "cloth_b",
    "noise_std",
)


@dataclass
class NuisanceParams:
    """Per-image nuisance of n faces.

    Attributes:
        key: int64 (n,) per-image keys (they seed the sensor noise).
        values: float32 (n, len(NUISANCE_NAMES)), see ``names``/``get``: yaw, pitch, roll
            (radians), log_scale, shift_x/y (half-widths), smile, eye_open, brow_raise, gaze_x,
            light_az/el (radians), light (strength), log_gain, glasses (0/1), occluder (0/1),
            occluder geometry and tone, background and clothing tones, noise_std.
        seed: the sample seed (sensor noise is a hash of (seed, key, pixel)).
    """

    key: torch.Tensor
    values: torch.Tensor
    seed: int = 0

    names = _NUISANCE

    def __len__(self) -> int:
        return int(self.key.shape[0])

    def get(self, name: str) -> torch.Tensor:
        return self.values[:, self.names.index(name)]

    def take(self, index: torch.Tensor) -> NuisanceParams:
        index = torch.as_tensor(index, dtype=torch.int64, device=self.key.device)
        return NuisanceParams(self.key[index], self.values[index], self.seed)

    def to(self, device: torch.device | str | None) -> NuisanceParams:
        return NuisanceParams(self.key.to(device), self.values.to(device), self.seed)


def sample_identities(
    ids: int | torch.Tensor, seed: int = 0, knobs: SynthKnobs = DEFAULT_KNOBS
) -> IdentityParams:
    """Identity parameters for global identity indices (or ``0..n-1`` when given a count).

    Args:
        ids: a count n, or int64 (n,) global identity indices.
        seed: identity seed; row i depends only on (seed, ids[i], knobs).
        knobs: generator settings (family_size, family_spread, texture_*, marks are used).

    Returns:
        IdentityParams with n rows, on the device of ``ids``.
    """
    seed = _check_seed(seed)
    index = _as_keys(ids, "identities")
    s = float(knobs.family_spread)
    family = index // int(knobs.family_size)
    k = len(_COARSE)
    z = math.sqrt(1.0 - s * s) * _normal(seed, "family", family, k)
    z = z + s * _normal(seed, "identity", index, k)
    lo = torch.tensor([v[0] for v in _COARSE.values()], device=index.device)
    hi = torch.tensor([v[1] for v in _COARSE.values()], device=index.device)
    coarse = lo + (hi - lo) * torch.special.ndtr(z)

    nw, nm = _TEXTURE_WAVES, 8
    u = _uniform(seed, "fine", index, nw * 3 + nm * _MARK_DIMS)
    ut, um = u[:, : nw * 3].view(-1, nw, 3), u[:, nw * 3 :].view(-1, nm, _MARK_DIMS)
    # Frequency in cycles per face width -> radians per unit; face width = 2 * face_w.
    cycles = knobs.texture_cycles * (0.75 + 0.5 * ut[..., 0])
    omega = 2 * math.pi * cycles / (2 * coarse[:, :1])
    angle = math.pi * ut[..., 1]
    amp = torch.full_like(omega, knobs.texture_strength * math.sqrt(2.0 / nw))
    texture = torch.stack(
        [omega * torch.cos(angle), omega * torch.sin(angle), 2 * math.pi * ut[..., 2], amp], -1
    )
    # Moles on cheeks, forehead and chin, never on the eyes (|y| band around the eye line).
    mx = (um[..., 0] * 2 - 1) * 0.75
    my = um[..., 1] * 1.3 - 0.55
    my = torch.where((my > -0.25) & (my < -0.05), my + 0.3, my)
    radius = 0.012 + 0.02 * um[..., 2]
    dark = 0.25 + 0.35 * um[..., 3]
    marks = torch.stack([mx, my, radius, dark], -1)[:, : int(knobs.marks)]
    return IdentityParams(index=index, coarse=coarse, texture=texture, marks=marks)


def image_keys(identity_index: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
    """Per-image keys: identity_index * 2^16 + sample_index (sample_index < 65536)."""
    identity_index = torch.as_tensor(identity_index, dtype=torch.int64)
    sample_index = torch.as_tensor(sample_index, dtype=torch.int64)
    if sample_index.numel() and int(sample_index.max()) >= _MAX_IMAGES_PER_IDENTITY:
        raise ConfigError(
            f"at most {_MAX_IMAGES_PER_IDENTITY} images per identity are supported; "
            f"got sample index {int(sample_index.max())}"
        )
    # Global indices go up to ~2^41; the key must stay below 2^63.
    return (identity_index % (1 << 46)) * _MAX_IMAGES_PER_IDENTITY + sample_index


def sample_nuisance(
    keys: int | torch.Tensor, seed: int = 0, knobs: SynthKnobs = DEFAULT_KNOBS
) -> NuisanceParams:
    """Per-image nuisance parameters.

    Args:
        keys: a count n (keys ``0..n-1``) or int64 (n,) per-image keys, e.g. from
            ``image_keys(identity_index, sample_index)``.
        seed: sample seed; row i depends only on (seed, keys[i], knobs).
        knobs: generator settings (the nuisance ranges and ``difficulty``).

    Returns:
        NuisanceParams with n rows, on the device of ``keys``.
    """
    seed = _check_seed(seed)
    key = _as_keys(keys, "image keys")
    u = _uniform(seed, "nuisance", key, len(_NUISANCE))
    d = float(knobs.difficulty)
    deg = math.pi / 180

    def sym(i: int, half: float) -> torch.Tensor:  # uniform in [-half, half]
        return (2 * u[:, i] - 1) * half

    col = {name: i for i, name in enumerate(_NUISANCE)}
    v = torch.empty_like(u)
    v[:, col["yaw"]] = sym(col["yaw"], knobs.yaw_deg * deg * d)
    v[:, col["pitch"]] = sym(col["pitch"], knobs.pitch_deg * deg * d)
    v[:, col["roll"]] = sym(col["roll"], knobs.roll_deg * deg * d)
    v[:, col["log_scale"]] = sym(col["log_scale"], knobs.scale_jitter * d)
    v[:, col["shift_x"]] = sym(col["shift_x"], knobs.shift_jitter * d)
    v[:, col["shift_y"]] = sym(col["shift_y"], knobs.shift_jitter * d)
    e = knobs.expression * d
    # Mostly neutral faces: squaring skews smile/blink/brow towards zero.
    v[:, col["smile"]] = (u[:, col["smile"]] ** 2 * e).clamp(max=1.0)
    v[:, col["eye_open"]] = (1 - 0.8 * e * u[:, col["eye_open"]] ** 3).clamp(min=0.1)
    v[:, col["brow_raise"]] = 0.035 * e * (u[:, col["brow_raise"]] ** 2 * 1.3 - 0.3)
    v[:, col["gaze_x"]] = sym(col["gaze_x"], 0.35 * min(d, 1.0))
    v[:, col["light_az"]] = sym(col["light_az"], math.pi)
    v[:, col["light_el"]] = (u[:, col["light_el"]] - 0.2) * 1.0
    v[:, col["light"]] = (u[:, col["light"]] * knobs.light_strength * d).clamp(max=0.95)
    v[:, col["log_gain"]] = sym(col["log_gain"], knobs.exposure * d)
    v[:, col["glasses"]] = (u[:, col["glasses"]] < min(1.0, knobs.glasses_prob * d)).float()
    v[:, col["occluder"]] = (u[:, col["occluder"]] < min(1.0, knobs.occlusion_prob * d)).float()
    for name in ("glasses_tone", "glasses_size", "occ_x", "occ_y", "occ_a", "occ_b", "occ_tone"):
        v[:, col[name]] = u[:, col[name]]
    bg_amp = knobs.background * min(d, 1.0)
    for name in ("bg_r", "bg_g", "bg_b", "cloth_r", "cloth_g", "cloth_b"):
        v[:, col[name]] = 0.5 + (u[:, col[name]] - 0.5) * bg_amp
    for name in ("blob_x", "blob_y"):
        v[:, col[name]] = u[:, col[name]]
    v[:, col["bg_grad_angle"]] = u[:, col["bg_grad_angle"]] * 2 * math.pi
    v[:, col["bg_grad"]] = u[:, col["bg_grad"]] * 0.35 * bg_amp
    v[:, col["noise_std"]] = knobs.noise_std * d * (0.5 + u[:, col["noise_std"]])
    v[:, col["blob_r"]] = 0.3 + 0.5 * u[:, col["blob_r"]]
    v[:, col["blob_tone"]] = (u[:, col["blob_tone"]] - 0.5) * 0.6 * bg_amp
    return NuisanceParams(key=key, values=v, seed=seed)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

_SKIN_STOPS = ((0.97, 0.82, 0.72), (0.86, 0.66, 0.52), (0.66, 0.46, 0.32), (0.36, 0.24, 0.17))
_HAIR_STOPS = ((0.05, 0.04, 0.04), (0.22, 0.14, 0.09), (0.45, 0.31, 0.18), (0.80, 0.66, 0.42))
_LUMA = (0.299, 0.587, 0.114)


def _palette(stops: tuple, t: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear colour ramp: t (n,) in [0, 1] -> (n, 3)."""
    table = torch.tensor(stops, dtype=torch.float32, device=t.device)
    pos = t.clamp(0, 1) * (len(stops) - 1)
    i = pos.floor().clamp(max=len(stops) - 2).long()
    f = (pos - i)[:, None]
    return table[i] * (1 - f) + table[i + 1] * f


def _ramp(d: torch.Tensor, soft: float) -> torch.Tensor:
    """Soft inside-mask from a signed distance (positive inside), edge ``soft`` wide."""
    return (d * (1.0 / soft) + 0.5).clamp_(0.0, 1.0)


def _ellipse(x, y, cx, cy, a, b, soft):
    """Soft mask of an axis-aligned ellipse; all arguments broadcast to (n, H, W)."""
    dx, dy = (x - cx) / a, (y - cy) / b
    r = (dx * dx + dy * dy).sqrt_()
    return _ramp((1 - r) * torch.minimum(a, b), soft)


def _over(img: torch.Tensor, colour: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Composite ``colour`` (n, C) or (n, C, H, W) over img (n, C, H, W) with mask (n, H, W)."""
    if colour.dim() == 2:
        colour = colour[:, :, None, None]
    m = mask[:, None]
    return img + (colour - img) * m


def _col(v: torch.Tensor) -> torch.Tensor:
    return v[:, None, None]


# Identity detail map (skin texture x marks) on a canonical head-frame raster, computed once
# per identity and warped into each image with one bilinear grid_sample.
_MAP_HALF = (0.86, 0.72)  # half extents in head-frame units: (v - face centre, u)
_MAP_SIZE = (96, 80)  # ~0.018 units (< 1 px at 112x96) per map sample
_FACE_CY = 0.06  # face centre below the head-frame origin


def _detail_maps(ident: IdentityParams) -> torch.Tensor:
    """Multiplicative skin-detail maps (n, 1, Hm, Wm): (1 + texture) x (1 - marks)."""
    dev = ident.index.device
    hm, wm = _MAP_SIZE
    v = ((torch.arange(hm, device=dev) + 0.5) / hm * 2 - 1) * _MAP_HALF[0]
    u = ((torch.arange(wm, device=dev) + 0.5) / wm * 2 - 1) * _MAP_HALF[1]
    v, u = v[None, :, None], u[None, None, :]
    tex = ident.texture
    out = torch.ones(len(ident), hm, wm, device=dev)
    for k in range(tex.shape[1]):
        arg = u * _col(tex[:, k, 0]) + v * _col(tex[:, k, 1]) + _col(tex[:, k, 2])
        out += torch.cos(arg) * _col(tex[:, k, 3])
    fw, fh = ident.get("face_w"), ident.get("face_h")
    for k in range(ident.marks.shape[1]):
        mk = ident.marks[:, k]
        d2 = ((u - _col(mk[:, 0] * fw)) ** 2 + (v - _col(mk[:, 1] * fh)) ** 2) / _col(mk[:, 2]) ** 2
        out *= 1 - _col(mk[:, 3]) * (1 - d2).clamp_(min=0) ** 2
    return out[:, None]


def render(
    identity: IdentityParams,
    nuisance: NuisanceParams,
    size: tuple[int, int] = (112, 96),
    channels: int = 1,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Render faces: row i of ``identity`` under row i of ``nuisance``.

    Every pixel of image i depends only on row i (and its seeds), never on the other rows:
    a batch renders exactly like its images rendered one by one.

    Args:
        identity: IdentityParams with n rows (repeat rows with ``take`` for several images).
        nuisance: NuisanceParams with n rows.
        size: (H, W) output size in pixels; the layout scales with the width (any size >= 8).
        channels: 1 (grey: ITU-R 601 luma of the colour render) or 3 (RGB).
        device: where to render (default: the parameters' device).

    Returns:
        uint8 (n, channels, H, W).
    """
    if len(identity) != len(nuisance):
        raise ConfigError(
            f"render needs one nuisance row per identity row, got {len(identity)} and "
            f"{len(nuisance)}; repeat identities with IdentityParams.take"
        )
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels!r}")
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise ConfigError(f"render size must be at least 8x8 pixels, got {tuple(size)!r}")
    device = torch.device(device) if device is not None else identity.index.device
    identity, nuisance = identity.to(device), nuisance.to(device)
    if device.type != "cpu":
        return _render_batch(identity, nuisance, h, w, channels, device, workers=1)
    threads = torch.get_num_threads()
    # Intra-op OpenMP on these small per-chunk tensors costs more than it saves (and stalls
    # for milliseconds per op on a busy machine): run chunks single-threaded, several at once.
    torch.set_num_threads(1)
    try:
        return _render_batch(identity, nuisance, h, w, channels, device, workers=threads)
    finally:
        torch.set_num_threads(threads)


def _render_batch(
    identity: IdentityParams,
    nuisance: NuisanceParams,
    h: int,
    w: int,
    channels: int,
    device: torch.device,
    workers: int,
) -> torch.Tensor:
    n = len(identity)
    out = torch.empty(n, channels, h, w, dtype=torch.uint8, device=device)
    # Small chunks keep every temporary in cache and each op under torch's intra-op grain
    # size (no thread wake-ups): many times faster on CPU than one big batch.
    step = n if device.type != "cpu" else max(1, 32768 // (h * w))
    uniq, inverse = torch.unique(identity.index, return_inverse=True)
    first = torch.full((len(uniq),), n, dtype=torch.int64, device=device)
    first.scatter_reduce_(0, inverse, torch.arange(n, device=device), "amin")
    maps = _detail_maps(identity.take(first))
    per_image = _per_image(identity, nuisance, channels)
    noise_seeds = _key_hash(nuisance.seed, "noise", nuisance.key).tolist()
    noise_std = nuisance.get("noise_std").tolist()
    gy = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (2.0 / w) - h / w
    gx = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (2.0 / w) - 1.0
    grid = (gx[None, :], gy[:, None])

    def work(i: int) -> None:
        j = min(n, i + step)
        chunk = {k: t[i:j] for k, t in per_image.items()}
        img = _render_chunk(chunk, maps[inverse[i:j]], grid, soft=1.2 * 2.0 / w)
        # A CPU generator whatever the render device: CUDA's Philox stream differs from the
        # CPU's Mersenne Twister, and a face must not change with the device that drew it.
        gen = torch.Generator()
        for k in range(i, j):
            # Sensor noise from one generator per image key: independent of the batch.
            gen.manual_seed(noise_seeds[k])
            noise = torch.randn(channels, h, w, generator=gen).to(device)
            img[k - i].add_(noise, alpha=noise_std[k])
        out[i:j] = img.clamp_(0, 1).mul_(255).round_().to(torch.uint8)

    starts = range(0, n, step)
    workers = min(workers, len(starts))
    if workers > 1:
        # Chunks are independent; torch ops release the GIL, so threads use every core.
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, starts))
    else:
        for i in starts:
            work(i)
    return out


def _colour_tones(ident: IdentityParams, nui: NuisanceParams, channels: int) -> dict:
    """Each face part's colour per image (skin, hair, lips, iris, background, clothes, glasses,
    occluder...), as ``c_<part>`` (n, C, 1, 1) tensors: RGB, or luma for grey."""
    dev = ident.index.device
    p, q = ident.get, nui.get
    c = {}
    skin = _palette(_SKIN_STOPS, p("skin"))
    hair_t = p("hair")
    hair = _palette(_HAIR_STOPS, hair_t)
    red = ((p("hair_red") - 0.66) * 3).clamp(0, 1)[:, None] * (hair_t > 0.25).float()[:, None]
    hair = hair + red * (torch.tensor([0.55, 0.22, 0.10], device=dev) - hair) * 0.8
    lip = skin * torch.tensor([0.88, 0.62, 0.60], device=dev)
    lip = lip * (1.0 - 0.25 * p("lip_tone"))[:, None] + torch.tensor([0.06, 0.0, 0.0], device=dev)
    iris = _palette(((0.10, 0.07, 0.05), (0.35, 0.22, 0.10), (0.35, 0.45, 0.55)), p("iris"))
    # Background and clothes: a brightness plus a weaker colour cast, both from the knob range.
    bg = torch.stack([q("bg_r"), q("bg_g"), q("bg_b")], 1)
    bg = 0.35 * bg + 0.65 * bg[:, :1] * 1.3 - 0.05
    cloth = torch.stack([q("cloth_r"), q("cloth_g"), q("cloth_b")], 1)
    cloth = 0.5 * cloth + 0.5 * cloth[:, 2:] * 1.4 - 0.2
    frame = (0.05 + 0.5 * q("glasses_tone"))[:, None] * torch.tensor([1.0, 0.9, 0.8], device=dev)
    occ = _palette((*_SKIN_STOPS, (0.2, 0.3, 0.6), (0.9, 0.9, 0.85)), q("occ_tone")) * 0.9
    grey = torch.full_like(skin, 1.0)
    colours = {
        "bg": bg,
        "cloth": cloth,
        "neck": skin * 0.75,
        "ear": skin * 0.85,
        "hair": hair,
        "skin": skin,
        "beard": hair * 0.8 + skin * 0.2,
        "lid": skin * 0.5,
        "sclera": grey * 0.9,
        "iris": iris,
        "pupil": grey * 0.05,
        "brow": hair * 0.7,
        "nostril": skin * 0.35,
        "lip": lip,
        "gap": skin * 0.25,
        "frame": frame,
        "occ": occ,
    }
    luma = torch.tensor(_LUMA, device=dev)
    for name, rgb in colours.items():
        tone = (rgb * luma).sum(1, keepdim=True) if channels == 1 else rgb
        c["c_" + name] = tone[:, :, None, None]
    return c


def _per_image(ident: IdentityParams, nui: NuisanceParams, channels: int) -> dict:
    """Every per-image scalar and colour the renderer needs, as (n, 1, 1) / (n, C) tensors."""
    p, q = ident.get, nui.get
    c = _colour_tones(ident, nui, channels)
    col = _col

    ang = q("bg_grad_angle")
    c["bg_gx"] = col(torch.cos(ang) * q("bg_grad"))
    c["bg_gy"] = col(torch.sin(ang) * q("bg_grad"))
    c["blob_x"], c["blob_y"] = col(q("blob_x") * 2 - 1), col(q("blob_y") * 2 - 1)
    c["blob_ir2"] = col(1 / q("blob_r") ** 2)
    c["blob_tone"] = col(q("blob_tone"))
    inv_s = torch.exp(-q("log_scale"))
    c["cr"], c["sr"] = col(torch.cos(q("roll")) * inv_s), col(torch.sin(q("roll")) * inv_s)
    c["sx"], c["sy"] = col(q("shift_x")), col(q("shift_y"))
    yaw, pitch = q("yaw"), q("pitch")
    c["cyaw"], c["syaw"] = col(torch.cos(yaw)), col(torch.sin(yaw))
    c["cpitch"], c["spitch"] = col(torch.cos(pitch)), col(torch.sin(pitch))
    fw, fh = p("face_w"), p("face_h")
    c["fw"], c["fh"] = col(fw), col(fh)
    c["neck_dx"] = col(0.25 * torch.sin(yaw) * fw)
    c["neck_w"] = col(0.42 * fw)
    vol = p("hair_volume")
    hb = fh + vol + 0.05 + 0.55 * p("hair_length")
    c["cap_cy"], c["cap_a"], c["cap_b"] = (
        col(_FACE_CY - fh - vol + hb),
        col(fw + vol + 0.04),
        col(hb),
    )
    # Short hair stops above the eyes (face sides show); long hair reaches the shoulders.
    c["cap_bottom"] = col(_FACE_CY + (1.6 * p("hair_length") - 0.45) * fh)
    c["ifh"] = col(1 / fh)
    c["ear_y"], c["ear_a"] = col(_FACE_CY + p("eye_y") + 0.08), col(0.04 + 0.15 * p("eye_size"))
    c["long_hair"] = col((p("hair_length") > 0.45).float())
    c["jaw_in"] = col(1 - p("jaw"))
    c["sq"], c["isq"] = col(p("squareness")), col(1 / p("squareness"))
    c["face_soft"] = col(fw * 0.8)
    e_y = _FACE_CY + p("eye_y")
    nose_y = e_y + p("nose_len")
    c["beard"] = col(((p("beard") - 0.75) * 4).clamp(0, 1) * 0.75)
    c["beard_y"] = col(nose_y + 0.03)
    c["hairline"] = col(_FACE_CY - fh + p("hairline") * 2 * fh)
    c["part"] = col(p("hair_part"))
    c["temple"] = col(p("hairline_curve") * fh)
    c["ey"], c["ea"] = col(e_y), col(p("eye_size"))
    c["eb"] = col(p("eye_size") * p("eye_shape") * q("eye_open"))
    c["espace"], c["etilt"] = col(p("eye_spacing")), col(p("eye_tilt"))
    c["gaze"] = col(q("gaze_x") * p("eye_size") * 0.6)
    c["brow_len"] = col(p("brow_len"))
    c["brow_y"] = col(e_y - p("brow_gap") - q("brow_raise"))
    c["brow_arch"], c["brow_tilt"] = col(p("brow_arch")), col(p("brow_tilt") * 0.3)
    c["brow_thick"] = col(p("brow_thick"))
    c["nose_dx"], c["nose_dy"] = col(0.12 * torch.sin(yaw)), col(0.12 * torch.sin(pitch))
    c["nw"] = col(p("nose_w"))
    el, az = q("light_el"), q("light_az")
    lx_light = torch.cos(el) * torch.sin(az)
    # The nose casts its side shadow away from the light; without directional light, none.
    side = torch.where(lx_light >= 0, -1.0, 1.0) * (q("light") > 0).float()
    c["ridge_x"] = col(side * p("nose_w") * 0.55)
    c["ridge_dark"] = col(0.1 + 0.5 * q("light"))
    c["nose_top"], c["nose_y"] = col(e_y + 0.04), col(nose_y)
    smile = q("smile")
    c["mouth_iw"] = col(1 / (p("mouth_w") * (1 + 0.2 * smile)))
    c["mouth_y"] = col(nose_y + p("mouth_gap"))
    c["mouth_curve"] = col(p("mouth_curve") - 0.06 * smile)
    c["lip_up"], c["lip_low"] = col(p("lip_upper")), col(p("lip_lower"))
    c["gap"] = col(0.006 + 0.03 * smile * smile)
    c["glasses"] = q("glasses")
    c["ga"] = col(p("eye_size") * (1.6 + 0.4 * q("glasses_size")))
    c["light_x"], c["light_y"] = col(lx_light), col(-torch.sin(el))
    c["light_z"] = col(torch.cos(el) * torch.cos(az).abs())
    c["light"] = col(q("light"))
    c["occluder"] = q("occluder")
    c["occ_x"], c["occ_y"] = col((q("occ_x") * 2 - 1) * 0.6), col(0.05 + q("occ_y") * 0.8)
    c["occ_a"], c["occ_b"] = col(0.2 + 0.3 * q("occ_a")), col(0.15 + 0.2 * q("occ_b"))
    c["gain"] = torch.exp(q("log_gain"))[:, None, None, None]
    return c


def _render_chunk(c: dict, maps: torch.Tensor, grid: tuple, soft: float) -> torch.Tensor:
    """Float render (n, C, H, W) of one chunk, before sensor noise and clipping: background and
    body, then the head (hair, ears, face, skin detail, beard), eyes and brows, nose and mouth,
    glasses, light and occluder, each layer painted over the last."""
    gx, gy = grid
    img, f = _paint_background(c, gx, gy, soft)
    img = _paint_head(img, c, f, maps, soft)
    img = _paint_eyes(img, c, f, soft)
    img = _paint_nose_mouth(img, c, f, soft)
    img = _paint_finish(img, c, f, gx, gy, soft)
    return img * c["gain"]


def _paint_background(c: dict, gx, gy, soft: float) -> tuple[torch.Tensor, dict]:
    """Background, clothes and neck; returns the image and the head-frame geometry ``f`` (x, y
    in the head frame, u, v on the turned sphere, zz, on_head, body, neck) the layers share."""
    # Background: tone + linear gradient + one soft blob of clutter.
    bx, by = gx - c["blob_x"], gy - c["blob_y"]
    blob = torch.exp(-(bx * bx + by * by) * c["blob_ir2"])
    img = c["c_bg"] + (gx * c["bg_gx"] + gy * c["bg_gy"] + blob * c["blob_tone"])[:, None]

    # Inverse similarity warp, image -> head frame (roll, scale, shift).
    ox, oy = gx - c["sx"], gy - c["sy"]
    x = c["cr"] * ox + c["sr"] * oy
    y = c["cr"] * oy - c["sr"] * ox

    # Spherical head of radius 1: a visible surface point (x, y, z) rotated by yaw and pitch
    # lands at (u, v) in the head frame; features drawn in (u, v) shift and foreshorten.
    zz = (1.0 - x * x - y * y).clamp_(min=0).sqrt_()
    u = x * c["cyaw"] + zz * c["syaw"]
    v = y * c["cpitch"] + zz * c["spitch"]
    on_head = (zz > 0).float()

    # Clothes and neck (the neck turns a little with the head).
    body = _ramp(
        (1 - ((x * (1 / 1.05)) ** 2 + ((y - 1.75) * (1 / 0.75)) ** 2).sqrt_()) * 0.75, soft
    )
    img = _over(img, c["c_cloth"], body)
    neck = _ramp(c["neck_w"] - (x - c["neck_dx"]).abs_(), soft) * _ramp(y - 0.3, soft)
    img = _over(img, c["c_neck"], neck)

    return img, {
        "x": x,
        "y": y,
        "u": u,
        "v": v,
        "zz": zz,
        "on_head": on_head,
        "body": body,
        "neck": neck,
    }


def _paint_head(img, c: dict, f: dict, maps: torch.Tensor, soft: float) -> torch.Tensor:
    """Back hair, ears, the face with its skin detail map, beard and front hair; adds cap,
    face and au (|u|) to ``f``."""
    x, y, u, v, on_head = f["x"], f["y"], f["u"], f["v"], f["on_head"]
    cy = _FACE_CY
    # Back hair: a rounded cap around the head, down the sides as far as hair_length says.
    cap = _ellipse(x, y, 0.0, c["cap_cy"], c["cap_a"], c["cap_b"], soft)
    cap = cap * _ramp(c["cap_bottom"] - y, soft)
    img = _over(img, c["c_hair"], cap)

    # Ears on the turning surface (|u| mirrors both sides); long hair covers them.
    ear = _ellipse(
        u.abs(), v, c["fw"] + c["ear_a"] * 0.3, c["ear_y"], c["ear_a"], c["ear_a"] * 2.2, soft
    )
    img = _over(img, c["c_ear"], ear * on_head * (1 - cap * c["long_hair"]))

    # Face: superellipse whose half-width narrows from the cheekbones to the jaw.
    fy = (v - cy) * c["ifh"]
    taper = ((fy - 0.15) * (1 / 0.85)).clamp_(0, 1)
    half_w = c["fw"] * (1 - taper**1.5 * c["jaw_in"])
    afy = fy.abs()
    rr = ((u.abs() / half_w) ** c["sq"] + afy * afy).clamp_(min=1e-6) ** c["isq"]
    face = _ramp((1 - rr) * c["face_soft"], soft) * on_head

    # Skin with the identity's detail map (texture and marks), warped by (u, v).
    grid = torch.stack([u * (1 / _MAP_HALF[1]), (v - cy) * (1 / _MAP_HALF[0])], -1)
    detail = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    img = img + (c["c_skin"] * detail - img) * face[:, None]

    # Beard (a quarter of identities), stubble tone between hair and skin.
    if bool((c["beard"] > 0).any()):
        beard = face * _ramp(v - c["beard_y"], 0.04) * c["beard"]
        img = _over(img, c["c_beard"], beard)

    # Front hair: inside the cap or face, above a hairline that dips at the temples.
    au = u.abs()
    temple = (au / c["fw"]).clamp_(max=1.2) ** 4 * c["temple"]
    fringe = _ramp(c["hairline"] + c["part"] * u + temple - v, 0.03) * cap.maximum(face)
    img = _over(img, c["c_hair"], fringe * on_head)

    f.update(cap=cap, face=face, au=au)
    return img


def _paint_eyes(img, c: dict, f: dict, soft: float) -> torch.Tensor:
    """Eyelids, eyes (sclera, iris, pupil, gaze) and brows."""
    u, v, face, au = f["u"], f["v"], f["face"], f["au"]
    # Eyes and brows, both sides at once in mirrored coordinates (|u|): the model is symmetric
    # except for gaze, which follows the image direction.
    ea, eb = c["ea"], c["eb"]
    lx = au - c["espace"]
    ly = (v - c["ey"]) + lx * c["etilt"]
    lid = _ellipse(lx, ly + 0.004, 0.0, 0.0, ea * 1.08, eb * 1.15 + 0.012, soft)
    img = _over(img, c["c_lid"], lid * face)
    eye = _ellipse(lx, ly, 0.0, 0.0, ea, eb + 1e-3, soft) * face
    img = _over(img, c["c_sclera"], eye)
    gz = lx - torch.sign(u) * c["gaze"]
    ir = (gz * gz + ly * ly).sqrt_()
    img = _over(img, c["c_iris"], _ramp(ea * 0.5 - ir, soft) * eye)
    img = _over(img, c["c_pupil"], _ramp(ea * 0.22 - ir, soft) * eye)
    bx = au - c["espace"] * 1.05
    t = bx / c["brow_len"]
    by = c["brow_y"] - c["brow_arch"] * (1 - t * t) + c["brow_tilt"] * bx
    thick = c["brow_thick"] * (1 - 0.225 * (t + 1))
    brow = _ramp(thick - (v - by).abs_(), soft) * _ramp(1 - t.abs(), 0.15) * face
    img = _over(img, c["c_brow"], brow)

    return img


def _paint_nose_mouth(img, c: dict, f: dict, soft: float) -> torch.Tensor:
    """Nose (ridge shadow, tip, nostrils) and mouth (lips, gap)."""
    u, v, face = f["u"], f["v"], f["face"]
    # Nose: extra parallax (it sticks out), a side shadow away from the light, tip, nostrils.
    nu, nv, nw = u + c["nose_dx"], v + c["nose_dy"], c["nw"]
    rx = (nu - c["ridge_x"]) / (nw * 0.45)
    ridge = (1 - rx * rx).clamp_(min=0)
    ridge = ridge * _ramp(nv - c["nose_top"], 0.05) * _ramp(c["nose_y"] - nv, 0.03)
    tip = _ellipse(nu, nv, 0.0, c["nose_y"] - 0.005, nw * 1.1, nw * 0.45, 0.03)
    img = img * (1 - (c["ridge_dark"] * ridge + 0.12 * tip) * face)[:, None]
    nost = _ellipse(nu.abs(), nv, nw * 0.55, c["nose_y"], nw * 0.38, nw * 0.2, soft)
    img = _over(img, c["c_nostril"], nost * face)

    # Mouth: a lip band around a curved mouth line; a smile lifts the corners, parts the lips.
    mu = u * c["mouth_iw"]
    mu2 = mu * mu
    env = (1 - mu2).clamp_(min=0)
    dy = v - (c["mouth_y"] + c["mouth_curve"] * mu2)
    inside = _ramp(1 - mu.abs(), 0.1) * face
    band = torch.minimum(dy + c["lip_up"] * env, c["lip_low"] * env.sqrt() - dy)
    img = _over(img, c["c_lip"], _ramp(band, soft) * inside)
    img = _over(img, c["c_gap"], _ramp(c["gap"] * env - dy.abs(), soft) * inside)

    return img


def _paint_finish(img, c: dict, f: dict, gx, gy, soft: float) -> torch.Tensor:
    """Glasses, Lambert light over head, hair, neck and clothes, and the occluder."""
    x, y, v, zz, on_head, au = f["x"], f["y"], f["v"], f["zz"], f["on_head"], f["au"]
    cap, face, neck, body = f["cap"], f["face"], f["neck"], f["body"]
    # Glasses (only the images that wear them): two rings around the eyes and a bridge.
    wear = torch.nonzero(c["glasses"] > 0.5).flatten()
    if len(wear):
        gu, gv, ge, ga = au[wear], v[wear], c["ey"][wear], c["ga"][wear]
        gb, gsp = ga * 0.75, c["espace"][wear]
        r = (((gu - gsp) / ga) ** 2 + ((gv - ge) / gb) ** 2).sqrt_()
        rim = _ramp(0.014 - ((r - 1) * gb).abs_(), soft)
        bridge = _ramp(0.014 - (gv - ge + 0.02).abs_(), soft) * _ramp(gsp - ga - gu + 0.01, soft)
        img[wear] = _over(img[wear], c["c_frame"][wear], rim.maximum(bridge) * on_head[wear])

    # Light: Lambert on the sphere normal, over head, hair, neck and clothes.
    fg = cap.maximum(face).maximum(neck).maximum(body)
    ndotl = (x * c["light_x"] + y * c["light_y"] + zz * c["light_z"]).clamp_(min=0)
    img = img * (1 + c["light"] * (1.25 * ndotl - 1) * fg)[:, None]

    # Occluder (only the images that have one): a soft blob of some tone over the face.
    hide = torch.nonzero(c["occluder"] > 0.5).flatten()
    if len(hide):
        occ_m = _ellipse(
            gx, gy, c["occ_x"][hide], c["occ_y"][hide], c["occ_a"][hide], c["occ_b"][hide], soft
        )
        img[hide] = _over(img[hide], c["c_occ"][hide], occ_m)

    return img


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


def identity_indices(split: str, num_identities: int, fold: int = 0) -> torch.Tensor:
    """Global identity indices of a split: train ``0..n-1``; test fold f from ``TEST_BASE``.

    Args:
        split: "train" or "test".
        num_identities: n >= 1 (train: < TEST_BASE; test: < TEST_BLOCK).
        fold: test block number (ignored for train), 0 <= fold < 256.

    Returns:
        int64 (n,).
    """
    if split not in ("train", "test"):
        raise ConfigError(f"synth split must be 'train' or 'test', got {split!r}")
    if isinstance(num_identities, bool) or not isinstance(num_identities, int):
        raise ConfigError(f"num_identities must be an int >= 1, got {num_identities!r}")
    limit = TEST_BASE if split == "train" else TEST_BLOCK
    if not 1 <= num_identities < limit:
        raise ConfigError(f"num_identities must be in 1..{limit - 1}, got {num_identities}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < 256:
        raise ConfigError(f"synth fold must be an int in 0..255, got {fold!r}")
    base = 0 if split == "train" else TEST_BASE + fold * TEST_BLOCK
    return base + torch.arange(num_identities, dtype=torch.int64)


def _check_size(size, what: str) -> tuple[int, int]:
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
    size = _check_size(size, "size")
    render_size = size if render_size is None else _check_size(render_size, "render_size")
    sample_seed = seed if sample_seed is None else _check_seed(sample_seed)
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
    """Render a train split or a test fold; ``None`` arguments come from ``PRESETS[preset]``.

    Splits up to :data:`CACHE_MAX_BYTES` are rendered once and then read from the decoded-image
    cache (``$LOWRES_CACHE/decoded``; the cpu preset's 16,000 training faces are 43 MB and take
    about half a minute to render); ``cache=False`` always renders.

    Train and test identities are disjoint by construction (``identity_indices``), and test
    folds are disjoint from each other. The test split of the cpu preset (300 identities x 5
    images) gives 3,000 genuine and 1,121,250 impostor all-vs-all pairs.

    Returns:
        SynthSplit with identity-major images.
    """
    pre, k, m = _split_counts(split, preset)
    knobs = preset_knobs(preset, knobs)
    seed = _check_seed(seed)
    k = num_identities or k
    m = images_per_identity or m
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= _MAX_IMAGES_PER_IDENTITY:
        raise ConfigError(
            f"images_per_identity must be an int in 1..{_MAX_IMAGES_PER_IDENTITY}, got {m!r}"
        )
    channels = channels or pre.channels
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels!r}")
    size = _check_size(size or pre.size, "size")
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
        here = Path(__file__)
        sources = [here, Path(rng.__file__)]  # the generator and its counter hash
        images = cached_images(sources, render, tag=tag, base=here.parent)
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
    pre = PRESETS[_check_preset(preset)]
    if split not in ("train", "test"):
        raise ConfigError(f"synth split must be 'train' or 'test', got {split!r}")
    if split == "train":
        return pre, pre.train_identities, pre.train_images
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
    _check_preset(preset)
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


def down_up(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Downsample by ``scale`` of the side (area) and upsample back (bicubic), as the sweep does.

    Args:
        images: uint8 or float (B, C, H, W); float images are taken as 0..255 if uint8 input.
        scale: 0 < s <= 1; target (round(H*s), round(W*s)), each >= 1.

    Returns:
        Same dtype and shape as ``images``.
    """
    if not 0 < scale <= 1:
        raise ConfigError(f"scale must satisfy 0 < s <= 1, got {scale!r}")
    h, w = images.shape[-2:]
    small = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = images.float()
    if small != (h, w):
        x = F.interpolate(x, size=small, mode="area")
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
    if images.dtype == torch.uint8:
        return x.clamp_(0, 255).round_().to(torch.uint8)
    return x.to(images.dtype)


def _grid(images: torch.Tensor, rows: int, cols: int, gap: int = 2) -> torch.Tensor:
    """(rows*cols, C, H, W) uint8 -> (C, rows*(H+gap)-gap, cols*(W+gap)-gap), white gaps."""
    _, c, h, w = images.shape
    out = torch.full((c, rows * (h + gap) - gap, cols * (w + gap) - gap), 255, dtype=torch.uint8)
    for k in range(rows * cols):
        r, q = divmod(k, cols)
        out[:, r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = images[k]
    return out


def _sheet_images(
    identity_index: torch.Tensor,
    sample_index: torch.Tensor,
    seed: int,
    knobs: SynthKnobs,
    preset: str | None,
    size: tuple[int, int] | None,
    channels: int | None,
) -> torch.Tensor:
    pre = PRESETS[_check_preset(preset)]
    knobs = preset_knobs(preset, knobs)
    size = pre.size if size is None else _check_size(size, "size")
    render_size = pre.render_size if size == pre.size else size
    return render_faces(
        identity_index,
        sample_index,
        seed=seed,
        knobs=knobs,
        size=size,
        render_size=render_size,
        channels=channels or pre.channels,
    )


def parse_preset(preset: str | None) -> tuple[str, dict[str, float | int]]:
    """A preset name with optional generator-knob overrides -> (name, overrides).

    ``"cpu"`` -> ``("cpu", {})``; ``"cpu:texture_cycles=4,family_spread=0.4"`` ->
    ``("cpu", {"texture_cycles": 4.0, "family_spread": 0.4})``. The whole string is what
    training and sweeps record and hash, so every knob setting caches its own models and cells.

    Raises:
        ConfigError: unknown preset or knob, or a value that is not a number.
    """
    text = "cpu" if preset is None else str(preset).strip()
    name, _, rest = text.partition(":")
    name = name.strip()
    if name not in PRESETS:
        raise ConfigError(f"unknown synth preset {name!r}; valid: {sorted(PRESETS)}")
    known = {f.name: f for f in fields(SynthKnobs)}
    overrides: dict[str, float | int] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = (x.strip() for x in part.partition("="))
        if not eq or key not in known:
            raise ConfigError(
                f"synth preset {text!r}: {part!r} is not KNOB=NUMBER with a knob from "
                f"{sorted(known)}, e.g. 'cpu:texture_cycles=4'"
            )
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(
                f"synth preset {text!r}: {key}={value!r} is not a number, e.g. {key}=4"
            ) from None
        if isinstance(known[key].default, int) and not isinstance(known[key].default, bool):
            if number != int(number):
                raise ConfigError(f"synth preset {text!r}: {key} must be an integer")
            number = int(number)
        if key in overrides:
            raise ConfigError(f"synth preset {text!r} sets {key} twice; keep one")
        overrides[key] = number
    DEFAULT_KNOBS.with_(**overrides)  # value ranges checked here, once
    return name, overrides


def preset_knobs(preset: str | None, knobs: SynthKnobs = DEFAULT_KNOBS) -> SynthKnobs:
    """``knobs`` with the overrides written in ``preset`` (see :func:`parse_preset`)."""
    return knobs.with_(**parse_preset(preset)[1])


def _check_preset(preset: str | None) -> str:
    """The preset's size name (``"cpu"`` of ``"cpu:texture_cycles=4"``), validated."""
    return parse_preset(preset)[0]


def identity_sheet(
    num_identities: int = 8,
    num_samples: int = 8,
    *,
    split: str = "test",
    fold: int = 0,
    seed: int = 0,
    knobs: SynthKnobs = DEFAULT_KNOBS,
    preset: str | None = None,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> torch.Tensor:
    """Contact sheet: rows = identities (consecutive indices, so each family of
    ``knobs.family_size`` look-alikes sits together), columns = images under random nuisance.

    Size and channels default to the preset's ("cpu": 56x48 grey, "gpu": 112x96 RGB).

    Returns:
        uint8 (C, H', W'), 2-pixel white gaps between cells.
    """
    if num_identities < 1 or num_samples < 1:
        raise ConfigError("identity_sheet needs num_identities >= 1 and num_samples >= 1")
    ids = identity_indices(split, num_identities, fold).repeat_interleave(num_samples)
    samples = torch.arange(num_samples).repeat(num_identities)
    imgs = _sheet_images(ids, samples, seed, knobs, preset, size, channels)
    return _grid(imgs, num_identities, num_samples)


def scale_sheet(
    identity: int = 0,
    scales: tuple[float, ...] = SWEEP_SCALES,
    num_samples: int = 4,
    *,
    split: str = "test",
    fold: int = 0,
    seed: int = 0,
    knobs: SynthKnobs = DEFAULT_KNOBS,
    preset: str | None = None,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> torch.Tensor:
    """One identity at the sweep's scales: rows = images of the identity, columns = scales
    1, 1/2, 1/4, 1/8, 1/16 (area downsample to round(side * s), bicubic upsample back).

    Returns:
        uint8 (C, H', W'), 2-pixel white gaps between cells.
    """
    if num_samples < 1 or not scales or identity < 0:
        raise ConfigError("scale_sheet needs identity >= 0, num_samples >= 1 and a scale")
    ids = identity_indices(split, identity + 1, fold)[-1:].repeat(num_samples)
    imgs = _sheet_images(ids, torch.arange(num_samples), seed, knobs, preset, size, channels)
    cols = torch.stack([down_up(imgs, float(s)) for s in scales], 1).flatten(0, 1)
    return _grid(cols, num_samples, len(scales))


def _write_png(sheet: torch.Tensor, path: Path) -> Path:
    """Write a uint8 (C, H, W) sheet as a PNG atomically (temporary file + os.replace)."""
    import io

    from PIL import Image

    if not path.parent.is_dir():
        raise DataError(f"folder {path.parent} for the sheet does not exist; create it first")
    arr = sheet.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG")
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        raise DataError(f"cannot write sheet {path}: {exc}; choose a writable path") from None
    return path


def scales_sheet_path(path: str | Path) -> Path:
    """Where the scale sheet goes next to an identity sheet: ``<stem>_scales.png``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_scales.png")


def write_scale_sheet(
    path: str | Path,
    *,
    identity: int = 0,
    num_samples: int = 4,
    seed: int = 0,
    fold: int = 0,
    preset: str | None = None,
    knobs: SynthKnobs = DEFAULT_KNOBS,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> Path:
    """Write ``scale_sheet`` of test identity ``identity`` to ``scales_sheet_path(path)``.

    ``path`` is the identity (contact) sheet's path; ``lowres data show synth --sheet PATH``
    calls this so both sheets sit side by side. Returns the written path.
    """
    sheet = scale_sheet(
        identity,
        num_samples=num_samples,
        fold=fold,
        seed=seed,
        knobs=knobs,
        preset=preset,
        size=size,
        channels=channels,
    )
    return _write_png(sheet, scales_sheet_path(path))


def write_sheets(
    path: str | Path,
    *,
    seed: int = 0,
    fold: int = 0,
    preset: str | None = None,
    knobs: SynthKnobs = DEFAULT_KNOBS,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> tuple[Path, Path]:
    """Write ``identity_sheet`` (8 identities x 8 images) to ``path`` and the scale sheet to
    ``<stem>_scales.png`` beside it. Returns both paths."""
    common = dict(seed=seed, fold=fold, preset=preset, knobs=knobs, size=size, channels=channels)
    first = _write_png(identity_sheet(**common), Path(path))
    return first, write_scale_sheet(path, **common)
