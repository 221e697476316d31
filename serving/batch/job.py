"""The batch feature job: photos -> Parquet feature table, on Ray Data.

    list (driver) -> read bytes + decode/warp to 256x256 (Ray tasks, fractional CPUs)
        -> five-crop scoring in batches (Ray actor pool holding a feature backend; GPUs if present)
        -> stage (driver: whole Parquet parts as rows stream in) -> finalize (the feature table:
           dedupe, compact, commit, index, manifest)

Why the driver writes: a feature row is ~0.8 KB, so even 10 million photos are ~8 GB of output
over the whole run; streaming it through `iter_batches` costs nothing next to the images, and it
gives what `Dataset.write_parquet` does not: every part is written under a temporary name and
renamed (a crash never leaves a half file under a part name), parts are named by their ids (a
retried write replaces instead of duplicating), file sizes are exact, and the progress bar counts
real rows. Reading, decoding and scoring -- all the work -- run on the cluster.

Resumable and idempotent: the job holds the version's lock (a lease: a second job on the same
version fails with a clear message; a crashed job's lock expires), reads the ids already written
for the version and skips them; rows buffered when the driver is interrupted (Ctrl-C) are staged
first; a part is whole or absent. At the end the feature table finalizes the version (see
serving/feature_table/table.py): the version is complete from its manifest on. A failure of the
Ray pipeline (a node lost) is retried on the remaining photos, up to `max_attempts` times; what
works around Ray's behaviour there lives in serving/cluster/ray_compat.py.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from personalize.features import AES_FEAT_DIM, FEATURE_NAMES, N_ATTRIBUTES, N_CONTENT
from serving.batch.sources import Sources, list_sources, open_for_path
from serving.cluster import ray_compat
from serving.cluster.local_ray import init_local_ray
from serving.feature_table import (
    DEFAULT_MEMORY_BYTES,
    DEFAULT_ROWS_PER_FILE,
    FeatureTable,
    Version,
    remaining,
)

DEFAULT_FLUSH_S = 60.0         # at most this much scored work sits unwritten in the driver


@dataclass
class JobConfig:
    inputs: str
    out: str
    backend: str                          # a model path, onnx:PATH, torch:EXPORT_DIR, triton+http://..., triton+grpc://...
    batch_size: int = 128                 # images per scoring call (a Ray Data task of the actor pool)
    decode_batch: int | None = None       # images per decode task call (default: half a scoring batch)
    rows_per_file: int = DEFAULT_ROWS_PER_FILE
    flush_s: float = DEFAULT_FLUSH_S
    actors: int | None = None             # scoring actors (default: per node / per GPU)
    threads: int | None = None            # ONNX Runtime intra-op threads per actor
    decode_cpus: float = 0.5              # CPU reservation of a decode task
    gpus_per_actor: float | None = None   # default 1 when the cluster has GPUs
    gpu_decode: bool = False              # torch backend: JPEGs decoded by nvJPEG in the scoring actor
    read_threads: int = 8                 # concurrent reads per decode task (object storage latency)
    all_files: bool = False
    promote: bool = True                  # point CURRENT at the version once complete
    max_attempts: int = 3
    stall_timeout_s: float = 600.0        # no scored batch for this long: abort, re-plan, retry
    node_loss_grace_s: float = 30.0       # the same, sooner, once a node of the cluster is gone
    retry_startup_s: float = 180.0        # a retry without a first batch by then: abort, re-plan again
    finalize_memory_bytes: int = DEFAULT_MEMORY_BYTES  # the driver's memory while finalizing
    lease_s: float = 120.0                # the version's lock expires this long after its job stops
    wait_for_lock_s: float = 0.0          # another job holds the version: wait this long, then fail
    ray_address: str | None = None        # None: RAY_ADDRESS or a local Ray started for the job
    num_cpus: int | None = None           # CPUs of a local Ray started for the job
    object_store_memory: int | None = None
    progress: bool = True
    input_filesystem: pafs.FileSystem | None = None
    output_filesystem: pafs.FileSystem | None = None
    on_rows: Callable[[int], None] | None = field(default=None, repr=False)  # rows written so far


@dataclass
class ResourcePlan:
    actors: int
    actor_cpus: float
    actor_gpus: float
    threads: int
    decode_cpus: float

    def as_dict(self) -> dict:
        return asdict(self)


def plan_resources(nodes: list[dict], backend_kind: str, actors: int | None = None, threads: int | None = None,
                   decode_cpus: float = 0.5, gpus_per_actor: float | None = None) -> ResourcePlan:
    """Size the scoring pool to the cluster (ray.nodes()), leaving CPU for decode tasks.

    CPU scoring: one actor per 8 CPUs of a node (at least one per node), its ONNX Runtime using
    that node's cores; it reserves half of them, so decode tasks always find CPU (on a 2-CPU
    machine two actors at num_cpus=1 would leave nothing for them, and the job would hang).
    GPU scoring: one actor per GPU. Triton: light client actors, the server does the work.
    The torch backend (export.torch_backend) runs on a GPU actor where the cluster has GPUs and
    plans like ONNX Runtime on a CPU-only cluster.
    """
    alive = [n for n in nodes if n.get("Alive", True)]
    node_cpus = [float(n["Resources"].get("CPU", 0)) for n in alive]
    total_gpus = sum(float(n["Resources"].get("GPU", 0)) for n in alive)
    worker_cpus = [c for c in node_cpus if c >= 1] or [max(node_cpus, default=1) or 1]
    if backend_kind == "triton":
        count = actors or max(2, 2 * len(worker_cpus))
        return ResourcePlan(count, 0.25, 0.0, 1, decode_cpus)
    gpus = total_gpus if gpus_per_actor is None else (total_gpus if gpus_per_actor > 0 else 0)
    if gpus >= 1:
        per = gpus_per_actor or 1.0
        count = actors or max(1, int(gpus // per))
        return ResourcePlan(count, 1.0, per, threads or 2, decode_cpus)
    per_node = [max(1, int(c // 8)) for c in worker_cpus]
    count = actors or sum(per_node)
    smallest = min(worker_cpus)
    node_threads = max(1, int(smallest // max(1, int(smallest // 8))))
    threads = threads or node_threads
    actor_cpus = max(0.25, min(threads, smallest) / 2)
    return ResourcePlan(count, actor_cpus, 0.0, threads, min(decode_cpus, max(0.25, smallest - actor_cpus)))


# ---------------------------------------------------------------- backends

def backend_kind(spec: str) -> str:
    if spec.startswith("triton"):
        return "triton"
    return "torch" if spec.startswith("torch:") else "onnx"


def open_feature_backend(spec: str, threads: int | None = None, max_batch_size: int = 32):
    """A FeatureBackend for a spec: a model path / onnx:PATH (in-process) or a Triton URL."""
    from serving.scoring.backends import open_backend

    if backend_kind(spec) == "triton":
        return open_backend(spec, max_batch_size=max_batch_size)
    if backend_kind(spec) == "torch":  # CUDA where the actor was given a GPU, else CPU threads
        if not os.path.exists(spec.removeprefix("torch:")):
            raise FileNotFoundError(f"{spec.removeprefix('torch:')!r} does not exist (expected a pam export folder)")
        return open_backend(spec, max_batch_size=max_batch_size, threads=threads)
    path = spec.removeprefix("onnx:")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model {path!r} does not exist (expected an exported pam_features.onnx)")
    # one single-thread session per thread: 4-5% more images/s than one session with that many
    # threads (serving.scoring.backends.OnnxRuntimeBackend)
    return open_backend(f"onnx:{path}", intra_op_threads=threads, parallel_sessions=threads or 1,
                        max_batch_size=max_batch_size)


# ---------------------------------------------------------------- pipeline stages (run on Ray)

def read_and_decode(batch: dict[str, np.ndarray], filesystem: pafs.FileSystem,
                    read_threads: int = 8, decode_pixels: bool = True) -> dict[str, np.ndarray]:
    """Rows (image_id, path) -> (image_id, pixels uint8[n, 256, 256, 3], error; "" when ok).
    decode_pixels=False: (image_id, data: the encoded bytes, error), for decoding on the GPU."""
    from export.preprocess import WARP_SIZE, DecodeError, decode

    ids = np.asarray(batch["image_id"], dtype=object)
    paths = [str(p) for p in batch["path"]]
    cache: dict = {}

    def read(path: str) -> bytes | str:
        try:
            fs, inner = open_for_path(path, filesystem, cache)
            with fs.open_input_stream(inner) as f:
                return f.read()
        except FileNotFoundError as exc:
            return f"not_found: {exc}"
        except (OSError, ValueError) as exc:
            return f"unreadable: {exc}"

    workers = max(1, min(read_threads, len(paths)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        contents = list(pool.map(read, paths))
    errors = np.full(len(ids), "", dtype=object)
    if not decode_pixels:
        data = np.empty(len(ids), dtype=object)
        for i, content in enumerate(contents):
            data[i], errors[i] = (b"", content) if isinstance(content, str) else (content, "")
        return {"image_id": ids, "data": data, "error": errors}
    pixels = np.zeros((len(ids), WARP_SIZE, WARP_SIZE, 3), np.uint8)
    for i, data in enumerate(contents):
        if isinstance(data, str):
            errors[i] = data
            continue
        try:
            pixels[i] = decode(data)
        except DecodeError as exc:
            errors[i] = str(exc)
        except Exception as exc:  # a decoder bug must fail this photo, not the job
            errors[i] = f"decode_failed: {type(exc).__name__}: {exc}"
    return {"image_id": ids, "pixels": pixels, "error": errors}


class Scorer:
    """Ray Data actor: holds one feature backend and scores decoded batches."""

    def __init__(self, backend_spec: str, threads: int | None, batch_size: int, registry=None,
                 gpu_decode: bool = False):
        if registry is not None:  # so the driver can kill this actor when its pipeline ends
            registry.add_current_actor()
        self.backend = open_feature_backend(backend_spec, threads=threads, max_batch_size=batch_size)
        self.decoder = None
        if gpu_decode:  # batches then carry encoded bytes ("data"), decoded here on the device
            from export.gpu_decode import BatchDecoder

            self.decoder = BatchDecoder(self.backend.device)

    def _pixels(self, batch: dict[str, np.ndarray], errors: np.ndarray, ok: np.ndarray):
        """The batch's decoded photos where ok (a tensor on the device when decoded there)."""
        if self.decoder is None:
            return np.asarray(batch["pixels"])[ok]
        pixels, decode_errors = self.decoder(list(np.asarray(batch["data"], dtype=object)[ok]))
        failed = np.array([bool(e) for e in decode_errors], bool)
        if failed.any():
            errors[np.flatnonzero(ok)[failed]] = [e for e in decode_errors if e]
            ok[np.flatnonzero(ok)[failed]] = False
            pixels = pixels[~failed]
        return pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = np.asarray(batch["error"], dtype=object).copy()
        ok = errors == ""
        n = len(errors)
        out = {"image_id": np.asarray(batch["image_id"], dtype=object),
               "aes_score": np.zeros(n, np.float32),
               "aes_feat": np.zeros((n, AES_FEAT_DIM), np.float32),
               "attributes": np.zeros((n, N_ATTRIBUTES), np.float32),
               "content": np.zeros((n, N_CONTENT), np.float32)}
        pixels = self._pixels(batch, errors, ok) if ok.any() else None
        if ok.any():
            try:
                if isinstance(pixels, np.ndarray):
                    scores = self.backend.score(pixels)
                else:  # decoded on the device: scored there, only the rows come back
                    scores = {k: v.cpu().numpy() for k, v in self.backend.score_tensor(pixels).items()}
            except Exception as exc:  # e.g. Triton refusing one batch: those rows fail, named
                errors[ok] = f"scoring_failed: {type(exc).__name__}: {exc}"
            else:
                for name in FEATURE_NAMES:
                    out[name][ok] = scores[name]
        out["error"] = errors
        return out


# ---------------------------------------------------------------- staging rows (driver)

class RowSink:
    """Stages scored batches into the version (whole parts) and counts what was scored."""

    def __init__(self, version: Version, crop_policy: str, rows_per_file: int, flush_s: float):
        self.writer = version.writer(crop_policy, rows_per_file, flush_s)
        self.ok = self.failed = 0
        self.failures: list[tuple[str, str]] = []

    def add(self, batch: dict[str, np.ndarray]) -> int:
        errors = [e if e else None for e in np.asarray(batch["error"], dtype=object).tolist()]
        ids = [str(i) for i in batch["image_id"]]
        self.writer.add(ids, {n: batch[n] for n in FEATURE_NAMES}, errors)
        failed = sum(e is not None for e in errors)
        self.failed += failed
        self.ok += len(ids) - failed
        if failed and len(self.failures) < 20:
            self.failures.extend((i, e) for i, e in zip(ids, errors, strict=True) if e is not None)
        return len(ids)

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------- the job

def run_job(config: JobConfig) -> dict:
    """Run (or resume) the job; returns the summary that `pam features` prints."""
    started = time.perf_counter()
    if config.gpu_decode and backend_kind(config.backend) != "torch":
        raise ValueError(f"gpu_decode needs the torch backend (torch:EXPORT_DIR), not {config.backend!r}")
    # (torch's thread count is process-wide: the probe leaves the driver's alone)
    probe = open_feature_backend(config.backend, threads=None if backend_kind(config.backend) == "torch" else 1,
                                 max_batch_size=config.batch_size)
    model_version, crop_policy = probe.model_version, getattr(probe, "crop_policy", "") or ""
    content_names = getattr(probe, "content_names", None)  # the model's content class names, if any
    probe.close()
    table = FeatureTable(config.out, config.output_filesystem)
    version = table.version(model_version)
    sources = list_sources(config.inputs, config.input_filesystem, all_files=config.all_files)
    with version.lock(lease_s=config.lease_s, wait_s=config.wait_for_lock_s) as lease:
        summary = _run_locked(config, version, crop_policy, content_names, sources, lease, started)
    if summary["complete"] and config.promote:
        table.set_current(model_version)
        summary["promoted"] = True
    return summary


def _run_locked(config: JobConfig, version: Version, crop_policy: str, content_names: str | None, sources: Sources,
                lease, started: float) -> dict:
    version.remove_stale_temporaries()
    done, removed = version.written_ids()
    todo = remaining(sources.table, done)
    summary = {
        "model_version": version.name, "crop_policy": crop_policy, "out": config.out,
        "inputs": config.inputs, "input_kind": sources.kind, "listed": len(sources),
        "duplicate_ids_listed": sources.duplicates, "not_images_skipped": len(sources.skipped),
        "already_written": len(sources) - todo.num_rows, "unreadable_parts_removed": removed,
    }
    attempts, retried_errors, released = 0, [], []
    processed = {"ok": 0, "failed": 0, "seconds": 0.0, "failures": []}
    plans: list[ResourcePlan] = []
    started_ray = False
    try:
        while todo.num_rows and attempts < config.max_attempts:
            attempts += 1
            if not plans:
                started_ray = _ensure_ray(config)
            plans.append(_plan(config))  # every attempt: a retry after a lost node fits what is left
            try:
                released.append(_run_pipeline(config, sources, todo, version, crop_policy, plans[-1], processed,
                                              retry=attempts > 1))
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # a lost node or actor, a stalled pipeline: redo what is not written
                if not ray_compat.is_ray_failure(exc):
                    raise
                retried_errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
                released.append(getattr(exc, "released", None))
                del exc
            lease.check()
            done, _ = version.written_ids()
            todo = remaining(sources.table, done)
    finally:
        if started_ray:
            import ray

            ray.shutdown()

    summary.update({
        "processed": processed["ok"] + processed["failed"], "rows_ok": processed["ok"],
        "rows_failed": processed["failed"],
        "images_per_s": (processed["ok"] + processed["failed"]) / processed["seconds"] if processed["seconds"] else 0.0,
        "pipeline_seconds": processed["seconds"], "attempts": attempts, "retried_errors": retried_errors,
        "steady_images_per_s": processed.get("steady_rate"), "first_batch_s": processed.get("startup_s"),
        "failures": [{"image_id": i, "error": e} for i, e in processed["failures"][:20]],
        "ray_stages": processed.get("stages", [[]])[-1],
        "plan": plans[0].as_dict() if plans else None,
        "plans": [p.as_dict() for p in plans],
        "scorers_released": [r for r in released if r],
    })
    if todo.num_rows:
        summary.update({"complete": False, "remaining": todo.num_rows, "seconds": time.perf_counter() - started})
        return summary
    start = time.perf_counter()
    manifest = version.finalize(crop_policy, config.rows_per_file,
                                extra={"inputs": config.inputs, "backend": config.backend,
                                       **({"content_names": json.loads(content_names)} if content_names else {})},
                                memory_bytes=config.finalize_memory_bytes)
    lease.check()
    summary.update({
        "complete": True, "remaining": 0, "promoted": False, "finalize_s": time.perf_counter() - start,
        "table": {"rows": manifest["rows"], "rows_ok": manifest["rows_ok"],
                  "rows_failed": manifest["rows_failed"], "files": len(manifest["parts"]),
                  "bytes": sum(p["bytes"] for p in manifest["parts"])},
        "seconds": time.perf_counter() - started,
    })
    return summary


def _ensure_ray(config: JobConfig) -> bool:
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local": a new Ray, never whatever cluster /tmp/ray/ray_current_cluster last named
        cpus = config.num_cpus or os.cpu_count()
        init_local_ray(num_cpus=cpus, object_store_memory=config.object_store_memory,
                       system_config=ray_compat.local_system_config(cpus), **kwargs)
    return True


def _plan(config: JobConfig) -> ResourcePlan:
    import ray

    return plan_resources(ray.nodes(), backend_kind(config.backend), config.actors, config.threads,
                          config.decode_cpus, config.gpus_per_actor)


def _run_pipeline(config: JobConfig, sources: Sources, todo: pa.Table, version: Version, crop_policy: str,
                  plan: ResourcePlan, processed: dict, retry: bool = False) -> dict:
    """One attempt: the Ray Data pipeline over `todo`, its rows staged as they arrive. Returns
    what releasing its scoring actors took (raised errors carry it as `.released`)."""
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver's bar counts written rows with images/s
    context.enable_operator_progress_bars = False
    # small input blocks keep the first scored rows (and the steady state) early; at most ~10,000
    # blocks keep the driver's bookkeeping small on runs of millions
    decode_batch = config.decode_batch or max(16, config.batch_size // 2)
    block = min(512, max(2 * decode_batch, math.ceil(todo.num_rows / 10_000)))
    ds = ray.data.from_arrow([todo.slice(i, block) for i in range(0, todo.num_rows, block)])
    ds = ds.map_batches(read_and_decode, batch_size=decode_batch, batch_format="numpy",
                        fn_kwargs={"filesystem": sources.filesystem, "read_threads": config.read_threads,
                                   "decode_pixels": not config.gpu_decode},
                        num_cpus=plan.decode_cpus,
                        # decode workers are recycled every 500 calls (what a leaking decoder can
                        # hold stays bounded); remote args unlike the actors' also keep decoding a
                        # task stage of its own: fused into the scoring actors, it would serialise
                        # with scoring and leave a GPU idle while its actor decodes
                        max_calls=500)
    registry = ray_compat.ScorerRegistry()
    # min_size 1 lets Ray Data's pool shrink (idle actors near the end of the input); a lost actor
    # is not waited for (SCORER_REMOTE_ARGS): the pipeline fails and run_job re-plans
    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=plan.actors, initial_size=plan.actors)
    ds = ray_compat.map_batches_with_remote_args(
        ds, Scorer, ray_compat.SCORER_REMOTE_ARGS, batch_size=config.batch_size, batch_format="numpy",
        fn_constructor_kwargs={"backend_spec": config.backend, "threads": plan.threads,
                               "batch_size": config.batch_size, "registry": registry,
                               "gpu_decode": config.gpu_decode},
        compute=pool, num_cpus=plan.actor_cpus, num_gpus=plan.actor_gpus or None)
    sink = RowSink(version, crop_policy, config.rows_per_file, config.flush_s)
    bar = _progress(todo.num_rows, config.progress)
    start = time.perf_counter()
    arrivals: list[tuple[float, int]] = []  # (time, rows so far) as batches reach the driver
    written = 0
    watchdog = ray_compat.StallWatchdog(ds, config.stall_timeout_s, config.node_loss_grace_s,
                                        startup_timeout_s=config.retry_startup_s if retry else None)
    released = None
    try:
        try:
            with watchdog:
                # no prefetch: rows are ~1 KB, so fetching ahead saves nothing, and a prefetching
                # iterator fills its window before its first batch (13 s, not 6.7, to the first
                # rows at 128 photos per batch on 2 CPUs)
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
                    watchdog.batch_arrived()
                    written += sink.add(batch)
                    arrivals.append((time.perf_counter(), written))
                    bar.update(len(batch["image_id"]))
                    if config.on_rows:
                        config.on_rows(written)
        except Exception as exc:  # whatever a forced shutdown makes the iteration raise
            if watchdog.reason:
                raise ray_compat.PipelineStalled(watchdog.reason) from exc
            raise
        if watchdog.reason:
            raise ray_compat.PipelineStalled(watchdog.reason)
    except Exception as exc:
        released = ray_compat.release_scorers(registry)
        exc.released = released
        raise
    finally:
        if released is None:  # Ray Data has let them go (or Ctrl-C): none may outlive the pipeline
            released = ray_compat.release_scorers(registry)
        sink.close()  # on Ctrl-C too: what was scored is kept
        processed["seconds"] += time.perf_counter() - start
        if arrivals:
            processed["startup_s"] = arrivals[0][0] - start
            processed["steady_rate"] = steady_rate(arrivals)
        processed["ok"] += sink.ok
        processed["failed"] += sink.failed
        processed["failures"].extend(sink.failures)
        processed.setdefault("stages", []).append(_stage_lines(ds))
        bar.close()
    return released


def steady_rate(arrivals: list[tuple[float, int]], low: float = 0.25, high: float = 0.75) -> float | None:
    """Rows per second between the batches that cross `low` and `high` of the rows.

    The middle of the run, not "after the first batch": batches can reach the driver together
    (a prefetching iterator, a scorer with several sessions finishing at once), and the end runs
    on photos decoded ahead while the scorer waited; both would flatter the rate. None on too few
    batches.
    """
    if len(arrivals) < 3:
        return None
    total = arrivals[-1][1]
    a = next(x for x in arrivals if x[1] >= low * total)
    b = next(x for x in arrivals if x[1] >= high * total)
    return (b[1] - a[1]) / (b[0] - a[0]) if b[0] > a[0] and b[1] > a[1] else None


def _stage_lines(ds) -> list[str]:
    """Ray Data's per-operator summary lines (which stages ran, fused or not, and their time)."""
    try:
        return [line.strip() for line in ds.stats().splitlines() if line.startswith("Operator")]
    except Exception:  # stats are a report, never a reason to fail the job
        return []


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="features", disable=not enabled, smoothing=0.1, dynamic_ncols=True)
