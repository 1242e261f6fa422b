"""Method names: the paper's notation parses and prints back exactly; bad names fail clearly."""

from __future__ import annotations

import pytest

from lowres.errors import ConfigError
from lowres.losses import (
    ArcFaceHead,
    CosFaceHead,
    L2SoftmaxHead,
    SoftmaxHead,
    SphereFaceHead,
)
from lowres.methods import MethodSpec, build_loss, known_methods, parse_method

PAPER = [
    "SM",
    "SF",
    "l2-SM(30)",
    "l2-SM(20)",
    "l2-SM(10)",
    "SM+CL",
    "SF+CL",
    "SM+R(0.01)",
    "SM+R(0.001)",
    "SM+R(0.0001)",
    "SF+R(0.03)",
    "SF+R(0.01)",
    "SF+R(0.001)",
    "SF+R(0.0001)",
]
EXTRA = [
    "CosFace",
    "ArcFace",
    "ArcFace+R(0.01)",
    "CosFace+CL",
    "CosFace(30,0.35)",
    "ArcFace(64,0.5)",
    "SF(4)",
    "SF(2)+R(0.01)",
    "SM+CL(0.008)",
    "SM+CL+R(0.01)",
    "AdaFace",
    "AdaFace(0.4,0.333)",
    "AdaFace+R(0.01)",
    "MagFace",
    "MagFace(10,110,0.45,0.8,35)",
    "MagFace+CL",
]


@pytest.mark.parametrize("name", PAPER + EXTRA)
def test_round_trip_exact(name):
    spec = parse_method(name)
    assert str(spec) == name
    assert parse_method(str(spec)) == spec


def test_known_methods_cover_paper_and_parse():
    names = known_methods()
    assert names[: len(PAPER)] == PAPER
    assert {"CosFace", "ArcFace", "AdaFace", "MagFace"} <= set(names)
    for name in names:
        assert str(parse_method(name)) == name


def test_spec_fields():
    assert parse_method("SF+R(0.01)") == MethodSpec("SF", (), (("R", 0.01),))
    assert parse_method("l2-SM(30)") == MethodSpec("l2-SM", (30.0,), ())
    assert parse_method("SM+CL") == MethodSpec("SM", (), (("CL", None),))
    spec = parse_method("SF+CL+R(0.001)")
    assert spec.ring_weight == 0.001 and spec.has_center
    assert parse_method("SM").ring_weight is None and not parse_method("SM").has_center


def test_canonical_spellings():
    assert str(parse_method(" sf + r(1e-4) ")) == "SF+R(0.0001)"
    assert str(parse_method("SM+R(1e-5)")) == "SM+R(0.00001)"
    assert str(parse_method("l2-SM(30.0)")) == "l2-SM(30)"
    assert str(MethodSpec("l2-SM", (30,), ())) == "l2-SM(30)"


@pytest.mark.parametrize(
    "bad",
    [
        "SM+R(abc)",
        "XX",
        "SM+R(-1)",
        "SM+R(0)",
        "SM+R",
        "SM+R()",
        "SM+R(1,2)",
        "l2-SM",
        "l2-SM(-3)",
        "SM(3)",
        "SF(2.5)",
        "SF(0)",
        "CosFace(30)",
        "ArcFace(64,2)",
        "SM+R(0.1)+R(0.2)",
        "SM+XY",
        "SM+",
        "",
        "SM+R(nan)",
        "SM+R(inf)",
        "SM R(0.1)x",
    ],
)
def test_malformed_names_raise_one_line_config_error(bad):
    with pytest.raises(ConfigError) as err:
        parse_method(bad)
    message = str(err.value)
    assert "\n" not in message and "valid forms" in message and "l2-SM(alpha)" in message


def test_direct_spec_is_validated():
    with pytest.raises(ConfigError):
        MethodSpec("SM", (), (("R", -0.1),))
    with pytest.raises(ConfigError):
        MethodSpec("XX")


@pytest.mark.parametrize(
    ("name", "head_type", "ring", "center"),
    [
        ("SM", SoftmaxHead, False, False),
        ("l2-SM(20)", L2SoftmaxHead, False, False),
        ("SF+R(0.03)", SphereFaceHead, True, False),
        ("SF+CL", SphereFaceHead, False, True),
        ("CosFace(30,0.35)", CosFaceHead, False, False),
        ("ArcFace+R(0.01)", ArcFaceHead, True, False),
    ],
)
def test_build_loss(name, head_type, ring, center):
    loss = build_loss(name, 8, 4)
    assert isinstance(loss.head, head_type)
    assert (loss.ring is not None) == ring and (loss.center is not None) == center
    assert loss.name == name
    if ring:
        assert loss.ring.weight == parse_method(name).ring_weight
    if head_type is CosFaceHead:
        assert (loss.head.s, loss.head.m) == (30.0, 0.35)
    if head_type is L2SoftmaxHead:
        assert float(loss.head.alpha) == 20.0


def test_build_loss_cl_weight_and_defaults():
    assert build_loss("SM+CL", 8, 4).center.weight == 0.003
    assert build_loss("SM+CL(0.008)", 8, 4).center.weight == 0.008
    assert build_loss("SM+CL", 8, 4, center_alpha=0.1).center.alpha == 0.1
    arc = build_loss("ArcFace", 8, 4).head
    assert (arc.s, arc.m, arc.easy_margin) == (64.0, 0.5, False)
    assert build_loss("SF", 8, 4).head.m == 4
    with pytest.raises(ConfigError):
        build_loss("SM+R(abc)", 8, 4)
