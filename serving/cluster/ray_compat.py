"""Where this project works around Ray: the only module that touches Ray's private APIs.

Each workaround names the Ray behaviour it works around (and the issue that reports it), and
tests/batch/test_ray_compat.py checks each against the Ray version pinned here: when Ray is
upgraded that test fails first, and says which workaround to re-check.

1. A failed pipeline's scoring actors outlive it (`ScorerRegistry`, `release_scorers`).
   Ray Data lets a failed pipeline's actor pool go by dropping its handles, not by killing the
   actors; its executor threads hold those handles in reference cycles until a garbage collection
   (ray-project/ray#63944 asks the same question), and lineage kept for the blocks they produced
   can keep them alive. Each holds its CPU reservation, and the retry's decode tasks wait for it
   (on a 1-CPU node: forever). Ray also keeps dead actors in the pool's slots (ray-project/ray#62746,
   fix proposed in ray-project/ray#65543). So each scoring actor files its own handle in the GCS's
   key-value store (which outlives any worker node), the driver kills them all when a pipeline
   ends, and waits until the GCS reports exactly those actors dead: their CPUs are then free.
   Not a wait for "all CPUs free" (wrong on a shared cluster, where other jobs hold some).
2. A pipeline whose actor cannot come back hangs (`StallWatchdog`, `shutdown_execution`).
   With an actor's node gone and no room for a replacement, `iter_batches` waits forever
   (ray-project/ray#41258, #59518; a timeout is asked for in ray-project/ray#45661). The watchdog
   shuts the Dataset's executor down (a private attribute, `Dataset._current_executor`) so the
   iteration ends and the job re-plans on the nodes that are left.
3. Ray Data restarts a dead actor forever by default (ray-project/ray#33906) and parks its tasks
   until then: `SCORER_REMOTE_ARGS` fails fast instead (`max_restarts=0`, passed through the
   deprecated **ray_remote_args route: Ray 2.60's map_batches has no named parameter for it).
4. At the default worker soft limit (one worker per CPU, ray-project/ray#36766) Ray kills the
   workers it prestarted as soon as a pipeline's ~4 actors start, and the first decode tasks wait
   for new ones: `local_system_config` raises the limit. The metrics port of a local Ray is a
   private argument of ray.init (`init_options`).
6. A local node's metrics exporter binds every interface (`bind_local_node_to_loopback`): Ray
   takes the machine's address for a node started on 127.0.0.1 unless its "no cluster" switch
   (`ray_constants.ENABLE_RAY_CLUSTER`, read when Ray is imported) is off, and its exporter binds
   the loopback interface only when the node's address is a loopback one.
5. Which exceptions mean "the Ray pipeline failed, retry it" (`is_ray_failure`): Ray raises
   errors of its own hierarchy and some from its internal modules that are not RayErrors.
7. Ray starts its workers at nice 15 (its internal setting `worker_niceness`), Serve's replicas
   included: a replica's Python threads then lose every contest for a core to the processes
   beside it (a search tier, Ray's own GCS and raylet), and their requests wait. A node started
   here gives its workers the driver's priority (`workers_at_driver_priority`, the environment
   variable Ray's own job manager sets for the same reason, read when the node starts).
"""

from __future__ import annotations

import gc
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable

RAY_VERSION = "2.60.0"  # the Ray these workarounds were written and tested against
NAMESPACE = "pam-features"

SCORER_REMOTE_ARGS = {"max_restarts": 0}


def init_options(metrics_port: int | None = None, system_config: dict | None = None) -> dict:
    """ray.init's private keyword arguments (underscore names) for a local Ray."""
    options: dict = {}
    if metrics_port is not None:
        options["_metrics_export_port"] = metrics_port
    if system_config:
        options["_system_config"] = dict(system_config)
    return options


def workers_at_driver_priority() -> None:
    """Workers of a local node started after this run at this process's nice value (see 7. above);
    a RAY_worker_niceness already in the environment is kept."""
    os.environ.setdefault("RAY_worker_niceness", str(os.getpriority(os.PRIO_PROCESS, 0)))


def bind_local_node_to_loopback() -> None:
    """A local node on 127.0.0.1, so its metrics exporter binds loopback (see 6. above)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def local_system_config(cpus: int) -> dict:
    """Room for a pipeline's actors beside its tasks (see 4. in the module docstring)."""
    return {"num_workers_soft_limit": cpus + 8}


def map_batches_with_remote_args(ds, fn, remote_args: dict, **kwargs):
    """ds.map_batches(fn, **kwargs, **remote_args), without the deprecation warning of the
    **ray_remote_args route (the only route for max_restarts in Ray 2.60)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(fn, **kwargs, **remote_args)


# ---------------------------------------------------------------- 1. scoring actors that outlive their pipeline

class ScorerRegistry:
    """Handles of one pipeline's actors, kept in the GCS's key-value store (picklable: each actor
    receives it as a constructor argument and files itself)."""

    def __init__(self):
        self.prefix = f"scorers/{os.getpid()}-{time.time_ns()}/"

    def add_current_actor(self) -> None:
        import ray
        from ray.experimental import internal_kv

        context = ray.get_runtime_context()
        key = self.prefix + context.get_actor_id()
        internal_kv._internal_kv_put(key, ray.cloudpickle.dumps(context.current_actor), namespace=NAMESPACE)

    def kill_all(self) -> list[str]:
        """Kill every actor filed under this pipeline; returns their actor ids."""
        import ray
        from ray.experimental import internal_kv

        try:
            keys = internal_kv._internal_kv_list(self.prefix, namespace=NAMESPACE)
        except Exception:  # the GCS unreachable: nothing more can be done from here
            return []
        killed = []
        for key in keys:
            key = key.decode() if isinstance(key, bytes) else key
            try:
                ray.kill(ray.cloudpickle.loads(internal_kv._internal_kv_get(key, namespace=NAMESPACE)),
                         no_restart=True)
            except Exception:  # already gone, or its handle no longer resolves
                pass
            internal_kv._internal_kv_del(key, namespace=NAMESPACE)
            killed.append(key.rsplit("/", 1)[1])
        return killed


def actor_states(actor_ids: Iterable[str]) -> dict[str, str]:
    """The GCS's state of each actor (ALIVE, RESTARTING, DEAD, ...; "UNKNOWN" when it has none)."""
    from ray._private import state

    out = {}
    for actor_id in actor_ids:
        try:
            info = state.state.actor_table(actor_id)
        except Exception:
            info = None
        out[actor_id] = (info or {}).get("State", "UNKNOWN") if isinstance(info, dict) else "UNKNOWN"
    return out


def release_scorers(registry: ScorerRegistry, timeout_s: float = 120.0, poll_s: float = 0.2) -> dict:
    """Kill a finished or failed pipeline's actors and wait until the GCS reports each dead.

    What holds the CPUs after a failed pipeline are these actors (see 1. in the module
    docstring); once they are DEAD their resources are back with their nodes' raylets. Returns
    {"actors": n, "waited_s": s, "alive": [ids still not dead at the timeout]}.
    """
    gc.collect()  # the executor's reference cycles hold handles: let them go first
    started = time.monotonic()
    killed = registry.kill_all()
    pending = set(killed)
    while pending and time.monotonic() - started < timeout_s:
        states = actor_states(pending)
        pending = {a for a, s in states.items() if s not in ("DEAD", "UNKNOWN")}
        if pending:
            time.sleep(poll_s)
    return {"actors": len(killed), "waited_s": time.monotonic() - started, "alive": sorted(pending)}


# ---------------------------------------------------------------- 2. pipelines that stop producing

def track_executor(ds):
    """Make `ds` remember the executor of its next execution as soon as it is created. Ray Data sets
    `ds._current_executor` only once the first block is out, so an execution whose actors never
    start (a retry after a lost node) could not be shut down before its first block."""
    create = getattr(ds, "_create_executor", None)
    if create is None:
        return ds

    def create_and_keep():
        executor = create()
        ds._pam_executor = executor
        return executor

    ds._create_executor = create_and_keep
    return ds


def shutdown_execution(ds, error: BaseException) -> bool:
    """Stop a Dataset's running execution (its iterator then ends or raises); False if none runs yet."""
    executor = getattr(ds, "_current_executor", None) or getattr(ds, "_pam_executor", None)
    if executor is None:
        return False
    executor.shutdown(force=True, exception=error)
    return True


def alive_node_ids() -> set[str]:
    import ray

    try:
        return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    except Exception:  # the GCS briefly unreachable: report no loss rather than a false one
        return set()


class PipelineStalled(RuntimeError):
    """No scored batch for too long (a node and its actors gone, nothing to replace them)."""


class StallWatchdog:
    """Shuts a Ray Data execution down when it stops producing batches.

    Between batches: past `stall_timeout_s` without a batch, or `node_loss_grace_s` once a node of
    the cluster is gone, it shuts the execution down; `reason` then says why. Before the first
    batch (actors loading a model) it waits `startup_timeout_s` (None: no limit, start-up is not a
    stall); the job sets one for retries: a retry after a lost node whose actors never start
    would otherwise wait forever.
    """

    def __init__(self, ds, stall_timeout_s: float, node_loss_grace_s: float, poll_s: float = 1.0,
                 nodes: Callable[[], set[str]] = alive_node_ids, startup_timeout_s: float | None = None):
        self._ds = track_executor(ds)
        self._stall_timeout_s = stall_timeout_s
        self._node_loss_grace_s = node_loss_grace_s
        self._poll_s = min(poll_s, stall_timeout_s / 2)
        self._nodes = nodes
        self._nodes_at_start = nodes()
        self._last_batch: float | None = None
        self._startup_timeout_s = startup_timeout_s
        self._started = time.monotonic()
        self._stop = threading.Event()
        self.reason: str | None = None
        self._thread = threading.Thread(target=self._watch, name="pam-stall-watchdog", daemon=True)

    def __enter__(self) -> StallWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def batch_arrived(self) -> None:
        self._last_batch = time.monotonic()

    def _watch(self) -> None:
        checks = 0
        while not self._stop.wait(self._poll_s):
            if self._last_batch is None:
                waited = time.monotonic() - self._started
                if self._startup_timeout_s is not None and waited > self._startup_timeout_s:
                    self._abort(f"no first batch in {waited:.0f} s")
                    return
                continue
            idle = time.monotonic() - self._last_batch
            if idle > self._stall_timeout_s:
                self._abort(f"no scored batch for {idle:.0f} s")
                return
            checks += 1
            if idle > self._node_loss_grace_s and checks % 5 == 0:  # ray.nodes() asks the GCS
                lost = self._nodes_at_start - self._nodes()
                if lost:
                    self._abort(f"{len(lost)} node(s) lost and no scored batch for {idle:.0f} s")
                    return

    def _abort(self, reason: str) -> None:
        self.reason = reason
        while not shutdown_execution(self._ds, PipelineStalled(reason)):  # not started yet: once it is
            if self._stop.wait(self._poll_s):
                return


# ---------------------------------------------------------------- 5. which failures to retry

def is_ray_failure(exc: BaseException) -> bool:
    """A failure of the Ray pipeline (a lost node or actor, a stalled execution): worth a retry."""
    import ray.exceptions

    return (isinstance(exc, (ray.exceptions.RayError, PipelineStalled))
            or type(exc).__module__.startswith("ray."))
