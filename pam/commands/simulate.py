"""`pam simulate`: write a simulated rater panel as a FLICKR-AES-format data set + feature table.

Files under --out: ratings.csv (worker, imagePair, score; check-image ratings included),
test_workers.txt, check_images.csv (imagePair, score), workers.json (each worker's role and
hidden taste), features/ (a feature store root in DESIGN.md's schema plus the hidden-taste
columns; read with serving.feature_table.FeatureTable(...).read()), panel.json (configuration, frozen
parameters and the calibration statistics). `pam eval ... --panel DIR` reads it back.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import asdict
from pathlib import Path

HELP = "Write a simulated rater panel (FLICKR-AES format + feature table), calibrated to the paper"
MODEL_VERSION_PREFIX = "simulated-panel"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/panel"), help="output folder (default runs/panel)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="panel size relative to the paper's (40k images, 210 workers); 1 = paper")
    parser.add_argument("--kind", choices=("default", "robust"), default="default",
                        help="default: the paper-calibrated panel; robust: the robustness panel (non-linear, "
                             "clustered, shifted taste; noisy attributes; docs/personalize.md)")
    parser.add_argument("--properties", type=Path,
                        help="a feature table (Parquet file or feature-store root) of real photos whose "
                             "attributes, content and aes_feat replace the generated properties")


def read_feature_matrix(path: Path, model_version: str | None = None):
    """A FeatureMatrix from a Parquet file or a feature-store root (its CURRENT version, or
    `model_version`); rows whose error is set are dropped. Returns (FeatureMatrix, the pyarrow table)."""
    import numpy as np
    import pyarrow.parquet as pq

    from personalize.data import DataError, FeatureMatrix
    from serving import feature_table as ft

    path = Path(path)
    if path.is_dir():
        table = ft.FeatureTable(path).read(model_version)
    elif path.is_file():
        table = pq.read_table(path)
    else:
        raise DataError(f"{path}: no such feature table (a .parquet file or a feature-store folder)")
    try:
        cols = ft.to_numpy(table)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
    ok = np.asarray([e is None for e in cols["error"]], dtype=bool)
    ids = np.asarray(cols["image_id"], dtype=object)[ok].astype(str)
    fm = FeatureMatrix(ids, cols["aes_score"][ok].astype(np.float64), cols["aes_feat"][ok],
                       cols["attributes"][ok].astype(np.float64), cols["content"][ok].astype(np.float64))
    return fm, table


def write_panel(panel, out: Path) -> dict:
    """Write every file of the panel; returns {name: path}."""
    import numpy as np
    import pyarrow as pa

    from serving import feature_table as ft

    out.mkdir(parents=True, exist_ok=True)
    r = panel.ratings
    with (out / "ratings.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["worker", "imagePair", "score"])
        w.writerows(zip(r.workers.tolist(), r.images.tolist(), r.scores.astype(int).tolist(), strict=True))
    (out / "test_workers.txt").write_text("\n".join(panel.test_workers) + "\n")
    with (out / "check_images.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["imagePair", "score"])
        w.writerows((k, int(v)) for k, v in panel.check_truth.items())
    (out / "workers.json").write_text(json.dumps(panel.workers, indent=1) + "\n")

    p = panel.properties
    kind = "-robust" if "cluster" in next(iter(panel.workers.values())) else ""
    version = f"{MODEL_VERSION_PREFIX}{kind}-seed{panel.config.seed}"
    table = ft.feature_table(p.image_ids.tolist(), {"aes_score": p.aes_score, "aes_feat": p.aes_feat,
                                                    "attributes": p.attributes, "content": p.content}, version)
    hidden = {
        "shared_quality": pa.array(p.shared_quality.astype(np.float32)),
        "hidden_quality": pa.array(p.hidden_quality.astype(np.float32)),
        "hidden_style": pa.FixedSizeListArray.from_arrays(
            pa.array(p.hidden_style.astype(np.float32).reshape(-1)), p.hidden_style.shape[1]),
        "split": pa.array(p.split.astype(str).tolist()),
    }
    for name, column in hidden.items():
        table = table.append_column(name, column)
    features = out / "features"
    ft.FeatureTable(features).write_version(table, extra={"simulated": True})
    return {"ratings": str(out / "ratings.csv"), "test_workers": str(out / "test_workers.txt"),
            "check_images": str(out / "check_images.csv"), "workers": str(out / "workers.json"),
            "features": str(features), "model_version": version}


def build_panel(seed: int = 0, scale: float = 1.0, properties: Path | None = None, kind: str = "default"):
    from personalize.simulate import PanelConfig, simulate_panel

    config = PanelConfig(seed=seed)
    if kind == "robust":
        from personalize.robust_panel import simulate_robust_panel

        if properties is not None:
            raise SystemExit("pam simulate: the robust panel generates its own properties (drop --properties)")
        return simulate_robust_panel(config if scale == 1.0 else config.scaled(scale))
    base = None
    if properties is not None:
        base, _ = read_feature_matrix(properties)
        scale = base.image_ids.shape[0] / config.n_images
    if scale != 1.0:
        config = config.scaled(scale)
    return simulate_panel(config, base=base)


def run(args: argparse.Namespace) -> dict:
    from personalize import simulate

    started = time.perf_counter()
    panel = build_panel(args.seed, args.scale, args.properties, args.kind)
    files = write_panel(panel, args.out)
    stats = simulate.panel_statistics(panel)
    frozen = {name: getattr(simulate, name) for name in (
        "MEAN", "SIGMA_Q", "X_SHARE", "DEVIATION", "BIAS_SHARE", "TASTE_SHARE", "NOISE_SHARE",
        "HIDDEN_TASTE", "SIGMA_E", "N_STYLE", "FEAT_SCALE")}
    summary = {
        "out": str(args.out),
        "config": asdict(panel.config),
        "kind": args.kind,
        "properties": str(args.properties) if args.properties else "generated",
        "frozen_parameters": frozen,
        "calibration_targets": simulate.CALIBRATION,
        "statistics": stats,
        "files": files,
        "seconds": round(time.perf_counter() - started, 2),
    }
    (args.out / "panel.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def render(summary: dict) -> str:
    s = summary["statistics"]
    c = summary["config"]
    by_range = "  ".join(f"{k} {v:.2f}" for k, v in s["weighted_std_by_range"].items())
    lo, mean, hi = s["test_ratings_per_worker"]
    return "\n".join([
        f"simulated panel -> {summary['out']}  ({summary['seconds']} s, properties: {summary['properties']})",
        f"  {c['n_images']} images, {c['n_train_workers']} training + {c['n_test_workers']} test workers "
        f"+ {c['n_random_labellers']} planted random labellers (excluded by WP: {len(s['excluded_workers'])})",
        f"  test: {s['n_test_images']} images, {s['n_test_ratings']} ratings, {lo}-{hi} per worker (avg {mean:.0f})",
        f"  weighted per-image s.d. {s['weighted_std_mean']:.3f} +- {s['weighted_std_sd']:.2f} "
        f"(paper 0.79 +- 0.32); by range {by_range}",
        f"  generic rho vs IM_j {s['generic_rho_vs_im']:.3f} (paper 0.702)",
        f"  files: {', '.join(Path(v).name for k, v in summary['files'].items() if k != 'model_version')}",
    ])
