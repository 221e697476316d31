"""`pam bench NAME`: run one side-by-side benchmark (see pam.bench for the list)."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from pam.bench import BENCHMARKS

HELP = "Run a side-by-side benchmark: " + ", ".join(BENCHMARKS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (module_name, help_text) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--out", type=Path, help="also write the summary as JSON to this file")
        p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
        p.set_defaults(_bench_module=module_name)
        # benchmark modules import their heavy dependencies inside run(), so this stays cheap
        module = _load(module_name)
        if module is not None:
            module.add_arguments(p)


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:  # that benchmark is not written yet
            return None
        raise


def run(args: argparse.Namespace) -> dict:
    module = _load(args._bench_module)
    if module is None:
        raise SystemExit(f"pam bench: {args._bench_module} is not available in this checkout")
    summary = module.run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def render(summary: dict) -> str:
    module_render = summary.pop("_render", None)
    return module_render or json.dumps(summary, indent=2, default=str)
