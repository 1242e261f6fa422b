"""`lowres data list/show`: output, contact sheet, and every bad input -> one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from lowres.cli import cli
from lowres.files import sha256_file


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRES_CACHE", str(tmp_path / "cache"))


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_bad_input(result, sheet: Path, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not sheet.exists()
    assert not list(sheet.parent.glob(f".{sheet.name}*"))


def write_faces(root: Path, counts: dict[str, int], size=(16, 12)) -> None:
    for p, (ident, n) in enumerate(counts.items()):
        for k in range(n):
            path = root / ident / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", size[::-1], 30 * p + 10 * k).save(path)


def manifest(path: Path, body: str) -> Path:
    path.write_text(f'name = "mine"\n{body}\n')
    return path


def test_data_list_names_builtins_and_manifests():
    result = run("data", "list")
    assert result.exit_code == 0, result.output
    for name in ("orl", "mnist", "synth", "lfw", "example_identity_folders"):
        assert name in result.output


def test_data_show_orl_prints_facts_and_writes_a_png_sheet(tmp_path):
    sheet = tmp_path / "orl.png"
    result = run("data", "show", "orl", "--sheet", str(sheet), "--ids", "3", "--per-id", "4")
    assert result.exit_code == 0, result.output
    for text in (
        "identities  40",
        "images      400",
        "112x92",
        "channels    1",
        "AT&T Laboratories Cambridge",
        "identity-disjoint folds: 4",
        "test 10 ids / 100 images",
        "450 genuine, 4500 impostor",
    ):
        assert text in result.output
    with Image.open(sheet) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "orl.png"]


def test_data_show_identity_folder_manifest(tmp_path):
    write_faces(tmp_path / "faces", {"a": 2, "b": 3, "c": 2, "d": 2})
    toml = manifest(
        tmp_path / "m.toml", 'kind = "identity-folders"\nroot = "faces"\n[protocol]\nn_folds = 2'
    )
    result = run("data", "show", str(toml))
    assert result.exit_code == 0, result.output
    assert "identities  4" in result.output and "images      9" in result.output
    assert "16x12" in result.output


def test_missing_root_says_what_is_missing_and_where_to_get_it(tmp_path):
    toml = manifest(
        tmp_path / "m.toml",
        'kind = "identity-folders"\nroot = "absent"\n[source]\nurl = "https://example.org/x.zip"',
    )
    sheet = tmp_path / "s.png"
    result = run("data", "show", str(toml), "--sheet", str(sheet))
    assert_bad_input(result, sheet, str(tmp_path / "absent"), "https://example.org/x.zip")


def test_unknown_kind(tmp_path):
    toml = manifest(tmp_path / "m.toml", 'kind = "videos"\nroot = "x"')
    sheet = tmp_path / "s.png"
    assert_bad_input(
        run("data", "show", str(toml), "--sheet", str(sheet)),
        sheet,
        "unknown kind 'videos'",
        "identity-folders",
    )


NOT_UTF8 = b"\xff\xfe\x00bad"


@pytest.mark.parametrize(
    "command",
    [
        ["data", "show"],
        ["train", "--method", "SM", "--out", "{out}", "--data"],
        ["sweep", "--models", "SM", "--out", "{out}", "--data"],
    ],
    ids=["data-show", "train", "sweep"],
)
def test_manifest_that_is_not_utf8_is_one_line_exit_2(tmp_path, command):
    toml = tmp_path / "m.toml"
    toml.write_bytes(NOT_UTF8)
    out = tmp_path / "out"
    result = run(*[a.format(out=out) for a in command], str(toml))
    assert_bad_input(result, out, str(toml), "not UTF-8", "save it as UTF-8")


def test_data_list_skips_broken_manifests_and_lists_the_rest(tmp_path, monkeypatch, caplog):
    """A manifest that is not UTF-8 is skipped with a warning, like one with a TOML syntax
    error; every other dataset is still listed."""
    (tmp_path / "a_not_utf8.toml").write_bytes(NOT_UTF8)
    (tmp_path / "b_bad_toml.toml").write_text('name = "oops\n')
    manifest(tmp_path / "c_mine.toml", 'kind = "identity-folders"\nroot = "absent"')
    monkeypatch.setenv("LOWRES_MANIFESTS", str(tmp_path))
    result = run("data", "list")
    assert result.exit_code == 0, result.output
    assert "mine" in result.stdout and "orl" in result.stdout
    assert "Traceback" not in result.output
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert len(skipped) == 2
    assert "a_not_utf8.toml" in skipped[0] and "not UTF-8" in skipped[0]
    assert "b_bad_toml.toml" in skipped[1] and "not valid TOML" in skipped[1]


def test_protocol_file_with_wrong_sha256(tmp_path):
    write_faces(tmp_path / "faces", {"A": 2})
    (tmp_path / "pairs.txt").write_text("1\nA\t1\t2\nA\t1\tA\t2\n")
    toml = manifest(
        tmp_path / "m.toml",
        f'kind = "pairs"\nroot = "faces"\n[protocol.files.view2]\npath = "pairs.txt"\n'
        f'sha256 = "{"0" * 64}"',
    )
    sheet = tmp_path / "s.png"
    assert sha256_file(tmp_path / "pairs.txt") != "0" * 64
    assert_bad_input(
        run("data", "show", str(toml), "--sheet", str(sheet)), sheet, "pairs.txt", "sha256"
    )


def test_corrupt_truncated_image(tmp_path):
    write_faces(tmp_path / "faces", {"a": 2, "b": 2})
    victim = tmp_path / "faces" / "b" / "1.png"
    victim.write_bytes(victim.read_bytes()[:40])
    toml = manifest(tmp_path / "m.toml", 'kind = "identity-folders"\nroot = "faces"')
    sheet = tmp_path / "s.png"
    assert_bad_input(
        run("data", "show", str(toml), "--sheet", str(sheet)),
        sheet,
        str(victim),
        "corrupt or truncated",
    )
    assert not (tmp_path / "cache" / "decoded").exists() or not any(
        (tmp_path / "cache" / "decoded").iterdir()
    )


def test_identity_folder_with_one_image(tmp_path):
    write_faces(tmp_path / "faces", {"a": 2, "lonely": 1, "c": 3})
    toml = manifest(tmp_path / "m.toml", 'kind = "identity-folders"\nroot = "faces"')
    sheet = tmp_path / "s.png"
    assert_bad_input(
        run("data", "show", str(toml), "--sheet", str(sheet)),
        sheet,
        str(tmp_path / "faces" / "lonely"),
        ">= 2 images per identity",
    )


def test_unknown_dataset_name_lists_valid_names(tmp_path):
    sheet = tmp_path / "s.png"
    assert_bad_input(
        run("data", "show", "orll", "--sheet", str(sheet)),
        sheet,
        "unknown dataset 'orll'",
        "orl",
        "mnist",
        "lfw",
    )


def test_lfw_without_images_says_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRES_DATA", str(tmp_path))
    sheet = tmp_path / "s.png"
    assert_bad_input(
        run("data", "show", "lfw", "--sheet", str(sheet)), sheet, str(tmp_path / "lfw"), "lfw.tgz"
    )


def test_synth_summary_from_labels_equals_the_rendered_split(monkeypatch):
    """`data show synth` counts the training split from the preset instead of rendering it;
    the protocol lines must equal those of the rendered split, fold by fold."""
    from lowres.data import get_split, load_dataset, synthetic
    from lowres.data.registry import get_split_labels, protocol_summary

    monkeypatch.setitem(
        synthetic.PRESETS, "tinylabels", synthetic.SynthPreset(9, 3, 5, 2, (16, 12), (32, 24), 1)
    )
    for fold in (0, 1):
        train, test = get_split("synth", fold=fold, preset="tinylabels")
        labels = get_split_labels("synth", fold=fold, preset="tinylabels")
        assert labels[0].tolist() == train.labels.tolist()
        assert labels[1].tolist() == test.labels.tolist()
        ds = load_dataset("synth", preset="tinylabels")
        assert protocol_summary(ds, fold=fold, split=labels) == protocol_summary(
            ds, fold=fold, split=(train.labels, test.labels)
        )
        lines = protocol_summary(ds, fold=fold, split=labels)
        assert f"fold {fold}: train 9 ids / 27 images, test 5 ids / 10 images" in lines
        # 5 identities x 2 images: 5 genuine pairs, C(10, 2) - 5 = 40 impostor pairs.
        assert f"all-vs-all on test fold {fold}: 5 genuine, 40 impostor pairs" in lines


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["sweep", "--far", "2"], " sweep -h lists the options"),
        (["sweep", "--no-such-option"], "No such option"),
        (["train"], "Missing option '--method'"),
        (["data", "show"], " data show -h"),
        (["run", "experiments/norms.toml", "--set"], " run -h"),
        (["check"], "Missing argument"),
    ],
)
def test_click_usage_errors_are_one_line_exit_2(args, fragment):
    """Option errors click catches itself get the same one-line form as library errors."""
    result = run(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert fragment in lines[0] and "Usage:" not in result.output


def test_sheet_inside_a_file_and_preset_without_synth_are_one_line_exit_2(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    sheet = afile / "s.png"
    assert_bad_input(run("data", "show", "orl", "--sheet", str(sheet)), sheet, "lies inside")
    assert afile.read_text() == "mine"
    assert_bad_input(
        run("data", "show", "orl", "--preset", "cpu"), sheet, "applies only to the synthetic"
    )
