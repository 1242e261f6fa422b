"""The batched augmentation backend against albumentations, the per-image reference.

Both backends must draw the same distribution of transforms (two-sample tests on the recorded
parameters, with a negative control that the tests do reject a wrong distribution), build the
same affine matrix from the same parameters, and warp and adjust pixels as OpenCV does up to the
uint8 rounding the reference makes between its steps.
"""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import torch
from scipy import stats

from lowres.train.augment import (
    affine_matrices,
    augment_batch_torch,
    build_augmentation,
    counter_uniforms,
    draw_augment_params,
)

H, W = 56, 48
N = 3000
ALPHA = 1e-3  # fixed seeds: each test is deterministic; a wrong distribution gives p << 1e-6


def _replayed(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """What albumentations drew for ``n`` images (ReplayCompose records every parameter)."""
    import albumentations as A

    replay = A.ReplayCompose(build_augmentation().transforms)
    image = np.zeros((H, W, 1), np.uint8)
    cx, cy = W / 2 - 0.5, H / 2 - 0.5
    out: dict[str, list] = {k: [] for k in ("flip", "affine", "bc")}
    for key in ("scale_x", "scale_y", "rotate", "shift_x", "shift_y", "matrix", "alpha", "beta"):
        out[key] = []
    for i in range(n):
        replay.set_random_state(
            np.random.Generator(np.random.PCG64(seed + i)), random.Random(seed + i)
        )
        flip, affine, bc = replay(image=image)["replay"]["transforms"]
        out["flip"].append(flip["applied"])
        out["affine"].append(affine["applied"])
        out["bc"].append(bc["applied"])
        if affine["applied"]:
            p, m = affine["params"], affine["params"]["matrix"]
            out["scale_x"].append(p["scale"]["x"])
            out["scale_y"].append(p["scale"]["y"])
            out["rotate"].append(p["rotate"])
            out["matrix"].append(m[:2])
            # The shift the matrix holds: its translation less the centring terms.
            out["shift_x"].append(m[0, 2] - cx + m[0, 0] * cx + m[0, 1] * cy)
            out["shift_y"].append(m[1, 2] - cy + m[1, 0] * cx + m[1, 1] * cy)
        if bc["applied"]:
            out["alpha"].append(bc["params"]["alpha"])
            out["beta"].append(bc["params"]["beta"])
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return _replayed(N)


@pytest.fixture(scope="module")
def batched() -> dict[str, np.ndarray]:
    p = draw_augment_params(12345, torch.arange(N), H, W)
    out = {k: p[k].numpy() for k in ("flip", "affine", "bc")}
    for key in ("scale_x", "scale_y", "rotate", "shift_x", "shift_y"):
        out[key] = p[key][p["affine"]].numpy()
    for key in ("alpha", "beta"):
        out[key] = p[key][p["bc"]].numpy()
    return out


def _same_distribution(a: np.ndarray, b: np.ndarray) -> float:
    """p-value of a two-sample test: chi-square on the counts of discrete values (flags,
    whole-pixel shifts), Kolmogorov-Smirnov otherwise."""
    if a.dtype == bool or np.allclose(a, np.round(a), atol=1e-9):
        a, b = np.round(a.astype(float)) + 0.0, np.round(b.astype(float)) + 0.0
        values = np.union1d(a, b)
        table = np.array([[np.sum(a == v) for v in values], [np.sum(b == v) for v in values]])
        return float(stats.chi2_contingency(table)[1])
    return float(stats.ks_2samp(a, b).pvalue)


@pytest.mark.parametrize(
    "key",
    ["flip", "affine", "bc", "scale_x", "scale_y", "rotate", "shift_x", "shift_y", "alpha", "beta"],
)
def test_backends_draw_the_same_distribution(reference, batched, key):
    p = _same_distribution(reference[key], batched[key])
    assert p > ALPHA, f"{key}: p = {p:.2e}"


def test_the_distribution_test_rejects_a_wrong_distribution(reference, batched):
    # Negative controls: a rotation range 25% too wide, a shift rounded instead of truncated,
    # and a flip probability of 0.45 are all rejected at the level the tests above use.
    assert _same_distribution(reference["rotate"], batched["rotate"] * 1.25) < 1e-6
    u = counter_uniforms(12345, torch.arange(N), 10)
    rounded = torch.round((-0.04 + 0.08 * u[:, 4]) * W).numpy()
    assert _same_distribution(reference["shift_x"], rounded) < 1e-6
    assert _same_distribution(reference["flip"], (u[:, 0] < 0.45).numpy()) < ALPHA


def test_shifts_are_whole_pixels_as_in_albumentations(reference):
    for key in ("shift_x", "shift_y"):
        assert np.allclose(reference[key], np.round(reference[key]), atol=1e-9)
    assert set(np.round(reference["shift_x"]).astype(int)) == {-1, 0, 1}  # int(U(+-.04) * 48)


def test_affine_matrix_equals_albumentations(reference):
    params = {
        k: torch.from_numpy(np.round(reference[k]) if k.startswith("shift") else reference[k])
        for k in ("scale_x", "scale_y", "rotate", "shift_x", "shift_y")
    }
    ours = affine_matrices(params, H, W).numpy()
    assert np.abs(ours - reference["matrix"]).max() < 1e-9


def _smooth_image(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 1, 14, 12, generator=g) * 255
    big = torch.nn.functional.interpolate(low, size=(H, W), mode="bicubic")
    return big.clamp(0, 255).round().to(torch.uint8)


def test_warp_equals_opencv_up_to_rounding():
    from kornia.geometry.transform import warp_affine

    image = _smooth_image(0)
    params = draw_augment_params(7, torch.arange(64), H, W)
    matrices = affine_matrices(params, H, W)
    ours = warp_affine(
        image.expand(64, 1, H, W).float(),
        matrices.float(),
        (H, W),
        padding_mode="reflection",
        align_corners=True,
    )
    for i in range(64):
        ref = cv2.warpAffine(
            image[0, 0].numpy(),
            matrices[i].numpy(),
            (W, H),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )
        # OpenCV rounds to uint8 (and interpolates in 1/32 pixel steps): within a gray level.
        diff = (ours[i, 0] - torch.from_numpy(ref).float()).abs()
        assert diff.max() <= 0.75, (i, float(diff.max()))


def test_whole_batch_equals_albumentations_given_the_same_parameters():
    # Replay our parameters through OpenCV and numpy image by image: the batched output equals
    # that per-image path to within the uint8 rounding the per-image path makes.
    images = torch.cat([_smooth_image(s) for s in range(32)])
    out = augment_batch_torch(images, 99) * 255
    p = draw_augment_params(99, torch.arange(32), H, W)
    m = affine_matrices(p, H, W).numpy()
    for i in range(32):
        x = images[i, 0].numpy()
        if p["flip"][i]:
            x = x[:, ::-1].copy()
        if p["affine"][i]:
            x = cv2.warpAffine(x, m[i], (W, H), borderMode=cv2.BORDER_REFLECT_101)
        x = x.astype(np.float64)
        if p["bc"][i]:
            x = np.clip(x * float(p["alpha"][i]) + float(p["beta"][i]), 0, 255)
        assert np.abs(out[i, 0].double().numpy() - x).max() <= 1.0, i


def test_seeded_per_image_and_shard_invariant():
    images = torch.randint(0, 256, (20, 1, H, W), dtype=torch.uint8)
    a = augment_batch_torch(images, 5)
    assert a.dtype == torch.float32 and a.shape == images.shape
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, augment_batch_torch(images, 5))
    assert not torch.equal(a, augment_batch_torch(images, 6))
    halves = torch.cat(
        [augment_batch_torch(images[:7], 5), augment_batch_torch(images[7:], 5, index_offset=7)]
    )
    assert torch.equal(a, halves)


def test_counter_uniforms_are_uniform_and_independent():
    u = counter_uniforms(3, torch.arange(20000), 4).numpy()
    for k in range(4):
        assert stats.kstest(u[:, k], "uniform").pvalue > ALPHA
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    images = torch.randint(0, 256, (16, 3, H, W), dtype=torch.uint8)
    cpu = augment_batch_torch(images, 3)
    gpu = augment_batch_torch(images.cuda(), 3).cpu()
    assert (cpu - gpu).abs().max() < 1e-4


def test_rgb_batch_for_a_grey_net_is_augmented_in_grey():
    """augment_for_net turns an RGB batch grey before augmenting it (a third of the warp):
    equal, to float rounding, to augmenting in RGB and taking the luma after, wherever no
    channel reaches the clamp (pixels 64..160 stay inside 0..255 for any contrast / brightness
    draw); a grey batch is augmented exactly as before."""
    from lowres.embed import InputAdapter, grey
    from lowres.train.loop import augment_for_net

    gen = torch.Generator().manual_seed(4)
    rgb = torch.randint(64, 161, (24, 3, H, W), dtype=torch.uint8, generator=gen)
    adapter = InputAdapter(channels="grey", size=(H, W))
    got = augment_for_net(rgb, 9, index_offset=0, adapter=adapter, then_adapt=False)
    want = grey(augment_batch_torch(rgb, 9))
    assert got.shape == (24, 1, H, W)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got, grey(rgb.float() / 255.0), atol=1e-2)  # it was augmented
    mono = rgb[:, :1]
    plain = augment_for_net(mono, 9, index_offset=0, adapter=adapter, then_adapt=False)
    assert torch.equal(plain, augment_batch_torch(mono, 9))


@pytest.mark.parametrize(
    "shape, net",
    [((40, 3, 112, 112), "grey"), ((30, 1, 112, 92), "grey"), ((70, 3, 40, 36), "rgb")],
)
def test_pieces_in_a_loader_worker_give_the_whole_batch(shape, net, monkeypatch):
    """``in_pieces`` (loader workers) augments a few images at a time; the tensor is the whole
    batch's bit for bit: pieces of the default size, and of 1 and 3 images, with and without
    the adapter, from an offset inside a global batch."""
    import lowres.train.loop as loop
    from lowres.embed import InputAdapter

    gen = torch.Generator().manual_seed(8)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    adapter = InputAdapter(channels=net, size=(28, 24))
    per_image = 4 * shape[-2] * shape[-1] * max(2, shape[1])
    for threshold in (loop.WORKER_MMAP_THRESHOLD, per_image, 3 * per_image):
        monkeypatch.setattr(loop, "WORKER_MMAP_THRESHOLD", threshold)
        assert threshold // per_image < shape[0]  # more than one piece
        for then_adapt in (True, False):
            kwargs = dict(index_offset=5, adapter=adapter, then_adapt=then_adapt)
            whole = loop.augment_for_net(images, 4, **kwargs)
            assert torch.equal(loop.augment_for_net(images, 4, in_pieces=True, **kwargs), whole)
