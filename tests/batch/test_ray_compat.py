"""serving/cluster/ray_compat.py: each Ray workaround still does what it is there for, on the Ray
it was written for; and no other module of serving/ or pam/ touches Ray's private APIs."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from serving.cluster import ray_compat

ROOT = Path(__file__).resolve().parents[2]
PRIVATE_RAY = re.compile(
    r"ray\._private|ray\.experimental|internal_kv|_current_executor|_system_config\s*=|_metrics_export_port"
    r"|__ray_ready__|ray\.cloudpickle|ray\._raylet|\bray(\.\w+)*\._[a-z]\w*")


def test_pinned_to_the_ray_it_was_written_for():
    """Upgrading Ray fails here first: re-check each workaround of ray_compat, then move the pin."""
    import ray

    assert ray.__version__ == ray_compat.RAY_VERSION


def test_private_ray_apis_are_used_only_in_ray_compat():
    offenders = []
    for package in ("serving", "pam"):
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "serving" / "cluster" / "ray_compat.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if PRIVATE_RAY.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.ray
def test_ray_runs_its_workers_at_nice_15_unless_told(monkeypatch):
    """7.: what workers_at_driver_priority is there for (before the module's Ray starts)."""
    import os

    import ray

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        assert ray.get(ray.remote(lambda: os.getpriority(os.PRIO_PROCESS, 0)).remote()) == 15
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_release_waits_for_exactly_the_pipelines_actors(local_ray):
    """Workaround 1: the actors filed by one pipeline die, the GCS says so, their CPUs come back;
    another pipeline's actors are untouched."""
    import ray

    @ray.remote(num_cpus=0.5, max_restarts=0)
    class Filed:
        def __init__(self, registry):
            registry.add_current_actor()

        def ping(self):
            return "pong"

    ours, other = ray_compat.ScorerRegistry(), ray_compat.ScorerRegistry()
    actors = [Filed.remote(ours), Filed.remote(ours)]
    bystander = Filed.remote(other)
    assert ray.get([a.ping.remote() for a in [*actors, bystander]], timeout=60) == ["pong"] * 3
    released = ray_compat.release_scorers(ours, timeout_s=60)
    assert released["actors"] == 2 and released["alive"] == []
    ids = [a._actor_id.hex() for a in actors]
    assert set(ray_compat.actor_states(ids).values()) == {"DEAD"}
    for actor in actors:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.ping.remote(), timeout=30)
    assert ray.get(bystander.ping.remote(), timeout=30) == "pong"
    deadline = time.monotonic() + 30  # what they held is free again (the bystander keeps its 0.5)
    while ray.available_resources().get("CPU", 0.0) < 1.5 - 1e-6 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0.0) >= 1.5 - 1e-6
    assert ray_compat.release_scorers(ours)["actors"] == 0  # the keys go with the actors
    assert ray_compat.release_scorers(other)["actors"] == 1


@pytest.mark.ray
def test_a_running_execution_can_be_shut_down(local_ray):
    """Workaround 2: Dataset._current_executor exists once blocks flow, and shutting it down ends
    the iteration early (quietly or by raising: the job checks the watchdog's reason either way)."""
    import ray.data

    ds = ray.data.range(2000, override_num_blocks=200).map_batches(lambda b: b, batch_size=10)
    assert ray_compat.shutdown_execution(ds, ray_compat.PipelineStalled("x")) is False  # nothing runs yet
    iterator = iter(ds.iter_batches(batch_size=None, prefetch_batches=0))
    next(iterator)
    assert ray_compat.shutdown_execution(ds, ray_compat.PipelineStalled("stalled here")) is True
    rest = 0
    try:
        for _ in iterator:
            rest += 1
    except Exception as error:
        assert ray_compat.is_ray_failure(error) or "stalled here" in repr(error)
    assert rest < 150  # of 199 more blocks


@pytest.mark.ray
def test_an_execution_whose_first_block_never_comes_is_ended(local_ray):
    """Workaround 2 before the first block: Ray Data sets Dataset._current_executor only once a block
    is out, so the watchdog keeps the executor from its creation (a retry whose actors never start
    hung in CI until the test's 600 s limit)."""
    import ray.data

    def stuck(batch):
        time.sleep(20)
        return batch

    ds = ray.data.range(4, override_num_blocks=2).map_batches(stuck, batch_size=2)
    watchdog = ray_compat.StallWatchdog(ds, stall_timeout_s=60, node_loss_grace_s=30, poll_s=0.1,
                                        startup_timeout_s=2)
    started = time.monotonic()
    with watchdog:
        try:
            for _ in ds.iter_batches(batch_size=None, prefetch_batches=0):
                watchdog.batch_arrived()
        except Exception as error:
            assert ray_compat.is_ray_failure(error) or "no first batch" in repr(error)
    assert watchdog.reason and "no first batch" in watchdog.reason
    assert time.monotonic() - started < 15


@pytest.mark.ray
def test_map_batches_takes_max_restarts_without_a_warning(local_ray, recwarn):
    """Workaround 3: the **ray_remote_args route is accepted (and quiet) for max_restarts."""
    import ray.data

    class Identity:
        def __call__(self, batch):
            return batch

    ds = ray_compat.map_batches_with_remote_args(
        ray.data.range(8), Identity, ray_compat.SCORER_REMOTE_ARGS, batch_size=4,
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5)
    assert ds.count() == 8
    assert not [w for w in recwarn if "ray_remote_args" in str(w.message)]


def test_ray_failures_are_told_from_bugs():
    """Workaround 5: what the job retries."""
    import ray.exceptions

    assert ray_compat.is_ray_failure(ray.exceptions.RayActorError())
    assert ray_compat.is_ray_failure(ray_compat.PipelineStalled("no batch"))
    assert not ray_compat.is_ray_failure(ValueError("a bug of ours"))


class _Executor:
    """What the watchdog calls of a Ray Data executor: shutdown, remembered."""

    def __init__(self):
        self.stopped = None

    def shutdown(self, force, exception):
        self.stopped = exception


def _fake_dataset():
    executor = _Executor()
    return type("Dataset", (), {"_current_executor": executor})(), executor


def test_watchdog_aborts_on_a_lost_node_sooner_than_on_a_stall():
    dataset, executor = _fake_dataset()
    nodes = [{"a", "b"}]
    watchdog = ray_compat.StallWatchdog(dataset, stall_timeout_s=60, node_loss_grace_s=0.1, poll_s=0.02,
                                        nodes=lambda: nodes[-1])
    with watchdog:
        watchdog.batch_arrived()
        nodes.append({"a"})
        deadline = time.monotonic() + 10
        while watchdog.reason is None and time.monotonic() < deadline:
            time.sleep(0.02)
    assert watchdog.reason and "1 node(s) lost" in watchdog.reason
    assert isinstance(executor.stopped, ray_compat.PipelineStalled)


def test_watchdog_ends_a_pipeline_whose_first_batch_never_comes():
    """A retry after a lost node whose actors never start: without a first batch the watchdog
    still ends it after its start-up limit (and never before: start-up is not a stall)."""
    dataset, executor = _fake_dataset()
    patient = ray_compat.StallWatchdog(dataset, stall_timeout_s=60, node_loss_grace_s=0.1, poll_s=0.02,
                                       nodes=lambda: {"a"})
    with patient:
        time.sleep(0.3)
    assert patient.reason is None and executor.stopped is None
    watchdog = ray_compat.StallWatchdog(dataset, stall_timeout_s=60, node_loss_grace_s=0.1, poll_s=0.02,
                                        nodes=lambda: {"a"}, startup_timeout_s=0.2)
    with watchdog:
        deadline = time.monotonic() + 10
        while watchdog.reason is None and time.monotonic() < deadline:
            time.sleep(0.02)
    assert watchdog.reason and "no first batch" in watchdog.reason
    assert isinstance(executor.stopped, ray_compat.PipelineStalled)
