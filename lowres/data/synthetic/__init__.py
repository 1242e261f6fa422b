"""Procedural synthetic-identity faces: thousands of identities, offline, in seconds, on CPU.

Modules, in the order a face is made: :mod:`~lowres.data.synthetic.knobs` (knobs and presets),
:mod:`~lowres.data.synthetic.params` (counter-based randomness, identity and nuisance
parameters), :mod:`~lowres.data.synthetic.paint` (rendering), :mod:`~lowres.data.synthetic.split`
(splits, their disk cache, the ``synth`` dataset), :mod:`~lowres.data.synthetic.sheets`
(contact sheets).

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
disjoint by construction, and so are their families. The distractor split (one face of each of
the preset's ``distractor_identities``, for ``lowres sweep --distractors synth``) uses
``DISTRACTOR_BASE + (0 .. n-1)``, above every test fold: people no model trained on and no
gallery holds.

Example:
    >>> ids = sample_identities(4, seed=0)
    >>> nui = sample_nuisance(4, seed=0)
    >>> render(ids, nui, size=(112, 96), channels=1).shape
    torch.Size([4, 1, 112, 96])
"""

from lowres.data.synthetic.knobs import (
    DEFAULT_KNOBS,
    DISTRACTOR_BASE,
    PRESETS,
    TEST_BASE,
    TEST_BLOCK,
    SynthKnobs,
    SynthPreset,
    parse_preset,
    preset_knobs,
)
from lowres.data.synthetic.paint import render
from lowres.data.synthetic.params import (
    IdentityParams,
    NuisanceParams,
    image_keys,
    sample_identities,
    sample_nuisance,
)
from lowres.data.synthetic.sheets import (
    down_up,
    identity_sheet,
    scale_sheet,
    scales_sheet_path,
    write_scale_sheet,
    write_sheets,
)
from lowres.data.synthetic.split import (
    SPLITS,
    SynthSplit,
    identity_indices,
    is_cached_size,
    load_synth,
    make_split,
    render_faces,
    split_labels,
)

__all__ = [
    "DEFAULT_KNOBS",
    "DISTRACTOR_BASE",
    "PRESETS",
    "SPLITS",
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
    "is_cached_size",
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
    "split_labels",
    "write_scale_sheet",
    "write_sheets",
]
