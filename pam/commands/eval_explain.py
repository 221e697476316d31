"""`pam eval explain`: rank correlation between the taste PAM's explanation recovers and each
simulated test worker's true taste, at 10, 20, 50 and 100 ratings, with the oracle and a
permutation baseline (personalize.taste_recovery). Writes explain.md, explain.png, explain_raw.csv.

The panel is a parameter: `--panel-kind` names a builder in PANELS (seed, scale) -> Panel.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

DEFAULT_KS = (10, 20, 50, 100)
LABELS = {"pam": "PAM's explained taste", "oracle": "oracle (noise-free ratings)",
          "permutation": "permutation baseline"}


def _panel(kind: str):
    def build(seed: int, scale: float):
        from pam.commands.simulate import build_panel

        return build_panel(seed, scale, kind=kind)

    return build


PANELS = {"default": _panel("default"), "robust": _panel("robust")}


def run(args, data, features, out: Path) -> dict:
    from pam.commands.eval import _Progress
    from personalize.taste_recovery import METHODS, taste_recovery

    if args.panel or args.ratings:
        raise SystemExit("pam eval explain: needs a generated panel whose true tastes are known "
                         "(--panel-kind, --panel-seed, --scale), not --panel/--ratings files")
    kind = getattr(args, "panel_kind", "default")
    if kind not in PANELS:
        raise SystemExit(f"pam eval explain: no true taste on the {kind} panel; panels: {', '.join(PANELS)}")
    panel = PANELS[kind](args.panel_seed, args.scale)
    ks = args.ks or list(DEFAULT_KS)
    repeats = min(args.repeats, 20)
    progress = _Progress(len(panel.test_workers), "explain", not args.no_progress)
    result = taste_recovery(panel, ks=ks, repeats=repeats, seed=args.seed, n_jobs=args.jobs, progress=progress)
    progress.close()
    raw = result.pop("raw")
    with (out / "explain_raw.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["worker", "k", "repeat", *METHODS])
        for u, worker in enumerate(sorted(panel.test_workers)):
            for a, k in enumerate(ks):
                for r in range(repeats):
                    w.writerow([worker, k, r, *(f"{v:.6f}" for v in raw[u, a, r])])
    lines = ["| ratings | " + " | ".join(LABELS[m] for m in METHODS) + " | PAM - permutation |",
             "|---|" + "---|" * (len(METHODS) + 1)]
    for k in ks:
        row = result["rows"][k]
        cells = [f"{row[m]['mean']:+.3f} ± {row[m]['se']:.3f}" for m in METHODS]
        d = row["pam_minus_permutation"]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {d['mean']:+.3f} ± {d['se']:.3f} |")
    table = "\n".join(lines)
    (out / "explain.md").write_text(table + "\n")
    plot(result, kind, out / "explain.png")
    return {**result, "panel_kind": kind, "markdown": table,
            "files": ["explain.md", "explain.png", "explain_raw.csv"]}


def plot(result: dict, kind: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from personalize.taste_recovery import METHODS

    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    ks = result["ks"]
    for m, style in zip(METHODS, ("o-", "s--", "x:"), strict=True):
        mean = np.array([result["rows"][k][m]["mean"] for k in ks])
        se = np.array([result["rows"][k][m]["se"] for k in ks])
        ax.errorbar(ks, mean, yerr=se, fmt=style, capsize=3, label=LABELS[m])
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("ratings per worker")
    ax.set_ylabel("Spearman rho, recovered vs true taste")
    name = "robustness panel" if kind == "robust" else f"{kind} simulated panel"
    ax.set_title(f"Taste recovery, {name} ({result['n_workers']} test workers, "
                 f"{result['repeats']} draws each)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
