"""Model registry and shapes: every model maps its input size to (B, embed_dim)."""

from __future__ import annotations

import pytest
import torch

from lowres.errors import ConfigError
from lowres.models import FaceModel, create, list_models, register
from lowres.models.sphereface import SPHERE_UNITS

EXPECTED = {
    "cpunet": (128, (56, 48), 1),
    "cpunet-s": (128, (56, 48), 1),
    "lenetpp": (2, (28, 28), 1),
    **{f"sphere{d}": (512, (112, 96), 3) for d in (4, 10, 20, 36, 64)},
}
"""What the paper-facing models must keep; every other registered model is still tested below."""

REGISTERED = list_models()
"""Generated from the registry: a newly registered model gets every shape test below."""


def _meta_model(name):
    with torch.device("meta"):
        return create(name)


def test_registry_lists_the_paper_models():
    assert set(EXPECTED) <= set(REGISTERED)


@pytest.mark.parametrize("name", REGISTERED)
def test_every_model_embeds_its_input_size(name):
    # shapes on the meta device: no compute, so the 36/64-layer nets cost nothing here
    with torch.device("meta"):
        model = create(name)
        assert isinstance(model, FaceModel)
        out = model(torch.empty(2, model.in_channels, *model.input_size))
    assert out.shape == (2, model.embed_dim) and out.dtype == torch.float32
    if name in EXPECTED:
        assert (model.embed_dim, model.input_size, model.in_channels) == EXPECTED[name]
    if name.startswith("sphere"):
        depth = int(name[len("sphere") :])
        assert 4 + 2 * sum(SPHERE_UNITS[depth]) == depth
        assert sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d)) == depth


_REAL_FORWARD_MAX_PARAMS = 30_000_000
"""Models up to this size run a real forward pass in the tests (sphere36/64 only on meta)."""


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in REGISTERED
        if sum(p.numel() for p in _meta_model(n).parameters()) <= _REAL_FORWARD_MAX_PARAMS
    ],
)
def test_real_forward_and_channels_last_agree(name):
    model = create(name, seed=0).eval()
    dim, size, channels = model.embed_dim, model.input_size, model.in_channels
    big = sum(p.numel() for p in model.parameters()) > 20_000_000  # sphere20: batch 1 only
    batch = 1 if big else 2
    x = torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = model(x)
        assert out.shape == (batch, dim) and torch.isfinite(out).all()
        torch.testing.assert_close(model.embed(x), out)
        if big:
            return
        last = model.to(memory_format=torch.channels_last)
        got = last(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, out, rtol=1e-4, atol=1e-4)


def test_sphere_unit_counts_match_original():
    assert SPHERE_UNITS == {
        4: (0, 0, 0, 0),
        10: (0, 1, 2, 0),
        20: (1, 2, 4, 1),
        36: (2, 4, 8, 2),
        64: (3, 8, 16, 3),
    }


@pytest.mark.parametrize(
    ("name", "size", "channels"),
    [
        ("cpunet", (16, 16), 1),
        ("cpunet", (17, 15), 3),
        ("lenetpp", (16, 18), 1),
        ("sphere4", (24, 20), 1),
    ],
)
def test_overrides(name, size, channels):
    model = create(name, input_size=size, in_channels=channels, embed_dim=16).train()
    out = model(torch.randn(2, channels, *size))
    assert out.shape == (2, 16)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_seed_reproducible_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a, b = create("cpunet", seed=1), create("cpunet", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_cpunet_embedding_is_plain_linear_output():
    model = create("cpunet")
    assert isinstance(list(model.children())[-1], torch.nn.Linear)


def test_errors():
    with pytest.raises(ConfigError, match="cpunet"):
        create("resnet1000")
    with pytest.raises(ConfigError):
        create("cpunet", depth=3)
    with pytest.raises(ConfigError):
        create("cpunet", in_channels=2)
    with pytest.raises(ConfigError):
        create("cpunet", input_size=(4, 4))
    with pytest.raises(ConfigError):
        create("lenetpp", input_size=(28,))
    model = create("lenetpp")
    with pytest.raises(ConfigError):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ConfigError):
        register("cpunet")(lambda: model)
