"""Two jobs writing one version: one wins, the other fails with a clear message or waits; an
expired lease (a crashed job) frees the version; on S3 through conditional writes (moto)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from serving import feature_table as ft
from serving.feature_table.lease import Lease
from tests.batch.test_feature_table import make_rows

ROOT = Path(__file__).resolve().parents[2]


def rows(rng, version, begin, end):
    ids, features, errors = make_rows(200, rng)
    return ft.feature_table(ids[begin:end], {k: v[begin:end] for k, v in features.items()}, version,
                            errors[begin:end])


def test_a_second_writer_fails_with_a_clear_message(tmp_path):
    version = ft.FeatureTable(tmp_path).version("v1")
    with version.lock():
        with pytest.raises(ft.VersionLockedError, match="being written by another job"):
            version.lock().acquire()
    with version.lock():  # released: free again
        pass


def test_of_many_writers_starting_at_once_exactly_one_gets_the_lock(tmp_path):
    """A lock file that existed empty for a moment read as torn, hence expired, and a second
    writer took it too; rounds of 12 threads racing for one lock must each have one winner."""
    fs = pafs.LocalFileSystem()
    path = str(tmp_path / "race" / "_LOCK")
    def race(start: threading.Barrier, won: list) -> None:
        start.wait()
        try:
            won.append(Lease(fs, path, "the version", poll_s=0.01).acquire())
        except ft.VersionLockedError:
            pass

    for _ in range(20):
        start, won = threading.Barrier(12), []
        threads = [threading.Thread(target=race, args=(start, won)) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1, f"{len(won)} writers hold the lock at once"
        won[0].release()


def test_a_waiting_writer_gets_the_version_when_the_first_finishes(tmp_path, rng):
    """Two writers of overlapping rows, one after the other: every row once, none lost."""
    table = ft.FeatureTable(tmp_path)
    first, second = rows(rng, "v1", 0, 120), rows(rng, "v1", 80, 200)
    done = []

    def write(part, wait_s):
        version = table.version("v1")
        with version.lock(wait_s=wait_s):
            version.write_part(part)
            time.sleep(0.5)  # still holding the lock when the other one asks
            done.append(version.finalize(rows_per_file=64))

    threads = [threading.Thread(target=write, args=(first, 30)), threading.Thread(target=write, args=(second, 30))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(done) == 2
    ids = table.read("v1").column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 200


def test_an_expired_lease_is_taken_over(tmp_path):
    version = ft.FeatureTable(tmp_path).version("v1")
    lock = Path(version.staging) / "_LOCK.json"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"owner": "another-host:123:x", "expires_at": time.time() + 60}))
    with pytest.raises(ft.VersionLockedError, match="another-host"):
        version.lock().acquire()
    lock.write_text(json.dumps({"owner": "another-host:123:x", "expires_at": time.time() - 1}))  # it crashed
    with version.lock() as lease:
        assert json.loads(lock.read_text())["owner"] == lease.owner
    assert not lock.exists()


def test_a_killed_job_on_this_host_frees_its_version_at_once(tmp_path):
    version = ft.FeatureTable(tmp_path).version("v1")
    script = ("import sys, os; from serving.feature_table import FeatureTable; "
              f"FeatureTable({str(tmp_path)!r}).version('v1').lock(lease_s=3600).acquire(); "
              "print('held', flush=True); os._exit(0)")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "held"
    assert (Path(version.staging) / "_LOCK.json").exists()  # left behind, its lease an hour long
    with version.lock():
        pass


def test_the_lease_is_renewed_while_held_and_lost_if_taken(tmp_path):
    version = ft.FeatureTable(tmp_path).version("v1")
    lock = Path(version.staging) / "_LOCK.json"
    with version.lock(lease_s=0.6) as lease:
        first = json.loads(lock.read_text())["expires_at"]
        time.sleep(0.5)
        assert json.loads(lock.read_text())["expires_at"] > first  # renewed every lease/3
        lease.check()
        lock.write_text(json.dumps({"owner": "thief", "expires_at": time.time() + 60}))
        time.sleep(0.5)
        with pytest.raises(ft.VersionLockedError, match="taken by another job"):
            lease.check()
    assert json.loads(lock.read_text())["owner"] == "thief"  # not released: it is not ours


def test_pam_features_refuses_a_version_another_job_writes(tmp_path, tiny_onnx_model, photo_folder):
    folder, _ = photo_folder
    out = tmp_path / "features"
    with ft.FeatureTable(out).version("tiny-test-0").lock():  # this process: alive, on this host
        done = subprocess.run([sys.executable, "-m", "pam.cli", "features", str(folder), "--out", str(out),
                               "--model", str(tiny_onnx_model), "--no-progress"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0
    assert "tiny-test-0" in done.stderr and "being written by another job" in done.stderr
    assert not list(out.glob("model_version=*"))


@pytest.fixture
def s3(s3_server):
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://{s3_server}", aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    bucket = f"locks-{time.time_ns()}"
    client.create_bucket(Bucket=bucket)
    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", endpoint_override=s3_server,
                           scheme="http", region="us-east-1")
    return client, fs, bucket


def test_s3_lock_is_a_conditional_write(s3, rng):
    client, fs, bucket = s3
    table = ft.FeatureTable(f"{bucket}/features", fs)
    version = table.version("v1")
    key = "features/_staging/model_version=v1/_LOCK.json"
    with version.lock() as lease:
        assert json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())["owner"] == lease.owner
        with pytest.raises(ft.VersionLockedError, match="being written by another job"):
            version.lock().acquire()
        version.write_part(rows(rng, "v1", 0, 50))
        version.finalize()
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix=key)  # released
    assert table.read("v1").num_rows == 50

    # a crashed job's expired lock is replaced by exactly one of two takers (If-Match on its ETag)
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps({"owner": "gone:1:x", "expires_at": 0}).encode())
    takers = [Lease(fs, f"{bucket}/{key}", "v1") for _ in range(2)]
    expired = client.get_object(Bucket=bucket, Key=key)
    tags = [t._store.swap(f"{bucket}/{key}", expired["ETag"], None, t._body()) for t in takers]
    assert sum(tag is not None for tag in tags) == 1
    winner = takers[tags.index(next(t for t in tags if t))]
    assert json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())["owner"] == winner.owner


def test_s3_writers_of_one_version_never_duplicate_rows(s3, rng):
    _, fs, bucket = s3
    table = ft.FeatureTable(f"{bucket}/features", fs)
    results = []

    def write(part):
        try:
            version = table.version("v1")
            with version.lock(wait_s=60, lease_s=30):
                version.write_part(part)
                results.append(version.finalize(rows_per_file=64)["rows"])
        except Exception as error:  # a thread's failure must reach the assertion below
            results.append(error)

    threads = [threading.Thread(target=write, args=(rows(rng, "v1", b, b + 120),)) for b in (0, 80)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [120, 200], results
    ids = table.read("v1").column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 200
