"""The same job on a multi-node Ray cluster (ray.cluster_utils.Cluster), one node killed mid-job."""

from __future__ import annotations

import pytest

from serving import feature_table as ft
from serving.batch.job import JobConfig, run_job
from tests.batch.conftest import make_photo_folder

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    store = 200 * 1024 * 1024
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": store})
    workers = [cluster.add_node(num_cpus=1, object_store_memory=store) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_node_killed_mid_job_leaves_exactly_one_row_per_photo(cluster, slow_onnx_model, tmp_path):
    import ray

    cluster, workers = cluster
    folder = tmp_path / "photos"
    ids = make_photo_folder(folder, 160, seed=11)
    killed = []

    def kill_a_worker(rows_written: int) -> None:
        if rows_written >= 24 and not killed:
            cluster.remove_node(workers[1], allow_graceful=False)
            killed.append(rows_written)

    summary = run_job(JobConfig(inputs=str(folder), out=str(tmp_path / "out"), backend=str(slow_onnx_model),
                                batch_size=8, decode_batch=8, rows_per_file=16, progress=False,
                                on_rows=kill_a_worker, max_attempts=5))
    assert killed and killed[0] < len(ids), "the node was not killed mid-job"
    assert summary["plan"]["actors"] == 2  # one scoring actor per worker node
    stages = " | ".join(summary["ray_stages"])
    assert "MapBatches(read_and_decode)" in stages and "MapBatches(Scorer)" in stages and "->" not in stages
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2  # head + the surviving worker
    assert summary["complete"], summary
    table = ft.FeatureTable(tmp_path / "out").read("tiny-test-0")
    written = table.column("image_id").to_pylist()
    assert len(written) == len(set(written)) == len(ids) and set(written) == set(ids)
    assert summary["table"]["rows_failed"] == 3
    # after each attempt (failed or not) the job waited for exactly its scoring actors to die
    released = summary["scorers_released"]
    assert len(released) == summary["attempts"] and all(r["alive"] == [] for r in released), released
    # no scoring actor (Ray Data's MapWorker) outlives the job: each pipeline's are killed
    alive = [a for a in ray._private.state.actors().values()
             if "MapWorker" in a["ActorClassName"] and a["State"] != "DEAD"]
    assert not alive, alive
