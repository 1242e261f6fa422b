"""The ``matlab`` down kernel against an independent float64 transcription of MATLAB imresize.

The reference below is written from imresize.m (``contributions``, ``cubic``,
``resizeAlongDim``) without using anything from lowres: if both transcriptions agree, they agree
with MATLAB up to a shared misreading of imresize.m, which the ramp numbers (MATLAB's own output)
guard against.
"""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from lowres.degrade import (
    DEFAULT,
    DegradeSpec,
    degrade,
    degrade_reference,
    matlab_resize,
    parse_degrade,
    resample,
    target_size,
)
from lowres.errors import ConfigError

GRAY_TOL = 1e-3  # gray levels on a 0..255 scale


def mat_cubic(x):
    # imresize.m's cubic (Keys, a = -0.5)
    absx = np.abs(x)
    absx2 = absx**2
    absx3 = absx**3
    return (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1) + (
        -0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2
    ) * ((1 < absx) & (absx <= 2))


def mat_contributions(in_length, out_length, scale, kernel_width=4.0, antialiasing=True):
    """imresize.m's contributions: 1-based indices, rows = output pixels."""
    if scale < 1 and antialiasing:

        def h(x):
            return scale * mat_cubic(scale * x)

        kernel_width = kernel_width / scale
    else:
        h = mat_cubic
    x = np.arange(1, out_length + 1, dtype=np.float64).reshape(-1, 1)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    p = int(np.ceil(kernel_width)) + 2
    indices = left + np.arange(p).reshape(1, -1)  # bsxfun(@plus, left, 0:P-1)
    weights = h(u - indices)
    weights = weights / np.sum(weights, axis=1, keepdims=True)
    aux = np.concatenate([np.arange(1, in_length + 1), np.arange(in_length, 0, -1)])
    indices = aux[np.mod(indices.astype(int) - 1, len(aux))]  # aux(mod(indices-1, end)+1)
    kill = ~np.any(weights, axis=0)
    return weights[:, ~kill], indices[:, ~kill]


def mat_resize_along_dim(a, dim, weights, indices):
    out_len = weights.shape[0]
    a = np.moveaxis(a, dim, 0)
    out = np.zeros((out_len, *a.shape[1:]))
    for k in range(out_len):
        for j in range(weights.shape[1]):
            out[k] += weights[k, j] * a[indices[k, j] - 1]
    return np.moveaxis(out, 0, dim)


def mat_imresize(a, out_size):
    """imresize(A, [rows cols]) for double A, method 'bicubic', antialiasing on."""
    scale = [out_size[0] / a.shape[0], out_size[1] / a.shape[1]]
    order = np.argsort(scale, kind="stable")  # the dimension with the smaller scale first
    out = np.asarray(a, dtype=np.float64)
    for dim in order:
        w, idx = mat_contributions(a.shape[dim], out_size[dim], scale[dim])
        out = mat_resize_along_dim(out, dim, w, idx)
    return out


def face_like() -> np.ndarray:
    """112x96 grey image on 0..255: smooth noise plus hard edges (a face box and an ellipse)."""
    rng = np.random.default_rng(7)
    img = gaussian_filter(rng.random((112, 96)), 3.0)
    img = (img - img.min()) / (img.max() - img.min()) * 120 + 40
    yy, xx = np.mgrid[:112, :96]
    img[((yy - 50) / 30.0) ** 2 + ((xx - 48) / 22.0) ** 2 <= 1] += 70
    img[70:80, 30:66] -= 60  # a mouth-like dark bar
    img[:, :6] = 250.0  # a bright frame edge on the left border
    img[-5:, :] = 5.0  # a dark bottom border
    return np.clip(img, 0, 255)


def _lowres(image: np.ndarray, size, kind: str, dtype=torch.float32) -> np.ndarray:
    x = torch.from_numpy(image / 255.0).to(dtype)[None, None]
    return resample(x, size, kind)[0, 0].double().numpy() * 255.0


def test_matlab_equals_transcription_at_every_width():
    image = face_like()
    worst = {}
    for width in range(48, 1, -1):
        size = target_size(*image.shape, size_px=width)
        ref = mat_imresize(image, size)
        for dtype in (torch.float32, torch.float64):
            got = _lowres(image, size, "matlab", dtype)
            worst[width, dtype] = float(np.abs(got - ref).max())
        assert worst[width, torch.float32] <= GRAY_TOL, (width, worst[width, torch.float32])
        assert worst[width, torch.float64] <= 1e-9, (width, worst[width, torch.float64])
        # The per-image reference used by degrade_reference's parity tests, too.
        assert np.abs(matlab_resize(image, size) - ref).max() <= 1e-9


def test_ramp_matches_matlab_and_pillow_numbers():
    ramp = np.linspace(0.0, 255.0, 96)[None, :]
    mat = mat_imresize(ramp, (1, 3))[0]
    np.testing.assert_allclose(mat, [38.3, 127.5, 216.7], atol=0.05)  # MATLAB's output
    np.testing.assert_allclose(_lowres(ramp, (1, 3), "matlab", torch.float64)[0], mat, atol=1e-9)
    pil = _lowres(ramp, (1, 3), "bicubic", torch.float64)[0]
    np.testing.assert_allclose(pil, [43.6, 127.5, 211.4], atol=0.05)  # Pillow / torch antialias


def interior_pixels(in_length: int, out_length: int) -> np.ndarray:
    """Output pixels whose nonzero taps all lie inside 1..in_length before mirroring."""
    scale = out_length / in_length
    kw = 4.0 / scale
    u = np.arange(1, out_length + 1) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kw / 2)
    taps = left[:, None] + np.arange(int(np.ceil(kw)) + 2)[None, :]
    nonzero = scale * mat_cubic(scale * (u[:, None] - taps)) != 0
    inside = (taps >= 1) & (taps <= in_length)
    return np.all(inside | ~nonzero, axis=1)


def test_matlab_equals_bicubic_away_from_the_border():
    image = face_like()
    checked = 0
    for width in (48, 40, 32, 24, 16, 12, 8):
        size = target_size(*image.shape, size_px=width)
        rows = interior_pixels(image.shape[0], size[0])
        cols = interior_pixels(image.shape[1], size[1])
        mat = _lowres(image, size, "matlab", torch.float64)
        bic = _lowres(image, size, "bicubic", torch.float64)
        inner = np.ix_(rows, cols)
        assert np.abs(mat[inner] - bic[inner]).max() <= GRAY_TOL, width
        checked += rows.sum() * cols.sum()
        # ...and the border is where they differ (the image has hard edges there).
        assert np.abs(mat - bic).max() > 0.1, width
    assert checked > 1000


def test_grammar_strings_and_hashes():
    for text in ("matlab>bicubic", "matlab+blur1>bicubic", "matlab+noise0.02+jpeg30>area"):
        spec = parse_degrade(text)
        assert spec.down == "matlab" and str(spec) == text and parse_degrade(str(spec)) == spec
    assert parse_degrade("matlab") == DegradeSpec(down="matlab")
    hashes = {parse_degrade(t).hash() for t in ("matlab>bicubic", "matlab+blur1>bicubic")}
    hashes |= {parse_degrade(t).hash() for t in ("bicubic>bicubic", "bicubic+blur1>bicubic")}
    assert len(hashes) == 4
    # Existing specs keep their strings and hashes (pinned from before the kernel was added).
    pinned = {
        "bicubic>bicubic": "f60f960c6790",
        "area>bilinear": "d949208f4666",
        "gauss+noise0.05>nearest": "26d5f4bcb0fd",
        "bilinear+blur1+noise0.02+jpeg30>bicubic": "970687833535",
        "area+kjpeg30>area": "3fae65f2b9e7",
    }
    for text, digest in pinned.items():
        assert str(parse_degrade(text)) == text and parse_degrade(text).hash() == digest
    assert DEFAULT.down == "bicubic"
    with pytest.raises(ConfigError, match="up-sampling kernel"):
        parse_degrade("bicubic>matlab")


def test_degrade_chain_with_matlab_matches_reference():
    image = face_like().astype(np.float32)[..., None] / 255.0
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    for spec in ("matlab>bicubic", "matlab+blur1>bilinear"):
        for target in (dict(size_px=7), dict(scale=0.3), dict(size_px=1)):
            got = degrade(batch, spec=spec, **target)[0].permute(1, 2, 0).numpy()
            ref = degrade_reference(image, spec=spec, **target)
            assert np.abs(got - ref).max() <= 1e-4, (spec, target)
    low = resample(batch, (14, 12), "matlab")
    assert math.isclose(float(low.mean()), float(batch.mean()), rel_tol=0.05)
