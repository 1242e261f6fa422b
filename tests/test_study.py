"""lowres.study and ``lowres run``: TOML validation, tiny studies end to end, determinism.

Studies run on a tiny synthetic preset (40 train identities x 4 images, 12 test identities x 4
images, 28x24 grey) with 1-epoch models in a temporary cache, in-process, so the file takes
seconds. The CLI is exercised only for fast paths (validation errors, --list).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lowres import study as ST
from lowres.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _tiny_preset():
    from lowres.data import synthetic

    synthetic.PRESETS["tinystudy"] = synthetic.SynthPreset(40, 4, 12, 4, (28, 24), (56, 48), 1)
    yield
    synthetic.PRESETS.pop("tinystudy", None)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


FEATURES2D = """
[study]
kind = "features2d"
title = "tiny 2-d"
model_cache = "{cache}"

[train]
model = "lenetpp"
data = "synth"
preset = "tinystudy"
input_size = [28, 24]
epochs = 1
batch_size = 16
augment = false
device = "cpu"

[[models]]
method = "SM"

[[models]]
method = "SM+R(1)"
label = "ring"

[evaluate]
max_points = 30
"""

NORMS = """
[study]
kind = "norms"
title = "tiny norms"
model_cache = "{cache}"
device = "cpu"

[train]
data = "synth"
preset = "tinystudy"
epochs = 1

[[models]]
method = "SM"

[[models]]
method = "SM+R(0.01)"

[sweep]
scales = [1, 0.5]
fars = [0.01, 0.1]
critical_far = 0.1
n_boot = 20
batch_size = 64
"""


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lowres", *args], cwd=cwd, capture_output=True, text=True
    )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('title = "tiny 2-d"', 'titel = "x"'), "unknown key 'titel'"),
        (lambda t: t.replace("epochs = 1", "epochz = 1"), "unknown key 'epochz' in [train]"),
        (lambda t: t.replace('method = "SM"\n', 'method = "SMX"\n'), "SMX"),
        (lambda t: t.replace('kind = "features2d"', 'kind = "scatter"'), "kind 'scatter'"),
        (lambda t: t.replace('label = "ring"', 'label = "SM"'), "listed twice"),
        (lambda t: t.replace("epochs = 1", "epochs = 0"), "epochs"),
        (lambda t: t + "\n[sweep]\nscales = [1]\n", "takes [evaluate]"),
        (lambda t: t.replace("max_points = 30", "max_points = -1"), "max_points"),
    ],
)
def test_bad_study_is_config_error(tmp_path, edit, message):
    path = _write(tmp_path, "bad", edit(FEATURES2D.format(cache=tmp_path)))
    with pytest.raises(ConfigError, match=None) as info:
        ST.load_study(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_sweep_kind_refuses_training_settings_it_cannot_honour(tmp_path):
    text = NORMS.format(cache=tmp_path).replace("epochs = 1", "epochs = 1\nlr = 0.1")
    with pytest.raises(ConfigError, match="not honoured"):
        ST.load_study(_write(tmp_path, "norms", text))


def test_cli_errors_exit_2_with_one_line(tmp_path):
    bad = _write(tmp_path, "bad", FEATURES2D.format(cache=tmp_path).replace("title =", "titel ="))
    unknown_method = _write(
        tmp_path, "method", FEATURES2D.format(cache=tmp_path).replace('"SM+R(1)"', '"SM+Q(1)"')
    )
    for args in (
        [str(bad)],
        [str(unknown_method)],
        [str(tmp_path / "missing.toml")],
    ):
        proc = _cli("run", *args)
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert "not found" in _cli("run", str(tmp_path / "missing.toml")).stderr


def test_cli_list_shows_the_shipped_studies():
    proc = _cli("run", "--list")
    assert proc.returncode == 0, proc.stderr
    assert "experiments/mnist_ring2d.toml" in proc.stdout
    assert "INVALID" not in proc.stdout
    for path in sorted((REPO / "experiments").glob("*.toml")):
        ST.load_study(path)


# --------------------------------------------------------------------------------------------
# Pure pieces
# --------------------------------------------------------------------------------------------


def test_angle_to_identity_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    clean = rng.normal(size=(8, 3))
    probe = clean + 0.5 * rng.normal(size=(8, 3))
    got = ST.angle_to_identity(clean, probe, labels)
    for i in range(8):
        others = [j for j in range(8) if labels[j] == labels[i] and j != i]
        if not others:
            assert math.isnan(got[i])
            continue
        d = sum(clean[j] / np.linalg.norm(clean[j]) for j in others)
        cos = probe[i] @ d / (np.linalg.norm(probe[i]) * np.linalg.norm(d))
        assert got[i] == pytest.approx(math.degrees(math.acos(cos)), abs=1e-9)


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


def test_features2d_end_to_end_and_same_seed_same_table(tmp_path):
    for run in ("a", "b"):
        # a separate cache per run: the second run retrains from the same seed
        cache = tmp_path / f"cache_{run}"
        study = ST.load_study(_write(tmp_path, f"f2d_{run}", FEATURES2D.format(cache=cache)))
        result = ST.run_study(study, out=tmp_path / run)
        out = result.out
        for name in ("results.csv", "features.csv", "provenance.json"):
            assert (out / name).is_file()
        assert (out / "figures" / "features2d.png").stat().st_size > 0
        assert (out / "figures" / "features2d.pdf").stat().st_size > 0
    table_a = (tmp_path / "a" / "results.csv").read_text()
    table_b = (tmp_path / "b" / "results.csv").read_text()
    drop = ["train_seconds"]
    a = pd.read_csv(tmp_path / "a" / "results.csv").drop(columns=drop)
    b = pd.read_csv(tmp_path / "b" / "results.csv").drop(columns=drop)
    pd.testing.assert_frame_equal(a, b)
    assert table_a.splitlines()[0] == table_b.splitlines()[0]
    assert list(a["model"]) == ["SM", "ring"]
    # identity-disjoint test classes: no head logit exists for them, accuracy is undefined
    assert a["test_accuracy"].isna().all()
    assert a.loc[a["model"] == "ring", "R"].iloc[0] > 0
    feats = pd.read_csv(tmp_path / "a" / "features.csv")
    assert len(feats) == 2 * 12 * 4
    assert (tmp_path / "a" / "features.csv").read_bytes() == (
        tmp_path / "b" / "features.csv"
    ).read_bytes()
    prov = json.loads((tmp_path / "a" / "provenance.json").read_text())
    assert prov["study"]["kind"] == "features2d" and prov["seeds"] == [0]
    assert prov["study"]["config"]["study"]["title"] == "tiny 2-d"
    assert {"train", "evaluate", "plot", "total"} <= set(prov["timings_s"])
    assert prov["git_revision"]


def test_norms_study_end_to_end_and_resume(tmp_path):
    path = _write(tmp_path, "norms", NORMS.format(cache=tmp_path / "cache"))
    result = ST.run_study(path, out=tmp_path / "out")
    out = result.out
    for name in ("results.csv", "norms.csv", "angles.csv", "norm_angle.csv", "provenance.json"):
        assert (out / name).is_file(), name
    assert (out / "figures" / "norm_angle.png").is_file()
    assert (out / "figures" / "tar_vs_resolution.png").is_file()
    angles = pd.read_csv(out / "angles.csv")
    assert set(angles["model"]) == {"SM", "SM+R(0.01)"}
    assert len(angles) == 2 * 2 * 12 * 4
    # the study's per-image norms are the sweep's (same degradation, same seed)
    norms = pd.read_csv(out / "norms.csv")
    merged = angles.merge(norms, on=["model", "scale", "image"], suffixes=("", "_sweep"))
    assert len(merged) == len(angles)
    np.testing.assert_allclose(merged["norm"], merged["norm_sweep"], rtol=1e-5)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["status"] == "complete" and prov["study"]["kind"] == "norms"
    first = (out / "results.csv").read_bytes()
    again = ST.run_study(path, out=tmp_path / "out")
    assert (out / "results.csv").read_bytes() == first
    assert again.timings["sweep_train"] < result.timings["sweep_train"] + 1e-9
