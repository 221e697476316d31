"""The feature rows: their schema, building and checking them, Parquet bytes, id keys and hashes.

Rows whose `error` is set have null feature columns ("known but failed"). Every Parquet file
carries key-value metadata naming its model version and crop policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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

PART_PREFIX = "part-"
FORMAT_VERSION = 2  # 2: hive-style model_version=... directories, committed from _staging/

# Parquet / IPC key-value metadata keys (bytes, as Arrow stores them)
META_MODEL_VERSION = b"pam.model_version"
META_CROP_POLICY = b"pam.crop_policy"
META_FORMAT = b"pam.feature_table"
META_MANIFEST_DIGEST = b"pam.manifest_digest"

_WIDTHS = {"aes_feat": AES_FEAT_DIM, "attributes": N_ATTRIBUTES, "content": N_CONTENT}


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


# ---------------------------------------------------------------- parts

@dataclass(frozen=True)
class PartInfo:
    name: str   # file name inside the version directory
    rows: int
    failed: int
    bytes: int

    def as_dict(self) -> dict:
        return {"name": self.name, "rows": self.rows, "failed": self.failed, "bytes": self.bytes}


def parquet_bytes(table: pa.Table, crop_policy: str = "", compression: str = "zstd") -> pa.Buffer:
    """Serialise a feature table to Parquet bytes carrying model version and crop policy.

    The model_version column is not stored: the file's directory (model_version=<v>/) holds it,
    as hive-style engines expect (Spark refuses a column that is both in the files and the path),
    and so does the file's metadata. `with_version` puts it back on reading.
    """
    table = check_table(table)
    versions = table.column("model_version").unique().to_pylist()
    if len(versions) > 1:
        raise ValueError(f"one model version per file, got {versions}")
    meta = dict(table.schema.metadata or {})
    meta.update({META_FORMAT: str(FORMAT_VERSION).encode(),
                 META_MODEL_VERSION: (versions[0] if versions else "").encode(),
                 META_CROP_POLICY: crop_policy.encode()})
    sink = pa.BufferOutputStream()
    stored = table.drop_columns(["model_version"]).replace_schema_metadata(meta)
    pq.write_table(stored, sink, compression=compression, use_dictionary=["image_id", "error"])
    return sink.getvalue()


def write_file(rows: pa.Table, path: str, crop_policy: str = "") -> str:
    """Feature rows as one standalone Parquet file (model_version column included: no directory
    names it), e.g. a simulator's property table."""
    rows = check_table(rows)
    meta = {**(rows.schema.metadata or {}), META_FORMAT: str(FORMAT_VERSION).encode(),
            META_CROP_POLICY: crop_policy.encode()}
    pq.write_table(rows.replace_schema_metadata(meta), path, compression="zstd")
    return str(path)


FILE_COLUMNS = tuple(c for c in FEATURE_COLUMNS if c != "model_version")


def with_version(table: pa.Table, model_version: str) -> pa.Table:
    """Rows read from a part file, with the model_version column its directory names."""
    if "model_version" in table.column_names:  # a file of the first layout
        return table
    column = pa.array(np.full(table.num_rows, model_version, dtype=object), pa.string())
    position = list(FEATURE_COLUMNS).index("model_version")
    return table.add_column(min(position, table.num_columns), FEATURE_SCHEMA.field("model_version"), column)


def part_name(image_ids: Iterable[str]) -> str:
    """Deterministic name from the rows' ids: a retried write of the same rows replaces the file."""
    digest = hashlib.sha256()
    for image_id in image_ids:
        digest.update(image_id.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return f"{PART_PREFIX}{digest.hexdigest()[:24]}.parquet"


# ---------------------------------------------------------------- the sorted IPC index

INDEX_COLUMNS = ("hash", "key", "aes_score", "aes_feat", "attributes", "content", "error")


def index_table(table: pa.Table, digest: str, model_version: str, width: int | None = None) -> pa.Table:
    """Rows ordered by (hash of id, id), one row per id (the first kept), ids as fixed-width keys.

    Columns: hash uint64 (sorted: lookups search it), key fixed_size_binary(width) (the UTF-8 id,
    NUL-padded: numpy reads it as dtype S<width> with no copy), aes_score, aes_feat, attributes,
    content, error. width: the key width (default: the longest id here).
    """
    table = check_table(table).select(list(FEATURE_COLUMNS))
    keys = id_keys(table.column("image_id").combine_chunks(), width=width)
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
    for name in INDEX_COLUMNS[2:]:
        column = taken.column(name)
        columns.append(column.chunk(0) if column.num_chunks else pa.array([], FEATURE_SCHEMA.field(name).type))
    return pa.Table.from_arrays(columns, names=list(INDEX_COLUMNS)).replace_schema_metadata(
        index_metadata(digest, model_version))


def index_metadata(digest: str, model_version: str) -> dict[bytes, bytes]:
    return {META_FORMAT: str(FORMAT_VERSION).encode(), META_MODEL_VERSION: model_version.encode(),
            META_MANIFEST_DIGEST: digest.encode()}


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
