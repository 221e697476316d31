"""Building a version's sorted index, and finding duplicate rows, in bounded memory.

Both work the same way whatever the table's size: one pass over the parts scatters rows into
local spill files by ranges of their id hash (as many ranges as the memory budget needs), then
each range is sorted on its own. The index is sorted by hash, so the ranges, each written as one
Arrow record batch, follow each other in order: the file is sorted as a whole.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from serving.feature_table.schema import (
    FEATURE_SCHEMA,
    FILE_COLUMNS,
    id_keys,
    index_table,
    key_hashes,
    with_version,
)

DEFAULT_MEMORY_BYTES = 2 * 1024**3
READ_BATCH_ROWS = 32768
# bytes a row takes while its range is sorted: the row (~0.8 KB of features, in Arrow and again
# when taken in order), the sort's scratch and Arrow's pool slack
FULL_ROW_BYTES = 3 * 900
ID_ROW_BYTES = 4 * 64


def part_rows(fs: pafs.FileSystem, paths: Sequence[str]) -> list[int]:
    rows = []
    for path in paths:
        with fs.open_input_file(path) as f:
            rows.append(pq.ParquetFile(f).metadata.num_rows)
    return rows


def ranges_for(rows: int, row_bytes: int, memory_bytes: int) -> int:
    """How many hash ranges keep one range's sort under the budget (half of it: the reader's
    batches and the writer's buffers take the rest)."""
    return max(1, math.ceil(rows * row_bytes / max(1, memory_bytes // 2)))


def _range_of(hashes: np.ndarray, ranges: int) -> np.ndarray:
    """Monotonic in the hash: range r holds hashes below those of range r + 1."""
    return ((hashes >> np.uint64(40)).astype(np.int64) * ranges >> 24).astype(np.intp)


class _Spill:
    """One local Arrow stream file per hash range, opened as rows arrive."""

    def __init__(self, directory: str, ranges: int):
        self.directory, self.ranges = directory, ranges
        self.writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}

    def path(self, r: int) -> str:
        return os.path.join(self.directory, f"range-{r:06d}.arrow")

    def add(self, batch: pa.RecordBatch, ranges: np.ndarray) -> None:
        if self.ranges == 1:
            self._write(0, batch)
            return
        order = np.argsort(ranges, kind="stable")
        sorted_ranges = ranges[order]
        bounds = np.flatnonzero(np.diff(sorted_ranges)) + 1
        taken = batch.take(pa.array(order))
        for begin, end in zip(np.r_[0, bounds], np.r_[bounds, len(order)], strict=True):
            self._write(int(sorted_ranges[begin]), taken.slice(begin, end - begin))

    def _write(self, r: int, batch: pa.RecordBatch) -> None:
        writer = self.writers.get(r)
        if writer is None:
            writer = self.writers[r] = pa.ipc.new_stream(self.path(r), batch.schema)
        writer.write_batch(batch)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def read(self, r: int) -> pa.Table | None:
        if r not in self.writers:
            return None
        with pa.memory_map(self.path(r)) as source:
            table = pa.ipc.open_stream(source).read_all()
        table = table.combine_chunks()  # owns its memory: the spill file can go
        os.unlink(self.path(r))
        return table


def find_duplicates(fs: pafs.FileSystem, paths: Sequence[str], memory_bytes: int = DEFAULT_MEMORY_BYTES,
                    spill_dir: str | None = None) -> tuple[dict[int, np.ndarray], int]:
    """Rows whose id an earlier part (in the order given) or row already holds.

    Returns ({part position: sorted row numbers to drop}, the longest id in bytes).
    """
    rows = part_rows(fs, paths)
    ranges = ranges_for(sum(rows), ID_ROW_BYTES, memory_bytes)
    drop: dict[int, list[np.ndarray]] = {}
    width = 1
    with tempfile.TemporaryDirectory(prefix="pam-dups-", dir=spill_dir) as scratch:
        spill = _Spill(scratch, ranges)
        for p, path in enumerate(paths):
            row = 0
            with fs.open_input_file(path) as f:
                for batch in pq.ParquetFile(f).iter_batches(READ_BATCH_ROWS, columns=["image_id"]):
                    ids = batch.column(0).cast(pa.string())
                    keys = id_keys(ids)
                    width = max(width, keys.dtype.itemsize)
                    hashes = key_hashes(keys)
                    n = len(ids)
                    spill.add(pa.record_batch({
                        "hash": pa.array(hashes, pa.uint64()), "image_id": ids,
                        "part": pa.array(np.full(n, p, np.int32)),
                        "row": pa.array(np.arange(row, row + n, dtype=np.int64))}), _range_of(hashes, ranges))
                    row += n
        spill.close()
        for r in range(ranges):
            table = spill.read(r)
            if table is None or table.num_rows < 2:
                continue
            keys = id_keys(table.column("image_id"), width=width)
            hashes = table.column("hash").to_numpy()
            part = table.column("part").to_numpy()
            row = table.column("row").to_numpy()
            by = np.lexsort((row, part, keys, hashes))
            sorted_keys = keys[by]
            repeated = np.zeros(len(by), bool)
            repeated[1:] = sorted_keys[1:] == sorted_keys[:-1]
            for p in np.unique(part[by[repeated]]):
                mine = by[repeated & (part[by] == p)]
                drop.setdefault(int(p), []).append(row[mine])
    return {p: np.sort(np.concatenate(r)) for p, r in drop.items()}, width


def build_index(fs: pafs.FileSystem, paths: Sequence[str], destination: str, digest: str, model_version: str,
                width: int | None = None, memory_bytes: int = DEFAULT_MEMORY_BYTES,
                spill_dir: str | None = None) -> int:
    """Write the index of the rows of `paths` (ids unique across them) to the local file
    `destination`, one record batch per hash range; returns the number of record batches."""
    rows = part_rows(fs, paths)
    ranges = ranges_for(sum(rows), FULL_ROW_BYTES, memory_bytes)
    with tempfile.TemporaryDirectory(prefix="pam-index-", dir=spill_dir) as scratch:
        spill = _Spill(scratch, ranges)
        if width is None:
            width = 1
            for path in paths:
                with fs.open_input_file(path) as f:
                    for batch in pq.ParquetFile(f).iter_batches(READ_BATCH_ROWS, columns=["image_id"]):
                        width = max(width, id_keys(batch.column(0).cast(pa.string())).dtype.itemsize)
        for path in paths:
            with fs.open_input_file(path) as f:
                for batch in pq.ParquetFile(f).iter_batches(READ_BATCH_ROWS, columns=list(FILE_COLUMNS)):
                    hashes = key_hashes(id_keys(batch.column("image_id").cast(pa.string()), width=width))
                    spill.add(batch, _range_of(hashes, ranges))
        spill.close()
        batches = 0
        writer = None
        try:
            for r in range(ranges):
                table = spill.read(r)
                if table is None:
                    continue
                index = index_table(with_version(table, model_version), digest, model_version, width=width)
                del table
                if writer is None:
                    writer = pa.ipc.new_file(destination, index.schema)
                writer.write_table(index, max_chunksize=max(1, index.num_rows))
                batches += 1
            if writer is None:  # no rows: an empty index, still one file
                empty = index_table(FEATURE_SCHEMA.empty_table(), digest, model_version, width=width)
                writer = pa.ipc.new_file(destination, empty.schema)
                writer.write_table(empty)
        finally:
            if writer is not None:
                writer.close()
    return batches
