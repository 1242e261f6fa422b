"""lowres.external: TorchScript / ONNX models swept next to lowres checkpoints.

The acceptance test trains one 1-epoch SM model on ORL fold 0 (a few seconds on CPU), exports
it with ``lowres export`` and sweeps the checkpoint and the archive separately: the two models'
rows must hold the same numbers, exactly (the trace runs the same CPU kernels on the same
degraded pixels).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pandas.testing import assert_frame_equal

from lowres import external as E
from lowres import sweep as S
from lowres.errors import CheckpointError, ConfigError
from lowres.results import COLUMNS, KEY_COLUMNS

METRIC_COLUMNS = [c for c in COLUMNS if c not in ("model", "method")]


def _cli(args):
    from click.testing import CliRunner

    from lowres.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint folder, exported archive, its sidecar, model cache, root)."""
    from lowres.train import TrainConfig, train_cached

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    root = tmp_path_factory.mktemp("external")
    cache = root / "models"
    config = TrainConfig(method="SM", data="orl", fold=0, epochs=1, device="cpu")
    ckpt = train_cached(config, cache, progress=False)
    result = _cli(["export", ckpt, root / "sm.pt"])
    assert result.exit_code == 0, result.output
    return ckpt, root / "sm.pt", root / "sm.adapter.json", cache, root


def _sweep(models, out, cache, **changes):
    config = S.SweepConfig(
        models=tuple(str(m) for m in models),
        scales=(1.0, 0.5),
        data="orl",
        folds=(0,),
        fars=(1e-2, 1e-1),
        device="cpu",
        batch_size=64,
        out=out,
        model_cache=cache,
        n_boot=50,
        plot=False,
        jobs=1,
    )
    return S.run_sweep(dataclasses.replace(config, **changes))


def _rows(table, model):
    rows = table[table["model"] == model]
    assert len(rows) > 0, f"no rows for {model}"
    return rows[METRIC_COLUMNS].sort_values(list(KEY_COLUMNS[2:])).reset_index(drop=True)


def test_export_writes_the_checkpoint_adapter(exported):
    from lowres.checkpoint import load_checkpoint

    ckpt, pt, side, _, _ = exported
    loaded = load_checkpoint(ckpt)
    fields = json.loads(side.read_text())
    assert fields == {**dataclasses.asdict(loaded.adapter), "size": list(loaded.adapter.size)}
    module, adapter = E.load_external(pt)
    assert adapter == loaded.adapter
    x = torch.randn(
        7, adapter.in_channels, *adapter.size, generator=torch.Generator().manual_seed(1)
    )
    with torch.inference_mode():
        assert torch.equal(module.embed(x), loaded.model.embed(x))


def test_export_bytes_do_not_depend_on_where_lowres_lives(exported, tmp_path):
    """The same checkpoint exported by a copy of lowres at another path gives the same bytes.

    A plain ``torch.jit.save`` of the trace embeds the Python call stack (absolute paths and
    line numbers of lowres and torch), so the archive's sha256, and with it the sweep cells,
    changed with the checkout.
    """
    import subprocess
    import sys

    import lowres

    ckpt, pt, _, _, _ = exported
    data = pt.read_bytes()
    for where in (Path(lowres.__file__).resolve().parent, Path(torch.__file__).resolve().parent):
        assert str(where).encode() not in data, f"the archive names {where}"
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(
        Path(lowres.__file__).parent, elsewhere / "lowres", ignore=shutil.ignore_patterns("*.pyc")
    )
    env = {**os.environ, "PYTHONPATH": str(elsewhere)}
    out = tmp_path / "again.pt"
    subprocess.run(
        [sys.executable, "-m", "lowres", "export", str(ckpt), str(out)],
        env=env,
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    assert out.read_bytes() == data
    # writing the archive again is a fixed point: nothing left to normalise
    assert E.reproducible_archive(torch.jit.load(str(pt))) == data


@pytest.fixture(scope="module")
def swept(exported):
    """The checkpoint and its export, each swept alone: (native result, external result)."""
    ckpt, pt, _, cache, root = exported
    return _sweep([ckpt], root / "native", cache), _sweep([pt], root / "ext", cache)


def test_exported_model_sweeps_to_the_native_table(exported, swept):
    ckpt = exported[0]
    native, ext = swept[0].table, swept[1].table
    assert set(ext["model"]) == {"sm.pt", S.PIXELS}
    assert set(ext.loc[ext["model"] == "sm.pt", "method"]) == {"torchscript"}
    a, b = _rows(native, Path(ckpt).name), _rows(ext, "sm.pt")
    assert len(a) == len(b) > 0
    # Exact equality, not a tolerance: same kernels, same pixels, same pair order.
    assert_frame_equal(a, b, check_exact=True)
    assert_frame_equal(_rows(native, S.PIXELS), _rows(ext, S.PIXELS), check_exact=True)


def test_external_cells_are_keyed_by_file_and_adapter(exported, swept, tmp_path):
    _, pt, side, cache, root = exported
    base = E.parse_external(str(pt))
    same = E.model_hash(base)
    assert E.model_hash(E.parse_external(str(pt))) == same
    flipped = E.parse_external(f"{pt}(flip=sum)")
    assert flipped.adapter.flip == "sum" and flipped.adapter_source == f"{side} + inline"
    assert E.model_hash(flipped) != same
    copy = tmp_path / "other.pt"
    copy.write_bytes(pt.read_bytes() + b"\0")
    shutil.copy(side, tmp_path / "other.adapter.json")
    assert E.model_hash(E.parse_external(str(copy))) != same
    # A rerun reuses every cell; a changed adapter computes only the external model's cells.
    out = tmp_path / "run"
    shutil.copytree(root / "ext", out)
    again = _sweep([pt], out, cache)
    assert again.computed == 0 and again.reused == swept[1].computed
    changed = _sweep([f"ts:{pt}(flip=sum)"], out, cache)
    assert changed.computed == 2  # sm.pt at scales 1 and 0.5; pixels is unchanged


def test_inline_adapter_and_toml_sidecar(exported, tmp_path):
    _, pt, side, _, _ = exported
    adapter = E.load_external(pt)[1]
    bare = tmp_path / "bare.bin"
    shutil.copy(pt, bare)
    inline = f"ts:{bare}(channels=grey,size={adapter.size[0]}x{adapter.size[1]},mean=127.5,std=128)"
    spec = E.parse_external(inline)
    assert (
        spec.format == "torchscript" and spec.adapter == adapter and spec.adapter_source == "inline"
    )
    (entry,) = S.resolve_models([inline])
    assert (entry.name, entry.kind, entry.method) == ("bare.bin", "external", "torchscript")
    toml = tmp_path / "t.pt"
    shutil.copy(pt, toml)
    (tmp_path / "t.adapter.toml").write_text(
        f'channels = "grey"\nsize = [{adapter.size[0]}, {adapter.size[1]}]\n'
        "mean = 127.5\nstd = 128\nflip = 'concat'\n"
    )
    _, got = E.load_external(toml)
    assert got == dataclasses.replace(adapter, flip="concat")
    shutil.copy(side, tmp_path / "t.adapter.json")
    with pytest.raises(ConfigError, match="two adapter sidecars"):
        E.parse_external(str(toml))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"size": [56, 48], "mean": 127.5, "std": 128}, "lacks channels"),
        ({"channels": "purple", "size": [56, 48], "mean": 127.5, "std": 128}, "unknown channels"),
        ({"channels": "grey", "size": [56], "mean": 127.5, "std": 128}, "size"),
        ({"channels": "grey", "size": [56, 0], "mean": 127.5, "std": 128}, "size"),
        (
            {"channels": "grey", "size": [56, 48], "mean": "a", "std": 128},
            "mean .* must be a number",
        ),
        ({"channels": "grey", "size": [56, 48], "mean": 127.5, "std": 0}, "std .* must be > 0"),
        ({"channels": "grey", "size": [56, 48], "mean": 0, "std": 1, "flip": "x"}, "unknown flip"),
        ({"channels": "grey", "size": [56, 48], "mean": 0, "std": 1, "sdt": 1}, "unknown adapter"),
    ],
)
def test_bad_sidecar_values_are_one_line_errors(exported, tmp_path, fields, match):
    _, pt, _, _, _ = exported
    shutil.copy(pt, tmp_path / "m.pt")
    (tmp_path / "m.adapter.json").write_text(json.dumps(fields))
    with pytest.raises(ConfigError, match=match) as info:
        E.parse_external(str(tmp_path / "m.pt"))
    assert "\n" not in str(info.value) and "m.adapter.json" in str(info.value)


def test_unparsable_sidecar_and_non_archive(exported, tmp_path):
    _, pt, side, _, _ = exported
    shutil.copy(pt, tmp_path / "m.pt")
    (tmp_path / "m.adapter.json").write_text("{channels: grey")
    with pytest.raises(ConfigError, match="does not parse"):
        E.parse_external(str(tmp_path / "m.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a zip archive")
    shutil.copy(side, tmp_path / "junk.adapter.json")
    with pytest.raises(CheckpointError, match="not a TorchScript archive") as info:
        E.load_external(tmp_path / "junk.pt")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", ["missing-file", "missing-sidecar", "wrong-size", "bad-sidecar"])
def test_bad_external_model_exits_2_with_one_line(exported, tmp_path, case):
    _, pt, _, cache, _ = exported
    model = tmp_path / "m.pt"
    if case != "missing-file":
        shutil.copy(pt, model)
    if case == "wrong-size":
        (tmp_path / "m.adapter.json").write_text(
            json.dumps({"channels": "grey", "size": [30, 30], "mean": 127.5, "std": 128})
        )
    if case == "bad-sidecar":
        (tmp_path / "m.adapter.json").write_text(
            json.dumps({"channels": "grey", "size": [56, 48], "mean": 127.5, "std": -1})
        )
    out = tmp_path / "out"
    args = ["sweep", "--data", "orl", "--folds", "0", "--scales", "1,0.5", "--models", model]
    result = _cli([*args, "--out", out, "--model-cache", cache, "--no-plot", "--jobs", "1"])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    expected = {
        "missing-file": "does not exist",
        "missing-sidecar": "no adapter for",
        "wrong-size": "fails on the adapter's input (B, 1, 30, 30)",
        "bad-sidecar": "std",
    }[case]
    assert expected in line, line
    assert not out.exists()


def test_export_bad_input_exits_2_with_one_line(exported, tmp_path):
    ckpt, _, _, _, _ = exported
    result = _cli(["export", tmp_path / "nope", tmp_path / "x.pt"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "does not exist" in result.output
    result = _cli(["export", ckpt, tmp_path / "x.onnx"])
    assert result.exit_code == 2 and "TorchScript" in result.output, result.output
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.adapter.json").exists()


# --------------------------------------------------------------------------------------------
# ONNX (optional extra: onnxruntime to run, onnx for torch.onnx.export in the test)
# --------------------------------------------------------------------------------------------


def _onnx_export(model, path: Path, shape, dynamic: bool) -> None:
    pytest.importorskip("onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(*shape),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["features"],
            dynamic_axes={"input": {0: "batch"}} if dynamic else None,
        )


def test_onnx_model_matches_the_native_model(exported, tmp_path):
    pytest.importorskip("onnxruntime")
    from lowres.checkpoint import load_checkpoint
    from lowres.embed import embed_many

    ckpt, _, side, _, _ = exported
    loaded = load_checkpoint(ckpt)
    adapter = loaded.adapter
    onnx_path = tmp_path / "sm.onnx"
    _onnx_export(
        E._Embed(loaded.model).eval(), onnx_path, (2, adapter.in_channels, *adapter.size), True
    )
    shutil.copy(side, tmp_path / "sm.adapter.json")
    (entry,) = S.resolve_models([str(onnx_path)])
    assert (entry.kind, entry.method) == ("external", "onnx")
    module, got = E.load_external(onnx_path)
    images = torch.randint(0, 256, (10, 1, 112, 92), dtype=torch.uint8)
    out = embed_many(images, {"onnx": (module, got), "native": (loaded.model, adapter)}, 0.25)
    np.testing.assert_allclose(out["onnx"].features, out["native"].features, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["size", "fixed-batch"])
def test_onnx_input_shape_that_does_not_fit_the_adapter(exported, tmp_path, case):
    pytest.importorskip("onnxruntime")
    from lowres.checkpoint import load_checkpoint

    ckpt, _, _, _, _ = exported
    loaded = load_checkpoint(ckpt)
    adapter = loaded.adapter
    path = tmp_path / "m.onnx"
    _onnx_export(
        E._Embed(loaded.model).eval(),
        path,
        (1, adapter.in_channels, *adapter.size),
        dynamic=case == "size",
    )
    fields = {**dataclasses.asdict(adapter), "size": [adapter.size[0], adapter.size[1] + 4]}
    if case == "fixed-batch":
        fields["size"] = list(adapter.size)
    (tmp_path / "m.adapter.json").write_text(json.dumps(fields))
    match = "takes input" if case == "size" else "fixed batch size of 1"
    with pytest.raises(ConfigError, match=match) as info:
        E.load_external(path)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# py:package.module:factory
# --------------------------------------------------------------------------------------------

PY_MODULE = '''
import math
import torch
from lowres.checkpoint import load_checkpoint

CALLS = []
GREY8 = {"channels": "grey", "size": [8, 8], "mean": 0, "std": 1}


def from_checkpoint(path):
    """The lowres checkpoint's own network, handed over as a plain module."""
    loaded = load_checkpoint(path)
    CALLS.append(path)
    return loaded.model, loaded.adapter


def linear(width=4, scale=1.0):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 12, int(width)))
    net.lowres_identity = f"linear-v1-{scale}"
    return net, {"channels": "grey", "size": [16, 12], "mean": 127.5, "std": 127.5}


def as_function():
    return (lambda x: x.flatten(1)[:, :5] * 2.0), None


def no_adapter():
    return torch.nn.Flatten(), None


def flat_output():
    return (lambda x: x.sum(dim=(1, 2, 3))), GREY8


def nan_output():
    return (lambda x: x.flatten(1) * math.nan), GREY8


def raises():
    raise RuntimeError("weights file missing")


def wrong_return():
    return "not a model"


not_callable = 3


class Flagging(torch.nn.Module):
    """Takes the clean images too, and flags those whose clean mean is below 110."""

    wants_clean = True

    def __init__(self):
        super().__init__()
        self.last_flags = {}
        self.calls = []

    def forward(self, x, clean=None):
        ref = x if clean is None else clean
        self.calls.append((len(x), clean is not None))
        self.last_flags = {"dark": ref.flatten(1).mean(1) < 110}
        return torch.cat([x.flatten(1)[:, :6], ref.flatten(1)[:, :6]], dim=1) / 255.0


def flagging():
    return Flagging(), {"channels": "grey", "size": [112, 92], "mean": 0, "std": 1}
'''


@pytest.fixture
def py_module(tmp_path, monkeypatch):
    """A module the test writes, importable as ``lowres_test_factories``."""
    import sys

    (tmp_path / "lowres_test_factories.py").write_text(PY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(E, "_FACTORY_MODELS", {})
    yield "lowres_test_factories"
    sys.modules.pop("lowres_test_factories", None)


def test_python_factory_sweeps_to_the_native_table(exported, swept, py_module):
    ckpt, _, _, cache, root = exported
    target = f"py:{py_module}:from_checkpoint(path={ckpt})"
    spec = E.parse_external(target)
    assert spec.format == "python" and spec.name == f"{py_module}:from_checkpoint(path={ckpt})"
    result = _sweep([target], root / "py", cache)
    table = result.table
    assert set(table["model"]) == {spec.name, S.PIXELS}
    assert set(table.loc[table["model"] == spec.name, "method"]) == {"python"}
    # The same network on the same pixels: exactly the checkpoint's numbers.
    native = swept[0].table
    assert_frame_equal(_rows(native, Path(ckpt).name), _rows(table, spec.name), check_exact=True)
    module = __import__(py_module)
    assert len(module.CALLS) == 1  # called once for the dry run and every (fold, seed)


def test_python_factory_arguments_adapter_and_identity(py_module):
    spec = E.parse_external(f"py:{py_module}:linear(width=6,flip=sum)")
    assert dict(spec.kwargs) == {"width": 6} and spec.adapter.flip == "sum"
    assert spec.adapter.size == (16, 12) and spec.adapter_source == f"{py_module}:linear + inline"
    module = E.load_spec(spec)
    x = torch.randn(3, 1, 16, 12, generator=torch.Generator().manual_seed(0))
    direct = __import__(py_module).linear(width=6)[0]
    with torch.inference_mode():
        assert torch.equal(module.embed(x), direct(x))
    assert spec.identity == "linear-v1-1.0"
    hashes = {
        E.model_hash(E.parse_external(f"py:{py_module}:{call}"))
        for call in ("linear", "linear(width=6)", "linear(scale=2)", "linear(flip=sum)")
    }
    assert len(hashes) == 4  # arguments, identity and adapter all key the cells
    fn = E.parse_external(f"py:{py_module}:as_function(channels=grey,size=4x4,mean=0,std=1)")
    assert fn.adapter.size == (4, 4) and E.dry_run(E.load_spec(fn), fn.adapter, fn.name) == 5


def test_python_model_gets_clean_images_and_its_flags_become_rows(exported, py_module, tmp_path):
    from lowres.data import get_test_split
    from lowres.results import POOLED

    cache = exported[3]
    model = f"py:{py_module}:flagging"
    result = _sweep([model], tmp_path / "flags", cache, folds=(0, 1), scales=(1.0, 0.25))
    spec = E.parse_external(model)
    inner = E.load_spec(spec).inner
    # The dry runs (a zero batch of 2) get no clean images; every embedding call gets them.
    assert all(has_clean for n, has_clean in inner.calls if n != E.DRY_RUN_BATCH)
    assert sum(n for n, _ in inner.calls if n != E.DRY_RUN_BATCH) == 4 * 100  # 2 folds x 2 widths
    rows = result.table[result.table["metric"] == "dark_share"]
    assert set(rows["size_px"]) == {92, 23} and (rows["model"] == spec.name).all()
    darks = []
    for fold in (0, 1):
        images = get_test_split("orl", fold=fold, seed=S.SPLIT_SEED).images.float()
        dark = (images.flatten(1).mean(1) < 110).numpy()
        darks.append(dark)
        got = rows.loc[rows["fold"] == fold, "value"]
        assert len(got) == 2 and np.allclose(got, dark.mean())
    pooled = rows.loc[rows["fold"] == POOLED, "value"]
    assert len(pooled) == 2 and np.allclose(pooled, np.concatenate(darks).mean())


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ("no_such_module_xyz:make", "py: module 'no_such_module_xyz' is not installed"),
        ("{mod}:missing", "has no callable 'missing'"),
        ("{mod}:not_callable", "has no callable 'not_callable'"),
        ("{mod}:raises", "failed: weights file missing"),
        ("{mod}:wrong_return", "must return (model, adapter)"),
        ("{mod}:no_adapter", "lacks channels, size, mean, std"),
        ("{mod}:flat_output", "returns (2,) for a batch of 2"),
        ("{mod}:nan_output", "NaN/inf features"),
        ("{mod}.make", "is not package.module:factory"),
    ],
)
def test_bad_python_model_exits_2_with_one_line(exported, tmp_path, py_module, call, expected):
    cache = exported[3]
    out = tmp_path / "out"
    model = "py:" + call.format(mod=py_module)
    args = ["sweep", "--data", "orl", "--folds", "0", "--scales", "1,0.5", "--models", model]
    result = _cli([*args, "--out", out, "--model-cache", cache, "--no-plot", "--jobs", "1"])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert expected in line, line
    assert not out.exists()


def test_dlib_without_its_extra_is_one_line_naming_it(exported, tmp_path, monkeypatch):
    """Whether or not the extra is installed here, a missing one is one line, exit 2."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("dlib", "face_recognition_models") else real(name, *a),
    )
    monkeypatch.setitem(__import__("sys").modules, "dlib", None)  # `import dlib` fails too
    monkeypatch.setattr(E, "_FACTORY_MODELS", {})
    out = tmp_path / "out"
    args = ["sweep", "--data", "orl", "--folds", "0", "--models", "dlib(size=112x92)"]
    result = _cli([*args, "--out", out, "--model-cache", exported[3], "--no-plot"])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert "pip install -e '.[dlib]'" in line, line
    assert not out.exists()
