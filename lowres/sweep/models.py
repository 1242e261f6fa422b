"""Which models a sweep scores and how each gets ready for one (fold, seed): model ids resolved
and checked before anything runs, training on demand through the model cache (several at once
in worker processes), checkpoints and external models loaded, and the raw-pixel reference."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowres import external
from lowres.checkpoint import load_checkpoint, read_sidecar
from lowres.data import synthetic
from lowres.data.registry import check_dataset, has_own_split
from lowres.embed import InputAdapter
from lowres.errors import CheckpointError, ConfigError, LowresError
from lowres.files import check_writable
from lowres.methods import parse_method
from lowres.processes import run_parallel
from lowres.results import PIXELS
from lowres.sweep.config import SweepConfig, model_cache_of
from lowres.train import (
    TrainConfig,
    cached_model,
    check_names,
    load_split,
    model_key,
    train_cached,
)

log = logging.getLogger("lowres.sweep")


@dataclass
class ModelEntry:
    """One model column of the sweep.

    Attributes:
        name: model id in the table.
        kind: ``"method"``, ``"checkpoint"``, ``"external"`` or ``"pixels"``.
        method: paper notation of the loss (``"pixels"`` for the reference; the format,
            ``"torchscript"`` or ``"onnx"``, for an external model).
        source: the method name, checkpoint folder or external-model entry given by the user.
        spec: parsed MethodSpec (None for pixels).
        train: TrainConfig overrides of a named variant (``SweepConfig.variants``), else empty.
    """

    name: str
    kind: str
    method: str
    source: str
    spec: Any = None
    train: dict = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (shard manifests)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "method": self.method,
            "source": self.source,
            "spec": None if self.spec is None else str(self.spec),
            "train": self.train,
        }

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> ModelEntry:
        """Inverse of :meth:`to_json`."""
        spec = item.get("spec")
        return cls(
            name=item["name"],
            kind=item["kind"],
            method=item["method"],
            source=item["source"],
            spec=None if spec is None else parse_method(spec),
            train=dict(item.get("train") or {}),
        )


@dataclass
class Prepared:
    """A model ready for inference at one (fold, seed)."""

    entry: ModelEntry
    module: Any
    adapter: Any
    model_hash: str
    folder: Path | None = None
    """The checkpoint folder of a trained or loaded model (its ``log.csv``), else None."""


def _looks_like_path(text: str) -> bool:
    return (
        "/" in text
        or os.sep in text
        or text.startswith(".")
        or Path(text).exists()
        or external.is_external(text)
    )


# Training settings a variant may not override: the sweep owns them (or they only choose how
# to run, not what is trained).
_VARIANT_RESERVED = ("method", "data", "fold", "seed", "preset", "split_seed", "train_split")


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=METHOD[;key=value...]`` (the CLI's ``--variant``) -> (NAME, {"method": ..., ...}).

    Values are JSON where they parse (``true``, ``4``, ``[0.0625, 1]``), else strings:
    ``"SM+aug=SM;augment_resolution=true"``.

    Raises:
        ConfigError: no ``=``, an empty name or method, or a setting without ``=``.
    """
    name, eq, rest = (p.strip() for p in str(text).partition("="))
    parts = [p.strip() for p in rest.split(";")]
    if not eq or not name or not parts[0]:
        raise ConfigError(
            f"variant {text!r} is not NAME=METHOD[;key=value...], e.g. "
            "'SM+aug=SM;augment_resolution=true'"
        )
    values: dict[str, Any] = {"method": parts[0]}
    for part in filter(None, parts[1:]):
        key, eq, value = (p.strip() for p in part.partition("="))
        if not eq or not key:
            raise ConfigError(f"variant {name!r}: {part!r} is not key=value")
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    return name, values


def _variant_entry(name: str, values: Any) -> ModelEntry:

    if not isinstance(values, dict) or "method" not in values:
        raise ConfigError(f"variant {name!r} needs a method, e.g. {{method = 'SM'}}")
    train = {k: v for k, v in values.items() if k != "method"}
    reserved = sorted(set(train) & set(_VARIANT_RESERVED))
    if reserved:
        raise ConfigError(
            f"variant {name!r} sets {reserved[0]!r}, which the sweep sets for every model; "
            "drop it from the variant"
        )
    spec = parse_method(str(values["method"]))
    # Unknown keys and bad values fail here, before anything is trained.
    TrainConfig.from_dict({**train, "method": str(spec)})
    if name.lower() == PIXELS or _looks_like_path(name):
        raise ConfigError(f"variant name {name!r} is reserved or looks like a path; rename it")
    try:
        shadowed = parse_method(name)
    except ConfigError:
        shadowed = None
    # A variant may carry its own method's name (a study's shared settings do that); another
    # method's name would label one loss's results as another's.
    if shadowed is not None and shadowed != spec:
        raise ConfigError(
            f"variant name {name!r} is the method {shadowed}, so the table would label one "
            f"model as another; rename it, e.g. '{name}+aug'"
        )
    return ModelEntry(
        name=name, kind="method", method=str(spec), source=name, spec=spec, train=train
    )


def resolve_models(
    models: Sequence[str], variants: dict[str, dict] | None = None
) -> list[ModelEntry]:
    """Method names / checkpoint paths / external models -> entries, validated before anything
    runs.

    An external model (TorchScript or ONNX file, ``[ts:|onnx:]PATH[(key=value,...)]``, see
    :mod:`lowres.external`) is loaded and dry-run on its adapter's input here, so a model that
    cannot take its adapter fails before the output folder is touched. Its model id is the
    file name (``arcface.pt``).

    Raises:
        ConfigError: empty list, unknown method, duplicate model id, ``pixels`` given, or an
            external model's adapter missing, invalid or not accepted by the model.
        CheckpointError: a checkpoint or model file that does not exist or cannot be loaded.
    """

    names = [str(m).strip() for m in models if str(m).strip()]
    if not names:
        raise ConfigError("no models given; use e.g. --models SM,SM+R(0.01) or checkpoint paths")
    variants = dict(variants or {})
    unused = sorted(set(variants) - set(names))
    if unused:
        raise ConfigError(f"variant {unused[0]!r} is not in the model list; add it to --models")
    entries: list[ModelEntry] = []
    for text in names:
        if text in variants:
            entries.append(_variant_entry(text, variants[text]))
            continue
        if text.lower() == PIXELS:
            raise ConfigError(
                "'pixels' is always scored as the reference; leave it out of --models"
            )
        if _looks_like_path(text):
            entries.append(_path_entry(text))
        else:
            spec = parse_method(text)
            entries.append(
                ModelEntry(name=str(spec), kind="method", method=str(spec), source=text, spec=spec)
            )
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.name in seen:
            raise ConfigError(
                f"model id {entry.name!r} given twice ({seen[entry.name]} and {entry.source}); "
                "list each model once"
            )
        seen[entry.name] = entry.source
    return entries


def _path_entry(text: str) -> ModelEntry:
    """The entry of an external model or a checkpoint path, loaded and checked now."""
    if external.is_external(text):
        ext = external.parse_external(text)
        external.load_spec(ext)
        return ModelEntry(name=ext.name, kind="external", method=ext.format, source=text)
    path = Path(text).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {text} does not exist; check the path or give a method name"
        )
    # The whole checkpoint is checked now (sha256, keys and shapes), not when its
    # cells come up: a damaged file must fail before the output folder is touched.
    sidecar = load_checkpoint(path).sidecar
    spec = parse_method(sidecar["method"])
    folder = path if path.is_dir() else path.parent
    return ModelEntry(
        name=folder.name, kind="checkpoint", method=str(spec), source=str(folder), spec=spec
    )


def base_of(spec: Any) -> Any | None:
    """The spec without its Ring-loss term (``SF+R(0.01)`` -> ``SF``), or None without ``+R``."""
    if spec is None or spec.ring_weight is None:
        return None
    return spec.without_ring()


class PixelReference(nn.Module):
    """Raw-pixel 'model': (B, C, H, W) normalised pixels -> (B, C*H*W) mean-centred."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_dim = 0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.float().flatten(1)
        return flat - flat.mean(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


SYNTH_VAL_IDENTITIES = 100


def train_config(entry: ModelEntry, config: SweepConfig, fold: int, seed: int):
    """The :class:`lowres.train.TrainConfig` of an on-demand model at (fold, seed): the
    embedded defaults, the sweep's data, preset, epochs, backbone and device, then the
    variant's overrides. Its ``hash()`` names the model in the cache and in every cell key."""

    kwargs: dict[str, Any] = {
        "method": entry.method,
        "data": config.data,
        "fold": fold,
        "seed": seed,
    }
    if config.train_data is not None:
        # One model per seed, trained on the whole training dataset, for every test fold.
        kwargs.update(data=str(config.train_data), fold=0, train_split="all")
    elif config.preset is not None:
        kwargs["preset"] = config.preset
    if config.train_data is None and config.data == "synth":
        # synth's thousands of training identities spare 100 (a tenth of a small preset's) for
        # the held-out curve of the training figure (never trained on, disjoint from the test
        # identities).
        name, _ = synthetic.parse_preset(config.preset)
        k = synthetic.PRESETS[name].train_identities
        kwargs["val_identities"] = min(SYNTH_VAL_IDENTITIES, k // 10) if k >= 20 else 0
    if config.epochs is not None:
        kwargs["epochs"] = int(config.epochs)
    if config.backbone is not None:
        kwargs["model"] = config.backbone
    kwargs["device"] = config.device
    kwargs.update(entry.train)
    return TrainConfig.from_dict(kwargs)


_UNIT_FIELDS = ("fold", "seed", "device", "num_threads", "loader_workers")
"""TrainConfig fields that vary by (fold, seed) or by machine, left out of a model's recorded
recipe (the seeds and folds are the sweep's own)."""


def model_details(entry: ModelEntry, config: SweepConfig) -> dict[str, Any]:
    """How a model of the sweep came to be, for ``provenance.json`` (``lowres report`` shows
    it): a trained method's training settings (its TrainConfig at the sweep's first fold and
    seed, less the fold, seed and machine fields), a checkpoint's sidecar summary, an external
    model's format and input adapter; nothing for the raw pixels. A file that cannot be read
    any more (a merge on another machine) gives ``{"unavailable": reason}``."""
    try:
        if entry.kind == "method":
            tc = train_config(entry, config, config.folds[0], config.seeds[0])
            recipe = {k: v for k, v in tc.to_dict().items() if k not in _UNIT_FIELDS}
            return {"train": recipe}
        if entry.kind == "external":
            ext = external.parse_external(entry.source)
            return {
                "format": ext.format,
                "adapter": json.loads(json.dumps(dataclasses.asdict(ext.adapter))),
                "adapter_source": ext.adapter_source,
            }
        if entry.kind == "checkpoint":
            side = read_sidecar(entry.source)
            keys = ("method", "model", "data", "epochs_completed", "config_hash", "adapter")
            return {"checkpoint": {k: side[k] for k in keys if k in side}}
    except (LowresError, OSError) as exc:
        return {"unavailable": str(exc)}
    return {}


def trained_checkpoint(
    entry: ModelEntry, config: SweepConfig, fold: int, seed: int, progress: bool | str = True
) -> Path:
    """Checkpoint of a method at (fold, seed): from the model cache, or trained now and cached
    (see :func:`lowres.train.train_cached`; ``progress`` as :func:`lowres.train.train`'s)."""
    cache = model_cache_of(config)
    return train_cached(train_config(entry, config, fold, seed), cache, progress=progress)


def _is_cached(entry: ModelEntry, config: SweepConfig, fold: int, seed: int) -> bool:
    """True when the model's cache entry is finished and intact (a damaged one is retrained)."""
    cache = model_cache_of(config)
    tc = train_config(entry, config, fold, seed)
    try:
        return cached_model(cache / model_key(tc), tc.hash()) is not None
    except CheckpointError:
        return False


def _pretrain_one(entry: ModelEntry, config: SweepConfig, fold: int, seed: int) -> str:
    # Processes in parallel share the terminal: epoch lines naming their model, no bars.
    return str(trained_checkpoint(entry, config, fold, seed, progress="lines"))


def training_workers(config: SweepConfig) -> int:
    """Parallel training processes for ``config`` (see ``SweepConfig.jobs``)."""
    if config.jobs is not None:
        if int(config.jobs) < 1:
            raise ConfigError(f"jobs must be >= 1, got {config.jobs}")
        return int(config.jobs)
    if str(config.device).startswith("cuda"):
        return 1
    if config.device == "auto":
        if torch.cuda.is_available():
            return 1
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def pretrain_models(
    entries: Sequence[ModelEntry],
    config: SweepConfig,
    folds: Sequence[int],
    seeds: Sequence[int],
    workers: int,
) -> int:
    """Train every missing on-demand model, ``workers`` at a time; returns how many trained.

    Each model is trained exactly as :func:`trained_checkpoint` trains it in-process (seeded
    per batch, one thread on CPU), so the weights are bit-identical; only the wall time changes.
    """
    todo, hashes = [], set()
    for f in folds:
        for s in seeds:
            for e in entries:
                if e.kind != "method" or _is_cached(e, config, f, s):
                    continue
                # With train_data every test fold shares one model: train it once, not in
                # two processes racing for the same cache folder.
                digest = train_config(e, config, f, s).hash()  # same config, same data
                if digest not in hashes:
                    hashes.add(digest)
                    todo.append((e, f, s))
    if workers <= 1 or len(todo) <= 1:
        return 0
    log.info("training %d models, %d in parallel", len(todo), workers)
    t0 = time.perf_counter()
    _warm_rendered_data([train_config(e, config, f, s) for e, f, s in todo])
    run_parallel(_pretrain_one, [(e, config, f, s) for e, f, s in todo], workers)
    log.info("trained %d models in %.1f s", len(todo), time.perf_counter() - t0)
    return len(todo)


def pretrain_planned(entries, config: SweepConfig, plan, workers: int) -> None:
    """:func:`pretrain_models` for the planned units only, as few calls as keep it exact.

    Units are grouped by their model set; a group whose (fold, seed) pairs form a full
    folds x seeds grid is one call (the whole unsharded sweep is), any other one call per seed.
    """
    groups: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    for (fold, seed), names in plan.items():
        mine = tuple(e.name for e in entries if e.name in names)
        if mine:
            groups.setdefault(mine, []).append((fold, seed))
    for mine, pairs in groups.items():
        subset = [e for e in entries if e.name in mine]
        group_folds = sorted({f for f, _ in pairs})
        group_seeds = sorted({s for _, s in pairs})
        if len(pairs) == len(group_folds) * len(group_seeds):
            pretrain_models(subset, config, group_folds, group_seeds, workers)
            continue
        for seed in group_seeds:
            seed_folds = [f for f, s in pairs if s == seed]
            pretrain_models(subset, config, seed_folds, [seed], workers)


def _warm_rendered_data(configs: Sequence[Any]) -> None:
    """Render each distinct synth training split once here, into the disk cache, before the
    training processes start: otherwise every process renders the same 16,000 faces on one
    thread (about a minute each, most of the first sweep's non-training time). Splits too big
    for the cache (the gpu preset) are left to the processes."""
    seen = set()
    for cfg in configs:
        key = (str(cfg.data), cfg.fold, cfg.split_seed, cfg.preset, cfg.train_split)
        if (
            key in seen
            or not has_own_split(cfg.data)
            or not synthetic.is_cached_size("train", cfg.preset)
        ):
            continue
        seen.add(key)
        load_split(cfg)


def prepare_models(
    entries: Sequence[ModelEntry], config: SweepConfig, fold: int, seed: int
) -> list[Prepared]:
    """Train-or-load every model for (fold, seed), then add the raw-pixel reference."""
    prepared: list[Prepared] = []
    for entry in entries:
        if entry.kind == "external":
            ext = external.parse_external(entry.source)
            module = external.load_spec(ext)
            prepared.append(Prepared(entry, module, ext.adapter, external.model_hash(ext)))
            continue
        if entry.kind == "method":
            path = trained_checkpoint(entry, config, fold, seed)
            # The cache folder is named by the model key: no second load of the training split.
            cache = model_cache_of(config)
            model_hash = path.relative_to(cache).parts[0]
        else:
            path = Path(entry.source)
            model_hash = ""
        loaded = load_checkpoint(path)
        if entry.kind == "checkpoint":
            model_hash = str(loaded.sidecar.get("weights_sha256", ""))[:16]
        folder = path if path.is_dir() else path.parent
        prepared.append(Prepared(entry, loaded.model, loaded.adapter, model_hash, folder))
    first = prepared[0].adapter
    adapter = InputAdapter(channels="grey", size=tuple(first.size))
    pixel_entry = ModelEntry(name=PIXELS, kind="pixels", method=PIXELS, source=PIXELS)
    pixel_hash = f"pixels-grey-{first.size[0]}x{first.size[1]}"
    prepared.append(Prepared(pixel_entry, PixelReference().eval(), adapter, pixel_hash))
    return prepared


def check_training_settings(
    entries: Sequence[ModelEntry], config: SweepConfig, fold: int, seed: int
) -> None:
    """Everything the on-demand models need that can be checked without training them: the
    backbone and method names, every training setting, and a writable model cache (a preset
    for data without presets fails when the test splits load, also before the folder exists).
    Training starts after the output folder exists, so a bad setting found there would leave a
    half-made sweep behind. Fold and seed change none of these: one (fold, seed) checks all."""
    methods = [e for e in entries if e.kind == "method"]
    for entry in methods:
        check_names(train_config(entry, config, fold, seed))
    if methods:
        cache = model_cache_of(config)
        check_writable(cache, "--model-cache")


def check_training_data(config: SweepConfig) -> None:
    """``train_data`` (the set on-demand models train on, when not the test set) resolves and
    has its files; loading it waits until the first model trains. Variants cannot set data."""
    if config.train_data is not None and str(config.train_data) != str(config.data):
        check_dataset(config.train_data)
