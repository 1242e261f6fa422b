"""Checkpoint files: safetensors weights, a pickle-free training state, and a JSON sidecar.

A checkpoint is a folder::

    model.safetensors   model + loss tensors ("model.<key>", "loss.<key>"); no pickle at all
    model.json          sidecar: how to rebuild and feed the model (method, model name and kwargs,
                        input size, channels, normalisation, adapter), data + fold + preset, seed,
                        config and its hash, library versions, sha256 of model.safetensors,
                        metrics
    state.pt            full training state for resume (optimizer, scheduler, RNG, counters),
                        plain tensors/ints/floats/str/lists/dicts so ``torch.load(...,
                        weights_only=True)`` reads it; any other pickle content is refused

Every file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a reader never sees half a file. The sidecar is written last and names the
sha256 of the weights, so a weights file that does not belong to its sidecar is detected.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from lowres import models
from lowres.embed import InputAdapter
from lowres.errors import CheckpointError, ConfigError
from lowres.files import atomic_write_bytes, atomic_write_text, sha256_bytes, sha256_file
from lowres.methods import build_loss, parse_method

WEIGHTS_FILE = "model.safetensors"
SIDECAR_FILE = "model.json"
STATE_FILE = "state.pt"
SIDECAR_FORMAT = "lowres-checkpoint/1"


@dataclass
class LoadedModel:
    """A checkpoint rebuilt for inference.

    Attributes:
        model: the FaceModel in eval() mode, on CPU.
        loss: the MethodLoss (head + auxiliary losses) with its trained state (R, centers, ...).
        spec: the parsed MethodSpec.
        sidecar: the model.json contents.
        adapter: the InputAdapter that feeds the model exactly as in training.
    """

    model: nn.Module
    loss: nn.Module
    spec: Any
    sidecar: dict
    adapter: Any


# ---------------------------------------------------------------------------------------------
# atomic writes


# ---------------------------------------------------------------------------------------------
# weights (safetensors)


def weights_tensors(model: nn.Module, loss: nn.Module) -> dict[str, torch.Tensor]:
    """Flatten model and loss state into one ``{"model.k": t, "loss.k": t}`` dict on CPU.

    safetensors refuses tensors that share memory, so every tensor is cloned contiguous.
    """
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("model", model), ("loss", loss)):
        for key, value in module.state_dict().items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(
                    f"{prefix}.{key} is a {type(value).__name__}, not a tensor; keep module "
                    "state in buffers so it can be saved to safetensors"
                )
            tensors[f"{prefix}.{key}"] = value.detach().to("cpu").contiguous().clone()
    return tensors


def encode_weights(model: nn.Module, loss: nn.Module) -> bytes:
    """The model.safetensors file contents for a model + loss pair."""
    return save(weights_tensors(model, loss), metadata={"format": SIDECAR_FORMAT})


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (no pickle involved); CheckpointError if it is not one."""
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(
            f"cannot read weights {path}: {type(exc).__name__}: {_first_line(exc)}; "
            "the file is not a valid safetensors file, re-train or restore it"
        ) from None


def split_weights(tensors: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """Split ``model.*`` / ``loss.*`` keys into two state dicts; CheckpointError on others."""
    parts: dict[str, dict] = {"model": {}, "loss": {}}
    for key, value in tensors.items():
        prefix, _, rest = key.partition(".")
        if prefix not in parts or not rest:
            raise CheckpointError(
                f"unexpected tensor {key!r} in weights: keys must start with 'model.' or "
                "'loss.'; this is not a lowres checkpoint"
            )
        parts[prefix][rest] = value
    return parts["model"], parts["loss"]


def check_state_matches(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise CheckpointError naming the first missing/extra key or shape mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} (e.g. {what}.{missing[0]})")
        if extra:
            detail.append(f"extra {len(extra)} (e.g. {what}.{extra[0]})")
        raise CheckpointError(
            f"weights do not match the sidecar's {what}: {', '.join(detail)} keys; the "
            "sidecar and model.safetensors come from different runs, re-train or restore them"
        )
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"weights do not match the sidecar's {what}: {what}.{key} has shape "
                f"{tuple(state[key].shape)}, expected {tuple(value.shape)}; the sidecar and "
                "model.safetensors come from different runs, re-train or restore them"
            )


# ---------------------------------------------------------------------------------------------
# training state (torch.load(weights_only=True))


def _plain(value: Any) -> Any:
    """Reduce containers to dict/list so the state is plain data (Counter -> dict, tuple ->
    list, OrderedDict -> dict); tensors are moved to CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(
        f"training state holds a {type(value).__name__}; only tensors, numbers, strings, lists "
        "and dicts can be saved safely"
    )


def encode_state(state: Mapping[str, Any]) -> bytes:
    """Serialise a training state of plain data with torch.save."""
    buffer = io.BytesIO()
    torch.save(_plain(state), buffer)
    return buffer.getvalue()


def read_state(path: Path) -> dict:
    """Load state.pt with ``weights_only=True``: a file holding any other pickle object (a class
    whose ``__reduce__`` would run code) is refused before anything in it is executed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training state at {path}; start without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it contains objects other than plain tensors and numbers "
            f"({_first_line(exc)[:120]}); it may be malicious, delete it and re-train"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"cannot read training state {path}: {type(exc).__name__}: "
            f"{_first_line(exc)[:120]}; delete it and re-train"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a lowres training state; delete it and re-train")
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# sidecar


def write_checkpoint(
    out_dir: Path,
    model: nn.Module,
    loss: nn.Module,
    sidecar: Mapping[str, Any],
    state: Mapping[str, Any] | None = None,
) -> Path:
    """Write weights (+ state) and then the sidecar naming the weights' sha256.

    Args:
        out_dir: checkpoint folder (created if needed).
        model: the FaceModel.
        loss: the MethodLoss (its tensors go into the same safetensors file).
        sidecar: JSON-able facts; ``weights_file`` and ``weights_sha256`` are filled in here.
        state: optional resume state (see :func:`read_state`).

    Returns:
        The path of model.safetensors.
    """
    out_dir = Path(out_dir)
    weights = encode_weights(model, loss)
    if state is not None:
        atomic_write_bytes(out_dir / STATE_FILE, encode_state(state))
    atomic_write_bytes(out_dir / WEIGHTS_FILE, weights)
    meta = dict(sidecar)
    meta["format"] = SIDECAR_FORMAT
    meta["weights_file"] = WEIGHTS_FILE
    meta["weights_sha256"] = sha256_bytes(weights)
    atomic_write_text(out_dir / SIDECAR_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out_dir / WEIGHTS_FILE


def checkpoint_dir(path_or_dir: str | os.PathLike) -> Path:
    """The checkpoint folder for a folder, a model.safetensors or a model.json path."""
    path = Path(path_or_dir)
    if path.is_dir():
        return path
    if path.is_file() and path.name in (WEIGHTS_FILE, SIDECAR_FILE, STATE_FILE):
        return path.parent
    if path.is_file():
        raise CheckpointError(
            f"{path} is not a lowres checkpoint; pass the folder that holds {SIDECAR_FILE} and "
            f"{WEIGHTS_FILE}"
        )
    raise CheckpointError(f"checkpoint {path} does not exist; check the path or train one first")


_SIDECAR_TYPES: dict[str, tuple[type, int, int]] = {
    "method": (str, 0, 0),
    "model": (str, 0, 0),
    "model_kwargs": (dict, 0, 0),
    "adapter": (dict, 0, 0),
    "embed_dim": (int, 1, 1 << 16),
    # The largest public training set (WebFace42M) has 2.1 M identities; a bound keeps an
    # edited file from asking for a head of terabytes.
    "num_classes": (int, 1, 10_000_000),
}
"""Type (and integer range) of each required sidecar field."""


def read_sidecar(path_or_dir: str | os.PathLike) -> dict:
    """Read and sanity-check model.json of a checkpoint folder."""
    folder = checkpoint_dir(path_or_dir)
    side_path = folder / SIDECAR_FILE
    if not side_path.is_file():
        raise CheckpointError(
            f"no {SIDECAR_FILE} in {folder}; the checkpoint is incomplete, re-train it"
        )
    try:
        sidecar = json.loads(side_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{side_path} is not valid JSON ({_first_line(exc)}); restore or re-train it"
        ) from None
    required = ("method", "model", "model_kwargs", "embed_dim", "num_classes", "adapter")
    missing = [key for key in required if key not in sidecar] if isinstance(sidecar, dict) else []
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT or missing:
        raise CheckpointError(
            f"{side_path} is not a {SIDECAR_FORMAT} sidecar"
            + (f" (missing {', '.join(missing)})" if missing else "")
            + "; re-train the model with this version of lowres"
        )
    for key, (kind, low, high) in _SIDECAR_TYPES.items():
        value = sidecar[key]
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if ok and kind is int:
            ok = low <= value <= high
        if not ok:
            want = f"an integer in {low}..{high:,}" if kind is int else f"a {kind.__name__}"
            raise CheckpointError(
                f"{side_path}: {key} must be {want}, got {value!r}; the file was edited, "
                "restore or re-train it"
            )
    return sidecar


def verify_weights(path_or_dir: str | os.PathLike) -> tuple[dict, Path]:
    """Read the sidecar and check that model.safetensors has the sha256 it names.

    Returns:
        (sidecar, weights path).
    """
    folder = checkpoint_dir(path_or_dir)
    sidecar = read_sidecar(folder)
    weights_path = folder / sidecar.get("weights_file", WEIGHTS_FILE)
    if not weights_path.is_file():
        raise CheckpointError(f"no weights {weights_path}; the checkpoint is incomplete, re-train")
    actual = sha256_file(weights_path)
    if actual != sidecar.get("weights_sha256"):
        raise CheckpointError(
            f"{weights_path.name} does not match {SIDECAR_FILE} in {folder} (sha256 "
            f"{actual[:12]} != {str(sidecar.get('weights_sha256'))[:12]}); the files come "
            "from different runs, re-train or restore both"
        )
    return sidecar, weights_path


def load_checkpoint(
    path_or_dir: str | os.PathLike,
    *,
    build: Callable[[dict], tuple[nn.Module, nn.Module, Any]] | None = None,
) -> LoadedModel:
    """Rebuild a trained model from its checkpoint folder, refusing anything inconsistent.

    Checks, in order: the sidecar parses; the sha256 of model.safetensors equals the sidecar's;
    the weight keys and shapes equal those of the model and loss the sidecar describes. Any
    failure is a one-line CheckpointError. Nothing is unpickled.

    Args:
        path_or_dir: checkpoint folder, or its model.json / model.safetensors.
        build: ``sidecar -> (model, loss, spec)``; defaults to lowres.models / lowres.methods.

    Returns:
        LoadedModel with ``model.eval()`` on CPU.
    """
    folder = checkpoint_dir(path_or_dir)
    sidecar, weights_path = verify_weights(folder)
    model_state, loss_state = split_weights(read_weights(weights_path))
    stored = sum(t.numel() for t in loss_state.values())
    if sidecar["num_classes"] * sidecar["embed_dim"] > max(stored, 1):
        # Every head holds a class-by-feature weight: a sidecar asking for more than the file
        # stores was edited, and building its head could take all memory before failing.
        raise CheckpointError(
            f"{folder / SIDECAR_FILE}: num_classes {sidecar['num_classes']:,} x embed_dim "
            f"{sidecar['embed_dim']} exceeds the {stored:,} loss weights stored; restore or "
            "re-train the checkpoint"
        )
    model, loss, spec = (build or build_from_sidecar)(sidecar)
    check_state_matches(model, model_state, "model")
    check_state_matches(loss, loss_state, "loss")
    model.load_state_dict(model_state, strict=True)
    loss.load_state_dict(loss_state, strict=True)
    model.eval()
    loss.eval()
    return LoadedModel(
        model=model, loss=loss, spec=spec, sidecar=sidecar, adapter=adapter_from(sidecar)
    )


def build_from_sidecar(sidecar: Mapping[str, Any]) -> tuple[nn.Module, nn.Module, Any]:
    """Create the (untrained) model, loss and MethodSpec a sidecar describes."""

    kwargs = dict(sidecar["model_kwargs"])
    if "input_size" in kwargs and kwargs["input_size"] is not None:
        kwargs["input_size"] = tuple(kwargs["input_size"])
    try:
        spec = parse_method(sidecar["method"])
        model = models.create(sidecar["model"], **kwargs)
        loss = build_loss(spec, int(sidecar["embed_dim"]), int(sidecar["num_classes"]))
    except (ConfigError, TypeError, ValueError) as exc:
        # TypeError/ValueError: model_kwargs the model's factory does not take (an edited file)
        raise CheckpointError(
            f"cannot rebuild the checkpoint's model: {_first_line(exc)}; restore or re-train it"
        ) from None
    return model, loss, spec


def adapter_from(sidecar: Mapping[str, Any]) -> Any:
    """The InputAdapter recorded in a sidecar."""

    fields = dict(sidecar["adapter"])
    if "size" in fields:
        fields["size"] = tuple(fields["size"])
    try:
        return InputAdapter(**fields)
    except TypeError as exc:
        raise CheckpointError(
            f"the sidecar's adapter {fields} is not valid ({_first_line(exc)}); re-train the model"
        ) from None
