"""Distractors in identification / open-set sweeps (lowres.sweep.distractors), and TinyFace /
SCface sweeps in their published layouts.

The synthetic distractors are checked to be people outside every training and test split; the
pixel model's rank-1 and TPIR are recomputed here by a naive full-matrix argsort over the
gallery identities and every distractor image, on the same degraded pixels.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from layout_trees import TINYFACE_DISTRACTORS, write_manifest, write_scface, write_tinyface
from PIL import Image
from tiny_sweep import TINY, cli, tiny_config

from lowres import sweep as S
from lowres.cells import cell_key, settings_fingerprint
from lowres.data import synthetic
from lowres.embed import embed_many
from lowres.errors import ResultsError
from lowres.results import read_table
from lowres.sweep.distractors import fit_images, resolve_distractors
from lowres.sweep.protocols import protocol_sets

PRESET = "tinydistract"
N_DISTRACTORS = 30
SCALES = (1.0, 0.5, 0.25)
MODELS = ("SM",)


@pytest.fixture(scope="module")
def preset():
    """The tiny sweep preset with 30 distractor identities."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(synthetic.PRESETS, PRESET, synthetic.SynthPreset(*TINY, N_DISTRACTORS))
        yield PRESET


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("distractors")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOWRES_CACHE", str(path / "cache"))
        yield path


def _config(out, root, **changes):
    base = dict(models=MODELS, preset=PRESET, distractors="synth", protocol="identification")
    return tiny_config(out, root / "models", SCALES, **(base | changes))


@pytest.fixture(scope="module")
def synth_sweeps(root, preset):
    """protocol -> (config, table) of a tiny synth sweep with 30 synthetic distractors."""
    out = {}
    for protocol in ("identification", "open-set"):
        config = _config(root / protocol, root, protocol=protocol)
        S.run_sweep(config)
        out[protocol] = (config, read_table(config.out / "results.csv"))
    return out


def test_synth_distractors_are_nobody_seen(preset):
    """Distractor identities lie above every training index and every test fold (and their
    families too), the same for every fold; the split renders at any size."""
    pre = synthetic.PRESETS[preset]
    ids = synthetic.identity_indices("distractor", pre.distractor_identities)
    # the largest index any training split (n < TEST_BASE) or test fold (n < TEST_BLOCK) can use
    train_max = synthetic.TEST_BASE - 2
    test_max = int(synthetic.identity_indices("test", 1, fold=255)[0]) + synthetic.TEST_BLOCK - 2
    assert int(ids.min()) == synthetic.DISTRACTOR_BASE > test_max > train_max
    assert int(ids.max()) < synthetic.DISTRACTOR_BASE + synthetic.TEST_BLOCK
    family = synthetic.DEFAULT_KNOBS.family_size
    assert int(ids.min()) // family > test_max // family
    with pytest.raises(Exception, match="num_identities"):
        synthetic.identity_indices("test", synthetic.TEST_BLOCK, fold=255)
    ds = synthetic.load_synth("distractor", preset, 0, 0, size=(20, 16), channels=3)
    assert ds.images.shape == (N_DISTRACTORS, 3, 20, 16) and ds.num_identities == N_DISTRACTORS
    lo, hi = ds.meta["identity_index_range"]
    assert (lo, hi) == (synthetic.DISTRACTOR_BASE, synthetic.DISTRACTOR_BASE + N_DISTRACTORS - 1)
    again = synthetic.load_synth("distractor", preset, 0, 3, size=(20, 16), channels=3)
    assert again.content_digest() == ds.content_digest()  # every fold, the same people
    test = synthetic.load_synth("test", preset, 0, 0)
    assert not set(ds.identities) & set(test.identities)


def _pixels(config, test, distractors):
    """size_px -> (test features, distractor features), float64, L2-normalised, raw pixels on
    the sweep's degraded pixels (distractors at the gallery side: clean)."""
    entries = S.resolve_models(config.models, config.variants)
    pixels = S.prepare_models(entries, config, 0, 0)[-1]
    assert pixels.entry.name == "pixels"
    model = {"pixels": (pixels.module, pixels.adapter)}
    out = {}

    def unit(images, scale, size):
        emb = embed_many(images, model, scale=scale, size_px=None if scale == 1.0 else size,
                         device="cpu", seed=0)["pixels"]  # fmt: skip
        f = emb.features.double().numpy()
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    d_clean = unit(distractors.images, 1.0, None) if distractors is not None else None
    for scale, size in S.probe_grid(config, test.image_size[1]):
        out[size] = (unit(test.images, scale, size), d_clean)
    return out


def _naive_ranks(labels, clean, probe, sets, distractors):
    """Ranks of the mated probes by an argsort over [gallery identities (best image each),
    every distractor image], pessimistic ties; and the true scores."""
    gal_ids = np.unique(labels[sets.gallery])
    ranks, trues = [], []
    for i in sets.probes:
        sims = clean[sets.gallery] @ probe[i]
        ident = np.array([sims[labels[sets.gallery] == g].max() for g in gal_ids])
        cands = np.r_[ident, distractors @ probe[i] if distractors is not None else []]
        true_col = int(np.flatnonzero(gal_ids == labels[i])[0])
        order = np.argsort(-cands, kind="stable")
        pos = int(np.flatnonzero(order == true_col)[0])
        ties = int(np.count_nonzero(cands[order[pos + 1 :]] == cands[true_col]))
        ranks.append(1 + pos + ties)
        trues.append(cands[true_col])
    return np.array(ranks), np.array(trues)


def _check_naive_rank1(config, table, fold=0):
    test = S.sweep_test_split(config, fold)
    found = resolve_distractors(config, test)
    labels = test.labels.numpy().astype(np.int64)
    roles = None if test.roles is None else test.roles.numpy()
    sets = protocol_sets(labels, "identification", roles)
    feats = _pixels(config, test, None if found is None else found.dataset)
    clean = feats[test.image_size[1]][0]
    rows = table[(table["model"] == "pixels") & (table["fold"] == fold)]
    checked = 0
    for width, (probe, d_feats) in feats.items():
        ranks, _ = _naive_ranks(labels, clean, probe, sets, d_feats)
        at = rows[rows["size_px"] == width].set_index("metric")
        assert at.loc["rank1", "value"] == pytest.approx(np.mean(ranks == 1), abs=1e-12)
        assert at.loc["rank1", "n_genuine"] == sets.probes.size
        checked += 1
    return checked, found


def test_synth_identification_rank1_counts_the_distractors(synth_sweeps):
    config, table = synth_sweeps["identification"]
    checked, found = _check_naive_rank1(config, table)
    assert checked == len(SCALES) and found.count == N_DISTRACTORS
    label = f"synth+{N_DISTRACTORS} distractors (synth-distractors)"
    assert set(table["dataset"]) == {label}
    # the distractors lower rank-1 of raw pixels, never raise it
    plain = S.run_sweep(dataclasses.replace(config, out=config.out.parent / "plain",
                                            distractors="none"))  # fmt: skip
    r1 = {}
    for name, frame in (("with", table), ("without", plain.table)):
        rows = frame[(frame["metric"] == "rank1") & (frame["model"] == "pixels")]
        r1[name] = rows.set_index("size_px")["value"].sort_index()
    assert (r1["with"] <= r1["without"]).all()
    assert set(plain.table["dataset"]) == {"synth"}
    prov = json.loads((config.out / "provenance.json").read_text())
    assert prov["dataset"]["distractors"]["count"] == N_DISTRACTORS
    assert prov["settings"]["distractors"]["source"] == "synth-distractors"
    assert prov["config"]["distractors"] == "synth"


def test_synth_open_set_tpir_counts_the_distractors(synth_sweeps):
    config, table = synth_sweeps["open-set"]
    test = S.sweep_test_split(config, 0)
    found = resolve_distractors(config, test)
    labels = test.labels.numpy().astype(np.int64)
    sets = protocol_sets(labels, "open-set")
    feats = _pixels(config, test, found.dataset)
    clean = feats[test.image_size[1]][0]
    tpir = table[(table["metric"] == "tpir") & (table["model"] == "pixels")]
    for width, (probe, d_feats) in feats.items():
        ranks, true = _naive_ranks(labels, clean, probe, sets, d_feats)
        top = np.maximum((probe[sets.nonmated] @ clean[sets.gallery].T).max(axis=1),
                         (probe[sets.nonmated] @ d_feats.T).max(axis=1))  # fmt: skip
        for far in config.fars:
            c = int(np.floor(far * top.size + 1e-9))
            boundary = np.sort(top)[::-1][c]
            row = tpir[(tpir["size_px"] == width) & np.isclose(tpir["far"], far)]
            expect = np.mean((ranks == 1) & (true > boundary))
            assert row["value"].item() == pytest.approx(expect, abs=1e-6)


def test_resume_and_shards_keep_the_bytes(synth_sweeps, tmp_path):
    config, _ = synth_sweeps["identification"]
    ref = (config.out / "results.csv").read_bytes(), (config.out / "cmc.csv").read_bytes()
    again = S.run_sweep(config)
    assert again.computed == 0 and (config.out / "results.csv").read_bytes() == ref[0]
    dirs = []
    for i in (1, 2):
        shard = dataclasses.replace(config, out=tmp_path / f"shard{i}", shard=(i, 2))
        S.run_sweep(shard)
        dirs.append(shard.out)
    merged = S.merge_shards(tmp_path / "merged", dirs, plot=False)
    assert (merged.out / "results.csv").read_bytes() == ref[0]
    assert (merged.out / "cmc.csv").read_bytes() == ref[1]


def test_distractors_enter_every_cell_key(synth_sweeps, root):
    config, _ = synth_sweeps["identification"]
    base = dict(data="synth", preset=None, pairing="probe", degrade_hash="0" * 12)
    plain = settings_fingerprint(**base, seeds=[0], folds=[0], protocol="identification")
    key = {"source": "synth-distractors", "count": 3, "digest": "d" * 64}
    with_d = settings_fingerprint(**base, seeds=[0], folds=[0], protocol="identification",
                                  distractors=key)  # fmt: skip
    assert "distractors" not in plain and with_d == plain | {"distractors": key}
    cell = dict(data_digest="d", model="SM", model_hash="h", scale=1.0, size_px=24, fold=0)
    cell |= dict(seed=0, fars=[1e-2])
    assert "distractors" not in cell_key(fingerprint=plain, **cell)
    assert cell_key(fingerprint=with_d, **cell)["distractors"] == key
    # another distractor set in the same folder: refused, then every cell recomputed
    other = dataclasses.replace(config, distractors=str(root / "faces"))
    faces = root / "faces" / "x"
    faces.mkdir(parents=True)
    test = S.sweep_test_split(config, 0)
    for k in range(4):
        Image.fromarray(test.images[k, 0].numpy()).resize((40, 30)).save(faces / f"{k}.png")
    with pytest.raises(ResultsError, match="distractors"):
        S.run_sweep(other)
    forced = S.run_sweep(dataclasses.replace(other, force=True))
    assert forced.reused == 0 and forced.computed == 2 * len(SCALES)
    assert set(forced.table["dataset"]) == {"synth+4 distractors (faces-distractors)"}
    again = S.run_sweep(dataclasses.replace(other, force=False))
    assert again.computed == 0


def test_verification_outputs_keep_their_bytes(root, preset):
    """A verification sweep with --distractors none writes the bytes of one without the option,
    and its settings and provenance name no distractors."""
    config = _config(root / "verif", root, protocol="verification", distractors=None)
    S.run_sweep(config)
    ref = (config.out / "results.csv").read_bytes()
    none = S.run_sweep(dataclasses.replace(config, distractors="none", out=root / "verif2"))
    assert (none.out / "results.csv").read_bytes() == ref
    prov = json.loads((config.out / "provenance.json").read_text())
    assert "distractors" not in prov["settings"] and "distractors" not in prov["dataset"]


def test_fit_images_converts_size_and_channels():
    rgb = torch.randint(0, 255, (2, 3, 10, 8), dtype=torch.uint8)
    grey = fit_images(rgb, (20, 16), 1)
    assert grey.shape == (2, 1, 20, 16)
    assert fit_images(grey, (20, 16), 3).shape == (2, 3, 20, 16)
    assert fit_images(rgb, (10, 8), 3) is rgb


def _one_error_line(result, *needles):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--distractors", "{empty}"], ("holds no image", "--distractors none")),
        (["--distractors", "synth", "--protocol", "verification"], ("--protocol identification",)),
        (
            ["--distractors", "synth", "--protocol", "template"],
            ("with --protocol template", "--protocol identification"),
        ),
        (["--distractors", "orl", "--data", "orl"], ("the test set itself",)),
        (["--distractors", ""], ("--distractors is empty",)),
        (["--distractors", "no_such_set"], ("unknown dataset 'no_such_set'",)),
    ],
)
def test_bad_distractors_one_line_exit_2_nothing_written(tmp_path, preset, extra, needles):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no image here")
    args = ["sweep", "--models", "SM", "--protocol", "identification", "--no-plot"]
    args += ["--data", "synth", "--preset", preset] if "--data" not in extra else []
    out = tmp_path / "out"
    result = cli([*args, *[e.format(empty=empty) for e in extra], "--out", str(out)])
    _one_error_line(result, *needles)
    assert not out.exists()


# -------------------------------------------------------------------------------------------
# TinyFace and SCface in their published layouts
# -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layouts(root):
    return {
        "tinyface": write_manifest(root / "tinyface.toml", "tinyface", write_tinyface(root)),
        "scface": write_manifest(root / "scface.toml", "scface", write_scface(root)),
    }


def test_tinyface_identification_sweep(layouts, root):
    """Gallery = Gallery_Match, probes = Probe, distractors = Gallery_Distractor by default; SM
    trains on Training_Set."""
    data = str(layouts["tinyface"])
    config = _config(root / "sweep-tinyface", root, data=data, preset=None, distractors=None)
    result = S.run_sweep(config)
    table = result.table
    assert set(table["dataset"]) == {
        f"tinyface+{TINYFACE_DISTRACTORS} distractors (tinyface-distractors)"
    }
    checked, found = _check_naive_rank1(config, table)
    assert checked == len(SCALES) and found.count == TINYFACE_DISTRACTORS
    # verification pairs every gallery image with every probe
    auc = table[(table["metric"] == "auc") & (table["model"] == "pixels")]
    test = S.sweep_test_split(config, 0)
    n_gal, n_probe = int((test.roles == 0).sum()), int((test.roles == 1).sum())
    assert set(auc["n_genuine"] + auc["n_impostor"]) == {n_gal * n_probe}
    train_log = (config.out / "training.csv").read_text()
    assert "SM" in train_log
    prov = json.loads((config.out / "provenance.json").read_text())
    assert "roles" in prov["dataset"]
    # --distractors none: the plain Gallery_Match search
    plain = S.run_sweep(dataclasses.replace(config, distractors="none", out=root / "tf-plain"))
    assert set(plain.table["dataset"]) == {"tinyface"}
    _check_naive_rank1(dataclasses.replace(config, distractors="none"), plain.table)


def test_scface_identification_sweep_two_folds(layouts, root):
    data = str(layouts["scface"])
    config = _config(root / "sweep-scface", root, data=data, preset=None, distractors=None,
                     folds=(0, 1))  # fmt: skip
    table = S.run_sweep(config).table
    assert set(table["dataset"]) == {"scface"}
    for fold in (0, 1):
        _check_naive_rank1(config, table, fold)
    rank1 = table[(table["metric"] == "rank1") & (table["model"] == "pixels")]
    # 2 subjects a fold, 5 cameras x 3 distances each
    assert set(rank1[rank1["fold"] >= 0]["n_genuine"]) == {30}
    assert set(rank1[rank1["fold"] == -1]["n_genuine"]) == {60}
    with_d = S.run_sweep(dataclasses.replace(config, distractors="synth", out=root / "sc-d"))
    assert set(with_d.table["dataset"]) == {"scface+1000 distractors (synth-distractors)"}
    _check_naive_rank1(dataclasses.replace(config, distractors="synth"), with_d.table, 1)


def test_empty_tinyface_distractors_one_line_exit_2(tmp_path):
    top = write_tinyface(tmp_path)
    for path in (top / "Testing_Set" / "Gallery_Distractor").rglob("*.jpg"):
        path.unlink()
    manifest = write_manifest(tmp_path / "tinyface.toml", "tinyface", top)
    out = tmp_path / "out"
    args = ["sweep", "--data", str(manifest), "--models", "SM", "--protocol", "identification"]
    result = cli([*args, "--no-plot", "--out", str(out)])
    _one_error_line(result, "distractor set", "is empty", "--distractors none")
    assert not out.exists()
    ok = cli([*args[:-2], "--protocol", "verification", "--no-plot", "--out", str(out),
              "--epochs", "1", "--device", "cpu", "--jobs", "1", "--scales", "1,0.5",
              "--model-cache", str(tmp_path / "models")])  # fmt: skip
    assert ok.exit_code == 0, ok.output


def test_missing_probe_gallery_refused(tmp_path):
    top = write_tinyface(tmp_path)
    for path in (top / "Testing_Set" / "Gallery_Match").glob("3_*.jpg"):
        path.unlink()
    manifest = write_manifest(tmp_path / "tinyface.toml", "tinyface", top)
    out = tmp_path / "out"
    args = ["sweep", "--data", str(manifest), "--models", "SM", "--protocol", "identification"]
    _one_error_line(cli([*args, "--out", str(out)]), "identity '3'", "no gallery image")
    assert not out.exists()


def test_tinyface_without_training_set(tmp_path):
    """The test set loads without Training_Set; a model that would train on it is refused
    before anything is written."""
    top = write_tinyface(tmp_path)
    shutil.rmtree(top / "Training_Set")
    manifest = write_manifest(tmp_path / "tinyface.toml", "tinyface", top)
    shown = cli(["data", "show", str(manifest)])
    assert shown.exit_code == 0 and "train 0 ids" in shown.output, shown.output
    out = tmp_path / "out"
    args = ["sweep", "--data", str(manifest), "--models", "SM", "--protocol", "identification"]
    _one_error_line(cli([*args, "--out", str(out)]), "Training_Set", "does not exist")
    assert not out.exists()


def test_missing_dataset_root_one_line_exit_2(tmp_path):
    manifest = write_manifest(tmp_path / "tinyface.toml", "tinyface", tmp_path / "absent")
    out = tmp_path / "out"
    result = cli(["sweep", "--data", str(manifest), "--models", "SM", "--out", str(out)])
    _one_error_line(result, "does not exist", "get the data", "example.org")
    assert not out.exists()


def test_missing_distractor_folder_one_line_exit_2(tmp_path):
    out = tmp_path / "out"
    args = ["sweep", "--models", "SM", "--protocol", "identification", "--out", str(out)]
    result = cli([*args, "--distractors", str(tmp_path / "absent")])
    _one_error_line(result, "--distractors", "no such folder or manifest", "none")
    assert not out.exists()
