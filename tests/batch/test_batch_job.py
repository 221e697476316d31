"""The Ray Data batch job on a real local Ray: folders, manifests, object storage, bad photos."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from export.preprocess import DECODE_ERROR_REASONS, decode
from pam.commands import features as features_command
from serving import feature_table as ft
from serving.batch.job import JobConfig, plan_resources, run_job, steady_rate
from serving.feature_table import FeatureStore, FeatureTable
from serving.scoring.backends import OnnxRuntimeBackend
from tests.batch.conftest import make_photo_folder, write_photo

pytestmark = pytest.mark.ray


def expected_features(model, folder, ids):
    """What the job's scoring actors compute: single-thread sessions run one photo at a time
    (a batch of another size sums in another order: ~1e-4 apart in float32)."""
    backend = OnnxRuntimeBackend(model, intra_op_threads=1)
    images = np.stack([decode((folder / i).read_bytes()) for i in ids])
    return backend.score(images)


def rows_by_id(table):
    columns = ft.to_numpy(table)
    return {image_id: i for i, image_id in enumerate(columns["image_id"])}, columns


def test_folder_job_scores_every_photo_once_and_resumes(local_ray, tiny_onnx_model, photo_folder, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(photo_folder[0], folder)
    all_ids = photo_folder[1]
    out = tmp_path / "features"
    config = JobConfig(inputs=str(folder), out=str(out), backend=str(tiny_onnx_model), rows_per_file=16,
                       progress=False)
    summary = run_job(config)
    assert summary["complete"] and summary["listed"] == len(all_ids) == 43
    assert (summary["rows_ok"], summary["rows_failed"]) == (40, 3)
    assert summary["not_images_skipped"] == 1 and summary["images_per_s"] > 0
    stages = " | ".join(summary["ray_stages"])  # decode tasks and scoring actors stay separate stages
    assert "MapBatches(read_and_decode)" in stages and "MapBatches(Scorer)" in stages and "->" not in stages
    assert features_command.exit_code(summary) == 1  # a failed row makes the job's status non-zero
    table = FeatureTable(out)
    assert table.current_name == "tiny-test-0"
    assert summary["scorers_released"] and summary["scorers_released"][0]["alive"] == []
    version = table.version("tiny-test-0")
    table = table.read()
    index, columns = rows_by_id(table)
    assert sorted(index) == sorted(all_ids) and table.num_rows == len(all_ids)  # one row per photo
    errors = {i: columns["error"][index[i]] for i in all_ids if columns["error"][index[i]]}
    reasons = {i: e.split(":")[0] for i, e in errors.items()}
    assert set(reasons) == {"bad/empty.jpg", "bad/not-an-image.png", "bad/truncated.jpg"}
    assert set(reasons.values()) <= set(DECODE_ERROR_REASONS)  # the documented vocabulary, named
    assert reasons["bad/empty.jpg"] == "empty" and reasons["bad/not-an-image.png"] == "not_an_image"
    good = [i for i in all_ids if i not in errors]
    expected = expected_features(tiny_onnx_model, folder, good)
    rows = [index[i] for i in good]
    for name in ("aes_score", "aes_feat", "attributes", "content"):
        np.testing.assert_allclose(columns[name][rows], expected[name], rtol=0, atol=1e-5)
    assert version.staged_parts() == []
    for name in version.parts():
        meta = pq.read_schema(out / "model_version=tiny-test-0" / name).metadata
        assert meta[b"pam.model_version"] == b"tiny-test-0" and meta[b"pam.crop_policy"] == b"tiny-test-whole-image"
    assert summary["table"]["files"] == 3  # 43 rows at 16 per file, not one file per batch

    found, missing = FeatureStore.open(str(out)).lookup(["set1/café-ü.jpg", "bad/empty.jpg", "nope"])
    assert found.image_ids == ["set1/café-ü.jpg"] and missing == ["nope"] and "bad/empty.jpg" in found.failed

    # a re-run is idempotent: nothing is scored again, the version stands as it was
    manifest = version.manifest()
    again = run_job(config)
    assert again["processed"] == 0 and again["already_written"] == 43
    assert version.manifest()["digest"] == manifest["digest"]

    # new photos join on the next run; only they are scored
    rng = np.random.default_rng(7)
    for i in range(5):
        write_photo(folder / "later" / f"new-{i}.jpg", rng)
    more = run_job(config)
    assert more["processed"] == 5 and more["table"]["rows"] == 48
    index, _ = rows_by_id(version.read())
    assert len(index) == 48 and version.read().num_rows == 48


def test_manifest_with_caller_ids_lists_photos_twice(local_ray, tiny_onnx_model, photo_folder, tmp_path):
    folder, ids = photo_folder
    good = [i for i in ids if not i.startswith("bad/")][:6]
    manifest = tmp_path / "photos.txt"
    manifest.write_text("".join(f"{folder / i}\trep{r}/{i}\n" for r in range(2) for i in good))
    out = tmp_path / "features"
    summary = run_job(JobConfig(inputs=str(manifest), out=str(out), backend=f"onnx:{tiny_onnx_model}",
                                batch_size=4, progress=False, promote=False))
    assert summary["complete"] and summary["rows_ok"] == 12 and summary["rows_failed"] == 0
    assert not (out / ft.CURRENT_NAME).exists()  # --no-promote
    index, columns = rows_by_id(FeatureTable(out).read("tiny-test-0"))
    for i in good:
        np.testing.assert_array_equal(columns["aes_feat"][index[f"rep0/{i}"]], columns["aes_feat"][index[f"rep1/{i}"]])


def test_object_storage_in_and_out(local_ray, tiny_onnx_model, s3_server, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://{s3_server}", aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket="photos")
    folder = tmp_path / "photos"
    ids = make_photo_folder(folder, 12, seed=3)
    for path in folder.rglob("*"):
        if path.is_file():
            client.put_object(Bucket="photos", Key=f"album/{path.relative_to(folder).as_posix()}",
                              Body=path.read_bytes())
    s3 = pafs.S3FileSystem(access_key="testing", secret_key="testing", endpoint_override=s3_server,
                           scheme="http", region="us-east-1")
    summary = run_job(JobConfig(inputs="photos/album", out="photos/features", backend=str(tiny_onnx_model),
                                input_filesystem=s3, output_filesystem=s3, progress=False))
    assert summary["complete"] and summary["listed"] == len(ids) and summary["rows_failed"] == 3
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="photos", Prefix="features/")["Contents"]}
    version = "features/model_version=tiny-test-0"
    assert {"features/_CURRENT.json", f"{version}/_MANIFEST.json", f"{version}/_index.arrow"} <= keys
    assert not [k for k in keys if k.startswith("features/_staging/") and k.endswith(".parquet")]
    table = FeatureTable("photos/features", s3).read()
    assert sorted(table.column("image_id").to_pylist()) == sorted(ids)
    good = [i for i in ids if not i.startswith("bad/")]
    store = FeatureStore.open("photos/features", filesystem=s3)
    found, missing = store.lookup(good)
    assert missing == [] and found.image_ids == good
    np.testing.assert_allclose(found.aes_feat, expected_features(tiny_onnx_model, folder, good)["aes_feat"],
                               atol=1e-5)


@pytest.mark.photos
def test_real_photos_match_direct_scoring(local_ray, tiny_onnx_model, shared_photos, tmp_path):
    names = sorted(p.name for p in shared_photos.glob("*.JPEG"))[:48]
    manifest = tmp_path / "photos.txt"
    manifest.write_text("".join(f"{shared_photos / n}\t{n}\n" for n in names))
    summary = run_job(JobConfig(inputs=str(manifest), out=str(tmp_path / "out"), backend=str(tiny_onnx_model),
                                progress=False))
    assert summary["rows_ok"] == 48 and summary["rows_failed"] == 0
    index, columns = rows_by_id(FeatureTable(tmp_path / "out").read())
    expected = expected_features(tiny_onnx_model, shared_photos, names)
    np.testing.assert_allclose(columns["aes_feat"][[index[n] for n in names]], expected["aes_feat"], atol=1e-5)


def node(cpus, gpus=0, alive=True):
    return {"Alive": alive, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


@pytest.mark.parametrize(("nodes", "kind", "expected"), [
    ([node(2)], "onnx", dict(actors=1, actor_cpus=1.0, threads=2, actor_gpus=0.0)),
    ([node(1)], "onnx", dict(actors=1, actor_cpus=0.5, threads=1)),
    ([node(0), node(1), node(1)], "onnx", dict(actors=2, actor_cpus=0.5, threads=1)),
    ([node(32), node(32), node(8, alive=False)], "onnx", dict(actors=8, threads=8, actor_cpus=4.0)),
    ([node(8, gpus=4), node(8, gpus=4)], "onnx", dict(actors=8, actor_gpus=1.0)),
    ([node(2)], "triton", dict(actors=2, actor_cpus=0.25)),
])
def test_resource_plan_leaves_cpu_for_decoding(nodes, kind, expected):
    plan = plan_resources(nodes, kind)
    for key, value in expected.items():
        assert getattr(plan, key) == value, (key, plan)
    # never more CPU reserved by actors on a node than it has minus one decode task
    if kind == "onnx" and not plan.actor_gpus:
        smallest = min(n["Resources"]["CPU"] for n in nodes if n["Resources"]["CPU"] >= 1 and n["Alive"])
        per_node = plan.actors / len([n for n in nodes if n["Resources"]["CPU"] >= 1 and n["Alive"]])
        assert per_node * plan.actor_cpus + plan.decode_cpus <= smallest


@pytest.mark.triton
def test_job_through_a_real_triton_server(local_ray, tiny_onnx_model, triton_server, photo_folder, tmp_path):
    """The same job with the Triton backend: rows equal in-process ONNX Runtime's."""
    folder, ids = photo_folder
    out = tmp_path / "features"
    summary = run_job(JobConfig(inputs=str(folder), out=str(out), backend=f"triton+grpc://{triton_server.grpc_url}",
                                batch_size=4, progress=False))
    assert summary["complete"] and summary["plan"]["actors"] >= 2  # light client actors
    assert (summary["rows_ok"], summary["rows_failed"]) == (40, 3)
    index, columns = rows_by_id(FeatureTable(out).read())
    good = [i for i in ids if not i.startswith("bad/")]
    expected = expected_features(tiny_onnx_model, folder, good)
    # another ONNX Runtime build in the server: float32 sums over 196k pixels differ slightly
    np.testing.assert_allclose(columns["aes_feat"][[index[i] for i in good]], expected["aes_feat"], atol=1e-3)


def test_a_stalled_pipeline_is_shut_down_and_the_job_resumes(local_ray, slow_onnx_model, tmp_path):
    folder, out = tmp_path / "photos", tmp_path / "out"
    ids = make_photo_folder(folder, 240, seed=3, bad=False)
    # the driver holds on to each batch for 0.6 s, so no batch arrives for longer than the 0.2 s
    # limit: the watchdog shuts the pipeline down after its first batch, while ~5 s of scoring
    # are still to come (the batches already prefetched are still written)
    stalled = run_job(JobConfig(inputs=str(folder), out=str(out), backend=str(slow_onnx_model), batch_size=8,
                                decode_batch=8, rows_per_file=8, progress=False, stall_timeout_s=0.2,
                                max_attempts=1, on_rows=lambda rows: time.sleep(0.6)))
    assert not stalled["complete"] and stalled["remaining"] > 0
    assert len(stalled["retried_errors"]) == 1 and len(stalled["plans"]) == 1
    assert stalled["retried_errors"][0].startswith("PipelineStalled: no scored batch for")

    resumed = run_job(JobConfig(inputs=str(folder), out=str(out), backend=str(slow_onnx_model), batch_size=8,
                                decode_batch=8, rows_per_file=8, progress=False))
    assert resumed["complete"] and resumed["already_written"] == len(ids) - stalled["remaining"]
    written = FeatureTable(out).read("tiny-test-0").column("image_id").to_pylist()
    assert sorted(written) == sorted(ids)


def test_steady_rate_is_the_middle_of_the_run():
    # the first three batches reach the driver together, the last ones fast (photos decoded
    # ahead): the middle's 10 rows/s is the rate, not what the ends make of it
    arrivals = [(5.0, 10), (5.1, 20), (5.2, 30)] + [(5.2 + i, 30 + 10 * i) for i in range(1, 8)] + \
               [(12.3, 110), (12.4, 120)]
    assert steady_rate(arrivals) == pytest.approx(10.0)
    assert steady_rate(arrivals[:2]) is None  # too few batches to tell
