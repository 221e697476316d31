"""A local Ray whose first start fails the way CI saw it (the raylet never registers, Ray gives
up after 30 s) starts on the second try, says why the first failed, and leaves nothing behind."""

from __future__ import annotations

import os
import socket

import pytest

from serving.cluster import local_ray

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _processes_below_us_named(name: str) -> list[int]:
    found = []
    for pid in local_ray._descendants(os.getpid()):
        try:
            if name in open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace"):
                found.append(pid)
        except OSError:
            pass
    return found


def test_a_start_that_times_out_is_retried_on_a_fresh_port(monkeypatch, capsys):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    taken = socket.socket()
    taken.bind(("", 0))
    taken.listen()
    taken_port = taken.getsockname()[1]
    ports = iter([taken_port])
    real_free_port = local_ray.free_port
    monkeypatch.setattr(local_ray, "free_port", lambda host: next(ports, None) or real_free_port(host))
    try:
        port = local_ray.init_local_ray(num_cpus=1, include_dashboard=False, log_to_driver=False)
        said = capsys.readouterr().err
        assert "did not start (try 1 of 2)" in said
        assert "Address already in use" in said, said  # the agent's own words, from Ray's logs
        assert port != taken_port
        assert [node["Alive"] for node in ray.nodes()] == [True]
        assert ray.get(ray.remote(lambda: 6 * 7).remote()) == 42
        assert len(_processes_below_us_named("/raylet/raylet")) == 1  # the first try's raylet exited
        assert len(_processes_below_us_named("gcs_server")) == 1  # and its GCS was stopped
    finally:
        taken.close()
        ray.shutdown()


def test_other_start_failures_are_not_retried(capsys):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    with pytest.raises(RuntimeError, match="no_such_option"):
        local_ray.init_local_ray(num_cpus=1, include_dashboard=False, no_such_option=True)
    assert "trying again" not in capsys.readouterr().err


def _nice_values(pid: int) -> set[int]:
    values = set()
    for thread in os.listdir(f"/proc/{pid}/task"):
        stat = open(f"/proc/{pid}/task/{thread}/stat").read()
        values.add(int(stat[stat.rindex(")") + 2:].split()[16]))
    return values


def test_rays_background_processes_run_at_the_lowest_priority_and_the_rest_do_not():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        local_ray.init_local_ray(num_cpus=1, include_dashboard=False, log_to_driver=False)
        agents = _processes_below_us_named("ray::DashboardAgent") + _processes_below_us_named("ray::RuntimeEnvAgent")
        assert len(agents) == 2
        for pid in agents:
            assert _nice_values(pid) == {19}, pid  # every thread
        for name in ("/raylet/raylet", "gcs_server"):  # they decide the workers' health and placement
            (pid,) = _processes_below_us_named(name)
            assert _nice_values(pid) == {mine}, name
        assert ray.get(ray.remote(lambda: os.getpriority(os.PRIO_PROCESS, 0)).remote()) == mine  # workers too
    finally:
        ray.shutdown()
