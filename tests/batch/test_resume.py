"""Interrupting `pam features` (SIGINT, SIGKILL of the driver) loses and duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving import feature_table as ft
from tests.batch.conftest import S3_KEYS, make_photo_folder

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def start(args, env=None):
    cmd = [sys.executable, "-m", "pam.cli", "features", *args, "--num-cpus", "2", "--no-progress"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def wait_for_parts(out: Path, version: str, count: int, process, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(ft.FeatureTable(out).version(version).staged_parts()) >= count:
            return
        if process.poll() is not None:
            pytest.fail(f"the job ended before it could be interrupted:\n{process.stderr.read()[-3000:]}")
        time.sleep(0.05)
    pytest.fail("no part written in time")


def reap(process) -> None:
    """Stop whatever the killed driver left behind (its local Ray) by process group."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def test_interrupted_runs_resume_to_exactly_one_row_per_photo(tmp_path, slow_onnx_model):
    folder = tmp_path / "photos"
    ids = make_photo_folder(folder, 240, seed=5)  # room for two interruptions before the end
    out = tmp_path / "features"
    args = [str(folder), "--out", str(out), "--model", str(slow_onnx_model), "--batch-size", "8",
            "--rows-per-file", "16", "--threads", "1"]
    version = "tiny-test-0"

    # Ctrl-C: the driver flushes what was scored, says how to resume, exits non-zero
    job = start(args)
    wait_for_parts(out, version, 1, job)
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=120)
    reap(job)
    assert job.returncode != 0 and "run the same command again to resume" in stderr
    staged = ft.FeatureTable(out).version(version)
    assert not staged.is_complete() and staged.parts() == []  # nothing an engine would read
    with pytest.raises(ft.IncompleteVersionError):
        staged.read()
    assert not (out / "_staging" / f"model_version={version}" / "_LOCK.json").exists()  # released on Ctrl-C
    after_sigint = staged.staged_parts()

    # SIGKILL of the driver: no chance to clean up
    job = start(args)
    wait_for_parts(out, version, len(after_sigint) + 1, job)
    os.kill(job.pid, signal.SIGKILL)
    job.wait(30)
    reap(job)
    killed_rows = staged.read_written(["image_id"]).num_rows
    assert 0 < killed_rows < len(ids)
    assert not staged.is_complete()
    assert (out / "_staging" / f"model_version={version}" / "_LOCK.json").exists()  # the killed job's lock

    job = start([*args, "--json"])
    stdout, stderr = job.communicate(timeout=300)
    reap(job)
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert job.returncode == 1, stderr[-3000:]  # complete, but three photos are bad
    assert summary["complete"] and summary["already_written"] == killed_rows
    assert summary["processed"] == len(ids) - killed_rows
    table = staged.read()
    written = table.column("image_id").to_pylist()
    assert len(written) == len(set(written)) == len(ids) and set(written) == set(ids)
    assert summary["table"]["rows_failed"] == 3
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")] and staged.staged_parts() == []
    # sensible files: the small parts that interruptions flushed were merged at the end
    sizes = [p["rows"] for p in staged.manifest()["parts"]]
    assert sum(sizes) == len(ids) and all(size <= 16 for size in sizes)
    assert sum(size < 8 for size in sizes) <= 1


def test_cli_reads_and_writes_object_storage_by_uri(tmp_path, tiny_onnx_model, s3_server):
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://{s3_server}", **{
        "aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"})
    client.create_bucket(Bucket="bucket")
    folder = tmp_path / "photos"
    ids = make_photo_folder(folder, 6, seed=9, bad=False)
    for rel in ids:
        client.put_object(Bucket="bucket", Key=f"in/{rel}", Body=(folder / rel).read_bytes())
    query = f"?endpoint_override={s3_server}&scheme=http"
    job = start([f"s3://bucket/in/**/*.jpg{query}", "--out", f"s3://bucket/features{query}",
                 "--model", str(tiny_onnx_model), "--json"], env=S3_KEYS)
    stdout, stderr = job.communicate(timeout=300)
    reap(job)
    assert job.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    jpegs = sorted(i for i in ids if i.endswith(".jpg"))
    assert summary["listed"] == len(jpegs) and summary["rows_ok"] == len(jpegs)
    os.environ.update(S3_KEYS)
    table = ft.FeatureTable(f"s3://bucket/features{query}").read()
    assert sorted(table.column("image_id").to_pylist()) == jpegs
