"""lowres.cells: the output-folder guard, the cell store, and each cell's pure metrics against
lowres.metrics and naive loops."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lowres import cells as C
from lowres.errors import ConfigError, ResultsError
from lowres.metrics import rates_at_threshold, tar_at_far


def _tied_scores(n_ids: int, per_id: int, seed: int):
    """All-vs-all scores of n_ids x per_id images, rounded to 2 decimals (many ties)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_ids), per_id)
    a, b = np.triu_indices(labels.size, 1)
    issame = labels[a] == labels[b]
    return np.round(rng.normal(0, 0.2, a.size) + 0.3 * issame, 2), issame


def _fingerprint(**changes):
    base = dict(data="synth", preset=None, pairing="probe", degrade_hash="h", seeds=[0], folds=[0])
    return C.settings_fingerprint(**{**base, **changes})


def test_foreign_folder_refused(tmp_path):
    (tmp_path / "x.txt").write_text("not a sweep")
    fp = C.settings_fingerprint(
        data="synth", preset=None, pairing="probe", degrade_hash="h", seeds=[0], folds=[0]
    )
    with pytest.raises(ResultsError, match="not empty"):
        C.prepare_out_dir(tmp_path, fp, force=False)


def test_roc_points_are_exact_tar_at_far():
    scores, issame = _tied_scores(10, 4, 6)
    pts = C.roc_points(scores, issame, n_points=20)
    for far, tar in pts[:-1]:
        assert tar == pytest.approx(tar_at_far(scores, issame, max(far, 1e-12)).tar)


def test_score_histogram_matches_a_naive_loop():
    rng = np.random.default_rng(3)
    scores = np.clip(rng.normal(0.2, 0.5, 2000), -1.0, 1.0)
    # Exact edges and both ends of the range land in the bins a loop puts them in.
    scores[:6] = [-1.0, 1.0, 0.0, 0.5, -0.984375, 1.0 - 2**-6]
    issame = rng.random(2000) < 0.3
    edges, gen, imp = C.score_histogram(scores, issame, bins=128)
    assert edges.size == 129 and edges[0] == -1.0 and edges[-1] == 1.0
    want_gen, want_imp = [0] * 128, [0] * 128
    for s_, same in zip(scores, issame, strict=True):
        b = min(math.floor((s_ + 1.0) * 64), 127)
        (want_gen if same else want_imp)[b] += 1
    assert gen.tolist() == want_gen and imp.tolist() == want_imp
    assert gen.sum() == issame.sum() and imp.sum() == (~issame).sum()


def test_pair_scores_match_a_per_pair_loop():
    rng = np.random.default_rng(8)
    gallery, probe = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
    a, b = np.triu_indices(30, 1)
    want = [
        gallery[i] @ probe[j] / np.linalg.norm(gallery[i]) / np.linalg.norm(probe[j])
        for i, j in zip(a, b, strict=True)
    ]
    np.testing.assert_allclose(C.pair_scores(gallery, probe, a, b), want, atol=1e-12)
    # Sparse pair lists take the gathering path; same numbers.
    np.testing.assert_allclose(C.pair_scores(gallery, probe, a[:50], b[:50]), want[:50], atol=1e-12)


def test_other_settings_refused_and_force_keeps_foreign_files(tmp_path):
    (tmp_path / "provenance.json").write_text(json.dumps({"settings": _fingerprint()}))
    (tmp_path / "results.csv").write_text("old")
    (tmp_path / "mine.txt").write_text("keep")
    C.prepare_out_dir(tmp_path, _fingerprint(), force=False)  # same settings: accepted
    assert (tmp_path / "results.csv").read_text() == "old"
    with pytest.raises(ResultsError, match="pairing: 'probe' -> 'both'"):
        C.prepare_out_dir(tmp_path, _fingerprint(pairing="both"), force=False)
    assert (tmp_path / "results.csv").exists()
    C.prepare_out_dir(tmp_path, _fingerprint(pairing="both"), force=True)
    assert not (tmp_path / "results.csv").exists() and not (tmp_path / "provenance.json").exists()
    assert (tmp_path / "mine.txt").read_text() == "keep"


def _key(**changes):
    values = dict(
        fingerprint=_fingerprint(),
        data_digest="d" * 64,
        model="SF+R(0.01)",
        model_hash="abc",
        scale=0.25,
        size_px=24,
        fold=0,
        seed=0,
        fars=[1e-2],
    )
    return C.cell_key(**(values | changes))


def _write(folder, key, value=0.5):
    rows = [{"metric": "tar", "far": 0.01, "value": value}]
    arrays = {"scores": np.full(3, value, np.float32), "labels": np.arange(3, dtype=np.int32)}
    return C.write_cell(folder, key, arrays, rows=rows, clean_ref=None, seconds=0.1)


def test_a_cell_exists_only_with_its_exact_key_and_its_npz(tmp_path):
    key = _key()
    stem = C.cell_stem(key)
    assert stem.startswith("SF-R-0.01__0024px__f0_s0__")
    for change in ({"model_hash": "abd"}, {"data_digest": "e" * 64}):
        assert C.cell_stem(_key(**change)) != stem  # any setting, or new pixels, change the name
    assert C.read_cell(tmp_path, key) is None
    written = _write(tmp_path, key)
    assert C.read_cell(tmp_path, key) == written
    (tmp_path / f"{stem}.npz").unlink()
    assert C.read_cell(tmp_path, key) is None  # JSON without its NPZ: not a cell
    _write(tmp_path, key)
    (tmp_path / f"{stem}.json").write_text("{truncated")
    assert C.read_cell(tmp_path, key) is None


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("empty-rows", "does not match its checksum"),
        ("edit-value", "does not match its checksum"),
        ("swap-npz", "do not match the sha256"),
        ("truncate-npz", "do not match the sha256"),
        ("other-key", "holds another key"),
    ],
)
def test_a_damaged_cell_is_not_trusted_and_says_why(tmp_path, caplog, damage, reason):
    key, other = _key(), _key(size_px=12, scale=0.125)
    _write(tmp_path, key, 0.5)
    _write(tmp_path, other, 0.25)
    stem, other_stem = C.cell_stem(key), C.cell_stem(other)
    json_path, npz_path = tmp_path / f"{stem}.json", tmp_path / f"{stem}.npz"
    cell = json.loads(json_path.read_text())
    if damage == "empty-rows":
        json_path.write_text(json.dumps({**cell, "rows": []}))
    elif damage == "edit-value":
        cell["rows"][0]["value"] = 0.9
        json_path.write_text(json.dumps(cell))
    elif damage == "swap-npz":
        npz_path.write_bytes((tmp_path / f"{other_stem}.npz").read_bytes())
    elif damage == "truncate-npz":
        npz_path.write_bytes(npz_path.read_bytes()[:100])
    else:
        json_path.write_text((tmp_path / f"{other_stem}.json").read_text())
    with caplog.at_level("WARNING", logger="lowres"):
        assert C.read_cell(tmp_path, key) is None
    assert f"recomputing cell {stem}" in caplog.text and reason in caplog.text
    assert C.read_cell(tmp_path, other) is not None  # the other cell is untouched


def test_open_out_dir_removes_a_folder_it_made_when_the_sweep_fails_before_a_cell(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(ConfigError), C.open_out_dir(out, _fingerprint(), force=False):
        (out / "provenance.json").write_text("{}")
        raise ConfigError("refused after the folder was made")
    assert not out.exists()
    with C.open_out_dir(out, _fingerprint(), force=False) as cells:
        (out / "provenance.json").write_text(json.dumps({"settings": _fingerprint()}))
        _write(cells, _key())
    with pytest.raises(ConfigError), C.open_out_dir(out, _fingerprint(), force=False):
        raise ConfigError("a later failure keeps the folder and its cells")
    assert any(cells.glob("*.json"))


def test_cell_metric_rows_agree_with_metrics_and_transfer_the_clean_threshold():
    clean, issame = _tied_scores(12, 4, 1)
    rng = np.random.default_rng(2)
    small = np.clip(clean - 0.1 + rng.normal(0, 0.05, clean.size), -1, 1)
    norms = rng.uniform(1, 2, 48)
    fars = [1e-2, 1e-1]
    rows, ref = C.cell_metric_rows(clean, issame, norms, fars=fars, clean=None)
    own = {(r["metric"], r.get("far")): r for r in rows}
    got, _ = C.cell_metric_rows(small, issame, norms / 2, fars=fars, clean=ref)
    by = {(r["metric"], r.get("far")): r for r in got}
    for far in fars:
        want = tar_at_far(small, issame, far)
        assert by[("tar", far)]["value"] == want.tar
        assert by[("tar", far)]["threshold"] == want.threshold
        t = tar_at_far(clean, issame, far).threshold
        assert ref["thresholds"][repr(far)] == t
        # On the clean cell itself the transferred threshold is its own: achieved FAR, 1 - TAR.
        assert own[("transfer_far", far)]["value"] == own[("tar", far)]["far_achieved"]
        assert own[("transfer_frr", far)]["value"] == pytest.approx(1 - own[("tar", far)]["value"])
        t_far, t_frr = rates_at_threshold(small, issame, t)
        assert by[("transfer_far", far)]["value"] == t_far
        assert by[("transfer_frr", far)]["value"] == t_frr
    assert by[("norm_ratio", None)]["value"] == pytest.approx(0.5)
    assert by[("tar", 1e-2)]["n_genuine"] == int(issame.sum())


def test_force_sets_the_old_sweep_aside_and_puts_it_back_if_the_new_one_fails_first(tmp_path):
    out = tmp_path / "run"
    with C.open_out_dir(out, _fingerprint(), force=False) as cells:
        (out / "provenance.json").write_text(json.dumps({"settings": _fingerprint()}))
        (out / "results.csv").write_text("old table")
        _write(cells, _key())
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = _fingerprint(pairing="both")
    with pytest.raises(ConfigError), C.open_out_dir(out, other, force=True):
        (out / "provenance.json").write_text(json.dumps({"settings": other}))
        raise ConfigError("refused before the first cell")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the old sweep is back, byte for byte
    with C.open_out_dir(out, other, force=True) as cells:
        (out / "provenance.json").write_text(json.dumps({"settings": other}))
        _write(cells, _key(data_digest="e" * 64))
    assert not (out / "results.csv").exists() and not (out / ".lowres-replaced").exists()
    assert len(list(cells.glob("*.json"))) == 1  # only the new sweep's cell
