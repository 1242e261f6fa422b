"""Losses against independent references: float64 gradcheck, the paper's formulas, naive loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lowres.errors import ConfigError
from lowres.losses import (
    ArcFaceHead,
    CenterLoss,
    CosFaceHead,
    L2SoftmaxHead,
    RingLoss,
    SoftmaxHead,
    SphereFaceHead,
)
from lowres.losses import functional as LF
from lowres.methods import build_loss

D, C, B = 6, 5, 8


def _data(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=dtype) * 3.0
    y = torch.arange(B) % C
    w = torch.randn(C, D, generator=g, dtype=dtype)
    return x, y, w


# ---------------------------------------------------------------- naive references


def _cos(a, b) -> float:
    dot = sum(p * q for p, q in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(p * p for p in a)) * math.sqrt(sum(q * q for q in b)))


def _norm(a) -> float:
    return math.sqrt(sum(p * p for p in a))


def _naive_psi(cos_t: float, m: int) -> float:
    theta = math.acos(max(-1.0, min(1.0, cos_t)))
    k = min(math.floor(m * theta / math.pi), m - 1)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def _naive_logits(kind, x, y, w, b=None, **kw):
    out = []
    for i, row in enumerate(x.tolist()):
        logits = []
        for j, wj in enumerate(w.tolist()):
            c = _cos(row, wj)
            if kind == "SM":
                v = sum(p * q for p, q in zip(row, wj, strict=True)) + b[j].item()
            elif kind == "l2-SM":
                n = _norm(row)
                v = sum(kw["alpha"] * p / n * q for p, q in zip(row, wj, strict=True)) + b[j].item()
            elif kind == "SF":
                lam = kw["lam"]
                v = _norm(row) * c
                if j == int(y[i]):
                    v = _norm(row) * (lam * c + _naive_psi(c, kw["m"])) / (1 + lam)
            elif kind == "CosFace":
                v = kw["s"] * (c - (kw["m"] if j == int(y[i]) else 0.0))
            else:  # ArcFace
                v = kw["s"] * c
                if j == int(y[i]):
                    theta = math.acos(c)
                    m = kw["m"]
                    if kw.get("easy_margin"):
                        v = kw["s"] * (math.cos(theta + m) if c > 0 else c)
                    elif c > math.cos(math.pi - m):
                        v = kw["s"] * math.cos(theta + m)
                    else:
                        v = kw["s"] * (c - math.sin(math.pi - m) * m)
            logits.append(v)
        out.append(logits)
    return torch.tensor(out, dtype=torch.float64)


def _naive_ce(logits, y) -> float:
    total = 0.0
    for row, t in zip(logits.tolist(), y.tolist(), strict=True):
        mx = max(row)
        total += -(row[t] - mx - math.log(sum(math.exp(v - mx) for v in row)))
    return total / logits.shape[0]


# ---------------------------------------------------------------- Ring loss


def test_ring_loss_value_and_paper_gradients():
    x, _, _ = _data()
    x.requires_grad_(True)
    r = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    lam = 0.01
    loss = LF.ring_loss(x, r, lam)
    norms = [_norm(row) for row in x.tolist()]
    expected = lam / (2 * B) * sum((n - 4.0) ** 2 for n in norms)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert r.grad.item() == pytest.approx(-(lam / B) * sum(n - 4.0 for n in norms), rel=1e-12)
    grad_f = (lam / B) * (1 - 4.0 / x.detach().norm(dim=1, keepdim=True)) * x.detach()
    torch.testing.assert_close(x.grad, grad_f, rtol=1e-12, atol=1e-15)
    # the gradient is parallel to F: it changes lengths only
    cos = F.cosine_similarity(x.grad, x.detach(), dim=1).abs()
    torch.testing.assert_close(cos, torch.ones(B, dtype=torch.float64))


def test_ring_loss_gradcheck():
    x, _, _ = _data()
    r = torch.tensor(3.0, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda f, rr: LF.ring_loss(f, rr, 0.3), (x.requires_grad_(), r.requires_grad_())
    )


def test_ring_module_matches_functional_and_inits_from_first_batch():
    x, _, _ = _data(dtype=torch.float32)
    ring = RingLoss(0.01)
    assert not bool(ring.initialised)
    loss = ring(x)
    assert bool(ring.initialised)
    assert ring.radius.item() == pytest.approx(x.norm(dim=1).mean().item(), rel=1e-6)
    torch.testing.assert_close(loss, LF.ring_loss(x, ring.radius, 0.01))
    # a second batch must not re-initialise R
    r0 = ring.radius.item()
    ring(x * 5)
    assert ring.radius.item() == r0
    # resume: a fresh module loading the state keeps R and does not re-initialise
    fresh = RingLoss(0.01)
    fresh.load_state_dict(ring.state_dict())
    fresh(x * 7)
    assert fresh.radius.item() == r0 and bool(fresh.initialised)


def test_ring_constant_init_and_eval_before_init():
    ring = RingLoss(0.01, init=12.0)
    assert ring.radius.item() == 12.0 and bool(ring.initialised)
    x, _, _ = _data(dtype=torch.float32)
    lazy = RingLoss(0.01).eval()
    lazy(x)
    assert not bool(lazy.initialised) and lazy.radius.item() == 0.0
    for bad in ("first", -1.0, float("nan")):
        with pytest.raises(ConfigError):
            RingLoss(0.01, init=bad)
    with pytest.raises(ConfigError):
        RingLoss(-0.1)


# ---------------------------------------------------------------- Center loss


def test_center_loss_value_and_gradcheck():
    x, y, _ = _data()
    centers = torch.randn(C, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = (
        0.003
        / (2 * B)
        * sum(
            sum((a - c) ** 2 for a, c in zip(row, centers[t].tolist(), strict=True))
            for row, t in zip(x.tolist(), y.tolist(), strict=True)
        )
    )
    assert LF.center_loss(x, y, centers, 0.003).item() == pytest.approx(expected, rel=1e-12)
    assert torch.autograd.gradcheck(
        lambda f, c: LF.center_loss(f, y, c, 0.7), (x.requires_grad_(), centers.requires_grad_())
    )


def test_center_update_equals_naive_loop():
    x, y, _ = _data()
    y = torch.tensor([0, 0, 0, 2, 2, 4, 0, 2])  # class 1 and 3 absent
    centers = torch.randn(C, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    alpha = 0.5
    expected = centers.clone()
    for j in range(C):
        idx = [i for i in range(B) if int(y[i]) == j]
        delta = torch.zeros(D, dtype=torch.float64)
        for i in idx:
            delta += centers[j] - x[i]
        expected[j] = centers[j] - alpha * delta / (1 + len(idx))
    torch.testing.assert_close(LF.center_update(x, y, centers, alpha), expected)
    torch.testing.assert_close(expected[1], centers[1])
    # module: forward records, after_step applies the same rule, state is a checkpointed buffer
    mod = CenterLoss(C, D, weight=0.003, alpha=alpha).double()
    mod.centers.copy_(centers)
    loss = mod(x, y)
    torch.testing.assert_close(loss, LF.center_loss(x.float(), y, centers.float(), 0.003).double())
    torch.testing.assert_close(mod.centers, centers)  # not moved before the step
    mod.after_step()
    torch.testing.assert_close(mod.centers, expected, rtol=1e-6, atol=1e-6)
    assert "centers" in mod.state_dict()


def test_center_update_reduce_hook_sums_like_one_big_batch():
    x, y, _ = _data()
    centers = torch.zeros(C, D, dtype=torch.float64)
    other = LF.class_sums(x[4:], y[4:], C)
    split = LF.center_update(x[:4], y[:4], centers, 0.5, reduce=lambda s: s + other)
    torch.testing.assert_close(split, LF.center_update(x, y, centers, 0.5))


# ---------------------------------------------------------------- SphereFace


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_psi_is_cos_m_theta_then_monotone(m):
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    psi = LF.sphereface_psi(torch.cos(theta), m)
    first = theta <= math.pi / m - 1e-6
    torch.testing.assert_close(psi[first], torch.cos(m * theta[first]), rtol=0, atol=1e-9)
    assert (psi[1:] - psi[:-1] <= 1e-9).all()
    assert psi[0].item() == pytest.approx(1.0) and psi[-1].item() == pytest.approx(1 - 2 * m)
    naive = torch.tensor([_naive_psi(math.cos(t), m) for t in theta[1:-1].tolist()])
    torch.testing.assert_close(psi[1:-1], naive.double(), rtol=0, atol=1e-6)


def test_psi_gradcheck_away_from_kinks():
    # kinks at theta = k pi / 4; sample strictly inside each piece
    theta = torch.tensor([0.3, 0.7, 1.0, 1.4, 1.9, 2.5, 2.9], dtype=torch.float64)
    cos = torch.cos(theta).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: LF.sphereface_psi(c, 4), (cos,))
    # finite at the ends, where d acos / dx is infinite
    ends = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    LF.sphereface_psi(ends, 4).sum().backward()
    assert torch.isfinite(ends.grad).all()


def test_sphereface_lambda_schedule():
    assert LF.sphereface_lambda(0) == 1000.0
    assert LF.sphereface_lambda(10) == pytest.approx(1000 / 2.2)
    assert LF.sphereface_lambda(10**6) == 5.0
    with pytest.raises(ConfigError):
        LF.sphereface_lambda(-1)


def test_sphereface_annealing_state_round_trips():
    head = SphereFaceHead(D, C)
    for _ in range(7):
        head.after_step()
    assert int(head.iteration) == 7
    assert head.lambda_sf == pytest.approx(1000 / (1 + 0.12 * 7))
    fresh = SphereFaceHead(D, C)
    fresh.load_state_dict(head.state_dict())
    assert int(fresh.iteration) == 7 and fresh.lambda_sf == head.lambda_sf
    head.eval().after_step()
    assert int(head.iteration) == 7  # eval never advances the schedule
    loss = build_loss("SF+R(0.01)", D, C)
    loss.after_step()
    assert loss.state_dict()["head.iteration"].item() == 1


# ---------------------------------------------------------------- heads vs naive loops


def _heads():
    torch.manual_seed(0)
    return [
        ("SM", SoftmaxHead(D, C), {}),
        ("l2-SM", L2SoftmaxHead(D, C, alpha=20.0), {"alpha": 20.0}),
        ("SF", SphereFaceHead(D, C, m=4), {"m": 4}),
        ("CosFace", CosFaceHead(D, C, s=30.0, m=0.35), {"s": 30.0, "m": 0.35}),
        ("ArcFace", ArcFaceHead(D, C, s=64.0, m=0.5), {"s": 64.0, "m": 0.5}),
        (
            "ArcFace",
            ArcFaceHead(D, C, s=64.0, m=0.5, easy_margin=True),
            {"s": 64.0, "m": 0.5, "easy_margin": True},
        ),
    ]


@pytest.mark.parametrize("index", range(6))
def test_head_logits_and_loss_equal_naive_loop(index):
    kind, head, kw = _heads()[index]
    head = head.double()
    x, y, _ = _data(seed=index)
    # place some targets past pi - m so the ArcFace guard branch is exercised
    x[0] = -head.weight[y[0]].detach() * 2 + 0.01
    if kind == "SF":
        for _ in range(30):
            head.after_step()
        kw["lam"] = head.lambda_sf
    bias = getattr(head, "bias", None)
    expected = _naive_logits(kind, x, y, head.weight.detach(), bias, **kw)
    with torch.no_grad():
        got = head.train_logits(x, y)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    loss = F.cross_entropy(expected, y)
    assert loss.item() == pytest.approx(_naive_ce(expected, y), rel=1e-9)
    # forward computes in float32: compare against the float64 reference loosely
    out = head.float()(x.float(), y)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-4, abs=1e-4)


def test_plain_logits_have_no_margin():
    x, y, _ = _data(dtype=torch.float32)
    for kind, head, kw in _heads():
        logits = head(x, y).logits
        cos = LF.normalised_linear(x, head.weight)
        if kind in ("CosFace", "ArcFace"):
            torch.testing.assert_close(logits, kw["s"] * cos)
        elif kind == "SF":
            torch.testing.assert_close(logits, x.norm(dim=1, keepdim=True) * cos)
        else:
            torch.testing.assert_close(logits, head.train_logits(x, y))


def test_heads_module_equals_functional():
    x, y, _ = _data(dtype=torch.float32)
    _, sm, _ = _heads()[0]
    torch.testing.assert_close(sm.train_logits(x, y), F.linear(x, sm.weight, sm.bias))
    l2 = L2SoftmaxHead(D, C, alpha=10.0)
    torch.testing.assert_close(
        l2.train_logits(x, y), LF.l2_softmax_logits(x, l2.weight, l2.bias, 10.0)
    )
    sf = SphereFaceHead(D, C)
    torch.testing.assert_close(
        sf.train_logits(x, y), LF.sphereface_logits(x, sf.weight, y, 4, 1000.0)
    )
    cf = CosFaceHead(D, C)
    torch.testing.assert_close(cf.train_logits(x, y), LF.cosface_logits(x, cf.weight, y, 64, 0.35))
    af = ArcFaceHead(D, C)
    torch.testing.assert_close(af.train_logits(x, y), LF.arcface_logits(x, af.weight, y, 64, 0.5))


def test_margin_logit_gradcheck():
    x, y, w = _data()
    x.requires_grad_(True)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: LF.cosface_logits(a, b, y, 8.0, 0.35), (x, w))
    assert torch.autograd.gradcheck(lambda a, b: LF.arcface_logits(a, b, y, 8.0, 0.5), (x, w))
    assert torch.autograd.gradcheck(
        lambda a, b: LF.sphereface_logits(a, b, y, 4, 3.0), (x, w), atol=1e-5
    )


@pytest.mark.parametrize("method", ["SM+CL", "SF+R(0.01)", "l2-SM(30)", "ArcFace+R(0.01)"])
def test_float32_under_bf16_autocast(method):
    torch.manual_seed(0)
    loss_fn = build_loss(method, D, C)
    lin = torch.nn.Linear(D, D)
    x, y, _ = _data(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = lin(x)
        assert feats.dtype == torch.bfloat16
        out = loss_fn(feats, y)
    assert out.loss.dtype == torch.float32 and out.logits.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in out.parts.values())
    ref = build_loss(method, D, C)
    ref.load_state_dict(loss_fn.state_dict())
    if ref.ring is not None:
        ref.ring.initialised.fill_(False)
    expected = ref(feats.float(), y)
    torch.testing.assert_close(out.loss, expected.loss)
    out.loss.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


# ---------------------------------------------------------------- MethodLoss


def test_method_loss_parts_groups_and_stats():
    torch.manual_seed(0)
    loss_fn = build_loss("SF+R(0.01)+CL", D, C, ring_lr_mult=2.0)
    x, y, _ = _data(dtype=torch.float32)
    out = loss_fn(x, y)
    assert set(out.parts) == {"head", "ring", "center"}
    assert out.loss.item() == pytest.approx(sum(v.item() for v in out.parts.values()), rel=1e-6)
    assert out.logits.shape == (B, C)
    groups = loss_fn.param_groups(lr=0.1, weight_decay=5e-4)
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["weight_decay"] == 5e-4
    assert by_name["ring_radius"] == {
        "params": [loss_fn.ring.radius],
        "lr": 0.2,
        "weight_decay": 0.0,
        "name": "ring_radius",
    }
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in loss_fn.parameters())
    centers_before = loss_fn.center.centers.clone()
    loss_fn.after_step()
    stats = loss_fn.stats()
    assert set(stats) == {"R", "lambda_sf"}
    assert stats["lambda_sf"] == pytest.approx(1000 / 1.12)
    assert not torch.equal(loss_fn.center.centers, centers_before)
    assert "center.centers" in loss_fn.state_dict()
    learn = build_loss("l2-SM(30)", D, C, l2_learnable=True)
    assert {g["name"] for g in learn.param_groups(0.1, 5e-4)} == {"head", "head_scalars"}
    assert learn.stats() == {"alpha": 30.0}


def test_seeded_build_is_reproducible_and_leaves_global_rng():
    state = torch.random.get_rng_state()
    a = build_loss("ArcFace", D, C, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_loss("ArcFace", D, C, seed=3)
    assert torch.equal(a.head.weight, b.head.weight)


def test_bad_inputs_raise_config_error():
    x, y, _ = _data(dtype=torch.float32)
    head = SoftmaxHead(D, C)
    with pytest.raises(ConfigError):
        head(x[:, :3], y)
    with pytest.raises(ConfigError):
        head(x, y + C)
    with pytest.raises(ConfigError):
        head(x, y[:3])
    with pytest.raises(ConfigError):
        SphereFaceHead(D, C, m=0)
    with pytest.raises(ConfigError):
        ArcFaceHead(D, C, m=2.0)
    with pytest.raises(ConfigError):
        SoftmaxHead(D, 1)
    with pytest.raises(ConfigError):
        LF.ring_loss(torch.zeros(0, D), 1.0, 0.1)
