"""lowres sweep --protocol template on the tiny synthetic preset, and its rules by hand.

12 test identities x 4 images and 1-epoch models (SM, SM+R(0.01), pixels): with the default
template size 2 every identity forms two templates, so 12 genuine and 264 impostor template
pairs. The pixel model's template TAR is recomputed here by an independent naive path (pooled
by hand with numpy, every template pair scored, thresholds swept one by one).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_sweep import cli, tiny_config

from lowres import sweep as S
from lowres.cells import settings_fingerprint
from lowres.check import baseline_frame, check_results, save_baseline
from lowres.embed import embed_many
from lowres.errors import ConfigError, DataError
from lowres.plots import plot_run
from lowres.plots.protocols import figure_template_vs_resolution
from lowres.plots.style import model_styles
from lowres.results import primary_rows, read_table, write_table
from lowres.sweep.protocols import (
    check_protocol,
    form_templates,
    template_cell,
    template_scores,
)

pytestmark = pytest.mark.usefixtures("tiny_preset")

SCALES = (1.0, 0.5, 0.25)
WIDTHS = (6, 12, 24)
MODEL_IDS = {"SM", "SM+R(0.01)", "pixels"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_preset):
    """(config, table) of one tiny template sweep."""
    root = tmp_path_factory.mktemp("template")
    config = tiny_config(root / "template", root / "models", SCALES, protocol="template")
    S.run_sweep(config)
    return config, read_table(config.out / "results.csv")


def _naive_tar(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    """Best TAR over every candidate threshold (each score, and above them all) whose FAR,
    accepting ``score >= t``, is at most ``far``: the definition, one threshold at a time."""
    best = 0.0
    for t in [*np.unique(scores), np.inf]:
        if np.count_nonzero(scores[~same] >= t) / np.count_nonzero(~same) <= far:
            best = max(best, np.count_nonzero(scores[same] >= t) / np.count_nonzero(same))
    return best


def _naive_templates(labels: np.ndarray, k: int) -> list[list[int]]:
    """Each identity (ascending) its images in index order, cut into runs of k, the remainder
    added to the last run."""
    out = []
    for ident in sorted(set(labels.tolist())):
        idx = [i for i, lab in enumerate(labels.tolist()) if lab == ident]
        runs = [idx[j : j + k] for j in range(0, len(idx) - len(idx) % k, k)]
        runs[-1] += idx[len(idx) - len(idx) % k :]
        out += runs
    return out


def _naive_scores(labels, gallery, probe, k):
    """(scores of every template pair s < t, genuine mask): pooled by hand in float64."""
    templates = _naive_templates(labels, k)

    def pool(feats, rows):
        x = feats[rows] / np.linalg.norm(feats[rows], axis=1, keepdims=True)
        m = x.mean(axis=0)
        return m / np.linalg.norm(m)

    scores, same = [], []
    for s in range(len(templates)):
        for t in range(s + 1, len(templates)):
            scores.append(pool(gallery, templates[s]) @ pool(probe, templates[t]))
            same.append(labels[templates[s][0]] == labels[templates[t][0]])
    return np.array(scores), np.array(same)


def test_form_templates_rules():
    labels = np.array([3, 1, 3, 1, 3, 1, 1, 3, 3])
    t = form_templates(labels, 2)
    # identity 1: images 1,3 | 5,6; identity 3 (five images): 0,2 | 4,7,8 (remainder joins)
    assert t.labels.tolist() == [1, 1, 3, 3]
    assert t.of_image.tolist() == [2, 0, 2, 0, 3, 1, 1, 3, 3]
    groups = [np.flatnonzero(t.of_image == i).tolist() for i in range(4)]
    assert groups == [[1, 3], [5, 6], [0, 2], [4, 7, 8]]
    assert groups == _naive_templates(labels, 2)
    assert form_templates(labels, 1).labels.size == labels.size  # one image per template
    assert form_templates(labels, 4).labels.tolist() == [1, 3]  # 3's fifth image joins
    with pytest.raises(DataError, match="fewer than the template size 5: its template would"):
        form_templates(labels, 5)
    with pytest.raises(ConfigError, match="below 1"):
        form_templates(labels, 0)


def test_pooling_normalises_each_medium_first():
    """A template of a long and a short feature pools to their normalised mean, so the short
    one counts as much as the long one (the IJB-A / CS3 rule)."""
    labels = np.array([0, 0, 1, 1])
    feats = np.array([[10.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    scores = template_scores(feats, feats, form_templates(labels, 2))
    assert scores.tolist() == [pytest.approx(np.sqrt(0.5), abs=1e-7)]  # not 0.995...


def test_hand_built_ties():
    """Three identities of four images, axis features: genuine scores 1, 0, 1; impostors two
    at 1 (tied with the genuine ones) and ten at 0 (tied with the middle genuine one)."""
    e = np.eye(3)
    # each template's two media point the same way (different lengths: pooled, they are equal)
    media = [e[0], e[0], e[0], e[0], e[1], e[1], e[2], e[2], e[2], e[2], e[2], e[2]]
    feats = torch.tensor(np.array(media) * np.arange(1, 13)[:, None])
    labels = np.repeat([0, 1, 2], 4)
    arrays, rows = template_cell(labels, feats, feats, (0.1, 0.2, 0.5), 2)
    assert arrays["tpl_labels"].tolist() == [0, 0, 1, 1, 2, 2]
    scores = arrays["tpl_scores"].astype(np.float64)
    naive, same = _naive_scores(labels, feats.numpy(), feats.numpy(), 2)
    assert np.array_equal(scores, naive) and same.sum() == 3
    assert sorted(scores[~same]) == [0.0] * 10 + [1.0] * 2
    by_far = {r["far"]: r for r in rows}
    assert {r["metric"] for r in rows} == {"template_tar"}
    # FAR 0.1: one impostor of 12 allowed, but the top two tie at 1: both rejected, and with
    # them every genuine 1 -> TAR 0 at the next float above 1
    assert by_far[0.1]["value"] == 0.0 and by_far[0.1]["far_achieved"] == 0.0
    assert by_far[0.1]["threshold"] == np.nextafter(1.0, np.inf)
    # FAR 0.2 and 0.5: the ten impostors tied at 0 are all rejected, so the genuine 0 too
    for far in (0.2, 0.5):
        assert by_far[far]["value"] == pytest.approx(2 / 3)
        assert by_far[far]["threshold"] == 1.0 and by_far[far]["far_achieved"] == 2 / 12
    for far, row in by_far.items():
        assert row["value"] == pytest.approx(_naive_tar(scores, same, far))
        assert (row["n_genuine"], row["n_impostor"]) == (3, 12)


def _pixel_features(config) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(labels, size_px -> float64 raw-pixel features) of the sweep's test split, embedded
    independently on the same degraded pixels."""
    test = S.sweep_test_split(config, 0)
    entries = S.resolve_models(config.models, config.variants)
    pixels = S.prepare_models(entries, config, 0, 0)[-1]
    assert pixels.entry.name == "pixels"
    feats = {}
    for scale, size in S.probe_grid(config, test.image_size[1]):
        emb = embed_many(
            test.images,
            {"pixels": (pixels.module, pixels.adapter)},
            scale=scale,
            size_px=None if scale == 1.0 else size,
            device="cpu",
            seed=0,
        )["pixels"]
        feats[size] = emb.features.double().numpy()
    return test.labels.numpy().astype(np.int64), feats


def test_template_tar_matches_naive_pixels(sweep):
    config, table = sweep
    labels, feats = _pixel_features(config)
    rows = table[(table["metric"] == "template_tar") & (table["model"] == "pixels")]
    for width in WIDTHS:
        scores, same = _naive_scores(labels, feats[24], feats[width], 2)
        scores = scores.astype(np.float32).astype(np.float64)  # as the cell stores them
        assert (same.sum(), (~same).sum()) == (12, 264)
        at = rows[rows["size_px"] == width]
        for far in config.fars:
            row = at[np.isclose(at["far"], far)]
            assert row["value"].item() == pytest.approx(_naive_tar(scores, same, far), abs=1e-12)
            assert row["far_achieved"].item() <= far


def test_template_rows_per_model_width_and_far(sweep):
    config, table = sweep
    tar = table[table["metric"] == "template_tar"]
    assert set(zip(tar["model"], tar["size_px"], tar["far"], strict=True)) == {
        (m, w, f) for m in MODEL_IDS for w in WIDTHS for f in config.fars
    }
    assert set(tar["fold"]) == {0}
    assert set(tar["n_genuine"]) == {12} and set(tar["n_impostor"]) == {264}
    assert ((tar["ci_low"] <= tar["value"]) & (tar["value"] <= tar["ci_high"])).all()
    margin = table[table["metric"] == "ring_margin_template"]
    assert set(margin["model"]) == {"SM+R(0.01)"} and set(margin["reference"]) == {"SM"}
    assert len(margin) == len(WIDTHS) * len(config.fars)
    assert (margin["ci_low"] <= margin["ci_high"]).all()
    mine = tar.set_index(["model", "size_px", "far"])["value"]
    for _, row in margin.iterrows():
        key = (row["size_px"], row["far"])
        expect = mine[("SM+R(0.01)", *key)] - mine[("SM", *key)]
        assert row["value"] == pytest.approx(expect)
    # the verification rows are all still there
    assert len(table[table["metric"] == "tar"]) == len(MODEL_IDS) * len(WIDTHS) * 2
    assert "template TAR at FAR 0.01" in S.format_summary(table, 1e-2)


def test_template_figures(sweep):
    """plot_run draws the template figures (and no identification figure): the template TAR
    panel's lines are the template_tar rows, one panel per FAR."""
    config, table = sweep
    drawn = {p.stem for p in plot_run(config.out, force=True) if p.suffix == ".png"}
    assert {"template_vs_resolution", "ring_margin_template", "tar_vs_resolution"} <= drawn
    assert not {"rank1_vs_resolution", "cmc", "ring_margin_rank1", "tpir_vs_resolution"} & drawn
    prim = primary_rows(table)
    styles = model_styles(prim[["model", "method"]])
    fig = figure_template_vs_resolution(prim, styles)
    panels = [ax for ax in fig.axes if ax.get_title().startswith("FAR")]
    assert len(panels) == len(config.fars)
    rows = prim[(prim["metric"] == "template_tar") & (prim["model"] == "SM")]
    for ax, far in zip(panels, sorted(config.fars), strict=True):
        want = rows[np.isclose(rows["far"], far)].sort_values("size_px")["value"].to_numpy()
        got = [ln.get_ydata() for ln in ax.get_lines() if len(ln.get_xdata()) == len(WIDTHS)]
        assert any(np.allclose(g, want) for g in got)
    assert figure_template_vs_resolution(prim[prim["metric"] == "tar"], styles) is None


def test_protocol_recorded_and_rerun_reuses(sweep):
    config, _ = sweep
    prov = json.loads((config.out / "provenance.json").read_text())
    assert prov["config"]["protocol"] == "template" and prov["settings"]["template_size"] == 2
    assert prov["protocol"]["name"] == "template" and prov["protocol"]["template_size"] == 2
    assert "joins the identity's last template" in prov["protocol"]["templates"]
    before = (config.out / "results.csv").read_bytes()
    again = S.run_sweep(config)
    assert again.computed == 0 and again.reused == len(MODEL_IDS) * len(SCALES)
    assert (config.out / "results.csv").read_bytes() == before


def test_templates_of_one_image_are_verification(tmp_path, sweep):
    """With --template-size 1 every image is its own template; the split lists each identity's
    images together, so the template pairs are the verification pairs and the rows agree."""
    config, _ = sweep
    assert (np.diff(S.sweep_test_split(config, 0).labels.numpy()) >= 0).all()
    one = tiny_config(tmp_path / "one", config.model_cache, (1.0, 0.25), protocol="template")
    S.run_sweep(dataclasses.replace(one, template_size=1))
    table = read_table(one.out / "results.csv")
    keys = ["model", "size_px", "far"]
    tar = table[table["metric"] == "tar"].set_index(keys).sort_index()
    tpl = table[table["metric"] == "template_tar"].set_index(keys).sort_index()
    assert len(tpl) == 3 * 2 * 2
    for col in ("value", "threshold", "far_achieved", "n_genuine", "n_impostor"):
        assert np.allclose(tpl[col].astype(float), tar[col].astype(float), rtol=0, atol=1e-6)


def test_template_size_in_the_keys():
    base = dict(data="synth", preset=None, pairing="probe", degrade_hash="0" * 12)
    two = settings_fingerprint(**base, seeds=[0], folds=[0], protocol="template", template_size=2)
    three = settings_fingerprint(**base, seeds=[0], folds=[0], protocol="template", template_size=3)
    assert two["template_size"] == 2 and two != three
    assert "template_size" not in settings_fingerprint(**base, seeds=[0], folds=[0])
    assert "template_size" not in S.SweepConfig().to_json()


def test_folds_pooled(tmp_path, sweep):
    """Two folds: the pooled rows (fold -1) join both folds' template pairs under one
    threshold, and the template margins sit at that level."""
    config, _ = sweep
    pooled = tiny_config(
        tmp_path / "pooled", config.model_cache, (1.0, 0.25), protocol="template", folds=(0, 1)
    )
    S.run_sweep(pooled)
    table = read_table(pooled.out / "results.csv")
    tar = table[table["metric"] == "template_tar"]
    level = tar[tar["fold"] == -1]
    assert set(level["n_genuine"]) == {24} and set(level["n_impostor"]) == {528}
    store_rows = level[(level["model"] == "pixels") & (level["size_px"] == 6)]
    cells = sorted((pooled.out / "cells").glob("pixels__0006px__f*.npz"))
    assert len(cells) == 2  # one per fold
    scores, same = [], []
    for path in cells:
        with np.load(path) as a:
            lab = a["tpl_labels"].astype(np.int64)
            i, j = np.triu_indices(lab.size, k=1)
            scores.append(a["tpl_scores"].astype(np.float64))
            same.append(lab[i] == lab[j])
    scores, same = np.concatenate(scores), np.concatenate(same)
    for _, row in store_rows.iterrows():
        assert row["value"] == pytest.approx(_naive_tar(scores, same, row["far"]))
    margin = table[table["metric"] == "ring_margin_template"]
    assert set(margin["fold"]) == {-1} and len(margin) == 2 * len(pooled.fars)


def _cli_args(out, cache):
    args = ["sweep", "--data", "synth", "--preset", "tinytest", "--models", "SM"]
    args += ["--scales", "1,0.5", "--epochs", "1", "--device", "cpu", "--jobs", "1"]
    return [*args, "--model-cache", str(cache), "--no-plot", "--out", str(out)]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--template-size", "0"], "template size 0 is below 1, so every template would have no"),
        (["--template-size", "-2"], "template size -2 is below 1"),
        (["--template-size", "5"], "fewer than the template size 5, so its template would have"),
        (["--template-size", "3"], "template 1:1 has no genuine template pair; use --template-"),
    ],
)
def test_bad_templates_one_line_exit_2(tmp_path, extra, says):
    out = tmp_path / "bad"
    result = cli([*_cli_args(out, tmp_path / "models"), "--protocol", "template", *extra])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines
    assert not out.exists() and not (tmp_path / "models").exists()


def test_help_names_the_protocol():
    text = cli(["sweep", "--help"]).output
    assert "template: 1:1 TAR@FAR between templates" in " ".join(text.split())
    assert "--template-size" in text


def test_template_size_with_another_protocol_refused(tmp_path):
    out = tmp_path / "bad"
    result = cli([*_cli_args(out, tmp_path / "m"), "--template-size", "2"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "applies to --protocol template only" in lines[0]
    assert not out.exists()


def test_identity_short_of_a_template_refused(sweep):
    """An identity with a single image has no template of two: refused before training."""
    config, _ = sweep
    test = S.sweep_test_split(config, 0)
    threes = torch.nonzero(test.labels == 3)[:, 0].tolist()
    keep = torch.tensor([i for i in range(test.labels.numel()) if i not in threes[1:]])
    with pytest.raises(DataError, match=r"identity 3 .* has 1 image\(s\), fewer than the templ"):
        check_protocol(test.subset(keep), 0, "template", 2)
    check_protocol(test.subset(keep), 0, "template", 1)  # templates of one image pool nothing


def test_check_flags_a_template_tar_regression(tmp_path, sweep):
    _, table = sweep
    baseline = save_baseline(table, tmp_path / "baseline.csv")
    assert "template_tar" in set(pd.read_csv(baseline)["metric"])
    worse = table.copy()
    hit = (worse["metric"] == "template_tar") & (worse["model"] == "pixels")
    hit &= (worse["size_px"] == 24) & np.isclose(worse["far"], 0.1)
    worse.loc[hit, "value"] -= 0.25
    assert check_results(table, baseline_frame(table), tolerance=0.05).ok
    result = check_results(worse, baseline_frame(table), tolerance=0.05)
    assert list(result.regressions["metric"]) == ["template_tar"]
    assert result.regressions["delta"].item() == pytest.approx(-0.25)
    run = tmp_path / "run"
    run.mkdir()
    write_table(worse, run / "results.csv")
    cli_result = cli(["check", str(run), "--baseline", str(baseline), "--tolerance", "0.05"])
    assert cli_result.exit_code == 1, cli_result.output
    assert "template_tar" in cli_result.output and "1 cell(s) REGRESSED" in cli_result.output
