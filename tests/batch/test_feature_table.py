"""The Parquet feature table: schema, atomic parts, manifest-decided completeness, CURRENT."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving import feature_table as ft


def make_rows(n, rng, prefix="img", failed=()):
    ids = [f"{prefix}/{i:05d}.jpg" for i in range(n)]
    features = {"aes_score": rng.uniform(1, 5, n), "aes_feat": rng.normal(size=(n, 176)),
                "attributes": rng.uniform(-1, 1, (n, 10)), "content": rng.dirichlet(np.ones(10), n)}
    errors = [("corrupt: truncated" if i in failed else None) for i in range(n)]
    return ids, features, errors


def test_schema_is_the_design_contract():
    s = ft.FEATURE_SCHEMA
    assert s.names == ["image_id", "aes_score", "aes_feat", "attributes", "content", "model_version", "error"]
    assert s.field("image_id").type == pa.string() and not s.field("image_id").nullable
    assert s.field("aes_score").type == pa.float32()
    assert s.field("aes_feat").type == pa.list_(pa.float32(), 176)
    assert s.field("attributes").type == pa.list_(pa.float32(), 10)
    assert s.field("content").type == pa.list_(pa.float32(), 10)
    assert s.field("model_version").type == pa.string() and not s.field("model_version").nullable
    assert s.field("error").type == pa.string() and s.field("error").nullable


def test_failed_rows_have_null_features_and_round_trip(rng):
    ids, features, errors = make_rows(6, rng, failed={2})
    table = ft.feature_table(ids, features, "v1", errors)
    assert table.schema == ft.FEATURE_SCHEMA
    for name in ("aes_score", "aes_feat", "attributes", "content"):
        assert table.column(name).is_null().to_pylist() == [False, False, True, False, False, False]
    back = ft.to_numpy(table)
    assert back["image_id"] == ids and back["error"][2] == "corrupt: truncated"
    np.testing.assert_allclose(back["aes_feat"][3], features["aes_feat"][3].astype(np.float32))
    assert np.isnan(back["aes_feat"][2]).all() and np.isnan(back["aes_score"][2])


@pytest.mark.parametrize("bad", [
    dict(features={"aes_score": np.zeros(3), "aes_feat": np.zeros((3, 175)),
                   "attributes": np.zeros((3, 10)), "content": np.zeros((3, 10))}),
    dict(image_ids=["a", None, "c"]),
    dict(image_ids=["a", "", "c"]),
    dict(model_version=""),
    dict(errors=["x"]),
    dict(features=None),
])
def test_builder_rejects_malformed_input(bad):
    args = dict(image_ids=["a", "b", "c"], model_version="v1", errors=None,
                features={"aes_score": np.zeros(3), "aes_feat": np.zeros((3, 176)),
                          "attributes": np.zeros((3, 10)), "content": np.zeros((3, 10))})
    args.update(bad)
    with pytest.raises(ValueError):
        ft.feature_table(args["image_ids"], args["features"], args["model_version"], args["errors"])


def test_all_failed_rows_need_no_features():
    table = ft.feature_table(["a", "b"], None, "v1", ["not_an_image", "empty: zero-byte input"])
    assert table.column("aes_feat").null_count == 2


def test_parts_manifest_and_metadata(tmp_path, rng):
    ids, features, errors = make_rows(50, rng, failed={7})
    table = ft.feature_table(ids, features, "v1", errors)
    a = ft.write_part(str(tmp_path), table.slice(0, 30), crop_policy="five-crop-224")
    b = ft.write_part(str(tmp_path), table.slice(30), crop_policy="five-crop-224")
    assert (a.rows, a.failed, b.rows, b.failed) == (30, 1, 20, 0)
    # deterministic names: writing the same rows again replaces, never duplicates
    assert ft.write_part(str(tmp_path), table.slice(0, 30), crop_policy="five-crop-224").name == a.name
    assert ft.list_part_files(str(tmp_path), "v1") == sorted([a.name, b.name])
    meta = ft.file_metadata(str(tmp_path / "v1" / a.name))
    assert meta["pam.model_version"] == "v1" and meta["pam.crop_policy"] == "five-crop-224"

    with pytest.raises(ft.IncompleteVersionError):
        ft.read_version(str(tmp_path), "v1")
    assert ft.list_versions(str(tmp_path)) == []
    manifest = ft.write_manifest(str(tmp_path), "v1", [a, b], crop_policy="five-crop-224")
    assert (manifest["rows"], manifest["rows_ok"], manifest["rows_failed"]) == (50, 49, 1)
    assert ft.list_versions(str(tmp_path)) == ["v1"]
    back = ft.read_version(str(tmp_path), "v1")
    assert sorted(back.column("image_id").to_pylist()) == sorted(ids)


def test_reader_reads_only_what_the_manifest_lists(tmp_path, rng):
    ids, features, errors = make_rows(20, rng)
    table = ft.feature_table(ids, features, "v1", errors)
    a = ft.write_part(str(tmp_path), table.slice(0, 10))
    ft.write_manifest(str(tmp_path), "v1", [a])
    ft.write_part(str(tmp_path), table.slice(10))  # a later run, interrupted before its manifest
    assert ft.read_version(str(tmp_path), "v1").num_rows == 10


def test_atomic_write_leaves_old_file_or_new_file(tmp_path, monkeypatch):
    fs, root = ft.resolve(str(tmp_path))
    target = f"{root}/x/file.bin"
    ft.write_atomic(fs, target, b"old contents")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process is interrupted between writing and renaming

    monkeypatch.setattr(ft.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        ft.write_atomic(fs, target, b"new contents that never land")
    assert open(target, "rb").read() == b"old contents"
    assert os.listdir(tmp_path / "x") == ["file.bin"]  # no temporary left behind


def test_current_pointer_switches_and_rolls_back(tmp_path, rng):
    root = str(tmp_path)
    for version in ("v1", "v2"):
        ids, features, errors = make_rows(5, rng, prefix=version)
        part = ft.write_part(root, ft.feature_table(ids, features, version, errors))
        ft.write_manifest(root, version, [part])
    with pytest.raises(ft.NoCurrentVersionError):
        ft.current_version(root)
    ids, features, errors = make_rows(5, rng, prefix="v3")
    ft.write_part(root, ft.feature_table(ids, features, "v3", errors))
    with pytest.raises(ft.IncompleteVersionError):
        ft.set_current(root, "v3")  # an unfinished version is never served
    ft.set_current(root, "v1")
    ft.set_current(root, "v2")
    assert ft.current_version(root) == "v2"
    assert json.loads((tmp_path / "CURRENT").read_text())["history"] == ["v1"]
    ft.rollback(root)
    assert ft.current_version(root) == "v1"
    with pytest.raises(ValueError, match="no earlier version"):
        ft.rollback(root)
    assert [p.name for p in tmp_path.iterdir() if ft.TMP_MARK in p.name] == []


@pytest.mark.parametrize("name", ["", "..", "a/b", "online", "_x", ".hidden", "CURRENT"])
def test_version_names_cannot_escape_or_collide(name):
    with pytest.raises(ValueError):
        ft.check_version_name(name)


def test_id_keys_are_vectorised_fixed_width_and_safe():
    keys = ft.id_keys(["b", "ab", "é/ü.jpg"])
    assert keys.dtype == np.dtype("S9") and keys.tolist() == [b"b", b"ab", "é/ü.jpg".encode()]
    assert ft.id_keys(["toolongforwidth", "ok", "a\0b"], width=4, strict=False).tolist() == [b"", b"ok", b""]
    with pytest.raises(ValueError, match="NUL"):
        ft.id_keys(["a\0b"])


def test_parquet_file_is_plain_parquet(tmp_path, rng):
    ids, features, errors = make_rows(3, rng)
    part = ft.write_part(str(tmp_path), ft.feature_table(ids, features, "v1", errors))
    table = pq.read_table(tmp_path / "v1" / part.name)  # any Parquet reader can read it
    assert table.schema.remove_metadata() == ft.FEATURE_SCHEMA


def test_finalize_drops_duplicate_rows_and_merges_small_parts(tmp_path, rng):
    """What a re-delivered block or an interrupted merge leaves: the same ids in two parts."""
    from serving.batch.job import finalize

    fs, root = ft.resolve(str(tmp_path))
    ids, features, errors = make_rows(40, rng, failed={3})
    table = ft.feature_table(ids, features, "v1", errors)
    big = ft.write_part(root, table.slice(0, 32))
    ft.write_part(root, table.slice(28, 6))   # rows 28-33: four of them already in `big`
    ft.write_part(root, table.slice(34, 6))
    manifest = finalize(root, fs, "v1", "test", rows_per_file=32)
    names = [p["name"] for p in manifest["parts"]]
    assert big.name in names and len(names) == 2  # the big part untouched, the small ones merged
    back = ft.read_version(root, "v1").column("image_id").to_pylist()
    assert sorted(back) == sorted(ids) and manifest["rows"] == 40 and manifest["rows_failed"] == 1
    assert ft.list_part_files(root, "v1") == sorted(names)  # the replaced parts are gone
    assert finalize(root, fs, "v1", "test", rows_per_file=32)["digest"] == manifest["digest"]  # idempotent
