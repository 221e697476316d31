"""`pam bench scoring`: five-crop scoring of real photos, side by side in one run.

    fused       the exported graph (uint8 [B, 256, 256, 3] in, crops sliced inside) in ONNX
                Runtime, batch --batch
    eager       the obvious alternative: torch eager, one image at a time, each of its five
                224x224 crops a separate forward pass, then the means (same weights)
    int8        the INT8 graph of export.quantize (speed, and rho of its scores vs float32)

FLOPs per image are counted from the graph (Conv/Gemm, 2 per multiply-add); the fraction of the
float32 FMA peak uses cores x 2 FMA units x 8 lanes x 2 FLOP x clock (--clock-ghz). Photos are
decoded first, so the figures are scoring alone. Passes interleave the variants and the best
pass of each counts, so a burst of someone else's load on a shared machine hits all alike.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

HELP = "fused five-crop ONNX vs torch eager per image; FLOPs, FMA peak fraction; INT8"
DEFAULT_PHOTOS = Path(__file__).resolve().parents[2].parent / "shared" / "photos" / "imagenet-sample"
FLOP_PER_CYCLE_PER_CORE = 2 * 8 * 2  # 2 FMA units x 8 fp32 lanes (256-bit) x 2 FLOP per FMA
TARGETS = {"speedup": 3.5, "fraction_of_peak": 0.60, "int8_rho": 0.995}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        help="efficientnet_lite0, inception_bn, tiny, or 'all' (the first two)")
    parser.add_argument("--run", type=Path, help="a trained `pam train` run to take weights from "
                        "(default: the backbone's pretrained trunk with freshly initialised heads)")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--images", type=int, default=64, help="photos scored by the fused graph")
    parser.add_argument("--eager-images", type=int, default=8, help="photos scored eagerly (slow)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the best counts")
    parser.add_argument("--clock-ghz", type=float, default=2.45)
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--calibration-images", type=int, default=32)
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


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _bench_backbone(backbone: str, args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from export import onnx_export as ox
    from export.networks import create_model
    from export.networks.model import score_one_crop_at_a_time

    torch.set_num_threads(args.threads)
    if args.run:
        from export.train import load_trained

        net, _ = load_trained(args.run)
        backbone = net.backbone.name
    else:
        net = create_model(backbone).eval()
    n_fused = max(args.images, args.batch)
    need = n_fused + (0 if args.no_int8 else args.calibration_images)
    photos = _photos(args.photos, need)
    scoring, calibration = photos[:n_fused], photos[n_fused:]
    cores = len(os.sched_getaffinity(0))
    peak = cores * FLOP_PER_CYCLE_PER_CORE * args.clock_ghz * 1e9

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = ox.export_onnx(net, Path(tmp) / "fp32.onnx", ox.make_model_version(backbone, net))
        flops = ox.count_flops(fp32)["total"]
        session = ox.ort_session(fp32, threads=args.threads)

        def fused(sess=session, images=scoring, batch=args.batch):
            for s in range(0, len(images), batch):
                ox.run_onnx(sess, images[s:s + batch])

        eager_images = scoring[:max(1, args.eager_images)]
        fused(images=scoring[:args.batch])  # warm-up: ORT allocations, oneDNN primitives
        score_one_crop_at_a_time(net, eager_images[:1])
        t_fused, t_eager = float("inf"), float("inf")
        for _ in range(max(1, args.repeat)):  # interleaved passes
            t_fused = min(t_fused, _best(fused, 1))
            t_eager = min(t_eager, _best(lambda: score_one_crop_at_a_time(net, eager_images), 1))
        fused_rate, eager_rate = len(scoring) / t_fused, len(eager_images) / t_eager
        result = {
            "backbone": backbone, "weights": str(args.run) if args.run else "untrained heads",
            "photos": len(scoring), "batch": args.batch, "threads": args.threads, "cores": cores,
            "flops_per_image": flops, "peak_gflops": peak / 1e9,
            "fused_onnxruntime": _rate(fused_rate, flops, peak),
            "torch_eager_per_crop": {**_rate(eager_rate, flops, peak), "photos": len(eager_images)},
            "speedup": fused_rate / eager_rate,
        }
        if not args.no_int8 and len(calibration):
            from export.quantize import quantize_int8

            int8 = quantize_int8(fp32, Path(tmp) / "int8.onnx", calibration)
            q_session = ox.ort_session(int8, threads=args.threads)
            fused(sess=q_session, images=scoring[:args.batch])
            t_int8 = float("inf")
            for _ in range(max(1, args.repeat)):
                t_int8 = min(t_int8, _best(lambda: fused(sess=q_session), 1))
                t_fused = min(t_fused, _best(fused, 1))
            a, b = ox.run_onnx(session, scoring), ox.run_onnx(q_session, scoring)
            result["fused_onnxruntime"] = _rate(len(scoring) / t_fused, flops, peak)
            result["speedup"] = result["fused_onnxruntime"]["images_per_s"] / eager_rate
            result["int8"] = {
                "images_per_s": len(scoring) / t_int8,
                "speedup_vs_fp32": (len(scoring) / t_int8) / result["fused_onnxruntime"]["images_per_s"],
                "score_rho_vs_fp32": float(spearmanr(a["aes_score"][:, 0], b["aes_score"][:, 0]).statistic),
                "aes_feat_rel_err": float(np.abs(a["aes_feat"] - b["aes_feat"]).mean()
                                          / max(np.abs(a["aes_feat"]).mean(), 1e-12)),
                "calibration_photos": len(calibration)}
        if args.explore:
            result["explore"] = _explore(fp32, scoring, flops, peak, args)
    f = result["fused_onnxruntime"]
    result["targets"] = {
        f"speedup >= {TARGETS['speedup']}": result["speedup"] >= TARGETS["speedup"],
        f"fraction_of_peak >= {TARGETS['fraction_of_peak']}": f["fraction_of_peak"] >= TARGETS["fraction_of_peak"]}
    if "int8" in result:
        result["targets"][f"int8 rho > {TARGETS['int8_rho']}"] = result["int8"]["score_rho_vs_fp32"] > TARGETS["int8_rho"]
    return result


def _rate(images_per_s: float, flops: float, peak: float) -> dict:
    return {"images_per_s": images_per_s, "gflops": images_per_s * flops / 1e9,
            "fraction_of_peak": images_per_s * flops / peak}


def _explore(fp32: Path, scoring, flops: float, peak: float, args) -> list[dict]:
    from export import onnx_export as ox

    rows = []
    variants = [("all", args.threads, b) for b in (1, 4, 16, 32)]
    variants += [("extended", args.threads, args.batch), ("basic", args.threads, args.batch),
                 ("all", 1, args.batch)]
    for level, threads, batch in variants:
        session = ox.ort_session(fp32, threads=threads, level=level)
        images = scoring[:max(batch, min(len(scoring), 2 * batch))]

        def fused(session=session, images=images, batch=batch):
            for s in range(0, len(images), batch):
                ox.run_onnx(session, images[s:s + batch])

        fused()
        t = _best(fused, args.repeat)
        rows.append({"optimization": level, "threads": threads, "batch": batch,
                     **_rate(len(images) / t, flops, peak)})
    return rows


def render(r: dict) -> str:
    f, e = r["fused_onnxruntime"], r["torch_eager_per_crop"]
    lines = [f"five-crop scoring, {r['backbone']} ({r['weights']}): {r['flops_per_image'] / 1e9:.2f} "
             f"GFLOP per image; {r['threads']} threads on {r['cores']} cores, fp32 FMA peak "
             f"{r['peak_gflops']:.0f} GFLOP/s",
             f"  fused ONNX Runtime, batch {r['batch']:3d}: {f['images_per_s']:7.2f} img/s  "
             f"{f['gflops']:6.1f} GFLOP/s  {100 * f['fraction_of_peak']:5.1f}% of peak",
             f"  torch eager, per crop     : {e['images_per_s']:7.2f} img/s  {e['gflops']:6.1f} "
             f"GFLOP/s  {100 * e['fraction_of_peak']:5.1f}% of peak",
             f"  fused / eager = {r['speedup']:.2f}x"]
    if "int8" in r:
        q = r["int8"]
        lines.append(f"  INT8 graph               : {q['images_per_s']:7.2f} img/s  "
                     f"{q['speedup_vs_fp32']:.2f}x float32; score rho vs float32 "
                     f"{q['score_rho_vs_fp32']:.4f}")
    for row in r.get("explore", []):
        lines.append(f"    explore {row['optimization']:8s} threads {row['threads']} batch "
                     f"{row['batch']:3d}: {row['images_per_s']:6.2f} img/s "
                     f"{100 * row['fraction_of_peak']:5.1f}% of peak")
    lines.append("  targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in r["targets"].items()))
    return "\n".join(lines)
