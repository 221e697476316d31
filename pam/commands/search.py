"""`pam search QUERY --user ID`: the index's top N, re-ranked for the user by the running service."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("Search a photo collection's text index and re-rank the top N for a user through the running service "
        "(generic and personal order side by side); the engine's order when the service is slow or down")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", help="words to search for (the engine's syntax works: +must -not \"phrase\")")
    parser.add_argument("--user", help="the user to personalize for (without it: the engine's order)")
    parser.add_argument("--url", action="append", default=None,
                        help="the service's base URL (repeat for several direct-ingress replicas; "
                        "default http://127.0.0.1:8000)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--features", help="feature-table root whose index `pam index` built")
    where.add_argument("--index", type=Path, help="the index folder itself")
    parser.add_argument("--version", help="model version of --features (default CURRENT)")
    parser.add_argument("--window", type=int, default=200, help="results the engine hands to the re-rank (default 200)")
    parser.add_argument("--show", type=int, default=10, help="results printed (default 10)")
    parser.add_argument("--deadline-ms", type=float, default=50.0,
                        help="the re-rank call's deadline; past it the engine's order is returned (default 50)")
    parser.add_argument("--api-key", help="the service's API key")


def run(args: argparse.Namespace) -> dict:
    from pam.search.personal import PersonalSearch
    from serving.search.index import PhotoIndex, open_for_feature_table

    if not 1 <= args.window <= 10_000:
        raise SystemExit("pam search: --window must be in [1, 10000]")
    index = PhotoIndex.open(args.index) if args.index else open_for_feature_table(args.features, args.version)
    urls = args.url or ["http://127.0.0.1:8000"]
    with PersonalSearch(index, urls, api_key=args.api_key, deadline_s=args.deadline_ms / 1e3,
                        window=args.window) as engine:
        result = engine.search(args.query, args.user)
    return result.as_dict(show=args.show)


def render(summary: dict) -> str:
    head = (f"'{summary['query']}': {summary['window']} results"
            + (f" for {summary['user_id']}" if summary["user_id"] else ""))
    if summary["personalized"]:
        head += f", re-ranked on {summary['n_ratings']} ratings"
    else:
        head += f"; engine order (not personalized: {summary['reason']})"
    t = summary["timings_ms"]
    head += f"  [search {t['search']:.1f} ms, re-rank {t['rerank']:.1f} ms]"
    lines = [head, f"  {'#':>3}  {'engine (BM25)':<50} {'personal (predicted score)':<50}"]
    for k, engine in enumerate(summary["engine"]):
        personal = summary["personal"][k] if k < len(summary["personal"]) else None
        left = f"{engine['image_id'][:40]:<40} {engine['bm25']:>8.3f}"
        right = f"{personal['image_id'][:40]:<40} {personal['score']:>8.3f}" if personal else ""
        lines.append(f"  {k + 1:>3}  {left:<50} {right}".rstrip())
    return "\n".join(lines)
