"""The demo's report: one HTML page with PNG plots, written from the run's summary dict.

`write_report(summary, out, album_root)` draws
    demo-timings.png   seconds per stage, with images/s where a stage processes photos
    demo-curves.png    correlation improvement against the number of ratings, Active-PAM vs random
                       (mean over the simulated users, each user thin)
    demo-figure3.png   for one user: the top 8 unrated photos by generic score beside the top 8
                       after personalization (the paper's Figure 3), the user's score under each
and report.html around them. Thumbnails come from the album's files. matplotlib, Agg backend.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

STRATEGY_LABELS = {"active": "Active-PAM (service's suggestions)", "random": "random photos (baseline)"}
STRATEGY_COLOURS = {"active": "#c0392b", "random": "#2c3e50"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_timings(stages: list[dict], path: Path) -> Path:
    plt = _plt()
    names = [s["title"] for s in stages][::-1]
    seconds = [s["seconds"] for s in stages][::-1]
    fig, ax = plt.subplots(figsize=(8.5, 0.45 * len(stages) + 1.2))
    bars = ax.barh(names, seconds, color="#5d8aa8")
    for bar, stage in zip(bars, stages[::-1], strict=True):
        label = f" {stage['seconds']:.1f} s"
        if stage.get("per_s"):
            label += f"  ({stage['per_s']:.1f} {stage['unit']}/s)"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, label, va="center", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_xlim(0, max([*seconds, 1]) * 1.45)
    ax.set_title(f"pam demo: {sum(seconds):.0f} s in all", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(curves: dict, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for strategy, curve in curves.items():
        colour = STRATEGY_COLOURS.get(strategy, None)
        x = curve["n_ratings"]
        for values in curve["per_user"].values():
            ax.plot(x, values, color=colour, alpha=0.18, linewidth=0.8)
        ax.plot(x, curve["mean"], color=colour, linewidth=2.2,
                label=f"{STRATEGY_LABELS.get(strategy, strategy)}, mean of {len(curve['per_user'])} users")
    ax.axhline(0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("ratings given by the user")
    ax.set_ylabel("rho(personalized) - rho(generic)\non the photos not rated yet")
    ax.set_title("Correlation improvement per SIMULATED user", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _thumbnail(path: Path, width: int = 192, height: int = 144) -> np.ndarray:
    """The photo centre-cropped to 4:3 and resized, so the grid's cells line up."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.fit(im.convert("RGB"), (width, height)))
    except (OSError, ValueError):
        return np.full((height, width, 3), 200, np.uint8)


def plot_figure3(figure3: dict, album_root: Path, path: Path) -> Path:
    plt = _plt()
    rows = [("generic", "Top 8 by the generic score"), ("personalized", "Top 8 after personalization")]
    n = max(1, max(len(figure3["rows"][key]) for key, _ in rows))
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 4.4), squeeze=False,
                             gridspec_kw={"hspace": 0.75, "wspace": 0.06, "top": 0.8, "bottom": 0.08,
                                          "left": 0.01, "right": 0.99})
    for r, (key, title) in enumerate(rows):
        items = figure3["rows"][key]
        mean = figure3["mean_user_score"][key]
        top = axes[r][0].get_position().y1
        fig.text(0.01, top + 0.025, f"{title}: the user's mean score {mean:.2f}", fontsize=9.5,
                 fontweight="bold", va="bottom")
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(items):
                continue
            item = items[c]
            ax.imshow(_thumbnail(album_root / item["image_id"]))
            ax.text(0.5, -0.06, f"user {item['user_score']:.0f} · model {item['score']:.2f}",
                    transform=ax.transAxes, ha="center", va="top", fontsize=7.5)
    fig.suptitle(f"Simulated user {figure3['user']} after {figure3['n_ratings']} ratings: "
                 "the photos the user had not rated", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure3_rows(image_ids: list[str], scores: list[float], generic: list[float], truth: dict[str, float],
                 rated: set[str], k: int = 8) -> dict:
    """The top k unrated photos by generic score and by personalized score, with the user's scores."""
    rows = {}
    for key, values in (("generic", generic), ("personalized", scores)):
        order = sorted((i for i in range(len(image_ids)) if image_ids[i] not in rated),
                       key=lambda i, v=values: -v[i])[:k]
        rows[key] = [{"image_id": image_ids[i], "user_score": truth[image_ids[i]], "score": values[i]}
                     for i in order]
    mean = {key: float(np.mean([item["user_score"] for item in items])) if items else float("nan")
            for key, items in rows.items()}
    return {"rows": rows, "mean_user_score": mean}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """
body { font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.banner { background: #fff3cd; border: 1px solid #e0c36c; padding: 0.7em 1em; border-radius: 6px; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.6em 0; }
td, th { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } img { max-width: 100%; } code, pre { background: #f6f6f6; }
pre { padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
"""


def render_html(summary: dict, images: dict[str, str]) -> str:
    album, panel, generic = summary["album"], summary["panel"], summary["generic"]
    personal, service = summary["personalization"], summary.get("service", {})
    stage_rows = [[html.escape(s["title"]), f"{s['seconds']:.1f}",
                   f"{s['per_s']:.1f} {html.escape(s['unit'])}/s" if s.get("per_s") else "",
                   html.escape(s.get("note", ""))] for s in summary["stages"]]
    source_rows = [[html.escape(s.get("name", "")), html.escape(s.get("licence", "")),
                    html.escape(s.get("credit", s.get("folder", ""))),
                    f"<a href='{html.escape(s['url'])}'>source</a>" if s.get("url") else ""]
                   for s in album["sources"]]
    stats = panel.get("statistics", {})
    final = personal.get("final", {})
    final_rows = [[html.escape(STRATEGY_LABELS.get(k, k)), _fmt(v)] for k, v in final.items()]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>pam demo report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>pam demo report</h1>",
        f"<p>{html.escape(summary.get('finished', ''))} · {summary.get('total_seconds', 0):.0f} s on this machine · "
        f"output <code>{html.escape(summary['out'])}</code></p>",
        "<div class='banner'><b>The raters are SIMULATED.</b> Every score in this report comes from the "
        "rater-panel simulator (personalize.simulate, frozen calibration) run on the photos' own properties; "
        "the networks are trained on those simulated ratings, so the generic score demonstrates the "
        "pipeline and is not a measure of real taste.</div>",
        "<h2>Photos</h2>", f"<p>{html.escape(album['description'])}</p>",
        _table(["photo", "licence", "credit / folder", ""], source_rows),
        "<h2>Stages</h2>", _table(["stage", "seconds", "rate", ""], stage_rows),
        f"<img src='{images['timings']}' alt='seconds per stage'>",
        "<h2>Simulated panel</h2>",
        f"<p>{panel['config']['n_images']} photos: {panel['n_train_images']} rated by "
        f"{panel['config']['n_train_workers']} training workers (5 each) to train the generic model, "
        f"{panel['config']['n_test_images']} rated by each of the {panel['config']['n_test_workers']} simulated users "
        f"(test workers, unseen by the generic model); {panel['config']['n_random_labellers']} planted random "
        f"labellers, excluded by worker performance: {html.escape(', '.join(stats.get('excluded_workers', [])) or 'none')}. "
        f"Per-image rating spread (WP-weighted s.d.) {_fmt(stats.get('weighted_std_mean'), 2)} (paper 0.79).</p>",
        "<h2>Generic model</h2>",
        f"<p>Heads trained on the frozen pretrained <code>{html.escape(str(generic.get('backbone')))}</code> trunk, "
        f"exported as one fused five-crop ONNX graph, model version <code>{html.escape(str(generic.get('model_version')))}</code>.</p>",
        _table(["measure", "value"], [
            [f"generic score, Spearman rho on the {generic.get('validation_images', 'n/a')} validation photos vs the "
             "training workers' weighted mean ratings (pam train; few photos, so a coarse figure)",
             _fmt(generic.get("validation_rho"))],
            ["generic score, Spearman rho on each user's photos (unseen in training) vs that simulated user's "
             "ratings, mean over users (the paper's generic model: 0.702 against mean ratings)",
             _fmt(generic.get("rho_vs_users_mean"))],
            ["attributes head, mean Spearman rho vs the pixel measures on the validation photos",
             _fmt(generic.get("attributes_rho"))],
            ["content head, accuracy on the k-means classes of the validation photos",
             _fmt(generic.get("content_accuracy"))],
            ["w_aes of Active-PAM's v = [w_aes * aes_feat, aes_score] that balances both parts for this trunk "
             "(pam export); used by the service: " + html.escape(str((summary.get("w_aes") or {}).get("used", "n/a"))),
             _fmt((summary.get("w_aes") or {}).get("balanced_for_this_trunk"), 4)],
        ]),
        *([f"<p>Training curves (<code>pam train</code>); model card: <a href='{html.escape(generic['model_card'])}'>"
           f"{html.escape(generic['model_card'])}</a>.</p>",
           f"<img src='{html.escape(generic['training_plot'])}' alt='training curves'>"]
          if generic.get("training_plot") and generic.get("model_card") else []),
        "<h2>Personalization over HTTP</h2>",
        f"<p>Each simulated user rated {personal['budget']} photos one at a time through the running service "
        f"({html.escape(service.get('url', ''))}): once the photos Active-PAM suggested (its first 10 are its "
        "seeded random set), once photos drawn at random. After every rating the whole album was re-ranked by "
        "the service and compared with the user's hidden ratings of the photos not rated yet. "
        f"{service.get('requests', 0)} requests, p50 {_fmt(service.get('p50_ms'), 1)} ms, "
        f"p99 {_fmt(service.get('p99_ms'), 1)} ms.</p>",
        f"<img src='{images['curves']}' alt='correlation improvement against ratings'>",
        _table([f"strategy: mean improvement after {personal['budget']} ratings", "rho gain"], final_rows),
    ]
    if summary.get("quality"):
        from pam.demo.quality import html_section as quality_section

        parts += quality_section(summary["quality"])
    if "figure3" in images:
        fig3 = summary["figure3"]
        everyone = fig3.get("all_users_mean_user_score")
        parts += ["<h2>One user's album, before and after (the paper's Figure 3)</h2>",
                  f"<p>The first simulated user ({html.escape(str(fig3['user']))}; not picked for the result), "
                  f"after the Active-PAM session: the 8 photos ranked highest by the generic score and by the "
                  f"personalized score, among the photos the user had not rated, with the user's hidden rating "
                  f"under each.</p>",
                  f"<img src='{images['figure3']}' alt='top 8 generic vs personalized'>"]
        if everyone:
            parts.append(f"<p>Over all {len(personal.get('users', [])) or 'the'} simulated users, the mean "
                         f"rating of their top 8: generic {_fmt(everyone['generic'], 2)}, personalized "
                         f"{_fmt(everyone['personalized'], 2)}.</p>")
    if "taste" in images:
        from pam.demo.taste import html_section

        parts += html_section(summary["taste"], images["taste"])
    if summary.get("curation_page"):
        parts += ["<h2>Curation page</h2>",
                  f"<p>Rate photos yourself at <a href='{html.escape(summary['curation_page'])}'>"
                  f"{html.escape(summary['curation_page'])}</a> while the service runs: <code>pam demo</code> run "
                  "in a terminal keeps it up after this report (Ctrl-C stops it); otherwise start it again with "
                  "the <code>pam serve</code> command below and open <code>/ui/?user=you</code> on its port.</p>"]
    parts += ["<h2>Commands that ran</h2>",
              "<pre>" + html.escape("\n".join(summary.get("commands", []))) + "</pre>", "</body></html>"]
    return "\n".join(parts)


def write_report(summary: dict, out: Path, album_root: Path) -> dict[str, str]:
    """Write the PNGs and report.html into `out`; returns {name: path}."""
    out.mkdir(parents=True, exist_ok=True)
    images = {"timings": plot_timings(summary["stages"], out / "demo-timings.png").name,
              "curves": plot_curves(summary["personalization"]["curves"], out / "demo-curves.png").name}
    if summary.get("taste", {}).get("users"):
        from pam.demo.taste import plot as plot_taste

        images["taste"] = plot_taste(summary["taste"], out / "demo-taste.png").name
    if summary.get("figure3"):
        images["figure3"] = plot_figure3(summary["figure3"], album_root, out / "demo-figure3.png").name
    report = out / "report.html"
    report.write_text(render_html(summary, images), encoding="utf-8")
    return {"report": str(report), **{k: str(out / v) for k, v in images.items()}}
