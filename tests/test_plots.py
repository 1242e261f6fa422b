"""lowres.plots: every figure is drawn from a synthetic tidy table, PNG and PDF, atomically."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lowres.errors import ResultsError
from lowres.plots import X_LABEL, model_styles, plot_run
from lowres.results import make_row, read_table, robustness_rows, to_frame, write_table

MODELS = ("SM", "SM+R(0.01)", "SF", "SF+R(0.01)", "pixels")
SIZES = (48, 24, 12, 6)


def _write_run(folder):
    rng = np.random.default_rng(0)
    ctx = {"dataset": "synth", "pairing": "probe", "degrade": "bicubic>bicubic"}
    ctx["degrade_hash"] = "0123456789ab"
    rows, roc, norms, scores = [], [], [], []
    for m in MODELS:
        for size in SIZES:
            base = {**ctx, "model": m, "method": m, "scale": size / 48, "size_px": size}
            base |= {"fold": 0, "seed": 0}
            for far in (1e-2, 1e-1):
                v = float(np.clip(size / 60 + 0.1 * ("+R" in m) + rng.normal(0, 0.02), 0, 1))
                rows.append(
                    make_row(
                        **base,
                        metric="tar",
                        far=far,
                        value=v,
                        ci_low=v - 0.05,
                        ci_high=v + 0.05,
                        n_genuine=90,
                        n_impostor=4000,
                        flagged=False,
                    )
                )
                if "+R" in m:
                    rows.append(
                        make_row(
                            **base,
                            metric="ring_margin",
                            far=far,
                            value=0.1,
                            ci_low=0.02,
                            ci_high=0.18,
                            reference=m.split("+")[0],
                        )
                    )
            rows.append(make_row(**base, metric="genuine_cos_mean", value=size / 60))
            rows.append(make_row(**base, metric="dprime", value=size / 12))
            for far in (1e-2, 1e-1):
                for metric, value in (("transfer_far", far * 48 / size), ("transfer_frr", 0.5)):
                    row = make_row(**base, metric=metric, far=far, value=value, threshold=0.4)
                    rows.append(row)
            edges = np.linspace(-1, 1, 129)
            gen = np.histogram(rng.normal(size / 60, 0.2, 90), bins=edges)[0]
            imp = np.histogram(rng.normal(0.0, 0.15, 4000), bins=edges)[0]
            for b in range(128):
                scores.append(
                    {
                        "model": m,
                        "method": m,
                        "seed": 0,
                        "scale": size / 48,
                        "size_px": size,
                        "bin_low": edges[b],
                        "bin_high": edges[b + 1],
                        "n_genuine": gen[b],
                        "n_impostor": imp[b],
                    }
                )
            for far in np.geomspace(1e-3, 1, 20):
                roc.append(
                    {
                        "model": m,
                        "method": m,
                        "seed": 0,
                        "scale": size / 48,
                        "size_px": size,
                        "far": far,
                        "tar": far ** (6 / size),
                    }
                )
            for i, v in enumerate(rng.normal(1, 0.1, 30)):
                norms.append(
                    {
                        "model": m,
                        "method": m,
                        "seed": 0,
                        "scale": size / 48,
                        "size_px": size,
                        "image": i,
                        "norm": 3 * v,
                        "norm_rel": v,
                    }
                )
    table = to_frame(rows)
    table = pd.concat([table, to_frame(robustness_rows(table))], ignore_index=True)
    write_table(table, folder / "results.csv")
    pd.DataFrame(roc).to_csv(folder / "roc.csv", index=False)
    pd.DataFrame(norms).to_csv(folder / "norms.csv", index=False)
    pd.DataFrame(scores).to_csv(folder / "scores.csv", index=False)
    pd.DataFrame(
        [
            {
                "model": m,
                "method": m,
                "fold": 0,
                "seed": 0,
                "epoch": e,
                "loss": 5.0 / e,
                "train_acc": e / 4,
                "val_tar": e / 5,
            }
            for m in MODELS
            if m != "pixels"
            for e in (1, 2, 3, 4)
        ]
    ).to_csv(folder / "training.csv", index=False)


def test_every_figure_written_as_png_and_pdf(tmp_path):
    _write_run(tmp_path)
    files = plot_run(tmp_path)
    stems = {p.stem for p in files}
    assert stems == {
        "tar_vs_resolution",
        "roc",
        "norms",
        "genuine_cosine",
        "ring_margin",
        "scores",
        "training",
    }
    for p in files:
        assert p.suffix in (".png", ".pdf") and p.stat().st_size > 5000
        assert p.read_bytes()[:4] in (b"\x89PNG", b"%PDF")
    assert not list((tmp_path / "figures").glob(".*.tmp"))
    # Unchanged tables: nothing is redrawn.
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    again = plot_run(tmp_path)
    assert {p: p.stat().st_mtime_ns for p in again} == mtimes


def test_ring_models_share_the_hue_family_of_their_base():
    frame = pd.DataFrame({"model": list(MODELS), "method": list(MODELS)})
    st = model_styles(frame)
    assert st["SM+R(0.01)"]["linestyle"] == "-" and st["SM"]["linestyle"] != "-"
    assert st["pixels"]["linestyle"] == ":"
    assert st["SM"]["color"] != st["SF"]["color"]
    import colorsys

    hue = {m: colorsys.rgb_to_hls(*st[m]["color"])[0] for m in MODELS}
    assert hue["SM"] == pytest.approx(hue["SM+R(0.01)"], abs=0.02)
    assert hue["SF"] == pytest.approx(hue["SF+R(0.01)"], abs=0.02)


def test_axis_label_has_units():
    assert "pixels" in X_LABEL


def test_missing_run_is_an_error(tmp_path):
    with pytest.raises(ResultsError):
        plot_run(tmp_path / "nope")
    with pytest.raises(ResultsError):
        plot_run(tmp_path)


def test_scores_figure_tolerates_a_missing_width_and_missing_rows(tmp_path):
    """A model without a cell at some width, and a table without d'/transfer rows, still draw."""
    from lowres.plots import figure_scores

    _write_run(tmp_path)
    scores = pd.read_csv(tmp_path / "scores.csv")
    scores = scores[~((scores["model"] == "SM") & (scores["size_px"] == 6))]
    table = pd.read_csv(tmp_path / "results.csv")
    table = table[~table["metric"].isin(["dprime", "transfer_far", "transfer_frr"])]
    styles = model_styles(table[["model", "method"]])
    fig = figure_scores(scores, table, styles)
    axes = fig.get_axes()
    assert len(axes) == len(MODELS) * len(SIZES)
    assert sum(not ax.axison for ax in axes) == 1
    assert not any(t.get_text() for ax in axes for t in ax.texts)


@pytest.mark.parametrize("name", ["roc.csv", "norms.csv", "scores.csv"])
def test_foreign_side_table_is_one_line_exit_2(tmp_path, name):
    """A side table lowres did not write (wrong columns) is bad input: one line, exit 2,
    no figure half-drawn."""
    from click.testing import CliRunner

    from lowres.cli import cli

    _write_run(tmp_path)
    (tmp_path / name).write_text("a,b\n1,2\n")
    with pytest.raises(ResultsError, match=f"{name} lacks column"):
        plot_run(tmp_path)
    result = CliRunner().invoke(cli, ["plot", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and name in lines[0]
    assert not (tmp_path / "figures").exists()


def _plot_cli(folder):
    from click.testing import CliRunner

    from lowres.cli import cli

    result = CliRunner().invoke(cli, ["plot", str(folder)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert not (folder / "figures").exists()
    return lines[0]


def test_results_table_with_a_non_numeric_value_is_one_line_exit_2(tmp_path):
    _write_run(tmp_path)
    path = tmp_path / "results.csv"
    lines = path.read_text().splitlines(keepends=True)
    value = lines[0].split(",").index("value")
    cells = lines[7].split(",")
    cells[value] = "abc"
    lines[7] = ",".join(cells)
    path.write_text("".join(lines))
    line = _plot_cli(tmp_path)
    assert f"{path} has a non-numeric value 'abc' in column value (row 7)" in line


def test_truncated_results_table_is_one_line_exit_2(tmp_path):
    """A table cut mid-row (`head -c 3000`, a full disk) is refused, not drawn short."""
    _write_run(tmp_path)
    path = tmp_path / "results.csv"
    text = path.read_text()
    assert text[2999] != "\n"
    path.write_text(text[:3000])
    line = _plot_cli(tmp_path)
    assert f"{path} is truncated or damaged: row {text[:3000].count(chr(10))}" in line


def test_shard_folder_says_to_merge_the_shards_first(tmp_path):
    from tiny_sweep import empty_shard

    empty_shard(tmp_path, 1, 2)
    line = _plot_cli(tmp_path)
    assert f"{tmp_path} is shard 1/2 of a sweep" in line and "lowres merge OUT" in line


def test_budget_table_and_figure_of_a_training_length_study(tmp_path):
    """Rows of the committed old-recipe training-length study, read back per method+budget."""
    from pathlib import Path

    from lowres.plots import budget_table, figure_budget

    path = Path(__file__).parent.parent / "docs/results/training_length_old_recipe/results.csv"
    table = read_table(path)
    frame = budget_table(table, 1e-2)
    assert set(frame["epochs"]) == {2, 4, 8, 16}
    assert set(frame["method"]) == {"SM", "SM+R(0.01)", "SF", "SF+R(0.01)", "l2-SM(30)", "SM+CL"}
    for model, method, epochs in (("SM+e8", "SM", 8), ("SF+R(0.01)+e16", "SF+R(0.01)", 16)):
        for metric in ("tar", "ring_margin"):
            want = table[
                (table["model"] == model)
                & (table["metric"] == metric)
                & (table["far"] == 1e-2)
                & (table["size_px"] == 12)
                & (table["fold"] == 0)
            ]["value"]
            got = frame[
                (frame["method"] == method)
                & (frame["epochs"] == epochs)
                & (frame["metric"] == metric)
                & (frame["size_px"] == 12)
            ]["value"]
            assert got.tolist() == pytest.approx(want.tolist())
    assert not frame[(frame["metric"] == "ring_margin") & (frame["method"] == "SM")].shape[0]
    files = figure_budget(table, tmp_path, far=1e-2)
    assert sorted(p.suffix for p in files) == [".pdf", ".png"]

    # The plateau summary, against a plain loop over the same rows.
    from lowres.plots import plateau_table

    plateau = plateau_table(frame).set_index("method")
    assert set(plateau.index) == set(frame["method"])
    for method in plateau.index:
        clean = frame[
            (frame["method"] == method) & (frame["metric"] == "tar") & (frame["size_px"] == 48)
        ]
        by_epochs = {int(e): float(v) for e, v in zip(clean["epochs"], clean["value"], strict=True)}
        best = max(by_epochs.values())
        row = plateau.loc[method]
        assert row["best_tar"] == best and by_epochs[row["best_epochs"]] == best
        assert row["epochs_95"] == min(e for e, v in by_epochs.items() if v >= 0.95 * best)
        assert row["epochs_99"] == min(e for e, v in by_epochs.items() if v >= 0.99 * best)
        assert row["last_gain"] == pytest.approx(by_epochs[16] - by_epochs[8])
        for e, v in by_epochs.items():
            assert row[f"share_e{e}"] == pytest.approx(v / best)
    # The old recipe's SphereFace was far from its plateau at 2 epochs.
    assert plateau.loc["SF", "share_e2"] < 0.5 and plateau.loc["SF", "epochs_95"] > 2
    assert plateau_table(frame[frame["metric"] == "ring_margin"]).empty
    assert figure_budget(table[~table["model"].str.contains(r"\+e")], tmp_path, far=1e-2) == []
