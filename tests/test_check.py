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


def _assert_bad_input(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _damage(table, case: str) -> tuple[str, ...]:
    """Damage a written results.csv the way an editor, a full disk or `head -c` does; return
    what the error must say."""
    text = table.read_text()
    lines = text.splitlines(keepends=True)
    if case == "non-numeric":
        header = lines[0].strip().split(",")
        cells = lines[3].split(",")
        cells[header.index("value")] = "abc"
        lines[3] = ",".join(cells)
        table.write_text("".join(lines))
        return ("non-numeric value 'abc' in column value (row 3)", "lowres sweep")
    if case == "cut-mid-row":
        table.write_text("".join(lines[:11]) + lines[11][: len(lines[11]) // 2])
        return ("truncated or damaged: row 11", "lowres sweep")
    table.write_text(text[:-5])  # cut inside degrade_hash, the last column
    return (f"truncated or damaged: row {len(lines) - 1}", "degrade_hash")


@pytest.mark.parametrize("case", ["non-numeric", "cut-mid-row", "cut-in-last-field"])
def test_damaged_results_table_is_one_line_exit_2(run, case):
    folder, baseline = run
    fragments = _damage(folder / "results.csv", case)
    _assert_bad_input(_cli("check", str(folder), "--baseline", str(baseline)), *fragments)


@pytest.mark.parametrize("case", ["one-empty", "all-empty", "minus-inf", "text"])
def test_baseline_without_a_usable_value_is_one_line_exit_2(run, case):
    """A baseline value that is empty, text or -inf would pass or fail every cell silently."""
    folder, baseline = run
    base = pd.read_csv(baseline, dtype={"value": object})
    row = int(base.index[base["metric"] == "tar"][2])
    if case == "all-empty":
        base["value"], row = np.nan, 0
    else:
        base.loc[row, "value"] = {"one-empty": np.nan, "minus-inf": "-inf", "text": "xyz"}[case]
    base.to_csv(baseline, index=False)
    _assert_bad_input(
        _cli("check", str(folder), "--baseline", str(baseline)),
        f"baseline {baseline} has a missing, non-numeric or infinite value at row {row + 1}",
        "--save-baseline",
    )


def test_baseline_keeps_the_empty_and_infinite_values_a_sweep_writes(run):
    """No tested width reaching the target leaves critical_size_px empty, constant separated
    scores give d' = inf: save_baseline writes both, so both read back and compare."""
    folder, baseline = run
    table = read_table(folder / "results.csv")
    table.loc[table["metric"] == "critical_size_px", "value"] = np.nan
    table.loc[table["metric"] == "auc", "metric"] = "dprime"
    table.loc[table["metric"] == "dprime", "value"] = np.inf
    write_table(table, folder / "results.csv")
    save_baseline(table, baseline)
    base = read_baseline(baseline)
    assert base.loc[base["metric"] == "critical_size_px", "value"].isna().all()
    assert (base.loc[base["metric"] == "dprime", "value"] == np.inf).all()
    result = _cli("check", str(folder), "--baseline", str(baseline))
    assert result.exit_code == 0, result.output


def test_shipped_result_tables_pass_the_damage_checks(tmp_path):
    """The checks reject nothing a real sweep writes (empty intervals, seeds, sizes, ...)."""
    from pathlib import Path

    from lowres.check import baseline_frame

    tables = sorted((Path(__file__).parents[1] / "docs" / "results").rglob("results.csv"))
    tables = [t for t in tables if "degrade_hash" in t.read_text().partition("\n")[0]]
    assert tables
    for path in tables:
        table = read_table(path)
        save_baseline(table, tmp_path / "baseline.csv")
        assert len(read_baseline(tmp_path / "baseline.csv")) == len(baseline_frame(table)), path


def test_shard_folder_says_to_merge_the_shards_first(run, tmp_path):
    """A `lowres sweep --shard i/n` folder holds cells and shard.json but no table yet."""
    from tiny_sweep import empty_shard

    _, baseline = run
    shard = tmp_path / "part2"
    empty_shard(shard, 2, 3)
    _assert_bad_input(
        _cli("check", str(shard), "--baseline", str(baseline)),
        f"{shard} is shard 2/3 of a sweep",
        "lowres merge OUT SHARD_DIR...",
    )
