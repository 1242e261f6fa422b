"""Low-resolution degradation chains: a small hashable spec, batched ops and a per-image reference.

The chain, applied in this fixed order to float images in [0, 1]::

    down-sample to the target size -> blur (sensor PSF) -> noise -> clamp -> JPEG -> up-sample
    back to the input size -> clamp

The low-resolution image is what a camera would store: the PSF blur (``blur_sigma``) is applied
AT THE LOW RESOLUTION and measured in low-resolution pixels, so ``blur1`` means the same optics
at 24 px as at 6 px; noise and JPEG are applied there too, and the clamp before JPEG keeps the
stored image a valid 8-bit-representable picture.

String form (one grammar, used by the CLI and by ``str(spec)``)::

    <down>[+blur<sigma>][+noise<std>][+jpeg<q>|+kjpeg<q>][><up>]

    "bicubic>bicubic"                          the DEFAULT chain
    "area>bilinear"                            INTER_AREA down, bilinear up
    "matlab+blur1>bicubic"                     MATLAB imresize down, then a PSF blur
    "bicubic+blur1+noise0.02+jpeg30>bicubic"   every extra, in the order they are applied

- down: ``area`` (exact pixel-area integration, equals OpenCV INTER_AREA for every factor),
  ``bilinear`` / ``bicubic`` (antialiased, equal to ``torch.nn.functional.interpolate(...,
  antialias=True)`` and to Pillow's resize), ``gauss`` (kornia's antialias: Gaussian with
  sigma = (factor - 1) / 2 per axis, kernel int(4 sigma) made odd, reflect-101 border, then
  plain bilinear), ``matlab`` (MATLAB ``imresize``'s default: antialiased bicubic with the
  same Keys a = -0.5 kernel widened by the factor, but a SYMMETRIC (mirror) border, where
  ``bicubic`` renormalises the kernel clipped at the border; the two differ only in output
  pixels whose kernel reaches an edge).
- ``blur<sigma>``: Gaussian PSF, sigma in low-resolution pixels, kernel 2*ceil(3 sigma)+1,
  reflect-101 border (OpenCV's default).
- ``noise<std>``: additive Gaussian noise, std in [0, 1] intensity units.
- ``jpeg<q>``: a real JPEG round trip through libjpeg (OpenCV ``imencode``/``imdecode``, 8-bit,
  4:2:0), identical on every device; ``kjpeg<q>``: kornia's differentiable JPEG approximation,
  batched on the images' device (use it on GPU or for training). They are different codecs
  (mean abs difference ~0.03 at q=30 on 14x12 noise images), so they have different strings
  and hashes: a spec never changes meaning with the device it runs on.
- up (default ``bicubic``): ``bicubic`` (a=-0.75, OpenCV INTER_CUBIC), ``bilinear``
  (INTER_LINEAR), ``nearest`` (INTER_NEAREST, floor rule), ``area`` (box overlap, INTER_AREA).
- Extras must appear at most once and in the order above (the order they are applied in).
  Numbers are printed in Python's shortest round-trip form without a trailing ``.0``, so
  ``parse_degrade(str(spec)) == spec`` for every spec.

DEFAULT is ``bicubic>bicubic``: antialiased bicubic down-sampling (Keys a = -0.5, kernel widened
by the factor), the convention of the face super-resolution and low-resolution recognition
literature; bicubic up-sampling is what a model trained at full resolution is normally fed. No
blur, noise or JPEG: extras are explicit. Which kernel equals which tool: ``bicubic`` = Pillow's
``resize(BICUBIC)`` = torch ``interpolate(antialias=True)`` (the kernel clipped at the border
and renormalised); ``matlab`` = MATLAB ``imresize(A, [h w])`` (``contributions``: symmetric
border, taps mirrored back into the image); ``area`` = OpenCV ``INTER_AREA``. ``bicubic`` and
``matlab`` agree to float rounding wherever the widened kernel stays inside the image, and
differ in the border pixels (README gives the measured size of the difference).

Why every resampling is a pair of small matrices (``out = M_h @ x @ M_w.T``): each kernel is
separable and linear, so its 1-D weights are built once per (kernel, size) and cached, and the
batch is resampled by two matmuls, on any device, in float32. Measured on 2 CPU cores, batch
256x3x112x96 <-> 14x12 (ms per batch, min of 7; the matrices equal interpolate within 3e-7):

=====================================  ===========  ========
op                                     interpolate  matrices
=====================================  ===========  ========
bicubic antialias down                 9.5          1.6
bilinear antialias down                5.4          1.6
area down (torch "area")               2.7          1.7
kornia resize(antialias=True) (gauss)  544          1.7
bicubic up                             42.9         1.5
bilinear / nearest up                  ~15          1.4
=====================================  ===========  ========

JPEG at the low resolution (256x3x14x12, q=30): OpenCV per image 10.0 ms, kornia batched 11.7 ms
on CPU. Noise is counter-based (a 32-bit integer hash of seed, image index and pixel index, then
Box-Muller), so an image gets the same noise whatever batch it is in and on every device.

OpenCV and kornia are imported where a chain needs them (JPEG, the per-image reference): they
add 0.2 s and 0.4 s to start-up on the project's 2-core machine, and most chains use neither.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lowres.errors import ConfigError
from lowres.rng import M32, hash32

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = [
    "DEFAULT",
    "DOWN_KERNELS",
    "JPEG_CODECS",
    "UP_KERNELS",
    "DegradeSpec",
    "degrade",
    "degrade_reference",
    "gaussian_noise",
    "graded_scales",
    "matlab_contributions",
    "matlab_resize",
    "parse_degrade",
    "resample",
    "target_size",
]

DOWN_KERNELS = ("area", "bilinear", "bicubic", "gauss", "matlab")
UP_KERNELS = ("bicubic", "bilinear", "nearest", "area")
JPEG_CODECS = ("opencv", "kornia")
# Bump when any op changes its output, so old provenance hashes stop matching new pixels.
_HASH_VERSION = "lowres.degrade/v1"


def _fmt(x: float) -> str:
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def _check_number(name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number, got {value!r}; pass a float")
    value = float(value)
    if not (low <= value <= high):  # also rejects NaN
        raise ConfigError(f"{name} must be in [{_fmt(low)}, {_fmt(high)}], got {value!r}")
    return value


@dataclass(frozen=True)
class DegradeSpec:
    """One degradation chain (see the module docstring for the order and the string form).

    Attributes:
        down: down-sampling kernel, one of ``DOWN_KERNELS``.
        blur_sigma: Gaussian PSF sigma in low-resolution pixels; 0 disables it.
        noise_std: std of additive Gaussian noise in [0, 1] intensity units; 0 disables it.
        jpeg_quality: JPEG quality 1..100, or None for no JPEG.
        up: up-sampling kernel back to the input size, one of ``UP_KERNELS``.
        jpeg_codec: ``"opencv"`` (libjpeg round trip) or ``"kornia"`` (differentiable).
    """

    down: str = "bicubic"
    blur_sigma: float = 0.0
    noise_std: float = 0.0
    jpeg_quality: int | None = None
    up: str = "bicubic"
    jpeg_codec: str = "opencv"

    def __post_init__(self) -> None:
        if self.down not in DOWN_KERNELS:
            raise ConfigError(
                f"unknown down-sampling kernel {self.down!r}; use one of {', '.join(DOWN_KERNELS)}"
            )
        if self.up not in UP_KERNELS:
            raise ConfigError(
                f"unknown up-sampling kernel {self.up!r}; use one of {', '.join(UP_KERNELS)}"
            )
        if self.jpeg_codec not in JPEG_CODECS:
            raise ConfigError(
                f"unknown JPEG codec {self.jpeg_codec!r}; use one of {', '.join(JPEG_CODECS)}"
            )
        # Stored as floats so that DegradeSpec(blur_sigma=1) and parse("...+blur1") are equal.
        object.__setattr__(self, "blur_sigma", _check_number("blur_sigma", self.blur_sigma, 0, 1e3))
        object.__setattr__(self, "noise_std", _check_number("noise_std", self.noise_std, 0, 1))
        q = self.jpeg_quality
        if q is None:
            if self.jpeg_codec != "opencv":
                raise ConfigError(
                    "jpeg_codec is set but jpeg_quality is None; give a quality 1..100"
                )
        elif isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 100:
            raise ConfigError(f"jpeg_quality must be an integer in 1..100 or None, got {q!r}")

    @property
    def has_extras(self) -> bool:
        """True when blur, noise or JPEG is part of the chain."""
        return self.blur_sigma > 0 or self.noise_std > 0 or self.jpeg_quality is not None

    def __str__(self) -> str:
        parts = [self.down]
        if self.blur_sigma > 0:
            parts.append(f"blur{_fmt(self.blur_sigma)}")
        if self.noise_std > 0:
            parts.append(f"noise{_fmt(self.noise_std)}")
        if self.jpeg_quality is not None:
            prefix = "kjpeg" if self.jpeg_codec == "kornia" else "jpeg"
            parts.append(f"{prefix}{self.jpeg_quality}")
        return "+".join(parts) + ">" + self.up

    def hash(self) -> str:
        """Stable 12-hex-digit digest of the canonical string and the implementation version."""
        return hashlib.sha256(f"{_HASH_VERSION}:{self}".encode()).hexdigest()[:12]


DEFAULT = DegradeSpec()

_EXTRA = re.compile(r"^(blur|noise|kjpeg|jpeg)(.+)$")
_EXTRA_ORDER = ("blur", "noise", "jpeg")
_FORM = (
    "<down>[+blur<sigma>][+noise<std>][+jpeg<q>|+kjpeg<q>][><up>], e.g. 'bicubic+noise0.02>bicubic'"
)


def parse_degrade(text: str | DegradeSpec) -> DegradeSpec:
    """Parse the CLI string form (module docstring) into a DegradeSpec.

    Args:
        text: e.g. ``"area>bicubic"`` or ``"bicubic+blur1+noise0.02+jpeg30>bicubic"``; a
            DegradeSpec is returned unchanged.

    Returns:
        The spec; ``parse_degrade(str(spec)) == spec``.

    Raises:
        ConfigError: unknown kernel, unknown or repeated extra, extras out of order, bad number.
    """
    if isinstance(text, DegradeSpec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"degradation must be a non-empty string of the form {_FORM}")
    body = text.strip().lower()
    if body.count(">") > 1:
        raise ConfigError(f"degradation {text!r} has more than one '>'; use {_FORM}")
    chain, _, up = body.partition(">")
    tokens = [t.strip() for t in chain.split("+")]
    fields: dict = {"down": tokens[0], "up": up.strip() or DEFAULT.up}
    last = -1
    for token in tokens[1:]:
        match = _EXTRA.match(token)
        if match is None:
            raise ConfigError(
                f"unknown degradation step {token!r} in {text!r}; steps are blur, noise, "
                f"jpeg and kjpeg, as in {_FORM}"
            )
        name, value = match.groups()
        position = _EXTRA_ORDER.index("jpeg" if name == "kjpeg" else name)
        if position <= last:
            raise ConfigError(
                f"step {token!r} in {text!r} is repeated or out of order; write blur, noise, "
                "jpeg at most once each, in that order (the order they are applied)"
            )
        last = position
        try:
            if name in ("jpeg", "kjpeg"):
                fields["jpeg_quality"] = int(value)
                fields["jpeg_codec"] = "kornia" if name == "kjpeg" else "opencv"
            else:
                fields["blur_sigma" if name == "blur" else "noise_std"] = float(value)
        except ValueError:
            raise ConfigError(
                f"bad number {value!r} in step {token!r}; e.g. blur1.5, jpeg30"
            ) from None
    return DegradeSpec(**fields)


def target_size(
    h: int, w: int, scale: float | None = None, size_px: int | None = None
) -> tuple[int, int]:
    """Low-resolution size for an (h, w) image.

    Args:
        h, w: input height and width in pixels.
        scale: fraction of the image side in (0, 1]; target is (round(h*s), round(w*s)), >= 1.
        size_px: face WIDTH in pixels, 1..w; the height keeps the aspect ratio. Give exactly
            one of ``scale`` and ``size_px``.

    Returns:
        (h', w').

    Raises:
        ConfigError: both or neither given, scale outside (0, 1] or NaN, size_px outside 1..w.
    """
    if (scale is None) == (size_px is None):
        raise ConfigError(
            "give exactly one of scale (fraction of the side) and size_px (face width)"
        )
    if size_px is not None:
        if isinstance(size_px, bool) or not isinstance(size_px, (int, np.integer)):
            raise ConfigError(f"size_px must be an integer number of pixels, got {size_px!r}")
        if not 1 <= size_px <= w:
            raise ConfigError(
                f"size_px={size_px} is outside 1..{w} (the image width); pick a smaller face size"
            )
        return max(1, round(h * int(size_px) / w)), int(size_px)
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)):
        raise ConfigError(f"scale must be a number in (0, 1], got {scale!r}")
    scale = float(scale)
    if not 0.0 < scale <= 1.0:  # also rejects NaN
        raise ConfigError(f"scale must be in (0, 1] (a fraction of the image side), got {scale!r}")
    return max(1, round(h * scale)), max(1, round(w * scale))


def graded_scales(stop: float = 1 / 16, num: int = 5, *, start: float = 1.0) -> list[float]:
    """Geometric ladder of scales from ``start`` down to ``stop``.

    Example:
        >>> graded_scales()
        [1.0, 0.5, 0.25, 0.125, 0.0625]

    Raises:
        ConfigError: not 0 < stop <= start <= 1, or num < 1 (num == 1 needs stop == start).
    """
    start = _check_number("start", start, 0, 1)
    stop = _check_number("stop", stop, 0, start)
    if stop == 0:
        raise ConfigError("stop must be > 0; give the smallest scale, e.g. 1/16")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ConfigError(f"num must be a positive integer, got {num!r}")
    if num == 1:
        if stop != start:
            raise ConfigError("num=1 gives only the start scale; use num >= 2 or stop == start")
        return [start]
    ratio = (stop / start) ** (1 / (num - 1))
    ladder = [start * ratio**i for i in range(num)]
    ladder[-1] = stop
    return ladder


# ---------------------------------------------------------------------------------------------
# 1-D resampling matrices (float64, CPU, cached) and the batched two-matmul resampler.


def _reflect101(i: int, n: int) -> int:
    # OpenCV BORDER_REFLECT_101, repeated for kernels wider than the image (tiny images).
    if n == 1:
        return 0
    period = 2 * n - 2
    i %= period
    return i if i < n else period - i


def _gauss_taps(sigma: float, ksize: int) -> np.ndarray:
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    taps = np.exp(-(x**2) / (2 * sigma**2))
    return taps / taps.sum()


def _blur_matrix(n: int, sigma: float, ksize: int) -> np.ndarray:
    m = np.zeros((n, n))
    taps, r = _gauss_taps(sigma, ksize), ksize // 2
    for i in range(n):
        for t, weight in enumerate(taps):
            m[i, _reflect101(i + t - r, n)] += weight
    return m


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    # Exact box overlap in rational arithmetic (no ties mis-rounded); equals INTER_AREA.
    m = np.zeros((n_out, n_in))
    step = Fraction(n_in, n_out)
    for i in range(n_out):
        lo, hi = i * step, (i + 1) * step
        for k in range(math.floor(lo), min(n_in, math.ceil(hi))):
            m[i, k] = float(min(hi, k + 1) - max(lo, k))
        m[i] /= m[i].sum()
    return m


def _interp_matrix(mode: str, n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    eye = torch.eye(n_in, dtype=torch.float64)[None, None]
    out = F.interpolate(
        eye, size=(n_out, n_in), mode=mode, align_corners=False, antialias=antialias
    )
    return out[0, 0].numpy()


def _kornia_gauss_ksize(factor: float) -> tuple[float, int]:
    sigma = max((factor - 1.0) / 2.0, 0.001)
    ksize = int(max(2.0 * 2 * sigma, 3))
    return sigma, ksize if ksize % 2 else ksize + 1


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """MATLAB's ``cubic``: Keys' cubic convolution kernel with a = -0.5, zero for |x| > 2."""
    ax = np.abs(x)
    near = (1.5 * ax - 2.5) * ax * ax + 1.0
    far = ((-0.5 * ax + 2.5) * ax - 4.0) * ax + 2.0
    return np.where(ax <= 1, near, np.where(ax <= 2, far, 0.0))


def matlab_contributions(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights and input indices of MATLAB ``imresize``'s cubic kernel along one axis.

    The steps of ``contributions`` in imresize.m, with ``scale = n_out / n_in`` (MATLAB called
    with the output size): when shrinking the kernel is widened to ``scale * cubic(scale * x)``
    over width ``4 / scale``; output pixel x (1-based) is centred at input coordinate
    ``u = x / scale + 0.5 * (1 - 1 / scale)``; it reads ``P = ceil(width) + 2`` pixels from
    ``floor(u - width / 2)``; each row of weights is normalised to sum 1 BEFORE the border;
    out-of-range indices are mirrored (symmetric padding: ``[1..n, n..1]`` repeated); tap
    columns whose weight is zero in every row are dropped.

    Args:
        n_in: input length (>= 1).
        n_out: output length (>= 1).

    Returns:
        ``(weights, indices)``, float64 and int64 of shape (n_out, taps); indices are 0-based.

    Raises:
        ConfigError: a length below 1.
    """
    if n_in < 1 or n_out < 1:
        raise ConfigError(f"resampling lengths must be >= 1, got {n_in} -> {n_out}")
    scale = n_out / n_in
    width = 4.0 / scale if scale < 1 else 4.0
    u = np.arange(1, n_out + 1, dtype=np.float64) / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = left[:, None] + np.arange(math.ceil(width) + 2, dtype=np.float64)
    distance = u[:, None] - taps
    if scale < 1:
        weights = scale * _keys_cubic(scale * distance)
    else:
        weights = _keys_cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
    indices = mirror[(taps.astype(np.int64) - 1) % (2 * n_in)]
    used = np.any(weights != 0, axis=0)
    return weights[:, used], indices[:, used]


def _matlab_matrix(n_in: int, n_out: int) -> np.ndarray:
    weights, indices = matlab_contributions(n_in, n_out)
    m = np.zeros((n_out, n_in))
    # mirrored taps can land on one pixel twice (tiny images): accumulate, never overwrite
    np.add.at(m, (np.arange(n_out)[:, None], indices), weights)
    return m


def matlab_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Per-image MATLAB ``imresize(image, size)`` (bicubic, antialiased) in float64.

    The gather form of imresize.m's ``resizeAlongDim`` (``out(k) = sum_j w(k, j) *
    in(idx(k, j))``), one axis at a time, the axis with the smaller scale first as MATLAB
    orders them. The batched path uses the same weights as matrices; this is its reference.

    Args:
        image: (H, W) or (H, W, C) array.
        size: (h, w) output size.

    Returns:
        (h, w[, C]) float64 array.
    """
    x = np.asarray(image, dtype=np.float64)
    scales = [size[0] / x.shape[0], size[1] / x.shape[1]]
    for axis in sorted((0, 1), key=lambda a: scales[a]):
        if size[axis] == x.shape[axis]:
            continue
        weights, indices = matlab_contributions(x.shape[axis], size[axis])
        shape = [1] * x.ndim
        shape[axis] = size[axis]
        x = sum(
            weights[:, j].reshape(shape) * np.take(x, indices[:, j], axis=axis)
            for j in range(weights.shape[1])
        )
    return x


@lru_cache(maxsize=256)
def _matrix64(kind: str, n_in: int, n_out: int, blur_sigma: float = 0.0) -> np.ndarray:
    """(n_out, n_in) float64 weights of a 1-D resampling ``kind``, then an optional PSF blur."""
    if n_in == n_out:
        m = np.eye(n_in)
    elif kind == "area":
        m = _area_matrix(n_in, n_out)
    elif kind == "nearest":
        m = np.zeros((n_out, n_in))
        m[np.arange(n_out), [min(i * n_in // n_out, n_in - 1) for i in range(n_out)]] = 1.0
    elif kind in ("bilinear", "bicubic"):
        m = _interp_matrix(kind, n_in, n_out, antialias=n_out < n_in)
    elif kind == "matlab":
        m = _matlab_matrix(n_in, n_out)
    elif kind == "gauss":
        m = _interp_matrix("bilinear", n_in, n_out, antialias=False)
        if n_out < n_in and n_in > 1:
            sigma, ksize = _kornia_gauss_ksize(n_in / n_out)
            m = m @ _blur_matrix(n_in, sigma, ksize)
    else:
        raise ConfigError(
            f"unknown resampling kernel {kind!r}; use one of {', '.join(DOWN_KERNELS)}"
        )
    if blur_sigma > 0:
        m = _blur_matrix(n_out, blur_sigma, 2 * math.ceil(3 * blur_sigma) + 1) @ m
    return m


_DEVICE_MATRICES: dict = {}


def _matrix(kind, n_in, n_out, blur_sigma, device, dtype) -> torch.Tensor:
    key = (kind, n_in, n_out, blur_sigma, str(device), dtype)
    m = _DEVICE_MATRICES.get(key)
    if m is None:
        if len(_DEVICE_MATRICES) > 512:
            _DEVICE_MATRICES.clear()
        m = torch.from_numpy(_matrix64(kind, n_in, n_out, blur_sigma)).to(device, dtype)
        _DEVICE_MATRICES[key] = m
    return m


def resample(
    images: torch.Tensor, size: tuple[int, int], kind: str, *, blur_sigma: float = 0.0
) -> torch.Tensor:
    """Separable resampling of a batch by two matmuls, then an optional Gaussian blur.

    Args:
        images: (B, C, H, W) float, or uint8 read as ``x / 255`` (converted chunk by chunk).
        size: (h, w) output size.
        kind: ``area`` | ``bilinear`` | ``bicubic`` | ``gauss`` | ``matlab`` | ``nearest``;
            bilinear and bicubic are antialiased when shrinking (torch ``antialias=True``),
            ``matlab`` is MATLAB ``imresize``'s antialiased cubic with its symmetric border.
        blur_sigma: Gaussian blur applied at the output size, in output pixels.

    Returns:
        (B, C, h, w) tensor of the input dtype (float32 for uint8 input; not clamped).
    """
    return _resample(images, size, kind, blur_sigma, clamp=False)


# On the CPU a large batch is resampled a few images at a time, so that each chunk's input,
# intermediate and output stay in the cache: one pass over 256 RGB 112x96 float faces streams
# ~100 MB through memory and spends more time there than in the matmuls (measured on the
# project's 2-core machine, area>bicubic at 1/8 and back from uint8: 10.6 ms in one pass, 6.1
# ms in chunks of 4 MiB; benchmarks/degrade.py). Chunks also take the rows first (see
# _resample), so a chunked pixel can differ from the one-pass pixel in its last bits (at most
# 7e-7 measured; with a JPEG step, a pixel that moves across a rounding boundary before the
# codec differs by up to 0.026, 0.03% of the pixels). Batches up to CPU_ONE_PASS_BYTES keep the
# one pass: the builtin sets' sweep batches (synth 2.8 MB, ORL 10.5 MB) give the same pixels,
# and the same tables, as before chunking existed. In chunks, area at a whole factor takes its
# rows as sums of f rows (_box_rows) instead of a matmul with h times the work (256 RGB 112x96
# from uint8, area>bicubic at 1/8 and back: 4.4-5.0 ms against 5.1-5.4 ms with the matmul,
# and about 5.5 ms per-image through OpenCV on uint8, on the project's machine; the GEMMs are
# already near that machine's peak, so only fewer operations help).
CPU_ONE_PASS_BYTES = 16 << 20
CPU_CHUNK_BYTES = 4 << 20


def _chunk_images(images: torch.Tensor, size: tuple[int, int]) -> int:
    """Images per chunk: the whole batch off the CPU or up to CPU_ONE_PASS_BYTES."""
    per_image = 4 * images.shape[1] * max(images.shape[-2] * images.shape[-1], size[0] * size[1])
    if images.device.type != "cpu" or per_image * images.shape[0] <= CPU_ONE_PASS_BYTES:
        return max(1, images.shape[0])
    return max(1, CPU_CHUNK_BYTES // per_image)


def _box_factor(kind: str, blur_sigma: float, n_in: int, n_out: int) -> int:
    """f where ``kind`` maps n_in = f * n_out pixels to n_out means of f (area, no blur), else 0."""
    if kind == "area" and blur_sigma == 0 and n_out < n_in and n_in % n_out == 0:
        return n_in // n_out
    return 0


def _box_rows(x: torch.Tensor, f: int) -> torch.Tensor:
    """Means of f consecutive rows, (..., f * h, W) -> (..., h, W) float32: the area matrix's
    product by additions (one per input pixel, against h per pixel in the matmul). A sum of
    uint8 values is an exact integer in float32 (below 2**24) divided once: the correctly
    rounded mean."""
    v = x.unflatten(-2, (x.shape[-2] // f, f))
    if x.dtype == torch.uint8:
        return v.sum(-2, dtype=torch.float32).div_(255.0 * f)
    return v.sum(-2).div_(f)


def _resample(
    images: torch.Tensor, size: tuple[int, int], kind: str, blur_sigma: float, clamp: bool
) -> torch.Tensor:
    h, w = size
    dtype = torch.float32 if images.dtype == torch.uint8 else images.dtype
    m_h = _matrix(kind, images.shape[-2], h, blur_sigma, images.device, dtype)
    m_w = _matrix(kind, images.shape[-1], w, blur_sigma, images.device, dtype)

    box = _box_factor(kind, blur_sigma, images.shape[-2], h)

    def rows(x: torch.Tensor) -> torch.Tensor:
        """The rows' product of a chunk, float: box sums for area at a whole factor."""
        if box:
            return _box_rows(x, box)
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255.0)  # bit-identical to x / 255.0
        return torch.matmul(m_h, x)

    def columns(y: torch.Tensor, dst: torch.Tensor | None = None) -> torch.Tensor:
        """The columns' product (into ``dst``), clamped there while in the cache."""
        y = torch.matmul(y, m_w.T, out=dst)
        return y.clamp_(0.0, 1.0) if clamp else y

    with torch.autocast(images.device.type, enabled=False):
        chunk = _chunk_images(images, size)
        if chunk >= images.shape[0]:
            # One pass: shrink the width first when shrinking (fewer flops in the second
            # matmul).
            x = images.to(torch.float32).div_(255.0) if images.dtype == torch.uint8 else images
            if w > x.shape[-1]:
                return columns(torch.matmul(m_h, x))
            y = torch.matmul(m_h, torch.matmul(x, m_w.T))
            return y.clamp_(0.0, 1.0) if clamp else y
        # In chunks the rows go first either way: a matmul whose output is only w columns wide
        # runs at a fraction of the speed of one w times wider (256 RGB 112x96 -> 14x12 in
        # chunks: 2.4 ms rows first, 3.3-3.7 ms columns first, on the project's machine).
        # Growing, the rows' product (h x w_in a image) is small beside the output, so one
        # matmul makes it for the whole batch and only the columns run in chunks (256 RGB faces
        # 14x12 -> 112x96 within area>bicubic: 4.4 against 4.7 ms a batch).
        out = torch.empty((*images.shape[:-2], h, w), dtype=dtype, device=images.device)
        whole = rows(images) if h > images.shape[-2] and images.is_floating_point() else None
        for start in range(0, images.shape[0], chunk):
            part = slice(start, start + chunk)
            columns(whole[part] if whole is not None else rows(images[part]), dst=out[part])
        return out


# ---------------------------------------------------------------------------------------------
# Counter-based Gaussian noise: a function of (seed, image index, element index) only.


def _hash_int(value: int) -> int:
    return int(hash32(torch.tensor([value & M32], dtype=torch.int64)).item())


@lru_cache(maxsize=16)
def _element_hashes(n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    element = torch.arange(n, device=device, dtype=torch.int64)
    return hash32(2 * element), hash32(2 * element + 1)


def gaussian_noise(
    shape: tuple[int, ...], seed: int = 0, *, index_offset: int = 0, device=None
) -> torch.Tensor:
    """Standard normal noise whose image i depends only on (seed, index_offset + i).

    Args:
        shape: (B, ...) shape; the first axis indexes images.
        seed: any Python int.
        index_offset: global index of the first image, so batches of a split set get the
            same noise as one big batch.
        device: where to build it; the values do not depend on the device.

    Returns:
        float32 tensor of ``shape``.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    seed, index_offset = int(seed), int(index_offset)
    key = _hash_int(_hash_int(seed) ^ ((seed >> 32) & M32))
    per_image = math.prod(shape[1:])
    images = torch.arange(shape[0], device=device, dtype=torch.int64) + index_offset
    image_key = hash32((hash32(images & M32) ^ key) & M32)[:, None]
    even, odd = _element_hashes(per_image, str(device or "cpu"))
    u1 = hash32(image_key ^ even)
    u2 = hash32(image_key ^ odd)
    # 24-bit uniforms in (0, 1): exact in float32, never 0 (log) or 1.
    u1 = ((u1 >> 8).to(torch.float32) + 0.5) / 16777216.0
    u2 = ((u2 >> 8).to(torch.float32) + 0.5) / 16777216.0
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    return z.reshape(shape)


# ---------------------------------------------------------------------------------------------
# JPEG


def _jpeg_opencv_np(image: np.ndarray, quality: int) -> np.ndarray:
    """(h, w, C) float [0, 1] -> libjpeg round trip at ``quality`` (8-bit), float32 (h, w, C)."""
    import cv2

    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    if pixels.shape[2] == 3:
        pixels = np.ascontiguousarray(pixels[..., ::-1])  # libjpeg's YCbCr expects BGR here
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ConfigError(f"OpenCV could not JPEG-encode a {image.shape} image; check the size")
    out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    out = out[..., None] if out.ndim == 2 else out[..., ::-1]
    return out.astype(np.float32) / 255.0


def _jpeg(images: torch.Tensor, quality: int, codec: str) -> torch.Tensor:
    if codec == "kornia":
        from kornia.enhance import jpeg_codec_differentiable

        rgb = images if images.shape[1] == 3 else images.expand(-1, 3, -1, -1)
        q = torch.tensor([float(quality)], device=images.device, dtype=images.dtype)
        out = jpeg_codec_differentiable(rgb.contiguous(), q)
        return out if images.shape[1] == 3 else out.mean(dim=1, keepdim=True)
    # Low-resolution images are tiny, so the host round trip costs little even from a GPU.
    host = images.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).numpy()
    out = np.stack([_jpeg_opencv_np(image, quality) for image in host])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(images.device, images.dtype)


# ---------------------------------------------------------------------------------------------
# The batched chain and the per-image reference.


def degrade(
    images: torch.Tensor,
    scale: float | None = None,
    spec: DegradeSpec | str = DEFAULT,
    *,
    size_px: int | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    index_offset: int = 0,
) -> torch.Tensor:
    """Degrade a batch to a lower resolution and back to its own size.

    Args:
        images: (B, C, H, W) float images in [0, 1], or uint8 in 0..255 read as ``x / 255``
            (converted a chunk at a time: no full-size float copy), any device.
        scale: fraction of the side in (0, 1]; or give ``size_px`` (face width in pixels).
        spec: a DegradeSpec or its string form.
        size_px: target face width in pixels (1..W), instead of ``scale``.
        seed: noise seed; image i's noise depends only on (seed, index_offset + i).
        generator: if given, noise is drawn with ``torch.randn(generator=...)`` instead
            (reproducible for the same batching only).
        index_offset: global index of ``images[0]`` (see ``seed``).

    Returns:
        (B, C, H, W) tensor of the input dtype (float32 for uint8) in [0, 1]; the input object
        itself (``images / 255`` for uint8) when the target size equals the input size and the
        spec has no blur, noise or JPEG.

    Raises:
        ConfigError: bad scale/size/spec, or images that are not a 4-D float or uint8 tensor.
    """
    spec = parse_degrade(spec)
    if (
        not isinstance(images, torch.Tensor)
        or images.ndim != 4
        or not (images.is_floating_point() or images.dtype == torch.uint8)
    ):
        got = (
            f"{tuple(images.shape)} {images.dtype}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise ConfigError(
            f"images must be a (B, C, H, W) float tensor in [0, 1] or uint8 in 0..255, got {got}"
        )
    height, width = images.shape[-2:]
    low = target_size(height, width, scale, size_px)
    if low == (height, width) and not spec.has_extras:
        return images / 255.0 if images.dtype == torch.uint8 else images
    x = resample(images, low, spec.down, blur_sigma=spec.blur_sigma)
    if spec.noise_std > 0:
        if generator is not None:
            noise = torch.randn(x.shape, generator=generator, device=generator.device)
        else:
            noise = gaussian_noise(tuple(x.shape), seed, index_offset=index_offset, device=x.device)
        x = x + spec.noise_std * noise.to(x.device, x.dtype)
    x = x.clamp(0.0, 1.0)
    if spec.jpeg_quality is not None:
        x = _jpeg(x, spec.jpeg_quality, spec.jpeg_codec)
    # bilinear/nearest/area weights are convex, so only bicubic can overshoot the clamped input.
    return _resample(x, (height, width), spec.up, 0.0, clamp=spec.up == "bicubic")


_CV2_UP = {"bicubic": "INTER_CUBIC", "bilinear": "INTER_LINEAR", "nearest": "INTER_NEAREST"}


def _cv2_resize(image: np.ndarray, size: tuple[int, int], flag: int) -> np.ndarray:
    import cv2

    out = cv2.resize(image, (size[1], size[0]), interpolation=flag)
    return out[..., None] if out.ndim == 2 else out


def degrade_reference(
    image: np.ndarray,
    scale: float | None = None,
    spec: DegradeSpec | str = DEFAULT,
    *,
    size_px: int | None = None,
    seed: int = 0,
    index: int = 0,
) -> np.ndarray:
    """Slow per-image reference of ``degrade`` built from OpenCV and Pillow, for parity tests.

    Down: area -> cv2 INTER_AREA; bilinear/bicubic -> Pillow's antialiased resize (float mode,
    per channel: OpenCV has no antialiased bilinear/bicubic, Pillow's filter is torch's);
    gauss -> cv2.GaussianBlur (kornia's sigma rule, reflect-101) + cv2 INTER_LINEAR; matlab ->
    :func:`matlab_resize` (the per-pixel gather form of imresize.m's weights). Blur ->
    cv2.GaussianBlur; JPEG -> cv2.imencode/imdecode (the kornia codec runs kornia on the single
    image). Up -> cv2.resize. The noise values are taken from ``gaussian_noise`` (the random
    numbers are shared by design; everything else is independent of the batched code).

    Args:
        image: (H, W, C) uint8 (0..255) or float (0..1) array, C in {1, 3}, RGB order.
        scale, spec, size_px, seed: as in ``degrade``.
        index: the image's global index (selects its noise).

    Returns:
        (H, W, C) float32 array in [0, 1].
    """
    import cv2

    spec = parse_degrade(spec)
    if image.ndim == 2:
        image = image[..., None]
    x = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    height, width = x.shape[:2]
    low = target_size(height, width, scale, size_px)
    if low == (height, width) and not spec.has_extras:
        return x
    if low != (height, width):
        if spec.down == "area":
            x = _cv2_resize(x, low, cv2.INTER_AREA)
        elif spec.down == "matlab":
            x = matlab_resize(x, low).astype(np.float32)
        elif spec.down == "gauss":
            sy, ky = _kornia_gauss_ksize(height / low[0])
            sx, kx = _kornia_gauss_ksize(width / low[1])
            ky, kx = (1 if height == 1 else ky), (1 if width == 1 else kx)
            blurred = cv2.GaussianBlur(
                x, (kx, ky), sx, sigmaY=sy, borderType=cv2.BORDER_REFLECT_101
            )
            x = _cv2_resize(blurred.reshape(x.shape), low, cv2.INTER_LINEAR)
        else:
            pil = Image.BILINEAR if spec.down == "bilinear" else Image.BICUBIC
            x = np.stack(
                [
                    np.asarray(
                        Image.fromarray(np.ascontiguousarray(x[..., c])).resize(low[::-1], pil)
                    )
                    for c in range(x.shape[2])
                ],
                axis=-1,
            )
    if spec.blur_sigma > 0:
        k = 2 * math.ceil(3 * spec.blur_sigma) + 1
        s = spec.blur_sigma
        x = cv2.GaussianBlur(x, (k, k), s, sigmaY=s, borderType=cv2.BORDER_REFLECT_101)
        x = x.reshape(low[0], low[1], -1)
    if spec.noise_std > 0:
        noise = gaussian_noise((1, x.shape[2], *low), seed, index_offset=index)[0]
        x = x + spec.noise_std * noise.permute(1, 2, 0).numpy()
    x = np.clip(x, 0.0, 1.0).astype(np.float32)
    if spec.jpeg_quality is not None:
        if spec.jpeg_codec == "opencv":
            x = _jpeg_opencv_np(x, spec.jpeg_quality)
        else:
            t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
            x = _jpeg(t, spec.jpeg_quality, "kornia")[0].permute(1, 2, 0).numpy()
    if low != (height, width):
        flag = cv2.INTER_AREA if spec.up == "area" else getattr(cv2, _CV2_UP[spec.up])
        x = _cv2_resize(np.ascontiguousarray(x), (height, width), flag)
    return np.clip(x, 0.0, 1.0).astype(np.float32)
