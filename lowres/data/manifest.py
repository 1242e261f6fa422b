"""Dataset manifests: one TOML file per dataset, parsed with ``tomllib`` and validated.

The schema is documented in ``data_manifests/README.md``. In short::

    name = "lfw"                        # [A-Za-z0-9_-]+, the name `lowres data show` accepts
    kind = "pairs"                      # "identity-folders" | "pairs" | "builtin"
                                        # | "insightface-bin" | "recordio"
                                        # | "tinyface" | "scface" (published layouts)
    description = "..."
    root = "$LOWRES_DATA/lfw"           # folders only; relative to this file; $VAR / ${VAR}, ~
    file = "lfw.bin"                    # insightface-bin (required) / recordio (default
                                        # "train.rec"): the file inside root
    builtin = "orl"                     # kind = "builtin" only (default: name)
    image_size = [250, 250]             # (H, W), checked after decoding
    channels = 3                        # 1 grey, 3 RGB: images are converted on decode
    extensions = ["jpg"]                # optional, default jpg/jpeg/png/pgm/ppm/bmp
    min_images_per_identity = 2         # optional; default 2 (identity-folders), 1 (pairs)
    alignment = "..."
    licence = "..."
    credit = "..."
    citation = "..."
    [source]                            # where to get the files when `root` is missing
    url = "https://..."
    text = "download X and unpack so that <root>/<id>/<img> exists"
    [protocol]
    type = "identity-folds"             # identity-folds | lfw-pairs | sample-split | fixed-split
    n_folds = 4                         # identity-folds
    default = "view2"                   # lfw-pairs: which file is FaceDataset.pairs
    image_pattern = "{name}/{name}_{num:04d}.jpg"
    distances = [1, 2, 3]               # scface: surveillance distances read as probes
    cameras = [1, 2, 3, 4, 5]           # scface: surveillance cameras read as probes
    [protocol.files.view2]              # protocol files: path relative to this manifest
    path = "lfw/pairs.txt"
    sha256 = "ea42..."
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowres.data.protocols import verify_sha256
from lowres.errors import DataError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser under its PyPI name
    import tomli as tomllib

__all__ = [
    "KINDS",
    "LAYOUT_KINDS",
    "PROTOCOL_TYPES",
    "Manifest",
    "ProtocolFile",
    "expand_path",
    "load_manifest",
    "require_file",
    "require_root",
]

KINDS = (
    "identity-folders",
    "pairs",
    "builtin",
    "insightface-bin",
    "recordio",
    "tinyface",
    "scface",
)
LAYOUT_KINDS = ("tinyface", "scface")
"""Kinds read in a set's published folder layout (:mod:`lowres.data.layouts`): roles and
identities come from folders and file names, crops of any size are resized to ``image_size``."""
PROTOCOL_TYPES = ("identity-folds", "lfw-pairs", "sample-split", "fixed-split")
_TOP_KEYS = {
    "name",
    "kind",
    "description",
    "root",
    "file",
    "builtin",
    "image_size",
    "channels",
    "extensions",
    "min_images_per_identity",
    "alignment",
    "licence",
    "credit",
    "citation",
    "source",
    "protocol",
}
_PROTOCOL_KEYS = {"type", "n_folds", "default", "image_pattern", "files", "distances", "cameras"}
_SCFACE_DISTANCES = (1, 2, 3)
_SCFACE_CAMERAS = tuple(range(1, 8))
_ENV = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class ProtocolFile:
    """A protocol file listed by a manifest, checked against its sha256 before use."""

    key: str
    path: Path
    sha256: str

    def verify(self) -> Path:
        """Return ``path`` after checking its sha256 (DataError if missing or different)."""
        verify_sha256(self.path, self.sha256)
        return self.path


@dataclass(frozen=True)
class Manifest:
    """A validated dataset manifest (see the module docstring for each field)."""

    name: str
    kind: str
    path: Path | None
    description: str = ""
    root_text: str | None = None
    builtin: str | None = None
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    extensions: tuple[str, ...] | None = None
    min_images_per_identity: int = 2
    alignment: str = ""
    licence: str = ""
    credit: str = ""
    citation: str = ""
    source_url: str = ""
    source_text: str = ""
    protocol_type: str = "identity-folds"
    n_folds: int = 4
    protocol_default: str | None = None
    image_pattern: str = "{name}/{name}_{num:04d}.jpg"
    protocol_files: dict[str, ProtocolFile] = field(default_factory=dict)
    file: str | None = None
    distances: tuple[int, ...] = (1, 2, 3)
    cameras: tuple[int, ...] = (1, 2, 3, 4, 5)

    def where_to_get(self) -> str:
        """The manifest's download hint: source text and url, or a generic hint."""
        parts = [p for p in (self.source_text, self.source_url) if p]
        return "; ".join(parts) if parts else "see the manifest's [source] table"

    def meta(self) -> dict:
        """Facts copied into ``FaceDataset.meta``."""
        return {
            "description": self.description,
            "kind": self.kind,
            "manifest": str(self.path) if self.path else None,
            "alignment": self.alignment,
            "licence": self.licence,
            "credit": self.credit,
            "citation": self.citation,
            "source": self.source_url,
            "where_to_get": self.where_to_get(),
            "protocol": {
                "type": self.protocol_type,
                "n_folds": self.n_folds,
                "default": self.protocol_default,
                "files": {k: str(f.path) for k, f in self.protocol_files.items()},
            },
        }


def expand_path(text: str, base: Path | None, *, what: str) -> Path:
    """Expand ``$VAR``/``${VAR}`` and ``~`` in ``text``; resolve a relative result against ``base``.

    Raises:
        DataError: a referenced environment variable is unset (names it and what it is for).
    """

    def sub(m: re.Match) -> str:
        var = m.group(1) or m.group(2)
        value = os.environ.get(var)
        if value is None:
            raise DataError(
                f"{what} {text!r} uses environment variable {var}, which is not set; "
                f"export {var}=<folder> first"
            )
        return value

    path = Path(os.path.expanduser(_ENV.sub(sub, text)))
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def _get(table: dict, key: str, typ: type | tuple, where: str, default=None):
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise DataError(f"{where}: '{key}' must be {names}, got {value!r}")
    return value


def _check_pattern(pattern: str, where: str) -> None:
    """An ``image_pattern`` uses only the plain fields ``{name}`` and ``{num}`` (a format spec
    is fine, attributes, indexes and conversions are not) and formats a name and a number."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
        if any(f not in ("name", "num") for f in fields):
            raise ValueError(f"fields {fields}")
        pattern.format(name="x", num=1)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise DataError(
            f"{where}: image_pattern {pattern!r} must use only {{name}} and {{num}}, e.g. "
            f"'{{name}}/{{name}}_{{num:04d}}.jpg' ({exc})"
        ) from None


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate one manifest file.

    Checks structure only (keys, types, allowed values); files on disk are checked when the
    dataset is loaded (:func:`require_root`, :meth:`ProtocolFile.verify`).

    Raises:
        DataError: unreadable or non-UTF-8 TOML, unknown key or kind, wrong types (one line
            naming the key).
    """
    path = Path(path)
    where = f"manifest {path}"
    raw = _read_toml(path, where)
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise DataError(
            f"{where}: unknown key(s) {', '.join(unknown)}; see data_manifests/README.md"
        )
    name = _get(raw, "name", str, where)
    if name is None or not _NAME.match(name):
        raise DataError(f"{where}: 'name' must be set to letters, digits, '-' or '_', got {name!r}")
    kind = _get(raw, "kind", str, where)
    if kind not in KINDS:
        raise DataError(f"{where}: unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    root_text = _get(raw, "root", str, where)
    if kind != "builtin" and not root_text:
        raise DataError(f"{where}: kind {kind!r} needs 'root' (the image folder)")
    images = _image_settings(raw, kind, where)
    if kind in LAYOUT_KINDS and images["image_size"] is None:
        raise DataError(
            f"{where}: kind {kind!r} needs 'image_size' = [H, W]: every crop is resized to it"
        )
    source = _get(raw, "source", dict, where, {})
    bad_src = sorted(set(source) - {"url", "text"})
    if bad_src:
        raise DataError(f"{where}: unknown key(s) in [source]: {', '.join(bad_src)}")
    protocol = _protocol_settings(raw, kind, path.parent, where)
    return Manifest(
        name=name,
        kind=kind,
        path=path,
        description=_get(raw, "description", str, where, ""),
        root_text=root_text,
        builtin=_get(raw, "builtin", str, where, name if kind == "builtin" else None),
        **images,
        alignment=_get(raw, "alignment", str, where, ""),
        licence=_get(raw, "licence", str, where, ""),
        credit=_get(raw, "credit", str, where, ""),
        citation=_get(raw, "citation", str, where, ""),
        source_url=_get(source, "url", str, f"{where} [source]", ""),
        source_text=_get(source, "text", str, f"{where} [source]", ""),
        **protocol,
    )


def _read_toml(path: Path, where: str) -> dict:
    """The parsed manifest, or one DataError line: missing, not TOML, not UTF-8, unreadable."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise DataError(f"{where} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{where} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 by definition; tomllib decodes first
        raise DataError(
            f"{where} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read {where}: {exc.strerror}") from None


def _image_settings(raw: dict, kind: str, where: str) -> dict[str, Any]:
    """image_size, channels, extensions and min_images_per_identity, checked (Manifest fields)."""
    size = _get(raw, "image_size", list, where)
    if size is not None and (
        len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise DataError(f"{where}: 'image_size' must be [H, W] positive integers, got {size!r}")
    channels = _get(raw, "channels", int, where)
    if channels not in (None, 1, 3):
        raise DataError(f"{where}: 'channels' must be 1 or 3, got {channels!r}")
    exts = _get(raw, "extensions", list, where)
    if exts is not None and not all(isinstance(e, str) and e for e in exts):
        raise DataError(f"{where}: 'extensions' must be a list of strings, got {exts!r}")
    min_per = _get(raw, "min_images_per_identity", int, where, 1 if kind == "pairs" else 2)
    if min_per < 1:
        raise DataError(f"{where}: 'min_images_per_identity' must be >= 1, got {min_per}")
    return {
        "image_size": tuple(size) if size else None,
        "channels": channels,
        "extensions": tuple(exts) if exts else None,
        "min_images_per_identity": min_per,
    }


def _protocol_settings(raw: dict, kind: str, base: Path, where: str) -> dict[str, Any]:
    """[protocol] and the data ``file``, checked against the kind (Manifest fields)."""
    proto = _get(raw, "protocol", dict, where, {})
    bad_proto = sorted(set(proto) - _PROTOCOL_KEYS)
    if bad_proto:
        raise DataError(f"{where}: unknown key(s) in [protocol]: {', '.join(bad_proto)}")
    pair_kind = kind in ("pairs", "insightface-bin")
    ptype = _get(
        proto, "type", str, f"{where} [protocol]", "lfw-pairs" if pair_kind else "identity-folds"
    )
    if ptype not in PROTOCOL_TYPES:
        raise DataError(
            f"{where}: unknown protocol type {ptype!r}; valid: {', '.join(PROTOCOL_TYPES)}"
        )
    if pair_kind and ptype != "lfw-pairs":
        raise DataError(f"{where}: kind {kind!r} needs protocol type 'lfw-pairs', got {ptype!r}")
    want = {"identity-folders": "identity-folds", "recordio": "identity-folds"}
    want |= {"scface": "identity-folds", "tinyface": "fixed-split"}
    if kind in want and ptype != want[kind] and (kind != "tinyface" or "type" in proto):
        raise DataError(f"{where}: kind {kind!r} uses protocol type {want[kind]!r}, got {ptype!r}")
    if kind == "tinyface":
        ptype = "fixed-split"
    file = _get(raw, "file", str, where, "train.rec" if kind == "recordio" else None)
    if kind == "insightface-bin" and not file:
        raise DataError(f"{where}: kind 'insightface-bin' needs 'file' (e.g. \"lfw.bin\")")
    if file is not None and kind not in ("insightface-bin", "recordio"):
        raise DataError(f"{where}: 'file' is only used by kinds 'insightface-bin' and 'recordio'")
    n_folds = _get(proto, "n_folds", int, f"{where} [protocol]", 10 if pair_kind else 4)
    if n_folds < 1:
        raise DataError(f"{where}: protocol n_folds must be >= 1, got {n_folds}")
    files = _protocol_files(proto, base, where)
    default = _get(proto, "default", str, f"{where} [protocol]")
    pattern = _get(proto, "image_pattern", str, f"{where} [protocol]", Manifest.image_pattern)
    if kind == "pairs":
        if not files:
            raise DataError(f"{where}: kind 'pairs' needs at least one [protocol.files.<key>]")
        default = default or next(iter(files))
        if default not in files:
            raise DataError(
                f"{where}: protocol default {default!r} is not one of {', '.join(files)}"
            )
        _check_pattern(pattern, where)
    elif files:
        raise DataError(f"{where}: [protocol.files] is only used by kind 'pairs'")
    return {
        "protocol_type": ptype,
        "n_folds": n_folds,
        "protocol_default": default,
        "image_pattern": pattern,
        "protocol_files": files,
        "file": file,
        **_scface_settings(proto, kind, where),
    }


def _scface_settings(proto: dict, kind: str, where: str) -> dict[str, tuple[int, ...]]:
    """[protocol] distances and cameras (kind scface only): non-empty lists of known values."""
    out = {}
    for key, known in (("distances", _SCFACE_DISTANCES), ("cameras", _SCFACE_CAMERAS)):
        value = _get(proto, key, list, f"{where} [protocol]")
        if value is None:
            continue
        if kind != "scface":
            raise DataError(f"{where}: [protocol] {key} is only used by kind 'scface'")
        if not value or not all(v in known and type(v) is int for v in value):
            raise DataError(
                f"{where}: [protocol] {key} must be a non-empty list of {list(known)}, got "
                f"{value!r}"
            )
        out[key] = tuple(sorted(set(value)))
    return out


def _protocol_files(proto: dict, base: Path, where: str) -> dict[str, ProtocolFile]:
    """[protocol.files.KEY] tables: each exactly a path and a 64-hex sha256."""
    files: dict[str, ProtocolFile] = {}
    for key, spec in _get(proto, "files", dict, f"{where} [protocol]", {}).items():
        fw = f"{where} [protocol.files.{key}]"
        if not isinstance(spec, dict) or set(spec) != {"path", "sha256"}:
            raise DataError(f"{fw}: needs exactly 'path' and 'sha256'")
        p, digest = _get(spec, "path", str, fw), _get(spec, "sha256", str, fw)
        if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise DataError(f"{fw}: sha256 must be 64 hex digits, got {digest!r}")
        files[key] = ProtocolFile(key, expand_path(p, base, what=fw), digest.lower())
    return files


def require_file(manifest: Manifest) -> Path:
    """The manifest's data file (``root/file``; kinds insightface-bin and recordio) or its root
    folder when it names no file, or a DataError saying what is missing and where to get it."""
    root = require_root(manifest)
    if not manifest.file:
        return root
    path = root / manifest.file
    if not path.is_file():
        raise DataError(
            f"dataset {manifest.name!r}: {path} does not exist (file = {manifest.file!r} in "
            f"{manifest.path}); get the data: {manifest.where_to_get()}"
        )
    return path


def require_root(manifest: Manifest) -> Path:
    """The manifest's image folder, or a DataError saying what is missing and where to get it."""
    what = f"dataset {manifest.name!r}: root"
    try:
        root = expand_path(
            manifest.root_text or "", manifest.path.parent if manifest.path else None, what=what
        )
    except DataError as exc:
        raise DataError(f"{exc}; get the data: {manifest.where_to_get()}") from None
    if not root.is_dir():
        raise DataError(
            f"dataset {manifest.name!r}: image folder {root} does not exist "
            f"(root = {manifest.root_text!r} in {manifest.path}); get the data: "
            f"{manifest.where_to_get()}"
        )
    return root
