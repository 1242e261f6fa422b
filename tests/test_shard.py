"""Sharded sweeps (`lowres sweep --shard i/n`) joined by `lowres merge` equal an unsharded sweep.

The reference is an independent, unsharded :func:`lowres.sweep.run_sweep` of the same
settings; the merged folder must hold the same results.csv, roc.csv, norms.csv and scores.csv bytes.
The tiny synthetic preset of tests/test_sweep.py and 1-epoch models keep this file fast
(jobs=1: spawned training workers would not see the test-only preset).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
from tiny_sweep import cli, tiny_config

from lowres import shards
from lowres import sweep as S
from lowres.errors import ConfigError, ResultsError
from lowres.results import PIXELS

pytestmark = pytest.mark.usefixtures("tiny_preset")

SCALES = (1.0, 0.5)
OUTPUTS = ("results.csv", "roc.csv", "norms.csv", "scores.csv")


def _config(out: Path, cache: Path, **changes) -> S.SweepConfig:
    return tiny_config(out, cache, SCALES, **changes)


def _models_in(cache: Path) -> int:
    return sum(1 for p in cache.iterdir() if p.is_dir()) if cache.is_dir() else 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_preset):
    """An unsharded sweep and shards 1/2 and 2/2, each shard with its own model cache."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    root = tmp_path_factory.mktemp("shard")
    whole = S.run_sweep(_config(root / "whole", root / "cache_whole"))
    shards = []
    for i in (1, 2):
        config = _config(root / f"part{i}", root / f"cache{i}", shard=(i, 2), plot=True)
        shards.append((config, S.run_sweep(config)))
    return root, whole, shards


def test_shards_compute_only_their_cells_and_train_only_their_models(runs):
    root, whole, shards = runs
    assert whole.computed == 3 * len(SCALES)
    # SM (+ the raw-pixel reference, which goes with the first model) | SM+R(0.01).
    assert [r.computed for _, r in shards] == [2 * len(SCALES), len(SCALES)]
    for i, (config, result) in enumerate(shards, start=1):
        assert _models_in(root / f"cache{i}") == 1
        assert not (config.out / "results.csv").exists()
        assert not (config.out / "figures").exists()
        assert result.table.empty
        manifest = json.loads((config.out / "shard.json").read_text())
        assert manifest["shard"] == {"index": i, "count": 2}
        assert manifest["status"] == "shard"
        assert len(manifest["shard_cells"]) == result.computed


def test_merged_equals_unsharded(runs, tmp_path):
    _, whole, shards = runs
    out = tmp_path / "merged"
    # Shard folders in any order on the command line.
    result = cli(["merge", str(out), str(shards[1][0].out), str(shards[0][0].out), "--no-plot"])
    assert result.exit_code == 0, result.output
    assert "merged 6 cells from 2 shard folders" in result.output
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (whole.out / name).read_bytes(), name
    table = whole.table
    assert (table["metric"] == "ring_margin").any()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["status"] == "complete"
    assert [s["index"] for s in prov["shards"]] == [1, 2]
    assert prov["settings"] == json.loads((whole.out / "provenance.json").read_text())["settings"]
    assert prov["config"]["shard"] is None
    assert not (out / "figures").exists()
    # Merging again into the same folder reuses it and gives the same bytes.
    again = S.merge_shards(out, [s.out for s, _ in shards], plot=False)
    assert again.reused == 6
    assert (out / "results.csv").read_bytes() == (whole.out / "results.csv").read_bytes()


def test_merge_api_draws_figures_and_baseline(runs, tmp_path):
    _, _, shards = runs
    out = tmp_path / "merged"
    result = S.merge_shards(
        out, [s.out for s, _ in shards], plot=True, save_baseline=tmp_path / "base.csv"
    )
    assert result.figures and all(p.is_file() for p in result.figures)
    assert (tmp_path / "base.csv").is_file()


def test_missing_shard_is_named(runs, tmp_path):
    _, _, shards = runs
    out = tmp_path / "merged"
    with pytest.raises(ResultsError, match=r"2 cells missing \(no folder for shard 2/2\)") as exc:
        S.merge_shards(out, [shards[0][0].out])
    assert "SM+R(0.01) 24px fold 0 seed 0" in str(exc.value)
    assert "\n" not in str(exc.value)
    assert not out.exists()
    result = cli(["merge", str(out), str(shards[0][0].out)])
    assert result.exit_code == 2 and result.output.count("\n") == 1


def test_duplicate_shard_is_named(runs, tmp_path):
    _, _, shards = runs
    first = shards[0][0].out
    copy = tmp_path / "copy1"
    shutil.copytree(first, copy)
    with pytest.raises(ResultsError, match="copy1 both hold cells SM 12px fold 0 seed 0, SM 24px"):
        S.merge_shards(tmp_path / "merged", [first, copy, shards[1][0].out])


def test_mismatched_settings_are_refused(runs, tmp_path):
    root, _, shards = runs
    other = _config(tmp_path / "other2", root / "cache2", shard=(2, 2), pairing="both")
    S.run_sweep(other)
    with pytest.raises(ResultsError, match=r"other settings.*pairing"):
        S.merge_shards(tmp_path / "merged", [shards[0][0].out, other.out])
    # A config difference outside the folder fingerprint (the bootstrap) is refused too.
    tampered = tmp_path / "tampered2"
    shutil.copytree(shards[1][0].out, tampered)
    manifest = json.loads((tampered / "shard.json").read_text())
    manifest["config"]["n_boot"] = 999
    (tampered / "shard.json").write_text(json.dumps(manifest))
    with pytest.raises(ResultsError, match="n_boot"):
        S.merge_shards(tmp_path / "merged", [shards[0][0].out, tampered])
    # Different shard counts.
    three = _config(tmp_path / "of3", root / "cache2", shard=(2, 3))
    S.run_sweep(three)
    with pytest.raises(ResultsError, match="shard count"):
        S.merge_shards(tmp_path / "merged", [shards[0][0].out, three.out])
    assert not (tmp_path / "merged").exists()


def test_lost_cell_file_and_foreign_folder(runs, tmp_path):
    _, _, shards = runs
    broken = tmp_path / "broken1"
    shutil.copytree(shards[0][0].out, broken)
    next((broken / "cells").glob("SM__*.npz")).unlink()
    with pytest.raises(ResultsError, match=r"lacks a readable cell SM .*--shard 1/2"):
        S.merge_shards(tmp_path / "merged", [broken, shards[1][0].out])
    with pytest.raises(ResultsError, match=r"holds no shard\.json"):
        S.merge_shards(tmp_path / "merged", [tmp_path, shards[1][0].out])
    with pytest.raises(ResultsError, match="is one of the shard folders"):
        S.merge_shards(shards[0][0].out, [shards[0][0].out, shards[1][0].out])


def test_rerun_of_a_shard_reuses_its_cells(runs, tmp_path):
    _, _, shards = runs
    config, first = shards[0]
    out = tmp_path / "again1"
    shutil.copytree(config.out, out)
    again = S.run_sweep(dataclasses.replace(config, out=out))
    assert (again.computed, again.reused) == (0, first.computed)


@pytest.mark.parametrize("bad", ["0/2", "3/2", "x", "1/0", "1/2/3", "-1/2"])
def test_bad_shard_exits_2(bad, tmp_path):
    args = ["sweep", "--models", "SM", "--data", "synth", "--preset", "tinytest"]
    args += ["--out", str(tmp_path / "out"), "--no-plot", "--shard", bad]
    result = cli(args)
    assert result.exit_code == 2, result.output
    assert "--shard" in result.output
    assert not (tmp_path / "out").exists()


def test_shard_with_baseline_is_a_usage_error(tmp_path):
    args = ["sweep", "--models", "SM", "--out", str(tmp_path / "out"), "--shard", "1/2"]
    result = cli([*args, "--save-baseline", str(tmp_path / "b.csv")])
    assert result.exit_code == 2 and "merge" in result.output
    with pytest.raises(ConfigError, match="baseline"):
        S.run_sweep(_config(tmp_path / "o", tmp_path / "c", shard=(1, 2), save_baseline="b.csv"))


def test_parse_and_validate_shard():
    assert shards.parse_shard("2/4") == (2, 4)
    assert shards.parse_shard(" 1 / 1 ") == (1, 1)
    for bad in ("0/2", "3/2", "x", "1/0", "", "1/2/3"):
        with pytest.raises(ConfigError):
            shards.parse_shard(bad)
    assert shards.validate_shard(None) is None
    with pytest.raises(ConfigError):
        shards.validate_shard((1,))


@pytest.mark.parametrize(
    ("environ", "want"),
    [
        # sbatch --array=0-3: task 2 of 4 -> shard 3/4
        ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "4"},
         (3, 4)),
        # --array=1-4 (no MIN would count from 0: the MIN is what SLURM sets)
        ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"},
         (1, 4)),
        # --array=10-16:3 -> tasks 10, 13, 16
        ({"SLURM_ARRAY_TASK_ID": "16", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_STEP": "3",
          "SLURM_ARRAY_TASK_COUNT": "3"}, (3, 3)),
        # torchrun --nproc_per_node=4: rank 3
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}, (4, 4)),
        # SLURM wins over torchrun when both are set
        ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2", "RANK": "1",
          "WORLD_SIZE": "2"}, (1, 2)),
    ],
)  # fmt: skip
def test_shard_auto_from_slurm_and_torchrun(environ, want):
    assert shards.parse_shard("auto", environ) == want


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({}, "neither"),
        ({"SLURM_ARRAY_TASK_ID": "3"}, "SLURM_ARRAY_TASK_COUNT"),
        ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, "not integers"),
        ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "2"}, "outside"),
        ({"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_STEP": "3",
          "SLURM_ARRAY_TASK_COUNT": "3"}, "grid"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "outside"),
    ],
)  # fmt: skip
def test_shard_auto_errors_name_the_fix(environ, words):
    with pytest.raises(ConfigError, match=words) as info:
        shards.parse_shard("auto", environ)
    assert "--shard" in str(info.value)


def test_shard_auto_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    result = cli(["sweep", "--shard", "auto", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "neither a SLURM array task" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 30])
def test_plan_covers_every_unit_once_and_balances(n):
    models = ["SM", "SF", "l2-SM(30)", "SM+CL", "SM+R(0.01)", "SF+R(0.01)"]
    folds, seeds = (2, 0, 1, 3), (1, 0)
    whole = shards.shard_plan(models, folds, seeds, None)
    assert set(whole) == {(f, s) for f in folds for s in seeds}
    assert all(names == (models[0], PIXELS, *models[1:]) for names in whole.values())
    owners: dict[tuple, list[int]] = {}
    sizes = []
    for i in range(1, n + 1):
        plan = shards.shard_plan(models, folds, seeds, (i, n))
        sizes.append(sum(len([m for m in v if m != PIXELS]) for v in plan.values()))
        for (fold, seed), names in plan.items():
            assert (PIXELS in names) == (models[0] in names)
            for name in names:
                owners.setdefault((name, fold, seed), []).append(i)
    assert sorted(owners) == sorted((m, f, s) for (f, s), v in whole.items() for m in v)
    assert all(len(v) == 1 for v in owners.values())
    assert max(sizes) - min(sizes) <= 1


def test_config_and_entries_round_trip_through_the_manifest_json():
    config = S.SweepConfig(
        models=("SM", "SM+aug"),
        scales=(1.0, 0.25),
        variants={"SM+aug": {"method": "SM", "augment_resolution": True}},
        model_cache=Path("/tmp/cache"),
        shard=(1, 2),
    )
    data = json.loads(json.dumps(config.to_json()))
    assert S.SweepConfig.from_json(data) == config
    with pytest.raises(ResultsError, match="unknown settings"):
        S.SweepConfig.from_json({**data, "newer_setting": 1})
    for entry in S.resolve_models(config.models, config.variants):
        back = S.ModelEntry.from_json(json.loads(json.dumps(entry.to_json())))
        assert back == entry
