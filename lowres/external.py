"""External models: TorchScript archives, ONNX graphs and Python factories, evaluated next to
lowres checkpoints.

An external model is one file plus an *input adapter* (the same
:class:`lowres.embed.InputAdapter` lowres checkpoints carry): which channels in which order,
the input size, the normalisation on the 0..255 scale and the flip fusion. The sweep feeds it
the identical degraded pixels it feeds every other model, through that adapter.

**Syntax** (``lowres sweep --models``, :func:`parse_external`)::

    [ts:|onnx:]PATH[(key=value,...)]

    nets/arcface.pt               TorchScript; adapter from nets/arcface.adapter.json
    onnx:nets/r50.bin(flip=sum)   ONNX; adapter from nets/r50.adapter.json, flip overridden
    ts:nets/arcface.pt(channels=rgb,size=112x112,mean=127.5,std=127.5)
                                  TorchScript; the whole adapter inline, no sidecar needed
    py:mypkg.nets:make_model(width=64,flip=sum)
                                  Python: imports mypkg.nets and calls make_model(width=64);
                                  adapter keys inline override the adapter it returns

- Format: the ``ts:`` / ``onnx:`` prefix when given, else ``.onnx`` files are ONNX and every
  other file is TorchScript. A folder (or a ``model.json`` / ``model.safetensors`` path) is a
  lowres checkpoint, not an external model.
- Adapter sidecar: next to the file, its name with the suffix replaced by ``.adapter.json`` or
  ``.adapter.toml`` (``arcface.pt`` -> ``arcface.adapter.json``); both present is an error.
  Keys: ``channels`` (``grey`` | ``rgb`` | ``bgr``), ``size`` (``[H, W]``), ``mean`` and
  ``std`` (on the 0..255 scale: the model sees ``(p - mean) / std``), ``flip`` (``none`` |
  ``sum`` | ``concat``, default ``none``). ``channels``, ``size``, ``mean`` and ``std`` are
  required: a silently assumed normalisation would give wrong numbers, not an error.
- Inline ``(key=value,...)``: overrides sidecar keys one by one, or stands in for a missing
  sidecar; ``size=HxW``.

**Python factories** (``py:package.module:factory``): lowres imports ``package.module`` (so
its top-level code runs: name only modules you trust) and calls ``factory(**kwargs)`` with the
inline items that are not adapter keys (values read as JSON where they parse: ``64``, ``true``,
else text). The factory returns ``(model, adapter)``: a ``torch.nn.Module`` or any callable
mapping the float batch to ``(B, D)`` features, and an :class:`InputAdapter` or a dict of adapter
fields (or None when the inline items give the whole adapter). The model id is
``package.module:factory`` plus its non-adapter items. Its cache identity hashes the module's
source file, the items, the adapter and the model's ``lowres_identity`` attribute when it has
one (e.g. the sha256 of weights it reads from disk): a factory that loads other weights without
saying so in ``lowres_identity`` would reuse stale cells.

**Contract.** The model maps a float32 batch ``(B, C, H, W)`` (C = 1 for grey, else 3) to
features ``(B, D)``: a TorchScript archive through its ``forward``, an ONNX graph through its
single input and first output. The batch axis must be dynamic. :func:`load_external` checks
this at load time with a dry run on one batch of two zero images, so an adapter the model
cannot take is a one-line :class:`ConfigError` before any sweep work starts.

**Trust.** ``torch.jit.load`` reads a zip archive of TorchScript source and tensor storages. Its
unpickler restores tensors and the TorchScript classes compiled from the archive's own code; it
never imports a Python module or calls a Python function named in the file, unlike
``torch.load(weights_only=False)``. Running the model does execute the archive's TorchScript
code, which may call any operator registered in the process: treat an archive as a program
and load those from sources you trust. An ONNX file is a protobuf graph of ONNX operators;
onnxruntime runs it with its own kernels and no custom-operator libraries are registered here.

**Why not ``torch.export`` (.pt2).** torch 2.13 marks ``torch.jit`` deprecated in favour of
``torch.export``, but ``torch.export.load`` restores weights with
``torch.load(weights_only=False)``, a full unpickler that can run any Python named in the file,
and its format is documented as not yet stable across torch versions. TorchScript stays
supported for the models users already have; ONNX is the stable, code-free format to hand a
model to lowres.

**Cache identity.** :func:`model_hash`: sha256 over the format, the file's sha256 and the
adapter fields, so changing the file or any adapter value gives new sweep cells.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import math
import os
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowres.checkpoint import load_checkpoint
from lowres.embed import InputAdapter
from lowres.errors import CheckpointError, ConfigError
from lowres.files import atomic_write_bytes, atomic_write_text, check_writable, sha256_file

__all__ = [
    "FORMATS",
    "ExternalSpec",
    "OnnxModel",
    "PythonModel",
    "TorchScriptModel",
    "adapter_from_fields",
    "dry_run",
    "export_torchscript",
    "is_external",
    "load_external",
    "load_spec",
    "model_hash",
    "parse_external",
    "read_adapter_file",
    "reproducible_archive",
    "sidecar_candidates",
]

FORMATS = ("torchscript", "onnx", "python")
PREFIXES = {"ts:": "torchscript", "onnx:": "onnx", "py:": "python"}
MODEL_SUFFIXES = (".pt", ".pth", ".jit", ".ts", ".torchscript", ".onnx")
"""Suffixes that mark an external model in ``--models`` even before the file is found."""
ADAPTER_KEYS = ("channels", "size", "mean", "std", "flip")
REQUIRED_KEYS = ("channels", "size", "mean", "std")
_CHECKPOINT_FILES = ("model.json", "model.safetensors", "state.pt")
_INLINE = re.compile(r"^(?P<path>.+?)\((?P<args>[^()]*)\)$")
BUILTIN = {"dlib": "lowres.reference.dlib:recognizer"}
"""Reference models by name (``--models dlib`` or ``dlib(size=112x92)``): Python factories of
:mod:`lowres.reference`, each from its optional extra."""
RECORDED = {"lowres.reference.dlib:recognizer": {"align": "clean"}}
"""Factory settings always written into the model id, with their defaults (dlib's alignment)."""
_TARGET = re.compile(r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<factory>[A-Za-z_]\w*)$")
DRY_RUN_BATCH = 2
"""Images in the load-time dry run: more than one, so a graph with a fixed batch of 1 fails."""


@dataclass(frozen=True)
class ExternalSpec:
    """A parsed ``--models`` entry for an external model.

    Attributes:
        path: the model file (for a Python factory: its module's source file, or None).
        format: ``"torchscript"``, ``"onnx"`` or ``"python"``.
        adapter: the InputAdapter (sidecar or factory, merged with inline values).
        adapter_source: where the adapter came from (sidecar path, ``"inline"``, or both).
        target: ``package.module:factory`` of a Python factory, else empty.
        kwargs: the factory's keyword arguments (inline items that are not adapter keys).
        identity: the factory model's ``lowres_identity`` (part of its cache identity).
    """

    path: Path | None
    format: str
    adapter: InputAdapter
    adapter_source: str
    target: str = ""
    kwargs: tuple = ()
    identity: str = ""

    @property
    def name(self) -> str:
        """The model id in the results: the file name, or the factory (a builtin's name) with
        its arguments."""
        if self.format != "python":
            return self.path.name
        args = ",".join(f"{k}={v}" for k, v in self.kwargs)
        builtin = {target: name for name, target in BUILTIN.items()}.get(self.target)
        return (builtin or self.target) + (f"({args})" if args else "")


# --------------------------------------------------------------------------------------------
# Syntax and adapter
# --------------------------------------------------------------------------------------------


def _split_syntax(text: str) -> tuple[str | None, str, str | None]:
    """``[ts:|onnx:|py:]PATH[(args)]`` (or a :data:`BUILTIN` name) -> (format or None, path
    text or factory target, inline args or None)."""
    text = text.strip()
    head = text.split("(", 1)[0].strip().lower()
    if head in BUILTIN and not Path(text).expanduser().exists():
        match = _INLINE.match(text)
        return "python", BUILTIN[head], match["args"] if match else None
    fmt = None
    for prefix, name in PREFIXES.items():
        if text.lower().startswith(prefix):
            fmt, text = name, text[len(prefix) :]
            break
    match = _INLINE.match(text)
    if match and not Path(text).expanduser().exists():
        return fmt, match["path"].strip(), match["args"]
    return fmt, text, None


def is_external(text: str) -> bool:
    """Whether a ``--models`` entry names an external model (not a method or checkpoint)."""
    fmt, path_text, _ = _split_syntax(str(text))
    if fmt is not None:
        return True
    path = Path(path_text).expanduser()
    if path.is_dir() or path.name in _CHECKPOINT_FILES:
        return False
    return path.is_file() or path.suffix.lower() in MODEL_SUFFIXES


def sidecar_candidates(path: str | os.PathLike) -> tuple[Path, Path]:
    """The JSON and TOML adapter sidecars of a model file (``m.pt`` -> ``m.adapter.json``)."""
    path = Path(path)
    return path.with_suffix(".adapter.json"), path.with_suffix(".adapter.toml")


def read_adapter_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read an adapter sidecar (JSON or TOML by suffix) into a plain dict, unvalidated."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read adapter sidecar {path}: {exc.strerror}; check it") from None
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10: the same parser under its PyPI name
                import tomli as tomllib
            fields = tomllib.loads(data.decode("utf-8"))
        else:
            fields = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"adapter sidecar {path} does not parse ({first}); fix its syntax"
        ) from None
    if not isinstance(fields, dict):
        raise ConfigError(
            f"adapter sidecar {path} must hold one object with keys {', '.join(ADAPTER_KEYS)}"
        )
    return fields


def _parse_inline(args: str, where: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for item in (a.strip() for a in args.split(",")):
        if not item:
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise ConfigError(
                f"inline adapter item {item!r} in {where} is not key=value; e.g. "
                "(channels=rgb,size=112x112,mean=127.5,std=128)"
            )
        if key == "size":
            parts = value.lower().split("x")
            try:
                fields[key] = [int(p) for p in parts] if len(parts) == 2 else value
            except ValueError:
                fields[key] = value
        elif key in ("mean", "std"):
            try:
                fields[key] = float(value)
            except ValueError:
                fields[key] = value
        else:
            fields[key] = value
    return fields


def adapter_from_fields(fields: dict[str, Any], where: str) -> InputAdapter:
    """Validate adapter fields (from a sidecar and/or inline) into an InputAdapter.

    Raises:
        ConfigError: an unknown or missing key or a bad value, naming ``where`` it came from.
    """
    unknown = sorted(set(fields) - set(ADAPTER_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown adapter key(s) {', '.join(unknown)} in {where}; use {', '.join(ADAPTER_KEYS)}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in fields]
    if missing:
        raise ConfigError(
            f"adapter in {where} lacks {', '.join(missing)}; give channels, size [H, W], "
            "mean and std (0..255 scale)"
        )
    size = fields["size"]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
    ):
        raise ConfigError(
            f"adapter size in {where} must be [H, W] with two positive integers "
            f"(inline: size=HxW), got {size!r}"
        )
    for key in ("mean", "std"):
        value = fields[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"adapter {key} in {where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"adapter {key} in {where} must be finite, got {value!r}")
    if not fields["std"] > 0:
        raise ConfigError(f"adapter std in {where} must be > 0, got {fields['std']!r}")
    for key in ("channels", "flip"):
        if key in fields and not isinstance(fields[key], str):
            raise ConfigError(f"adapter {key} in {where} must be a string, got {fields[key]!r}")
    try:
        return InputAdapter(
            channels=fields["channels"],
            size=(size[0], size[1]),
            mean=float(fields["mean"]),
            std=float(fields["std"]),
            flip=fields.get("flip", "none"),
        )
    except ConfigError as exc:
        raise ConfigError(f"adapter in {where}: {exc}") from None


def parse_external(text: str) -> ExternalSpec:
    """A ``--models`` entry ``[ts:|onnx:]PATH[(key=value,...)]`` -> ExternalSpec.

    Checks that the file exists and that its adapter is complete and valid; does not load it
    (see :func:`load_external`).

    Raises:
        CheckpointError: the file does not exist or is a folder.
        ConfigError: no sidecar and no inline adapter, two sidecars, or a bad adapter value.
    """
    fmt, path_text, inline = _split_syntax(str(text))
    if fmt == "python":
        return _parse_python(path_text.strip(), inline, str(text))
    path = Path(path_text).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"model file {path} does not exist; check the path or give a method name"
        )
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder; external models are single files (a lowres checkpoint "
            "folder is given without ts:/onnx:)"
        )
    if fmt is None:
        fmt = "onnx" if path.suffix.lower() == ".onnx" else "torchscript"
    found = [p for p in sidecar_candidates(path) if p.is_file()]
    if len(found) > 1:
        raise ConfigError(
            f"{path} has two adapter sidecars ({found[0].name} and {found[1].name}); keep one"
        )
    fields: dict[str, Any] = read_adapter_file(found[0]) if found else {}
    sources = [str(found[0])] if found else []
    if inline is not None:
        fields.update(_parse_inline(inline, str(text)))
        sources.append("inline")
    if not sources:
        json_path, toml_path = sidecar_candidates(path)
        raise ConfigError(
            f"no adapter for {path}: write {json_path.name} (or {toml_path.name}) next to it "
            "with channels, size, mean, std[, flip], or append (channels=..,size=HxW,mean=..,"
            "std=..)"
        )
    where = " + ".join(sources)
    return ExternalSpec(path, fmt, adapter_from_fields(fields, where), where)


def model_hash(spec: ExternalSpec) -> str:
    """Cache identity: sha256 of (format, the file's sha256, the adapter fields), 16 hex; for a
    Python factory also its target, arguments and ``lowres_identity``."""
    payload: dict[str, Any] = {
        "format": spec.format,
        "file_sha256": sha256_file(spec.path) if spec.path is not None else "",
        "adapter": dataclasses.asdict(spec.adapter),
    }
    if spec.format == "python":
        payload.update(target=spec.target, kwargs=list(spec.kwargs), identity=spec.identity)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Python factories
# --------------------------------------------------------------------------------------------

_FACTORY_MODELS: dict[tuple[str, tuple], tuple[nn.Module, Any]] = {}
"""Each (target, kwargs) called once per process: parse and every (fold, seed) reuse it."""


class PythonModel(nn.Module):
    """A factory's model as a lowres model: ``embed(x)`` calls it (a Module is a submodule, so
    ``.to(device)`` and ``.eval()`` reach it)."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        if isinstance(fn, nn.Module):
            self.inner = fn
        else:
            self.inner = None
            self.fn = fn

    @property
    def _target(self) -> Any:
        return self.inner if self.inner is not None else self.fn

    @property
    def wants_clean(self) -> bool:
        """Whether the factory's model takes the undegraded images too (``clean=``)."""
        return bool(getattr(self._target, "wants_clean", False))

    @property
    def last_flags(self) -> dict | None:
        """The factory's model's per-image flags of its last call, if it reports any."""
        return getattr(self._target, "last_flags", None)

    def embed(self, x: torch.Tensor, clean: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) normalised images -> (B, D) features (``clean``: the same images
        undegraded, for a model with ``wants_clean``)."""
        out = self._target(x) if clean is None else self._target(x, clean=clean)
        return torch.as_tensor(out, device=x.device) if not isinstance(out, torch.Tensor) else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


def _kwarg(value: str) -> Any:
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, (int, float, bool)) or parsed is None else value


def _call_factory(target: str, kwargs: tuple) -> tuple[nn.Module, Any]:
    """Import the module, call the factory once (cached per process), check what it returns."""
    key = (target, kwargs)
    if key in _FACTORY_MODELS:
        return _FACTORY_MODELS[key]
    module_name, factory_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ConfigError(
                f"py: module {module_name!r} is not installed or not on the path ({exc}); "
                "pip install it or add its folder to PYTHONPATH"
            ) from None
        raise ConfigError(f"importing {module_name} failed: {_last_line(exc)}") from None
    except Exception as exc:  # the module's own top-level code failed
        raise ConfigError(f"importing {module_name} failed: {_last_line(exc)}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ConfigError(
            f"module {module_name} has no callable {factory_name!r}; name a function that "
            "returns (model, adapter)"
        )
    try:
        made = factory(**dict(kwargs))
    except Exception as exc:  # foreign code: its failure becomes one line
        raise ConfigError(f"{target}({_args_text(kwargs)}) failed: {_last_line(exc)}") from None
    if not (isinstance(made, tuple) and len(made) == 2 and callable(made[0])):
        raise ConfigError(
            f"{target} returned {type(made).__name__}; it must return (model, adapter): a "
            "torch.nn.Module or callable, and an InputAdapter, a dict of adapter fields or None"
        )
    model = PythonModel(made[0]).eval()
    _FACTORY_MODELS[key] = (model, made[1])
    return model, made[1]


def _args_text(kwargs: tuple) -> str:
    return ",".join(f"{k}={v!r}" for k, v in kwargs)


def _parse_python(target: str, inline: str | None, text: str) -> ExternalSpec:
    """``py:package.module:factory[(items)]`` -> ExternalSpec, the factory called (once)."""
    if not _TARGET.match(target):
        raise ConfigError(
            f"py: model {target!r} is not package.module:factory; e.g. py:mypkg.models:make_model"
        )
    items = _parse_inline(inline, text) if inline is not None else {}
    inline_adapter = {k: v for k, v in items.items() if k in ADAPTER_KEYS}
    given_kwargs = {k: _kwarg(str(v)) for k, v in items.items() if k not in ADAPTER_KEYS}
    kwargs = tuple(sorted({**RECORDED.get(target, {}), **given_kwargs}.items()))
    model, given = _call_factory(target, kwargs)
    if isinstance(given, InputAdapter):
        fields = dataclasses.asdict(given)
    elif isinstance(given, dict):
        fields = dict(given)
    elif given is None:
        fields = {}
    else:
        raise ConfigError(
            f"{target} returned an adapter of type {type(given).__name__}; return an "
            "InputAdapter, a dict of adapter fields or None"
        )
    sources = [target] if given is not None else []
    if inline_adapter:
        fields.update(inline_adapter)
        sources.append("inline")
    where = " + ".join(sources) or target
    adapter = adapter_from_fields(fields, where)
    source = getattr(sys.modules[target.split(":")[0]], "__file__", None)
    return ExternalSpec(
        path=Path(source) if source else None,
        format="python",
        adapter=adapter,
        adapter_source=where,
        target=target,
        kwargs=kwargs,
        identity=str(getattr(model._target, "lowres_identity", "")),
    )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


class TorchScriptModel(nn.Module):
    """A TorchScript archive as a lowres model: ``embed(x)`` is the archive's ``forward``."""

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.scripted = scripted

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images -> (B, D) features."""
        return self.scripted(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


class OnnxModel(nn.Module):
    """An onnxruntime session as a lowres model (no parameters; runs where onnxruntime runs).

    ``embed`` hands the batch to the session as float32 NCHW numpy and returns the first output
    on the input's device.
    """

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images -> (B, D) features."""
        feed = {self.input_name: x.detach().float().contiguous().cpu().numpy()}
        out = self.session.run(None, feed)[0]
        return torch.from_numpy(out.copy()).to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


def _last_line(exc: BaseException) -> str:
    # TorchScript and onnxruntime put the operator's own complaint on the last line.
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def _load_torchscript(path: Path) -> nn.Module:
    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not a TorchScript archive ({_last_line(exc)}); give a file written by "
            "torch.jit.save (lowres export), onnx:PATH for ONNX, or a checkpoint folder"
        ) from None
    return TorchScriptModel(scripted).eval()


def _load_onnx(path: Path, adapter: InputAdapter, where: str) -> nn.Module:
    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise ConfigError(
            f"{path.name} is an ONNX model but onnxruntime is not installed; "
            "pip install onnxruntime"
        ) from None
    try:
        session = onnxruntime.InferenceSession(
            str(path), providers=onnxruntime.get_available_providers()
        )
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise CheckpointError(
            f"{path} is not a loadable ONNX model ({_last_line(exc)}); re-export it"
        ) from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ConfigError(
            f"{path.name} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            "export a graph with one image input (B, C, H, W)"
        )
    inp = inputs[0]
    if inp.type != "tensor(float)":
        raise ConfigError(f"{path.name} takes {inp.type}; export it with a float32 input")
    want = (DRY_RUN_BATCH, adapter.in_channels, *adapter.size)
    shape = list(inp.shape)
    fixed_mismatch = len(shape) != 4 or any(
        isinstance(d, int) and d != w for d, w in zip(shape[1:], want[1:], strict=False)
    )
    if fixed_mismatch:
        raise ConfigError(
            f"{path.name} takes input {_shape_text(shape)} but the adapter from {where} gives "
            f"(B, {adapter.in_channels}, {adapter.size[0]}, {adapter.size[1]}); set the "
            "adapter's channels and size to the model's input"
        )
    if isinstance(shape[0], int):
        raise ConfigError(
            f"{path.name} has a fixed batch size of {shape[0]}; export it with a dynamic batch "
            "axis (torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}))"
        )
    return OnnxModel(session).eval()


def _shape_text(shape: list) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) else str(d or "?") for d in shape) + ")"


def dry_run(module: nn.Module, adapter: InputAdapter, name: str, where: str = "") -> int:
    """Run ``module.embed`` on a zero batch of the adapter's input; returns D.

    Raises:
        ConfigError: the model fails on that input, or returns anything but (B, D).
    """
    x = torch.zeros(DRY_RUN_BATCH, adapter.in_channels, *adapter.size)
    described = (
        f"(B, {adapter.in_channels}, {adapter.size[0]}, {adapter.size[1]}) "
        f"[channels={adapter.channels}, size={adapter.size[0]}x{adapter.size[1]}"
        + (f" from {where}]" if where else "]")
    )
    try:
        with torch.inference_mode():
            out = module.embed(x)
    except Exception as exc:  # any failure of foreign model code on the adapter's input
        raise ConfigError(
            f"{name} fails on the adapter's input {described}: {_last_line(exc)}; set the "
            "adapter's channels and size to the model's input"
        ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != DRY_RUN_BATCH:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"{name} returns {got} for a batch of {DRY_RUN_BATCH}; it must return features "
            "(B, D) (flatten or pool them in the exported model)"
        )
    if not out.is_floating_point():
        raise ConfigError(f"{name} returns {out.dtype} features; it must return floats")
    if not bool(torch.isfinite(out).all()):
        raise ConfigError(
            f"{name} returns NaN/inf features on a zero batch {described}; check the model "
            "and its adapter's normalisation"
        )
    return int(out.shape[1])


def load_external(
    path: str | os.PathLike,
    adapter_spec: InputAdapter | dict[str, Any] | str | os.PathLike | None = None,
    *,
    format: str | None = None,
) -> tuple[nn.Module, InputAdapter]:
    """Load a TorchScript or ONNX model and check it on its adapter's input.

    Args:
        path: the model file (``.onnx`` -> ONNX, anything else -> TorchScript, unless
            ``format`` says otherwise).
        adapter_spec: an InputAdapter, a dict of adapter fields, a sidecar path, or None to
            use the sidecar next to ``path`` (see :func:`sidecar_candidates`).
        format: ``"torchscript"`` or ``"onnx"``; None: by suffix.

    Returns:
        (module with ``.embed(x) -> (B, D)`` in eval mode on CPU, InputAdapter), ready for
        :func:`lowres.embed.embed_many`.

    Raises:
        CheckpointError: the file is missing or not a model of its format.
        ConfigError: no or bad adapter, onnxruntime missing for ONNX, or the model fails the
            dry run on one zero batch of the adapter's input shape.
    """
    path = Path(path).expanduser()
    if format is not None and format not in FORMATS:
        raise ConfigError(f"unknown external format {format!r}; use {' or '.join(FORMATS)}")
    if adapter_spec is None:
        prefix = {"torchscript": "ts:", "onnx": "onnx:"}.get(format or "", "")
        spec = parse_external(prefix + str(path))
    else:
        if not path.is_file():
            raise CheckpointError(f"model file {path} does not exist; check the path")
        if isinstance(adapter_spec, InputAdapter):
            adapter, where = adapter_spec, "the given InputAdapter"
        elif isinstance(adapter_spec, dict):
            where = f"the adapter given for {path.name}"
            adapter = adapter_from_fields(dict(adapter_spec), where)
        else:
            where = str(adapter_spec)
            if not Path(adapter_spec).is_file():
                raise ConfigError(f"adapter sidecar {where} does not exist; check the path")
            adapter = adapter_from_fields(read_adapter_file(adapter_spec), where)
        fmt = format or ("onnx" if path.suffix.lower() == ".onnx" else "torchscript")
        spec = ExternalSpec(path, fmt, adapter, where)
    return load_spec(spec), spec.adapter


def load_spec(spec: ExternalSpec) -> nn.Module:
    """The module of a parsed entry, loaded and dry-run (see :func:`load_external`)."""
    if spec.format == "python":
        module = _call_factory(spec.target, spec.kwargs)[0]
    elif spec.format == "onnx":
        module = _load_onnx(spec.path, spec.adapter, spec.adapter_source)
    else:
        module = _load_torchscript(spec.path)
    dry_run(module, spec.adapter, spec.name, spec.adapter_source)
    return module


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


class _Embed(nn.Module):
    """Traces ``model.embed`` as ``forward`` whatever the model's own forward does."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x)


def reproducible_archive(module: torch.jit.ScriptModule) -> bytes:
    """The TorchScript archive of ``module`` with no trace of where or how it was made.

    ``torch.jit.save`` of a traced module writes, beside the code and the weights, a
    ``*.debug_pkl`` table per code file holding the Python call stack of the trace: the
    absolute paths and line numbers of lowres's source, of torch and of the caller. The same
    checkpoint exported from two checkouts, two installs or two versions of lowres whose code
    moved would then give different bytes, a different sha256 and so different sweep cells
    (:func:`model_hash`). Here the archive is written once, read back without those tables
    and written again, so its source ranges point into its own serialized code: the bytes
    depend only on the weights, the traced code and the torch version (a second round trip
    gives the same bytes; the example input of the trace, all zeros, is not kept).
    """
    first = io.BytesIO()
    torch.jit.save(module, first)
    stripped = io.BytesIO()
    with (
        zipfile.ZipFile(first) as src,
        zipfile.ZipFile(stripped, "w", zipfile.ZIP_STORED) as dst,
    ):
        for name in src.namelist():
            if not name.endswith(".debug_pkl"):
                dst.writestr(name, src.read(name))
    stripped.seek(0)
    final = io.BytesIO()
    torch.jit.save(torch.jit.load(stripped, map_location="cpu"), final)
    return final.getvalue()


def export_torchscript(ckpt: str | os.PathLike, out: str | os.PathLike) -> tuple[Path, Path]:
    """Export a lowres checkpoint to a TorchScript archive plus its adapter sidecar.

    ``model.embed`` is traced on CPU in eval mode; the archive's ``forward`` is that embed.
    The sidecar ``OUT.adapter.json`` (suffix replaced) is the checkpoint's adapter. Before
    anything is written, the trace is checked against the eager model on a seeded random batch
    of another batch size (exact equality is expected on CPU; a difference above 1e-5 fails).
    Both files are written atomically, the archive first. The archive's bytes depend only on
    the weights, the traced code and the torch version, not on where lowres is installed
    (:func:`reproducible_archive`).

    Returns:
        (archive path, sidecar path).

    Raises:
        CheckpointError: not a valid lowres checkpoint, or the trace disagrees with the model.
        ConfigError: ``out`` is a folder, names an ONNX file, or cannot be written.
    """

    out = Path(out).expanduser()
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; give the archive's file name, e.g. {out}/model.pt")
    check_writable(out, "OUT", is_folder=False)
    if out.suffix.lower() == ".onnx":
        raise ConfigError(f"lowres export writes TorchScript; name the file {out.stem}.pt")
    if out.suffix.lower() in (".json", ".toml"):
        raise ConfigError(f"{out.name} would collide with its adapter sidecar; name it .pt")
    json_side, toml_side = sidecar_candidates(out)
    if toml_side.exists():
        raise ConfigError(
            f"{toml_side} exists and would contradict the exported {json_side.name}; remove it "
            "or pick another file name"
        )
    loaded = load_checkpoint(ckpt)
    model, adapter = loaded.model.eval(), loaded.adapter
    wrapper = _Embed(model).eval()
    example = torch.zeros(DRY_RUN_BATCH, adapter.in_channels, *adapter.size)
    with torch.no_grad(), warnings.catch_warnings():
        # FaceModel.check_input compares shapes in Python; the trace keeps the adapter's shape
        # as a constant, which is what the sidecar declares, so the warning says nothing new.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, example)
        check = torch.randn(
            DRY_RUN_BATCH + 1,
            adapter.in_channels,
            *adapter.size,
            generator=torch.Generator().manual_seed(0),
        )
        diff = (traced(check) - model.embed(check)).abs().max().item()
    if not diff <= 1e-5:
        raise CheckpointError(
            f"the TorchScript trace of {ckpt} differs from the model by {diff:.3g}; the model "
            "has data-dependent control flow that tracing cannot capture"
        )
    atomic_write_bytes(out, reproducible_archive(traced))
    fields = dataclasses.asdict(adapter)
    fields["size"] = list(fields["size"])
    atomic_write_text(json_side, json.dumps(fields, indent=2, sort_keys=True) + "\n")
    return out, json_side
