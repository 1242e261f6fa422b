"""What every figure shares: one hue per loss family (``+R`` solid and darker, the base loss
dashed and lighter, raw pixels grey), the figure grid, the log2 width axis, the legend, the
caption and the atomic PNG + PDF writer.

matplotlib and seaborn are imported inside the functions that draw, here and in the other plot
modules: on the project's 2-core machine they add 0.7 s and 2.2 s to start-up, which a sweep
with ``--no-plot``, a study resuming from its cells and the CLI's help need not pay."""

from __future__ import annotations

import colorsys
import io
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lowres.files import atomic_write_bytes
from lowres.methods import parse_method
from lowres.results import PIXELS

FIGURES_DIR = "figures"
X_LABEL = "probe face width (pixels)"
_GREY = (0.45, 0.45, 0.45)


# --------------------------------------------------------------------------------------------
# Styles: one hue per loss family, +R solid and darker, base dashed and lighter
# --------------------------------------------------------------------------------------------


def _family(method: str, model: str | None = None) -> tuple[str, bool]:
    """(family name, is_ring) of a model; unknown method strings are their own family.

    A training variant named ``<method><suffix>`` (``SM+aug``, ``SM+R(0.01)+aug``) belongs to
    the family ``<base><suffix>`` (``SM+aug``), so a variant gets its own hue and its +R model
    pairs with the base loss trained the same way, as the Ring margin does.
    """
    if method == PIXELS:
        return PIXELS, False
    suffix = ""
    if model is not None and model != method and model.startswith(method):
        suffix = model[len(method) :]
    try:
        spec = parse_method(method)
    except Exception:  # a checkpoint from another version: style it on its own
        return method, False
    return str(spec.without_ring()) + suffix, spec.ring_weight is not None


def _shade(rgb: Sequence[float], lightness: float) -> tuple[float, float, float]:
    h, _, s = colorsys.rgb_to_hls(*rgb[:3])
    return colorsys.hls_to_rgb(h, lightness, min(1.0, s * 1.05))


def model_styles(models: pd.DataFrame) -> dict[str, dict]:
    """Per model id: colour, linestyle, marker, z-order and legend order.

    Args:
        models: frame with columns ``model`` and ``method`` (one row per model).
    """
    import seaborn as sns

    pairs = models.drop_duplicates("model").sort_values("model")
    fam_of = {m: _family(meth, m) for m, meth in zip(pairs["model"], pairs["method"], strict=True)}
    families = sorted({f for f, _ in fam_of.values() if f != PIXELS})
    palette = sns.color_palette("tab10", 10)
    palette = [c for i, c in enumerate(palette) if i != 7]  # tab10 grey is for the reference
    hue = {f: palette[i % len(palette)] for i, f in enumerate(families)}
    markers = "osD^vP*Xph"
    styles: dict[str, dict] = {}
    order = 0
    for fam in families:
        members = sorted(m for m, (f, _) in fam_of.items() if f == fam)
        rings = [m for m in members if fam_of[m][1]]
        plain = [m for m in members if not fam_of[m][1]]
        has_ring = bool(rings)
        for i, m in enumerate(plain):
            styles[m] = {
                "color": _shade(hue[fam], 0.62) if has_ring else hue[fam],
                "linestyle": (0, (4, 2)) if has_ring else "-",
                "marker": markers[families.index(fam) % len(markers)],
                "zorder": 3,
                "order": order + i,
            }
        for j, m in enumerate(rings):
            styles[m] = {
                "color": _shade(hue[fam], 0.38 - 0.08 * j),
                "linestyle": "-",
                "marker": markers[families.index(fam) % len(markers)],
                "zorder": 4,
                "order": order + len(plain) + j,
            }
        order += len(members)
    for m, (f, _) in fam_of.items():
        if f == PIXELS:
            styles[m] = {
                "color": _GREY,
                "linestyle": ":",
                "marker": ".",
                "zorder": 2,
                "order": 10_000,
            }
    return styles


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def new_figure(ncols: int, nrows: int = 1, *, panel=(4.2, 3.4), extra_w: float = 2.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel[0] * ncols + extra_w, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    return fig, axes


def width_panels(count: int, *, panel=(3.8, 3.2)):
    """A figure of ``count`` panels, one per probe width, three to a row; the unused panels of
    the last row hidden. Returns ``(fig, axes, ncols, nrows)``; draw on ``axes.flat[:count]``."""
    ncols = min(count, 3)
    nrows = math.ceil(count / ncols)
    fig, axes = new_figure(ncols, nrows, panel=panel)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes, ncols, nrows


def log2_size_axis(ax, sizes: Sequence[int]) -> None:
    """Log2 x axis ticked at the probe widths ``sizes`` (pixels), largest on the left."""
    from matplotlib.ticker import FixedLocator, NullLocator

    sizes = sorted({int(s) for s in sizes})
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(s) for s in sizes])
    lo, hi = min(sizes), max(sizes)
    ax.set_xlim(lo / 2**0.25, hi * 2**0.25)
    ax.set_xlabel(X_LABEL)


def model_legend(fig, axes, styles: dict[str, dict], title: str = "model") -> None:
    """One legend for the figure, right of the panels, one entry per styled model."""
    from matplotlib.lines import Line2D

    names = sorted(styles, key=lambda m: styles[m]["order"])
    handles = [
        Line2D(
            [],
            [],
            color=styles[m]["color"],
            linestyle=styles[m]["linestyle"],
            marker=styles[m]["marker"],
            linewidth=2,
        )
        for m in names
    ]
    fig.legend(handles, names, title=title, loc="outside right upper", frameon=False)


def save_figure(fig, out_dir: Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``stem.png`` and ``stem.pdf`` into ``out_dir`` (atomically); their paths."""
    paths = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        meta = {"CreationDate": None} if ext == "pdf" else {"Software": None}
        fig.savefig(buf, format=ext, dpi=150, metadata=meta)
        paths.append(atomic_write_bytes(out_dir / f"{stem}.{ext}", buf.getvalue()))
    return paths


def caption(prim: pd.DataFrame) -> str:
    parts = []
    for col in ("dataset", "pairing", "degrade"):
        vals = sorted(set(prim[col]) - {""})
        if vals:
            parts.append(f"{col}: {', '.join(vals)}")
    # Long degradation chains wrap instead of running under the legend.
    return "\n".join(textwrap.wrap("   ".join(parts), 80))


def fmt_far(far: float) -> str:
    """A FAR as a label: ``1e-2`` for powers of ten, else ``%g``.

    >>> fmt_far(0.01), fmt_far(0.05)
    ('1e-2', '0.05')
    """
    exp = math.log10(far)
    return f"1e{round(exp)}" if math.isclose(exp, round(exp)) else f"{far:g}"


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def draw_curves(ax, rows: pd.DataFrame, styles: dict[str, dict]) -> None:
    """One line per model of ``value`` vs face width with its ``ci_low``..``ci_high`` band."""
    for model, g in rows.groupby("model"):
        g = g.sort_values("size_px")
        st = styles[model]
        x = g["size_px"].to_numpy(float)
        ax.fill_between(
            x,
            g["ci_low"],
            g["ci_high"],
            color=st["color"],
            alpha=0.12,
            linewidth=0,
            zorder=st["zorder"] - 1,
        )
        model_line(ax, x, g["value"], st)


def model_line(ax, x, y, st: dict) -> None:
    """A model's line in its style (colour, dash, marker, z-order)."""
    ax.plot(
        x,
        y,
        color=st["color"],
        linestyle=st["linestyle"],
        marker=st["marker"],
        markersize=4,
        linewidth=1.8,
        zorder=st["zorder"],
    )
