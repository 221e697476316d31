"""`pam features`: photos -> Parquet feature table, on Ray Data (see serving/batch/job.py)."""

from __future__ import annotations

import argparse
import glob
import os

HELP = ("Batch job: score every photo of a folder / glob / manifest (local or s3://...) into the "
        "Parquet feature table <out>/model_version=<version>/, resumable; or manage the served version.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="?",
                        help="a folder (recursive), a glob ('photos/**/*.jpg'), a .txt/.parquet manifest "
                             "(paths or URIs, optional ids), or an s3://bucket/prefix URI")
    parser.add_argument("--out", required=True, help="feature table root (local directory or s3://...)")
    parser.add_argument("--model", help="exported pam_features.onnx (default: the newest artifacts/models/*/)")
    parser.add_argument("--backend", help="instead of --model: onnx:PATH, torch:EXPORT_DIR (CUDA on GPU "
                                          "actors), triton+http://HOST:PORT or triton+grpc://HOST:PORT")
    parser.add_argument("--gpu-decode", action="store_true",
                        help="with --backend torch:...: decode JPEGs on the GPU (nvJPEG) in the scoring actors")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="images per scoring call, a Ray Data task of the scoring actors (default 128)")
    parser.add_argument("--rows-per-file", type=int, default=None,
                        help="rows per Parquet part (default 16384, about 13 MB)")
    parser.add_argument("--flush-s", type=float, default=None,
                        help="write buffered rows at least this often, seconds (default 60)")
    parser.add_argument("--actors", type=int, help="scoring actors (default: sized to the cluster)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads per actor (default: the node's cores)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray this job starts (default: all)")
    parser.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--all-files", action="store_true",
                        help="score every listed file, not only image extensions (non-images become failed rows)")
    parser.add_argument("--no-promote", action="store_true", help="do not serve the finished version (the current one stays)")
    parser.add_argument("--max-attempts", type=int, default=3, help="pipeline retries after a lost node (default 3)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--wait-for-lock", type=float, default=0.0, metavar="SECONDS",
                        help="another job is writing this version: wait up to this long for it (default: fail at once)")
    parser.add_argument("--finalize-memory-gb", type=float, default=2.0,
                        help="the driver's memory for finalizing the version (dedupe and index), GB (default 2)")
    manage = parser.add_argument_group("managing versions (no job runs)")
    manage.add_argument("--list", action="store_true", help="list complete versions and the current one")
    manage.add_argument("--set-current", metavar="VERSION", help="serve this complete version (atomic switch)")
    manage.add_argument("--rollback", action="store_true", help="serve the previously current version again")


def default_model() -> str | None:
    candidates = glob.glob(os.path.join("artifacts", "models", "*", "pam_features.onnx"))
    return max(candidates, key=os.path.getmtime) if candidates else None


def run(args: argparse.Namespace) -> dict:
    from serving import feature_table as ft

    if args.list or args.set_current or args.rollback:
        table = ft.FeatureTable(args.out)
        if args.set_current:
            table.set_current(args.set_current)
        elif args.rollback:
            table.rollback()
        try:
            current = table.current_name
        except ft.NoCurrentVersionError:
            current = None
        versions = {v: {k: table.version(v).manifest()[k] for k in ("rows", "rows_ok", "rows_failed", "written_at")}
                    for v in table.versions()}
        return {"mode": "versions", "out": args.out, "current": current, "versions": versions}

    if not args.inputs:
        raise SystemExit("pam features: give the photos to score (a folder, glob, manifest or URI)")
    backend = args.backend or args.model or default_model()
    if not backend:
        raise SystemExit("pam features: no model; pass --model PATH (from `pam export`) or --backend SPEC")
    from serving.batch.job import DEFAULT_FLUSH_S, DEFAULT_ROWS_PER_FILE, JobConfig, run_job

    config = JobConfig(
        inputs=args.inputs, out=args.out, backend=backend, batch_size=args.batch_size,
        rows_per_file=args.rows_per_file or DEFAULT_ROWS_PER_FILE, flush_s=args.flush_s or DEFAULT_FLUSH_S,
        actors=args.actors, threads=args.threads, num_cpus=args.num_cpus, ray_address=args.address,
        all_files=args.all_files, promote=not args.no_promote, max_attempts=args.max_attempts,
        progress=not args.no_progress, wait_for_lock_s=args.wait_for_lock,
        finalize_memory_bytes=int(args.finalize_memory_gb * 1024**3), gpu_decode=args.gpu_decode,
    )
    try:
        summary = run_job(config)
    except ft.VersionLockedError as exc:
        raise SystemExit(f"pam features: {exc}") from None
    except KeyboardInterrupt:
        raise SystemExit("pam features: interrupted; the rows written so far are kept, run the same "
                         "command again to resume") from None
    summary["mode"] = "job"
    return summary


def render(summary: dict) -> str:
    if summary.get("mode") == "versions":
        lines = [f"feature table {summary['out']}: current version {summary['current'] or '(none)'}"]
        for version, info in summary["versions"].items():
            mark = "*" if version == summary["current"] else " "
            lines.append(f" {mark} {version}: {info['rows']} rows ({info['rows_failed']} failed), "
                         f"written {info['written_at']}")
        return "\n".join(lines)
    lines = [
        f"pam features: {summary['listed']} photos listed from {summary['inputs']} ({summary['input_kind']}), "
        f"model {summary['model_version']}",
        f"  already in the table: {summary['already_written']}; scored now: {summary['processed']} "
        f"({summary['rows_ok']} ok, {summary['rows_failed']} failed) at {summary['images_per_s']:.1f} images/s",
    ]
    if summary.get("duplicate_ids_listed"):
        lines.append(f"  listed twice (read once): {summary['duplicate_ids_listed']}")
    if summary.get("not_images_skipped"):
        lines.append(f"  not image files, skipped: {summary['not_images_skipped']} (--all-files to include)")
    for failure in summary.get("failures", [])[:5]:
        lines.append(f"  failed: {failure['image_id']}: {failure['error']}")
    if summary.get("retried_errors"):
        lines.append(f"  pipeline retried {len(summary['retried_errors'])}x: {summary['retried_errors'][0][:120]}")
    if summary.get("complete"):
        table = summary["table"]
        lines.append(f"  table {summary['out']}/model_version={summary['model_version']}: {table['rows']} rows "
                     f"({table['rows_ok']} ok, {table['rows_failed']} failed) in {table['files']} files, "
                     f"{table['bytes'] / 1e6:.1f} MB" + ("; now served" if summary.get("promoted") else ""))
    else:
        lines.append(f"  INCOMPLETE: {summary['remaining']} photos left after {summary['attempts']} attempts; "
                     "run again to resume")
    lines.append(f"  {summary['seconds']:.1f} s in all")
    return "\n".join(lines)


def exit_code(summary: dict) -> int:
    if summary.get("mode") == "versions":
        return 0
    if not summary.get("complete"):
        return 3
    return 1 if summary["table"]["rows_failed"] else 0
