"""`pam bench store`: feature-store lookups of 1,000 ids in a generated table of 1M rows.

Side by side, in one process, over the same complete version on disk:
    store    serving.feature_table.FeatureStore: the memory-mapped index sorted by id hash
    pandas   the obvious approach: pd.read_parquet, set_index("image_id"), .reindex(ids)
    dict     a Python dict {image_id: row} over numpy matrices read from the Parquet
Each runs in a fresh process: open time, lookup time (median of --repeats lookups of --lookups
ids, 10% unknown, different ids each time), private memory (RssAnon growth: what every replica
pays) and file-backed memory (RssFile: page-cache pages mapped, which replicas on a node share). The lookup's physical floor is the bytes it gathers
over the memory bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

HELP = "feature-store lookups of 1,000 ids in 1M rows: memory-mapped store vs pandas vs dict"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the generated table (default 1M)")
    parser.add_argument("--lookups", type=int, default=1000, help="ids per lookup (default 1000)")
    parser.add_argument("--repeats", type=int, default=50, help="timed lookups per approach (median counts)")
    parser.add_argument("--dir", type=Path, help="where to write the table (default: a temporary directory)")
    parser.add_argument("--skip-pandas", action="store_true", help="leave out pandas (slow at 1M rows)")


def _memory() -> dict[str, int]:
    """RssAnon / RssFile of this process in bytes (Linux /proc)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _delta(before: dict, after: dict) -> dict[str, float]:
    return {f"{k.lower()}_mb": (after.get(k, 0) - before.get(k, 0)) / 1e6 for k in ("RssAnon", "RssFile")}


def generate(root: str, rows: int, seed: int = 0, rows_per_file: int = 131072, finalize: bool = True) -> list[str]:
    """A version "bench-v1" of `rows` generated rows (one failed per part), made current; with
    finalize=False its parts are only staged (what a job leaves before finalizing)."""
    import numpy as np

    from personalize.features import AES_FEAT_DIM, N_ATTRIBUTES, N_CONTENT
    from serving import feature_table as ft

    rng = np.random.default_rng(seed)
    ids = [f"albums/{i % 997:03d}/IMG_{i:08d}.jpg" for i in range(rows)]
    table = ft.FeatureTable(root)
    version = table.version("bench-v1")
    for start in range(0, rows, rows_per_file):
        n = min(rows_per_file, rows - start)
        features = {"aes_score": rng.uniform(1, 5, n).astype(np.float32),
                    "aes_feat": rng.standard_normal((n, AES_FEAT_DIM), dtype=np.float32),
                    "attributes": rng.uniform(-1, 1, (n, N_ATTRIBUTES)).astype(np.float32),
                    "content": rng.dirichlet(np.ones(N_CONTENT), n).astype(np.float32)}
        errors = [None] * n
        errors[0] = "corrupt: generated failure"
        version.write_part(ft.feature_table(ids[start:start + n], features, "bench-v1", errors), "generated")
    if finalize:
        version.finalize("generated", rows_per_file=rows_per_file)
        table.set_current("bench-v1")
    return ids


def _median_seconds(fn, repeats: int) -> float:
    import numpy as np

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _bandwidth_gb_s() -> float:
    import numpy as np

    a = np.ones(64 * 1024 * 1024 // 4, np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - start)
    return 2 * a.nbytes / best / 1e9  # read + write


def _in_child(name: str, *args):
    """Run one approach in a fresh process, so that its memory figures are its own."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_APPROACHES[name], *args).result()


def _timed_lookups(lookup, queries, repeats: int) -> float:
    k = iter(range(10**9))
    return _median_seconds(lambda: lookup(queries[next(k) % len(queries)]), repeats)


def _bench_store(root: str, queries, repeats: int):
    from serving.feature_table import FeatureTable

    gc.collect()
    before = _memory()
    start = time.perf_counter()
    store = FeatureTable(root).store()
    open_s = time.perf_counter() - start
    found, _ = store.lookup(queries[0])
    lookup_s = _timed_lookups(store.lookup, queries, repeats)
    return {"open_s": open_s, "lookup_ms": lookup_s * 1e3, **_delta(before, _memory())}, found.aes_feat


def _bench_dict(root: str, queries, repeats: int, reference):
    import numpy as np

    from serving import feature_table as ft

    gc.collect()
    before = _memory()
    start = time.perf_counter()
    columns = ft.to_numpy(ft.FeatureTable(root).read())
    row_of = {image_id: i for i, image_id in enumerate(columns["image_id"])}
    failed = np.array([e is not None for e in columns["error"]])
    open_s = time.perf_counter() - start

    def lookup(q):
        rows = [row_of.get(i) for i in q]
        hit = [r for r in rows if r is not None and not failed[r]]
        return columns["aes_feat"][hit], columns["aes_score"][hit]

    assert np.array_equal(lookup(queries[0])[0], reference)
    lookup_s = _timed_lookups(lookup, queries, repeats)
    return {"open_s": open_s, "lookup_ms": lookup_s * 1e3, **_delta(before, _memory())}


def _bench_pandas(root: str, queries, repeats: int, reference):
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    from serving import feature_table as ft

    gc.collect()
    before = _memory()
    start = time.perf_counter()
    version = ft.FeatureTable(root).version("bench-v1")
    paths = [f"{version.path}/{p['name']}" for p in version.manifest()["parts"]]
    df = pd.concat([pq.read_table(p, partitioning=None).to_pandas() for p in paths]).set_index("image_id")
    open_s = time.perf_counter() - start

    def lookup(q):
        sub = df.reindex(q)
        sub = sub[sub["error"].isna() & sub["aes_score"].notna()]
        return np.stack(sub["aes_feat"].to_numpy()), sub["aes_score"].to_numpy()

    assert np.array_equal(lookup(queries[0])[0], reference)
    lookup_s = _timed_lookups(lookup, queries, repeats)
    return {"open_s": open_s, "lookup_ms": lookup_s * 1e3, **_delta(before, _memory())}


_APPROACHES = {"store": _bench_store, "dict": _bench_dict, "pandas": _bench_pandas}


def run(args: argparse.Namespace) -> dict:
    import numpy as np

    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="pam-bench-store-")
    root = str(args.dir or tmp.name)
    try:
        start = time.perf_counter()
        ids = generate(root, args.rows)
        generate_s = time.perf_counter() - start
        rng = np.random.default_rng(1)
        n_known = args.lookups - args.lookups // 10
        queries = []
        for _ in range(16):  # different ids each lookup, as a service sees them (caches stay cold)
            q = [ids[i] for i in rng.integers(0, len(ids), n_known)]
            q += [f"unknown/{j}.jpg" for j in range(args.lookups - n_known)]
            rng.shuffle(q)
            queries.append(q)
        results: dict[str, dict] = {}
        results["store"], reference = _in_child("store", root, queries, args.repeats)
        results["dict"] = _in_child("dict", root, queries, args.repeats, reference)
        if not args.skip_pandas:
            results["pandas"] = _in_child("pandas", root, queries, max(5, args.repeats // 5), reference)
        bandwidth = _bandwidth_gb_s()
        gathered = len(reference) * 4 * (1 + 176 + 10 + 10)
        floor_ms = gathered / (bandwidth * 1e9) * 1e3
        summary = {
            "rows": args.rows, "lookup_ids": args.lookups, "known_fraction": n_known / args.lookups,
            "generate_s": generate_s, "results": results,
            "store_vs_pandas_lookup": (results["pandas"]["lookup_ms"] / results["store"]["lookup_ms"])
            if "pandas" in results else None,
            "store_vs_dict_lookup": results["dict"]["lookup_ms"] / results["store"]["lookup_ms"],
            "memory_bandwidth_gb_s": bandwidth,
            "lookup_floor_ms": floor_ms,
            "store_lookup_vs_floor": results["store"]["lookup_ms"] / floor_ms,
        }
        summary["_render"] = render(summary)
        return summary
    finally:
        if tmp is not None:
            tmp.cleanup()


def render(s: dict) -> str:
    lines = [f"feature store, {s['rows']:,} rows, lookups of {s['lookup_ids']} ids "
             f"({s['known_fraction']:.0%} known), same files:"]
    lines.append(f"  {'approach':<8} {'open s':>8} {'lookup ms':>10} {'private MB':>11} {'shared MB':>10}")
    for name, r in s["results"].items():
        lines.append(f"  {name:<8} {r['open_s']:8.3f} {r['lookup_ms']:10.3f} {r['rssanon_mb']:11.1f} "
                     f"{r['rssfile_mb']:10.1f}")
    ratio = s["store_vs_pandas_lookup"]
    if ratio:
        lines.append(f"  pandas lookup time / store lookup time: {ratio:.1f}"
                     + (" (store faster)" if ratio > 1 else " (pandas faster)"))
    lines.append(f"  dict lookup time / store lookup time: {s['store_vs_dict_lookup']:.2f}")
    lines.append(f"  floor: {s['lookup_floor_ms']:.3f} ms to gather the rows at {s['memory_bandwidth_gb_s']:.1f} GB/s "
                 f"(store at {s['store_lookup_vs_floor']:.1f}x the floor)")
    return "\n".join(lines)
