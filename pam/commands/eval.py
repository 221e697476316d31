"""`pam eval PROTOCOL`: the paper's protocols (Table 4, Figure 6, Figure 4) and PAM's tuning grid.

Data: --ratings/--test-workers/--check-images/--features for any FLICKR-AES-format data set with
a feature table; --panel DIR for a folder written by `pam simulate`; with neither, the frozen
default simulated panel is generated in memory. Writes CSV + PNG + a markdown table under --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

HELP = ("Run an evaluation protocol: table4 (Table 4), active (Figure 6), taste (Figure 4), tune (PAM grid), "
        "explain (recovered vs true taste)")
PROTOCOLS = ("table4", "active", "taste", "tune", "explain")
TUNE_GRID = [{"nu": nu, "C": C, "gamma": g} for nu in (0.2, 0.5, 0.8) for C in (0.1, 1.0, 10.0)
             for g in (0.02, 0.1, 0.5)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("protocol", choices=PROTOCOLS)
    data = parser.add_argument_group("data (default: the frozen simulated panel, generated in memory)")
    data.add_argument("--panel", type=Path, help="a folder written by `pam simulate`")
    data.add_argument("--ratings", type=Path, help="FLICKR-AES ratings CSV (worker, imagePair, score)")
    data.add_argument("--test-workers", type=Path, help="test worker ids, one per line")
    data.add_argument("--check-images", type=Path, help="ground-truth check images CSV (imagePair, score)")
    data.add_argument("--features", type=Path, help="feature table: Parquet file or feature-store root")
    data.add_argument("--scale", type=float, default=1.0, help="size of the generated panel (1 = the paper's)")
    data.add_argument("--panel-seed", type=int, default=0, help="seed of the generated panel")
    data.add_argument("--panel-kind", choices=("default", "robust"), default="default",
                      help="which generated panel: the paper-calibrated one or the robustness panel (every protocol)")
    parser.add_argument("--out", type=Path, help="output folder (default runs/eval-PROTOCOL)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the protocol's random draws")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (joblib)")
    parser.add_argument("--ks", type=int, nargs="+",
                        help="table4: images per user (0 5 10 20 50 100; 0 = before any rating); taste: images per worker")
    parser.add_argument("--repeats", type=int, default=50, help="table4: repeats per user")
    parser.add_argument("--trials", type=int, default=10, help="active: trials per user")
    parser.add_argument("--budgets", type=int, nargs="+", default=list(range(10, 101, 10)),
                        help="active: numbers of rated images to measure at")
    parser.add_argument("--strategies", nargs="+",
                        help="active: subset of posterior active-pam random greedy mcal qbc")
    parser.add_argument("--holdout", type=float, default=0.0,
                        help="active: fraction of each worker's images held out as a fixed test set (0 = score "
                             "on the images not yet rated, the paper's reading)")
    parser.add_argument("--w-aes", type=float, help="active: weight of aes_feat in v (default 0.001)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="taste: fake workers' noise")
    parser.add_argument("--runs", type=int, default=50, help="taste: runs")
    parser.add_argument("--fpmf-iter", type=int, default=150, help="table4: L-BFGS iterations for FPMF's network")
    parser.add_argument("--no-prior", action="store_true",
                        help="table4/active: skip the population taste prior (Prior-PAM, the posterior strategy)")
    parser.add_argument("--no-progress", action="store_true")


def load_data(args: argparse.Namespace):
    """(FlickrAES, FeatureMatrix, description, oracle) from the arguments; oracle(worker, image
    ids) -> the worker's true taste, for panels generated in memory (None otherwise)."""
    from pam.commands.simulate import build_panel, read_feature_matrix
    from personalize.data import load_flickr_aes

    if args.ratings:
        if not args.features:
            raise SystemExit("pam eval: --ratings needs --features (the feature table of the rated images)")
        data = load_flickr_aes(args.ratings, args.test_workers, args.check_images)
        features, _ = read_feature_matrix(args.features)
        return data, features, f"{args.ratings} + {args.features}", None
    if args.panel:
        p = args.panel
        data = load_flickr_aes(p / "ratings.csv", p / "test_workers.txt", p / "check_images.csv")
        features, _ = read_feature_matrix(p / "features")
        return data, features, f"simulated panel {p}", None
    panel = build_panel(args.panel_seed, args.scale, kind=args.panel_kind)
    name = "robustness panel" if args.panel_kind == "robust" else "default simulated panel"
    return panel.dataset(), panel.properties.features(), (
        f"{name} (frozen, seed {args.panel_seed}, scale {args.scale:g}), generated in memory"), panel.true_taste


class _Progress:
    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="task", leave=False)

    def __call__(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> dict:
    from personalize.blas import single_blas_thread
    from personalize.data import DataError

    out = args.out or Path("runs") / f"eval-{args.protocol}"
    started = time.perf_counter()
    try:
        data, features, source, oracle = load_data(args)
    except DataError as exc:
        raise SystemExit(f"pam eval: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    with single_blas_thread():
        runner = globals()[f"_run_{args.protocol}"]
        summary = (runner(args, data, features, out, oracle) if args.protocol == "table4"
                   else runner(args, data, features, out))
    summary.update({"protocol": args.protocol, "data": source, "out": str(out), "seed": args.seed,
                    "jobs": args.jobs, "seconds": round(time.perf_counter() - started, 1)})
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return summary


# --- the prior, fit on the training workers inside the protocol --------------------------------------------------
def _fit_prior(args, data, features):
    from personalize import protocols as P

    if args.no_prior:
        return None, None
    t0 = time.perf_counter()
    prior = P.prior_for(data, features, seed=args.seed)
    return prior, {"seconds": round(time.perf_counter() - t0, 1), "rank": prior.rank,
                   "residual_C": prior.residual_C, "residual_min_ratings": prior.residual_min_ratings,
                   "use_population_offset": prior.use_population_offset, "noise_var": prior.noise_var,
                   **prior.info}


# --- table4 ----------------------------------------------------------------------------------
def _run_table4(args, data, features, out: Path, oracle=None) -> dict:
    from personalize import protocols as P

    t0 = time.perf_counter()
    fpmf = P.fpmf_for(data, features, max_iter=args.fpmf_iter, seed=args.seed)
    fpmf_seconds = time.perf_counter() - t0
    prior, prior_info = _fit_prior(args, data, features)
    ks = args.ks or [0, 5, 10, 20, 50, 100]
    progress = _Progress(len(data.test_workers), "table4", not args.no_progress)
    result = P.table4(data, features, ks=ks, repeats=args.repeats, seed=args.seed, n_jobs=args.jobs,
                      fpmf=fpmf, prior=prior, oracle=oracle, progress=progress)
    progress.close()
    raw = result.pop("raw")
    workers = sorted(data.test_workers)
    with (out / "table4_raw.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["worker", "k", "repeat", *P.TABLE4_METHODS])
        for u, worker in enumerate(workers):
            for a, k in enumerate(ks):
                for r in range(args.repeats):
                    w.writerow([worker, k, r, *(f"{v:.6f}" for v in raw[u, a, r])])
    table = table4_markdown(result["rows"], ks)
    (out / "table4.md").write_text(table + "\n")
    _plot_table4(result, [k for k in ks if k in P.PAPER_TABLE4] or ks[-1:], out / "table4.png")
    _plot_by_ratings(result, out / "table4-by-ratings.png")
    return {"table": result["rows"], "n_users": result["n_users"], "repeats": args.repeats,
            "fpmf_train_seconds": round(fpmf_seconds, 1), "prior": prior_info, "markdown": table,
            "files": ["table4.md", "table4.png", "table4-by-ratings.png", "table4_raw.csv"]}


def table4_markdown(rows: dict, ks) -> str:
    """Two tables: Table 4's layout (mean +- s.d. over repeats, with the paper's rows), and the
    paired comparison with PAM (difference +- s.e. over users, helped/hurt, headroom share)."""
    from personalize.protocols import PAPER_TABLE4, TABLE4_METHODS

    methods = [m for m in TABLE4_METHODS if any(m in rows[k] for k in ks)]
    lines = ["| images per user | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for k in ks:
        row = rows[k]
        cells = [f"{row[m]['mean']:+.3f} ± {row[m]['std']:.3f}" if m in row else "n/a" for m in methods]
        real = [m for m in row if m != "Oracle"]
        best = max(real, key=lambda m: row[m]["mean"]) if real else None
        cells = [f"**{c}**" if m == best else c for c, m in zip(cells, methods, strict=True)]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
        if k in PAPER_TABLE4:
            paper = PAPER_TABLE4[k]
            lines.append(f"| {k} (paper) | " + " | ".join(
                f"{paper[m][0]:+.3f} ± {paper[m][1]:.3f}" if m in paper else "" for m in methods) + " |")
    compared = [m for m in methods if m != "PAM"]
    lines += ["", "| k | " + " | ".join(f"{m} − PAM" for m in compared) + " | helped / hurt (" +
              ", ".join(m for m in ("PAM", "Prior-PAM") if m in methods) + ") | headroom share (Prior-PAM) |",
              "|---|" + "---|" * (len(compared) + 2)]
    for k in ks:
        row = rows[k]
        cells = [f"{row[m]['diff_vs_PAM']:+.4f} ± {row[m]['se_vs_PAM']:.4f}" if m in row else "n/a" for m in compared]
        hh = ", ".join(f"{row[m]['helped']}/{row[m]['hurt']}" for m in ("PAM", "Prior-PAM") if m in row)
        share = row.get("Prior-PAM", {}).get("headroom_share")
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {hh} | "
                     + (f"{share:.0%}" if share is not None and np.isfinite(share) else "n/a") + " |")
    return "\n".join(lines)


def _plot_table4(result, ks, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from personalize.protocols import PAPER_TABLE4

    methods = ["SVM", "FPMF", "PAM", "Prior-PAM"]
    fig, axes = plt.subplots(1, len(ks), figsize=(4.6 * len(ks), 3.4), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        row = result["rows"][k]
        xs = np.arange(len(methods))
        ours = [row.get(m, {}).get("mean", np.nan) for m in methods]
        err = [row.get(m, {}).get("std", 0) for m in methods]
        ax.bar(xs - 0.2, ours, 0.4, yerr=err, label="simulated panel", color="#4477aa")
        if k in PAPER_TABLE4:
            ax.bar(xs + 0.2, [PAPER_TABLE4[k].get(m, (np.nan,))[0] for m in methods], 0.4,
                   yerr=[PAPER_TABLE4[k].get(m, (0, 0))[1] for m in methods], label="paper (UAD)", color="#cccccc")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(xs, methods)
        ax.set_title(f"k = {k} images per user")
        ax.set_ylabel("correlation improvement")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_by_ratings(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = result["ks"]
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for m in ("PAM", "FPMF", "Prior-PAM", "Oracle"):
        ys = [result["rows"][k].get(m, {}).get("mean", np.nan) for k in ks]
        if np.all(np.isnan(ys)):
            continue
        ax.plot(ks, ys, marker="o", ms=3, lw=2.2 if m == "Prior-PAM" else 1.2, ls="--" if m == "Oracle" else "-",
                label=m)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xscale("symlog", linthresh=5)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("ratings by the user (k)")
    ax.set_ylabel("correlation improvement over generic")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- active ----------------------------------------------------------------------------------
def _run_active(args, data, features, out: Path) -> dict:
    from personalize import protocols as P

    strategies = args.strategies or list(P.ACTIVE_STRATEGIES)
    prior, prior_info = (None, None) if "posterior" not in strategies else _fit_prior(args, data, features)
    progress = _Progress(len(data.test_workers) * args.trials, "active", not args.no_progress)
    result = P.active_curves(data, features, budgets=args.budgets, trials=args.trials, strategies=strategies,
                             seed=args.seed, n_jobs=args.jobs, w_aes=args.w_aes, holdout=args.holdout,
                             prior=prior, progress=progress)
    progress.close()
    result.pop("raw")
    budgets = result["budgets"]
    with (out / "active_curves.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["strategy", "model", "budget", "mean_improvement", "std_over_trials", "diff_vs_random",
                    "se_vs_random"])
        for c in result["curves"].values():
            for i, b in enumerate(budgets):
                w.writerow([c["strategy"], c["model"], b, f"{c['mean'][i]:.6f}", f"{c['std_over_trials'][i]:.6f}",
                            *((f"{c['diff_vs_random'][i]:.6f}", f"{c['se_vs_random'][i]:.6f}")
                              if "diff_vs_random" in c else ("", ""))])
    table = active_markdown(result)
    (out / "active.md").write_text(table + "\n")
    _plot_active(result, out / "active.png")
    ap = result["curves"].get("active-pam / PAM")
    wins = None if ap is None or "diff_vs_random" not in ap else sum(
        d > 0 for d, b in zip(ap["diff_vs_random"], budgets, strict=True) if b > 10)
    return {"budgets": budgets, "trials": args.trials, "n_users": result["n_users"], "holdout": args.holdout,
            "curves": result["curves"], "prior": prior_info,
            "active_pam_above_random_at": f"{wins} of {len(budgets) - 1} budgets > 10" if wins is not None else None,
            "markdown": table, "files": ["active.md", "active.png", "active_curves.csv"]}


def active_markdown(result: dict) -> str:
    """Mean improvement per strategy and scoring model, then paired differences to random
    (same scoring model) +- their standard errors over users."""
    budgets = result["budgets"]
    lines = ["| strategy (scored with) | " + " | ".join(str(b) for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for name, c in result["curves"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:+.3f}" for v in c["mean"]) + " |")
    lines += ["", "| difference to random (same model) | " + " | ".join(str(b) for b in budgets) + " |",
              "|---|" + "---|" * len(budgets)]
    for name, c in result["curves"].items():
        if "diff_vs_random" in c:
            lines.append(f"| {name} | " + " | ".join(f"{d:+.4f} ± {e:.4f}" for d, e in
                                                      zip(c["diff_vs_random"], c["se_vs_random"], strict=True)) + " |")
    return "\n".join(lines)


def _plot_active(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.8, 4.0))
    strategies = list(dict.fromkeys(c["strategy"] for c in result["curves"].values()))
    colours = {s: plt.get_cmap("tab10")(i) for i, s in enumerate(strategies)}  # one colour per strategy
    for name, c in result["curves"].items():
        mean, sd = np.asarray(c["mean"]), np.asarray(c["std_over_trials"])
        ours = c["strategy"] == "posterior" or c["strategy"] == "active-pam"
        ax.plot(result["budgets"], mean, marker="o", ms=3, lw=2.2 if ours else 1.0, color=colours[c["strategy"]],
                ls="-" if c["model"] == "Prior-PAM" else ":", label=name)
        ax.fill_between(result["budgets"], mean - sd, mean + sd, alpha=0.08, color=colours[c["strategy"]])
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("images rated by the user")
    ax.set_ylabel("correlation improvement")
    scored = f"held-out {result['holdout']:.0%}" if result.get("holdout") else "images not yet rated"
    ax.set_title(f"Active learning ({result['trials']} trials; scored on {scored})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- taste -----------------------------------------------------------------------------------
def _run_taste(args, data, features, out: Path) -> dict:
    from personalize import protocols as P

    ks = args.ks or [10, 25, 50, 100, 150]
    progress = _Progress(len(ks) * len(args.sigmas) * args.runs, "taste", not args.no_progress)
    result = P.taste_experiment(data, features, ks=ks, sigmas=args.sigmas, runs=args.runs, seed=args.seed,
                                n_jobs=args.jobs, progress=progress)
    progress.close()
    result.pop("raw")
    with (out / "taste.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["k", "sigma", "mean_fake_rank", "std_fake_rank"])
        for a, k in enumerate(ks):
            for b, s in enumerate(args.sigmas):
                w.writerow([k, s, f"{result['mean_fake_rank'][a][b]:.3f}", f"{result['std_fake_rank'][a][b]:.3f}"])
    lines = ["| k | " + " | ".join(f"σ = {s:g}" for s in args.sigmas) + " |", "|---|" + "---|" * len(args.sigmas)]
    for a, k in enumerate(ks):
        lines.append(f"| {k} | " + " | ".join(f"{v:.1f}" for v in result["mean_fake_rank"][a]) + " |")
    lines.append(f"\nMean rank of {result['m']} fake workers among {result['n_ranked']} "
                 f"(chance {result['chance_rank']:.1f}; 1 = weakest feature-offset correlation).")
    table = "\n".join(lines)
    (out / "taste.md").write_text(table + "\n")
    _plot_taste(result, out / "taste.png")
    return {**{k: v for k, v in result.items()}, "markdown": table, "files": ["taste.md", "taste.png", "taste.csv"]}


def _plot_taste(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ranks = np.asarray(result["mean_fake_rank"])
    for b, s in enumerate(result["sigmas"]):
        ax.plot(result["ks"], ranks[:, b], marker="o", label=f"σ = {s:g}")
    ax.axhline(result["chance_rank"], color="k", ls="--", lw=0.8, label="chance")
    ax.set_xlabel("images per worker (k)")
    ax.set_ylabel("mean rank of the fake workers")
    ax.set_title("Does personal taste exist? (Figure 4 protocol)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- explain: pam.commands.eval_explain --------------------------------------------------------
def _run_explain(args, data, features, out: Path) -> dict:
    from pam.commands import eval_explain

    return eval_explain.run(args, data, features, out)


# --- tune ------------------------------------------------------------------------------------
def _run_tune(args, data, features, out: Path) -> dict:
    from personalize import protocols as P

    ks = args.ks or [10, 100]
    progress = _Progress(40, "tune", not args.no_progress)
    result = P.tune_pam(data, features, TUNE_GRID, ks=ks, seed=args.seed, n_jobs=args.jobs, progress=progress)
    progress.close()
    means = np.asarray(result["mean_improvement"])
    order = np.argsort(-means.mean(axis=1))
    lines = ["| nu | C | gamma | " + " | ".join(f"k = {k}" for k in ks) + " | mean |", "|---|---|---|" + "---|" * (len(ks) + 1)]
    with (out / "tune.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["nu", "C", "gamma", *[f"k{k}" for k in ks], "mean"])
        for g in order:
            p = result["grid"][g]
            w.writerow([p["nu"], p["C"], p["gamma"], *(f"{v:.5f}" for v in means[g]), f"{means[g].mean():.5f}"])
            lines.append(f"| {p['nu']} | {p['C']} | {p['gamma']} | " + " | ".join(f"{v:+.4f}" for v in means[g])
                         + f" | {means[g].mean():+.4f} |")
    table = "\n".join(lines)
    (out / "tune.md").write_text(table + "\n")
    return {"best": result["best"], "best_by_k": result["best_by_k"], "n_training_workers": len(result["workers"]),
            "markdown": table, "files": ["tune.md", "tune.csv"]}


def render(summary: dict) -> str:
    head = (f"pam eval {summary['protocol']}: {summary['data']}\n"
            f"  {summary['seconds']} s with {summary['jobs']} processes; files in {summary['out']}: "
            f"{', '.join(summary.get('files', []))}")
    extra = ""
    if summary["protocol"] == "tune":
        extra = f"\n  best on training workers: {summary['best']} (per k: {summary['best_by_k']})"
    if summary["protocol"] == "active" and summary.get("active_pam_above_random_at"):
        extra = f"\n  Active-PAM above random at {summary['active_pam_above_random_at']}"
    if summary["protocol"] == "table4":
        extra = f"\n  FPMF network trained in {summary['fpmf_train_seconds']} s on the training workers"
    if summary["protocol"] in ("table4", "active") and summary.get("prior"):
        p = summary["prior"]
        extra += (f"\n  taste prior fit on the training workers in {p['seconds']} s: covariance rank "
                  f"{p['rank'] or 'full'}, residual nu-SVR C={p['residual_C']} from {p['residual_min_ratings']} "
                  f"ratings, population offset at 0 ratings: {p['use_population_offset']}")
    return head + extra + "\n\n" + summary.get("markdown", "")
