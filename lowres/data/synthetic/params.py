"""Counter-based randomness and the parameters of a face: identity parameters (coarse
latents shared within a family, identity-specific fine detail) and per-image nuisance."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from lowres.data.synthetic.knobs import DEFAULT_KNOBS, MAX_IMAGES_PER_IDENTITY, SynthKnobs
from lowres.errors import ConfigError
from lowres.rng import M32, hash32

# --------------------------------------------------------------------------------------------
# Counter-based randomness (exact integer hashing: same numbers on every device and batch)
# --------------------------------------------------------------------------------------------

_STREAMS = {"family": 1, "identity": 2, "fine": 3, "nuisance": 4, "noise": 5}


def key_hash(seed: int, stream: str, keys: torch.Tensor) -> torch.Tensor:
    """Hash of (seed, stream, key) for int64 keys in [0, 2^63): int64 (n,) in [0, 2^32)."""
    s = hash32(torch.tensor([(seed & M32) ^ (_STREAMS[stream] << 24)], dtype=torch.int64))
    s = hash32(s ^ ((seed >> 32) & M32)).to(keys.device)
    h = hash32(s ^ (keys & M32))
    return hash32(h ^ ((keys >> 32) & M32))


def _uniform(seed: int, stream: str, keys: torch.Tensor, dims: int) -> torch.Tensor:
    """Uniform (0, 1) float32 (n, dims), a pure function of (seed, stream, key, dim)."""
    h = key_hash(seed, stream, keys)[:, None]
    d = torch.arange(dims, dtype=torch.int64, device=keys.device)[None, :]
    u = hash32(hash32(h ^ d) ^ 0x9E3779B9)
    return ((u >> 8).to(torch.float32) + 0.5) / float(1 << 24)


def _normal(seed: int, stream: str, keys: torch.Tensor, dims: int) -> torch.Tensor:
    return torch.special.ndtri(_uniform(seed, stream, keys, dims))


def check_seed(seed: int) -> int:
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
    seed = check_seed(seed)
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
    if sample_index.numel() and int(sample_index.max()) >= MAX_IMAGES_PER_IDENTITY:
        raise ConfigError(
            f"at most {MAX_IMAGES_PER_IDENTITY} images per identity are supported; "
            f"got sample index {int(sample_index.max())}"
        )
    # Global indices go up to ~2^41; the key must stay below 2^63.
    return (identity_index % (1 << 46)) * MAX_IMAGES_PER_IDENTITY + sample_index


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
    seed = check_seed(seed)
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
