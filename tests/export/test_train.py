"""Training: it learns, checkpoints are safetensors, resume is exact, bad data fails clearly."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export import datasets  # noqa: E402
from export.train import TrainConfig, checkpoint, load_trained, resume, train  # noqa: E402
from personalize.features import ATTRIBUTE_NAMES  # noqa: E402

from .conftest import TINY_SCHEDULE, write_photo_set  # noqa: E402

pytestmark = pytest.mark.torch


def _config(photo_set, out, **overrides) -> TrainConfig:
    return TrainConfig(ratings=str(photo_set["ratings"]), images=str(photo_set["photos"]),
                       out=str(out), **{"attributes": str(photo_set["attributes"]),
                                        **TINY_SCHEDULE, **overrides})


def test_tiny_run_learns_the_taste_and_saves_safetensors(tiny_run):
    _net, state = load_trained(tiny_run)
    history = state["history"]
    assert [len(history[s]) for s in ("aesthetics", "attributes", "content")] == [3, 2, 2]
    assert history["aesthetics"][-1]["val_rho"] > 0.5, history["aesthetics"]
    assert history["attributes"][-1]["val_mean_rho"] > 0.3, history["attributes"]
    assert history["aesthetics"][0]["lr"] == pytest.approx(0.02)
    assert history["aesthetics"][2]["lr"] == pytest.approx(0.02 * 0.96 ** 2)
    from safetensors import safe_open

    with safe_open(str(tiny_run / "model.safetensors"), framework="pt") as f:  # no pickle inside
        assert f.metadata()["format"] == checkpoint.FORMAT
        assert "extra/content_centroids" in f.keys()
    assert (tiny_run / "training.png").stat().st_size > 1000


def test_resume_ends_with_exactly_the_uninterrupted_weights(photo_set, tiny_run, tmp_path):
    out = tmp_path / "run"
    first = train(_config(photo_set, out), progress=False, stop_after=2)
    assert first["interrupted"] and (first["stage"], first["epoch"]) == ("aesthetics", 2)
    _net_state, momentum, _, _state = checkpoint.load(out / "checkpoint.safetensors")
    assert momentum and all(k.startswith("aesthetics.") for k in momentum)  # SGD state travels
    second = resume(out, progress=False, stop_after=2)
    assert (second["stage"], second["epoch"]) == ("attributes", 1)
    resume(out, progress=False)
    resumed, _ = load_trained(out)
    uninterrupted, _ = load_trained(tiny_run)
    for key, value in uninterrupted.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_refuses_to_overwrite_a_run_or_change_its_data(photo_set, tiny_run, tmp_path):
    with pytest.raises(FileExistsError, match="already holds a training checkpoint"):
        train(_config(photo_set, tiny_run), progress=False)
    with pytest.raises(ValueError, match="frozen random trunk learns nothing"):
        train(_config(photo_set, tmp_path / "x", backbone="inception_bn"), progress=False)
    with pytest.raises(ValueError, match="ratings cannot change when resuming"):
        resume(tiny_run, progress=False, ratings="other.csv")


def test_bad_and_missing_photos_fail_alone(tmp_path):
    data = write_photo_set(tmp_path / "data", n=16, seed=5)
    (data["photos"] / "img001.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (data["photos"] / "img002.jpg").unlink()
    summary = train(TrainConfig(ratings=str(data["ratings"]), images=str(data["photos"]),
                                attributes=str(data["attributes"]), out=str(tmp_path / "run"),
                                **{**TINY_SCHEDULE, "epochs": 1, "attribute_epochs": 1,
                                   "content_epochs": 1}), progress=False)
    assert summary["data"]["aesthetics"]["missing_files"] == 1
    (bad, why), = summary["data"]["undecodable"].items()
    assert bad.endswith("img001.jpg") and why.startswith(("truncated", "corrupt"))
    assert summary["stages"]["content"]["epochs"] == 1


def test_finetune_trunk_trains_the_trunk(photo_set, tmp_path):
    cfg = _config(photo_set, tmp_path / "run", finetune_trunk=True, epochs=1, attribute_epochs=1,
                  content_epochs=1)
    before = {k: v.clone() for k, v in __import__("export.networks", fromlist=["x"])
              .create_model("tiny", seed=0).backbone.state_dict().items()}
    train(cfg, progress=False)
    net, state = load_trained(tmp_path / "run")
    changed = [k for k, v in net.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("conv.weight") for k in changed)
    assert state["history"]["aesthetics"][0]["val_rho"] is not None


def test_pixel_attribute_targets_when_no_labels_are_given(photo_set, tmp_path):
    pytest.importorskip("export.pixel_attributes", reason="export.pixel_attributes not written yet")
    cfg = _config(photo_set, tmp_path / "run", attributes=None, epochs=1, attribute_epochs=1,
                  content_epochs=1)
    summary = train(cfg, progress=False)
    assert "pixel measures" in summary["data"]["attributes"]["source"]
    assert summary["stages"]["attributes"]["last"]["val_mean_rho"] is not None


def test_flickr_aes_reader_leaves_test_workers_images_out(tmp_path):
    data = write_photo_set(tmp_path, n=6, seed=1)
    lines = data["ratings"].read_text().splitlines()
    lines.append("t1,img005.jpg,5")  # a test worker's rating of an image others rated too
    lines.append("t1,only_test.jpg,4")
    data["ratings"].write_text("\n".join(lines) + "\n")
    (tmp_path / "test_workers.txt").write_text("t1\n")
    images = datasets.load_aesthetics(data["ratings"], data["photos"], tmp_path / "test_workers.txt")
    assert "only_test.jpg" not in images.ids and len(images) == 6
    ratings = {r.split(",")[1]: [] for r in lines[1:]}
    for r in lines[1:]:
        w, name, score = r.split(",")
        if w != "t1":
            ratings[name].append(int(score))
    i = images.ids.index("img005.jpg")
    assert images.targets[i] == pytest.approx(np.mean(ratings["img005.jpg"]))


def test_aadb_label_folder(tmp_path):
    folder = tmp_path / "imgListFiles_label"
    folder.mkdir()
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"x")
    for i, short in enumerate(ATTRIBUTE_NAMES):
        name = datasets.AADB_NAMES[short]
        (folder / f"imgListTrainRegression_{name}.txt").write_text(f"a.jpg {i / 20:.2f}\nb.jpg -0.5\n")
    (folder / "imgListTrainRegression_MotionBlur.txt").write_text("a.jpg 0.9\nb.jpg 0.9\n")
    labels = datasets.load_attributes(folder, tmp_path, "train")
    assert labels.ids == ["a.jpg", "b.jpg"]
    np.testing.assert_allclose(labels.targets[0], np.arange(10) / 20, atol=1e-6)
    (folder / "imgListTrainRegression_Symmetry.txt").write_text("a.jpg 0.1 extra\n")
    with pytest.raises(datasets.DatasetError, match=r"Symmetry.txt:1: expected"):
        datasets.load_attributes(folder, tmp_path, "train")
    shutil.rmtree(folder)
    with pytest.raises(datasets.DatasetError, match="cannot open"):
        datasets.load_attributes(folder, tmp_path, "train")


def test_trains_on_an_aadb_label_folder_with_its_own_split(photo_set, tmp_path):
    """AADB's layout: one file per attribute and split; validation comes from AADB's own files."""
    rows = [line.split(",") for line in photo_set["attributes"].read_text().splitlines()[1:]]
    folder = tmp_path / "imgListFiles_label"
    folder.mkdir()
    for split, part in (("Train", rows[:20]), ("Validation", rows[20:])):
        for i, short in enumerate(ATTRIBUTE_NAMES):
            name = datasets.AADB_NAMES[short]
            (folder / f"imgList{split}Regression_{name}.txt").write_text(
                "".join(f"{r[0]} {r[1 + i]}\n" for r in part))
    cfg = _config(photo_set, tmp_path / "run", attributes=str(folder), epochs=1, attribute_epochs=1,
                  content_epochs=0)
    summary = train(cfg, progress=False)
    attrs = summary["data"]["attributes"]
    assert str(folder) in attrs["source"] and attrs["validation_images"] == len(rows) - 20
    assert summary["stages"]["attributes"]["last"]["val_mean_rho"] is not None


def test_trunk_cache_in_onnxruntime_matches_torch(photo_set, tmp_path):
    """The cache's trunk runs in ONNX Runtime on CPU for large runs; it stores what torch would."""
    from export.networks import create_model
    from export.train import cache

    net = create_model("tiny", seed=2)
    paths = sorted(photo_set["photos"].iterdir())[:6]
    stored = {engine: cache.build_or_load(net, paths, tmp_path / engine, 1, 0, progress=False,
                                          engine=engine)
              for engine in ("torch", "onnxruntime")}
    a, b = stored["torch"], stored["onnxruntime"]
    assert a.ok.all() and b.ok.all()
    np.testing.assert_allclose(b.fmap.astype(np.float32), a.fmap.astype(np.float32), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(b.classifier.astype(np.float32), a.classifier.astype(np.float32),
                               rtol=2e-3, atol=2e-3)
