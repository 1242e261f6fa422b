"""Training methods in the Ring loss paper's notation: ``"SF+R(0.01)"`` <-> :class:`MethodSpec`.

Grammar (whitespace ignored, names case-insensitive, printed back in canonical case)::

    method := head ["(" args ")"] {"+" aux ["(" args ")"]}
    head   := SM | SF | SF(m) | l2-SM(alpha) | CosFace | CosFace(s,m) | ArcFace | ArcFace(s,m)
            | AdaFace | AdaFace(m,h) | AdaFace(m,h,s)
            | MagFace | MagFace(l_a,u_a,l_m,u_m,lambda_g) | MagFace(l_a,u_a,l_m,u_m,lambda_g,s)
    aux    := R(lambda) | CL | CL(lambda_c)

Decisions: ``l2-SM`` always names its alpha (the paper always does, and one spelling per model
keeps results tables unambiguous); ``SF(m)``, ``CosFace(s,m)``, ``ArcFace(s,m)``,
``AdaFace(m,h[,s])``, ``MagFace(l_a,u_a,l_m,u_m,lambda_g[,s])`` and ``CL(lambda_c)`` are
optional spellings for non-default settings, and bare names mean the defaults of
:mod:`lowres.losses.heads` (SF m=4; CosFace s=64, m=0.35; ArcFace s=64, m=0.5; AdaFace m=0.4,
h=0.333, s=64; MagFace l_a=10, u_a=110, l_m=0.45, u_m=0.8, lambda_g=35, s=64; CL
lambda_c=0.003, alpha=0.5). AdaFace and MagFace keep their papers' argument order (m first;
the magnitude range first), not CosFace's ``(s,m)``, and print back as written. Each aux
appears at most once and keeps the order written. Numbers print in plain positional decimal
with trailing zeros trimmed (``30.0`` -> ``30``, ``1e-4`` -> ``0.0001``), so every name the
paper uses prints back exactly and ``parse_method(str(spec)) == spec`` for every spec.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal

import torch

from lowres.errors import ConfigError
from lowres.losses import HEADS, REGULARISERS, MethodLoss

__all__ = [
    "VALID_FORMS",
    "MethodSpec",
    "build_loss",
    "known_methods",
    "parse_method",
]

VALID_FORMS = (
    ", ".join(form for head in HEADS.values() for form in head.FORMS)
    + ", each optionally followed by "
    + " and/or ".join(" or ".join(f"+{f}" for f in reg.FORMS) for reg in REGULARISERS.values())
    + ", e.g. SF+R(0.01), l2-SM(30), SM+CL"
)
"""The one-line help of a bad method name, from the registries of :mod:`lowres.losses`."""

_HEADS = {name.lower(): name for name in HEADS}
_AUX = {name.lower(): name for name in REGULARISERS}

_PAPER_METHODS = (
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
)

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_TERM = re.compile(r"([A-Za-z][A-Za-z0-9-]*)(?:\(([^()]*)\))?")


def _bad(text: str, why: str) -> ConfigError:
    return ConfigError(f"bad method {text!r}: {why}; valid forms: {VALID_FORMS}")


def format_number(x: float | int) -> str:
    """Plain positional decimal, trailing zeros trimmed: 30.0 -> '30', 1e-05 -> '0.00001'."""
    if isinstance(x, int):
        return str(x)
    if float(x).is_integer():
        return str(int(x))
    text = format(Decimal(repr(float(x))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True)
class MethodSpec:
    """A training method: head, its arguments, and auxiliary losses.

    Attributes:
        head: ``"SM" | "l2-SM" | "SF" | "CosFace" | "ArcFace" | "AdaFace" | "MagFace"``.
        head_args: ``()`` for defaults, ``(alpha,)`` for l2-SM, ``(m,)`` (int) for SF,
            ``(s, m)`` for CosFace / ArcFace, ``(m, h[, s])`` for AdaFace,
            ``(l_a, u_a, l_m, u_m, lambda_g[, s])`` for MagFace.
        aux: tuple of ``(name, value)``: ``("R", lambda)`` or ``("CL", lambda_c | None)``.

    ``str(spec)`` is the paper's notation, e.g. ``"SF+R(0.01)"``. Constructing one directly
    validates it like :func:`parse_method` does.
    """

    head: str
    head_args: tuple = ()
    aux: tuple = ()

    def __post_init__(self) -> None:
        text = self._render()
        if self.head not in _HEADS.values():
            raise _bad(text, f"unknown head {self.head!r}")
        object.__setattr__(self, "head_args", tuple(self._check_head_args(text)))
        aux, seen = [], set()
        for item in self.aux:
            if not isinstance(item, tuple) or len(item) != 2:
                raise _bad(text, f"aux entries must be (name, value) pairs, got {item!r}")
            name, value = item
            if name not in _AUX.values():
                raise _bad(text, f"unknown auxiliary loss {name!r}")
            if name in seen:
                raise _bad(text, f"{name} appears twice")
            seen.add(name)
            if name == "R" or value is not None:
                value = _positive(text, f"{name} weight", value)
            aux.append((name, value))
        object.__setattr__(self, "aux", tuple(aux))

    def _check_head_args(self, text: str) -> list:
        return HEADS[self.head].check_args(
            list(self.head_args),
            lambda why: _bad(text, why),
            lambda what, value: _positive(text, what, value),
        )

    def _render(self) -> str:
        def args(values) -> str:
            return "(" + ",".join(format_number(v) for v in values) + ")" if values else ""

        out = f"{self.head}{args(tuple(self.head_args))}"
        for item in self.aux:
            if isinstance(item, tuple) and len(item) == 2:
                name, value = item
                out += f"+{name}{args(() if value is None else (value,))}"
        return out

    def __str__(self) -> str:
        return self._render()

    @property
    def ring_weight(self) -> float | None:
        """Ring loss lambda, or None without ``+R``."""
        return dict(self.aux).get("R")

    def without_ring(self) -> MethodSpec:
        """This method without its Ring-loss term: the base loss its Ring margin is taken
        against (``SF+R(0.01)`` -> ``SF``; a method without ``+R`` is returned as it is).

        >>> str(parse_method("SM+R(0.01)+CL").without_ring())
        'SM+CL'
        """
        if self.ring_weight is None:
            return self
        return MethodSpec(self.head, self.head_args, tuple(a for a in self.aux if a[0] != "R"))

    @property
    def has_center(self) -> bool:
        """Whether ``+CL`` is present."""
        return "CL" in dict(self.aux)


def _positive(text: str, what: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise _bad(text, f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise _bad(text, f"{what} must be a finite number > 0, got {format_number(value)}")
    return value


def parse_method(text: str) -> MethodSpec:
    """Parse the paper's notation into a :class:`MethodSpec`.

    Args:
        text: e.g. ``"SF+R(0.01)"``, ``"l2-SM(30)"``, ``"ArcFace(64,0.5)+R(0.01)"``.

    Returns:
        The spec; ``str(spec)`` prints the canonical form (equal to ``text`` for the paper's
        names).

    Raises:
        ConfigError: unknown or malformed name (one line listing the valid forms).

    Example:
        >>> str(parse_method("SF + R(0.01)"))
        'SF+R(0.01)'
    """
    if not isinstance(text, str):
        raise _bad(str(text), f"expected a string, got {type(text).__name__}")
    compact = re.sub(r"\s+", "", text)
    if not compact:
        raise _bad(text, "empty name")
    terms = []
    pos = 0
    while True:
        match = _TERM.match(compact, pos)
        if match is None:
            raise _bad(text, f"cannot read {compact[pos:]!r}")
        name = match.group(1)
        values = []
        for raw in [] if match.group(2) is None else match.group(2).split(","):
            if re.fullmatch(_NUMBER, raw) is None:
                raise _bad(text, f"{name} argument {raw!r} is not a number")
            values.append(int(raw) if re.fullmatch(r"[+-]?\d+", raw) else float(raw))
        terms.append((name, values))
        pos = match.end()
        if pos == len(compact):
            break
        if compact[pos] != "+":
            raise _bad(text, f"expected '+' or the end at {compact[pos:]!r}")
        pos += 1
    head_name, head_args = terms[0]
    head = _HEADS.get(head_name.lower())
    if head is None:
        raise _bad(text, f"unknown head {head_name!r}")
    aux = []
    for name, values in terms[1:]:
        canonical = _AUX.get(name.lower())
        if canonical is None:
            raise _bad(text, f"unknown auxiliary loss {name!r}")
        reg = REGULARISERS[canonical]
        if reg.WEIGHT_REQUIRED and len(values) != 1:
            raise _bad(text, f"{canonical} needs exactly one weight, e.g. {reg.EXAMPLE}")
        if not reg.WEIGHT_REQUIRED and len(values) > 1:
            raise _bad(text, f"{canonical} takes at most one weight, e.g. {reg.EXAMPLE}")
        aux.append((canonical, values[0] if values else None))
    # ints where floats are meant (l2-SM(30), R(1)) become floats; SF keeps its integer margin.
    if head != "SF":
        head_args = [float(v) for v in head_args]
    aux = [(n, None if v is None else float(v)) for n, v in aux]
    return MethodSpec(head, tuple(head_args), tuple(aux))


def known_methods() -> list[str]:
    """The method names the paper uses, plus the other heads at their defaults."""
    return [*_PAPER_METHODS, "CosFace", "ArcFace", "AdaFace", "MagFace"]


def build_loss(
    spec: MethodSpec | str,
    embed_dim: int,
    num_classes: int,
    *,
    ring_init: str | float = "batch",
    ring_lr_mult: float = 1.0,
    center_alpha: float = 0.5,
    center_weight: float = 0.003,
    l2_learnable: bool = False,
    seed: int | None = None,
):
    """Build the :class:`lowres.losses.MethodLoss` for a method.

    Args:
        spec: a :class:`MethodSpec` or its text.
        embed_dim: D, the model's embedding size.
        num_classes: C, the number of training identities.
        ring_init: Ring loss R init: ``"batch"`` (first batch's mean norm) or a number.
        ring_lr_mult: learning-rate multiplier for R.
        center_alpha: center update rate for ``+CL``.
        center_weight: lambda_c for a bare ``+CL`` (``+CL(x)`` overrides it).
        l2_learnable: learn l2-SM's alpha (starting at the given value).
        seed: if given, class weights are drawn from this seed without touching the global RNG;
            otherwise from the global RNG.

    Returns:
        A ``MethodLoss`` named ``str(spec)``.
    """
    if isinstance(spec, str):
        spec = parse_method(spec)
    if not isinstance(spec, MethodSpec):
        raise ConfigError(
            f"build_loss needs a MethodSpec or a method name, got {type(spec).__name__}"
        )

    options = {
        "ring_init": ring_init,
        "ring_lr_mult": ring_lr_mult,
        "center_alpha": center_alpha,
        "center_weight": center_weight,
        "l2_learnable": l2_learnable,
    }

    def make():
        head = HEADS[spec.head].from_notation(embed_dim, num_classes, spec.head_args, **options)
        weights = dict(spec.aux)
        regs = tuple(
            reg.from_notation(weights[name], embed_dim, num_classes, **options)
            for name, reg in REGULARISERS.items()
            if name in weights
        )
        return MethodLoss(head, name=str(spec), regularisers=regs)

    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()
