"""`pam export RUN`: the fused five-crop graph of a trained run, as one ONNX file, checked.

Writes into --out (default artifacts/models/<model_version>/): pam_features.onnx,
pam_features.safetensors (the same weights, for the torch backend), model_card.md and
model_card.json, optionally pam_features_int8.onnx (--int8) and pam_features.plan (TensorRT,
where it and a GPU exist), then fills a Triton model repository (--triton-flavor gpu: the
repository's model_repository/; cpu: a Python-backend repository in --triton-repo).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

HELP = "Export the fused five-crop graph (ONNX, INT8, TensorRT, Triton repository, model card)"
PARITY_TOLERANCE = 1e-4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="a `pam train` run folder (or its model.safetensors)")
    parser.add_argument("--out", type=Path, help="default artifacts/models/<model_version>/")
    parser.add_argument("--photos", type=Path, help="real photos for the parity check and INT8 "
                        "calibration (default: the run's training photos)")
    parser.add_argument("--parity-images", type=int, default=16)
    parser.add_argument("--int8", action="store_true", help="also write an INT8 CPU graph")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--int8-eval-images", type=int, default=64,
                        help="photos (not used for calibration) the INT8 graph is compared on")
    parser.add_argument("--tensorrt", choices=("auto", "require", "skip"), default="auto",
                        help="build a TensorRT FP16 plan for the GPU flavor (auto: where possible)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--triton-flavor", choices=("gpu", "cpu", "none"), default="gpu")
    parser.add_argument("--triton-repo", type=Path, help="repository folder (gpu default: "
                        "./model_repository when it exists; cpu: required)")


def run(args: argparse.Namespace) -> dict:
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"pam export: {exc}") from exc


def _run(args: argparse.Namespace) -> dict:
    import hashlib

    from export import onnx_export as ox
    from export.content_names import CONTENT_NAMES_KEY
    from export.model_card import build_card, write_model_card
    from export.train import load_trained

    if args.triton_flavor == "cpu" and args.triton_repo is None:  # before any slow work
        raise SystemExit("pam export: --triton-flavor cpu needs --triton-repo DIR "
                         "(a CPU repository lives outside git)")
    net, training = load_trained(args.run)
    backbone = training["config"]["backbone"]
    version = ox.make_model_version(backbone, net)
    out = args.out or Path("artifacts/models") / version
    _say(f"exporting {version} (the fused five-crop graph) ...")
    metadata = {"pam_trained_on": Path(training["config"]["ratings"]).name}
    if training.get("content_names"):
        metadata[CONTENT_NAMES_KEY] = json.dumps(training["content_names"])
    onnx_path = ox.export_onnx(net, out / "pam_features.onnx", version, metadata)
    photos_root = args.photos or Path(training["config"]["images"])
    need = args.parity_images + (args.calibration_images + args.int8_eval_images if args.int8 else 0)
    _say(f"decoding up to {need} photos from {photos_root} ...")
    images, photo_ids = _photos(photos_root, need)
    checks: dict = {}
    parity_images = images[:args.parity_images]
    if len(parity_images):
        _say(f"parity: torch vs ONNX Runtime on {len(parity_images)} photos ...")
        parity = ox.parity(net, onnx_path, parity_images)
        parity.update(photos=str(photos_root), tolerance=PARITY_TOLERANCE,
                      ok=parity["max_abs_diff"] <= PARITY_TOLERANCE)
    else:
        parity = {"ok": False, "reason": f"no decodable photos under {photos_root}"}
    checks["parity_torch_vs_onnxruntime"] = parity
    if len(images) >= 2:
        checks["feature_scale"] = feature_scale(ox.run_onnx(ox.ort_session(onnx_path), images))
    flops = ox.count_flops(onnx_path, batch=1)
    from export.torch_backend import WEIGHTS_FILE, save_weights

    files = {"onnx": str(onnx_path),  # the same weights for the torch backend (torch:OUT)
             "torch_weights": str(save_weights(net, out / WEIGHTS_FILE, version))}
    if args.int8:
        _say("INT8: calibrating, quantizing, comparing with float32 ...")
        checks["int8"] = _int8(onnx_path, out / "pam_features_int8.onnx", images, args)
        files["onnx_int8"] = str(out / "pam_features_int8.onnx")
    plan = _tensorrt(onnx_path, out / "pam_features.plan", args)
    checks["tensorrt"] = plan
    if plan.get("plan"):
        files["tensorrt_plan"] = plan["plan"]
    export_info = {
        "model_version": version, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "graph": {"file": onnx_path.name,
                  "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
                  "opset": ox.OPSET, "crop_policy": ox.read_metadata(onnx_path)[ox.CROP_POLICY_KEY],
                  "flops_per_image": flops["total"], "flops_breakdown": flops,
                  "bytes": onnx_path.stat().st_size},
        "checks": checks}
    md, js = write_model_card(out, build_card(export_info, training))
    files.update(model_card_md=str(md), model_card_json=str(js))
    triton = _triton(onnx_path, plan.get("plan"), args)
    summary = {"model_version": version, "out": str(out), "files": files,
               "flops_per_image": flops["total"], "parity": parity, "int8": checks.get("int8"),
               "tensorrt": plan, "triton": triton, "feature_scale": checks.get("feature_scale"),
               "validation_rho": (training["history"].get("aesthetics") or [{}])[-1].get("val_rho"),
               "photos_checked": photo_ids[:args.parity_images]}
    summary["ok"] = bool(parity.get("ok")) and not (args.tensorrt == "require" and not plan.get("plan"))
    return summary


def _say(message: str) -> None:
    """Progress on stderr (stdout carries the summary, one JSON object with --json)."""
    print(f"pam export: {message}", file=sys.stderr, flush=True)


def feature_scale(outputs: dict) -> dict:
    """How big aes_feat is next to aes_score, for Active-PAM's v = [w_aes * aes_feat, aes_score]:
    the paper's w_aes = 0.001 fits its Inception-BN features; `w_aes_balanced` makes both parts
    of v spread alike on these photos (total std of w_aes * aes_feat = std of aes_score)."""
    import numpy as np

    from personalize.features import W_AES_PAPER

    score_std = float(np.std(outputs["aes_score"]))
    feat_std = float(np.sqrt(np.var(outputs["aes_feat"], axis=0).sum()))
    return {"photos": len(outputs["aes_score"]), "aes_score_std": score_std,
            "aes_feat_mean_norm": float(np.linalg.norm(outputs["aes_feat"], axis=1).mean()),
            "aes_feat_total_std": feat_std,
            "w_aes_balanced": score_std / feat_std if feat_std > 0 else None,
            "paper_w_aes_feat_to_score_spread": W_AES_PAPER * feat_std / score_std if score_std > 0 else None}


def _photos(root: Path, n: int):
    """Up to n decoded photos from root (sorted ids; undecodable ones skipped)."""
    import numpy as np

    from export.datasets import list_images
    from export.preprocess import DecodeError, decode_file

    images, ids = [], []
    for image_id, path in list_images(root):
        if len(images) >= n:
            break
        try:
            images.append(decode_file(path))
            ids.append(image_id)
        except (DecodeError, OSError):
            continue
    return (np.stack(images) if images else np.zeros((0, 256, 256, 3), np.uint8)), ids


def _int8(fp32_path: Path, int8_path: Path, images, args) -> dict:
    import numpy as np
    from scipy.stats import spearmanr

    from export import onnx_export as ox
    from export.quantize import quantize_int8

    start = args.parity_images
    calibration = images[start:start + args.calibration_images]
    evaluation = images[start + args.calibration_images:]
    if len(calibration) == 0:
        return {"ok": False, "reason": "no photos left for INT8 calibration"}
    quantize_int8(fp32_path, int8_path, calibration)
    if len(evaluation) < 3:
        return {"file": str(int8_path), "calibration_photos": len(calibration),
                "reason": "too few photos left to compare the INT8 graph with float32"}
    a = ox.run_onnx(ox.ort_session(fp32_path), evaluation)
    b = ox.run_onnx(ox.ort_session(int8_path), evaluation)
    rho = float(spearmanr(a["aes_score"][:, 0], b["aes_score"][:, 0]).statistic)
    return {"file": str(int8_path), "model_version": ox.read_metadata(int8_path)[ox.MODEL_VERSION_KEY],
            "calibration_photos": len(calibration), "eval_photos": len(evaluation),
            "score_rho_vs_fp32": rho,
            "score_max_abs_diff": float(np.abs(a["aes_score"] - b["aes_score"]).max()),
            "aes_feat_rel_err": float(np.abs(a["aes_feat"] - b["aes_feat"]).mean()
                                      / max(np.abs(a["aes_feat"]).mean(), 1e-12)),
            "ok": rho > 0.995}


def _tensorrt(onnx_path: Path, plan_path: Path, args) -> dict:
    from export.tensorrt import TensorRTUnavailable, build_plan, unavailable_reason

    if args.tensorrt == "skip" or (args.triton_flavor != "gpu" and args.tensorrt == "auto"):
        return {"built": False, "reason": "not asked for (--tensorrt skip or a non-GPU flavor)"}
    reason = unavailable_reason()
    if reason:
        if args.tensorrt == "require":
            raise SystemExit(f"pam export: cannot build a TensorRT plan: {reason}")
        return {"built": False, "reason": reason}
    try:
        return {"built": True, **build_plan(onnx_path, plan_path, args.max_batch_size)}
    except (TensorRTUnavailable, RuntimeError) as exc:
        if args.tensorrt == "require":
            raise SystemExit(f"pam export: TensorRT build failed: {exc}") from exc
        return {"built": False, "reason": str(exc)}


def _triton(onnx_path: Path, plan_path: str | None, args) -> dict:
    if args.triton_flavor == "none":
        return {"written": False, "reason": "--triton-flavor none"}
    repo = args.triton_repo
    if repo is None:
        repo = Path("model_repository")
        if not repo.is_dir():
            return {"written": False, "reason": "no ./model_repository here; pass --triton-repo"}
    try:
        from export.triton_repo import write_triton_repository
    except ImportError as exc:
        return {"written": False, "reason": f"export.triton_repo is not available ({exc})"}
    result = write_triton_repository(onnx_path, repo, flavor=args.triton_flavor,
                                     max_batch_size=args.max_batch_size, plan_path=plan_path)
    return {"written": True, "repository": str(repo), "flavor": args.triton_flavor,
            "models": {name: str(folder) for name, folder in result.items()}}


def exit_code(summary: dict) -> int:
    return 0 if summary.get("ok") else 1


def render(summary: dict) -> str:
    p = summary["parity"]
    lines = [f"exported {summary['model_version']} -> {summary['out']}",
             f"  graph: {summary['files']['onnx']} ({summary['flops_per_image'] / 1e9:.2f} GFLOP "
             "per image, five crops)"]
    if "max_abs_diff" in p:
        lines.append(f"  parity torch vs ONNX Runtime on {p['images']} photos: max abs diff "
                     f"{p['max_abs_diff']:.2e} ({'ok' if p['ok'] else 'FAILED'}, tolerance {p['tolerance']:g})")
    else:
        lines.append(f"  parity: FAILED ({p.get('reason')})")
    if summary.get("int8"):
        q = summary["int8"]
        rho = q.get("score_rho_vs_fp32")
        lines.append(f"  INT8: {q.get('file')}; score rho vs float32 "
                     f"{'n/a' if rho is None else f'{rho:.4f}'} ({q.get('reason', 'ok' if q.get('ok') else 'below 0.995')})")
    t = summary["tensorrt"]
    lines.append(f"  TensorRT: {t['plan'] if t.get('built') else 'not built: ' + t['reason']}")
    tr = summary["triton"]
    lines.append(f"  Triton: {tr['repository'] + ' (' + tr['flavor'] + ')' if tr.get('written') else 'not written: ' + tr['reason']}")
    lines.append(f"  model card: {summary['files']['model_card_md']}")
    return "\n".join(lines)
