"""The read side of the feature table, used by the online service.

    store = FeatureStore.open(root)                  # the CURRENT version (or model_version=...)
    found, missing = store.lookup(["a.jpg", "b.jpg", "nope.jpg"])
    found.aes_feat          # float32 [n, 176] in the order asked, unknown and failed ids skipped
    found.failed            # {image_id: reason} for ids known but whose photo could not be scored
    missing                 # ["nope.jpg"]: ids the store has never seen
    store.add_online(ids, backend.score(images), model_version=backend.model_version)
    store.refresh()         # follow CURRENT / a re-run of the version; atomic, never mixes versions

A version is served from its `_index.arrow` (rows sorted by the hash of their id, ids as
fixed-width byte keys), memory-mapped when local: replicas on one node share the pages, opening
costs milliseconds, and a lookup is a few vectorised passes over all the ids asked (no Python loop
per id). The index is one record batch per hash range (one for tables that fit the builder's memory
budget); a lookup routes each id to its range. The batch job writes the index; when it is absent
or stale the store builds it (and saves it when the root is a local directory). Rows scored online
live in <root>/_online/model_version=<v>/ as small Parquet files; a lookup that misses the batch
rows checks them, re-listing that directory first, so rows added by another replica or process
become visible without a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from personalize.features import AES_FEAT_DIM, FEATURE_NAMES, N_ATTRIBUTES, N_CONTENT
from serving.feature_table.schema import (
    FEATURE_SCHEMA,
    feature_table,
    id_keys,
    index_table,
    key_hashes,
)
from serving.feature_table.table import FeatureTable, Version

DIRECT_SEARCH_MAX = 1024  # ids per lookup up to which find_keys binary-searches each id (a re-rank: <= 1,000)
_WIDTHS = {"aes_feat": AES_FEAT_DIM, "attributes": N_ATTRIBUTES, "content": N_CONTENT}


@dataclass
class FeatureRows:
    """Feature rows in the order asked. `failed` maps ids known but unscorable to their reason."""

    image_ids: list[str]
    aes_score: np.ndarray   # float32 [n]
    aes_feat: np.ndarray    # float32 [n, 176]
    attributes: np.ndarray  # float32 [n, 10]
    content: np.ndarray     # float32 [n, 10]
    model_version: str
    failed: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def features(self) -> dict[str, np.ndarray]:
        """The backend-shaped dict (aes_score, aes_feat, attributes, content)."""
        return {name: getattr(self, name) for name in FEATURE_NAMES}


class _Segment:
    """Sorted fixed-width id keys plus numpy views of the feature columns of one index batch."""

    def __init__(self, index: pa.Table, source: object = None):
        self._source = source  # keeps a memory map alive as long as the views
        self.table = index
        n = index.num_rows
        self.n = n
        keys = _single_chunk(index.column("key"))
        self.width = keys.type.byte_width
        self.keys = _view(keys, f"S{self.width}", 1, self.width)
        self.hashes = _view(_single_chunk(index.column("hash")), np.uint64, 1, 8)
        # bucket directory over the hash's top bits, ~2 rows per bucket (4 bytes a bucket)
        bits = max(1, min(30, int(np.ceil(np.log2(max(n, 2)))) - 1))
        self._shift = np.uint64(64 - bits)
        counts = np.bincount((self.hashes >> self._shift).astype(np.intp), minlength=1 << bits)
        self._starts = np.zeros((1 << bits) + 1, np.int64 if n >= 2**31 else np.int32)
        np.cumsum(counts, out=self._starts[1:])
        # halvings that narrow the fullest bucket to one row (3-4 for random hashes)
        self._probe_steps = int(counts.max(initial=0)).bit_length()
        self.aes_score = _view(_single_chunk(index.column("aes_score")), np.float32, 1, 4)
        for name in ("aes_feat", "attributes", "content"):
            setattr(self, name, _list_view(_single_chunk(index.column(name)), _WIDTHS[name]))
        self.errors = _single_chunk(index.column("error"))
        self.failed = self.errors.is_valid().to_numpy(zero_copy_only=False) if n else np.zeros(0, bool)

    def find(self, ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(hit mask, row positions) for each queried id.

        The top bits of an id's 64-bit hash pick a bucket of the sorted hash column (about two
        rows each); a binary search inside the buckets, vectorised over all queries, finds the
        first row whose hash is not smaller, and the key decides. One or two cache misses per id,
        where a binary search over millions of rows takes ~20 steps and misses on the last
        several; and a fixed few numpy passes, however the ids fall into buckets.
        """
        if self.n == 0:
            return np.zeros(len(ids), bool), np.zeros(len(ids), np.intp)
        queries = id_keys(ids, width=self.width, strict=False)
        return self.find_keys(queries, key_hashes(queries))

    def find_keys(self, queries: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_ids = len(queries)
        if self.n == 0:
            return np.zeros(n_ids, bool), np.zeros(n_ids, np.intp)
        last = self.n - 1
        if n_ids <= DIRECT_SEARCH_MAX:
            # a request's ids: one binary search each in C costs less than the bucket passes'
            # fixed numpy calls (24 against 63 us for 200 ids of 1M rows); from ~1,500 ids the buckets win
            positions = np.searchsorted(self.hashes, hashes).astype(np.intp, copy=False)
            ends = np.full(n_ids, self.n, np.intp)
        else:
            bucket = (hashes >> self._shift).astype(np.intp)
            low = self._starts[bucket].astype(np.intp)
            high = self._starts[bucket + 1].astype(np.intp)
            ends = high.copy()
            for _ in range(self._probe_steps):
                mid = (low + high) >> 1
                smaller = self.hashes[np.minimum(mid, last)] < hashes
                open_ = low < high
                low = np.where(open_ & smaller, mid + 1, low)
                high = np.where(open_ & ~smaller, mid, high)
            positions = low
        hit = np.zeros(n_ids, bool)
        todo = np.flatnonzero((positions < ends) & (queries != b""))
        while todo.size:  # once, but for the rare ids whose hash another id shares
            at = positions[todo]
            same_hash = self.hashes[at] == hashes[todo]
            todo, at = todo[same_hash], at[same_hash]
            match = self.keys[at] == queries[todo]
            hit[todo[match]] = True
            go_on = todo[~match]
            positions[go_on] += 1
            todo = go_on[positions[go_on] < ends[go_on]]
        np.minimum(positions, last, out=positions)
        return hit, positions

    def ids(self) -> list[str]:
        return [k.decode("utf-8") for k in self.keys.tolist()]

    def gather(self, name: str, positions: np.ndarray) -> np.ndarray:
        return np.take(getattr(self, name), positions, axis=0)

    def failed_at(self, positions: np.ndarray) -> np.ndarray:
        return self.failed[positions] if self.n else np.zeros(len(positions), bool)

    def reasons(self, positions: np.ndarray) -> list:
        return self.errors.take(pa.array(positions)).to_pylist()


class _Ranges:
    """An index of several record batches, each a range of hashes following the one before."""

    def __init__(self, index: pa.Table, source: object = None):
        self._source = source
        self.parts = [_Segment(pa.Table.from_batches([batch]), source) for batch in index.to_batches()]
        self.parts = [p for p in self.parts if p.n]
        self.n = sum(p.n for p in self.parts)
        self.width = self.parts[0].width if self.parts else 1
        self.offsets = np.cumsum([0] + [p.n for p in self.parts])
        self.first_hashes = np.array([p.hashes[0] for p in self.parts], np.uint64)

    def _route(self, positions: np.ndarray):
        part = np.searchsorted(self.offsets, positions, side="right") - 1
        for p in np.unique(part):
            mask = part == p
            yield self.parts[p], mask, positions[mask] - self.offsets[p]

    def find(self, ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        hit, positions = np.zeros(len(ids), bool), np.zeros(len(ids), np.intp)
        if not self.n:
            return hit, positions
        queries = id_keys(ids, width=self.width, strict=False)
        hashes = key_hashes(queries)
        part = np.maximum(np.searchsorted(self.first_hashes, hashes, side="right") - 1, 0)
        for p in np.unique(part):
            mask = part == p
            hit[mask], found = self.parts[p].find_keys(queries[mask], hashes[mask])
            positions[mask] = found + self.offsets[p]
        return hit, positions

    def ids(self) -> list[str]:
        return [i for p in self.parts for i in p.ids()]

    def gather(self, name: str, positions: np.ndarray) -> np.ndarray:
        width = _WIDTHS.get(name)
        out = np.empty((len(positions),) if width is None else (len(positions), width), np.float32)
        for part, mask, local in self._route(positions):
            out[mask] = part.gather(name, local)
        return out

    def failed_at(self, positions: np.ndarray) -> np.ndarray:
        out = np.zeros(len(positions), bool)
        for part, mask, local in self._route(positions):
            out[mask] = part.failed[local]
        return out

    def reasons(self, positions: np.ndarray) -> list:
        out = np.empty(len(positions), dtype=object)
        for part, mask, local in self._route(positions):
            out[mask] = part.reasons(local)
        return out.tolist()


def _index_segment(index: pa.Table, source: object = None) -> _Segment | _Ranges:
    return _Segment(index, source) if index.column("hash").num_chunks <= 1 else _Ranges(index, source)


def _single_chunk(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _view(array: pa.Array, dtype, per_row: int, itemsize: int) -> np.ndarray:
    """A zero-copy numpy view of a fixed-width Arrow array's data buffer (nulls hold garbage)."""
    buffer = array.buffers()[1]
    if buffer is None or len(array) == 0:
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(buffer, dtype=dtype, count=len(array), offset=array.offset * itemsize)


def _list_view(array: pa.FixedSizeListArray, width: int) -> np.ndarray:
    if len(array) == 0:
        return np.zeros((0, width), np.float32)
    child = array.values  # ignores the parent's offset; null rows keep their slots
    values = np.frombuffer(child.buffers()[1], dtype=np.float32, count=len(child), offset=child.offset * 4)
    return values.reshape(-1, width)[array.offset:array.offset + len(array)]


@dataclass
class _Snapshot:
    """Everything one version serves; swapped as a whole so a lookup never mixes versions."""

    version: Version
    digest: str
    batch: _Segment | _Ranges
    online_rows: pa.Table      # feature-schema rows scored online, in the order written
    online: _Segment           # their index (first row per id wins)
    online_files: frozenset[str]
    online_new: int            # online ids that are not among the batch rows


class FeatureStore:
    """Vectorised id lookups over one complete model version (see the module docstring)."""

    def __init__(self, table: FeatureTable, model_version: str | None = None):
        self.table = table
        self._follow_current = model_version is None
        self._lock = threading.RLock()
        self._online_stamp: dict[str, float | int | None] = {}
        self.online_poll_s = 1.0  # object storage: how often a miss may re-list the online rows
        self._snap = self._load(table.version(model_version or table.current_name))

    @classmethod
    def open(cls, root: str, model_version: str | None = None,
             filesystem: pafs.FileSystem | None = None) -> FeatureStore:
        """Open a complete version of a table root (None = the current one, followed on refresh())."""
        return cls(FeatureTable(root, filesystem), model_version)

    # ------------------------------------------------------------------ reading
    @property
    def model_version(self) -> str:
        return self._snap.version.name

    @property
    def root(self) -> str:
        return self.table.root

    def __len__(self) -> int:
        snap = self._snap
        return snap.batch.n + snap.online_new

    def lookup(self, image_ids: Sequence[str]) -> tuple[FeatureRows, list[str]]:
        """Feature rows of the known, scored ids in the order asked; and the unknown ids.

        Ids known but failed (`error` set) are in neither list's rows: they are in found.failed.
        """
        snap = self._snap
        ids = pa.array(image_ids, type=pa.string())
        hit_b, pos_b = snap.batch.find(ids)
        if not hit_b.all():
            snap = self._refresh_online(snap)
        if snap.online.n:
            hit_o, pos_o = snap.online.find(ids)
            hit_o &= ~hit_b
        else:
            hit_o, pos_o = np.zeros(len(ids), bool), pos_b
        failed_b = hit_b & snap.batch.failed_at(pos_b) if snap.batch.n else hit_b
        failed_o = hit_o & snap.online.failed_at(pos_o) if snap.online.n else hit_o
        ok_b, ok_o = hit_b & ~failed_b, hit_o & ~failed_o
        ok = np.flatnonzero(ok_b | ok_o)
        id_objects = np.empty(len(ids), dtype=object)
        id_objects[:] = image_ids if isinstance(image_ids, list) else ids.to_pylist()
        rows = {}
        if not ok_o.any():  # the common case: one gather per column straight from the index
            take = pos_b[ok]
            for name in FEATURE_NAMES:
                rows[name] = snap.batch.gather(name, take)
        else:
            from_online = ok_o[ok]
            for name in FEATURE_NAMES:
                width = _WIDTHS.get(name)
                out = np.empty((len(ok),) if width is None else (len(ok), width), np.float32)
                out[~from_online] = snap.batch.gather(name, pos_b[ok][~from_online])
                out[from_online] = snap.online.gather(name, pos_o[ok][from_online])
                rows[name] = out
        failed = {}
        for segment, mask, positions in ((snap.batch, failed_b, pos_b), (snap.online, failed_o, pos_o)):
            if mask.any():
                failed.update(zip(id_objects[mask].tolist(), segment.reasons(positions[mask]), strict=True))
        missing = id_objects[~(hit_b | hit_o)].tolist()
        found = FeatureRows(image_ids=id_objects[ok].tolist(), model_version=snap.version.name,
                            failed=failed, **rows)
        return found, missing

    def image_ids(self) -> list[str]:
        """Every id this version knows (batch then online rows), failed ones included."""
        snap = self._snap
        online = snap.online.ids()
        if snap.online.n and snap.batch.n:
            hit, _ = snap.batch.find(pa.array(online, pa.string()))
            online = [i for i, h in zip(online, hit.tolist(), strict=True) if not h]
        return snap.batch.ids() + online

    # ------------------------------------------------------------------ online rows
    def add_online(self, image_ids: Sequence[str], features: Mapping[str, np.ndarray] | None,
                   errors: Sequence[str | None] | None = None, model_version: str | None = None) -> int:
        """Persist rows scored online (one atomic file) and make them visible at once.

        model_version: the version that scored them; refused unless it is the store's version.
        Returns the number of rows written.
        """
        snap = self._snap
        if model_version is not None and model_version != snap.version.name:
            raise ValueError(f"rows scored by {model_version!r} cannot join the store of {snap.version.name!r}")
        if len(image_ids) == 0:
            return 0
        table = feature_table(list(image_ids), features, snap.version.name, errors)
        name = snap.version.write_online(table)
        with self._lock:
            current = self._snap
            if current.version.name == snap.version.name:
                self._snap = self._with_online(current, current.online_files | {name}, table)
        return table.num_rows

    def compact_online(self) -> int:
        """Merge the online files of this version into one (atomic); returns how many it merged."""
        with self._lock:
            snap = self._refresh_online(self._snap, force=True)
            names = sorted(snap.online_files)
            if len(names) < 2:
                return 0
            merged, rows = snap.version.compact_online(names)
            empty = snap.online_rows.schema.empty_table()
            self._snap = self._with_online(snap, frozenset({merged}), rows, replace=empty)
            return len(names)

    # ------------------------------------------------------------------ versions
    def refresh(self) -> bool:
        """Reload when the current version changed or this version's manifest did (a re-run).

        The new version is loaded completely before one reference swap: lookups running meanwhile
        see the old version whole, later ones the new version whole. Returns True if it switched.
        """
        snap = self._snap
        version = self.table.current if self._follow_current else snap.version
        digest = version.manifest()["digest"]
        if version.name == snap.version.name and digest == snap.digest:
            self._refresh_online(snap, force=True)
            return False
        new = self._load(version)
        with self._lock:
            self._snap = new
        return True

    def close(self) -> None:
        self._snap = None

    # ------------------------------------------------------------------ loading
    def _load(self, version: Version) -> _Snapshot:
        manifest = version.manifest()
        batch = self._open_index(version, manifest)
        empty_rows = FEATURE_SCHEMA.empty_table()
        empty = _Segment(index_table(empty_rows, "", version.name))
        snap = _Snapshot(version, manifest["digest"], batch, empty_rows, empty, frozenset(), 0)
        return self._refresh_online(snap, install=False, force=True)

    def _open_index(self, version: Version, manifest: Mapping) -> _Segment | _Ranges:
        opened = version.open_index(manifest["digest"])
        if opened is None and self.table.is_local:
            try:
                version.build_index()
            except OSError:
                pass  # a read-only root: serve from memory
            opened = version.open_index(manifest["digest"])
        if opened is not None:
            return _index_segment(*opened)
        return _Segment(index_table(version.read(), manifest["digest"], version.name))

    def _online_unchanged(self, version: Version) -> bool:
        """Cheap check before listing the online rows. A local directory's mtime moves whenever a
        file is renamed in or removed (a stamp younger than 0.1 s is not trusted: mtimes are only
        as fine as the kernel's clock tick); object storage is re-listed every `online_poll_s`."""
        previous = self._online_stamp.get(version.name)
        stamp = version.online_stamp()
        if stamp is None:
            now = time.monotonic()
            if previous is not None and now - previous < self.online_poll_s:
                return True
            self._online_stamp[version.name] = now
            return False
        settled = time.time_ns() - stamp > 100_000_000
        self._online_stamp[version.name] = stamp if settled else None
        return previous is not None and previous == stamp

    def _refresh_online(self, snap: _Snapshot, install: bool = True, force: bool = False) -> _Snapshot:
        """Pick up online files written since `snap` (by any process)."""
        if not force and self._online_unchanged(snap.version):
            return snap
        names = snap.version.online_files()
        new_names = sorted(names - snap.online_files)
        if not new_names:
            return snap
        new = self._with_online(snap, snap.online_files | names, snap.version.read_online(new_names))
        if install:
            with self._lock:
                if self._snap is snap:
                    self._snap = new
        return new

    def _with_online(self, snap: _Snapshot, names: frozenset[str], added: pa.Table | None = None,
                     replace: pa.Table | None = None) -> _Snapshot:
        rows = replace if replace is not None else snap.online_rows
        if added is not None and added.num_rows:
            rows = pa.concat_tables([rows, added.replace_schema_metadata(None)])
        online = _Segment(index_table(rows, "", snap.version.name))
        new_ids = online.n
        if online.n and snap.batch.n:
            in_batch, _ = snap.batch.find(pa.array(online.ids(), pa.string()))
            new_ids = int((~in_batch).sum())
        return _Snapshot(snap.version, snap.digest, snap.batch, rows, online, frozenset(names), new_ids)
