"""The feature table: one root, its model versions, and everything that writes or reads its files.

    table = FeatureTable("features/")              # or "s3://bucket/features", or (path, filesystem)
    version = table.version("lite0-2025-01")
    with version.lock():                           # one writing job per version
        version.write_part(rows)                   # into _staging/: no engine sees it yet
        version.finalize()                         # dedupe, compact, commit, index, manifest
    table.set_current("lite0-2025-01")
    table.read()                                   # the served version's rows
    table.store()                                  # the memory-mapped lookups of the service

On-disk layout (hive-style, so pyarrow.dataset, pandas, DuckDB, polars and Spark read the root as
one dataset with a `model_version` column, or one version's directory on its own):

    <root>/model_version=<v>/part-<digest>.parquet  the committed rows of version v
    <root>/model_version=<v>/_MANIFEST.json         written LAST: v is complete, with these parts
    <root>/model_version=<v>/_index.arrow           the rows sorted by id hash (the service's index)
    <root>/_CURRENT.json                            {"model_version", "history"}: the version served
    <root>/_staging/model_version=<v>/              parts of a run not yet committed, the lock
                                                    (_LOCK.json) and a commit in progress (_COMMIT.json)
    <root>/_online/model_version=<v>/part-*.parquet rows scored online by the service

Names that start with an underscore are skipped by the engines, so what a plain engine reads is
only ever committed rows. Rules every write follows: a file appears under its final name only when
whole (a temporary name and a rename locally, one PUT on object storage); a version is complete
only through its manifest, and the project's own reader reads only the parts it lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from serving.feature_table import files
from serving.feature_table.files import (
    TMP_MARK,
    exists,
    is_local,
    join,
    local_path,
    read_bytes,
    write_atomic,
)
from serving.feature_table.index import DEFAULT_MEMORY_BYTES, build_index, find_duplicates
from serving.feature_table.lease import DEFAULT_LEASE_S, Lease
from serving.feature_table.schema import (
    FEATURE_COLUMNS,
    FEATURE_SCHEMA,
    FORMAT_VERSION,
    META_MANIFEST_DIGEST,
    PART_PREFIX,
    PartInfo,
    check_table,
    feature_table,
    parquet_bytes,
    part_name,
    with_version,
)

VERSION_KEY = "model_version"
MANIFEST_NAME = "_MANIFEST.json"
INDEX_NAME = "_index.arrow"
CURRENT_NAME = "_CURRENT.json"
STAGING_DIR = "_staging"
ONLINE_DIR = "_online"
LOCK_NAME = "_LOCK.json"
COMMIT_NAME = "_COMMIT.json"
PART_SUFFIX = ".parquet"
DEFAULT_ROWS_PER_FILE = 16384  # ~13 MB of Parquet: large files, bounded rewrite cost


class IncompleteVersionError(FileNotFoundError):
    """The version has no manifest (never finished, or still running)."""


class NoCurrentVersionError(FileNotFoundError):
    """The root has no current-version pointer (no version was ever promoted)."""


def check_version_name(model_version: str) -> str:
    if (not model_version or any(c in model_version for c in "/\\=%\0") or model_version in {".", ".."}
            or model_version.startswith((".", "_"))):
        raise ValueError(f"{model_version!r} cannot name a model version (no '/', '=', '%', leading '.' or '_')")
    return model_version


def version_dir_name(model_version: str) -> str:
    return f"{VERSION_KEY}={check_version_name(model_version)}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FeatureTable:
    """A feature table root (a local directory or an object-storage URI) and its versions."""

    def __init__(self, root: str | os.PathLike, filesystem: pafs.FileSystem | None = None, migrate: bool = True):
        self.uri = os.fspath(root)
        self.fs, self.root = files.resolve(root, filesystem)
        if migrate:
            migrate_layout(self)

    def __repr__(self) -> str:
        return f"FeatureTable({self.uri!r})"

    @property
    def is_local(self) -> bool:
        return is_local(self.fs)

    def version(self, model_version: str) -> Version:
        return Version(self, model_version)

    def versions(self, complete_only: bool = True) -> list[str]:
        names = [d.split("=", 1)[1] for d in files.list_dirs(self.fs, self.root) if d.startswith(f"{VERSION_KEY}=")]
        if complete_only:
            names = [n for n in names if self.version(n).is_complete()]
        return sorted(names)

    # ------------------------------------------------------------------ the served version
    def _pointer(self) -> dict:
        try:
            return json.loads(read_bytes(self.fs, join(self.root, CURRENT_NAME)))
        except FileNotFoundError:
            raise NoCurrentVersionError(f"{self.uri} has no {CURRENT_NAME}: no version was promoted yet "
                                        "(run `pam features` or set one)") from None

    @property
    def current_name(self) -> str:
        return self._pointer()["model_version"]

    @property
    def current(self) -> Version:
        return self.version(self.current_name)

    def set_current(self, model_version: str) -> dict:
        """Serve a complete version (one atomic replace of the pointer); the previous joins history."""
        self.version(model_version).manifest()  # only a complete version can be served
        try:
            previous = self._pointer()
        except NoCurrentVersionError:
            previous = {"model_version": None, "history": []}
        if previous["model_version"] == model_version:
            return previous
        history = list(previous.get("history", []))
        if previous["model_version"]:
            history.append(previous["model_version"])
        pointer = {"model_version": model_version, "history": history[-20:], "switched_at": _now()}
        write_atomic(self.fs, join(self.root, CURRENT_NAME), (json.dumps(pointer) + "\n").encode())
        return pointer

    def rollback(self) -> dict:
        """Serve the version served before the present one again."""
        pointer = self._pointer()
        history = list(pointer.get("history", []))
        if not history:
            raise ValueError(f"{self.uri}: no earlier version to roll back to")
        target = history.pop()
        self.version(target).manifest()
        new = {"model_version": target, "history": history, "switched_at": _now(),
               "rolled_back_from": pointer["model_version"]}
        write_atomic(self.fs, join(self.root, CURRENT_NAME), (json.dumps(new) + "\n").encode())
        return new

    # ------------------------------------------------------------------ reading and writing whole versions
    def read(self, model_version: str | None = None, columns: Sequence[str] | None = None) -> pa.Table:
        """All rows of a complete version (the current one when None)."""
        return self.version(model_version or self.current_name).read(columns)

    def store(self, model_version: str | None = None):
        """The service's lookups over a complete version (None: follow the current one)."""
        from serving.feature_table.store import FeatureStore

        return FeatureStore(self, model_version)

    def write_version(self, rows: pa.Table | Iterable[pa.Table], crop_policy: str = "", promote: bool = True,
                      extra: Mapping | None = None, rows_per_file: int = DEFAULT_ROWS_PER_FILE,
                      memory_bytes: int = DEFAULT_MEMORY_BYTES) -> dict:
        """Write rows already in memory (one model version) as a complete version; returns its manifest."""
        tables = [rows] if isinstance(rows, pa.Table) else list(rows)
        versions = set()
        for t in tables:
            versions.update(check_table(t).column("model_version").unique().to_pylist())
        if len(versions) != 1:
            raise ValueError(f"write_version takes rows of one model version, got {sorted(versions)}")
        version = self.version(versions.pop())
        with version.lock():
            for t in tables:
                for begin in range(0, t.num_rows, rows_per_file):
                    version.write_part(t.slice(begin, rows_per_file), crop_policy)
            manifest = version.finalize(crop_policy, rows_per_file, extra, memory_bytes)
        if promote:
            self.set_current(version.name)
        return manifest


class Version:
    """One model version of a table: its committed parts, staged parts, online rows, index, lock."""

    def __init__(self, table: FeatureTable, model_version: str):
        self.table = table
        self.name = check_version_name(model_version)
        self.fs = table.fs
        self.path = join(table.root, version_dir_name(model_version))
        self.staging = join(table.root, STAGING_DIR, version_dir_name(model_version))
        self.online = join(table.root, ONLINE_DIR, version_dir_name(model_version))

    def __repr__(self) -> str:
        return f"Version({self.table.uri!r}, {self.name!r})"

    # ------------------------------------------------------------------ state
    def is_complete(self) -> bool:
        return exists(self.fs, join(self.path, MANIFEST_NAME))

    def sidecar_path(self, name: str) -> str:
        """The local path of a file other parts keep with this version (a taste prior, say); its name
        starts with an underscore, so engines reading the table skip it."""
        if not name.startswith("_"):
            raise ValueError(f"{name!r}: a version's side files start with '_' (engines would read it)")
        if not self.table.is_local:
            raise ValueError(f"{self.table.uri}: side files are kept only on local tables")
        return local_path(self.fs, join(self.path, name))

    def manifest(self) -> dict:
        try:
            return json.loads(read_bytes(self.fs, join(self.path, MANIFEST_NAME)))
        except FileNotFoundError:
            raise IncompleteVersionError(f"{self.name} under {self.table.uri} has no {MANIFEST_NAME}: "
                                         "not a complete run") from None

    def parts(self) -> list[str]:
        """Part files committed to the version's directory."""
        return files.list_files(self.fs, self.path, PART_PREFIX, PART_SUFFIX)

    def staged_parts(self) -> list[str]:
        """Part files written by a run and not committed yet."""
        return files.list_files(self.fs, self.staging, PART_PREFIX, PART_SUFFIX)

    def lock(self, lease_s: float = DEFAULT_LEASE_S, wait_s: float = 0.0) -> Lease:
        """The version's write lock, a lease (see serving.feature_table.lease); use as `with`."""
        return Lease(self.fs, join(self.staging, LOCK_NAME), f"version {self.name} of {self.table.uri}",
                     lease_s=lease_s, wait_s=wait_s)

    # ------------------------------------------------------------------ reading
    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The rows of the complete version, exactly the parts its manifest lists."""
        return self._read([join(self.path, p["name"]) for p in self.manifest()["parts"]], columns)

    def read_written(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Every row written so far, committed or staged (duplicates included)."""
        paths = [join(self.path, n) for n in self.parts()] + [join(self.staging, n) for n in self.staged_parts()]
        return self._read(paths, columns)

    def _read(self, paths: Sequence[str], columns: Sequence[str] | None) -> pa.Table:
        stored = [c for c in columns if c != "model_version"] if columns else None
        tables = []
        for path in paths:
            table = pq.read_table(path, columns=stored, filesystem=self.fs, partitioning=None)
            if not columns or "model_version" in columns:
                table = with_version(table, self.name)
            tables.append(table.select(list(columns)) if columns else table)
        if not tables:
            schema = FEATURE_SCHEMA if not columns else pa.schema([FEATURE_SCHEMA.field(c) for c in columns])
            return schema.empty_table()
        return pa.concat_tables(tables, promote_options="none").replace_schema_metadata(None)

    def written_ids(self) -> tuple[pa.Table, list[str]]:
        """(image_id, part) of every row written (committed or staged); unreadable parts removed.

        Parts are written whole, so an unreadable one can only come from outside (a damaged disk,
        a hand copy): its rows are lost anyway, and deleting it lets the job redo them.
        """
        tables, removed = [], []
        for directory, names in ((self.path, self.parts()), (self.staging, self.staged_parts())):
            for name in names:
                try:
                    ids = pq.read_table(join(directory, name), columns=["image_id"], filesystem=self.fs,
                                        partitioning=None).column(0)
                except FileNotFoundError:
                    continue
                except (pa.ArrowInvalid, OSError):
                    self.fs.delete_file(join(directory, name))
                    removed.append(name)
                    continue
                tables.append(pa.table({"image_id": ids.cast(pa.string()),
                                        "part": pa.array(np.full(len(ids), name, dtype=object), pa.string())}))
        if not tables:
            return pa.table({"image_id": pa.array([], pa.string()), "part": pa.array([], pa.string())}), removed
        return pa.concat_tables(tables), removed

    # ------------------------------------------------------------------ writing (hold the lock)
    def write_part(self, rows: pa.Table, crop_policy: str = "", name: str | None = None) -> PartInfo:
        """Stage one Parquet part of rows of this version (whole or absent, named by its ids)."""
        rows = check_table(rows)
        if rows.num_rows == 0:
            raise ValueError("refusing to write an empty part")
        if rows.column("model_version").unique().to_pylist() != [self.name]:
            raise ValueError(f"rows of {rows.column('model_version').unique().to_pylist()} cannot join {self.name}")
        name = name or part_name(rows.column("image_id").to_pylist())
        data = parquet_bytes(rows, crop_policy)
        write_atomic(self.fs, join(self.staging, name), data)
        return PartInfo(name, rows.num_rows, rows.num_rows - rows.column("error").null_count, data.size)

    def writer(self, crop_policy: str = "", rows_per_file: int = DEFAULT_ROWS_PER_FILE,
               flush_s: float = 60.0) -> PartWriter:
        return PartWriter(self, crop_policy, rows_per_file, flush_s)

    def remove_stale_temporaries(self) -> int:
        """Delete `.tmp-*` leftovers of interrupted local writes (only when no job is writing)."""
        stale = [join(d, n) for d in (self.path, self.staging) for n in files.list_files(self.fs, d, TMP_MARK)]
        for path in stale:
            self.fs.delete_file(path)
        return len(stale)

    def finalize(self, crop_policy: str = "", rows_per_file: int = DEFAULT_ROWS_PER_FILE, extra: Mapping | None = None,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES, spill_dir: str | None = None) -> dict:
        """Commit the staged parts and declare the version complete; returns the manifest.

        Drops duplicate rows (a node lost mid-run can make Ray re-deliver a block; the first copy
        wins, committed parts before staged ones, larger before smaller), merges small parts,
        moves the staged parts into the version's directory, builds the index, and writes the
        manifest last. Memory stays within `memory_bytes` whatever the table's size (rows are
        spilled to `spill_dir`, a local directory, by hash ranges). Idempotent: a crash at any
        point is finished by the next call.
        """
        self._apply_commit()
        committed, staged = self.parts(), self.staged_parts()
        previous = self.manifest() if self.is_complete() else None
        if not staged and previous and {p["name"] for p in previous["parts"]} == set(committed) \
                and self._index_matches(previous["digest"]):
            return previous  # a re-run that found nothing new: the version stands as it was
        sources = [(self.path, n) for n in committed] + [(self.staging, n) for n in staged]
        paths = [join(d, n) for d, n in sources]
        sizes = files_sizes(self.fs, paths)
        order = sorted(range(len(paths)), key=lambda i: (sources[i][0] != self.path, -sizes[i], paths[i]))
        drop, width = find_duplicates(self.fs, [paths[i] for i in order], memory_bytes, spill_dir)
        drop = {order[p]: rows for p, rows in drop.items()}
        rows = _part_rows(self.fs, paths)
        small = {i for i in range(len(paths)) if rows[i] < rows_per_file // 2}
        rewrite = set(drop) | (small if len(small) > 1 else set())
        new_parts = self._rewrite([paths[i] for i in sorted(rewrite)], [drop.get(i) for i in sorted(rewrite)],
                                  crop_policy, rows_per_file) if rewrite else []
        new_names = {p.name for p in new_parts}
        moves = sorted({n for i, (d, n) in enumerate(sources) if d == self.staging and i not in rewrite} | new_names)
        deletes = [paths[i] for i in sorted(rewrite)
                   if not (sources[i][0] == self.staging and sources[i][1] in new_names)]
        deletes = [p for p in deletes if not (p.startswith(self.path + "/") and p.rsplit("/", 1)[1] in new_names)]
        plan = {"moves": moves, "deletes": deletes}
        write_atomic(self.fs, join(self.staging, COMMIT_NAME), json.dumps(plan).encode())
        self._apply_commit()
        parts = [self._part_info(n) for n in self.parts()]
        digest = manifest_digest(self.name, parts)
        self._write_index(digest, width, memory_bytes, spill_dir)
        manifest = {
            "format": FORMAT_VERSION, "model_version": self.name, "crop_policy": crop_policy,
            "rows": sum(p.rows for p in parts), "rows_failed": sum(p.failed for p in parts),
            "parts": [p.as_dict() for p in sorted(parts, key=lambda p: p.name)],
            "written_at": _now(), **(dict(extra) if extra else {}), "digest": digest,
        }
        manifest["rows_ok"] = manifest["rows"] - manifest["rows_failed"]
        write_atomic(self.fs, join(self.path, MANIFEST_NAME), (json.dumps(manifest, indent=1) + "\n").encode())
        return manifest

    def _rewrite(self, paths: Sequence[str], drops: Sequence[np.ndarray | None], crop_policy: str,
                 rows_per_file: int) -> list[PartInfo]:
        """Stream the rows of `paths` (less the dropped row numbers) into new staged parts."""
        written, buffer, buffered = [], [], 0
        for path, drop in zip(paths, drops, strict=True):
            row = 0
            with self.fs.open_input_file(path) as f:
                for batch in pq.ParquetFile(f).iter_batches(8192):  # extra columns kept
                    table = with_version(pa.Table.from_batches([batch]), self.name)
                    if drop is not None and len(drop):
                        numbers = np.arange(row, row + batch.num_rows)
                        table = table.filter(pa.array(~np.isin(numbers, drop)))
                    row += batch.num_rows
                    buffer.append(table)
                    buffered += table.num_rows
                    while buffered >= rows_per_file:
                        rows = pa.concat_tables(buffer).combine_chunks()
                        written.append(self.write_part(rows.slice(0, rows_per_file), crop_policy))
                        rest = rows.slice(rows_per_file)
                        buffer, buffered = [rest], rest.num_rows
        if buffered:
            written.append(self.write_part(pa.concat_tables(buffer), crop_policy))
        return written

    def _apply_commit(self) -> None:
        """Carry out a written commit plan (again, if a crash interrupted it): moves, then deletes."""
        try:
            plan = json.loads(read_bytes(self.fs, join(self.staging, COMMIT_NAME)))
        except FileNotFoundError:
            return
        for name in plan["moves"]:
            if exists(self.fs, join(self.staging, name)):
                files.move(self.fs, join(self.staging, name), join(self.path, name))
        for path in plan["deletes"]:
            if exists(self.fs, path):
                self.fs.delete_file(path)
        self.fs.delete_file(join(self.staging, COMMIT_NAME))

    def _part_info(self, name: str) -> PartInfo:
        with self.fs.open_input_file(join(self.path, name)) as f:
            meta = pq.ParquetFile(f).metadata
            error = pq.read_table(f, columns=["error"]).column(0)
            size = f.size()
        return PartInfo(name, meta.num_rows, len(error) - error.null_count, size)

    # ------------------------------------------------------------------ the index
    def _write_index(self, digest: str, width: int | None, memory_bytes: int, spill_dir: str | None) -> None:
        paths = [join(self.path, n) for n in self.parts()]
        final = join(self.path, INDEX_NAME)
        if self.table.is_local:
            local = files.local_path(self.fs, final)
            tmp = files.temporary_name(local)
            try:
                build_index(self.fs, paths, tmp, digest, self.name, width, memory_bytes, spill_dir)
                os.replace(tmp, local)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return
        with tempfile.TemporaryDirectory(prefix="pam-index-", dir=spill_dir) as scratch:
            tmp = os.path.join(scratch, INDEX_NAME)
            build_index(self.fs, paths, tmp, digest, self.name, width, memory_bytes, spill_dir)
            pafs.copy_files(tmp, final, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)

    def build_index(self, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> str:
        """(Re)build the index of the complete version; returns its path."""
        self._write_index(self.manifest()["digest"], None, memory_bytes, None)
        return join(self.path, INDEX_NAME)

    def _index_matches(self, digest: str) -> bool:
        try:
            with self.fs.open_input_file(join(self.path, INDEX_NAME)) as f:
                meta = pa.ipc.open_file(f).schema.metadata or {}
        except (FileNotFoundError, OSError, pa.ArrowInvalid):
            return False
        return meta.get(META_MANIFEST_DIGEST, b"").decode() == digest

    def open_index(self, digest: str) -> tuple[pa.Table, object] | None:
        """(index rows, the source keeping them alive) when an index for `digest` is there.

        Local: memory-mapped (replicas on one node share the pages; opening costs milliseconds).
        """
        path = join(self.path, INDEX_NAME)
        try:
            if self.table.is_local:
                source = pa.memory_map(files.local_path(self.fs, path), "r")
            else:
                source = pa.BufferReader(read_bytes(self.fs, path))
            reader = pa.ipc.open_file(source)
        except (FileNotFoundError, OSError, pa.ArrowInvalid):
            return None
        meta = reader.schema.metadata or {}
        if meta.get(META_MANIFEST_DIGEST, b"").decode() != digest or "hash" not in reader.schema.names:
            return None  # built for an earlier manifest of this version (or an older layout)
        return reader.read_all(), source

    # ------------------------------------------------------------------ rows scored online
    def online_files(self) -> frozenset[str]:
        return frozenset(files.list_files(self.fs, self.online, PART_PREFIX, PART_SUFFIX))

    def online_stamp(self) -> int | None:
        """The online directory's mtime in ns (local roots; 0 when absent), None on object storage."""
        if not self.table.is_local:
            return None
        try:
            return os.stat(files.local_path(self.fs, self.online)).st_mtime_ns
        except FileNotFoundError:
            return 0

    def write_online(self, rows: pa.Table) -> str:
        """Persist rows scored online as one new file; returns its name."""
        name = f"{PART_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:12]}{PART_SUFFIX}"
        write_atomic(self.fs, join(self.online, name), parquet_bytes(rows, crop_policy="online"))
        return name

    def read_online(self, names: Sequence[str]) -> pa.Table:
        tables = []
        for name in names:
            try:
                table = pq.read_table(join(self.online, name), filesystem=self.fs, partitioning=None)
                table = with_version(table, self.name).select(list(FEATURE_COLUMNS))
            except FileNotFoundError:
                continue  # merged away by a concurrent compaction: its rows are in the merged file
            tables.append(check_table(table).replace_schema_metadata(None))
        return pa.concat_tables(tables) if tables else FEATURE_SCHEMA.empty_table()

    def compact_online(self, names: Sequence[str]) -> tuple[str, pa.Table]:
        """Merge these online files into one (written before the others are deleted)."""
        rows = self.read_online(names)
        merged = f"{PART_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:12]}-merged{PART_SUFFIX}"
        write_atomic(self.fs, join(self.online, merged), parquet_bytes(rows, "online"))
        for name in names:
            self.fs.delete_file(join(self.online, name))
        return merged, rows


class PartWriter:
    """Buffers rows of one version and stages whole Parquet parts (by size, by age, and on close)."""

    def __init__(self, version: Version, crop_policy: str, rows_per_file: int, flush_s: float):
        self.version, self.crop_policy = version, crop_policy
        self.rows_per_file, self.flush_s = rows_per_file, flush_s
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.oldest: float | None = None
        self.parts: list[PartInfo] = []

    def add(self, ids: Sequence[str], features: Mapping[str, np.ndarray] | None,
            errors: Sequence[str | None] | None = None) -> pa.Table:
        """Buffer rows (writing parts as they fill); returns them as a feature table."""
        table = feature_table(ids, features, self.version.name, errors)
        self.buffer.append(table)
        self.buffered += table.num_rows
        self.oldest = self.oldest or time.monotonic()
        while self.buffered >= self.rows_per_file:
            self._write(self.rows_per_file)
        if self.buffered and time.monotonic() - self.oldest >= self.flush_s:
            self._write(self.buffered)
        return table

    def close(self) -> None:
        if self.buffered:
            self._write(self.buffered)

    def _write(self, rows: int) -> None:
        table = pa.concat_tables(self.buffer)
        head, rest = table.slice(0, rows), table.slice(rows)
        self.parts.append(self.version.write_part(head, self.crop_policy))
        self.buffer = [rest] if rest.num_rows else []
        self.buffered = rest.num_rows
        self.oldest = time.monotonic() if rest.num_rows else None


def manifest_digest(model_version: str, parts: Sequence[PartInfo]) -> str:
    """Identity of a version's contents (which files, how many rows): the index records it."""
    key = json.dumps([model_version, [p.as_dict() for p in sorted(parts, key=lambda p: p.name)]], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def files_sizes(fs: pafs.FileSystem, paths: Sequence[str]) -> list[int]:
    return [fs.get_file_info(p).size or 0 for p in paths]


def _part_rows(fs: pafs.FileSystem, paths: Sequence[str]) -> list[int]:
    from serving.feature_table.index import part_rows

    return part_rows(fs, paths)


def remaining(ids: pa.Table, done: pa.Table) -> pa.Table:
    """The rows of `ids` whose image_id is not in `done`."""
    if not done.num_rows:
        return ids
    return ids.filter(pc.invert(pc.is_in(ids.column("image_id"), value_set=done.column("image_id"))))


# ---------------------------------------------------------------- migration of the first layout

OLD_CURRENT = "CURRENT"
OLD_ONLINE = "online"


def migrate_layout(table: FeatureTable) -> list[str]:
    """Move a root written in the first layout (<root>/<v>/, CURRENT, online/) to this one.

    Runs when a FeatureTable opens a root that still has the old layout (a read-only root is
    read as it is found). A version's parts its manifest does not list (an interrupted run) go
    to _staging/, where the next run of that version picks them up. Returns what was moved.
    """
    fs, root = table.fs, table.root
    if not exists(fs, root):
        return []
    old = [d for d in files.list_dirs(fs, root) if not d.startswith(("_", ".", f"{VERSION_KEY}="))
           and d != OLD_ONLINE and exists(fs, join(root, d, MANIFEST_NAME))]
    has_pointer = exists(fs, join(root, OLD_CURRENT))
    has_online = exists(fs, join(root, OLD_ONLINE))
    if not (old or has_pointer or has_online):
        return []
    moved = []
    try:
        for name in old:
            version = table.version(name)
            listed = {p["name"] for p in json.loads(read_bytes(fs, join(root, name, MANIFEST_NAME)))["parts"]}
            for entry in files.list_files(fs, join(root, name)):
                target = version.path if (entry in listed or entry in (MANIFEST_NAME, INDEX_NAME)) else version.staging
                if entry.startswith(TMP_MARK):
                    fs.delete_file(join(root, name, entry))
                    continue
                if entry.endswith(PART_SUFFIX):  # without its model_version column (see parquet_bytes)
                    _rewrite_part(fs, join(root, name, entry), join(target, entry), name)
                    continue
                files.move(fs, join(root, name, entry), join(target, entry))
            fs.delete_dir(join(root, name))
            moved.append(name)
        if has_online:
            for name in files.list_dirs(fs, join(root, OLD_ONLINE)):
                for entry in files.list_files(fs, join(root, OLD_ONLINE, name)):
                    _rewrite_part(fs, join(root, OLD_ONLINE, name, entry), join(table.version(name).online, entry), name)
            fs.delete_dir(join(root, OLD_ONLINE))
            moved.append(OLD_ONLINE)
        if has_pointer:
            write_atomic(fs, join(root, CURRENT_NAME), read_bytes(fs, join(root, OLD_CURRENT)))
            fs.delete_file(join(root, OLD_CURRENT))
            moved.append(OLD_CURRENT)
    except PermissionError:
        raise PermissionError(f"{table.uri} is in the first feature-table layout and cannot be migrated "
                              "here (read-only); open it once where it is writable") from None
    return moved


def _rewrite_part(fs: pafs.FileSystem, source: str, destination: str, model_version: str) -> None:
    rows = pq.read_table(source, filesystem=fs, partitioning=None)
    policy = (rows.schema.metadata or {}).get(b"pam.crop_policy", b"").decode()
    write_atomic(fs, destination, parquet_bytes(with_version(rows, model_version), policy))
    fs.delete_file(source)
