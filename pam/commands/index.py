"""`pam index`: the text index of a photo collection, beside its feature table (tantivy, BM25)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HELP = ("Build the text index of a feature table's photos (file and folder names, ImageNet class names, "
        "content class names when given) for `pam search`; stored in <features>/model_version=<v>/_search/")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", required=True, help="feature-table root (a `pam features` output)")
    parser.add_argument("--version", help="model version to index (default: the root's CURRENT)")
    parser.add_argument("--content-names", type=Path,
                        help="JSON list naming the content model's classes in order; each photo's most likely "
                        "class name is indexed (the default content model's classes are unnamed k-means clusters)")
    parser.add_argument("--out", type=Path, help="index folder (default <features>/model_version=<v>/_search)")


def run(args: argparse.Namespace) -> dict:
    from serving.search.index import build_for_feature_table

    names = json.loads(args.content_names.read_text()) if args.content_names else None
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise SystemExit("pam index: --content-names must hold a JSON list of strings")
    started = time.perf_counter()

    def progress(done: int) -> None:
        print(f"pam index: {done} photos indexed", file=sys.stderr, flush=True)

    index = build_for_feature_table(args.features, args.version, args.out, names, progress)
    sample = index.search(index.meta.get("example_query") or _example_query(index), 3)
    return {"index": str(index.path), "model_version": index.meta["model_version"], "documents": len(index),
            "text": index.meta["text"], "seconds": round(time.perf_counter() - started, 2),
            "engine": index.meta["engine"], "example": [h.image_id for h in sample]}


def _example_query(index) -> str:
    from serving.search.index import describe

    return describe(index.ids[0])[0].split(" ")[-1] if len(index) else ""


def render(summary: dict) -> str:
    return (f"pam index: {summary['documents']} photos of {summary['model_version']} indexed in "
            f"{summary['seconds']} s ({summary['text']}) -> {summary['index']}")
