"""`pam bench finalize`: finalizing a version of 1M and 5M generated rows, in bounded memory.

For each size, a version's parts are staged as a job leaves them, then finalized in a fresh
process (duplicate check, commit, the index built by hash ranges, manifest). Reported: the wall
time, and the process's peak memory growth over its start (peak RSS, which counts every page
the process touched, Arrow's pool included) against the budget (--memory-gb, default 2). The
obvious alternative, measured in the same run up to --in-memory-up-to rows: read the version
whole and sort it in memory (what the store did before), whose memory grows with the table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pam.bench.measure import peak_rss_bytes, rss_bytes

HELP = "finalizing a version of 1M / 5M rows: peak driver memory and time vs an in-memory build"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", default="1000000,5000000", help="sizes, comma-separated (default 1M,5M)")
    parser.add_argument("--memory-gb", type=float, default=2.0, help="the finalize memory budget (default 2)")
    parser.add_argument("--in-memory-up-to", type=int, default=1_000_000,
                        help="also time the in-memory build up to this many rows (default 1M)")
    parser.add_argument("--dir", type=Path, help="where to write the tables (default: a temporary directory)")


def _finalize(root: str, memory_bytes: int) -> dict:
    from serving.feature_table import FeatureTable

    version = FeatureTable(root).version("bench-v1")
    before = rss_bytes()
    start = time.perf_counter()
    manifest = version.finalize("generated", rows_per_file=131072, memory_bytes=memory_bytes)
    seconds = time.perf_counter() - start
    import pyarrow as pa

    with pa.memory_map(f"{version.path}/_index.arrow") as source:
        batches = pa.ipc.open_file(source).num_record_batches
    return {"seconds": seconds, "peak_growth_mb": (peak_rss_bytes() - before) / 1e6, "rows": manifest["rows"],
            "index_batches": batches}


def _in_memory(root: str) -> dict:
    import pyarrow as pa

    from serving.feature_table import FeatureTable, index_table

    version = FeatureTable(root).version("bench-v1")
    before = rss_bytes()
    start = time.perf_counter()
    index = index_table(version.read(), "x", "bench-v1")
    with tempfile.TemporaryDirectory() as scratch, pa.ipc.new_file(f"{scratch}/index.arrow", index.schema) as out:
        out.write_table(index, max_chunksize=index.num_rows)
    return {"seconds": time.perf_counter() - start, "peak_growth_mb": (peak_rss_bytes() - before) / 1e6}


def _in_child(fn, *args):
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def run(args: argparse.Namespace) -> dict:
    from pam.bench.store import generate

    sizes = [int(float(s)) for s in str(args.rows).split(",") if s]
    budget = int(args.memory_gb * 1024**3)
    results = []
    for rows in sizes:
        tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="pam-bench-finalize-")
        root = str((args.dir / f"rows-{rows}") if args.dir else tmp.name)
        try:
            start = time.perf_counter()
            generate(root, rows, finalize=False)
            result = {"rows": rows, "generate_s": time.perf_counter() - start,
                      "streaming": _in_child(_finalize, root, budget)}
            if rows <= args.in_memory_up_to:
                result["in_memory"] = _in_child(_in_memory, root)
            results.append(result)
        finally:
            if tmp is not None:
                tmp.cleanup()
    summary = {"memory_budget_mb": budget / 1e6, "results": results}
    summary["_render"] = render(summary)
    return summary


def render(s: dict) -> str:
    lines = [f"finalizing a version, memory budget {s['memory_budget_mb']:.0f} MB (peak RSS growth of a fresh process):",
             f"  {'rows':>10} {'approach':<10} {'seconds':>8} {'peak MB':>9} {'index batches':>14}"]
    for r in s["results"]:
        st = r["streaming"]
        lines.append(f"  {r['rows']:>10,} {'streaming':<10} {st['seconds']:8.1f} {st['peak_growth_mb']:9.0f} "
                     f"{st['index_batches']:>14}")
        if "in_memory" in r:
            im = r["in_memory"]
            lines.append(f"  {r['rows']:>10,} {'in memory':<10} {im['seconds']:8.1f} {im['peak_growth_mb']:9.0f} "
                         f"{'1':>14}")
    return "\n".join(lines)
