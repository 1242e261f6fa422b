"""AdaFace and MagFace heads against float64 transcriptions of their official code.

The references below are written from the official sources, not from lowres:
AdaFace from github.com/mk-minchul/AdaFace ``head.py`` (class ``AdaFace``), MagFace from
github.com/IrvingMeng/MagFace ``models/magface.py`` (``MagLinear``, ``MagLoss``,
``SoftmaxBuilder._margin``) and ``run/trainer.py`` (``loss = loss_id + lambda_g * loss_g``).
They keep the official layout (a (D, C) kernel normalised over dim 0, one-hot masks built with
``scatter_``, every class's cosine sent through acos/cos for AdaFace) so that they share no code
path with :mod:`lowres.losses.functional`.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from lowres.cli import cli
from lowres.errors import ConfigError
from lowres.losses import AdaFaceHead, ArcFaceHead, CosFaceHead, MagFaceHead, SoftmaxHead
from lowres.losses import functional as LF
from lowres.methods import build_loss, parse_method

D, C, B = 6, 5, 8


def _data(seed: int = 0, norms=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    scale = torch.linspace(8.0, 30.0, B, dtype=torch.float64) if norms is None else norms
    y = torch.arange(B) % C
    return x * torch.as_tensor(scale, dtype=torch.float64).unsqueeze(1), y


# ---------------------------------------------------------------- official transcriptions


def _official_adaface(x, kernel, label, *, m, h, s, t_alpha, batch_mean, batch_std, train):
    """AdaFace's ``head.py`` forward (backbone hands it ``l2_norm(x)`` and ``||x||``)."""
    eps = 1e-3
    norms = torch.norm(x, 2, 1, True)
    embbedings = torch.div(x, norms)
    kernel_norm = torch.div(kernel, torch.norm(kernel, 2, 0, True))
    cosine = torch.mm(embbedings, kernel_norm)
    cosine = cosine.clamp(-1 + eps, 1 - eps)
    safe_norms = torch.clip(norms, min=0.001, max=100)
    safe_norms = safe_norms.clone().detach()
    if train:  # the official head always updates; lowres only in training mode
        with torch.no_grad():
            mean = safe_norms.mean().detach()
            std = safe_norms.std().detach()
            batch_mean = mean * t_alpha + (1 - t_alpha) * batch_mean
            batch_std = std * t_alpha + (1 - t_alpha) * batch_std
    margin_scaler = (safe_norms - batch_mean) / (batch_std + eps)
    margin_scaler = margin_scaler * h
    margin_scaler = torch.clip(margin_scaler, -1, 1)
    m_arc = torch.zeros(label.size()[0], cosine.size()[1], dtype=x.dtype)
    m_arc.scatter_(1, label.reshape(-1, 1), 1.0)
    g_angular = m * margin_scaler * -1
    m_arc = m_arc * g_angular
    theta = cosine.acos()
    theta_m = torch.clip(theta + m_arc, min=eps, max=math.pi - eps)
    cosine = theta_m.cos()
    m_cos = torch.zeros(label.size()[0], cosine.size()[1], dtype=x.dtype)
    m_cos.scatter_(1, label.reshape(-1, 1), 1.0)
    g_add = m + (m * margin_scaler)
    m_cos = m_cos * g_add
    cosine = cosine - m_cos
    return cosine * s, batch_mean, batch_std


def _official_magface(x, weight, target, *, l_a, u_a, l_margin, u_margin, lambda_g, scale, easy):
    """MagFace's ``MagLinear`` + ``MagLoss`` + the trainer's ``loss_id + lambda_g * loss_g``."""
    x_norm = torch.norm(x, dim=1, keepdim=True).clamp(l_a, u_a)
    ada_margin = (u_margin - l_margin) / (u_a - l_a) * (x_norm - l_a) + l_margin
    cos_m, sin_m = torch.cos(ada_margin), torch.sin(ada_margin)
    weight_norm = F.normalize(weight, dim=0)
    cos_theta = torch.mm(F.normalize(x), weight_norm)
    cos_theta = cos_theta.clamp(-1, 1)
    sin_theta = torch.sqrt(1.0 - torch.pow(cos_theta, 2))
    cos_theta_m = cos_theta * cos_m - sin_theta * sin_m
    if easy:
        cos_theta_m = torch.where(cos_theta > 0, cos_theta_m, cos_theta)
    else:
        mm = torch.sin(math.pi - ada_margin) * ada_margin
        threshold = torch.cos(math.pi - ada_margin)
        cos_theta_m = torch.where(cos_theta > threshold, cos_theta_m, cos_theta - mm)
    cos_theta_m = scale * cos_theta_m
    cos_theta = scale * cos_theta
    loss_g = torch.mean(1 / (u_a**2) * x_norm + 1 / (x_norm))
    one_hot = torch.zeros_like(cos_theta)
    one_hot.scatter_(1, target.view(-1, 1), 1.0)
    output = one_hot * cos_theta_m + (1.0 - one_hot) * cos_theta
    loss_id = F.cross_entropy(output, target, reduction="mean")
    return loss_id + lambda_g * loss_g, output, cos_theta


def _ada(**kw) -> AdaFaceHead:
    torch.manual_seed(0)
    return AdaFaceHead(D, C, **kw).double()


def _mag(**kw) -> MagFaceHead:
    torch.manual_seed(0)
    return MagFaceHead(D, C, **kw).double()


# ---------------------------------------------------------------- AdaFace


def test_adaface_defaults_and_initial_buffers():
    head = AdaFaceHead(D, C)
    assert (head.m, head.h, head.s, head.t_alpha) == (0.4, 0.333, 64.0, 0.01)
    assert head.batch_mean.item() == 20.0 and head.batch_std.item() == 100.0
    assert {"batch_mean", "batch_std"} <= set(head.state_dict())


@pytest.mark.parametrize(
    ("m", "h", "s", "t_alpha"), [(0.4, 0.333, 64.0, 0.01), (0.5, 1.0, 30.0, 0.5)]
)
def test_adaface_two_training_steps_equal_official(m, h, s, t_alpha):
    head = _ada(m=m, h=h, s=s, t_alpha=t_alpha).train()
    kernel = head.weight.detach().t().contiguous()
    mean, std = torch.tensor(20.0, dtype=torch.float64), torch.tensor(100.0, dtype=torch.float64)
    for step in range(2):
        x, y = _data(seed=step, norms=torch.linspace(2.0, 60.0, B) * (1 + step))
        x_ref = x.clone().requires_grad_(True)
        logits, mean, std = _official_adaface(
            x_ref, kernel, y, m=m, h=h, s=s, t_alpha=t_alpha, batch_mean=mean, batch_std=std,
            train=True,
        )  # fmt: skip
        loss_ref = F.cross_entropy(logits, y)
        loss_ref.backward()
        x_got = x.clone().requires_grad_(True)
        out = head(x_got, y)
        out.loss.backward()
        # the EMA moved before the margin was computed, exactly as the official forward
        assert head.batch_mean.item() == pytest.approx(mean.item(), rel=1e-12)
        assert head.batch_std.item() == pytest.approx(std.item(), rel=1e-12)
        assert out.loss.item() == pytest.approx(loss_ref.item(), rel=1e-10)
        torch.testing.assert_close(x_got.grad, x_ref.grad, rtol=1e-8, atol=1e-12)
        with torch.no_grad():
            head.eval()
            torch.testing.assert_close(head.train_logits(x, y), logits, rtol=1e-10, atol=1e-10)
            head.train()
    assert mean.item() != 20.0  # the statistics really moved


def test_adaface_ema_uses_unbiased_std_and_moves_before_the_margin():
    x, y = _data()
    norms = x.norm(dim=1)
    head = _ada(t_alpha=0.5).train()
    head(x, y)
    assert head.batch_mean.item() == pytest.approx(0.5 * norms.mean().item() + 10.0)
    assert head.batch_std.item() == pytest.approx(0.5 * norms.std(unbiased=True).item() + 50.0)
    # the margin of that step read the updated statistics, not the initial 20 / 100
    stale = _ada(t_alpha=0.5).eval()
    with torch.no_grad():
        assert not torch.allclose(head.eval().train_logits(x, y), stale.train_logits(x, y))


def test_adaface_eval_mode_keeps_buffers_and_state_dict_round_trips():
    head = _ada().train()
    for step in range(3):
        head(*_data(seed=step))
    trained = {k: v.clone() for k, v in head.state_dict().items()}
    head.eval()
    head(*_data(seed=9))
    head.train_logits(*_data(seed=10))
    assert torch.equal(head.batch_mean, trained["batch_mean"])
    assert torch.equal(head.batch_std, trained["batch_std"])
    fresh = _ada()
    fresh.load_state_dict(head.state_dict())
    assert fresh.batch_mean.item() == trained["batch_mean"].item() != 20.0
    assert fresh.batch_std.item() == trained["batch_std"].item() != 100.0
    x, y = _data(seed=11)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x, y).loss, head(x, y).loss, rtol=0, atol=0)
    loss = build_loss("AdaFace+R(0.01)", D, C)
    x, y = _data()
    loss(x.float(), y)
    assert {"head.batch_mean", "head.batch_std"} <= set(loss.state_dict())


def test_adaface_scaler_saturates_and_norms_clip():
    head = _ada(m=0.4, h=0.333, s=64.0).eval()
    head.batch_mean.fill_(10.0)
    head.batch_std.fill_(1.0)
    x, y = _data(norms=torch.tensor([0.5, 1e-5, 50.0, 100.0, 1000.0, 10.0, 10.5, 9.0]))
    scaler = LF.adaface_margin_scaler(LF.adaface_norms(x), head.batch_mean, head.batch_std, 0.333)
    assert scaler[:2].tolist() == [-1.0, -1.0] and scaler[2:5].tolist() == [1.0, 1.0, 1.0]
    assert scaler[5].item() == 0.0
    assert scaler[6].item() == pytest.approx(0.5 / 1.001 * 0.333)
    # norms clip to [0.001, 100]: 1000 reads as 100, 1e-5 as 0.001
    assert LF.adaface_norms(x)[[1, 4]].tolist() == pytest.approx([0.001, 100.0], rel=1e-12)
    with torch.no_grad():
        logits = head.train_logits(x, y)
    cos = F.normalize(x) @ F.normalize(head.weight).t()
    cos_y = cos.gather(1, y.unsqueeze(1)).squeeze(1).clamp(-1 + 1e-3, 1 - 1e-3)
    got = logits.gather(1, y.unsqueeze(1)).squeeze(1) / 64.0
    theta = torch.acos(cos_y)
    # z = -1: ArcFace's cos(theta + m), no additive part; z = +1: cos(theta - m) - 2m
    low = torch.cos((theta + 0.4).clamp(1e-3, math.pi - 1e-3))
    high = torch.cos((theta - 0.4).clamp(1e-3, math.pi - 1e-3)) - 0.8
    torch.testing.assert_close(got[:2], low[:2])
    torch.testing.assert_close(got[2:5], high[2:5])
    torch.testing.assert_close(got[5], cos_y[5] - 0.4)  # z = 0: CosFace's margin


def test_adaface_angle_clip_at_eps():
    """A target already at theta < m with z = +1 clips at eps (the official clip), not below."""
    head = _ada(m=0.4).eval()
    head.batch_mean.fill_(0.0)
    head.batch_std.fill_(0.001)
    x, y = _data()
    x[0] = head.weight[y[0]].detach() * 5 + 0.01  # theta_y ~ 0
    with torch.no_grad():
        got = head.train_logits(x, y)[0, y[0]].item()
    assert got == pytest.approx(64.0 * (math.cos(1e-3) - 0.8), rel=1e-12)
    # every cosine is first clamped to 1 - eps: an aligned non-target reads 0.999, and an
    # aligned target with z = -1 gets cos(acos(0.999) + m)
    head.batch_mean.fill_(1000.0)
    other = (int(y[1]) + 1) % C
    x[1] = head.weight[other].detach() * 5
    with torch.no_grad():
        logits = head.train_logits(x, y)
    assert logits[1, other].item() == pytest.approx(64.0 * 0.999, rel=1e-12)
    assert logits[0, y[0]].item() == pytest.approx(64.0 * math.cos(math.acos(0.999) + 0.4))


def test_adaface_gradcheck_and_detached_norm():
    """The margin reads the norm without gradient (official ``safe_norms.detach()``), so the
    analytic gradient is the loss's derivative with the margin held: gradcheck holds where the
    margin cannot move (norms fixed, or the scaler saturated), and the radial gradient is 0."""
    head = _ada().eval()
    head.batch_mean.fill_(15.0)
    head.batch_std.fill_(6.0)
    x, y = _data()
    norms = x.norm(dim=1, keepdim=True)
    assert torch.autograd.gradcheck(
        lambda u: head(norms * u / u.norm(dim=1, keepdim=True), y).loss,
        (x.clone().requires_grad_(),),
    )
    head.batch_std.fill_(0.01)  # every |z| > 1: the margin is constant near x
    assert torch.autograd.gradcheck(lambda f: head(f, y).loss, (x.clone().requires_grad_(),))
    head.batch_std.fill_(6.0)
    # the norm enters only through the detached margin: scaling a feature does not change the
    # loss's derivative along itself (zero radial gradient), as in the official head
    f = x.clone().requires_grad_(True)
    head(f, y).loss.backward()
    radial = (f.grad * x).sum(dim=1)
    torch.testing.assert_close(radial, torch.zeros(B, dtype=torch.float64), atol=1e-12, rtol=0)


def test_adaface_batch_of_one_keeps_running_std():
    head = _ada(t_alpha=0.5).train()
    x, y = _data()
    head(x[:1], y[:1])
    assert head.batch_mean.item() == pytest.approx(0.5 * x[0].norm().item() + 10.0)
    assert head.batch_std.item() == 100.0  # no unbiased std of one norm: left as it was


def test_adaface_batch_stats_reduce_hook_gives_global_batch():
    x, _ = _data()
    norms = LF.adaface_norms(x)
    other = norms[5:]
    state: dict = {}

    def reduce(t):  # stands in for an all-reduce with a second process holding `other`
        if "mean" not in state:
            out = t + torch.stack([other.sum(), torch.tensor(float(other.numel()))])
            state["mean"] = out[0] / out[1]
            return out
        return t + (other - state["mean"]).pow(2).sum()

    mean, std = LF.adaface_batch_stats(norms[:5], reduce=reduce)
    assert mean.item() == pytest.approx(norms.mean().item(), rel=1e-14)
    assert std.item() == pytest.approx(norms.std().item(), rel=1e-14)


def test_adaface_plain_logits_are_s_cos():
    head = _ada(s=32.0)
    x, y = _data()
    cos = F.normalize(x) @ F.normalize(head.weight.detach()).t()
    torch.testing.assert_close(head(x, y).logits, 32.0 * cos)


# ---------------------------------------------------------------- MagFace

MAG_DEFAULTS = {"l_a": 10.0, "u_a": 110.0, "l_margin": 0.45, "u_margin": 0.8, "lambda_g": 35.0}


def test_magface_defaults():
    head = MagFaceHead(D, C)
    assert (head.l_a, head.u_a, head.l_m, head.u_m) == (10.0, 110.0, 0.45, 0.8)
    assert (head.lambda_g, head.s, head.easy_margin) == (35.0, 64.0, True)
    assert LF.magface_min_lambda_g(64, 10, 110, 0.45, 0.8) == pytest.approx(
        64 * 0.0035 * 110**2 * 10**2 / (110**2 - 10**2)
    )


@pytest.mark.parametrize("easy", [True, False])
@pytest.mark.parametrize(
    "settings",
    [MAG_DEFAULTS, {"l_a": 5.0, "u_a": 30.0, "l_margin": 0.3, "u_margin": 0.7, "lambda_g": 20.0}],
)
def test_magface_loss_and_gradient_equal_official(settings, easy):
    head = _mag(
        l_a=settings["l_a"],
        u_a=settings["u_a"],
        l_m=settings["l_margin"],
        u_m=settings["u_margin"],
        lambda_g=settings["lambda_g"],
        easy_margin=easy,
    )
    # magnitudes below, inside and above the range; one target at cos < 0 and one past pi - m
    x, y = _data(norms=torch.tensor([3.0, 9.0, 12.0, 25.0, 40.0, 80.0, 105.0, 150.0]))
    w = head.weight.detach()
    x[1] = -w[y[1]] / w[y[1]].norm() * 9.0 + 0.05
    noise = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x[2] = (-w[y[2]] / w[y[2]].norm() + 0.3 * noise) * 12.0
    x_ref = x.clone().requires_grad_(True)
    loss_ref, output, plain = _official_magface(
        x_ref, w.t().contiguous(), y, scale=64.0, easy=easy, **settings
    )
    loss_ref.backward()
    x_got = x.clone().requires_grad_(True)
    out = head(x_got, y)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(loss_ref.item(), rel=1e-10)
    torch.testing.assert_close(x_got.grad, x_ref.grad, rtol=1e-8, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(head.train_logits(x, y), output, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.logits, plain.detach(), rtol=1e-10, atol=1e-10)


def test_magface_margin_at_the_clip_edges():
    head = _mag()
    x, _ = _data(norms=torch.tensor([1.0, 9.999, 10.0, 60.0, 110.0, 110.001, 500.0, 35.0]))
    margins = head.margins(x)
    assert margins[:3].tolist() == [0.45, 0.45, 0.45]  # a <= l_a: exactly l_m
    assert margins[4:7].tolist() == pytest.approx([0.8] * 3, abs=1e-15)  # a >= u_a: u_m
    assert margins[3].item() == pytest.approx(0.45 + 0.35 * 0.5)
    assert margins[7].item() == pytest.approx(0.45 + 0.35 * 25 / 100)


def test_magface_magnitude_gradient_mirrors_official():
    """a keeps its gradient (margin and regulariser) inside [l_a, u_a] and has none outside."""
    head = _mag()
    x, y = _data(norms=torch.tensor([5.0, 20.0, 50.0, 90.0, 130.0, 30.0, 8.0, 200.0]))
    f = x.clone().requires_grad_(True)
    head(f, y).loss.backward()
    radial = (f.grad * x).sum(dim=1) / x.norm(dim=1)
    inside = torch.tensor([False, True, True, True, False, True, False, False])
    assert (radial[inside].abs() > 1e-6).all()
    torch.testing.assert_close(
        radial[~inside], torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0
    )
    # the regulariser alone: lambda_g * mean(1/a + a/u_a^2), d/da = lambda_g (1/u_a^2 - 1/a^2)/B
    a = x.norm(dim=1).clamp(10.0, 110.0)
    expected = 35.0 * torch.mean(1.0 / a + a / 110.0**2)
    assert head.extra_loss(x, y).item() == pytest.approx(expected.item(), rel=1e-14)


def test_magface_gradcheck():
    head = _mag(l_a=5.0, u_a=40.0, lambda_g=20.0)
    x, y = _data()
    assert torch.autograd.gradcheck(lambda f: head(f, y).loss, (x.clone().requires_grad_(),))
    hard = _mag(l_a=5.0, u_a=40.0, easy_margin=False)
    assert torch.autograd.gradcheck(lambda f: hard(f, y).loss, (x.clone().requires_grad_(),))


def test_method_loss_part_includes_magnitude_term():
    torch.manual_seed(0)
    loss_fn = build_loss("MagFace", D, C)
    x, y = _data()
    x = x.float()
    out = loss_fn(x, y)
    head = loss_fn.head
    ce = F.cross_entropy(head.train_logits(x, y), y)
    assert out.parts["head"].item() == pytest.approx((ce + head.extra_loss(x, y)).item())


def test_other_heads_have_no_extra_loss_and_stay_bare_cross_entropy():
    torch.manual_seed(0)
    x, y = _data()
    x = x.float()
    for head in (SoftmaxHead(D, C), CosFaceHead(D, C), ArcFaceHead(D, C)):
        assert head.extra_loss(x, y) is None
        assert torch.equal(head(x, y).loss, F.cross_entropy(head.train_logits(x, y), y))


# ---------------------------------------------------------------- notation, errors, CLI


@pytest.mark.parametrize(
    "name",
    [
        "AdaFace",
        "AdaFace(0.4,0.333)",
        "AdaFace(0.4,0.333,64)",
        "AdaFace+R(0.01)",
        "MagFace",
        "MagFace(10,110,0.45,0.8,35)",
        "MagFace(5,30,0.45,0.8,35,32)",
        "MagFace+CL",
        "AdaFace+CL+R(0.01)",
    ],
)
def test_round_trip_build_forward_backward(name):
    spec = parse_method(name)
    assert str(spec) == name and parse_method(str(spec)) == spec
    torch.manual_seed(0)
    loss_fn = build_loss(spec, D, C)
    assert loss_fn.name == name
    x, y = _data()
    feats = x.float().requires_grad_(True)
    out = loss_fn(feats, y)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(feats.grad).all()
    assert out.logits.shape == (B, C)
    assert (loss_fn.ring is not None) == ("+R" in name)
    assert (loss_fn.center is not None) == ("+CL" in name)


def test_notation_sets_the_head():
    ada = build_loss("adaface(0.5,0.2,32)", D, C).head
    assert isinstance(ada, AdaFaceHead) and (ada.m, ada.h, ada.s) == (0.5, 0.2, 32.0)
    mag = build_loss("MagFace(5,30,0.4,0.7,25)", D, C).head
    assert isinstance(mag, MagFaceHead)
    assert (mag.l_a, mag.u_a, mag.l_m, mag.u_m, mag.lambda_g, mag.s) == (5, 30, 0.4, 0.7, 25, 64)
    assert build_loss("MagFace(10,110,0.45,0.45,0)", D, C).head.lambda_g == 0.0


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("AdaFace(abc)", "'abc' is not a number"),
        ("AdaFace(0.4)", "AdaFace takes (m,h) or (m,h,s)"),
        ("AdaFace(0.4,0.333,64,1)", "AdaFace takes (m,h) or (m,h,s)"),
        ("AdaFace(-0.1,0.333)", "margin m must be in [0, pi/2)"),
        ("AdaFace(64,0.4)", "margin m must be in [0, pi/2)"),
        ("AdaFace(0.4,0)", "h (how far the margin follows the norm) must be > 0"),
        ("AdaFace(0.4,-1)", "must be > 0"),
        ("AdaFace(0.4,0.333,0)", "scale s must be > 0"),
        ("AdaFace(0.4,nan)", "is not a number"),
        ("MagFace(10)", "MagFace takes (l_a,u_a,l_m,u_m,lambda_g)"),
        ("MagFace(10,110,0.45,0.8)", "MagFace takes (l_a,u_a,l_m,u_m,lambda_g)"),
        ("MagFace(110,10,0.45,0.8,35)", "0 < l_a < u_a"),
        ("MagFace(10,10,0.45,0.8,35)", "0 < l_a < u_a"),
        ("MagFace(0,110,0.45,0.8,35)", "0 < l_a < u_a"),
        ("MagFace(10,110,0.8,0.45,35)", "0 <= l_m <= u_m < pi/2"),
        ("MagFace(10,110,-0.1,0.8,35)", "0 <= l_m <= u_m < pi/2"),
        ("MagFace(10,110,0.45,-0.8,35)", "0 <= l_m <= u_m < pi/2"),
        ("MagFace(10,110,0.45,2,35)", "0 <= l_m <= u_m < pi/2"),
        ("MagFace(10,110,0.45,0.8,-1)", "lambda_g must be >= 0"),
        ("MagFace(10,110,0.45,0.8,35,0)", "scale s must be > 0"),
        ("MagFace(10,110,0.45,0.8,35,-64)", "scale s must be > 0"),
    ],
)
def test_bad_settings_are_one_line_config_errors(bad, needle):
    for attempt in (parse_method, lambda text: build_loss(text, D, C)):
        with pytest.raises(ConfigError) as err:
            attempt(bad)
        message = str(err.value)
        assert "\n" not in message and needle in message and "valid forms" in message
        assert "AdaFace(m,h)" in message and "MagFace(l_a,u_a,l_m,u_m,lambda_g)" in message


def test_direct_construction_is_validated():
    for kwargs in ({"m": -0.1}, {"h": 0.0}, {"s": 0.0}, {"t_alpha": 0.0}, {"t_alpha": 1.5}):
        with pytest.raises(ConfigError):
            AdaFaceHead(D, C, **kwargs)
    for kwargs in ({"l_a": 20.0, "u_a": 10.0}, {"l_m": 0.9}, {"lambda_g": -1.0}, {"s": -1.0}):
        with pytest.raises(ConfigError):
            MagFaceHead(D, C, **kwargs)


def test_cli_bad_adaface_is_one_line_exit_2(tmp_path):
    out = tmp_path / "o"
    result = CliRunner().invoke(
        cli, ["train", "--method", "AdaFace(abc)", "--data", "orl", "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "AdaFace(abc)" in result.output
    assert not out.exists()


@pytest.mark.parametrize("method", ["AdaFace+R(0.01)", "MagFace(5,30,0.45,0.8,35)+CL"])
def test_float32_under_bf16_autocast(method):
    torch.manual_seed(0)
    loss_fn = build_loss(method, D, C)
    lin = torch.nn.Linear(D, D)
    x, y = _data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = lin(x.float())
        out = loss_fn(feats, y)
    assert out.loss.dtype == torch.float32 and out.logits.dtype == torch.float32
    out.loss.backward()
    assert torch.isfinite(lin.weight.grad).all()
