"""Tests for the procedural synthetic-identity faces (lowres.data.synthetic)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lowres.data import synthetic as syn
from lowres.data.synthetic import paint, params, split
from lowres.errors import ConfigError
from lowres.rng import hash32

SMALL = (56, 48)


def _lowbias32(x: int) -> int:
    """Pure-Python reference of the integer hash (32-bit unsigned arithmetic)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_hash_matches_pure_python_reference():
    values = [0, 1, 2, 12345, 0xDEADBEEF, 0xFFFFFFFF, 2**31, 77777777]
    got = hash32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [_lowbias32(v) for v in values]


def test_uniform_is_a_function_of_each_key_alone():
    keys = torch.tensor([3, 2**40 + 5, 17, 3], dtype=torch.int64)
    u = params._uniform(7, "identity", keys, 5)
    assert u.shape == (4, 5) and u.dtype == torch.float32
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert torch.equal(u[0], u[3])
    one = params._uniform(7, "identity", keys[1:2], 5)
    assert torch.equal(one[0], u[1])
    assert not torch.equal(params._uniform(8, "identity", keys, 5), u)
    assert not torch.equal(params._uniform(7, "family", keys, 5), u)


def test_identity_rows_do_not_depend_on_the_batch():
    full = syn.sample_identities(12, seed=3)
    part = syn.sample_identities(torch.tensor([9, 4]), seed=3)
    for name in ("index", "coarse", "texture", "marks"):
        assert torch.equal(getattr(part, name), getattr(full, name)[[9, 4]])
    lo = torch.tensor([v[0] for v in params._COARSE.values()])
    hi = torch.tensor([v[1] for v in params._COARSE.values()])
    assert bool(((full.coarse >= lo) & (full.coarse <= hi)).all())


def test_render_same_seeds_same_pixels_and_seeds_matter():
    ids = torch.tensor([0, 0, 5, syn.TEST_BASE + 2])
    samples = torch.tensor([0, 1, 0, 3])
    a = syn.render_faces(ids, samples, seed=1, size=SMALL)
    b = syn.render_faces(ids, samples, seed=1, size=SMALL)
    assert torch.equal(a, b)
    assert not torch.equal(a, syn.render_faces(ids, samples, seed=2, size=SMALL))
    c = syn.render_faces(ids, samples, seed=1, sample_seed=9, size=SMALL)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("channels", [1, 3])
def test_batch_rendering_equals_one_by_one(channels):
    # Repeated identities, several chunks, a test-range identity, and a shuffled order.
    ids = torch.tensor([0, 0, 0, 1, 2, 2, 3, 4, syn.TEST_BASE + 11, 1, 7])
    samples = torch.tensor([0, 1, 2, 0, 0, 5, 1, 2, 0, 9, 0])
    batch = syn.render_faces(ids, samples, seed=4, size=SMALL, channels=channels)
    for i in range(len(ids)):
        one = syn.render_faces(
            ids[i : i + 1], samples[i : i + 1], seed=4, size=SMALL, channels=channels
        )
        assert torch.equal(one[0], batch[i]), f"image {i} differs from its batch rendering"
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))
    shuffled = syn.render_faces(ids[perm], samples[perm], seed=4, size=SMALL, channels=channels)
    assert torch.equal(shuffled, batch[perm])


@pytest.mark.parametrize(("size", "channels"), [((112, 96), 1), ((112, 96), 3), ((37, 30), 3)])
def test_shapes_and_dtypes(size, channels):
    ids = syn.sample_identities(3, seed=0)
    nui = syn.sample_nuisance(3, seed=0)
    img = syn.render(ids, nui, size=size, channels=channels)
    assert img.shape == (3, channels, *size) and img.dtype == torch.uint8
    assert float(img.float().std()) > 10  # not blank


def test_grey_is_luma_of_colour():
    # Compositing is linear in colour, so before noise and clipping grey == luma(RGB) exactly.
    ids, nui = syn.sample_identities(4, seed=2), syn.sample_nuisance(4, seed=2)
    maps = paint._detail_maps(ids)
    h, w = SMALL
    gy = (torch.arange(h) + 0.5) * (2.0 / w) - h / w
    gx = (torch.arange(w) + 0.5) * (2.0 / w) - 1.0
    grid, soft = (gx[None, :], gy[:, None]), 2.4 / w
    grey = paint._render_chunk(paint._per_image(ids, nui, 1), maps, grid, soft)
    rgb = paint._render_chunk(paint._per_image(ids, nui, 3), maps, grid, soft)
    luma = (rgb * torch.tensor(paint._LUMA)[:, None, None]).sum(1, keepdim=True)
    torch.testing.assert_close(grey, luma, atol=1e-5, rtol=1e-5)


def test_difficulty_zero_removes_all_nuisance():
    knobs = syn.DEFAULT_KNOBS.with_(difficulty=0.0)
    img = syn.render_faces(torch.tensor([3, 3, 3]), torch.arange(3), knobs=knobs, size=SMALL)
    assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2])


def test_splits_are_identity_disjoint_and_labelled():
    train = syn.make_split("train", num_identities=12, images_per_identity=2, size=SMALL)
    test0 = syn.make_split("test", num_identities=6, images_per_identity=3, size=SMALL)
    test1 = syn.make_split("test", fold=1, num_identities=6, images_per_identity=3, size=SMALL)
    idx = [set(s.identity_index.tolist()) for s in (train, test0, test1)]
    assert not idx[0] & idx[1] and not idx[0] & idx[2] and not idx[1] & idx[2]
    assert not set(train.identities) & set(test0.identities)
    fam = [{i // syn.DEFAULT_KNOBS.family_size for i in s} for s in idx]
    assert not fam[0] & fam[1] and not fam[1] & fam[2]
    assert test0.images.shape == (18, 1, *SMALL) and test0.images.dtype == torch.uint8
    assert torch.equal(test0.labels, torch.arange(6).repeat_interleave(3))
    assert max(idx[0]) < syn.TEST_BASE <= min(idx[1])


def test_render_size_downsamples_with_area():
    ids, samples = torch.tensor([1, 2]), torch.tensor([0, 0])
    big = syn.render_faces(ids, samples, size=(112, 96)).float()
    small = syn.render_faces(ids, samples, size=(56, 48), render_size=(112, 96)).float()
    ref = torch.nn.functional.avg_pool2d(big, 2)
    assert float((small - ref).abs().max()) <= 0.5 + 1e-4


def test_same_identity_closer_than_different_identities():
    k, m = 16, 4
    split = syn.make_split("test", num_identities=k, images_per_identity=m, size=SMALL)
    x = split.images.flatten(1).float()
    d = torch.cdist(x, x)
    same = split.labels[:, None] == split.labels[None, :]
    off = ~torch.eye(len(x), dtype=torch.bool)
    assert float(d[same & off].mean()) < 0.9 * float(d[~same].mean())


def test_families_make_look_alikes():
    knobs = syn.DEFAULT_KNOBS
    ids = syn.sample_identities(4000, seed=0, knobs=knobs)
    z = torch.special.ndtri(
        (
            (ids.coarse - ids.coarse.min(0).values)
            / (ids.coarse.max(0).values - ids.coarse.min(0).values)
        ).clamp(1e-4, 1 - 1e-4)
    )
    sib = (z[0::4] * z[1::4]).mean()  # indices 4f and 4f+1 share a family
    stranger = (z[0::4][:-1] * z[4::4]).mean()  # neighbouring families
    s = knobs.family_spread
    assert abs(float(sib) - (1 - s * s)) < 0.08
    assert abs(float(stranger)) < 0.08


def test_load_synth_builds_a_face_dataset():
    ds = syn.load_synth("test", num_identities=3, images_per_identity=2, size=SMALL)
    assert ds.name == "synth" and len(ds) == 6 and ds.num_identities == 3
    assert ds.image_size == SMALL and ds.pairs is None
    assert ds.meta["preset"] == "cpu" and ds.meta["fold"] == 0


def test_down_up_and_sheets(tmp_path):
    img = syn.render_faces(torch.tensor([0]), torch.tensor([0]), size=SMALL)
    assert torch.equal(syn.down_up(img, 1.0), img)
    assert syn.down_up(img, 0.25).shape == img.shape
    sheet = syn.identity_sheet(2, 3, size=SMALL, channels=1)
    assert sheet.shape == (1, 2 * 56 + 2, 3 * 48 + 4) and sheet.dtype == torch.uint8
    scales = syn.scale_sheet(num_samples=2, size=SMALL, channels=3)
    assert scales.shape == (3, 2 * 56 + 2, 5 * 48 + 8)
    path = tmp_path / "s.png"
    written = syn.write_scale_sheet(path, num_samples=1)
    assert written == tmp_path / "s_scales.png" and written.exists()
    assert syn.scales_sheet_path("a/b.png") == Path("a/b_scales.png")


@pytest.mark.parametrize(
    "call",
    [
        lambda: syn.SynthKnobs(family_spread=0.0),
        lambda: syn.SynthKnobs(difficulty=-1.0),
        lambda: syn.DEFAULT_KNOBS.with_(no_such_knob=1),
        lambda: syn.make_split("val"),
        lambda: syn.make_split("test", preset="tpu"),
        lambda: syn.identity_indices("test", 5, fold=-1),
        lambda: syn.sample_identities(3, seed=-1),
        lambda: syn.render(syn.sample_identities(2), syn.sample_nuisance(3)),
        lambda: syn.render(syn.sample_identities(1), syn.sample_nuisance(1), channels=2),
        lambda: syn.down_up(torch.zeros(1, 1, 8, 8), 0.0),
    ],
)
def test_bad_input_raises_config_error(call):
    with pytest.raises(ConfigError):
        call()


def test_preset_knob_overrides_render_as_the_knobs_do():
    from lowres.data.synthetic import DEFAULT_KNOBS, make_split, parse_preset

    assert parse_preset(None) == ("cpu", {})
    assert parse_preset("cpu: texture_cycles=2 , marks=1") == (
        "cpu",
        {"texture_cycles": 2.0, "marks": 1},
    )
    small = dict(num_identities=3, images_per_identity=2)
    via_preset = make_split("test", "cpu:texture_cycles=2", 0, 0, **small)
    via_knobs = make_split(
        "test", "cpu", 0, 0, knobs=DEFAULT_KNOBS.with_(texture_cycles=2.0), **small
    )
    default = make_split("test", "cpu", 0, 0, **small)
    assert torch.equal(via_preset.images, via_knobs.images)
    assert not torch.equal(via_preset.images, default.images)
    assert via_preset.knobs.texture_cycles == 2.0


@pytest.mark.parametrize(
    "bad",
    [
        "gpx",
        "cpu:foo=1",
        "cpu:texture_cycles=x",
        "cpu:marks=2.5",
        "cpu:marks",
        "cpu:marks=1,marks=2",
    ],
)
def test_bad_preset_strings_are_config_errors(bad):
    from lowres.data.synthetic import parse_preset

    with pytest.raises(ConfigError):
        parse_preset(bad)


def test_rendered_splits_are_cached_on_disk_and_equal_a_fresh_render(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRES_CACHE", str(tmp_path / "cache"))
    kw = dict(num_identities=6, images_per_identity=3, size=(24, 20), render_size=(48, 40))
    fresh = syn.make_split("train", "cpu", 1, cache=False, **kw)
    first = syn.make_split("train", "cpu", 1, **kw)
    assert len(list((tmp_path / "cache" / "decoded").glob("synth-train*.pt"))) == 1
    calls = []
    real = syn.render_faces
    # make_split renders through its own module's name
    monkeypatch.setattr(split, "render_faces", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = syn.make_split("train", "cpu", 1, **kw)
    assert calls == []  # read from the cache, not rendered
    assert torch.equal(fresh.images, first.images) and torch.equal(fresh.images, again.images)
    # Anything the pixels depend on is a different entry, never a stale hit.
    for changed in (
        dict(kw, size=(20, 16)),
        dict(kw, images_per_identity=4),
        dict(kw, knobs=syn.SynthKnobs(texture_cycles=2.0)),
    ):
        other = syn.make_split("train", "cpu", 1, **changed).images
        assert torch.equal(other, syn.make_split("train", "cpu", 1, cache=False, **changed).images)
    assert len(calls) == 6  # each changed split rendered once for the cache, once fresh
    test_fold = syn.make_split("test", "cpu", 1, fold=1, **kw)
    assert not torch.equal(test_fold.images[:3], first.images[:3])
    # Both presets' splits are cached (the gpu preset's 12.9 GB training split too: rendered
    # once, then memory-mapped by every model); a split beyond 16 GiB is not.
    assert syn.is_cached_size("train", "cpu") and syn.is_cached_size("test", "cpu")
    assert syn.is_cached_size("train", "gpu")
    from lowres.data.synthetic import knobs

    assert 20000 * 20 * 3 * 112 * 96 < knobs.CACHE_MAX_BYTES < 20000 * 40 * 3 * 112 * 96


@pytest.mark.parametrize("preset", sorted(syn.PRESETS))
def test_every_preset_test_split_fits_a_sweep(preset):
    """`lowres sweep --preset P` stores every all-vs-all pair score; no preset may be refused."""
    from lowres.sweep import MAX_PAIRS

    pre = syn.PRESETS[preset]
    n = pre.test_identities * pre.test_images
    assert n * (n - 1) // 2 <= MAX_PAIRS
    # Enough genuine pairs for TAR intervals of a few points.
    assert pre.test_identities * pre.test_images * (pre.test_images - 1) // 2 >= 3000
