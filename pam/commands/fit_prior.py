"""`pam fit-prior`: fit the population taste prior of a feature version and store it there.

Reads a FLICKR-AES-format ratings CSV (check images and test workers optional: test workers are
left out, random labellers excluded by WP as in `pam eval`) and the feature table written by
`pam features`; fits personalize.prior on every remaining rater's ratings of photos the table
has, chooses its variant by cross-validation over those raters, and writes
`<features>/model_version=<v>/_taste_prior.npz` (plain arrays, no pickle), which `pam serve` and
personalize.prior.load_prior read for that version.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "Fit the population taste prior from a ratings CSV and store it in the feature version's directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ratings", type=Path, required=True, help="ratings CSV (worker, imagePair, score)")
    parser.add_argument("--features", type=Path, required=True, help="feature-store root written by `pam features`")
    parser.add_argument("--version", help="model_version to fit for (default: the store's CURRENT)")
    parser.add_argument("--test-workers", type=Path, help="workers to leave out, one per line")
    parser.add_argument("--check-images", type=Path, help="ground-truth check images CSV (imagePair, score)")
    parser.add_argument("--no-cv", action="store_true",
                        help="skip the cross-validation (full covariance, no residual SVR, population offset on)")
    parser.add_argument("--seed", type=int, default=0)


def fit_and_store(ratings: Path, features: Path, version: str | None = None, test_workers: Path | None = None,
                  check_images: Path | None = None, cv: bool = True, seed: int = 0) -> dict:
    """Fit the prior and write it beside the version's parts; returns the summary."""
    import numpy as np

    from pam.commands.simulate import read_feature_matrix
    from personalize import protocols as P
    from personalize.data import DataError, FlickrAES, load_flickr_aes
    from personalize.prior import PRIOR_FILE
    from serving import feature_table as ft

    started = time.perf_counter()
    root = Path(features)
    if not root.is_dir():
        raise DataError(f"{root}: not a feature-store folder (run `pam features ... --out {root}` first)")
    table = ft.FeatureTable(str(root))
    version = version or table.current_name
    data = load_flickr_aes(ratings, test_workers, check_images)
    fm, _ = read_feature_matrix(root, version)
    known = np.isin(data.ratings.images, fm.image_ids)
    dropped = int((~known).sum())
    data = FlickrAES(data.ratings.subset(known), data.test_workers, data.worker_performance, data.excluded_workers,
                     data.source)
    raters = data.train_workers
    if len(raters) < 2:
        raise DataError(f"{ratings}: {len(raters)} rater(s) with photos in the table; a prior needs 2 or more")
    prior = P.prior_for(data, fm, choose=cv, seed=seed)
    path = prior.save(table.version(version).sidecar_path(PRIOR_FILE))
    return {"path": str(path), "model_version": version, "raters": len(raters),
            "ratings": int(np.isin(data.ratings.workers, np.asarray(raters)).sum()),
            "ratings_without_features": dropped, "excluded_workers": sorted(data.excluded_workers),
            "rank": prior.rank, "residual_C": prior.residual_C, "residual_min_ratings": prior.residual_min_ratings,
            "use_population_offset": prior.use_population_offset, "beats_pam": prior.beats_pam, "noise_var": prior.noise_var, **prior.info,
            "seconds": round(time.perf_counter() - started, 2)}


def run(args: argparse.Namespace) -> dict:
    from personalize.data import DataError

    try:
        return fit_and_store(args.ratings, args.features, args.version, args.test_workers, args.check_images,
                             cv=not args.no_cv, seed=args.seed)
    except (DataError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"pam fit-prior: {exc}") from None


def render(summary: dict) -> str:
    zero = summary.get("zero_ratings", {})
    cov = "full" if summary["rank"] is None else "rank {} + floor".format(summary["rank"])
    residual = ("off" if summary["residual_C"] is None
                else "C={} from {} ratings".format(summary["residual_C"], summary["residual_min_ratings"]))
    skipped = summary["ratings_without_features"]
    lines = [f"taste prior for {summary['model_version']} -> {summary['path']}  ({summary['seconds']} s)",
             f"  {summary['raters']} raters, {summary['ratings']} ratings"
             + (f" ({skipped} ratings of photos the table lacks were skipped)" if skipped else ""),
             f"  covariance: {cov}; residual nu-SVR: {residual}"]
    if zero:
        start = "population offset" if summary["use_population_offset"] else "generic score"
        lines.append(f"  before any rating: {start} (population offset vs generic on held-out raters: "
                     f"{zero['population_offset_gain']:+.4f} ± {zero['se']:.4f})")
    vs_pam = summary.get("vs_pam") or {}
    if vs_pam:
        figures = ", ".join(f"{k} ratings {v['mean']:+.4f} ± {v['se']:.4f}" for k, v in vs_pam.items())
        verdict = "served as the personal model" if summary.get("beats_pam") else "NOT served: PAM stays the personal model"
        lines.append(f"  vs PAM on held-out raters (paired, Spearman improvement): {figures}: {verdict}")
    elif summary.get("beats_pam") is None:
        lines.append("  vs PAM: not measured (too few ratings per rater); served as the personal model")
    return "\n".join(lines)
