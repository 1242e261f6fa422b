"""lowres report: the page of a real (tiny) sweep, its numbers against results.csv, no external
request, half-finished and bad input, the baseline comparison, a study's runs, and the page in a
headless Chromium (console errors, network requests, a non-blank screenshot).

One module-scoped sweep of the tiny preset, with figures, keeps the file to about half a minute
on 2 CPU cores (the browser check adds a few seconds where Chromium is installed)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_sweep import MODELS, cli, empty_shard, tiny_config

from lowres import sweep as S
from lowres.check import save_baseline
from lowres.errors import ResultsError
from lowres.plots import FIGURE_STEMS
from lowres.report import FIGURE_CAPTIONS, REPORT_FILE, write_report
from lowres.results import read_table

pytestmark = pytest.mark.usefixtures("tiny_preset")

SCALES = (1.0, 0.5, 0.25)
WIDTHS = (24, 12, 6)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_preset):
    """One tiny sweep with figures (and so its report): (config, result)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    root = tmp_path_factory.mktemp("report")
    config = tiny_config(root / "run", root / "models", SCALES, plot=True)
    return config, S.run_sweep(config)


class Page(HTMLParser):
    """Every element's id -> (tag, attributes, text inside it), and every src/href."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: dict[str, list] = {}
        self.links: list[tuple[str, str, str]] = []
        self.open: list[list] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.links.append((tag, key, attrs[key] or ""))
        entry = [tag, attrs, ""]
        if "id" in attrs:
            self.ids[attrs["id"]] = entry
        if tag not in ("img", "meta", "br", "link"):
            self.open.append(entry)

    def handle_endtag(self, tag):
        if self.open:
            self.open.pop()

    def handle_data(self, data):
        for entry in self.open:
            entry[2] += data


def page_of(path: Path) -> tuple[str, Page]:
    text = path.read_text(encoding="utf-8")
    return text, Page(text)


def row(table: pd.DataFrame, **where) -> pd.Series:
    sel = np.ones(len(table), dtype=bool)
    for key, value in where.items():
        if key == "far":
            sel &= np.isclose(table["far"].astype(float), value)
        else:
            sel &= (table[key] == value).fillna(False).to_numpy(dtype=bool)
    assert sel.sum() == 1, where
    return table[sel].iloc[0]


def test_the_sweep_writes_its_report_after_the_figures(swept):
    config, result = swept
    path = config.out / REPORT_FILE
    assert path.is_file() and "report" in result.timings
    assert (
        path.stat().st_mtime >= (config.out / "figures" / "tar_vs_resolution.png").stat().st_mtime
    )
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "Incomplete" not in text


def test_every_model_width_and_figure_is_in_the_report(swept, tmp_path):
    config, _ = swept
    written = write_report(config.out, tmp_path / "r.html")
    assert written.path == tmp_path / "r.html" and written.size == written.path.stat().st_size
    text, page = page_of(written.path)
    for model in (*MODELS, "pixels"):
        assert f">{model}</th>" in text, model
    for slug in ("SM", "SM-R-0.01", "pixels"):
        assert f"model-{slug}" in page.ids and f"tar-{slug}" in page.ids
        for width in WIDTHS:
            assert f"tar-{slug}-{width}px" in page.ids
            assert f"paper-{width}px-{slug}" in page.ids
    for width in WIDTHS:
        assert f"paper-{width}px" in page.ids and f"{width} px" in text
    drawn = {p.stem for p in (config.out / "figures").glob("*.png")}
    assert drawn == set(FIGURE_STEMS)
    for stem in FIGURE_STEMS:
        tag, _, caption = page.ids[f"fig-{stem}"]
        assert tag == "figure" and FIGURE_CAPTIONS[stem][:60] in " ".join(caption.split())
    images = [v for t, k, v in page.links if t == "img"]
    assert len(images) == len(FIGURE_STEMS)
    assert all(v.startswith("data:image/png;base64,") for v in images)
    # The header: dataset, pairing, chain and hash, seeds, git revision, wall times.
    prov = json.loads((config.out / "provenance.json").read_text())
    for fact in (
        html.escape(prov["degradation"]["chain"]),
        prov["degradation"]["hash"],
        prov["git_revision"],
        "pairing <code>probe</code>",
        f"{prov['timings_s']['total']:.1f} s",
    ):
        assert fact in text, fact
    # Each trained model with its recipe (recorded in provenance.json at sweep time).
    assert prov["models"]["SM"]["train"]["method"] == "SM"
    assert "trained: cpunet-s, 1 epochs" in text


def test_the_numbers_are_those_of_results_csv(swept):
    config, _ = swept
    table = read_table(config.out / "results.csv")
    _, page = page_of(config.out / REPORT_FILE)

    def shown(anchor: str) -> float:
        tag, attrs, _ = page.ids[anchor]
        assert tag == "td", anchor
        return float(attrs["data-value"])

    level = dict(fold=0, seed=0)
    for model, slug in (("SM", "SM"), ("SM+R(0.01)", "SM-R-0.01"), ("pixels", "pixels")):
        for width in WIDTHS:
            want = row(table, model=model, metric="tar", far=1e-2, size_px=width, **level)
            assert shown(f"tar-{slug}-{width}px") == want["value"]
            assert (
                shown(f"paper-{width}px-{slug}-far0.1")
                == row(table, model=model, metric="tar", far=0.1, size_px=width, **level)["value"]
            )
            # What the reader sees is the stored number, rounded.
            assert page.ids[f"tar-{slug}-{width}px"][2].startswith(f"{want['value']:.3f}")
        auc = row(table, model=model, metric="resolution_auc", far=1e-2, **level)
        assert shown(f"auc-{slug}-far0.01") == auc["value"]
    for width in WIDTHS:
        margin = row(table, model="SM+R(0.01)", metric="ring_margin", far=1e-2, size_px=width)
        cell = page.ids[f"margin-SM-R-0.01-{width}px"]
        assert float(cell[1]["data-value"]) == margin["value"]
        assert f"[{margin['ci_low']:+.3f}, {margin['ci_high']:+.3f}]" in cell[2]
        excl = bool(margin["ci_low"] > 0 or margin["ci_high"] < 0)
        assert (cell[1].get("class") == "excl") == excl
    crit = row(table, model="SM", metric="critical_size_px", **level)["value"]
    shown_crit = page.ids["critical-SM"][1]["data-value"]
    assert (shown_crit == "" and np.isnan(crit)) or float(shown_crit) == crit


def test_the_page_requests_nothing(swept):
    config, _ = swept
    text, page = page_of(config.out / REPORT_FILE)
    for tag, key, value in page.links:
        assert value.startswith(("#", "data:")), (tag, key, value[:80])
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I)
    assert not re.search(r"<link\b", text, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", text, re.I)
    assert not re.search(r"@import", text, re.I)
    assert "Content-Security-Policy" in text and "default-src 'none'" in text


def test_half_finished_sweep_is_reported_with_what_is_missing(swept, tmp_path):
    config, _ = swept
    copy = shutil.copytree(config.out, tmp_path / "half", ignore=shutil.ignore_patterns("cells"))
    prov = json.loads((copy / "provenance.json").read_text())
    prov["status"] = "running"
    (copy / "provenance.json").write_text(json.dumps(prov))
    shutil.rmtree(copy / "figures")
    (copy / "quality.csv").unlink()
    text, page = page_of(write_report(copy).path)
    assert "did not finish (provenance status &#x27;running&#x27;)" in text
    assert "No quality.csv" in text and "No figures" in text
    assert "tar-SM-12px" in page.ids  # what exists is still reported


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "absent", "is not a folder"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no provenance.json"),
        (lambda p: empty_shard(p / "shard", 1, 2) or p / "shard", "lowres merge"),
    ],
)
def test_not_a_sweep_is_one_line_and_exit_2(tmp_path, make, message):
    folder = make(tmp_path)
    result = cli(["report", str(folder)])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.output and not list(tmp_path.rglob("*.html"))


def test_unfinished_sweep_without_results_is_refused(swept, tmp_path):
    config, _ = swept
    folder = tmp_path / "running"
    folder.mkdir()
    prov = json.loads((config.out / "provenance.json").read_text())
    (folder / "provenance.json").write_text(json.dumps({**prov, "status": "running"}))
    result = cli(["report", str(folder)])
    assert result.exit_code == 2 and "has not finished" in result.stderr, result.stderr
    assert not (folder / REPORT_FILE).exists()


def test_bad_out_and_bad_baseline_write_nothing(swept, tmp_path):
    config, _ = swept
    (tmp_path / "a_file").write_text("x")
    before = sorted(p.name for p in config.out.iterdir())
    for args, message in (
        (["--out", str(tmp_path)], "is a directory"),
        (["--out", str(tmp_path / "a_file" / "r.html")], "a file"),
        (
            ["--out", str(tmp_path / "r.html"), "--baseline", str(tmp_path / "nope.csv")],
            "not found",
        ),
    ):
        result = cli(["report", str(config.out), *args])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "r.html").exists()
    assert sorted(p.name for p in config.out.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_baseline_comparison_highlights_regressed_cells(swept, tmp_path):
    config, _ = swept
    table = read_table(config.out / "results.csv")
    sel = (
        (table["model"] == "SM")
        & (table["metric"] == "tar")
        & (table["size_px"] == 12)
        & np.isclose(table["far"], 1e-2)
    )
    better = table.copy()
    better.loc[sel, "value"] = better.loc[sel, "value"] + 0.5
    baseline = save_baseline(better, tmp_path / "baseline.csv")
    out = tmp_path / "r.html"
    result = cli(["report", str(config.out), "--out", str(out), "--baseline", str(baseline)])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"wrote \S+r\.html \(\d+\.\d\d MB\) in \d+\.\d s\n", result.stdout)
    text, page = page_of(out)
    assert "1 cell(s) REGRESSED" in text
    assert page.ids["tar-SM-12px"][1]["class"].split()[-1] == "regressed"
    assert page.ids["paper-12px-SM-far0.01"][1]["class"] == "regressed"
    assert "regressed" not in (page.ids["tar-SM-24px"][1].get("class") or "")
    same = cli(["report", str(config.out), "--out", str(out), "--baseline", str(baseline),
                "--tolerance", "0.6"])  # fmt: skip
    assert same.exit_code == 0 and ">OK<" in out.read_text()


def test_a_failing_report_never_fails_the_sweep(swept, tmp_path, monkeypatch, caplog):
    config, _ = swept
    import lowres.report.build as build

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(build, "render_report", broken)
    copy = tmp_path / "again"
    shutil.copytree(config.out, copy)
    (copy / REPORT_FILE).unlink()
    with caplog.at_level("WARNING", logger="lowres"):
        result = S.run_sweep(tiny_config(copy, config.model_cache, SCALES, plot=True))
    assert result.reused == 3 * len(SCALES) and (copy / "results.csv").is_file()
    assert "report not written (RuntimeError: boom)" in caplog.text
    assert not (copy / REPORT_FILE).exists() and not list(copy.glob(".report.html.*"))


def test_a_study_with_runs_reports_each_run(swept, tmp_path):
    config, _ = swept
    study = tmp_path / "study"
    for name in ("a", "b"):
        shutil.copytree(config.out, study / name, ignore=shutil.ignore_patterns("cells"))
    record = {
        "name": "tiny",
        "kind": "sweep",
        "file": "experiments/tiny.toml",
        "sha256": "0" * 64,
        "runs": {n: {"out": n, "provenance": f"{n}/provenance.json"} for n in ("a", "b", "c")},
        "timings_s": {"total": 1.0},
    }
    (study / "provenance.json").write_text(json.dumps({"study": record}))
    text, page = page_of(write_report(study).path)
    for name in ("a", "b"):
        assert f"{name}--run" in page.ids and f"{name}--tar-SM-12px" in page.ids
        assert f"{name}--fig-tar_vs_resolution" in page.ids
    assert "Run c:" in text  # the missing run is said, not silently dropped
    with pytest.raises(ResultsError, match="none of whose runs"):
        shutil.rmtree(study / "a")
        shutil.rmtree(study / "b")
        write_report(study)


def test_every_figure_has_a_caption():
    assert set(FIGURE_STEMS) <= set(FIGURE_CAPTIONS)


# --------------------------------------------------------------------------------------------
# The page in a real browser
# --------------------------------------------------------------------------------------------


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def open_in_browser(page: Path, work: Path) -> dict:
    """Load ``page`` in headless Chromium with every host name unresolvable: its screenshot
    (1280x2000), the DOM after the scripts ran, the console messages the page logged and the
    URLs the page (not the browser itself) asked the network for, from Chromium's net log.

    Requests are read from the net log's ``URL_REQUEST_START_JOB`` events: those made for a
    page carry the page's initiator, the browser's own background requests (time, spelling
    dictionaries, sign-in) carry ``"not an origin"`` and are left out. Console messages are
    the ``CONSOLE`` lines of ``--enable-logging=stderr`` (Chromium logs every message there,
    errors, uncaught exceptions and Content-Security-Policy refusals included)."""
    shot, netlog = work / "shot.png", work / "net.json"
    args = [
        chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        f"--screenshot={shot}", "--window-size=1280,2000", "--dump-dom",
        "--enable-logging=stderr", "--v=0", f"--log-net-log={netlog}",
        "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={work / 'profile'}",
        page.resolve().as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    requests = [
        e["params"]["url"]
        for e in log["events"]
        if names.get(e["type"]) == "URL_REQUEST_START_JOB"
        and "url" in e.get("params", {})
        and e["params"].get("initiator") != "not an origin"
    ]
    return {
        "screenshot": shot,
        "dom": proc.stdout,
        "console": [line for line in proc.stderr.splitlines() if ":CONSOLE" in line],
        "requests": requests,
    }


needs_browser = pytest.mark.skipif(
    chromium() is None and os.environ.get("CI") != "true",
    reason="no chromium binary (CI installs one and runs this test)",
)


@needs_browser
def test_the_browser_check_catches_what_it_must(tmp_path):
    """The check itself, on a page that does everything the report must not: an external
    image, a console error and an uncaught exception."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><body><h1>x</h1><img src="http://example.com/x.png">'
        '<script>console.error("boom-err"); throw new Error("boom-throw");</script></body></html>'
    )
    seen = open_in_browser(bad, tmp_path)
    assert "http://example.com/x.png" in seen["requests"]
    assert any("boom-err" in line for line in seen["console"])
    assert any("Uncaught Error: boom-throw" in line for line in seen["console"])


@needs_browser
def test_the_report_in_a_headless_browser(swept, tmp_path):
    from PIL import Image

    config, _ = swept
    seen = open_in_browser(config.out / REPORT_FILE, tmp_path)
    assert seen["console"] == [], seen["console"]
    assert seen["requests"] == [], seen["requests"]
    assert 'data-ready="1"' in seen["dom"].split(">", 2)[1]  # the inline script ran to its end
    assert 'title="sort by this column"' in seen["dom"]  # the sortable tables are live
    with Image.open(seen["screenshot"]) as image:
        assert image.format == "PNG" and image.size == (1280, 2000)
        grey = np.asarray(image.convert("L"), dtype=np.float64)
    assert grey.std() > 20 and (grey < 128).mean() > 0.01  # text and figures, not a blank page
