"""lowres.degrade: parity with the per-image OpenCV/Pillow reference, seeds, hashes, grammar."""

import math
import re

import cv2
import kornia
import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from lowres.degrade import (
    DEFAULT,
    DOWN_KERNELS,
    UP_KERNELS,
    DegradeSpec,
    degrade,
    degrade_reference,
    gaussian_noise,
    graded_scales,
    parse_degrade,
    resample,
    target_size,
)
from lowres.errors import ConfigError

# Parity tolerance, batched chain vs per-image reference on [0, 1] images. Measured: max 1e-6
# (float32 summation order) for every resampling kernel and for blur/noise. Through libjpeg a
# pixel that lands within 1e-6 of a quantisation boundary can round the other way and move its
# 8x8 block, hence the looser JPEG bound.
MAX_ABS, MEAN_ABS = 1e-4, 1e-5
JPEG_MAX_ABS, JPEG_MEAN_ABS = 0.05, 1e-3


def _images() -> list[np.ndarray]:
    """A smooth face-like RGB image, a binary-edge RGB image and a smooth grey image."""
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.random((112, 96, 3)).astype(np.float32), (0, 0), 2.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    edges = (rng.random((112, 96, 3)) > 0.5).astype(np.float32)
    grey = smooth[..., :1].copy()
    return [smooth, edges, grey]


def _check_parity(spec, max_abs=MAX_ABS, mean_abs=MEAN_ABS, index_offset=0, **target):
    for image in _images():
        batch = torch.from_numpy(np.stack([image, image[::-1].copy()])).permute(0, 3, 1, 2)
        got = degrade(batch.contiguous(), spec=spec, index_offset=index_offset, **target)
        got = got.permute(0, 2, 3, 1).numpy()
        for i, src in enumerate([image, image[::-1].copy()]):
            ref = degrade_reference(src, spec=spec, index=index_offset + i, **target)
            diff = np.abs(got[i] - ref)
            assert diff.max() <= max_abs and diff.mean() <= mean_abs, (
                str(spec),
                target,
                diff.max(),
            )


@pytest.mark.parametrize("down", DOWN_KERNELS)
@pytest.mark.parametrize("up", UP_KERNELS)
def test_parity_every_kernel_pair(down, up):
    # 0.3 and 7 px are non-integer factors (112x96 -> 34x29 and 8x7).
    for target in (dict(scale=0.3), dict(size_px=7)):
        _check_parity(DegradeSpec(down=down, up=up), **target)


@pytest.mark.parametrize("down", DOWN_KERNELS)
def test_parity_integer_factor_and_one_pixel(down):
    for target in (dict(scale=1 / 8), dict(size_px=1)):
        _check_parity(DegradeSpec(down=down), **target)


@pytest.mark.parametrize(
    "text",
    [
        "area+blur0.5>bilinear",
        "bicubic+blur1.5+noise0.03>bicubic",
        "gauss+noise0.05>nearest",
        "bilinear+blur1+noise0.02+jpeg30>bicubic",
        "area+jpeg75>area",
    ],
)
def test_parity_with_extras(text):
    tol = (JPEG_MAX_ABS, JPEG_MEAN_ABS) if "jpeg" in text else (MAX_ABS, MEAN_ABS)
    _check_parity(parse_degrade(text), *tol, index_offset=11, scale=1 / 8)
    _check_parity(parse_degrade(text), *tol, index_offset=3, scale=1.0)


def test_kornia_jpeg_batched_equals_per_image_and_approximates_libjpeg():
    _check_parity(parse_degrade("bicubic+kjpeg40>bicubic"), scale=1 / 4)
    image = torch.from_numpy(_images()[0]).permute(2, 0, 1)[None].contiguous()
    real = degrade(image, 1 / 4, "area+jpeg30>bilinear")
    approx = degrade(image, 1 / 4, "area+kjpeg30>bilinear")
    # A different codec (differentiable rounding, no fancy chroma up-sampling): close, not equal.
    assert 0 < (real - approx).abs().mean() <= 0.03
    assert (real - approx).abs().max() <= 0.2


def test_resample_matches_torch_and_kornia_ops():
    x = torch.rand(3, 2, 112, 96, generator=torch.Generator().manual_seed(1))
    for size in ((14, 12), (37, 29), (5, 4)):
        for mode in ("bilinear", "bicubic"):
            ref = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
            assert torch.allclose(resample(x, size, mode), ref, atol=1e-5)
        ref = kornia.geometry.transform.resize(x, size, interpolation="bilinear", antialias=True)
        assert torch.allclose(resample(x, size, "gauss"), ref, atol=1e-5)
    # torch "area" is adaptive average pooling: equal to pixel-area integration at integer factors.
    assert torch.allclose(resample(x, (14, 12), "area"), F.interpolate(x, (14, 12), mode="area"))
    low = x[..., :14, :12].contiguous()
    for mode in ("bilinear", "bicubic"):
        ref = F.interpolate(low, size=(112, 96), mode=mode, align_corners=False)
        assert torch.allclose(resample(low, (112, 96), mode), ref, atol=1e-5)
    assert torch.equal(resample(low, (112, 96), "nearest"), F.interpolate(low, (112, 96)))


@pytest.mark.parametrize("spec", ["bicubic>bicubic", "area+blur1+noise0.1+jpeg20>nearest"])
def test_shape_dtype_and_range_preserved(spec):
    x = torch.rand(4, 3, 40, 33, generator=torch.Generator().manual_seed(2))
    for dtype in (torch.float32, torch.float64):
        out = degrade(x.to(dtype), 0.3, spec)
        assert out.shape == x.shape and out.dtype == dtype
        assert out.min() >= 0 and out.max() <= 1
        assert not torch.equal(out, x.to(dtype))


def test_scale_one_without_extras_is_identity():
    x = torch.rand(2, 3, 20, 16)
    for kernel in DOWN_KERNELS:
        assert degrade(x, 1.0, DegradeSpec(down=kernel)) is x
    assert degrade(x, spec="area>nearest", size_px=16) is x
    assert degrade(x, 1.0, "bicubic+noise0.01>bicubic") is not x


def test_seeds_and_batch_split():
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    spec = "bicubic+noise0.05>bicubic"
    a, b = degrade(x, 0.5, spec, seed=7), degrade(x, 0.5, spec, seed=7)
    assert torch.equal(a, b)
    assert not torch.allclose(a, degrade(x, 0.5, spec, seed=8))
    # Image i's noise depends on (seed, index), so any batching gives the same pixels.
    split = torch.cat(
        [degrade(x[:2], 0.5, spec, seed=7), degrade(x[2:], 0.5, spec, seed=7, index_offset=2)]
    )
    assert torch.allclose(a, split, atol=1e-6)
    # With a torch.Generator: same generator state -> same output.
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(degrade(x, 0.5, spec, generator=g1), degrade(x, 0.5, spec, generator=g2))


def test_noise_is_standard_normal_and_independent():
    z = gaussian_noise((40, 3, 50, 50), seed=123)
    flat = z.flatten().double().numpy()
    assert abs(flat.mean()) < 0.01 and abs(flat.std() - 1) < 0.01
    assert scipy.stats.kstest(flat[:50_000], "norm").pvalue > 1e-3
    pixels = z.reshape(40, -1)
    # Neighbouring images, neighbouring pixels and other seeds are uncorrelated.
    assert abs(np.corrcoef(pixels[0], pixels[1])[0, 1]) < 0.05
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.01
    other = gaussian_noise((40, 3, 50, 50), seed=124).flatten().numpy()
    assert abs(np.corrcoef(flat, other)[0, 1]) < 0.01


def test_hash_stable_and_different_for_every_setting():
    assert re.fullmatch(r"[0-9a-f]{12}", DEFAULT.hash())
    # Pinned: a change here means old provenance records no longer match; bump _HASH_VERSION.
    assert DEFAULT.hash() == "f60f960c6790"
    assert DEFAULT.hash() == DegradeSpec().hash() == parse_degrade("bicubic>bicubic").hash()
    variants = [DEFAULT]
    variants += [DegradeSpec(down=k) for k in DOWN_KERNELS if k != DEFAULT.down]
    variants += [DegradeSpec(up=k) for k in UP_KERNELS if k != DEFAULT.up]
    variants += [DegradeSpec(blur_sigma=s) for s in (0.5, 1.0, 1.5)]
    variants += [DegradeSpec(noise_std=s) for s in (0.01, 0.02)]
    variants += [DegradeSpec(jpeg_quality=q) for q in (30, 31)]
    variants += [DegradeSpec(jpeg_quality=30, jpeg_codec="kornia")]
    variants += [DegradeSpec("area", 1.0, 0.02, 30, "bilinear")]
    hashes = [v.hash() for v in variants]
    assert len(set(hashes)) == len(variants)
    assert len({str(v) for v in variants}) == len(variants)


def test_string_round_trip():
    specs = [
        DegradeSpec(down=d, up=u, blur_sigma=b, noise_std=n, jpeg_quality=q, jpeg_codec=c)
        for d in DOWN_KERNELS
        for u in UP_KERNELS
        for b in (0.0, 0.7)
        for n in (0.0, 0.02)
        for q, c in ((None, "opencv"), (30, "opencv"), (90, "kornia"))
    ]
    for spec in specs:
        assert parse_degrade(str(spec)) == spec
    assert str(DEFAULT) == "bicubic>bicubic"
    assert str(parse_degrade("bicubic+blur1.0+noise0.02+jpeg30>bicubic")) == (
        "bicubic+blur1+noise0.02+jpeg30>bicubic"
    )
    assert parse_degrade(" AREA ") == DegradeSpec(down="area")  # up defaults to bicubic
    assert parse_degrade(DEFAULT) is DEFAULT


@pytest.mark.parametrize(
    "text, words",
    [
        ("lanczos>bicubic", "area, bilinear, bicubic, gauss"),
        ("area>gauss", "bicubic, bilinear, nearest, area"),
        ("area+sharpen1>bicubic", "blur, noise"),
        ("area+noise0.1+blur1>bicubic", "order"),
        ("area+blur1+blur2>bicubic", "order"),
        ("area+jpeg30+kjpeg30>bicubic", "order"),
        ("area+blurx>bicubic", "bad number"),
        ("area+jpeg0>bicubic", "1..100"),
        ("area+jpeg101>bicubic", "1..100"),
        ("area+noise2>bicubic", "noise_std"),
        ("area>bicubic>area", "more than one"),
        ("", "non-empty"),
    ],
)
def test_parse_errors(text, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        parse_degrade(text)


def test_target_size_and_bad_targets():
    assert target_size(112, 96, scale=1 / 8) == (14, 12)
    assert target_size(112, 96, scale=0.01) == (1, 1)
    assert target_size(112, 96, size_px=12) == (14, 12)
    assert target_size(112, 96, size_px=96) == (112, 96)
    bad = [
        dict(scale=0),
        dict(scale=-0.5),
        dict(scale=1.01),
        dict(scale=math.nan),
        dict(scale=True),
        dict(size_px=0),
        dict(size_px=97),
        dict(size_px=2.5),
        dict(),
        dict(scale=0.5, size_px=10),
    ]
    for kwargs in bad:
        with pytest.raises(ConfigError):
            target_size(112, 96, **kwargs)
    x = torch.rand(1, 3, 112, 96)
    for kwargs in bad:
        with pytest.raises(ConfigError):
            degrade(x, **kwargs)
    with pytest.raises(ConfigError, match="float tensor"):
        degrade(torch.zeros(1, 3, 8, 8, dtype=torch.int32), 0.5)


@pytest.mark.parametrize("spec", ["bicubic>bicubic", "area+blur1+noise0.05>nearest"])
def test_uint8_input_is_read_as_x_over_255(spec):
    x8 = torch.randint(0, 256, (5, 3, 40, 33), dtype=torch.uint8)
    assert torch.equal(degrade(x8, 0.3, spec, seed=2), degrade(x8 / 255.0, 0.3, spec, seed=2))
    plain = degrade(x8, 1.0, "bicubic>bicubic")
    assert plain.dtype == torch.float32 and torch.equal(plain, x8 / 255.0)


@pytest.mark.parametrize(
    "spec", ["bicubic>bicubic", "area>bicubic", "matlab+blur1>bilinear", "bicubic+noise0.05>area"]
)
def test_large_cpu_batches_in_chunks_equal_one_pass(spec, monkeypatch):
    """Above CPU_ONE_PASS_BYTES the batch is resampled in chunks (rows first): the same pixels
    to float rounding as one pass, noise included (it follows the image's index); at or below
    it, the one pass itself."""
    import lowres.degrade as D

    x8 = torch.randint(0, 256, (23, 3, 40, 36), dtype=torch.uint8)
    one_pass = degrade(x8, None, spec, size_px=6, seed=4)
    small = degrade(x8[:5], None, spec, size_px=6, seed=4)
    monkeypatch.setattr(D, "CPU_ONE_PASS_BYTES", 4 * 3 * 40 * 36 * 5)  # 5 images
    monkeypatch.setattr(D, "CPU_CHUNK_BYTES", 4 * 3 * 40 * 36 * 3)  # chunks of 3
    assert D._chunk_images(x8, (7, 6)) == 3 and D._chunk_images(x8[:5], (7, 6)) == 5
    chunked = degrade(x8, None, spec, size_px=6, seed=4)
    assert torch.allclose(chunked, one_pass, atol=2e-6, rtol=0)
    assert torch.equal(degrade(x8[:5], None, spec, size_px=6, seed=4), small)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_box_rows_equal_the_area_matrix(dtype):
    """The chunked path's shortcut for area at a whole factor (row means by additions) gives
    the product by the area matrix, to float rounding, for uint8 and float input; it is taken
    only where the area matrix is that box (whole factor, no blur)."""
    import lowres.degrade as D

    for n_in, n_out in [(112, 14), (48, 8), (40, 20), (9, 3), (7, 1)]:
        f = D._box_factor("area", 0.0, n_in, n_out)
        assert f == n_in // n_out
        box = np.kron(np.eye(n_out), np.full((1, f), 1.0 / f))
        assert np.array_equal(D._matrix64("area", n_in, n_out), box)
        x = torch.randint(0, 256, (4, 3, n_in, 5), dtype=torch.uint8)
        xf = x.to(dtype) / 255.0 if dtype != torch.uint8 else x
        want = torch.from_numpy(box) @ (x.double() / 255.0)
        got = D._box_rows(xf, f)
        assert got.dtype == (torch.float32 if dtype == torch.uint8 else dtype)
        # uint8: one rounding of the exact mean (half an ulp, <= 3e-8 below 1); float32: the
        # rounding of x / 255 and of the sum, a few ulps.
        tol = {torch.uint8: 3e-8, torch.float32: 2.5e-7, torch.float64: 1e-12}[dtype]
        assert torch.allclose(got.double(), want, atol=tol, rtol=0)
    assert D._box_factor("area", 0.5, 112, 14) == 0  # blurred: not a box
    assert D._box_factor("area", 0.0, 112, 15) == 0  # not a whole factor
    assert D._box_factor("bicubic", 0.0, 112, 14) == 0
    assert D._box_factor("area", 0.0, 14, 112) == 0  # growing


@pytest.mark.parametrize("spec", ["area>bicubic", "area+noise0.05>bilinear"])
def test_chunked_area_at_a_whole_factor_equals_one_pass(spec, monkeypatch):
    """48x36 -> 8x6 (factor 6 both ways) takes the box shortcut in chunks."""
    import lowres.degrade as D

    x8 = torch.randint(0, 256, (23, 3, 48, 36), dtype=torch.uint8)
    one_pass = degrade(x8, None, spec, size_px=6, seed=4)
    monkeypatch.setattr(D, "CPU_ONE_PASS_BYTES", 4 * 3 * 48 * 36 * 5)
    monkeypatch.setattr(D, "CPU_CHUNK_BYTES", 4 * 3 * 48 * 36 * 3)
    calls = []
    box_rows = D._box_rows
    monkeypatch.setattr(D, "_box_rows", lambda x, f: calls.append(f) or box_rows(x, f))
    for images in (x8, x8 / 255.0):
        chunked = degrade(images, None, spec, size_px=6, seed=4)
        assert torch.allclose(chunked, one_pass, atol=1e-6, rtol=0)
    assert calls and set(calls) == {6}


def test_graded_scales():
    assert graded_scales() == [1.0, 0.5, 0.25, 0.125, 0.0625]
    ladder = graded_scales(0.1, 4, start=0.8)
    assert ladder[0] == 0.8 and ladder[-1] == 0.1
    assert np.allclose(np.diff(np.log(ladder)), math.log(0.1 / 0.8) / 3)
    assert graded_scales(1.0, 1) == [1.0]
    for kwargs in (dict(stop=0), dict(stop=2), dict(num=0), dict(stop=0.5, num=1)):
        with pytest.raises(ConfigError):
            graded_scales(**kwargs)
