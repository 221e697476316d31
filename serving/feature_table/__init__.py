"""The Parquet feature table of DESIGN.md: schema, builders, writer, reader, manifest, CURRENT.

On-disk layout under a root (a local directory or an object-storage URI such as s3://bucket/x):

    <root>/<model_version>/part-<digest>.parquet    feature rows of that model version
    <root>/<model_version>/_index.arrow             the same rows sorted by image_id, Arrow IPC
                                                    (what FeatureStore memory-maps)
    <root>/<model_version>/_MANIFEST.json           written LAST: the version is complete, and
                                                    these are its files (nothing else counts)
    <root>/CURRENT                                  JSON {"model_version", "history"}: the version
                                                    served; replaced atomically, rollback-able
    <root>/online/<model_version>/part-*.parquet    rows scored online by the service

Rules every writer here follows:
- A file appears under its final name only when it is whole: local files are written to
  `.tmp-*` names and renamed (rename is atomic on POSIX); on object storage one PUT is atomic.
- A reader takes a version as complete only through its manifest and reads only the files the
  manifest lists, so an interrupted run (parts without a manifest, or new parts beside an older
  manifest) is never mistaken for a finished one.
- Every Parquet file carries key-value metadata naming its model version and crop policy.
- Rows whose `error` is set have null feature columns ("known but failed").
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from personalize.features import AES_FEAT_DIM, FEATURE_NAMES, N_ATTRIBUTES, N_CONTENT

FEATURE_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("aes_score", pa.float32()),
    pa.field("aes_feat", pa.list_(pa.float32(), AES_FEAT_DIM)),
    pa.field("attributes", pa.list_(pa.float32(), N_ATTRIBUTES)),
    pa.field("content", pa.list_(pa.float32(), N_CONTENT)),
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("error", pa.string()),
])
FEATURE_COLUMNS = tuple(FEATURE_SCHEMA.names)

MANIFEST_NAME = "_MANIFEST.json"
INDEX_NAME = "_index.arrow"
CURRENT_NAME = "CURRENT"
ONLINE_DIR = "online"
PART_PREFIX = "part-"
TMP_MARK = ".tmp-"
FORMAT_VERSION = 1

# Parquet / IPC key-value metadata keys (bytes, as Arrow stores them)
META_MODEL_VERSION = b"pam.model_version"
META_CROP_POLICY = b"pam.crop_policy"
META_FORMAT = b"pam.feature_table"
META_MANIFEST_DIGEST = b"pam.manifest_digest"

_WIDTHS = {"aes_feat": AES_FEAT_DIM, "attributes": N_ATTRIBUTES, "content": N_CONTENT}


class IncompleteVersionError(FileNotFoundError):
    """The version has no manifest (never finished, or still running)."""


class NoCurrentVersionError(FileNotFoundError):
    """The root has no CURRENT pointer (no version was ever promoted)."""


# ---------------------------------------------------------------- filesystems and atomic writes

def resolve(root: str | os.PathLike, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path without scheme) for a local path or a URI such as s3://bucket/prefix.

    S3 options can ride on the URI (`?endpoint_override=127.0.0.1:9000&scheme=http`), or come
    from the usual AWS_* environment variables.
    """
    root = os.fspath(root)
    if filesystem is not None:
        return filesystem, root.rstrip("/") or "/"
    if "://" in root:
        fs, path = pafs.FileSystem.from_uri(root)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(root)


def is_local(fs: pafs.FileSystem) -> bool:
    while isinstance(fs, pafs.SubTreeFileSystem):
        fs = fs.base_fs
    return isinstance(fs, pafs.LocalFileSystem)


def join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts if p)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes | pa.Buffer) -> None:
    """Make `path` hold `data` whole, or leave it as it was (never a half file under that name)."""
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    if not is_local(fs):  # one PUT: the object appears whole when the upload completes
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    final = _local_path(fs, path)
    tmp = os.path.join(os.path.dirname(final), f"{TMP_MARK}{uuid.uuid4().hex}-{os.path.basename(final)}")
    try:
        with open(tmp, "wb") as out:
            out.write(memoryview(data))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, final)  # rename(2): atomic on POSIX
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _local_path(fs: pafs.FileSystem, path: str) -> str:
    prefix = ""
    while isinstance(fs, pafs.SubTreeFileSystem):
        prefix = join(fs.base_path, prefix) if prefix else fs.base_path
        fs = fs.base_fs
    return join(prefix, path.lstrip("/")) if prefix else path


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


# ---------------------------------------------------------------- building and checking tables

def feature_table(image_ids: Sequence[str] | pa.Array, features: Mapping[str, np.ndarray] | None,
                  model_version: str, errors: Sequence[str | None] | None = None) -> pa.Table:
    """A table in FEATURE_SCHEMA from ids, backend outputs and per-row errors (None = ok).

    `features` holds aes_score [n], aes_feat [n, 176], attributes [n, 10], content [n, 10] (any
    float dtype); it may be None when every row failed. Rows with an error get null features.
    """
    ids = pa.array(image_ids, type=pa.string()) if not isinstance(image_ids, pa.Array) else image_ids.cast(pa.string())
    n = len(ids)
    if ids.null_count or (len(ids) and pc.min(pc.utf8_length(ids)).as_py() == 0):
        raise ValueError("image_id must never be null or empty")
    if not model_version:
        raise ValueError("model_version must be a non-empty string")
    error_array = pa.array(list(errors) if errors is not None else [None] * n, type=pa.string())
    if len(error_array) != n:
        raise ValueError(f"{len(error_array)} errors for {n} image ids")
    failed = error_array.is_valid().to_numpy(zero_copy_only=False)
    if features is None:
        if not failed.all():
            raise ValueError("features are required for rows without an error")
        features = {name: np.zeros((n, _WIDTHS.get(name, 1)), np.float32) for name in FEATURE_NAMES}
    mask = failed if failed.any() else None
    columns = [ids]
    for name in FEATURE_NAMES:
        value = np.asarray(features[name], dtype=np.float32)
        if name == "aes_score":
            value = value.reshape(-1)
            if len(value) != n:
                raise ValueError(f"aes_score has {len(value)} rows for {n} image ids")
            columns.append(pa.array(value, type=pa.float32(), mask=mask))
            continue
        width = _WIDTHS[name]
        if value.ndim != 2 or value.shape != (n, width):
            raise ValueError(f"{name} must be [{n}, {width}], got {list(value.shape)}")
        flat = pa.array(np.ascontiguousarray(value).reshape(-1), type=pa.float32())
        columns.append(pa.FixedSizeListArray.from_arrays(flat, width, mask=None if mask is None else pa.array(mask)))
    columns.append(pa.array(np.full(n, model_version, dtype=object), type=pa.string()))
    columns.append(error_array)
    return pa.Table.from_arrays(columns, schema=FEATURE_SCHEMA)


def check_table(table: pa.Table) -> pa.Table:
    """Cast to FEATURE_SCHEMA (extra columns kept after it, e.g. a simulator's hidden taste)."""
    missing = [n for n in FEATURE_COLUMNS if n not in table.column_names]
    if missing:
        raise ValueError(f"not a feature table: missing columns {missing}")
    extra = [n for n in table.column_names if n not in FEATURE_COLUMNS]
    core = table.select(list(FEATURE_COLUMNS))
    try:
        core = core.cast(FEATURE_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise ValueError(f"not in the feature schema: {exc}") from exc
    if core.column("image_id").null_count or core.column("model_version").null_count:
        raise ValueError("image_id and model_version must never be null")
    for name in extra:
        core = core.append_column(table.schema.field(name), table.column(name))
    return core


def to_numpy(table: pa.Table) -> dict[str, np.ndarray | list]:
    """Columns as numpy: image_id (list), the four features (NaN rows where failed), error (list)."""
    table = check_table(table)
    out: dict[str, np.ndarray | list] = {"image_id": table.column("image_id").to_pylist()}
    for name in FEATURE_NAMES:
        column = table.column(name).combine_chunks()
        if name == "aes_score":
            out[name] = column.to_numpy(zero_copy_only=False).astype(np.float32)
            continue
        width = _WIDTHS[name]
        values = np.asarray(column.values.to_numpy(zero_copy_only=False), np.float32)
        values = values[column.offset * width:(column.offset + len(column)) * width].reshape(-1, width).copy()
        values[~column.is_valid().to_numpy(zero_copy_only=False)] = np.nan
        out[name] = values
    out["error"] = table.column("error").to_pylist()
    return out


# ---------------------------------------------------------------- parts, manifest, versions

@dataclass(frozen=True)
class PartInfo:
    name: str   # file name inside the version directory
    rows: int
    failed: int
    bytes: int

    def as_dict(self) -> dict:
        return {"name": self.name, "rows": self.rows, "failed": self.failed, "bytes": self.bytes}


def version_dir(root: str, model_version: str) -> str:
    check_version_name(model_version)
    return join(root, model_version)


def check_version_name(model_version: str) -> str:
    if (not model_version or "/" in model_version or "\\" in model_version
            or model_version in {".", "..", ONLINE_DIR} or model_version.startswith((".", "_"))
            or model_version == CURRENT_NAME):
        raise ValueError(f"{model_version!r} cannot name a model-version directory")
    return model_version


def parquet_bytes(table: pa.Table, crop_policy: str = "", compression: str = "zstd") -> pa.Buffer:
    """Serialise a feature table to Parquet bytes carrying model version and crop policy."""
    table = check_table(table)
    versions = table.column("model_version").unique().to_pylist()
    if len(versions) > 1:
        raise ValueError(f"one model version per file, got {versions}")
    meta = dict(table.schema.metadata or {})
    meta.update({META_FORMAT: str(FORMAT_VERSION).encode(),
                 META_MODEL_VERSION: (versions[0] if versions else "").encode(),
                 META_CROP_POLICY: crop_policy.encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(meta), sink, compression=compression,
                   use_dictionary=["image_id", "model_version", "error"])
    return sink.getvalue()


def part_name(image_ids: Iterable[str]) -> str:
    """Deterministic name from the rows' ids: a retried write of the same rows replaces the file."""
    digest = hashlib.sha256()
    for image_id in image_ids:
        digest.update(image_id.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return f"{PART_PREFIX}{digest.hexdigest()[:24]}.parquet"


def write_part(root: str, table: pa.Table, crop_policy: str = "", filesystem: pafs.FileSystem | None = None,
               name: str | None = None) -> PartInfo:
    """Write one Parquet part of a version (atomically); the version is taken from the rows."""
    fs, root_path = resolve(root, filesystem)
    table = check_table(table)
    if table.num_rows == 0:
        raise ValueError("refusing to write an empty part")
    (model_version,) = table.column("model_version").unique().to_pylist()
    name = name or part_name(table.column("image_id").to_pylist())
    data = parquet_bytes(table, crop_policy)
    write_atomic(fs, join(version_dir(root_path, model_version), name), data)
    return PartInfo(name, table.num_rows, len(table.column("error")) - table.column("error").null_count,
                    data.size)


def list_part_files(root: str, model_version: str, filesystem: pafs.FileSystem | None = None) -> list[str]:
    """Names of whole part files present in a version directory (listed or not in a manifest)."""
    fs, root_path = resolve(root, filesystem)
    directory = version_dir(root_path, model_version)
    if not exists(fs, directory):
        return []
    infos = fs.get_file_info(pafs.FileSelector(directory, recursive=False))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File
                  and i.base_name.startswith(PART_PREFIX) and i.base_name.endswith(".parquet"))


def remove_stale_temporaries(root: str, model_version: str, filesystem: pafs.FileSystem | None = None) -> int:
    """Delete `.tmp-*` leftovers of interrupted local writes (call only when no job is writing)."""
    fs, root_path = resolve(root, filesystem)
    directory = version_dir(root_path, model_version)
    if not exists(fs, directory):
        return 0
    stale = [i.path for i in fs.get_file_info(pafs.FileSelector(directory))
             if i.base_name.startswith(TMP_MARK)]
    for path in stale:
        fs.delete_file(path)
    return len(stale)


def write_manifest(root: str, model_version: str, parts: Sequence[PartInfo], crop_policy: str = "",
                   filesystem: pafs.FileSystem | None = None, extra: Mapping | None = None) -> dict:
    """Declare a version complete with exactly these parts (atomic replace of any earlier one)."""
    fs, root_path = resolve(root, filesystem)
    parts = sorted(parts, key=lambda p: p.name)
    manifest = {
        "format": FORMAT_VERSION,
        "model_version": check_version_name(model_version),
        "crop_policy": crop_policy,
        "rows": sum(p.rows for p in parts),
        "rows_failed": sum(p.failed for p in parts),
        "parts": [p.as_dict() for p in parts],
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(dict(extra) if extra else {}),
    }
    manifest["rows_ok"] = manifest["rows"] - manifest["rows_failed"]
    manifest["digest"] = manifest_digest(manifest)
    write_atomic(fs, join(version_dir(root_path, model_version), MANIFEST_NAME),
                 (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def manifest_digest(manifest: Mapping) -> str:
    """Identity of a manifest's contents (which files, how many rows): the index records it."""
    key = json.dumps([manifest["model_version"], manifest["parts"]], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def read_manifest(root: str, model_version: str, filesystem: pafs.FileSystem | None = None) -> dict:
    fs, root_path = resolve(root, filesystem)
    path = join(version_dir(root_path, model_version), MANIFEST_NAME)
    try:
        return json.loads(read_bytes(fs, path))
    except FileNotFoundError:
        raise IncompleteVersionError(f"{model_version} under {root} has no {MANIFEST_NAME}: "
                                     "not a complete run") from None


def is_complete(root: str, model_version: str, filesystem: pafs.FileSystem | None = None) -> bool:
    fs, root_path = resolve(root, filesystem)
    return exists(fs, join(version_dir(root_path, model_version), MANIFEST_NAME))


def list_versions(root: str, filesystem: pafs.FileSystem | None = None, complete_only: bool = True) -> list[str]:
    fs, root_path = resolve(root, filesystem)
    if not exists(fs, root_path):
        return []
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(root_path))
             if i.type == pafs.FileType.Directory and i.base_name not in (ONLINE_DIR,)
             and not i.base_name.startswith((".", "_"))]
    if complete_only:
        names = [n for n in names if is_complete(root_path, n, fs)]
    return sorted(names)


def read_parts(root: str, model_version: str, names: Sequence[str], columns: Sequence[str] | None = None,
               filesystem: pafs.FileSystem | None = None) -> pa.Table:
    fs, root_path = resolve(root, filesystem)
    directory = version_dir(root_path, model_version)
    tables = [pq.read_table(join(directory, n), columns=list(columns) if columns else None, filesystem=fs)
              for n in names]
    if not tables:
        schema = FEATURE_SCHEMA if not columns else pa.schema([FEATURE_SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="none").replace_schema_metadata(None)


def read_version(root: str, model_version: str | None = None, filesystem: pafs.FileSystem | None = None,
                 columns: Sequence[str] | None = None) -> pa.Table:
    """All rows of a COMPLETE version (CURRENT when model_version is None), as the manifest lists."""
    fs, root_path = resolve(root, filesystem)
    model_version = model_version or current_version(root_path, fs)
    manifest = read_manifest(root_path, model_version, fs)
    return read_parts(root_path, model_version, [p["name"] for p in manifest["parts"]], columns, fs)


def file_metadata(path: str, filesystem: pafs.FileSystem | None = None) -> dict[str, str]:
    """The pam.* key-value metadata of one Parquet part."""
    fs, file_path = resolve(path, filesystem)
    with fs.open_input_file(file_path) as f:
        meta = pq.read_schema(f).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"pam.")}


# ---------------------------------------------------------------- the sorted IPC index

def index_table(table: pa.Table, digest: str, model_version: str) -> pa.Table:
    """Rows ordered by (hash of id, id), one row per id (the first kept), ids as fixed-width keys.

    Columns: hash uint64 (sorted: np.searchsorted finds ids), key fixed_size_binary(K) (the UTF-8
    id, NUL-padded: numpy reads it as dtype S<K> with no copy), aes_score, aes_feat, attributes,
    content, error.
    """
    table = check_table(table).select(list(FEATURE_COLUMNS))
    keys = id_keys(table.column("image_id").combine_chunks())
    hashes = key_hashes(keys)
    order = np.lexsort((keys, hashes))
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = keys[order][1:] != keys[order][:-1]
    order = order[keep]
    width = keys.dtype.itemsize
    key_array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(order),
                                                     [None, pa.py_buffer(keys[order].tobytes())])
    taken = table.take(pa.array(order)).combine_chunks()
    columns = [pa.array(hashes[order], pa.uint64()), key_array]
    for name in ("aes_score", "aes_feat", "attributes", "content", "error"):
        column = taken.column(name)
        columns.append(column.chunk(0) if column.num_chunks else pa.array([], FEATURE_SCHEMA.field(name).type))
    names = ["hash", "key", "aes_score", "aes_feat", "attributes", "content", "error"]
    meta = {META_FORMAT: str(FORMAT_VERSION).encode(), META_MODEL_VERSION: model_version.encode(),
            META_MANIFEST_DIGEST: digest.encode()}
    return pa.Table.from_arrays(columns, names=names).replace_schema_metadata(meta)


SMALL_KEY_BATCH = 4096  # ids per lookup up to which id_keys copies bytes objects


def id_keys(ids: pa.Array | Sequence[str], width: int | None = None, strict: bool = True) -> np.ndarray:
    """UTF-8 ids as a numpy fixed-width bytes array (dtype S<width>), vectorised (no per-id loop).

    strict: an empty id or one holding a NUL character raises (an index must not hold them).
    Otherwise such ids, and ids longer than `width`, come back as b"": an impossible key (ids are
    never empty), so lookups report them missing.
    """
    ids = pa.array(ids, type=pa.string()) if not isinstance(ids, pa.Array) else ids
    if ids.null_count:
        raise ValueError("image ids must not be null")
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=f"S{width or 1}")
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32, count=n + 1, offset=ids.offset * 4).astype(np.int64)
    data = ids.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    data = data[offsets[0]:offsets[-1]]
    offsets -= offsets[0]
    lengths = np.diff(offsets)
    has_nul = np.zeros(n, dtype=bool)
    nul_at = np.flatnonzero(data == 0)
    if len(nul_at):
        has_nul[np.searchsorted(offsets, nul_at, side="right") - 1] = True
    bad = has_nul | (lengths == 0)
    if strict and bad.any():
        raise ValueError("image ids must be non-empty and hold no NUL character")
    width = max(1, int(lengths.max())) if width is None else width
    bad |= lengths > width
    if n <= SMALL_KEY_BATCH:
        # a request's ids: numpy's own bytes -> S<width> copy beats the byte scatter below
        out = np.array(ids.cast(pa.binary()).to_numpy(zero_copy_only=False), dtype=f"S{width}")
        out[bad] = b""
        return out
    out = np.zeros(n * width, dtype=np.uint8)
    step = max(1, (1 << 22) // width)  # bounded scratch memory for tables of millions of rows
    for start in range(0, n, step):
        stop = min(n, start + step)
        keep = ~bad[start:stop]
        rows = np.arange(start, stop)[keep]
        counts = lengths[start:stop][keep]
        begins = offsets[start:stop][keep]
        if not len(rows):
            continue
        # destination of every byte: row * width + position in its id
        source = np.repeat(begins, counts) + _ramp(counts)
        out[np.repeat(rows * width, counts) + _ramp(counts)] = data[source]
    return out.view(f"S{width}")


def _ramp(counts: np.ndarray) -> np.ndarray:
    """[0..c0-1, 0..c1-1, ...] for counts [c0, c1, ...], vectorised."""
    total = int(counts.sum())
    ends = np.cumsum(counts)
    return np.arange(total) - np.repeat(ends - counts, counts)


def key_hashes(keys: np.ndarray) -> np.ndarray:
    """64-bit hashes of fixed-width keys (S<w>), 8 bytes at a time: sorted, they make lookups an
    integer searchsorted. Equal keys hash equal; rare collisions are resolved by comparing keys."""
    n, width = len(keys), keys.dtype.itemsize
    words = -(-width // 8)
    padded = np.zeros((n, words * 8), np.uint8)
    padded[:, :width] = keys.view(np.uint8).reshape(n, width)
    h = np.full(n, 0xCBF29CE484222325, np.uint64)
    prime, shift = np.uint64(0x100000001B3), np.uint64(29)
    for word in padded.view(np.uint64).T:
        h ^= word
        h *= prime
        h ^= h >> shift
    return h


def write_index(root: str, model_version: str, filesystem: pafs.FileSystem | None = None,
                manifest: Mapping | None = None) -> str:
    """Build <version>/_index.arrow from the manifest's parts (atomic); returns its path."""
    fs, root_path = resolve(root, filesystem)
    manifest = manifest or read_manifest(root_path, model_version, fs)
    table = read_parts(root_path, model_version, [p["name"] for p in manifest["parts"]], filesystem=fs)
    index = index_table(table, manifest["digest"], model_version)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, index.schema) as writer:
        writer.write_table(index, max_chunksize=max(1, index.num_rows))
    path = join(version_dir(root_path, model_version), INDEX_NAME)
    write_atomic(fs, path, sink.getvalue())
    return path


# ---------------------------------------------------------------- CURRENT pointer

def current_version(root: str, filesystem: pafs.FileSystem | None = None) -> str:
    return _read_current(root, filesystem)["model_version"]


def _read_current(root: str, filesystem: pafs.FileSystem | None) -> dict:
    fs, root_path = resolve(root, filesystem)
    try:
        current = json.loads(read_bytes(fs, join(root_path, CURRENT_NAME)))
    except FileNotFoundError:
        raise NoCurrentVersionError(f"{root} has no {CURRENT_NAME}: no version was promoted yet "
                                    "(run `pam features` or set one)") from None
    return current


def set_current(root: str, model_version: str, filesystem: pafs.FileSystem | None = None) -> dict:
    """Point CURRENT at a complete version (one atomic replace); the previous one joins history."""
    fs, root_path = resolve(root, filesystem)
    read_manifest(root_path, model_version, fs)  # only a complete version can be served
    try:
        previous = _read_current(root_path, fs)
    except NoCurrentVersionError:
        previous = {"model_version": None, "history": []}
    if previous["model_version"] == model_version:
        return previous  # already served: nothing to switch
    history = list(previous.get("history", []))
    if previous["model_version"]:
        history.append(previous["model_version"])
    pointer = {"model_version": model_version, "history": history[-20:],
               "switched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_atomic(fs, join(root_path, CURRENT_NAME), (json.dumps(pointer) + "\n").encode())
    return pointer


def rollback(root: str, filesystem: pafs.FileSystem | None = None) -> dict:
    """Point CURRENT back at the version served before the present one."""
    fs, root_path = resolve(root, filesystem)
    pointer = _read_current(root_path, fs)
    history = list(pointer.get("history", []))
    if not history:
        raise ValueError(f"{root}: no earlier version to roll back to")
    target = history.pop()
    read_manifest(root_path, target, fs)
    new = {"model_version": target, "history": history,
           "switched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "rolled_back_from": pointer["model_version"]}
    write_atomic(fs, join(root_path, CURRENT_NAME), (json.dumps(new) + "\n").encode())
    return new


def online_dir(root: str, model_version: str) -> str:
    return join(root, ONLINE_DIR, check_version_name(model_version))
