"""lowres.check and the `lowres check` command: baselines, tolerance, exit codes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from lowres.check import check_results, check_run, read_baseline, save_baseline
from lowres.cli import cli
from lowres.errors import ResultsError
from lowres.results import make_row, read_table, robustness_rows, to_frame, write_table


def _table() -> pd.DataFrame:
    rows = []
    ctx = {"dataset": "synth", "pairing": "probe", "degrade": "bicubic>bicubic"}
    ctx["degrade_hash"] = "0123456789ab"
    for m, lift in (("SM", 0.0), ("SM+R(0.01)", 0.05), ("pixels", -0.1)):
        for size, scale in ((48, 1.0), (24, 0.5), (12, 0.25), (6, 0.125)):
            common = {**ctx, "model": m, "method": m, "scale": scale, "size_px": size}
            common |= {"fold": 0, "seed": 0}
            for far in (1e-2, 1e-1):
                tar = min(1.0, 0.2 + size / 60 + lift + (0.1 if far == 1e-1 else 0.0))
                rows.append(make_row(**common, metric="tar", far=far, value=tar, flagged=False))
            rows.append(make_row(**common, metric="auc", value=0.8 + size / 500))
            rows.append(make_row(**common, metric="eer", value=0.3 - size / 500))
            rows.append(make_row(**common, metric="norm_mean", value=3.0))
    table = to_frame(rows)
    return pd.concat([table, to_frame(robustness_rows(table))], ignore_index=True)


@pytest.fixture()
def run(tmp_path):
    folder = tmp_path / "run"
    write_table(_table(), folder / "results.csv")
    baseline = tmp_path / "baseline.csv"
    save_baseline(read_table(folder / "results.csv"), baseline)
    return folder, baseline


def _cli(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_own_baseline_passes(run):
    folder, baseline = run
    result = _cli("check", str(folder), "--baseline", str(baseline))
    assert result.exit_code == 0, result.output
    assert "OK" in result.output
    base = read_baseline(baseline)
    # Only directional metrics are kept; diagnostics such as norms are not.
    assert set(base["metric"]) == {"tar", "auc", "eer", "resolution_auc", "critical_size_px"}


def test_one_cell_raised_beyond_tolerance_fails(run):
    folder, baseline = run
    base = pd.read_csv(baseline)
    hit = base.index[(base["model"] == "SM") & (base["metric"] == "tar") & (base["scale"] == 0.25)]
    hit = hit[:1]
    base.loc[hit, "value"] += 0.05
    base.to_csv(baseline, index=False)
    result = _cli("check", str(folder), "--baseline", str(baseline), "--tolerance", "0.02")
    assert result.exit_code == 1, result.output
    assert "1 cell(s) REGRESSED" in result.output
    assert "SM" in result.output and "tar" in result.output
    # Within tolerance it passes.
    ok = _cli("check", str(folder), "--baseline", str(baseline), "--tolerance", "0.06")
    assert ok.exit_code == 0


def test_lower_is_better_direction(run):
    folder, baseline = run
    base = pd.read_csv(baseline)
    base.loc[base["metric"] == "eer", "value"] -= 0.1  # baseline EER better -> table regressed
    base.to_csv(baseline, index=False)
    result = check_run(folder, baseline, tolerance=0.02)
    assert not result.ok
    assert set(result.regressions["metric"]) == {"eer"}
    assert (result.regressions["delta"] > 0.02).all()


def test_nan_where_baseline_had_a_value_regresses():
    table = _table()
    base = table.copy()
    crit = table["metric"] == "critical_size_px"
    base.loc[crit, "value"] = 12.0
    table.loc[crit, "value"] = np.nan
    from lowres.check import baseline_frame

    result = check_results(table, baseline_frame(base), tolerance=0.02)
    assert set(result.regressions["metric"]) == {"critical_size_px"}


@pytest.mark.parametrize("case", ["no-table", "no-baseline", "no-overlap", "bad-columns"])
def test_bad_input_exits_2(run, tmp_path, case):
    folder, baseline = run
    if case == "no-table":
        folder = tmp_path / "missing"
    elif case == "no-baseline":
        baseline = tmp_path / "nothing.csv"
    elif case == "no-overlap":
        base = pd.read_csv(baseline)
        base["dataset"] = "orl"
        base.to_csv(baseline, index=False)
    else:
        baseline.write_text("a,b\n1,2\n")
    result = _cli("check", str(folder), "--baseline", str(baseline))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error:")


def test_negative_tolerance_rejected(run):
    folder, baseline = run
    assert (
        _cli("check", str(folder), "--baseline", str(baseline), "--tolerance", "-1").exit_code == 2
    )
    with pytest.raises(ResultsError):
        check_run(folder, baseline, tolerance=float("nan"))
