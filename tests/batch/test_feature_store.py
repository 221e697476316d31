"""FeatureStore: vectorised lookups over the memory-mapped index, online rows, version switches."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from serving import feature_table as ft
from serving.feature_table import store as feature_store
from serving.feature_table.store import FeatureStore
from tests.batch.test_feature_table import make_rows

ROOT = Path(__file__).resolve().parents[2]


def publish(root, version, rng, n=200, prefix="img", failed=(), parts=2, current=True,
            memory_bytes=ft.DEFAULT_MEMORY_BYTES):
    ids, features, errors = make_rows(n, rng, prefix=prefix, failed=failed)
    table = ft.feature_table(ids, features, version, errors)
    ft.FeatureTable(root).write_version(table, crop_policy="test", promote=current, rows_per_file=-(-n // parts),
                                       memory_bytes=memory_bytes)
    return ids, features


def patch_hashes(monkeypatch, hashes):
    """Replace the id hash everywhere the table computes it (index builders and lookups)."""
    from serving.feature_table import index, schema, store

    for module in (index, schema, store):
        monkeypatch.setattr(module, "key_hashes", hashes)


def test_lookup_returns_rows_in_order_asked(tmp_path, rng):
    ids, features = publish(tmp_path, "v1", rng, failed={3})
    store = FeatureStore.open(str(tmp_path))
    assert store.model_version == "v1" and len(store) == 200
    asked = [ids[10], "unknown.jpg", ids[3], ids[199], ids[0], ids[10], "另一个.jpg"]
    found, missing = store.lookup(asked)
    assert found.image_ids == [ids[10], ids[199], ids[0], ids[10]]
    assert missing == ["unknown.jpg", "另一个.jpg"]
    assert found.failed == {ids[3]: "corrupt: truncated"}  # known but failed: neither found nor missing
    rows = [10, 199, 0, 10]
    for name in ("aes_score", "aes_feat", "attributes", "content"):
        np.testing.assert_array_equal(getattr(found, name), features[name][rows].astype(np.float32))
    assert found.aes_feat.shape == (4, 176) and found.attributes.shape == (4, 10)
    assert found.features["content"].shape == (4, 10)
    empty, missing = store.lookup([])
    assert len(empty) == 0 and missing == [] and empty.aes_feat.shape == (0, 176)


def test_index_is_memory_mapped(tmp_path, rng):
    publish(tmp_path, "v1", rng)
    store = FeatureStore.open(str(tmp_path))
    segment = store._snap.batch
    assert not segment.aes_feat.flags.owndata and not segment.aes_feat.flags.writeable  # a view of the map
    assert segment.keys.dtype.kind == "S"


def test_stale_or_missing_index_is_rebuilt(tmp_path, rng):
    ids, _ = publish(tmp_path, "v1", rng, n=20)
    index = tmp_path / "model_version=v1" / ft.INDEX_NAME
    index.unlink()
    assert FeatureStore.open(str(tmp_path)).lookup([ids[5]])[0].image_ids == [ids[5]]
    assert index.exists()
    # a manifest rewritten by hand (a part added): the old index no longer matches it
    saved = index.read_bytes()
    more_ids, features, errors = make_rows(5, rng, prefix="more")
    version = ft.FeatureTable(tmp_path).version("v1")
    version.write_part(ft.feature_table(more_ids, features, "v1", errors))
    version.finalize(rows_per_file=10)
    index.write_bytes(saved)
    store = FeatureStore.open(str(tmp_path))
    assert len(store) == 25 and store.lookup([more_ids[2]])[1] == []


def test_duplicate_rows_are_served_once(tmp_path, rng):
    ids, features, errors = make_rows(10, rng)
    table = ft.feature_table(ids, features, "v1", errors)
    version = ft.FeatureTable(tmp_path).version("v1")
    version.write_part(table, name="part-a.parquet")
    version.write_part(table.slice(0, 4), name="part-b.parquet")
    version.finalize()
    store = FeatureStore.open(str(tmp_path), model_version="v1")
    assert len(store) == 10 and len(store.lookup(ids)[0]) == 10


def test_online_rows_are_persisted_and_visible_to_other_processes(tmp_path, rng):
    publish(tmp_path, "v1", rng, n=20)
    store = FeatureStore.open(str(tmp_path))
    other = FeatureStore.open(str(tmp_path))
    new_ids, features, _ = make_rows(3, rng, prefix="online")
    assert other.lookup(new_ids)[1] == new_ids
    with pytest.raises(ValueError, match="cannot join"):
        store.add_online(new_ids, features, model_version="v0")
    assert store.add_online(new_ids, features, model_version="v1") == 3
    assert store.lookup(new_ids)[0].image_ids == new_ids and len(store) == 23
    found, missing = other.lookup([*new_ids, "x"])  # another replica sees them without a restart
    assert found.image_ids == new_ids and missing == ["x"]
    np.testing.assert_array_equal(found.aes_feat, features["aes_feat"].astype(np.float32))

    script = textwrap.dedent(f"""
        import numpy as np
        from serving.feature_table.store import FeatureStore
        store = FeatureStore.open({str(tmp_path)!r})
        f = {{"aes_score": np.ones(1), "aes_feat": np.ones((1, 176)), "attributes": np.zeros((1, 10)),
             "content": np.full((1, 10), 0.1)}}
        store.add_online(["from-another-process.jpg"], f)
        store.add_online(["bad-upload.jpg"], None, errors=["not_an_image: no decoder recognises these bytes"])
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)
    found, missing = store.lookup(["from-another-process.jpg", "bad-upload.jpg"])
    assert found.image_ids == ["from-another-process.jpg"] and missing == []
    assert found.failed == {"bad-upload.jpg": "not_an_image: no decoder recognises these bytes"}
    # compaction keeps every row and leaves one file
    assert store.compact_online() == 3  # files merged
    assert len(list((tmp_path / "_online" / "model_version=v1").iterdir())) == 1
    assert len(other.lookup([*new_ids, "from-another-process.jpg"])[0]) == 4
    assert len(FeatureStore.open(str(tmp_path))) == 25


def test_version_switch_is_atomic_and_rolls_back(tmp_path, rng):
    v1_ids, _ = publish(tmp_path, "v1", rng, n=50, prefix="a")
    store = FeatureStore.open(str(tmp_path))
    v2_ids, v2_features = publish(tmp_path, "v2", rng, n=60, prefix="b", current=False)
    assert store.refresh() is False  # CURRENT still names v1
    pinned = FeatureStore.open(str(tmp_path), model_version="v1")

    errors = []
    stop = threading.Event()

    def reader():  # a lookup sees all of one version or all of the other, never a mix
        while not stop.is_set():
            found, _missing = store.lookup(v1_ids[:5] + v2_ids[:5])
            if sorted(found.image_ids) not in (sorted(v1_ids[:5]), sorted(v2_ids[:5])):
                errors.append(found.image_ids)
            if found.model_version not in ("v1", "v2"):
                errors.append(found.model_version)

    thread = threading.Thread(target=reader)
    thread.start()
    ft.FeatureTable(tmp_path).set_current("v2")
    assert store.refresh() is True
    stop.set()
    thread.join()
    assert not errors
    assert store.model_version == "v2" and len(store) == 60
    np.testing.assert_array_equal(store.lookup([v2_ids[7]])[0].aes_feat[0], v2_features["aes_feat"][7].astype(np.float32))
    assert pinned.refresh() is False and pinned.model_version == "v1"
    with pytest.raises(ValueError, match="cannot join"):
        store.add_online(["x"], None, errors=["e"], model_version="v1")
    ft.FeatureTable(tmp_path).rollback()
    assert store.refresh() is True and store.model_version == "v1"


def test_open_refuses_incomplete_versions(tmp_path, rng):
    ids, features, errors = make_rows(5, rng)
    ft.FeatureTable(tmp_path).version("v1").write_part(ft.feature_table(ids, features, "v1", errors))
    with pytest.raises(ft.IncompleteVersionError):
        FeatureStore.open(str(tmp_path), model_version="v1")
    with pytest.raises(ft.NoCurrentVersionError):
        FeatureStore.open(str(tmp_path))


def test_hash_collisions_are_resolved_by_key(tmp_path, rng, monkeypatch):
    """With a hash that collides for every id, lookups must still be exact (the key decides)."""
    patch_hashes(monkeypatch, lambda keys: np.full(len(keys), 7, np.uint64))
    ids, features = publish(tmp_path, "v1", rng, n=30)
    store = FeatureStore.open(str(tmp_path))
    asked = [ids[29], "img/nope.jpg", ids[0], ids[17]]
    found, missing = store.lookup(asked)
    assert found.image_ids == [ids[29], ids[0], ids[17]] and missing == ["img/nope.jpg"]
    np.testing.assert_array_equal(found.aes_feat, features["aes_feat"][[29, 0, 17]].astype(np.float32))


def test_ids_longer_than_any_stored_or_with_nul_are_missing(tmp_path, rng):
    ids, _ = publish(tmp_path, "v1", rng, n=5)
    store = FeatureStore.open(str(tmp_path))
    found, missing = store.lookup([ids[0] + "x" * 50, ids[0] + "\0", "", ids[1]])
    assert found.image_ids == [ids[1]] and len(missing) == 3


def test_store_benchmark_approaches_agree_at_small_size(tmp_path):
    """`pam bench store`'s three approaches, in-process at a tiny size: same rows (no timings)."""
    from pam.bench import store as bench

    ids = bench.generate(str(tmp_path), 3000)
    queries = [[ids[5], "unknown.jpg", ids[2999], ids[0]]]
    result, reference = bench._bench_store(str(tmp_path), queries, 2)
    assert reference.shape == (2, 176) and result["lookup_ms"] > 0  # ids[0] is the generated failure
    for approach in ("dict", "pandas"):  # each asserts it gathers the same rows as the store
        assert getattr(bench, f"_bench_{approach}")(str(tmp_path), queries, 2, reference)["lookup_ms"] > 0


@pytest.mark.parametrize("search", ["per id", "buckets"])
@pytest.mark.parametrize("coarse,ranges", [(False, False), (True, False), (False, True), (True, True)])
def test_lookups_agree_with_a_dict(tmp_path, rng, monkeypatch, coarse, ranges, search):
    """Many ids, present and absent, against a plain dict; `coarse` makes hashes collide in
    groups (full buckets, equal hashes across different keys) to exercise every probe path;
    `ranges` builds the index under a tiny memory budget, as several record batches; `search`:
    a binary search per id (a request's ids) or the bucket passes (large batches)."""
    monkeypatch.setattr(feature_store, "DIRECT_SEARCH_MAX", 10**9 if search == "per id" else 0)
    if coarse:
        real = ft.key_hashes
        patch_hashes(monkeypatch, lambda keys: (real(keys) % np.uint64(97)) << np.uint64(57))
    ids, features = publish(tmp_path, "v1", rng, n=3000, memory_bytes=200_000 if ranges else ft.DEFAULT_MEMORY_BYTES)
    store = FeatureStore.open(str(tmp_path))
    assert (type(store._snap.batch).__name__ == "_Ranges") == ranges
    row_of = {image_id: k for k, image_id in enumerate(ids)}
    asked = [ids[k] for k in rng.choice(3000, 700, replace=False)] + [f"absent/{k}.jpg" for k in range(300)]
    asked = [asked[k] for k in rng.permutation(len(asked))]
    found, missing = store.lookup(asked)
    assert missing == [i for i in asked if i not in row_of]
    failed = set(found.failed)
    assert found.image_ids == [i for i in asked if i in row_of and i not in failed]
    rows = [row_of[i] for i in found.image_ids]
    np.testing.assert_array_equal(found.aes_feat, features["aes_feat"][rows].astype(np.float32))
