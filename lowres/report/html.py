"""HTML building blocks of ``lowres report``: escaping, number cells that carry their exact
value, figures as data URIs, and the page shell with its inline style and script.

The page loads nothing: a Content-Security-Policy in its head allows images only from ``data:``
URIs and styles and scripts only inline, so a browser refuses (and logs) any request a future
change might add. The one script sorts the tables marked ``sortable`` and marks the page ready
(``data-ready`` on ``<html>``, which the browser test reads back)."""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)

STYLE = """
:root { --ink: #1d232a; --muted: #5b6570; --rule: #d5dbe1; --band: #f3f5f7; --bad: #b3261e;
        --badbg: #fde7e5; --good: #1b6e3a; --warn: #fff4d6; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--ink); margin: 0 auto; max-width: 1180px; padding: 0 24px 48px; }
h1 { font-size: 26px; margin: 24px 0 2px; }
h2 { font-size: 20px; margin: 36px 0 8px; padding-top: 8px; border-top: 2px solid var(--ink); }
h3 { font-size: 16px; margin: 22px 0 6px; }
p.sub, .muted { color: var(--muted); }
code { font: 13px/1.3 ui-monospace, "DejaVu Sans Mono", monospace; background: var(--band);
       padding: 0 3px; border-radius: 3px; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid var(--rule);
      padding: 6px 0; font-size: 14px; z-index: 1; }
nav a { margin-right: 14px; color: var(--ink); }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 14px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border-bottom: 1px solid var(--rule); padding: 3px 10px; text-align: right;
         vertical-align: top; }
th { background: var(--band); font-weight: 600; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
tbody th { text-align: left; background: none; white-space: nowrap; }
table.facts th { text-align: left; width: 190px; }
table.text th, table.text td { text-align: left; }
table.facts td { text-align: left; }
td.ci, span.ci { color: var(--muted); font-size: 12px; }
.excl { font-weight: 700; }
.below { text-decoration: underline dotted; }
.regressed { background: var(--badbg); color: var(--bad); font-weight: 700; }
.banner { background: var(--warn); border: 1px solid #e2c26b; padding: 8px 12px; margin: 12px 0; }
.banner li { margin: 2px 0; }
.verdict-ok { color: var(--good); font-weight: 700; }
.verdict-bad { color: var(--bad); font-weight: 700; }
figure { margin: 18px 0 26px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--rule); }
figcaption { font-size: 14px; max-width: 900px; }
details > summary { cursor: pointer; color: var(--muted); }
pre { font-size: 12px; background: var(--band); padding: 8px; overflow-x: auto; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
table.sortable thead th { cursor: pointer; }
:target { outline: 2px solid #2f6fd6; }
@media print {
  nav { display: none; }
  body { max-width: none; padding: 0; font-size: 12px; }
  h2 { break-before: auto; }
  figure, table, .banner { break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""

SCRIPT = """
(function () {
  function key(cell) {
    var v = cell ? cell.getAttribute("data-value") : null;
    if (v !== null && v !== "" && !isNaN(parseFloat(v))) { return parseFloat(v); }
    return cell ? cell.textContent.trim().toLowerCase() : "";
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    var heads = table.querySelectorAll("thead th");
    Array.prototype.forEach.call(heads, function (th, col) {
      th.tabIndex = 0;
      th.title = "sort by this column";
      th.addEventListener("click", function () {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (typeof x !== typeof y) { return typeof x === "number" ? -1 : 1; }
          return (x < y ? -1 : x > y ? 1 : 0) * dir;
        });
        Array.prototype.forEach.call(heads, function (o) { o.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  document.documentElement.setAttribute("data-ready", "1");
})();
"""


def esc(value: Any) -> str:
    """``value`` as HTML text (quotes escaped too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def attrs(**values: Any) -> str:
    """`` key="value"`` pairs (``class_`` -> ``class``; None and False left out)."""
    out = []
    for key, value in values.items():
        if value is None or value is False:
            continue
        name = key.rstrip("_").replace("_", "-")
        out.append(f' {name}="{esc(value)}"')
    return "".join(out)


def is_number(value: Any) -> bool:
    """True for a finite real number (not NaN, None or text)."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def num_cell(value: Any, text: str, *, tag: str = "td", extra: str = "", **more: Any) -> str:
    """A table cell showing ``text`` whose ``data-value`` holds ``value`` exactly (``repr``;
    empty when it is not a finite number), so sorting and tests read the stored number."""
    exact = repr(float(value)) if is_number(value) else ""
    return f"<{tag}{attrs(data_value=exact, **more)}>{text}{extra}</{tag}>"


def fmt(value: Any, spec: str = ".3f", missing: str = "-") -> str:
    """``value`` formatted by ``spec``, ``missing`` when it is not a finite number."""
    return format(float(value), spec) if is_number(value) else missing


def table(
    head: Sequence[str],
    rows: Iterable[str],
    *,
    caption: str = "",
    sortable: bool = False,
    **more: Any,
) -> str:
    """A table: ``head`` cells are escaped text, ``rows`` ready ``<tr>`` markup."""
    cls = " ".join(c for c in (more.pop("class_", ""), "sortable" if sortable else "") if c)
    thead = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead>"
    cap = f"<caption>{caption}</caption>" if caption else ""
    body = "\n".join(rows)
    return (
        f"<table{attrs(class_=cls or None, **more)}>{cap}{thead}<tbody>\n{body}\n</tbody></table>"
    )


def facts(items: Iterable[tuple[str, str]], **more: Any) -> str:
    """A two-column table of (label, ready markup)."""
    rows = "\n".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in items)
    return f"<table{attrs(class_='facts', **more)}><tbody>\n{rows}\n</tbody></table>"


def png_data_uri(path: Path) -> str:
    """A PNG file as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def figure(path: Path, stem: str, caption: str, anchor: str) -> str:
    """A figure: the PNG inline, its name and how to read it under it."""
    alt = f"{stem} figure" + (f": {caption.split('. ')[0]}" if caption else "")
    body = f"<b>{esc(stem)}</b>" + (f": {esc(caption)}" if caption else "")
    return (
        f'<figure id="{esc(anchor)}"><img src="{png_data_uri(path)}" alt="{esc(alt)}">'
        f"<figcaption>{body}</figcaption></figure>"
    )


class Slugs:
    """Stable, unique anchor names for model ids (``SF+R(0.01)`` -> ``SF-R-0.01``; a second id
    with the same slug gets ``-2``), so a link can point at a model."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        if name not in self.names:
            base = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-") or "model"
            slug, n = base, 1
            while slug in self.names.values():
                n += 1
                slug = f"{base}-{n}"
            self.names[name] = slug
        return self.names[name]


def page(title: str, nav: Sequence[tuple[str, str]], body: str) -> str:
    """The whole document: head (charset, CSP, title, style), a sticky table of contents
    (``nav``: (anchor, label)), ``body``, the script."""
    links = "".join(f'<a href="#{esc(a)}">{esc(label)}</a>' for a, label in nav)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<nav>{links}</nav>\n{body}\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
