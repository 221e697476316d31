"""`pam` entry point: lazy subcommand dispatch, human or `--json` summaries.

Each subcommand is a module in `pam.commands` exposing:
    HELP: str                               one line for `pam --help`
    add_arguments(parser) -> None           its flags (argparse)
    run(args) -> dict                       does the work, returns a JSON-able summary
    render(summary) -> str   (optional)     the human form of that summary
    exit_code(summary) -> int (optional)    non-zero when the work partly failed
Only the chosen module is imported, so `pam serve` never pays for (or needs) torch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

# name -> (module, one-line help). Help is duplicated here so `pam --help` imports nothing.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("pam.commands.train", "train the aesthetics, attributes and content networks"),
    "export": ("pam.commands.export", "export the fused five-crop graph (ONNX, TensorRT, Triton)"),
    "features": ("pam.commands.features", "batch job: photos -> Parquet feature table (Ray Data)"),
    "serve": ("pam.commands.serve", "run the personalization service (Ray Serve)"),
    "index": ("pam.commands.index", "build the text index of a feature table's photos (tantivy, BM25)"),
    "search": ("pam.commands.search", "search the index, re-ranked per user through the running service"),
    "eval": ("pam.commands.eval", "run an evaluation protocol (table4, active, taste)"),
    "simulate": ("pam.commands.simulate", "write a simulated rater panel (FLICKR-AES format)"),
    "fit-prior": ("pam.commands.fit_prior", "fit the population taste prior of a feature version"),
    "bench": ("pam.commands.bench", "run the side-by-side benchmarks"),
    "demo": ("pam.commands.demo", "the whole pipeline on the embedded default, with a report"),
}


def _render_default(summary: dict, indent: int = 0) -> str:
    lines = []
    pad = "  " * indent
    for key, value in summary.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.append(_render_default(value, indent + 1))
        elif isinstance(value, float):
            lines.append(f"{pad}{key}: {value:.4g}")
        else:
            lines.append(f"{pad}{key}: {value}")
    return "\n".join(lines)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pam", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        cmd_parser = sub.add_parser(name, help=help_text, description=getattr(module, "HELP", help_text))
        cmd_parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
        module.add_arguments(cmd_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    summary = module.run(args)
    if args.json:
        print(json.dumps(summary, default=str, sort_keys=False))
    else:
        render = getattr(module, "render", None)
        print(render(summary) if render else _render_default(summary))
    exit_code = getattr(module, "exit_code", None)
    return int(exit_code(summary)) if exit_code else 0


if __name__ == "__main__":
    sys.exit(main())
