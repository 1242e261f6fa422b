"""lowres.embed: adapters, flip fusion, degrade-once batching vs a slow per-image path."""

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowres.degrade
from lowres.embed import Embeddings, InputAdapter, adapt, embed_many, pick_device
from lowres.errors import ConfigError, DataError


class TinyNet(nn.Module):
    """A small deterministic embedding net with BatchNorm (eval mode must be used)."""

    def __init__(self, in_channels: int, size: tuple[int, int], dim: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(in_channels, 4, 3, 2, 1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * math.ceil(size[0] / 2) * math.ceil(size[1] / 2), dim)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.1, 0.1)
            self.bn.running_var.uniform_(0.5, 1.5)

    def embed(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _images(n=7, c=3, h=24, w=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def _slow_adapt(x, adapter):
    """Independent adapter: explicit channel maths, torch interpolate, explicit normalisation."""
    if adapter.channels == "grey" and x.shape[1] == 3:
        x = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    elif adapter.channels != "grey" and x.shape[1] == 1:
        x = torch.cat([x, x, x], dim=1)
    elif adapter.channels == "bgr":
        x = x[:, [2, 1, 0]]
    if tuple(x.shape[-2:]) != adapter.size:
        x = F.interpolate(x, size=adapter.size, mode="bilinear", antialias=True)
    return (x * 255 - adapter.mean) / adapter.std


def _slow_embed(images, model, adapter, scale, spec, seed):
    """One image at a time: degrade -> adapter -> model (and its mirror) -> fuse."""
    model.eval()
    feats, norms = [], []
    with torch.no_grad():
        for i in range(images.shape[0]):
            x = images[i : i + 1].double().div(255).float()
            x = lowres.degrade.degrade(x, scale, spec, seed=seed, index_offset=i)
            x = _slow_adapt(x, adapter)
            f = model.embed(x)[0]
            norms.append(f.norm())
            if adapter.flip == "sum":
                f = f + model.embed(torch.flip(x, dims=[3]))[0]
            elif adapter.flip == "concat":
                f = torch.cat([f, model.embed(torch.flip(x, dims=[3]))[0]])
            feats.append(f)
    return torch.stack(feats), torch.stack(norms)


def test_embed_many_equals_slow_per_image_path():
    images = _images()
    models = {
        "grey_small_sum": (
            TinyNet(1, (16, 14), seed=1),
            InputAdapter("grey", (16, 14), flip="sum"),
        ),
        "rgb_concat": (TinyNet(3, (24, 20), seed=2), InputAdapter("rgb", (24, 20), flip="concat")),
        "bgr_big": (TinyNet(3, (30, 26), seed=3), InputAdapter("bgr", (30, 26), mean=0, std=255)),
    }
    spec = "bicubic+blur0.8+noise0.03>bilinear"
    out = embed_many(images, models, 0.5, spec, batch_size=3, device="cpu", seed=4)
    assert set(out) == set(models)
    for name, (model, adapter) in models.items():
        feats, norms = _slow_embed(images, model, adapter, 0.5, spec, seed=4)
        assert isinstance(out[name], Embeddings)
        assert out[name].features.dtype == torch.float32 and out[name].norms.dtype == torch.float32
        assert out[name].features.shape == feats.shape
        torch.testing.assert_close(out[name].features, feats, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[name].norms, norms, atol=1e-5, rtol=1e-5)


def test_batch_size_and_size_px_do_not_change_results():
    images = _images(n=9)
    models = {"m": (TinyNet(3, (24, 20)), InputAdapter("rgb", (24, 20)))}
    spec = "area+noise0.05+jpeg50>bicubic"
    a = embed_many(images, models, 0.5, spec, batch_size=2, seed=1)["m"]
    b = embed_many(images, models, 0.5, spec, batch_size=9, seed=1)["m"]
    c = embed_many(images, models, 0.1, spec, size_px=10, batch_size=4, seed=1)["m"]
    torch.testing.assert_close(a.features, b.features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.features, c.features, atol=1e-5, rtol=1e-5)
    other_seed = embed_many(images, models, 0.5, spec, batch_size=9, seed=2)["m"]
    assert not torch.allclose(a.features, other_seed.features)


def test_degrade_runs_once_per_batch_for_all_models(monkeypatch):
    calls = []
    real = lowres.degrade.degrade

    def counting(images, *args, **kwargs):
        calls.append(images.shape[0])
        return real(images, *args, **kwargs)

    monkeypatch.setattr(lowres.degrade, "degrade", counting)
    models = {
        f"m{i}": (TinyNet(3, (24, 20), seed=i), InputAdapter("rgb", (24, 20))) for i in range(3)
    }
    embed_many(_images(n=10), models, 0.25, batch_size=4)
    assert calls == [4, 4, 2]


def test_adapter_channel_conversions_and_normalisation():
    rgb = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    grey = rgb[:, :1]
    # RGB -> grey equals OpenCV's RGB2GRAY on the same float pixels.
    out = adapt(rgb, InputAdapter("grey", (12, 10), mean=0.0, std=255.0))
    cv = cv2.cvtColor(rgb[0].permute(1, 2, 0).numpy(), cv2.COLOR_RGB2GRAY)
    assert out.shape == (2, 1, 12, 10)
    np.testing.assert_allclose(out[0, 0].numpy(), cv, atol=1e-6)
    # grey -> RGB/BGR replicates; RGB -> BGR reverses the channels.
    rep = adapt(grey, InputAdapter("rgb", (12, 10), mean=0.0, std=255.0))
    assert rep.shape == (2, 3, 12, 10) and torch.allclose(rep, grey.expand(-1, 3, -1, -1))
    bgr = adapt(rgb, InputAdapter("bgr", (12, 10), mean=0.0, std=255.0))
    assert torch.allclose(bgr, rgb[:, [2, 1, 0]])
    # SphereFace normalisation (p - 127.5) / 128 on 0..255.
    norm = adapt(torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2), InputAdapter("grey", (1, 2)))
    assert torch.allclose(norm.flatten(), torch.tensor([-127.5 / 128, 127.5 / 128]))
    # Resizing is antialiased bilinear, as torch interpolate(antialias=True).
    small = adapt(rgb, InputAdapter("rgb", (5, 4), mean=0.0, std=255.0))
    ref = F.interpolate(rgb, size=(5, 4), mode="bilinear", antialias=True)
    assert torch.allclose(small, ref, atol=1e-6)


def test_flip_fusion_dims_and_values():
    images = _images(n=5)
    model = TinyNet(3, (24, 20), dim=8)
    out = {
        flip: embed_many(images, {"m": (model, InputAdapter("rgb", (24, 20), flip=flip))})["m"]
        for flip in ("none", "sum", "concat")
    }
    assert out["none"].features.shape == (5, 8)
    assert out["sum"].features.shape == (5, 8)
    assert out["concat"].features.shape == (5, 16)
    plain, mirrored = out["concat"].features[:, :8], out["concat"].features[:, 8:]
    torch.testing.assert_close(plain, out["none"].features)
    torch.testing.assert_close(plain + mirrored, out["sum"].features)
    for flip in out:  # norms always describe the un-flipped embedding
        torch.testing.assert_close(out[flip].norms, out["none"].features.norm(dim=1))


def test_training_flag_restored_and_eval_used():
    model = TinyNet(3, (24, 20)).train()
    a = embed_many(_images(), {"m": (model, InputAdapter("rgb", (24, 20)))})["m"]
    assert model.training
    b = embed_many(_images(), {"m": (model, InputAdapter("rgb", (24, 20)))})["m"]
    torch.testing.assert_close(a.features, b.features)  # BatchNorm statistics untouched


def test_adapter_for_model():
    class Face(TinyNet):
        in_channels, input_size = 1, (16, 14)

    adapter = InputAdapter.for_model(Face(1, (16, 14)), flip="sum")
    assert adapter == InputAdapter("grey", (16, 14), flip="sum")


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None).type in ("cpu", "cuda")
    assert pick_device("auto") == pick_device(None)
    with pytest.raises(ConfigError):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            pick_device("cuda")


def test_bad_inputs():
    models = {"m": (TinyNet(3, (24, 20)), InputAdapter("rgb", (24, 20)))}
    with pytest.raises(DataError):
        embed_many(_images().float(), models)
    with pytest.raises(DataError):
        embed_many(_images(c=2), models)
    with pytest.raises(ConfigError):
        embed_many(_images(), {"m": (nn.Linear(2, 2), InputAdapter("rgb", (24, 20)))})
    with pytest.raises(ConfigError):
        embed_many(_images(), {})
    for kwargs in (dict(scale=0.0), dict(scale=1.5), dict(size_px=21), dict(batch_size=0)):
        with pytest.raises(ConfigError):
            embed_many(_images(), models, **kwargs)
    with pytest.raises(ConfigError):
        embed_many(_images(), models, spec="lanczos>bicubic")
    for kwargs in (dict(channels="yuv"), dict(flip="both"), dict(size=(0, 4)), dict(std=0)):
        with pytest.raises(ConfigError):
            InputAdapter(**{"channels": "rgb", "size": (4, 4), **kwargs})
