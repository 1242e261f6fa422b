"""lowres sweep --protocol identification|open-set on the tiny synthetic preset.

12 test identities x 4 images and 1-epoch models (SM, SM+R(0.01), pixels): one sweep per
protocol, trained once into a shared module cache. The pixel model's rank-1 and TPIR are
recomputed naively here from its features on the same degraded pixels.
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
from lowres.cells import cell_key, describe_difference, settings_fingerprint
from lowres.check import baseline_frame, check_results
from lowres.embed import embed_many
from lowres.errors import ConfigError, DataError
from lowres.plots import FIGURE_STEMS, PROTOCOL_FIGURE_STEMS, plot_run
from lowres.plots.style import model_styles
from lowres.plots.sweep import figure_ring_margin
from lowres.report import FIGURE_CAPTIONS
from lowres.results import primary_rows, read_table
from lowres.sweep.protocols import check_protocol, protocol_sets

pytestmark = pytest.mark.usefixtures("tiny_preset")

SCALES = (1.0, 0.5, 0.25)
WIDTHS = (6, 12, 24)
MODEL_IDS = {"SM", "SM+R(0.01)", "pixels"}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, tiny_preset):
    """protocol -> (config, table) of one tiny sweep each, models cached once."""
    root = tmp_path_factory.mktemp("protocols")
    out = {}
    for protocol in ("identification", "open-set"):
        config = tiny_config(root / protocol, root / "models", SCALES, protocol=protocol)
        S.run_sweep(config)
        out[protocol] = (config, read_table(config.out / "results.csv"))
    return out


def _pixel_features(config) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(labels, size_px -> float64 L2-normalised raw-pixel features) of the sweep's test split,
    embedded independently on the same degraded pixels."""
    test = S.sweep_test_split(config, 0)
    entries = S.resolve_models(config.models, config.variants)
    pixels = S.prepare_models(entries, config, 0, 0)[-1]
    assert pixels.entry.name == "pixels"
    grid = S.probe_grid(config, test.image_size[1])
    feats = {}
    for scale, size in grid:
        emb = embed_many(
            test.images,
            {"pixels": (pixels.module, pixels.adapter)},
            scale=scale,
            size_px=None if scale == 1.0 else size,
            device="cpu",
            seed=0,
        )["pixels"]
        f = emb.features.double().numpy()
        feats[size] = f / np.linalg.norm(f, axis=1, keepdims=True)
    return test.labels.numpy().astype(np.int64), feats


def test_protocol_sets_rules():
    labels = np.array([2, 0, 2, 1, 0, 2, 3, 3, 1, 4])
    ident = protocol_sets(labels, "identification")
    assert ident.gallery.tolist() == [0, 1, 3, 6, 9]  # first image of each identity
    assert ident.probes.tolist() == [2, 4, 5, 7, 8] and ident.nonmated.size == 0
    open_set = protocol_sets(labels, "open-set")
    enrolled = set(labels[open_set.gallery].tolist())
    assert len(enrolled) == 2  # half of 5 identities, rounded down
    assert set(labels[open_set.probes].tolist()) <= enrolled
    assert not set(labels[open_set.nonmated].tolist()) & enrolled
    together = np.sort(np.r_[open_set.gallery, open_set.probes, open_set.nonmated])
    assert together.tolist() == list(range(labels.size))
    again = protocol_sets(labels, "open-set")  # fixed seed: the same split every time
    assert again.gallery.tolist() == open_set.gallery.tolist()


def test_verification_keys_unchanged():
    base = dict(data="synth", preset=None, pairing="probe", degrade_hash="0" * 12)
    plain = settings_fingerprint(**base, seeds=[0], folds=[0])
    assert settings_fingerprint(**base, seeds=[0], folds=[0], protocol="verification") == plain
    assert "protocol" not in plain
    ident = settings_fingerprint(**base, seeds=[0], folds=[0], protocol="identification")
    assert ident == {**plain, "protocol": "identification"}
    cell = dict(data_digest="d", model="SM", model_hash="h", scale=1.0, size_px=24, fold=0)
    cell |= dict(seed=0, fars=[1e-2])
    assert "protocol" not in cell_key(fingerprint=plain, **cell)
    assert cell_key(fingerprint=ident, **cell)["protocol"] == "identification"
    assert "protocol: 'identification' -> 'verification'" in describe_difference(ident, plain)


def _naive(labels, clean, probe, sets):
    """(ranks of the mated probes, their true scores, non-mated top scores) by a full matrix and
    an argsort, pessimistic ties."""
    gal = sets.gallery
    sims = probe[sets.probes] @ clean[gal].T
    true_col = np.searchsorted(labels[gal], labels[sets.probes])
    true = sims[np.arange(sims.shape[0]), true_col]
    order = np.argsort(-sims, axis=1, kind="stable")
    ranks = np.empty(sims.shape[0], np.int64)
    for i in range(sims.shape[0]):
        pos = int(np.flatnonzero(order[i] == true_col[i])[0])
        # pessimistic: every other identity tied with the true one is counted above it
        ranks[i] = 1 + pos + int(np.count_nonzero(sims[i, order[i, pos + 1 :]] == true[i]))
    top = (probe[sets.nonmated] @ clean[gal].T).max(axis=1) if sets.nonmated.size else None
    return ranks, true, top


def _rows(table, metric):
    return table[(table["metric"] == metric) & (table["fold"] == 0)]


def test_identification_rows_per_model_and_width(sweeps):
    _, table = sweeps["identification"]
    for metric in ("rank1", "rank5", "rank10"):
        rows = _rows(table, metric)
        assert set(zip(rows["model"], rows["size_px"], strict=True)) == {
            (m, w) for m in MODEL_IDS for w in WIDTHS
        }
        # 12 identities x 3 probes each; the gallery is each identity's first image
        assert set(rows["n_genuine"]) == {36}
        assert ((rows["ci_low"] <= rows["value"]) & (rows["value"] <= rows["ci_high"])).all()
    r1 = _rows(table, "rank1").set_index(["model", "size_px"])["value"]
    r5 = _rows(table, "rank5").set_index(["model", "size_px"])["value"]
    assert (r1 <= r5).all()
    margin = table[table["metric"] == "ring_margin_rank1"]
    assert set(margin["model"]) == {"SM+R(0.01)"} and set(margin["reference"]) == {"SM"}
    assert sorted(margin["size_px"]) == list(WIDTHS)
    assert ((margin["ci_low"] <= margin["value"]) & (margin["value"] <= margin["ci_high"])).all()
    # the verification rows are still there
    assert len(_rows(table, "tar")) == len(MODEL_IDS) * len(WIDTHS) * 2


def test_identification_rank1_matches_naive_pixels(sweeps):
    config, table = sweeps["identification"]
    labels, feats = _pixel_features(config)
    sets = protocol_sets(labels, "identification")
    pixel_rows = table[(table["model"] == "pixels") & (table["fold"] == 0)]
    for width in WIDTHS:
        ranks, _, _ = _naive(labels, feats[24], feats[width], sets)
        at = pixel_rows[pixel_rows["size_px"] == width].set_index("metric")["value"]
        assert at["rank1"] == pytest.approx(np.mean(ranks == 1), abs=1e-12)
        assert at["rank5"] == pytest.approx(np.mean(ranks <= 5), abs=1e-12)


def test_terminal_summary(sweeps):
    _, table = sweeps["identification"]
    text = S.format_summary(table, 1e-2)
    assert "rank-1 identification rate" in text and "24px" in text.split("rank-1")[1]
    assert "rank-1" not in S.format_summary(table[table["metric"] != "rank1"], 1e-2)


def test_cmc_table(sweeps):
    config, table = sweeps["identification"]
    cmc = pd.read_csv(config.out / "cmc.csv")
    assert set(cmc["model"]) == MODEL_IDS and set(cmc["size_px"]) == set(WIDTHS)
    for (_, _), curve in cmc.groupby(["model", "size_px"]):
        assert list(curve["rank"]) == list(range(1, 13))
        assert (np.diff(curve["rate"]) >= 0).all() and curve["rate"].iloc[-1] == 1.0
    rank1 = _rows(table, "rank1").set_index(["model", "size_px"])["value"]
    first = cmc[cmc["rank"] == 1].set_index(["model", "size_px"])["rate"]
    assert np.allclose(first.sort_index(), rank1.sort_index())


def test_open_set_rows_and_naive_tpir(sweeps):
    config, table = sweeps["open-set"]
    tpir = _rows(table, "tpir")
    assert set(zip(tpir["model"], tpir["size_px"], tpir["far"], strict=True)) == {
        (m, w, f) for m in MODEL_IDS for w in WIDTHS for f in config.fars
    }
    assert (tpir["far_achieved"] <= tpir["far"] + 1e-12).all()
    labels, feats = _pixel_features(config)
    sets = protocol_sets(labels, "open-set")
    # half the 12 identities enrolled: 6 x 3 mated probes, 6 x 4 non-mated
    assert sets.gallery.size == 6 and set(tpir["n_genuine"]) == {18}
    assert set(tpir["n_impostor"]) == {24}
    assert not _rows(table, "rank1").size
    for width in WIDTHS:
        ranks, true, top = _naive(labels, feats[24], feats[width], sets)
        for far in config.fars:
            c = int(np.floor(far * top.size + 1e-9))
            boundary = np.sort(top)[::-1][c]
            expect = np.mean((ranks == 1) & (true > boundary))
            row = tpir[(tpir["model"] == "pixels") & (tpir["size_px"] == width)]
            assert row[np.isclose(row["far"], far)]["value"].item() == pytest.approx(expect)


def test_protocol_figures(sweeps):
    drawn = {}
    for protocol, (config, _) in sweeps.items():
        drawn[protocol] = {p.stem for p in plot_run(config.out) if p.suffix == ".png"}
    assert {"rank1_vs_resolution", "cmc", "ring_margin_rank1"} <= drawn["identification"]
    assert "tpir_vs_resolution" not in drawn["identification"]
    assert "tpir_vs_resolution" in drawn["open-set"]
    assert not {"rank1_vs_resolution", "cmc", "ring_margin_rank1"} & drawn["open-set"]
    assert set(FIGURE_STEMS) <= drawn["identification"]
    template = {"template_vs_resolution", "ring_margin_template"}
    assert not template & (drawn["identification"] | drawn["open-set"])
    assert set(PROTOCOL_FIGURE_STEMS) <= set(FIGURE_CAPTIONS)


def test_rank1_margin_figure_draws_the_rows(sweeps):
    """The rank-1 margin figure draws each +R model's ring_margin_rank1 rows: one line whose
    points are the rows' values."""
    table = sweeps["identification"][1]
    prim = primary_rows(table)
    styles = model_styles(prim[["model", "method"]])
    fig = figure_ring_margin(prim, styles, "ring_margin_rank1")
    rows = prim[prim["metric"] == "ring_margin_rank1"].sort_values("size_px")
    assert len(rows) == len(SCALES)
    (ax,) = fig.axes[:1]
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(SCALES)]
    assert len(lines) == 1
    assert np.allclose(lines[0].get_ydata(), rows["value"])
    assert np.allclose(lines[0].get_xdata(), rows["size_px"])
    assert (
        figure_ring_margin(primary_rows(sweeps["open-set"][1]), styles, "ring_margin_rank1") is None
    )


def test_folds_pooled(tmp_path, sweeps):
    """Two folds: pooled rows (fold -1) join both folds' probes (each searched in its own
    fold's gallery); the rank-1 margin and the CMC sit at the pooled level."""
    config, _ = sweeps["identification"]
    pooled = tiny_config(
        tmp_path / "pooled", config.model_cache, (1.0, 0.25), protocol="identification",
        folds=(0, 1),
    )  # fmt: skip
    S.run_sweep(pooled)
    table = read_table(pooled.out / "results.csv")
    rank1 = table[table["metric"] == "rank1"]
    for _, rows in rank1.groupby(["model", "size_px"]):
        by_fold = rows.set_index("fold")
        hits = (by_fold.loc[[0, 1], "value"] * by_fold.loc[[0, 1], "n_genuine"]).sum()
        assert by_fold.loc[-1, "n_genuine"] == 72
        assert by_fold.loc[-1, "value"] == pytest.approx(hits / 72)
    margin = table[table["metric"] == "ring_margin_rank1"]
    assert set(margin["fold"]) == {-1} and len(margin) == 2
    cmc = pd.read_csv(pooled.out / "cmc.csv")
    first = cmc[cmc["rank"] == 1].set_index(["model", "size_px"])["rate"].sort_index()
    level = rank1[rank1["fold"] == -1].set_index(["model", "size_px"])["value"].sort_index()
    assert np.allclose(first, level)


def test_resume_and_shards_give_the_same_bytes(tmp_path, sweeps):
    """A rerun reuses every identification cell, and two shards merged write the same
    results.csv and cmc.csv as the unsharded sweep."""
    config, _ = sweeps["identification"]
    ref = (config.out / "results.csv").read_bytes(), (config.out / "cmc.csv").read_bytes()
    again = S.run_sweep(config)
    assert again.computed == 0 and again.reused == len(MODEL_IDS) * len(SCALES)
    assert (config.out / "results.csv").read_bytes() == ref[0]
    dirs = []
    for i in (1, 2):
        shard = dataclasses.replace(config, out=tmp_path / f"shard{i}", shard=(i, 2))
        S.run_sweep(shard)
        dirs.append(shard.out)
    merged = tmp_path / "merged"
    S.merge_shards(merged, dirs, plot=False)
    assert (merged / "results.csv").read_bytes() == ref[0]
    assert (merged / "cmc.csv").read_bytes() == ref[1]


def test_cli_protocol_open_set(tmp_path, sweeps):
    config, table = sweeps["open-set"]
    out = tmp_path / "cli"
    args = ["sweep", "--data", "synth", "--preset", "tinytest", "--models", "SM,SM+R(0.01)"]
    args += ["--scales", "1,0.5,0.25", "--far", "1e-2,1e-1", "--epochs", "1", "--device", "cpu"]
    args += ["--batch-size", "64", "--jobs", "1"]
    args += ["--model-cache", str(config.model_cache), "--no-plot", "--out", str(out)]
    result = cli([*args, "--protocol", "open-set"])
    assert result.exit_code == 0, result.output
    assert "TPIR at FPIR 0.01 (open set" in result.output
    mine = read_table(out / "results.csv")
    pick = ["model", "size_px", "far", "value", "threshold", "far_achieved"]
    expect = table[table["metric"] == "tpir"][pick].reset_index(drop=True)
    assert mine[mine["metric"] == "tpir"][pick].reset_index(drop=True).equals(expect)


def test_protocol_recorded_in_provenance(sweeps):
    for protocol, (config, _) in sweeps.items():
        prov = json.loads((config.out / "provenance.json").read_text())
        assert prov["config"]["protocol"] == protocol
        assert prov["settings"]["protocol"] == protocol
        assert prov["protocol"]["name"] == protocol


def test_check_flags_a_rank1_regression(sweeps):
    _, table = sweeps["identification"]
    worse = table.copy()
    hit = (worse["metric"] == "rank1") & (worse["model"] == "SM") & (worse["size_px"] == 24)
    worse.loc[hit, "value"] = worse.loc[hit, "value"] - 0.2
    assert check_results(table, baseline_frame(table), tolerance=0.05).ok
    result = check_results(worse, baseline_frame(table), tolerance=0.05)
    assert not result.ok
    bad = result.regressions
    assert list(bad["metric"]) == ["rank1"] and list(bad["model"]) == ["SM"]
    assert list(bad["size_px"]) == [24] and bad["delta"].item() == pytest.approx(-0.2)


def test_unknown_protocol_one_line_exit_2(tmp_path):
    out = tmp_path / "bad"
    args = ["sweep", "--data", "synth", "--preset", "tinytest", "--models", "SM"]
    result = cli([*args, "--out", str(out), "--no-plot", "--protocol", "closed"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "protocol 'closed'" in lines[0] and "identification" in lines[0]
    assert not out.exists()


def test_single_image_identity_refused(tmp_path, monkeypatch, sweeps):
    config, _ = sweeps["identification"]
    test = S.sweep_test_split(config, 0)
    labels = test.labels
    drop = torch.nonzero(labels == 3)[1:, 0]  # identity 3 keeps one image
    keep = torch.tensor([i for i in range(labels.numel()) if i not in set(drop.tolist())])
    single = test.subset(keep)
    with pytest.raises(DataError, match="has a single image"):
        check_protocol(single, 0, "identification")
    check_protocol(single, 0, "open-set")  # non-mated probes need no second image
    monkeypatch.setattr("lowres.sweep.run.sweep_test_split", lambda config, fold: single)
    out = tmp_path / "single"
    args = ["sweep", "--data", "synth", "--preset", "tinytest", "--models", "SM"]
    result = cli([*args, "--out", str(out), "--no-plot", "--protocol", "identification"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "single image" in lines[0] and "verification" in lines[0]
    assert not out.exists()


def test_unknown_protocol_in_config_refused(tmp_path):
    config = tiny_config(tmp_path / "x", tmp_path / "m", SCALES, protocol="1:N")
    with pytest.raises(ConfigError, match="one of verification, identification, open-set"):
        S.plan_sweep(config)
    assert not (tmp_path / "x").exists()


def test_fpir_outside_zero_one_is_one_line_exit_2(tmp_path):
    out = tmp_path / "x"
    for bad in ("1.5", "0", "-0.1"):
        result = cli(["sweep", "--protocol", "open-set", "--far", bad, "--out", str(out)])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert "outside (0, 1)" in lines[0] and "FPIR" in lines[0], lines[0]
        assert not out.exists()
