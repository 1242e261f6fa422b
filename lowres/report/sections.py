"""The sections of a sweep's report: the header (data, protocol, chain, models, software, wall
times), the summary, the figures, the tables in the paper's layout, the baseline comparison and
the provenance appendix. Each takes a :class:`~lowres.report.folder.SweepFolder` and returns
HTML; ``prefix`` keeps the anchors of several sweeps on one page (a study's runs) apart."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from lowres.check import CheckResult
from lowres.report.captions import FIGURE_CAPTIONS
from lowres.report.folder import SweepFolder
from lowres.report.html import Slugs, esc, facts, figure, fmt, is_number, num_cell, table
from lowres.report.summary import Level, margin_sentence, margins, model_summaries, tar_grid
from lowres.results import PIXELS, paper_table

Marks = dict[tuple[str, str, Any, str], Any]
"""(metric, model, width or None, FAR as ``%g`` or "") -> the regressed row of a baseline check."""

PAIRINGS = {
    "probe": "a clean gallery face against a degraded probe, every pair of test images",
    "both": "both faces degraded, every pair of test images",
}


def far_key(far: Any) -> str:
    return f"{float(far):g}" if is_number(far) else ""


def regression_marks(result: CheckResult | None, level: Level) -> Marks:
    """The regressed cells of a baseline check that the report's tables show (the level's fold;
    one seed, or the seed-free rows of several), keyed as :data:`Marks`."""
    if result is None or result.regressions.empty:
        return {}
    marks: Marks = {}
    for _, r in result.regressions.iterrows():
        fold = int(r["fold"]) if str(r["fold"]).lstrip("-").isdigit() else None
        if fold != level.fold or (len(level.seeds) > 1 and str(r["seed"]) != ""):
            continue
        size = int(r["size_px"]) if is_number(r["size_px"]) else None
        marks[(str(r["metric"]), str(r["model"]), size, far_key(r["far"]))] = r
    return marks


def mark_of(marks: Marks, metric: str, model: str, size: int | None, far: Any) -> dict:
    """``class`` and ``title`` of a cell a baseline check found regressed (else empty)."""
    row = marks.get((metric, model, size, far_key(far)))
    if row is None:
        return {}
    return {
        "class_": "regressed",
        "title": f"regressed: baseline {fmt(row['baseline'], '.4f')}, now "
        f"{fmt(row['value'], '.4f')} ({fmt(row['delta'], '+.4f')})",
    }


def pct(value: Any) -> str:
    return fmt(100 * float(value), ".1f") if is_number(value) else "-"


def interval(row: Any, scale: float = 1.0, spec: str = ".3f") -> str:
    lo, hi = row["ci_low"], row["ci_high"]
    if not (is_number(lo) and is_number(hi)):
        return ""
    return f' <span class="ci">[{fmt(scale * lo, spec)}, {fmt(scale * hi, spec)}]</span>'


# --------------------------------------------------------------------------------------------
# Header
# --------------------------------------------------------------------------------------------


def header_facts(view: SweepFolder, level: Level) -> str:
    """Data, protocol, chain, grid, FARs, software and wall time, as a two-column table."""
    prov = view.provenance
    settings = prov.get("settings", {})
    data = prov.get("dataset", {})
    size = "x".join(str(v) for v in data.get("image_size", [])) or "?"
    chain = prov.get("degradation", {})
    grid = prov.get("grid") or [{"scale": None, "size_px": s} for s in level.sizes]
    tar = level.prim[level.prim["metric"] == level.metric]
    pairs = f"{int(tar['n_genuine'].max()):,} genuine / {int(tar['n_impostor'].max()):,} impostor"
    folds = list(settings.get("folds", [])) or [level.fold]
    pairing = str(settings.get("pairing") or prov.get("config", {}).get("pairing", "probe"))
    versions = prov.get("versions", {})
    timings = prov.get("timings_s", {})
    crit = prov.get("critical", {})
    boot = prov.get("bootstrap", {})
    items = [
        ("dataset", f"<b>{esc(data.get('name', '?'))}</b>, test images {esc(size)} px (H x W)"),
        (
            "protocol",
            f"pairing <code>{esc(pairing)}</code>: {esc(PAIRINGS.get(pairing, pairing))}; "
            f"{esc(pairs)} pairs per width",
        ),
        (
            "folds and seeds",
            f"test folds {esc(folds)}"
            + (" (pooled: one threshold over all folds)" if len(folds) > 1 else "")
            + f"; training seeds {esc(level.seeds)}"
            + (" (TAR is the seed mean)" if len(level.seeds) > 1 else ""),
        ),
        (
            "degradation",
            f"<code>{esc(chain.get('chain', '?'))}</code>, hash <code>"
            f"{esc(chain.get('hash', '?'))}</code>; probe widths "
            + ", ".join(f"{int(g['size_px'])} px" for g in grid),
        ),
        (
            "FARs",
            ", ".join(f"{f:g}" for f in level.fars)
            + f"; critical width: TAR &ge; {esc(crit.get('tar', level.target_tar))} at FAR "
            f"{float(crit.get('far', level.far)):g}",
        ),
        (
            "bootstrap",
            f"{esc(boot.get('replicates', '?'))} replicates (seed {esc(boot.get('seed', '?'))})"
            " over test identities (and seeds)",
        ),
        (
            "software",
            f"lowres {esc(versions.get('lowres', '?'))}, git <code>"
            f"{esc(prov.get('git_revision', '?'))}</code>; "
            + ", ".join(f"{esc(k)} {esc(v)}" for k, v in sorted(versions.items()) if k != "lowres"),
        ),
        ("status", esc(prov.get("status", "unknown"))),
        ("wall time", wall_time(timings)),
    ]
    if prov.get("inference"):
        inf = prov["inference"]
        if inf.get("images_per_s") is None:  # every cell reused: nothing was embedded
            speed = "nothing embedded in this run (every cell reused)"
        else:
            speed = (
                f"{esc(inf['images_per_s'])} images/s "
                f"({esc(inf.get('model_images_per_s', '?'))} model-images/s)"
            )
        items.append(("inference", f"{esc(inf.get('device', '?'))}, {speed}"))
    if prov.get("shards"):
        items.append(("shards", f"merged from {len(prov['shards'])} shard folders"))
    return facts(items)


def wall_time(timings: dict[str, Any]) -> str:
    """``total`` first, then the parts (seconds, as recorded in ``timings_s``)."""
    if not timings:
        return "not recorded"
    parts = [f"{esc(k)} {float(v):.1f} s" for k, v in timings.items() if k != "total"]
    total = timings.get("total")
    head = f"<b>{float(total):.1f} s</b> in all" if is_number(total) else ""
    return head + (" (" + ", ".join(parts) + ")" if parts else "")


def recipe_text(details: dict[str, Any]) -> str:
    """One line on how a model was made, from :func:`lowres.sweep.models.model_details`."""
    if "train" in details:
        t = details["train"]
        epochs = t.get("epochs") or f"auto (~{t.get('auto_steps', '?')} steps)"
        lr = "auto" if t.get("lr") is None else t.get("lr")
        aug = "off" if not t.get("augment") else t.get("augment_backend", "on")
        bits = [
            f"{t.get('model')}",
            f"{epochs} epochs",
            f"batch {t.get('batch_size')}",
            f"lr {lr}, {t.get('schedule')} (warm-up {t.get('warmup')})",
            f"wd {t.get('weight_decay')}",
            f"augment {aug}",
            f"data {t.get('data')}" + (f" ({t['preset']})" if t.get("preset") else ""),
        ]
        if t.get("augment_resolution"):
            bits.append(f"resolution augmentation {t['augment_resolution']}")
        return "trained: " + ", ".join(bits)
    if "adapter" in details:
        a = details["adapter"]
        size = "x".join(str(v) for v in a.get("size", []))
        return (
            f"external {details.get('format')}: input {a.get('channels')} {size}, mean "
            f"{a.get('mean')}, std {a.get('std')}, flip {a.get('flip')} "
            f"(adapter from {details.get('adapter_source')})"
        )
    if "checkpoint" in details:
        c = details["checkpoint"]
        return (
            f"checkpoint: {c.get('method')} on {c.get('model')}, {c.get('epochs_completed')} epochs"
        )
    if "unavailable" in details:
        return f"not recorded ({details['unavailable']})"
    return ""


def training_facts(training: pd.DataFrame | None) -> dict[str, str]:
    """model -> epochs trained, last held-out TAR and training time (seed means)."""
    if training is None or training.empty:
        return {}
    out = {}
    for model, g in training.groupby("model"):
        last = g.sort_values("epoch").groupby(["fold", "seed"]).tail(1)
        text = f"{int(last['epoch'].max())} epochs"
        if "val_tar" in last and last["val_tar"].notna().any():
            text += f", held-out TAR@1e-2 {last['val_tar'].mean():.3f}"
        if "seconds" in g:
            per_model = g.groupby(["fold", "seed"])["seconds"].sum().mean()
            text += f", {per_model:.0f} s per model"
        out[str(model)] = text
    return out


def models_table(view: SweepFolder, level: Level, slugs: Slugs, prefix: str) -> str:
    """Every model with how it was made (its training recipe or adapter) and what its log says."""
    recorded = view.provenance.get("models", {})
    config = view.provenance.get("config", {})
    logs = training_facts(view.training)
    rows = []
    for model in level.models:
        info = recorded.get(model, {})
        kind = info.get("kind", "?")
        how = recipe_text(info)
        if model == PIXELS:
            how = "cosine on the raw grey pixels (the reference every model must beat)"
        elif not how and kind == "method":
            how = (
                "training settings not recorded by the lowres that ran this sweep; the sweep's: "
                f"epochs {config.get('epochs') or 'auto'}, backbone "
                f"{config.get('backbone') or 'default'}, data {config.get('data')}"
            )
        anchor = f"{prefix}model-{slugs(model)}"
        link = f' <a href="#{esc(prefix)}prov-{esc(slugs(model))}">config</a>' if info else ""
        rows.append(
            f'<tr id="{esc(anchor)}"><th scope="row">{esc(model)}</th>'
            f'<td class="text">{esc(kind)}</td><td class="text">{esc(how)}{link}</td>'
            f'<td class="text">{esc(logs.get(model, ""))}</td></tr>'
        )
    head = ("model", "kind", "how it was made", "training log")
    return table(head, rows, caption="Models", class_="text")


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def tar_matrix(level: Level, slugs: Slugs, prefix: str, marks: Marks) -> str:
    """TAR at the headline FAR, model x width; a width where a model is below raw pixels is
    marked."""
    grid = tar_grid(level, level.far)
    head = ["model", *[f"{s} px" for s in level.sizes]]
    rows = []
    for model in level.models:
        cells = []
        for size in level.sizes:
            r = grid.get((model, size))
            if r is None:
                cells.append("<td>-</td>")
                continue
            ref = grid.get((PIXELS, size))
            below = model != PIXELS and ref is not None and r["value"] < ref["value"]
            mark = mark_of(marks, level.metric, model, size, level.far)
            cls = " ".join(c for c in ("below" if below else "", mark.get("class_", "")) if c)
            title = mark.get("title") or (
                f"95% interval [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"
                if is_number(r["ci_low"])
                else None
            )
            cells.append(
                num_cell(
                    r["value"],
                    fmt(r["value"]),
                    extra=" &#9660;" if below else "",
                    id=f"{prefix}tar-{slugs(model)}-{size}px",
                    class_=cls or None,
                    title=title,
                )
            )
        rows.append(
            f'<tr id="{esc(prefix)}tar-{esc(slugs(model))}"><th scope="row">{esc(model)}</th>'
            + "".join(cells)
            + "</tr>"
        )
    what = "seed mean" if level.metric == "tar_mean" else "TAR"
    caption = (
        f"TAR at FAR {level.far:g} by probe width ({what}; &#9660; below raw pixels at that "
        "width; hover a cell for its 95% interval)"
    )
    return table(head, rows, caption=caption)


def model_table(view: SweepFolder, level: Level, slugs: Slugs, prefix: str, marks: Marks) -> str:
    """Per model: area under TAR vs log width at each FAR, critical width, widths below pixels."""
    summaries = model_summaries(view.table, level)
    head = ["model", *[f"AUC @FAR {f:g}" for f in level.fars], "critical width", "below raw pixels"]
    rows = []
    for s in summaries:
        cells = [
            num_cell(
                s.auc.get(far),
                fmt(s.auc.get(far)),
                id=f"{prefix}auc-{slugs(s.model)}-far{far:g}",
                **mark_of(marks, "resolution_auc", s.model, None, far),
            )
            for far in level.fars
        ]
        crit_value = s.critical[0][1] if len(s.critical) == 1 else None
        crit_text = critical_text(s.critical)
        cells.append(
            num_cell(
                crit_value,
                crit_text,
                id=f"{prefix}critical-{slugs(s.model)}",
                **mark_of(marks, "critical_size_px", s.model, None, level.far),
            )
        )
        below = (
            "-"
            if s.model == PIXELS
            else ", ".join(f"{z} px ({v:.3f} vs {p:.3f})" for z, v, p in s.below_pixels) or "never"
        )
        cells.append(f'<td class="text">{esc(below)}</td>')
        rows.append(
            f'<tr id="{esc(prefix)}summary-{esc(slugs(s.model))}"><th scope="row">'
            f"{esc(s.model)}</th>" + "".join(cells) + "</tr>"
        )
    caption = (
        "Per model: AUC = mean TAR over log2 width (resolution_auc"
        + (", seed mean" if len(level.seeds) > 1 else "")
        + f"); critical width = smallest width from which every larger width reaches TAR "
        f"{level.target_tar:g} at FAR {level.far:g}; widths where TAR at FAR {level.far:g} is "
        "below raw pixels' (point estimates). Click a column to sort."
    )
    return table(head, rows, caption=caption, sortable=True)


def critical_text(critical: list[tuple[int | None, float]]) -> str:
    """The critical width per seed, once when every seed agrees (``never``: not reached)."""

    def one(value: float) -> str:
        return f"{value:.0f} px" if is_number(value) else "never"

    texts = [one(v) for _, v in critical]
    if not texts:
        return "-"
    if len(set(texts)) == 1:
        return texts[0] + (f" (all {len(texts)} seeds)" if len(texts) > 1 else "")
    return ", ".join(f"{t} (seed {seed})" for t, (seed, _) in zip(texts, critical, strict=True))


def margin_table(level: Level, slugs: Slugs, prefix: str) -> tuple[str, list[str]]:
    """The Ring-loss margins at the headline FAR (model - base x width) and one sentence per
    ``+R`` model; empty when the sweep has none."""
    found = margins(level, level.far)
    if not found:
        return "", []
    by_model: dict[str, list] = {}
    for m in found:
        by_model.setdefault(m.model, []).append(m)
    rows, sentences = [], []
    for model, pair in by_model.items():
        cells = []
        for size in level.sizes:
            m = next((x for x in pair if x.size_px == size), None)
            if m is None:
                cells.append("<td>-</td>")
                continue
            text = f'{m.value:+.3f} <span class="ci">[{m.ci_low:+.3f}, {m.ci_high:+.3f}]</span>' + (
                " *" if m.excludes_zero else ""
            )
            cells.append(
                num_cell(
                    m.value,
                    text,
                    id=f"{prefix}margin-{slugs(model)}-{size}px",
                    class_="excl" if m.excludes_zero else None,
                )
            )
        rows.append(
            f'<tr id="{esc(prefix)}margin-{esc(slugs(model))}"><th scope="row">{esc(model)} - '
            f"{esc(pair[0].reference)}</th>" + "".join(cells) + "</tr>"
        )
        sentences.append(margin_sentence(pair))
    caption = (
        f"Ring-loss margin at FAR {level.far:g}: TAR(+R model) - TAR(its base loss), 95% paired "
        "bootstrap interval over test identities (and seeds); * and bold: the interval excludes 0"
    )
    head = ["pair", *[f"{s} px" for s in level.sizes]]
    return table(head, rows, caption=caption), sentences


# --------------------------------------------------------------------------------------------
# Figures, paper tables, comparison, provenance
# --------------------------------------------------------------------------------------------


def figures_html(view_figures: dict, prefix: str) -> str:
    """Every figure, inline, with how to read it."""
    if not view_figures:
        return '<p class="muted">No figures in this folder.</p>'
    return "\n".join(
        figure(path, stem, FIGURE_CAPTIONS.get(stem, ""), f"{prefix}fig-{stem}")
        for stem, path in view_figures.items()
    )


def paper_tables(view: SweepFolder, level: Level, slugs: Slugs, prefix: str, marks: Marks) -> str:
    """The paper's layout (:func:`lowres.results.paper_table`): per width, methods x FAR,
    TAR in percent with its interval, then the Ring margins; every row and cell anchored."""
    pt = paper_table(view.table)
    out = []
    for block in pt.blocks:
        w = block.size_px
        rows = []
        for model, cells in block.tar.items():
            tds = []
            for far, r in zip(pt.fars, cells, strict=True):
                if r is None:
                    tds.append("<td>-</td>")
                    continue
                tds.append(
                    num_cell(
                        r["value"],
                        pct(r["value"]) + interval(r, 100, ".1f"),
                        id=f"{prefix}paper-{w}px-{slugs(model)}-far{far:g}",
                        **mark_of(marks, pt.metric, model, w, far),
                    )
                )
            rows.append(
                f'<tr id="{esc(prefix)}paper-{w}px-{esc(slugs(model))}"><th scope="row">'
                f"{esc(model)}</th>" + "".join(tds) + "</tr>"
            )
        for model, ref, cells in block.margins:
            tds = []
            for r in cells:
                if r is None:
                    tds.append("<td>-</td>")
                    continue
                excl = bool(r["ci_low"] > 0 or r["ci_high"] < 0)
                sign = "+" if r["value"] > 0 else ""
                tds.append(
                    num_cell(
                        r["value"],
                        sign + pct(r["value"]) + interval(r, 100, ".1f"),
                        class_="excl" if excl else None,
                    )
                )
            rows.append(
                f'<tr id="{esc(prefix)}paper-margin-{w}px-{esc(slugs(model))}"><th scope="row">'
                f"Ring margin {esc(model)} - {esc(ref)}</th>" + "".join(tds) + "</tr>"
            )
        caption = (
            f"{esc(pt.dataset)}: probes {w} px wide (scale {block.scale:g} of {pt.width} px); "
            f"{block.n_genuine:,} genuine / {block.n_impostor:,} impostor pairs"
        )
        head = ["method", *[f"TAR@FAR {f:g}" for f in pt.fars]]
        out.append(table(head, rows, caption=caption, id=f"{prefix}paper-{w}px"))
    out.append(f'<p class="muted">{esc(pt.note)}</p>')
    return "\n".join(out)


def comparison_html(result: CheckResult, baseline: str, prefix: str) -> str:
    """``lowres check``'s verdict, counts and regressed cells (also highlighted in the tables)."""
    verdict = (
        '<span class="verdict-ok">OK</span>'
        if result.ok
        else f'<span class="verdict-bad">{len(result.regressions)} cell(s) REGRESSED</span>'
    )
    head = (
        f"<p>Against <code>{esc(baseline)}</code> at tolerance {result.tolerance:g}: {verdict}; "
        f"compared {result.n_compared} cells ({result.n_missing} baseline cells missing from "
        f"the table, {result.n_new} new). Regressed cells are highlighted in the tables above.</p>"
    )
    if result.ok:
        return head
    cols = ["model", "size_px", "fold", "seed", "metric", "far", "reference"]
    rows = []
    for i, r in result.regressions.iterrows():
        cells = "".join(
            f'<td class="text">{esc("" if pd.isna(r[c]) else r[c])}</td>' for c in cols[1:]
        )
        nums = "".join(num_cell(r[c], fmt(r[c], ".4f")) for c in ("baseline", "value", "delta"))
        rows.append(
            f'<tr id="{esc(prefix)}regression-{i}"><th scope="row">{esc(r["model"])}</th>'
            f"{cells}{nums}</tr>"
        )
    return head + table([*cols, "baseline", "value", "delta"], rows, sortable=True)


def provenance_html(view: SweepFolder, slugs: Slugs, prefix: str) -> str:
    """Each model's full record, the wall times and the sweep's settings, folded."""
    prov = view.provenance
    parts = []
    for model, info in sorted(prov.get("models", {}).items()):
        parts.append(
            f'<details id="{esc(prefix)}prov-{esc(slugs(model))}"><summary>{esc(model)}'
            f"</summary><pre>{esc(json.dumps(info, indent=2, sort_keys=True))}</pre></details>"
        )
    timings = prov.get("timings_s", {})
    if timings:
        rows = [
            f"<tr><th>{esc(k)}</th>{num_cell(v, fmt(v, '.1f'))}</tr>" for k, v in timings.items()
        ]
        parts.append(table(("stage", "seconds"), rows, caption="Wall times (timings_s)"))
    config = prov.get("config")
    if config:
        parts.append(
            "<details><summary>the sweep's settings (config)</summary><pre>"
            f"{esc(json.dumps(config, indent=2, sort_keys=True))}</pre></details>"
        )
    parts.append(f'<p class="muted">From <code>{esc(view.path / "provenance.json")}</code>.</p>')
    return "\n".join(parts)
