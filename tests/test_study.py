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
import torch

from lowres import study as ST
from lowres.errors import ConfigError, LowresError

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("tiny_preset")


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


def test_sweep_kind_refuses_settings_the_sweep_owns(tmp_path):
    text = NORMS.format(cache=tmp_path).replace("epochs = 1", "epochs = 1\nsplit_seed = 3")
    with pytest.raises(ConfigError, match="set by the sweep"):
        ST.load_study(_write(tmp_path, "norms", text))


def test_sweep_kind_honours_other_training_settings_as_variants(tmp_path):
    from lowres.sweep import resolve_models, train_config

    text = NORMS.format(cache=tmp_path).replace("epochs = 1", "epochs = 1\nlr = 0.1")
    study = ST.load_study(_write(tmp_path, "norms", text))
    config = study.sweep_config()
    entries = resolve_models(config.models, config.variants)
    assert [e.name for e in entries] == ["SM", "SM+R(0.01)"]
    for entry in entries:
        tc = train_config(entry, config, 0, 0)
        assert tc.lr == 0.1 and tc.epochs == 1 and tc.preset == "tinystudy"


def test_set_overrides_apply_and_bad_ones_are_config_errors(tmp_path):
    path = _write(tmp_path, "norms", NORMS.format(cache=tmp_path))
    study = ST.load_study(path, overrides=["train.epochs=3", "sweep.folds=[1]", "study.jobs=2"])
    config = study.sweep_config()
    assert config.epochs == 3 and config.folds == (1,) and study.jobs == 2
    assert study.overrides == ["train.epochs=3", "sweep.folds=[1]", "study.jobs=2"]
    for bad in ("epochs=3", "models.x=1", "train.epochz=1", "sweep.folds=x"):
        with pytest.raises(ConfigError):
            ST.load_study(path, overrides=[bad])


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


def test_missing_data_leaves_no_output_folder(tmp_path, monkeypatch):
    """A GPU study run without its data fails with one line and writes nothing, not even an
    empty output folder."""
    monkeypatch.setenv("LOWRES_DATA", str(tmp_path / "no_data_here"))
    out = tmp_path / "out"
    with pytest.raises(LowresError, match="no_data_here"):
        ST.run_study(REPO / "experiments" / "lfw_lowres.toml", out=out)
    assert not out.exists()
    # An existing folder is the user's: it stays.
    out.mkdir()
    with pytest.raises(LowresError):
        ST.run_study(REPO / "experiments" / "lfw_lowres.toml", out=out)
    assert out.is_dir()


NEEDS_EXTRA = {"orl_pretrained": "dlib"}
"""Shipped studies that load a reference model from an optional extra (CI installs them)."""


def test_cli_list_shows_the_shipped_studies():
    import importlib.util

    missing = {n for n, module in NEEDS_EXTRA.items() if importlib.util.find_spec(module) is None}
    proc = _cli("run", "--list")
    assert proc.returncode == 0, proc.stderr
    assert "experiments/mnist_ring2d.toml" in proc.stdout
    invalid = [line for line in proc.stdout.splitlines() if "INVALID" in line]
    assert all(any(n in line for n in missing) for line in invalid), invalid
    for path in sorted((REPO / "experiments").glob("*.toml")):
        if path.stem not in missing:
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


RUNS = """
[study]
kind = "sweep"
title = "tiny runs"
model_cache = "{cache}"
device = "cpu"

[train]
data = "synth"
epochs = 1

[[models]]
method = "SM"

[[models]]
method = "SM+R(0.01)"

[[models]]
label = "SM+aug"
method = "SM"
augment_resolution = true

[[models]]
label = "SM+R(0.01)+aug"
method = "SM+R(0.01)"
augment_resolution = true

[sweep]
scales = [1, 0.5]
fars = [0.01, 0.1]
critical_far = 0.1
n_boot = 20
batch_size = 64

[[runs]]
name = "plain"
preset = "tinystudy"

[[runs]]
name = "coarse"
description = "2 cycles"
preset = "tinystudy:texture_cycles=2"
seeds = [0, 1]
"""


def test_runs_and_variants_end_to_end(tmp_path):
    from lowres.sweep import resolve_models, train_config

    path = _write(tmp_path, "runs", RUNS.format(cache=tmp_path / "cache"))
    study = ST.load_study(path)
    # variants: same method, other training; hashes differ only through augment_resolution
    config = study.sweep_config(run=study.runs[1])
    assert config.preset == "tinystudy:texture_cycles=2" and config.seeds == (0, 1)
    entries = {e.name: e for e in resolve_models(config.models, config.variants)}
    plain = train_config(entries["SM"], config, 0, 0)
    aug = train_config(entries["SM+aug"], config, 0, 0)
    assert aug.augment_resolution and not plain.augment_resolution
    assert plain.method == aug.method == "SM" and plain.hash() != aug.hash()

    result = ST.run_study(path, out=tmp_path / "out")
    out = result.out
    table = pd.read_csv(out / "results.csv")
    assert next(iter(table.columns)) == "run" and set(table["run"]) == {"plain", "coarse"}
    for run in ("plain", "coarse"):
        assert (out / run / "results.csv").is_file()
        margins = table[(table["run"] == run) & (table["metric"] == "ring_margin")]
        refs = dict(zip(margins["model"], margins["reference"], strict=False))
        assert refs == {"SM+R(0.01)": "SM", "SM+R(0.01)+aug": "SM+aug"}
    # tar_mean only with several seeds: the mean of the per-seed TARs
    assert not (table[table["run"] == "plain"]["metric"] == "tar_mean").any()
    coarse = table[table["run"] == "coarse"]
    means = coarse[coarse["metric"] == "tar_mean"]
    assert len(means) == 5 * 2 * 2  # 4 models + pixels, 2 scales, 2 FARs
    per_seed = coarse[(coarse["metric"] == "tar") & coarse["seed"].notna()]
    expect = per_seed.groupby(["model", "scale", "far"])["value"].mean()
    got = means.set_index(["model", "scale", "far"])["value"]
    np.testing.assert_allclose(got.sort_index(), expect.loc[got.sort_index().index], atol=2e-6)
    assert (means["ci_low"] <= means["value"] + 1e-12).all()
    assert (means["value"] <= means["ci_high"] + 1e-12).all()
    # the paper-layout table holds every model and the margins, with the table's numbers
    text = (out / "table.md").read_text()
    assert "### plain" in text and "### coarse: 2 cycles" in text
    assert "| SM+R(0.01)+aug - SM+aug |" in text and "| pixels |" in text
    row = table[
        (table["run"] == "plain")
        & (table["model"] == "SM+aug")
        & (table["metric"] == "tar")
        & (table["scale"] == 0.5)
        & np.isclose(table["far"], 0.1)
    ].iloc[0]
    cell = f"{100 * row['value']:.1f} [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"
    assert cell in text
    assert (out / "figures" / "runs_overview.png").is_file()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["study"]["runs"]["coarse"]["provenance"] == "coarse/provenance.json"
    assert prov["study"]["runs"]["coarse"]["preset"] == "tinystudy:texture_cycles=2"
    # resume: nothing retrained, same table; the first run's timings kept in the history
    first = (out / "results.csv").read_bytes()
    ST.run_study(path, out=tmp_path / "out")
    assert (out / "results.csv").read_bytes() == first
    history = json.loads((out / "provenance.json").read_text())["study"]["history"]
    assert len(history) == 1 and history[0]["timings_s"] == prov["study"]["timings_s"]


def test_bad_runs_are_config_errors(tmp_path):
    base = RUNS.format(cache=tmp_path)
    cases = [
        (base.replace('name = "coarse"', 'name = "plain"'), "share a name"),
        (base.replace('name = "coarse"', 'name = "a b"'), "folder-safe"),
        (base.replace("seeds = [0, 1]", "seedz = [0, 1]"), "unknown key 'seedz'"),
        (base.replace('"tinystudy:texture_cycles=2"', '"tinystudy:cycles=2"'), "cycles=2"),
        (base.replace("augment_resolution = true\n", "seed = 3\n", 1), "seed"),
    ]
    for text, message in cases:
        with pytest.raises(ConfigError) as info:
            ST.load_study(_write(tmp_path, "bad", text))
        assert message in str(info.value), (message, str(info.value))


# --------------------------------------------------------------------------------------------
# The GPU studies (LFW, CFP-FP), end to end on a tiny generated set
# --------------------------------------------------------------------------------------------


def _tiny_gpu_data(tmp_path: Path) -> tuple[Path, Path]:
    """A CASIA-like identity-folder training set (6 people x 4 PNGs, 112x112 RGB) with its
    manifest, and an InsightFace-style .bin test set (10 folds x 1 genuine + 1 impostor pair)."""
    from PIL import Image

    from lowres.data.insightface import write_bin
    from lowres.data.synthetic import make_split

    train = make_split(
        "train", "cpu", 0, 0, num_identities=6, images_per_identity=4, size=(112, 112), channels=3
    )
    root = tmp_path / "tiny_casia"
    for k, (image, label) in enumerate(zip(train.images, train.labels, strict=True)):
        folder = root / f"person{int(label):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{k:03d}.png")
    manifest = tmp_path / "tiny_casia.toml"
    manifest.write_text(
        'name = "tiny_casia"\nkind = "identity-folders"\n'
        f'root = "{root}"\nimage_size = [112, 112]\nchannels = 3\n',
        encoding="utf-8",
    )
    test = make_split(
        "test", "cpu", 0, 0, num_identities=10, images_per_identity=2, size=(112, 112), channels=3
    )
    pairs, issame = [], []
    for fold in range(10):
        other = (fold + 1) % 10
        pairs += [test.images[2 * fold], test.images[2 * fold + 1]]  # genuine
        pairs += [test.images[2 * fold], test.images[2 * other + 1]]  # impostor
        issame += [True, False]
    bin_path = write_bin(tmp_path / "tiny_test.bin", torch.stack(pairs), issame)
    return manifest, bin_path


@pytest.fixture(scope="module")
def tiny_gpu_data(tmp_path_factory):
    """Shared by both studies, with one model cache: they train the same models (same
    training set and settings), so the second study trains nothing."""
    root = tmp_path_factory.mktemp("gpu_studies")
    manifest, bin_path = _tiny_gpu_data(root)
    return manifest, bin_path, root / "cache"


@pytest.mark.parametrize("name", ["lfw_lowres", "cfp_fp_lowres"])
def test_gpu_studies_run_end_to_end_on_a_tiny_generated_set(tmp_path, name, tiny_gpu_data):
    manifest, bin_path, cache = tiny_gpu_data
    shipped = ST.load_study(REPO / "experiments" / f"{name}.toml")
    assert shipped.sweep_config().train_data == "casia_webface"
    assert shipped.sweep_config().backbone == "sphere20"
    # The shipped file with only the data, the budget and the folds swapped for tiny ones.
    study = ST.load_study(
        REPO / "experiments" / f"{name}.toml",
        overrides=[
            f'train.data="{manifest}"',
            f'sweep.data="{bin_path}"',
            "train.epochs=1",
            "train.batch_size=8",
            # sphere20 at an eighth of its width: same network and code path, a third of the time
            "train.model_args={channels=[8, 16, 32, 64]}",
            "train.embed_dim=64",
            "sweep.folds=[0, 1, 2]",
            "sweep.scales=[1, 0.25]",
            "sweep.batch_size=16",
            "sweep.n_boot=20",
            'study.device="cpu"',
            f'study.model_cache="{cache}"',
        ],
    )
    config = study.sweep_config()
    assert config.train_data == str(manifest) and config.data == str(bin_path)
    result = ST.run_study(study, out=tmp_path / "out")
    table = pd.read_csv(result.out / "results.csv")
    tar = table[(table["metric"] == "tar") & (table["fold"] == -1)]
    assert set(tar["model"]) == {m.label for m in shipped.models} | {"pixels"}
    assert set(tar["n_genuine"]) == {3} and set(tar["n_impostor"]) == {3}
    margins = table[table["metric"] == "ring_margin"]
    assert set(margins["model"]) == {"SM+R(0.01)", "SM+R(0.001)", "SF+R(0.01)", "SF+R(0.001)"}
    # one model per method and seed, trained on the whole identity-folder set, for every fold
    cached = [p for p in cache.iterdir() if p.is_dir()]
    assert len(cached) == len(shipped.models)
    sidecar = json.loads(next(cached[0].glob("model.json")).read_text())
    assert sidecar["config"]["train_split"] == "all"
    assert sidecar["config"]["model"] == "sphere20"
    assert "| SF+R(0.01) - SF |" in (result.out / "table.md").read_text()


def test_external_models_in_a_study(tmp_path, monkeypatch):
    """``[[models]] external = ...`` puts a pretrained model beside the trained ones; its label
    is the id the sweep gives it."""
    (tmp_path / "study_test_factory.py").write_text(
        "import torch\n\n"
        "def make(width=3):\n"
        "    torch.manual_seed(0)\n"
        "    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(24 * 28, width))\n"
        "    return net, {'channels': 'grey', 'size': [28, 24], 'mean': 127.5, 'std': 128}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    text = NORMS.format(cache=tmp_path).replace(
        "[[models]]",
        '[[models]]\nexternal = "py:study_test_factory:make(width=4)"\n\n[[models]]',
        1,
    )
    study = ST.load_study(_write(tmp_path, "norms", text))
    item = study.models[0]
    assert (item.label, item.method, item.external) == (
        "study_test_factory:make(width=4)",
        "python",
        "py:study_test_factory:make(width=4)",
    )
    config = study.sweep_config()
    assert config.models[0] == item.external and item.label not in (config.variants or {})
    bad = NORMS.format(cache=tmp_path).replace(
        "[[models]]", '[[models]]\nexternal = "SM"\n\n[[models]]', 1
    )
    with pytest.raises(ConfigError, match="is not an external model"):
        ST.load_study(_write(tmp_path, "bad", bad))


def test_run_level_external_models(tmp_path, monkeypatch):
    """``[[runs]] external = [...]`` adds pretrained models to that run only (after the study's
    models, so the raw-pixel reference keeps the first model's input size); bad lists and
    clashing labels are one-line errors."""
    (tmp_path / "run_test_factory.py").write_text(
        "import torch\n\n"
        "def make(width=3):\n"
        "    torch.manual_seed(0)\n"
        "    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(24 * 28, width))\n"
        "    return net, {'channels': 'grey', 'size': [28, 24], 'mean': 127.5, 'std': 128}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = "py:run_test_factory:make(width=4)"
    base = RUNS.format(cache=tmp_path / "cache")
    text = base.replace("seeds = [0, 1]\n", f'seeds = [0, 1]\nexternal = ["{entry}"]\n')
    study = ST.load_study(_write(tmp_path, "runs_ext", text))
    plain, coarse = study.runs
    assert "external" not in plain
    assert [m.label for m in coarse["external"]] == ["run_test_factory:make(width=4)"]
    assert study.sweep_config(run=plain).models == tuple(m.label for m in study.models)
    models = study.sweep_config(run=coarse).models
    assert models[:-1] == tuple(m.label for m in study.models) and models[-1] == entry
    labels = [m.label for m in study.run_models(coarse)]
    assert labels[-1] == "run_test_factory:make(width=4)" and len(labels) == 5
    bad_cases = [
        ('external = "dlib"', "must be a non-empty list"),
        ("external = []", "must be a non-empty list"),
        ('external = ["SM"]', "is not an external model"),
        (f'external = ["{entry}", "{entry}"]', "listed twice"),
    ]
    for line, message in bad_cases:
        bad = base.replace("seeds = [0, 1]\n", f"seeds = [0, 1]\n{line}\n")
        with pytest.raises(ConfigError, match=message):
            ST.load_study(_write(tmp_path, "bad", bad))
