"""`pam bench scoring`: five-crop scoring of real photos, side by side in one run.

    fused           the exported graph (uint8 [B, 256, 256, 3] in, the crops sliced inside) in
                    ONNX Runtime: one call at a time, intra-op threads = --threads
    fused, per-core the same graph in --threads sessions side by side, one intra-op thread each (whole
                    batches run side by side instead of every op split across the cores)
    eager           the obvious alternative: torch eager, one image at a time, each of its five
                    224x224 crops a separate forward pass, then the means (same weights)
    int8            the INT8 graph of export.quantize, in both arrangements; the rho of its
                    scores against float32 measures what it costs

FLOPs per image are counted from the graph (Conv/Gemm, 2 per multiply-add); the fraction of peak
is of the float32 FMA peak measured on these cores (pam.bench.peak: an FMA kernel compiled for this
processor, one thread per core), so it means the same on AVX2 and AVX-512 machines. Photos are
decoded first, so the figures are scoring alone. Passes interleave the variants and the best
pass of each counts, so a burst of someone else's load hits all alike; images per CPU-second
(this process's CPU time) are reported too, as they survive a busy machine better.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from pam.bench.peak import cpu_fma_peak
from pam.bench.photos import bench_photos

HELP = "fused five-crop ONNX vs torch eager per image; FLOPs, FMA peak fraction; INT8"
TARGETS = {"speedup": 3.5, "fraction_of_peak": 0.60, "int8_rho": 0.995}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        help="efficientnet_lite0, inception_bn, tiny, or 'all' (the first two)")
    parser.add_argument("--run", type=Path, help="a trained `pam train` run to take weights from "
                        "(default: the backbone's pretrained trunk with freshly initialised heads)")
    parser.add_argument("--photos", type=Path, help="folder of photos (default: ../shared/photos, "
                        "else the sample photos of the installed wheels)")
    parser.add_argument("--images", type=int, default=64, help="photos scored by the fused graph")
    parser.add_argument("--eager-images", type=int, default=8, help="photos scored eagerly (slow)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the best counts")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--explore", action="store_true",
                        help="also time ORT optimisation levels, batch sizes and thread counts")


def run(args: argparse.Namespace) -> dict:
    backbones = ["efficientnet_lite0", "inception_bn"] if args.backbone == "all" else [args.backbone]
    results = {b: _bench_backbone(b, args) for b in backbones}
    summary = results[backbones[0]] if len(backbones) == 1 else {"backbones": results}
    summary["_render"] = "\n\n".join(render(r) for r in results.values())
    return summary


def _photos(folder: Path, n: int):
    import numpy as np

    from export.datasets import list_images
    from export.preprocess import DecodeError, decode_file

    images = []
    for _, path in list_images(folder):
        if len(images) >= n:
            break
        try:
            images.append(decode_file(path))
        except DecodeError:
            continue
    if not images:
        raise SystemExit(f"pam bench scoring: no decodable photos in {folder}")
    return np.stack(images)


class _Clock:
    """Best wall time and best process CPU time (all threads) over the passes of one variant.
    CPU time stays meaningful when other programs hold the cores: it counts only the time this
    process ran (idle spinning of the runtimes' worker threads included)."""

    def __init__(self):
        self.wall = self.cpu = float("inf")

    def time(self, fn) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        self.wall = min(self.wall, time.perf_counter() - wall)
        self.cpu = min(self.cpu, time.process_time() - cpu)


class _Fused:
    """Score `images` in batches with one session: `calls` batches in flight at once."""

    def __init__(self, path: Path, images, batch: int, threads: int, calls: int, level: str = "all"):
        from concurrent.futures import ThreadPoolExecutor

        from export import onnx_export as ox

        # one session per call in flight: separate sessions (own memory arenas) scored 4-5% more
        # than concurrent calls into one session
        self.sessions = [ox.ort_session(path, threads=threads, level=level) for _ in range(calls)]
        self.session = self.sessions[0]
        self.images, self.batch, self.calls = images, batch, calls
        self.pool = ThreadPoolExecutor(calls) if calls > 1 else None
        self()  # warm-up: allocations, kernel selection

    def _one(self, k: int):
        from export.onnx_export import run_onnx

        start = k * self.batch
        return run_onnx(self.sessions[k % self.calls], self.images[start:start + self.batch], batch=self.batch)

    def __call__(self):
        chunks = range(-(-len(self.images) // self.batch))
        return list(self.pool.map(self._one, chunks)) if self.pool else [self._one(k) for k in chunks]

    def close(self):
        if self.pool:
            self.pool.shutdown()


class _Backend:
    """The product's ONNX Runtime backend (serving.scoring.backends.OnnxRuntimeBackend, as the batch job
    opens it): one single-thread session per core; each call of `batch` photos is run one photo
    per session.run, the sessions taking the next photo as they finish."""

    def __init__(self, path: Path, images, batch: int, threads: int):
        from serving.scoring.backends import OnnxRuntimeBackend

        self.backend = OnnxRuntimeBackend(path, parallel_sessions=threads, max_batch_size=batch)
        self.session = self.backend._sessions[0]
        self.images, self.batch = images, batch
        self()  # warm-up

    def __call__(self):
        return [self.backend.score(self.images[start:start + self.batch])
                for start in range(0, len(self.images), self.batch)]

    def close(self):
        self.backend.close()


def _bench_backbone(backbone: str, args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from export import onnx_export as ox
    from export.networks import create_model
    from export.networks.model import score_one_crop_at_a_time

    torch.set_num_threads(args.threads)
    net, weights = None, "untrained heads"
    if args.run:
        from export.train import load_trained

        trained, _ = load_trained(args.run)
        if args.backbone != "all" or trained.backbone.name == backbone:  # --run names its backbone
            net, backbone, weights = trained, trained.backbone.name, str(args.run)
    if net is None:
        net = create_model(backbone).eval()
    n = max(args.images, args.batch)
    photos = _photos(bench_photos(args.photos, "scoring"), n + (0 if args.no_int8 else args.calibration_images))
    scoring, calibration = photos[:n], photos[n:]
    eager_images = scoring[:max(1, args.eager_images)]
    cores = len(os.sched_getaffinity(0))
    peak_measured = cpu_fma_peak(cores)
    peak = peak_measured["gflops"] * 1e9
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = ox.export_onnx(net, Path(tmp) / "fp32.onnx", ox.make_model_version(backbone, net))
        flops = ox.count_flops(fp32)["total"]
        graphs = {"fp32": fp32}
        if not args.no_int8 and len(calibration):
            from export.quantize import quantize_int8

            graphs["int8"] = quantize_int8(fp32, Path(tmp) / "int8.onnx", calibration)
        runners = {}
        for name, path in graphs.items():
            runners[f"{name}_one_call"] = _Fused(path, scoring, args.batch, args.threads, 1)
            if args.threads > 1:
                runners[f"{name}_per_core"] = _Fused(path, scoring, args.batch, 1, args.threads)
                runners[f"{name}_per_core_per_photo"] = _Backend(path, scoring, args.batch, args.threads)
        # eager at the default thread count and at one thread: torch's OpenMP threads can be
        # several times slower than one thread on small per-crop ops; the faster one is the baseline
        eager_threads = sorted({args.threads, 1})

        def eager(threads: int):
            torch.set_num_threads(threads)
            score_one_crop_at_a_time(net, eager_images)

        for threads in eager_threads:  # warm-up
            torch.set_num_threads(threads)
            score_one_crop_at_a_time(net, eager_images[:1])
        clocks = {name: _Clock() for name in [*runners, *(f"eager_{t}" for t in eager_threads)]}
        for _ in range(max(1, args.repeat)):  # interleaved passes
            for name, runner in runners.items():
                clocks[name].time(runner)
            for threads in eager_threads:
                clocks[f"eager_{threads}"].time(lambda threads=threads: eager(threads))
        rates = {name: _rate(len(eager_images) if name.startswith("eager") else n, clock, flops, peak, cores)
                 for name, clock in clocks.items()}
        best_eager = max((k for k in rates if k.startswith("eager")), key=lambda k: rates[k]["images_per_s"])
        rates["eager"] = {**rates[best_eager], "threads": int(best_eager.split("_")[1]),
                          "images_per_s_by_threads": {k.split("_")[1]: rates[k]["images_per_s"]
                                                      for k in rates if k.startswith("eager_")}}
        best = max((k for k in rates if k.startswith("fp32")), key=lambda k: rates[k]["images_per_s"])
        result = {
            "backbone": backbone, "weights": weights,
            "photos": n, "batch": args.batch, "threads": args.threads, "cores": cores,
            "flops_per_image": flops, "peak_gflops": peak / 1e9, "peak_source": peak_measured["source"],
            "fused_onnxruntime": {**rates[best], "arrangement": _arrangement(best, args)},
            "fused_variants": {k.removeprefix("fp32_"): rates[k] for k in rates if k.startswith("fp32")},
            "torch_eager_per_crop": {**rates["eager"], "photos": len(eager_images)},
        }
        sgemm = sgemm_reference()
        result["sgemm_gflops_per_cpu_s"] = sgemm
        for x in (*result["fused_variants"].values(), result["torch_eager_per_crop"]):
            x["fraction_of_sgemm_per_cpu_s"] = x["gflops_per_cpu_s"] / sgemm
        result["speedup"] = rates[best]["images_per_s"] / rates["eager"]["images_per_s"]
        result["speedup_cpu_time"] = rates[best]["images_per_cpu_s"] / rates["eager"]["images_per_cpu_s"]
        if "int8" in graphs:
            best_q = max((k for k in rates if k.startswith("int8")), key=lambda k: rates[k]["images_per_s"])
            a = ox.run_onnx(runners[best].session, scoring)
            b = ox.run_onnx(runners[best_q].session, scoring)
            result["int8"] = {
                **rates[best_q], "arrangement": _arrangement(best_q, args),
                "speedup_vs_fp32": rates[best_q]["images_per_s"] / rates[best]["images_per_s"],
                "speedup_vs_fp32_cpu_time": rates[best_q]["images_per_cpu_s"] / rates[best]["images_per_cpu_s"],
                "score_rho_vs_fp32": float(spearmanr(a["aes_score"][:, 0], b["aes_score"][:, 0]).statistic),
                "aes_feat_rel_err": float(np.abs(a["aes_feat"] - b["aes_feat"]).mean()
                                          / max(np.abs(a["aes_feat"]).mean(), 1e-12)),
                "calibration_photos": len(calibration),
                "quantization": ox.read_metadata(graphs["int8"]).get("pam_quantization")}
        for runner in runners.values():
            runner.close()
        if args.explore:
            result["explore"] = _explore(fp32, scoring, flops, peak, cores, args)
            result["explore"] += _unshared(net, backbone, Path(tmp), scoring, peak, cores, args)
    f = result["fused_onnxruntime"]
    result["targets"] = {
        f"speedup >= {TARGETS['speedup']}": result["speedup"] >= TARGETS["speedup"],
        f"fraction_of_peak >= {TARGETS['fraction_of_peak']}": f["fraction_of_peak"] >= TARGETS["fraction_of_peak"]}
    if "int8" in result:
        result["targets"][f"int8 rho > {TARGETS['int8_rho']}"] = result["int8"]["score_rho_vs_fp32"] > TARGETS["int8_rho"]
    return result


def sgemm_reference(size: int = 1536, repeat: int = 3) -> float:
    """GFLOP per CPU-second of one thread multiplying two float32 matrices (numpy's BLAS): what a
    core's BLAS sustains on a large product (the FMA peak is what no kernel can pass)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = (rng.random((size, size), dtype=np.float32) for _ in range(2))
    clock = _Clock()
    with threadpool_limits(1):
        a @ b
        for _ in range(repeat):
            clock.time(lambda: a @ b)
    return 2 * size**3 / clock.cpu / 1e9


def _arrangement(name: str, args) -> str:
    if name.endswith("per_core_per_photo"):
        return (f"{args.threads} sessions side by side x 1 thread, calls of {args.batch} photos run one photo "
                "per session run (serving.scoring.backends)")
    if name.endswith("per_core"):
        return f"{args.threads} sessions side by side x 1 thread, batch {args.batch} each"
    return f"one call at a time x {args.threads} threads, batch {args.batch}"


def _rate(n: int, clock: _Clock, flops: float, peak: float, cores: int) -> dict:
    """Images/s of wall time (the figure that counts) and per CPU-second of this process (the
    one that survives a busy machine), each with its GFLOP/s and fraction of the FMA peak (per
    CPU-second: of one core's peak)."""
    wall, cpu = n / clock.wall, n / clock.cpu
    return {"images_per_s": wall, "gflops": wall * flops / 1e9, "fraction_of_peak": wall * flops / peak,
            "images_per_cpu_s": cpu, "gflops_per_cpu_s": cpu * flops / 1e9,
            "fraction_of_core_peak_per_cpu_s": cpu * flops / (peak / cores)}


def _explore(fp32: Path, scoring, flops: float, peak: float, cores: int, args) -> list[dict]:
    variants = [("all", args.threads, b, 1) for b in (1, 4, 16, 32)]
    variants += [("extended", args.threads, args.batch, 1), ("basic", args.threads, args.batch, 1),
                 ("disable", args.threads, args.batch, 1), ("all", 1, args.batch, 1),
                 ("all", 1, 4, cores)]
    rows = []
    for level, threads, batch, calls in variants:
        images = scoring[:max(batch * calls, min(len(scoring), 2 * batch * calls))]
        runner = _Fused(fp32, images, batch, threads, calls, level)
        clock = _Clock()
        for _ in range(max(1, args.repeat)):
            clock.time(runner)
        runner.close()
        rows.append({"optimization": level, "threads": threads, "batch": batch, "calls": calls,
                     **_rate(len(images), clock, flops, peak, cores)})
    return rows


def _unshared(net, backbone: str, tmp: Path, scoring, peak: float, cores: int, args) -> list[dict]:
    """The same graph with every crop's early layers computed separately (no shared prefix)."""
    from export import onnx_export as ox
    from export.networks import FiveCropScorer

    if net.backbone.prefix_reach() is None:
        return []
    path = ox.export_onnx(net, tmp / "unshared.onnx", ox.make_model_version(backbone, net),
                          scorer=FiveCropScorer(net, share_early_layers=False))
    flops = ox.count_flops(path)["total"]
    rows = []
    for threads, calls in ((args.threads, 1), (1, args.threads)):
        runner = _Fused(path, scoring, args.batch, threads, calls)
        clock = _Clock()
        for _ in range(max(1, args.repeat)):
            clock.time(runner)
        runner.close()
        rows.append({"optimization": "unshared", "threads": threads, "batch": args.batch,
                     "calls": calls, "flops_per_image": flops,
                     **_rate(len(scoring), clock, flops, peak, cores)})
    return rows


def render(r: dict) -> str:
    def row(label: str, x: dict) -> str:
        sgemm = x.get("fraction_of_sgemm_per_cpu_s")
        return (f"  {label:30s} {x['images_per_s']:7.2f} img/s {x['gflops']:6.1f} GFLOP/s "
                f"{100 * x['fraction_of_peak']:5.1f}% of peak | {x['images_per_cpu_s']:6.2f} img per "
                f"CPU-s, {100 * x['fraction_of_core_peak_per_cpu_s']:5.1f}% of a core's peak"
                + (f", {100 * sgemm:4.1f}% of sgemm" if sgemm is not None else ""))

    lines = [f"five-crop scoring, {r['backbone']} ({r['weights']}): {r['flops_per_image'] / 1e9:.2f} "
             f"GFLOP per image; {r['threads']} threads on {r['cores']} cores, fp32 FMA peak "
             f"{r['peak_gflops']:.0f} GFLOP/s (measured: {r['peak_source']}); one thread's sgemm: {r['sgemm_gflops_per_cpu_s']:.0f} "
             "GFLOP per CPU-s"]
    for name, x in r["fused_variants"].items():
        lines.append(row(f"fused ONNX Runtime, {name.replace('_', ' ')}", x))
    e = r["torch_eager_per_crop"]
    lines.append(row(f"torch eager, per crop, {e['threads']} thr", e))
    lines.append("    (eager img/s by torch threads: " + ", ".join(
        f"{t}: {v:.2f}" for t, v in e["images_per_s_by_threads"].items()) + "; the faster is the baseline)")
    lines.append(f"  fused ({r['fused_onnxruntime']['arrangement']}) / eager = {r['speedup']:.2f}x "
                 f"(wall), {r['speedup_cpu_time']:.2f}x (CPU time)")
    if "int8" in r:
        q = r["int8"]
        lines.append(row("INT8 graph, " + ("per core" if "side by side" in q["arrangement"] else "one call"), q))
        lines.append(f"  INT8 / float32 = {q['speedup_vs_fp32']:.2f}x (wall), "
                     f"{q['speedup_vs_fp32_cpu_time']:.2f}x (CPU time); score rho vs float32 "
                     f"{q['score_rho_vs_fp32']:.4f}, aes_feat mean relative error {q['aes_feat_rel_err']:.3f}")
    for x in r.get("explore", []):
        lines.append(f"    explore {x['optimization']:8s} threads {x['threads']} batch {x['batch']:3d} "
                     f"x{x['calls']} calls: {x['images_per_s']:6.2f} img/s "
                     f"{100 * x['fraction_of_peak']:5.1f}% of peak, {x['images_per_cpu_s']:6.2f} img per CPU-s")
    lines.append("  targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in r["targets"].items()))
    return "\n".join(lines)
