"""The demo's album: deterministic sample crops from files inside the wheels, licences recorded,
stable subsets of a folder, and the order in which the demo picks its photos."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pam.demo import album as album_mod
from pam.demo.album import SAMPLE_PHOTOS, AlbumError, crop_plan, sample_album, stable_subset


def _digests(album) -> dict[str, str]:
    return {i: hashlib.sha256(album.path(i).read_bytes()).hexdigest() for i in album.image_ids}


def test_sample_album_is_deterministic_and_balanced(tmp_path):
    first = sample_album(tmp_path / "a", 23, seed=3)
    again = sample_album(tmp_path / "b", 23, seed=3)
    other = sample_album(tmp_path / "c", 23, seed=4)
    assert len(first) == 23 and first.image_ids == again.image_ids
    assert list(_digests(first).values()) == list(_digests(again).values())
    assert list(_digests(first).values()) != list(_digests(other).values())
    per_source = {}
    for image_id in first.image_ids:
        per_source[image_id.split("/")[0]] = per_source.get(image_id.split("/")[0], 0) + 1
    assert sorted(per_source) == sorted(p.name for p in SAMPLE_PHOTOS)
    assert max(per_source.values()) - min(per_source.values()) <= 1
    manifest = json.loads((tmp_path / "a" / album_mod.ALBUM_MANIFEST).read_text())
    for crop in manifest["crops"]:
        if crop["image_id"].endswith("-000.jpg"):  # crop 0 is the whole photograph
            source = next(s for s in manifest["sources"] if s["name"] == crop["source"])
            assert crop["box"] == [0, 0, source["width"], source["height"]] and crop["scale"] == 1.0
        else:
            assert crop["scale"] in album_mod.CROP_SCALES
        with Image.open(first.path(crop["image_id"])) as im:
            assert im.format == "JPEG" and max(im.size) <= album_mod.CROP_MAX_SIDE


def test_a_photo_keeps_its_first_crops_when_the_album_grows():
    sizes = [(640, 427), (512, 512)]
    small, large = crop_plan(sizes, 6, seed=0), crop_plan(sizes, 20, seed=0)
    for few, many in zip(small, large, strict=True):
        assert many[:len(few)] == few
    for (width, height), crops in zip(sizes, large, strict=True):
        for crop in crops:
            left, top, right, bottom = crop["box"]
            assert 0 <= left < right <= width and 0 <= top < bottom <= height


def test_sample_photos_come_from_inside_the_installed_wheels_with_their_licences(tmp_path):
    album = sample_album(tmp_path, len(SAMPLE_PHOTOS), seed=0)
    packages = {"skimage": Path(__import__("skimage").__file__).parent,
                "sklearn": Path(__import__("sklearn").__file__).parent}
    for source in album.sources:
        path = Path(source["path"])
        assert path.is_relative_to(packages[source["module"]]), path  # never a pooch cache
        assert hashlib.sha256(path.read_bytes()).hexdigest() == source["sha256"]
        assert source["licence"] and source["credit"] and source["url"].startswith("http")
        with Image.open(path) as im:
            assert np.asarray(im.convert("RGB")).std(axis=(0, 1)).min() > 1  # a colour photograph
    by_name = {s["name"]: s for s in album.sources}
    assert by_name["china"]["licence"] == "CC BY 2.0" and by_name["chelsea"]["licence"].startswith("CC0")
    assert "crops" in album.description and str(len(SAMPLE_PHOTOS)) in album.description


def test_rebuilds_only_when_the_inputs_change(tmp_path):
    album = sample_album(tmp_path, 12, seed=0)
    first = album.path(album.image_ids[3])
    stamp = first.stat().st_mtime_ns
    sample_album(tmp_path, 12, seed=0)
    assert first.stat().st_mtime_ns == stamp
    sample_album(tmp_path, 12, seed=1)
    assert first.stat().st_mtime_ns != stamp


def test_stable_subset_does_not_reshuffle_when_photos_are_added():
    ids = [f"p{k:03d}.jpg" for k in range(50)]
    chosen = stable_subset(ids, 10, seed=0)
    grown = stable_subset([*ids, *(f"q{k}.jpg" for k in range(5))], 10, seed=0)
    assert len(chosen) == 10 and chosen == sorted(chosen)
    assert len(set(chosen) & set(grown)) >= 5  # the new photos can only displace, not reshuffle
    assert set(grown) - set(chosen) <= {f"q{k}.jpg" for k in range(5)}
    assert stable_subset(ids[:4], 10, seed=0) == ids[:4]


def _photo(path: Path, k: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 60, 3), k * 20, np.uint8)).save(path)


def test_folder_album_caps_lists_and_writes_the_manifest(tmp_path):
    root = tmp_path / "photos"
    for k in range(7):
        _photo(root / ("sub" if k % 2 else "") / f"p{k}.png", k)
    (root / "notes.txt").write_text("not a photo")
    album = album_mod.resolve_album(root, tmp_path / "out", 5, seed=0)
    assert album.kind == "folder" and len(album) == 5 and album.listed == 7
    assert "subset of the 7" in album.description
    lines = album.write_sources_list(tmp_path / "out" / "album.txt").read_text().splitlines()
    assert len(lines) == 5
    for line, image_id in zip(lines, album.image_ids, strict=True):
        path, listed_id = line.split("\t")
        assert listed_id == image_id and Path(path) == (root / image_id).resolve()


def test_album_errors_say_what_to_do(tmp_path):
    with pytest.raises(AlbumError, match="not a folder"):
        album_mod.resolve_album(tmp_path / "missing", tmp_path, 10, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlbumError, match="no photos"):
        album_mod.resolve_album(tmp_path / "empty", tmp_path, 10, 0)
    with pytest.raises(AlbumError, match="below the"):
        sample_album(tmp_path / "s", 3, 0)


def test_preference_order_folder_then_shared_then_samples(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    _photo(shared / "a.jpg", 1)
    _photo(shared / "b.jpg", 2)
    monkeypatch.setattr(album_mod, "shared_photos_dir", lambda: shared)
    mine = tmp_path / "mine"
    _photo(mine / "x.jpg", 3)
    assert album_mod.resolve_album(mine, tmp_path / "o1", 10, 0).image_ids == ["x.jpg"]
    found = album_mod.resolve_album(None, tmp_path / "o2", 10, 0)
    assert found.kind == "shared-photos" and "non-commercial" in found.description
    monkeypatch.setattr(album_mod, "shared_photos_dir", lambda: None)
    assert album_mod.resolve_album(None, tmp_path / "o3", 10, 0).kind == "sample-crops"


def test_a_folder_subset_does_not_all_land_in_pam_trains_validation_split():
    from export.datasets import validation_mask

    ids = [f"n{k:08d}_photo.JPEG" for k in range(1000)]
    chosen = stable_subset(ids, 60, seed=0)
    assert 1 <= validation_mask(chosen, 0.1, 0).sum() <= 20
