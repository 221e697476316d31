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


def test_parts_are_staged_then_committed_with_a_manifest(tmp_path, rng):
    ids, features, errors = make_rows(50, rng, failed={7})
    table = ft.feature_table(ids, features, "v1", errors)
    version = ft.FeatureTable(tmp_path).version("v1")
    a = version.write_part(table.slice(0, 30), crop_policy="five-crop-224")
    b = version.write_part(table.slice(30), crop_policy="five-crop-224")
    assert (a.rows, a.failed, b.rows, b.failed) == (30, 1, 20, 0)
    # deterministic names: writing the same rows again replaces, never duplicates
    assert version.write_part(table.slice(0, 30), crop_policy="five-crop-224").name == a.name
    assert version.staged_parts() == sorted([a.name, b.name]) and version.parts() == []
    staged = tmp_path / "_staging" / "model_version=v1"
    meta = pq.read_schema(staged / a.name).metadata
    assert meta[b"pam.model_version"] == b"v1" and meta[b"pam.crop_policy"] == b"five-crop-224"

    with pytest.raises(ft.IncompleteVersionError):
        version.read()
    assert ft.FeatureTable(tmp_path).versions() == []
    manifest = version.finalize("five-crop-224", rows_per_file=30)
    assert (manifest["rows"], manifest["rows_ok"], manifest["rows_failed"]) == (50, 49, 1)
    assert ft.FeatureTable(tmp_path).versions() == ["v1"]
    assert version.staged_parts() == [] and version.parts() == sorted([a.name, b.name])
    back = version.read()
    assert sorted(back.column("image_id").to_pylist()) == sorted(ids)


def test_reader_reads_only_what_the_manifest_lists(tmp_path, rng):
    ids, features, errors = make_rows(20, rng)
    table = ft.feature_table(ids, features, "v1", errors)
    version = ft.FeatureTable(tmp_path).version("v1")
    version.write_part(table.slice(0, 10))
    version.finalize()
    version.write_part(table.slice(10))  # a later run, interrupted before its commit
    assert version.read().num_rows == 10
    assert version.read_written().num_rows == 20


def test_atomic_write_leaves_old_file_or_new_file(tmp_path, monkeypatch):
    from serving.feature_table import files

    fs, root = files.resolve(str(tmp_path))
    target = f"{root}/x/file.bin"
    files.write_atomic(fs, target, b"old contents")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process is interrupted between writing and renaming

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        files.write_atomic(fs, target, b"new contents that never land")
    assert open(target, "rb").read() == b"old contents"
    assert os.listdir(tmp_path / "x") == ["file.bin"]  # no temporary left behind


def test_current_pointer_switches_and_rolls_back(tmp_path, rng):
    table = ft.FeatureTable(tmp_path)
    for version in ("v1", "v2"):
        ids, features, errors = make_rows(5, rng, prefix=version)
        table.write_version(ft.feature_table(ids, features, version, errors), promote=False)
    with pytest.raises(ft.NoCurrentVersionError):
        _ = table.current_name
    ids, features, errors = make_rows(5, rng, prefix="v3")
    table.version("v3").write_part(ft.feature_table(ids, features, "v3", errors))
    with pytest.raises(ft.IncompleteVersionError):
        table.set_current("v3")  # an unfinished version is never served
    table.set_current("v1")
    table.set_current("v2")
    assert table.current_name == "v2"
    assert json.loads((tmp_path / ft.CURRENT_NAME).read_text())["history"] == ["v1"]
    table.rollback()
    assert table.current_name == "v1"
    with pytest.raises(ValueError, match="no earlier version"):
        table.rollback()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


@pytest.mark.parametrize("name", ["", "..", "a/b", "_online", "_x", ".hidden", "a=b", "50%"])
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
    ft.FeatureTable(tmp_path).write_version(ft.feature_table(ids, features, "v1", errors))
    (part,) = (tmp_path / "model_version=v1").glob("part-*.parquet")
    table = pq.read_table(part, partitioning=None)  # any Parquet reader can read it
    # model_version is the directory's name (hive style), not a stored column
    stored = pa.schema([f for f in ft.FEATURE_SCHEMA if f.name != "model_version"])
    assert table.schema.remove_metadata() == stored


def test_finalize_drops_duplicate_rows_and_merges_small_parts(tmp_path, rng):
    """What a re-delivered block or an interrupted merge leaves: the same ids in two parts."""
    version = ft.FeatureTable(tmp_path).version("v1")
    ids, features, errors = make_rows(40, rng, failed={3})
    table = ft.feature_table(ids, features, "v1", errors)
    big = version.write_part(table.slice(0, 32))
    version.write_part(table.slice(28, 6))   # rows 28-33: four of them already in `big`
    version.write_part(table.slice(34, 6))
    manifest = version.finalize("test", rows_per_file=32)
    names = [p["name"] for p in manifest["parts"]]
    assert big.name in names and len(names) == 2  # the big part untouched, the small ones merged
    back = version.read().column("image_id").to_pylist()
    assert sorted(back) == sorted(ids) and manifest["rows"] == 40 and manifest["rows_failed"] == 1
    assert version.parts() == sorted(names) and version.staged_parts() == []  # the replaced parts are gone
    assert version.finalize("test", rows_per_file=32)["digest"] == manifest["digest"]  # idempotent


def test_a_later_run_adds_rows_to_a_complete_version(tmp_path, rng):
    version = ft.FeatureTable(tmp_path).version("v1")
    ids, features, errors = make_rows(30, rng)
    table = ft.feature_table(ids, features, "v1", errors)
    version.write_part(table.slice(0, 20))
    first = version.finalize(rows_per_file=20)
    version.write_part(table.slice(15, 15))  # 5 ids the version holds, 10 new ones
    second = version.finalize(rows_per_file=20)
    assert second["digest"] != first["digest"] and second["rows"] == 30
    assert sorted(version.read().column("image_id").to_pylist()) == sorted(ids)


def test_an_interrupted_commit_is_finished_by_the_next_finalize(tmp_path, rng, monkeypatch):
    from serving.feature_table import files

    version = ft.FeatureTable(tmp_path).version("v1")
    ids, features, errors = make_rows(30, rng)
    table = ft.feature_table(ids, features, "v1", errors)
    for begin in range(0, 30, 10):
        version.write_part(table.slice(begin, 10))
    real_move, moves = files.move, []

    def crash_after_one(*args):
        if moves:
            raise KeyboardInterrupt
        moves.append(args)
        real_move(*args)

    monkeypatch.setattr(files, "move", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        version.finalize(rows_per_file=10)
    assert not version.is_complete()
    monkeypatch.setattr(files, "move", real_move)
    manifest = version.finalize(rows_per_file=10)
    assert manifest["rows"] == 30 and version.staged_parts() == []
    assert sorted(version.read().column("image_id").to_pylist()) == sorted(ids)


def test_the_first_layout_is_migrated_on_open(tmp_path, rng):
    """A root written before model_version=... directories: CURRENT, <v>/, online/<v>/."""
    ids, features, errors = make_rows(12, rng)
    table = ft.feature_table(ids, features, "v1", errors)
    staged = ft.FeatureTable(tmp_path / "new").version("v1")
    staged.write_part(table.slice(0, 8), name="part-a.parquet")
    staged.finalize()
    old = tmp_path / "old"
    (old / "v1").mkdir(parents=True)
    for path in (tmp_path / "new" / "model_version=v1").iterdir():
        (old / "v1" / path.name).write_bytes(path.read_bytes())
    staged.write_part(table.slice(8), name="part-b.parquet")  # an interrupted later run
    (old / "v1" / "part-b.parquet").write_bytes((tmp_path / "new" / "_staging" / "model_version=v1" /
                                                 "part-b.parquet").read_bytes())
    (old / "online" / "v1").mkdir(parents=True)
    online = ft.feature_table(["scored/online.jpg"], {k: v[:1] for k, v in features.items()}, "v1")
    pq.write_table(online, old / "online" / "v1" / "part-0001-online.parquet")
    (old / "CURRENT").write_text(json.dumps({"model_version": "v1", "history": []}))
    migrated = ft.FeatureTable(old)
    assert sorted(p.name for p in old.iterdir()) == ["_CURRENT.json", "_online", "_staging", "model_version=v1"]
    assert migrated.current_name == "v1" and migrated.read().num_rows == 8
    assert migrated.version("v1").staged_parts() == ["part-b.parquet"]
    assert migrated.store().lookup([ids[0], "scored/online.jpg"])[0].image_ids == [ids[0], "scored/online.jpg"]
