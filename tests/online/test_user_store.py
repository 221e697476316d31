"""The user-store contract, run against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import threading

import pytest

from serving.online.user_store import RequestIdConflict, UnknownUser, open_user_store


@pytest.fixture
def store(store_url):
    with open_user_store(store_url) as s:
        yield s


def test_album_registration_extends_in_order(store):
    ack = store.add_album("alice", ["a", "b", "c"])
    assert (ack.added, ack.album_size, ack.album_version) == (3, 3, 1)
    ack = store.add_album("alice", ["c", "d", "d"])
    assert (ack.added, ack.album_size, ack.album_version) == (1, 4, 2)
    ack = store.add_album("alice", ["a"])  # nothing new: the version does not move
    assert (ack.added, ack.album_version) == (0, 2)
    assert store.snapshot("alice").album == ["a", "b", "c", "d"]


def test_ratings_replace_and_join_album(store):
    store.add_album("bob", ["a", "b"])
    first = store.add_ratings("bob", [("a", 4), ("x", 2)])
    assert (first.n_ratings, first.replayed) == (2, False)
    second = store.add_ratings("bob", [("a", 1)])  # re-rating replaces
    assert second.n_ratings == 2 and second.ratings_version == first.ratings_version + 1
    snap = store.snapshot("bob")
    assert dict(zip(snap.rated_ids, snap.scores, strict=True)) == {"a": 1.0, "x": 2.0}
    assert snap.rated_ids[-1] == "a"  # rating order follows the latest rating
    assert snap.album == ["a", "b", "x"]  # a rated photo joins the album


def test_request_id_makes_retries_idempotent(store):
    store.create_user("carol")
    ack = store.add_ratings("carol", [("a", 3)], request_id="r-1")
    retry = store.add_ratings("carol", [("a", 3)], request_id="r-1")
    assert retry.replayed and retry.ratings_version == ack.ratings_version
    assert store.versions("carol").ratings == ack.ratings_version  # the retry wrote nothing
    with pytest.raises(RequestIdConflict, match="r-1"):
        store.add_ratings("carol", [("a", 5)], request_id="r-1")
    assert store.snapshot("carol").scores == [3.0]


def test_unknown_user(store):
    with pytest.raises(UnknownUser, match="nobody"):
        store.add_ratings("nobody", [("a", 3)])
    with pytest.raises(UnknownUser):
        store.versions("nobody")
    with pytest.raises(UnknownUser):
        store.snapshot("nobody")
    assert not store.exists("nobody")
    assert store.delete_user("nobody") is False


def test_delete_removes_everything(store):
    store.add_album("dave", ["a", "b"])
    store.add_ratings("dave", [("a", 5)], request_id="r")
    store.add_album("erin", ["a"])
    assert store.delete_user("dave") is True
    assert not store.exists("dave")
    store.create_user("dave")  # a new user of the same name starts empty, request ids included
    snap = store.snapshot("dave")
    assert snap.album == [] and snap.rated_ids == []
    assert store.add_ratings("dave", [("a", 1)], request_id="r").replayed is False
    assert store.snapshot("erin").album == ["a"]


def test_tenants_are_separate(store):
    store.add_album("u", ["a"], tenant="t1")
    store.add_album("u", ["b"], tenant="t2")
    assert store.snapshot("u", tenant="t1").album == ["a"]
    assert store.snapshot("u", tenant="t2").album == ["b"]
    assert not store.exists("u")


def test_hostile_ids_are_data_not_sql(store):
    evil = "x'); DROP TABLE pam_users; --"
    store.add_album(evil, [evil, "../../etc/passwd"])
    assert store.snapshot(evil).album == [evil, "../../etc/passwd"]
    assert store.count_users() == 1


def test_concurrent_ratings_for_one_user_lose_nothing(store_url):
    stores = [open_user_store(store_url) for _ in range(2)]  # two "replicas"
    stores[0].create_user("zoe")
    n_threads, per_thread = 8, 25
    errors = []

    def rate(worker: int):
        store = stores[worker % 2]
        try:
            for i in range(per_thread):
                store.add_ratings("zoe", [(f"img-{worker}-{i}", 1 + (i % 5))], request_id=f"{worker}-{i}")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=rate, args=(w,)) for w in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    snap = stores[0].snapshot("zoe")
    assert len(snap.rated_ids) == n_threads * per_thread
    assert snap.versions.ratings == n_threads * per_thread  # every write serialised, none lost
    for s in stores:
        s.close()


def test_acknowledged_ratings_survive_reopen(store_url):
    with open_user_store(store_url) as store:
        store.create_user("fay")
        store.add_ratings("fay", [("a", 2), ("b", 5)])
    with open_user_store(store_url) as again:
        snap = again.snapshot("fay")
        assert dict(zip(snap.rated_ids, snap.scores, strict=True)) == {"a": 2.0, "b": 5.0}


def test_url_parsing(tmp_path):
    with pytest.raises(ValueError, match="unsupported user store URL"):
        open_user_store("mysql://x")
    with open_user_store(tmp_path / "plain.db") as store:
        assert store.url.startswith("sqlite:///")


def test_bulk_import_users(store):
    n = store.import_users({"u1": [("a", 3), ("b", 5)], "u2": [("c", 1)]})
    assert n == 2
    snap = store.snapshot("u1")
    assert dict(zip(snap.rated_ids, snap.scores, strict=True)) == {"a": 3.0, "b": 5.0} and snap.album == ["a", "b"]
    store.add_ratings("u2", [("c", 4)])
    assert store.snapshot("u2").scores == [4.0] and store.versions("u2").ratings == 2
    with pytest.raises(ValueError, match="exist already"):
        store.import_users({"u1": [("z", 1)]})


def test_recreated_user_gets_a_new_generation(store):
    store.create_user("gen")
    first = store.versions("gen")
    store.delete_user("gen")
    store.create_user("gen")
    assert store.versions("gen").generation != first.generation
