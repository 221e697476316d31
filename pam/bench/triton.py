"""`pam bench triton`: requests/s and latency through a real Triton server vs in-process ONNX Runtime.

One run starts tritonserver (CPU flavor: the Python backend running the graph in ONNX Runtime)
on free ports, then for every (concurrency, batch) pair sends the same requests through
  - in-process ONNX Runtime (OnnxRuntimeBackend, one session shared by the client threads),
  - Triton over HTTP and over gRPC (TritonBackend, one client per thread),
and reports requests/s, images/s, p50 and p99 latency, and Triton's throughput as a fraction of
in-process. The default graph is the tiny contract graph (almost no compute: the figures are the
serving overhead: copying 196 KB per image through HTTP/gRPC, the Python stub's shared memory
and the dynamic batcher); --model PATH runs a real export instead.

On a 2-core machine the Python client threads share the cores with the server, so the Triton
figures are a lower bound of what a separate client machine would see.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from pam.bench.measure import seconds_summary

HELP = "Triton (HTTP, gRPC) requests/s and p50/p99 latency vs in-process ONNX Runtime"
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PHOTOS = ROOT.parent / "shared" / "photos" / "imagenet-sample"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="an exported scoring graph (.onnx); default: the tiny contract graph")
    parser.add_argument("--concurrency", type=_ints, default=[1, 4, 8], help="client threads (default: 1,4,8)")
    parser.add_argument("--batch", type=_ints, default=[1, 8], help="images per request (default: 1,8)")
    parser.add_argument("--requests", type=int, default=64, help="requests per setting (default: %(default)s)")
    parser.add_argument("--protocols", default="http,grpc", help="Triton protocols (default: %(default)s)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="the server model's max batch")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS,
                        help="decode request images from here when present (else random pixels)")


def run(args: argparse.Namespace) -> dict:
    import numpy as np

    from export.triton_repo import write_triton_repository
    from pam.bench.triton_server import TritonServer
    from serving.scoring.backends import OnnxRuntimeBackend, TritonBackend

    protocols = [p for p in args.protocols.split(",") if p]
    largest = max(args.batch)
    images = _request_images(args.photos, largest, np)
    with tempfile.TemporaryDirectory(prefix="pam-bench-triton-") as tmp:
        model = args.model or _tiny_model(Path(tmp) / "tiny.onnx")
        write_triton_repository(model, Path(tmp) / "repo", flavor="cpu", max_batch_size=args.max_batch_size)
        in_process = OnnxRuntimeBackend(model, max_batch_size=args.max_batch_size)
        rows = []
        with TritonServer(Path(tmp) / "repo", log_path=Path(tmp) / "tritonserver.log") as server:
            urls = {"http": server.http_url, "grpc": server.grpc_url}
            for batch in args.batch:
                for concurrency in args.concurrency:
                    rows.append(_measure("onnxruntime in-process", lambda: in_process, False, images[:batch],
                                         concurrency, args.requests))
                    for protocol in protocols:
                        def factory(protocol=protocol):
                            return TritonBackend(urls[protocol], protocol=protocol)

                        rows.append(_measure(f"triton {protocol}", factory, True, images[:batch],
                                             concurrency, args.requests))
        in_process.close()
    baseline = {(r["batch"], r["concurrency"]): r["requests_per_s"] for r in rows if r["engine"].startswith("onnx")}
    for r in rows:
        r["vs_in_process"] = round(r["requests_per_s"] / baseline[(r["batch"], r["concurrency"])], 3)
    summary = {
        "model": str(args.model) if args.model else "tiny contract graph (serving overhead only)",
        "server": "tritonserver 2.51 (nvidia-pytriton wheel), CPU flavor: Python backend + onnxruntime",
        "cores": os.cpu_count(),
        "requests_per_setting": args.requests,
        "rows": rows,
    }
    summary["_render"] = render(summary)
    return summary


def _measure(engine: str, factory, own_client_per_thread: bool, batch, concurrency: int, requests: int) -> dict:
    """`concurrency` threads send `requests` requests in all, back to back; latency per request."""

    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    remaining = [requests]
    ready = threading.Barrier(concurrency + 1)
    shared = None if own_client_per_thread else factory()

    def client() -> None:
        backend = factory() if own_client_per_thread else shared
        try:
            for _ in range(2):  # warm-up: connections, the first run of each shape
                backend.score(batch)
            ready.wait()
            while True:
                with lock:
                    if remaining[0] <= 0:
                        break
                    remaining[0] -= 1
                start = time.perf_counter()
                backend.score(batch)
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
        except BaseException as exc:
            errors.append(exc)
            ready.abort()
        finally:
            if own_client_per_thread:
                backend.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        pass
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    summary = seconds_summary(latencies, digits=2)
    return {
        "engine": engine,
        "batch": len(batch),
        "concurrency": concurrency,
        "requests_per_s": round(len(latencies) / wall, 1),
        "images_per_s": round(len(latencies) * len(batch) / wall, 1),
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
    }


def _request_images(photos: Path, count: int, np):
    from export.preprocess import DecodeError, decode_file

    images = []
    if photos and Path(photos).is_dir():
        for path in sorted(Path(photos).iterdir())[:: 37]:
            try:
                images.append(decode_file(path))
            except DecodeError:
                continue
            if len(images) == count:
                break
    while len(images) < count:
        images.append(np.random.default_rng(len(images)).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    return np.stack(images)


def _tiny_model(path: Path) -> Path:
    """The tiny contract graph (pam.bench.tiny_graph: onnx.helper, no torch)."""
    try:
        from pam.bench.tiny_graph import build_tiny_feature_model
    except ImportError as exc:  # onnx is in the train and test extras
        raise SystemExit(f"pam bench triton: the tiny graph needs the onnx package ({exc}); pass --model") from exc
    return build_tiny_feature_model(path, model_version="bench-tiny")


def render(s: dict) -> str:
    lines = [f"model: {s['model']}", f"server: {s['server']}; {s['cores']} cores shared by client and server",
             f"{'engine':24s} {'batch':>5s} {'conc':>4s} {'req/s':>8s} {'img/s':>8s} {'p50 ms':>8s} "
             f"{'p99 ms':>8s} {'vs in-process':>13s}"]
    for r in s["rows"]:
        lines.append(f"{r['engine']:24s} {r['batch']:5d} {r['concurrency']:4d} {r['requests_per_s']:8.1f} "
                     f"{r['images_per_s']:8.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['vs_in_process']:13.2f}")
    return "\n".join(lines)
