"""A training run: data -> trunk cache -> three stages -> model.safetensors, resumable per epoch.

Stages, in the paper's order (section 4.1): the generic aesthetics head (optionally with the trunk:
`finetune_trunk`), the Siamese attributes network (its own 5b, initialised from the generic one),
the content softmax head on k-means clusters. After every epoch the whole state goes to
`checkpoint.safetensors`; `resume()` continues from it and, because each epoch's randomness
derives from (seed, stage, epoch), ends with the same weights an uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from export import datasets
from export.content import ContentClusters, fit_content_clusters
from export.content_names import content_names_for
from export.networks import PamNet, create_model

from . import cache as trunk_cache
from . import checkpoint, stages
from .config import TrainConfig
from .finetune import finetune_epoch, finetune_validation

STAGES = ("aesthetics", "attributes", "content")
CHECKPOINT = "checkpoint.safetensors"
MODEL = "model.safetensors"
PLOT = "training.png"


@dataclass
class RunData:
    aesthetics: datasets.ImageSet
    aes_val: np.ndarray  # bool mask over aesthetics
    attributes: datasets.ImageSet | None  # None: pixel-measure targets on the aesthetics images
    attr_val: np.ndarray | None
    paths: list[Path]  # every photo the cache covers, aesthetics first

    def rows(self, image_set: datasets.ImageSet) -> np.ndarray:
        index = {p: i for i, p in enumerate(self.paths)}
        return np.array([index[p] for p in image_set.paths], dtype=np.int64)


def train(cfg: TrainConfig, progress: bool = True, stop_after: int | None = None) -> dict:
    """A fresh run into cfg.out (which must not hold a checkpoint already). With `stop_after`,
    at most that many epochs run now (e.g. a pre-emptible machine's slot); resume() goes on."""
    cfg.validate()
    run = Path(cfg.out)
    if (run / CHECKPOINT).exists():
        raise FileExistsError(f"{run} already holds a training checkpoint: resume it or choose "
                              "another output folder")
    net = create_model(cfg.backbone, weights=cfg.weights, dropout=cfg.dropout, seed=cfg.seed)
    if net.backbone.weights_source.startswith("scratch") and not cfg.finetune_trunk \
            and cfg.backbone != "tiny":
        raise ValueError(f"{cfg.backbone} has no pretrained weights here, and a frozen random trunk "
                         "learns nothing: pass --weights PATH (ImageNet weights), or "
                         "--finetune-trunk to train the trunk from scratch (a GPU job)")
    state = {"config": cfg.to_dict(), "stage": STAGES[0], "epoch": 0,
             "history": {s: [] for s in STAGES}, "started": time.time(),
             "trunk_weights": net.backbone.weights_source}
    return _run(cfg, net, state, {}, {}, progress, stop_after)


def resume(run_dir: str | Path, progress: bool = True, stop_after: int | None = None,
           **overrides) -> dict:
    """Continue a run from its checkpoint; `overrides` may raise the epoch counts."""
    net_state, momentum, extra, state = checkpoint.load(Path(run_dir) / CHECKPOINT)
    cfg = TrainConfig.from_dict(state["config"])
    for key, value in overrides.items():
        if value is not None:
            if key not in ("epochs", "attribute_epochs", "content_epochs", "workers", "device"):
                raise ValueError(f"{key} cannot change when resuming (the data and model are fixed)")
            setattr(cfg, key, value)
    cfg.out = str(run_dir)
    state["config"] = cfg.to_dict()
    net = create_model(cfg.backbone, weights=None, dropout=cfg.dropout, seed=cfg.seed)
    net.load_state_dict(net_state)
    return _run(cfg, net, state, momentum, extra, progress, stop_after)


def load_trained(path: str | Path) -> tuple[PamNet, dict]:
    """The trained network and its run state from a run folder or a model.safetensors file."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL
    net_state, _, extra, state = checkpoint.load(path)
    if state.get("stage") != "done":
        raise ValueError(f"{path} is an unfinished run (stage {state.get('stage')!r})")
    cfg = TrainConfig.from_dict(state["config"])
    net = create_model(cfg.backbone, weights=None, dropout=cfg.dropout, seed=cfg.seed)
    net.load_state_dict(net_state)
    state["model_file"] = str(path)
    state["content_centroids"] = extra.get("content_centroids")
    return net.eval(), state


# --- data ------------------------------------------------------------------------------------
def _stable_subset(image_set: datasets.ImageSet, limit: int | None, seed: int) -> datasets.ImageSet:
    if not limit or len(image_set) <= limit:
        return image_set
    rank = [hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in image_set.ids]
    return image_set.subset(np.sort(np.argsort(rank)[:limit]))


def prepare_data(cfg: TrainConfig) -> RunData:
    aes = _stable_subset(datasets.load_aesthetics(cfg.ratings, cfg.images, cfg.test_workers,
                                                  cfg.check_images), cfg.max_images, cfg.seed)
    aes_val = datasets.validation_mask(aes.ids, cfg.val_fraction, cfg.seed)
    attr, attr_val = None, None
    if cfg.attributes:
        root = cfg.attribute_images or cfg.images
        source = Path(cfg.attributes)
        if source.is_dir() and datasets.has_aadb_split(source, "validation"):  # AADB's own split
            train = datasets.load_attributes(source, root, "train")
            val = datasets.load_attributes(source, root, "validation")
            attr = datasets.ImageSet(train.ids + val.ids, train.paths + val.paths,
                                     np.concatenate([train.targets, val.targets]), train.source,
                                     train.missing + val.missing)
            attr_val = np.r_[np.zeros(len(train), bool), np.ones(len(val), bool)]
        else:
            attr = _stable_subset(datasets.load_attributes(source, root), cfg.max_images, cfg.seed)
            attr_val = datasets.validation_mask(attr.ids, cfg.val_fraction, cfg.seed)
    paths = list(dict.fromkeys(aes.paths + (attr.paths if attr else [])))
    return RunData(aes, aes_val, attr, attr_val, paths)


def _splits(data: RunData, cache: trunk_cache.CropCache) -> dict[str, stages.Split]:
    def split(image_set, targets, mask):
        rows = data.rows(image_set)
        keep = cache.ok[rows] & mask
        return stages.Split(cache, rows[keep], targets[keep])

    aes = data.aesthetics
    out = {"aes_train": split(aes, aes.targets, ~data.aes_val),
           "aes_val": split(aes, aes.targets, data.aes_val)}
    if data.attributes is None:
        targets = cache.attributes[data.rows(aes)]
        out["attr_train"] = split(aes, targets, ~data.aes_val)
        out["attr_val"] = split(aes, targets, data.aes_val)
    else:
        out["attr_train"] = split(data.attributes, data.attributes.targets, ~data.attr_val)
        out["attr_val"] = split(data.attributes, data.attributes.targets, data.attr_val)
    return out


# --- the run ---------------------------------------------------------------------------------
def _run(cfg: TrainConfig, net: PamNet, state: dict, momentum: dict, extra: dict,
         progress: bool, stop_after: int | None = None) -> dict:
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    device = cfg.device
    net.to(device)
    data = prepare_data(cfg)
    t0, seconds_before = time.time(), state.get("seconds", 0)
    splits: dict[str, stages.Split] = {}
    crop_cache: trunk_cache.CropCache | None = None

    def ensure_cache() -> dict[str, stages.Split]:
        nonlocal crop_cache, splits
        if crop_cache is None:
            pixel = datasets.pixel_attribute_targets if data.attributes is None else None
            crop_cache = trunk_cache.build_or_load(
                net, data.paths, run / "cache", cfg.random_crops, cfg.seed, pixel,
                workers=cfg.workers, device=device, progress=progress)
            splits = _splits(data, crop_cache)
            if len(splits["aes_train"]) < 2:
                raise datasets.DatasetError("fewer than two usable training photos")
        return splits

    if not state["history"]["aesthetics"] and state["stage"] == STAGES[0]:
        attr_mean = (data.attributes.targets.mean(0) if data.attributes is not None
                     else np.zeros(10, np.float32))
        stages.init_heads(net, float(data.aesthetics.targets.mean()), attr_mean)
    finetune_failures: dict[str, str] = {}
    epochs_run = 0

    for stage_index, stage in enumerate(STAGES):
        if state["stage"] == "done" or STAGES.index(state["stage"]) > stage_index:
            continue
        finetune = stage == "aesthetics" and cfg.finetune_trunk
        for p in net.backbone.parameters():
            p.requires_grad_(finetune)
        net.backbone.train(finetune)
        module = {"aesthetics": net.aesthetics, "attributes": net.attributes,
                  "content": net.content}[stage]
        params = [*module.parameters(), *(net.backbone.parameters() if finetune else [])]
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        start = state["epoch"] if state["stage"] == stage else 0
        if start:
            checkpoint.restore_momentum(optimizer, net, momentum)
        sp = {} if finetune else ensure_cache()
        clusters = None
        if stage == "attributes" and start == 0:
            stages.start_attributes(net)
        if stage == "content":
            clusters = _content_clusters(sp, extra, cfg.seed)
            if "content_names" not in state:  # kept with the model: export.content_names
                state["content_names"] = content_names_for(net.backbone, clusters["train_features"],
                                                           clusters["train"].targets, clusters["clusters"].k)
        n_epochs = {"aesthetics": cfg.epochs, "attributes": cfg.attribute_epochs,
                    "content": cfg.content_epochs}[stage]
        bar = tqdm(range(start, n_epochs), desc=stage, unit="epoch", disable=not progress,
                   initial=start, total=n_epochs)
        for epoch in bar:
            lr = cfg.lr_at(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rng = stages.epoch_rng(cfg.seed, stage_index, epoch)
            tic = time.time()
            loss, metrics = _epoch(stage, finetune, net, optimizer, sp, clusters, data, cfg, rng,
                                   finetune_failures, progress)
            record = {"epoch": epoch + 1, "lr": lr, "loss": loss, **metrics,
                      "seconds": round(time.time() - tic, 2)}
            state["history"][stage].append(record)
            state.update(stage=stage, epoch=epoch + 1,
                         seconds=round(seconds_before + time.time() - t0, 1))
            checkpoint.save(run / CHECKPOINT, net, _clean(state), optimizer, extra)
            headline = {k: v for k, v in metrics.items() if isinstance(v, float)}
            bar.set_postfix(loss=f"{loss:.4f}", **{k: f"{v:.3f}" for k, v in headline.items()})
            epochs_run += 1
            if stop_after is not None and epochs_run >= stop_after:
                bar.close()
                return _clean({"run": str(run), "interrupted": True, "stage": stage,
                               "epoch": epoch + 1, "checkpoint": str(run / CHECKPOINT),
                               "history": state["history"]})
        bar.close()
        next_stage = STAGES[stage_index + 1] if stage_index + 1 < len(STAGES) else "done"
        state.update(stage=next_stage, epoch=0)
        checkpoint.save(run / CHECKPOINT, net, _clean(state), None, extra)

    state["data"] = _data_summary(data, crop_cache, finetune_failures)
    state["seconds"] = round(seconds_before + time.time() - t0, 1)
    net.eval()
    model_path = checkpoint.save(run / MODEL, net, _clean(state), None, extra)
    plot = _plot(state["history"], run / PLOT)
    return _clean({"run": str(run), "model": str(model_path), "backbone": cfg.backbone,
                   "trunk_weights": state.get("trunk_weights"), "data": state["data"],
                   "stages": {s: {"epochs": len(h), "last": h[-1] if h else None}
                              for s, h in state["history"].items()},
                   "seconds": state["seconds"], "plot": str(plot) if plot else None})


def _epoch(stage: str, finetune: bool, net: PamNet, optimizer, sp: dict, clusters: dict | None,
           data: RunData, cfg: TrainConfig, rng: np.random.Generator, failures: dict,
           progress: bool) -> tuple[float, dict]:
    """One training epoch of `stage` and its validation: (mean training loss, metrics)."""
    device = cfg.device
    if finetune:
        aes, val = data.aesthetics, data.aes_val
        train_idx, val_idx = np.flatnonzero(~val), np.flatnonzero(val)
        loss = finetune_epoch(net, optimizer, [aes.paths[i] for i in train_idx],
                              aes.targets[train_idx], cfg.batch_size, rng, device, cfg.workers,
                              failures, progress)
        metrics = finetune_validation(net, [aes.paths[i] for i in val_idx], aes.targets[val_idx],
                                      device, cfg.workers)
        net.backbone.train(True)
        return loss, metrics
    if stage == "aesthetics":
        loss = stages.aesthetics_epoch(net, optimizer, sp["aes_train"], cfg.batch_size, rng, device)
        return loss, stages.aesthetics_validation(net, sp["aes_val"], device)
    if stage == "attributes":
        loss = stages.attributes_epoch(net, optimizer, sp["attr_train"], sp["aes_train"],
                                       cfg.batch_size, cfg.attribute_weight, rng, device)
        return loss, stages.attributes_validation(net, sp["attr_val"], device)
    loss = stages.content_epoch(net, optimizer, clusters["train"], cfg.batch_size, rng, device)
    return loss, stages.content_validation(net, clusters["val"], device)


def _content_clusters(sp: dict[str, stages.Split], extra: dict, seed: int) -> dict:
    """k-means (k = 10) over the training photos' pooled classifier features; the centroids
    travel in the checkpoint so a resumed run keeps the same classes."""
    train_features = stages.mean_classifier_features(sp["aes_train"])
    if "content_centroids" in extra:
        clusters = ContentClusters(extra["content_centroids"].numpy(), float("nan"))
    else:
        clusters, _ = fit_content_clusters(train_features, seed=seed)
        extra["content_centroids"] = torch.from_numpy(clusters.centroids)
    val = sp["aes_val"]
    return {"clusters": clusters, "train_features": train_features,
            "train": stages.Split(sp["aes_train"].cache, sp["aes_train"].rows,
                                  clusters.assign(train_features)),
            "val": stages.Split(val.cache, val.rows,
                                clusters.assign(stages.mean_classifier_features(val)))}


def _data_summary(data: RunData, crop_cache, finetune_failures: dict) -> dict:
    failures = {}
    if crop_cache is not None:
        failures.update({str(data.paths[i]): why for i, why in crop_cache.failures.items()})
    failures.update(finetune_failures)
    aes = data.aesthetics
    return {"aesthetics": {"source": aes.source, "images": len(aes),
                           "validation_images": int(data.aes_val.sum()),
                           "missing_files": len(aes.missing)},
            "attributes": ({"source": data.attributes.source, "images": len(data.attributes),
                            "validation_images": int(data.attr_val.sum()),
                            "missing_files": len(data.attributes.missing)}
                           if data.attributes is not None else
                           {"source": "pixel measures (export.pixel_attributes) of the aesthetics photos"}),
            "undecodable": failures}


def _clean(obj):
    """JSON-safe: NaN and infinities become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def _plot(history: dict, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("aesthetics", "val_rho", "generic score: validation Spearman rho"),
              ("attributes", "val_mean_rho", "attributes: mean validation rho"),
              ("content", "val_accuracy", "content: validation accuracy")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, (stage, key, title) in zip(axes, panels, strict=True):
        h = history.get(stage, [])
        epochs = [r["epoch"] for r in h]
        ax.plot(epochs, [r.get(key) if r.get(key) is not None else np.nan for r in h], "o-", label=key)
        ax2 = ax.twinx()
        ax2.plot(epochs, [r["loss"] for r in h], "--", color="grey", label="train loss")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
