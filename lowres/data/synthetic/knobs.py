"""The generator's knobs (difficulty, families, texture, nuisance ranges), the split-size presets
and the preset grammar (``cpu``, ``gpu``, ``cpu:knob=value,...``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from lowres.errors import ConfigError

TEST_BASE = 1 << 40
"""First global identity index of the test blocks (train indices stay below it)."""
TEST_BLOCK = 1 << 32
"""Index stride between test folds: fold f owns ``TEST_BASE + f * TEST_BLOCK + [0, 2^32)``."""
MAX_TEST_FOLDS = 256
"""Test folds 0..255: together they own ``[TEST_BASE, TEST_BASE + 256 * TEST_BLOCK)``."""
DISTRACTOR_BASE = TEST_BASE + MAX_TEST_FOLDS * TEST_BLOCK
"""First global identity index of the distractor split (``2^41``): above every test fold and
every training index, so distractors are people no model trained on and no gallery holds (and,
the base being a multiple of any family size up to 2^41, no sibling of either)."""
MAX_IMAGES_PER_IDENTITY = 1 << 16
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
    distractor_identities: int = 1000
    """Identities of the ``distractor`` split (one image each): the non-mated gallery entries
    of ``lowres sweep --distractors synth``."""


CACHE_MAX_BYTES = 16 << 30
"""Largest rendered split (uint8 bytes) kept in the disk cache: the gpu preset's 12.9 GB
training split included, so it is rendered once per preset (by the sweep, before its training
workers start) and then memory-mapped by every model and worker (see
:func:`lowres.data.images.cached_images`) instead of rendered again for each model."""

PRESETS: dict[str, SynthPreset] = {
    # ~16k grey 56x48 training images: a small CPU net sees an epoch in ~20-30 s on 2 cores.
    # 300 x 5 test images -> 3,000 genuine and 1.12M impostor all-vs-all pairs (TAR@1e-3 ok).
    "cpu": SynthPreset(2000, 8, 300, 5, (56, 48), (112, 96), 1),
    # 400k colour 112x96 training images; 1,000 x 6 test images -> 15,000 genuine and ~18M
    # impostor pairs: TAR@1e-4 well supported, and under the sweep's MAX_PAIRS (it stores every
    # pair score of every cell), so `lowres sweep --preset gpu` runs.
    "gpu": SynthPreset(20000, 20, 1000, 6, (112, 96), (112, 96), 3, 10000),
}


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


def check_preset(preset: str | None) -> str:
    """The preset's size name (``"cpu"`` of ``"cpu:texture_cycles=4"``), validated."""
    return parse_preset(preset)[0]
