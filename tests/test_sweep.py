"""lowres.sweep: resumable cells, determinism, interruption, bad input, bootstrap.

One tiny synthetic preset (12 test identities x 4 images of 28x24 px) and 1-epoch models keep
the whole file well under a minute and a half on 2 CPU cores. Models are trained once per module
into a temporary cache; the interruption tests run the sweep in a subprocess and kill it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_sweep import MODELS, PRESET_SNIPPET, cli, tiny_config

from lowres import sweep as S
from lowres.errors import ConfigError, ResultsError
from lowres.results import KEY_COLUMNS, read_table

pytestmark = pytest.mark.usefixtures("tiny_preset")

SCALES = (1.0, 0.5, 0.25)


def _config(out: Path, cache: Path, **changes) -> S.SweepConfig:
    return tiny_config(out, cache, SCALES, **changes)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_preset):
    """One uninterrupted sweep: (config, result, model cache)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    root = tmp_path_factory.mktemp("sweep")
    cache = root / "models"
    config = _config(root / "ref", cache)
    result = S.run_sweep(config)
    return config, result, cache


def model_log_of(folder) -> str:
    """The method a cached model folder was trained with (from its sidecar)."""
    return json.loads((folder / "model.json").read_text())["method"]


def test_reference_table_shape(reference):
    config, result, cache = reference
    table = read_table(config.out / "results.csv")
    assert result.computed == 3 * len(SCALES) and result.reused == 0
    assert set(table["model"]) == {"SM", "SM+R(0.01)", "pixels"}
    assert not table.duplicated(list(KEY_COLUMNS)).any()
    tar = table[table["metric"] == "tar"]
    assert len(tar) == 3 * len(SCALES) * 2
    assert sorted(tar["size_px"].unique()) == [6, 12, 24]
    assert (tar["far_achieved"] <= tar["far"] + 1e-12).all()
    assert ((tar["ci_low"] <= tar["value"]) & (tar["value"] <= tar["ci_high"])).all()
    # 12 identities x 4 images: 72 genuine and 1056 impostor pairs per cell.
    assert set(tar["n_genuine"]) == {72} and set(tar["n_impostor"]) == {1056}
    margin = table[table["metric"] == "ring_margin"]
    assert set(margin["model"]) == {"SM+R(0.01)"} and set(margin["reference"]) == {"SM"}
    assert len(margin) == len(SCALES) * 2
    # Threshold transfer at the clean scale is the clean threshold itself.
    clean = table[(table["scale"] == 1.0) & (table["model"] == "SM")]
    t_far = clean[clean["metric"] == "transfer_far"].sort_values("far")["value"].to_numpy()
    a_far = clean[clean["metric"] == "tar"].sort_values("far")["far_achieved"].to_numpy()
    np.testing.assert_allclose(t_far, a_far)
    ratio = clean[clean["metric"] == "norm_ratio"]["value"]
    assert np.allclose(ratio, 1.0)
    for metric in ("resolution_auc", "critical_size_px", "tar_drop"):
        assert (table["metric"] == metric).any()
    # Score histograms: every pair counted once, and their means agree with the table's.
    hist = pd.read_csv(config.out / "scores.csv")
    for (model, scale), g in hist.groupby(["model", "scale"]):
        assert g["n_genuine"].sum() == 72 and g["n_impostor"].sum() == 1056
        mid = (g["bin_low"] + g["bin_high"]) / 2
        row = table[(table["model"] == model) & (table["scale"] == scale)]
        for col, metric in (("n_genuine", "genuine_cos_mean"), ("n_impostor", "impostor_cos_mean")):
            want = row.loc[row["metric"] == metric, "value"].iloc[0]
            got = (mid * g[col]).sum() / g[col].sum()
            assert abs(got - want) <= 1 / 128 + 1e-12
    # Every trained model's per-epoch log, copied into training.csv; none for the pixels.
    training = pd.read_csv(config.out / "training.csv")
    assert set(training["model"]) == {"SM", "SM+R(0.01)"}
    for model, g in training.groupby("model"):
        folder = next(p for p in cache.iterdir() if p.is_dir() and model_log_of(p) == model)
        log = pd.read_csv(folder / "log.csv")
        assert g["epoch"].tolist() == log["epoch"].tolist() == [1]
        np.testing.assert_array_equal(g["loss"].to_numpy(), log["loss"].to_numpy())
    prov = json.loads((config.out / "provenance.json").read_text())
    assert prov["status"] == "complete"
    assert prov["degradation"]["hash"] == table["degrade_hash"].iloc[0]
    assert set(prov["versions"]) >= {"python", "torch", "kornia", "numpy", "lowres"}
    assert prov["git_revision"]
    assert {"train", "embed", "score", "total"} <= set(prov["timings_s"])


def test_quality_rows_match_a_naive_recomputation(reference, tmp_path):
    """The norm-quality rows of a real sweep, recomputed from its own norms.csv and cells by
    a naive loop: discard the lowest-norm probes, count the rejected genuine pairs."""
    from lowres.cells import load_cell_arrays
    from lowres.metrics import tar_at_far

    config, _, _ = reference
    table = read_table(config.out / "results.csv")
    norms = pd.read_csv(config.out / "norms.csv")
    cells_dir = config.out / "cells"
    q = table[table["metric"].isin(["edc_pauc20", "edc_pauc20_oracle", "norm_auc"])]
    assert set(q["model"]) == {"SM", "SM+R(0.01)", "pixels"}
    assert sorted(q["size_px"].dropna().unique()) == [6, 12]  # degraded widths only
    rho = table[table["metric"] == "norm_width_spearman"]
    assert len(rho) == 3 and rho["scale"].isna().all()
    edc_curves = pd.read_csv(config.out / "quality.csv")
    assert set(edc_curves["quality"]) == {"norm", "oracle"}
    from lowres.sweep.summary import format_summary

    text = format_summary(table)
    assert "EDC20@6px" in text and "norm_rho" in text and "oracle" in text
    import shutil

    from lowres.plots import plot_run

    copy = shutil.copytree(config.out, tmp_path / "copy")
    assert copy / "figures" / "quality_edc.png" in plot_run(copy)
    cells = {}
    for meta in cells_dir.glob("*.json"):
        cell = json.loads(meta.read_text())
        if "npz" in cell and "key" in cell:
            k = cell["key"]
            cells[k["model"], float(k["scale"])] = load_cell_arrays(cells_dir, cell)
    for model in ("SM", "SM+R(0.01)"):
        clean = cells[model, 1.0]
        t = tar_at_far(clean["scores"], clean["issame"], 1e-2).threshold
        n = clean["labels"].size
        _, probe = np.triu_indices(n, k=1)
        rel = norms[(norms["model"] == model)]
        clean_rel = rel[rel["scale"] == 1.0].sort_values("image")["norm_rel"].to_numpy()
        deg = cells[model, 0.25]
        deg_rel = rel[rel["scale"] == 0.25].sort_values("image")["norm_rel"].to_numpy()
        # every probe of both widths: (quality, genuine pairs, rejected pairs)
        probes = []
        for arrays, quality in ((clean, clean_rel), (deg, deg_rel)):
            for j in range(n):
                mine = (probe == j) & arrays["issame"]
                probes.append((quality[j], mine.sum(), (mine & (arrays["scores"] < t)).sum()))
        probes.sort(key=lambda p: p[0])
        fnmr = []
        for f in np.round(np.arange(21) / 100, 2):
            kept = probes[int(np.floor(f * len(probes) + 1e-9)) :]
            fnmr.append(sum(p[2] for p in kept) / sum(p[1] for p in kept))
        fnmr = np.array(fnmr)
        pauc = float(np.sum((fnmr[1:] + fnmr[:-1]) / 2 * 0.01) / 0.2)
        row = q[(q["model"] == model) & (q["size_px"] == 6) & (q["metric"] == "edc_pauc20")]
        assert row["value"].iloc[0] == pytest.approx(pauc, abs=1e-6)
        assert row["ci_low"].iloc[0] <= row["value"].iloc[0] <= row["ci_high"].iloc[0]
        auc = q[(q["model"] == model) & (q["size_px"] == 6) & (q["metric"] == "norm_auc")]
        naive = np.mean([(c > d) + 0.5 * (c == d) for c in clean_rel for d in deg_rel])
        assert auc["value"].iloc[0] == pytest.approx(naive, abs=1e-4)  # norms.csv is rounded


def test_same_seed_gives_identical_bytes(reference, tmp_path):
    config, _, _ = reference
    # A fresh model cache: the models are trained again, so training is covered too.
    again = S.run_sweep(_config(tmp_path / "again", tmp_path / "models"))
    assert again.computed == 3 * len(SCALES)
    assert (tmp_path / "again" / "results.csv").read_bytes() == (
        config.out / "results.csv"
    ).read_bytes()


def test_rerun_reuses_everything_and_adding_a_scale_computes_only_it(reference, tmp_path):
    config, _, _ = reference
    out = tmp_path / "extend"
    shutil.copytree(config.out, out)
    same = S.run_sweep(dataclasses.replace(config, out=out))
    assert (same.computed, same.reused) == (0, 3 * len(SCALES))
    wider = S.run_sweep(dataclasses.replace(config, out=out, scales=(*SCALES, 0.125)))
    assert (wider.computed, wider.reused) == (3, 3 * len(SCALES))
    table = read_table(out / "results.csv")
    assert 3 in set(table["size_px"].dropna())


DRIVER = """
import json, sys, time
from pathlib import Path
{preset}
from lowres.sweep import SweepConfig, run_sweep
kw = json.loads(sys.argv[1])
for key in ("out", "model_cache"):
    kw[key] = Path(kw[key])
for key in ("models", "scales", "fars", "folds", "seeds"):
    kw[key] = tuple(kw[key])
ready = Path(sys.argv[2])


def hold(key):
    # After the first cell: say so, then wait to be killed (no race with a wall clock).
    if not ready.exists():
        ready.write_text("1")
        time.sleep(600)


run_sweep(SweepConfig(**kw), on_cell=hold)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_sweep_resumes_to_the_same_table(reference, tmp_path, sig):
    config, _, cache = reference
    out = tmp_path / "killed"
    cfg = _config(out, cache)
    kw = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    ready = tmp_path / "first-cell-written"
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER.format(preset=PRESET_SNIPPET), json.dumps(kw), str(ready)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    cells = out / S.CELLS_DIR
    # No short wall-clock limit: a loaded machine may take minutes to start the sweep; the
    # driver holds after its first cell until it is signalled.
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None and not ready.exists():
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(sig)
    proc.wait(timeout=60)
    done = [p for p in cells.iterdir() if p.suffix == ".json"]
    assert len(done) == 1
    assert not (out / "results.csv").exists()

    resumed = S.run_sweep(cfg)
    assert resumed.reused == len(done)
    assert resumed.computed == 3 * len(SCALES) - len(done)
    assert not list(cells.glob(".*.tmp"))
    table = read_table(out / "results.csv")
    assert not table.duplicated(list(KEY_COLUMNS)).any()
    assert (out / "results.csv").read_bytes() == (config.out / "results.csv").read_bytes()


@pytest.mark.parametrize(
    "extra",
    [
        ["--models", "SM,NotAMethod"],
        ["--models", "does/not/exist"],
        ["--scales", "0"],
        ["--scales", "2"],
        ["--models", ""],
        ["--models", " , "],
        ["--pairing", "both"],
        ["--far", "0"],
        ["--variant", "SM+aug"],
        ["--variant", "SM+aug=SM;augment_resolution=true"],
        ["--variant", "SM+R(0.01)=SM+R(0.01);seed=3"],
        ["--variant", "SM=SM;epochz=3"],
        ["--backbone", "resnet9000"],
        ["--data", "orl", "--preset", "cpu"],
        ["--models", "SM,,SF"],
        ["--scales", ""],
        ["--scales", "1,1,0.5"],
        ["--far", "1e-2,1e-2"],
        ["--variant", "SM=SF"],
        ["--variant", "SM+aug=SM", "--variant", "SM+aug=SF"],
    ],
    ids=[
        "unknown",
        "missing-ckpt",
        "scale0",
        "scale2",
        "empty",
        "blank",
        "other-settings",
        "far0",
        "variant-syntax",
        "variant-unlisted",
        "variant-reserved",
        "variant-unknown-key",
        "unknown-backbone",
        "preset-without-synth",
        "empty-item",
        "scales-empty",
        "scale-twice",
        "far-twice",
        "variant-named-as-another-method",
        "variant-twice",
    ],
)
def test_bad_input_exits_2_and_keeps_results(reference, tmp_path, extra):
    config, _, cache = reference
    out = tmp_path / "keep"
    shutil.copytree(config.out, out)
    before = _tree_digest(out)
    args = ["sweep", "--data", "synth", "--preset", "tinytest", "--models", ",".join(MODELS)]
    args += ["--scales", "1,0.5,0.25", "--far", "1e-2,1e-1", "--epochs", "1"]
    args += ["--out", str(out), "--model-cache", str(cache), "--no-plot", *extra]
    result = cli(args)
    assert result.exit_code == 2, result.output
    assert "Error" in result.output
    assert _tree_digest(out) == before


def test_damaged_checkpoint_fails_before_the_results_are_touched(reference, tmp_path):
    """A checkpoint whose weights were cut short is refused when the sweep starts, not when
    its cells come up (which used to rewrite provenance.json of the folder first)."""
    config, _, cache = reference
    out = tmp_path / "keep"
    shutil.copytree(config.out, out)
    before = _tree_digest(out)
    source = next(p.parent for p in sorted(cache.rglob("model.safetensors")))
    damaged = shutil.copytree(source, tmp_path / "damaged")
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    args = ["sweep", "--data", "synth", "--preset", "tinytest", "--models", f"SM,{damaged}"]
    args += ["--scales", "1,0.5,0.25", "--far", "1e-2,1e-1", "--epochs", "1"]
    result = cli([*args, "--out", str(out), "--model-cache", str(cache), "--no-plot"])
    assert result.exit_code == 2 and "does not match" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert _tree_digest(out) == before


def test_out_inside_a_file_is_refused(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    _refused_before_writing(afile / "sub", [], "lies inside")
    assert afile.read_text() == "mine"


def test_a_filesystem_error_is_one_line_exit_2(tmp_path, monkeypatch):
    """What no check can see coming (a read-only or full disk) still ends as one line."""

    def refuse(config, **_):
        raise PermissionError(13, "Permission denied", str(config.out / "provenance.json"))

    monkeypatch.setattr(S, "run_sweep", refuse)
    result = cli(["sweep", "--data", "synth", "--preset", "tinytest", "--models", "SM",
                  "--out", str(tmp_path / "ro"), "--no-plot"])  # fmt: skip
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: Permission denied: {tmp_path / 'ro' / 'provenance.json'}; check the path, its "
        "permissions and the free disk space"
    ]


def _refused_before_writing(out: Path, extra: list[str], fragment: str) -> None:
    """A one-model tiny sweep into the new folder ``out`` with ``extra`` arguments exits 2,
    names ``fragment``, and creates nothing."""
    args = ["sweep", "--data", "synth", "--preset", "tinytest", "--models", "SM"]
    result = cli([*args, "--out", str(out), "--no-plot", *extra])
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert not out.exists()


def test_baseline_path_that_is_a_folder_fails_before_any_work(tmp_path):
    out = tmp_path / "new"
    # The library checks it (the CLI's click.Path does too, with its own words).
    config = _config(out, tmp_path / "models", save_baseline=tmp_path)
    with pytest.raises(ConfigError, match="is a folder"):
        S.run_sweep(config)
    _refused_before_writing(out, ["--save-baseline", str(tmp_path)], "is a directory")


@pytest.mark.parametrize("device", ["tpu", "cuda:0"])
def test_bad_device_fails_before_the_output_folder_exists(tmp_path, device):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here, so cuda:0 is a valid device")
    _refused_before_writing(tmp_path / "new", ["--device", device], "device")


@pytest.mark.parametrize("train_data", ["nonexist", "MANIFEST"])
def test_bad_training_data_fails_before_the_output_folder_exists(tmp_path, train_data):
    """--train-data is loaded only when a model trains, after the folder exists; an unknown
    name or a manifest whose images are missing must fail before anything is written."""
    if train_data == "MANIFEST":
        manifest = tmp_path / "faces.toml"
        manifest.write_text(
            'name = "faces"\nkind = "identity-folders"\nroot = "missing_folder"\n'
            "image_size = [56, 48]\nchannels = 1\n"
        )
        train_data = str(manifest)
    fragment = "missing_folder" if train_data.endswith(".toml") else "nonexist"
    _refused_before_writing(
        tmp_path / "new", ["--train-data", train_data, "--device", "cpu"], fragment
    )


def test_other_settings_refused_then_forced(reference, tmp_path):
    config, _, _ = reference
    out = tmp_path / "force"
    shutil.copytree(config.out, out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ResultsError, match="other settings"):
        S.run_sweep(dataclasses.replace(config, out=out, pairing="both"))
    forced = S.run_sweep(dataclasses.replace(config, out=out, pairing="both", force=True))
    assert forced.computed == 3 * len(SCALES)
    assert (out / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------------
# Pure parts
# --------------------------------------------------------------------------------------------


def test_validation_helpers():
    assert S.validate_scales([0.25, 0.5]) == (1.0, 0.5, 0.25)
    assert S.parse_float_list("1, 1/4", "x") == (1.0, 0.25)
    for bad in ([0.0], [2.0], [-0.5], [float("nan")]):
        with pytest.raises(ConfigError):
            S.validate_scales(bad)
    with pytest.raises(ConfigError):
        S.parse_int_list("0,0", "folds")
    with pytest.raises(ConfigError):
        S.resolve_models([])
    with pytest.raises(ConfigError, match="pixels"):
        S.resolve_models(["pixels"])
    with pytest.raises(ConfigError, match="twice"):
        S.resolve_models(["SM", "SM"])


def test_base_of_strips_only_ring_loss():
    from lowres.methods import parse_method

    assert str(S.base_of(parse_method("SF+R(0.01)"))) == "SF"
    assert str(S.base_of(parse_method("SM+CL+R(0.01)"))) == "SM+CL"
    assert S.base_of(parse_method("l2-SM(30)")) is None


def test_parallel_pretraining_equals_in_process_training(tmp_path):
    """Training in spawned 1-thread workers gives the same weights as training in-process."""
    from safetensors.torch import load_file

    models = ("SM", "SM+R(0.01)")
    base = S.SweepConfig(models=models, data="orl", epochs=1, device="cpu")
    entries = S.resolve_models(models)
    parallel = dataclasses.replace(base, model_cache=tmp_path / "parallel")
    assert S.pretrain_models(entries, parallel, [0], [0], workers=2) == 2
    serial = dataclasses.replace(base, model_cache=tmp_path / "serial")
    for entry in entries:
        a = S.trained_checkpoint(entry, parallel, 0, 0)
        b = S.trained_checkpoint(entry, serial, 0, 0)
        wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), (entry.name, key)
    # Everything is cached now: nothing left to train.
    assert S.pretrain_models(entries, parallel, [0], [0], workers=2) == 0


def test_parse_variant_reads_json_values():
    assert S.parse_variant("SM+aug=SM;augment_resolution=true") == (
        "SM+aug",
        {"method": "SM", "augment_resolution": True},
    )
    name, values = S.parse_variant(" x = SF+R(0.01) ; augment_resolution=[0.125, 1] ; lr=0.1 ")
    assert name == "x" and values == {
        "method": "SF+R(0.01)",
        "augment_resolution": [0.125, 1],
        "lr": 0.1,
    }
    for bad in ("SM", "=SM", "x=", "x=SM;lr"):
        with pytest.raises(ConfigError):
            S.parse_variant(bad)
