"""The batch feature job: photos -> Parquet feature table, on Ray Data.

    list (driver) -> read bytes + decode/warp to 256x256 (Ray tasks, fractional CPUs)
        -> five-crop scoring in batches (Ray actor pool holding a feature backend; GPUs if present)
        -> write (driver: atomic Parquet parts as rows stream in) -> compact -> index -> manifest

Why the driver writes: a feature row is ~0.8 KB, so even 10 million photos are ~8 GB of output
over the whole run; streaming it through `iter_batches` costs nothing next to the images, and it
gives what `Dataset.write_parquet` does not: every part is written under a temporary name and
renamed (a crash never leaves a half file under a part name), parts are named by their ids (a
retried write replaces instead of duplicating), file sizes are exact, and the progress bar counts
real rows. Reading, decoding and scoring -- all the work -- run on the cluster.

Resumable and idempotent: before scoring, the job reads the ids already written for this model
version and skips them; rows buffered when the driver is interrupted (Ctrl-C) are flushed first;
a part is whole or absent. At the end the job merges small parts and drops any duplicate row (a
node lost mid-run can make Ray re-deliver a block), builds the sorted index, and writes the
manifest last: the version is complete from that moment. A failure of the Ray pipeline (a node
lost) is retried on the remaining photos, up to `max_attempts` times.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from personalize.features import AES_FEAT_DIM, FEATURE_NAMES, N_ATTRIBUTES, N_CONTENT
from serving import feature_table as ft
from serving.batch.sources import Sources, list_sources, open_for_path
from serving.cluster.local_ray import init_local_ray

DEFAULT_ROWS_PER_FILE = 16384  # ~13 MB of Parquet: large files, bounded rewrite cost
DEFAULT_FLUSH_S = 60.0         # at most this much scored work sits unwritten in the driver


@dataclass
class JobConfig:
    inputs: str
    out: str
    backend: str                          # a model path, onnx:PATH, triton+http://..., triton+grpc://...
    batch_size: int = 128                 # images per scoring call (a Ray Data task of the actor pool)
    decode_batch: int | None = None       # images per decode task call (default: half a scoring batch)
    rows_per_file: int = DEFAULT_ROWS_PER_FILE
    flush_s: float = DEFAULT_FLUSH_S
    actors: int | None = None             # scoring actors (default: per node / per GPU)
    threads: int | None = None            # ONNX Runtime intra-op threads per actor
    decode_cpus: float = 0.5              # CPU reservation of a decode task
    gpus_per_actor: float | None = None   # default 1 when the cluster has GPUs
    read_threads: int = 8                 # concurrent reads per decode task (object storage latency)
    all_files: bool = False
    promote: bool = True                  # point CURRENT at the version once complete
    max_attempts: int = 3
    stall_timeout_s: float = 600.0        # no scored batch for this long: abort, re-plan, retry
    node_loss_grace_s: float = 30.0       # the same, sooner, once a node of the cluster is gone
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
    return "triton" if spec.startswith("triton") else "onnx"


def open_feature_backend(spec: str, threads: int | None = None, max_batch_size: int = 32):
    """A FeatureBackend for a spec: a model path / onnx:PATH (in-process) or a Triton URL."""
    from serving.scoring.backends import open_backend

    if backend_kind(spec) == "triton":
        return open_backend(spec, max_batch_size=max_batch_size)
    path = spec.removeprefix("onnx:")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model {path!r} does not exist (expected an exported pam_features.onnx)")
    # one single-thread session per thread: 4-5% more images/s than one session with that many
    # threads (serving.scoring.backends.OnnxRuntimeBackend)
    return open_backend(f"onnx:{path}", intra_op_threads=threads, parallel_sessions=threads or 1,
                        max_batch_size=max_batch_size)


# ---------------------------------------------------------------- pipeline stages (run on Ray)

def read_and_decode(batch: dict[str, np.ndarray], filesystem: pafs.FileSystem,
                    read_threads: int = 8) -> dict[str, np.ndarray]:
    """Rows (image_id, path) -> (image_id, pixels uint8[n, 256, 256, 3], error; "" when ok)."""
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
    pixels = np.zeros((len(ids), WARP_SIZE, WARP_SIZE, 3), np.uint8)
    errors = np.full(len(ids), "", dtype=object)
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

    def __init__(self, backend_spec: str, threads: int | None, batch_size: int, registry=None):
        if registry is not None:  # so the driver can kill this actor when its pipeline ends
            registry.add_current_actor()
        self.backend = open_feature_backend(backend_spec, threads=threads, max_batch_size=batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = np.asarray(batch["error"], dtype=object)
        ok = errors == ""
        n = len(errors)
        out = {"image_id": np.asarray(batch["image_id"], dtype=object),
               "aes_score": np.zeros(n, np.float32),
               "aes_feat": np.zeros((n, AES_FEAT_DIM), np.float32),
               "attributes": np.zeros((n, N_ATTRIBUTES), np.float32),
               "content": np.zeros((n, N_CONTENT), np.float32)}
        if ok.any():
            try:
                scores = self.backend.score(np.asarray(batch["pixels"])[ok])
            except Exception as exc:  # e.g. Triton refusing one batch: those rows fail, named
                errors = errors.copy()
                errors[ok] = f"scoring_failed: {type(exc).__name__}: {exc}"
            else:
                for name in FEATURE_NAMES:
                    out[name][ok] = scores[name]
        out["error"] = errors
        return out


# ---------------------------------------------------------------- writing (driver)

class PartWriter:
    """Buffers scored rows and writes whole Parquet parts (by size, by age, and on close)."""

    def __init__(self, root: str, fs: pafs.FileSystem, model_version: str, crop_policy: str,
                 rows_per_file: int, flush_s: float):
        self.root, self.fs, self.model_version, self.crop_policy = root, fs, model_version, crop_policy
        self.rows_per_file, self.flush_s = rows_per_file, flush_s
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.oldest = None
        self.parts: list[ft.PartInfo] = []
        self.ok = self.failed = 0
        self.failures: list[tuple[str, str]] = []

    def add(self, batch: dict[str, np.ndarray]) -> int:
        errors = [e if e else None for e in np.asarray(batch["error"], dtype=object).tolist()]
        ids = [str(i) for i in batch["image_id"]]
        table = ft.feature_table(ids, {n: batch[n] for n in FEATURE_NAMES}, self.model_version, errors)
        failed = sum(e is not None for e in errors)
        self.failed += failed
        self.ok += len(ids) - failed
        if failed and len(self.failures) < 20:
            self.failures.extend((i, e) for i, e in zip(ids, errors, strict=True) if e is not None)
        self.buffer.append(table)
        self.buffered += table.num_rows
        self.oldest = self.oldest or time.monotonic()
        while self.buffered >= self.rows_per_file:
            self._write(self.rows_per_file)
        if self.buffered and time.monotonic() - self.oldest >= self.flush_s:
            self._write(self.buffered)
        return table.num_rows

    def close(self) -> None:
        if self.buffered:
            self._write(self.buffered)

    def _write(self, rows: int) -> None:
        table = pa.concat_tables(self.buffer)
        head, rest = table.slice(0, rows), table.slice(rows)
        self.parts.append(ft.write_part(self.root, head, self.crop_policy, self.fs))
        self.buffer = [rest] if rest.num_rows else []
        self.buffered = rest.num_rows
        self.oldest = time.monotonic() if rest.num_rows else None


# ---------------------------------------------------------------- resume and finalize

def written_ids(root: str, fs: pafs.FileSystem, model_version: str) -> tuple[pa.Table, list[str]]:
    """(image_id, part) of every row already written for the version; unreadable parts removed.

    Parts are written whole, so an unreadable one can only come from outside the job (a damaged
    disk, a hand copy): its rows are lost anyway, and deleting it lets the job redo them.
    """
    tables, removed = [], []
    directory = ft.version_dir(root, model_version)
    for name in ft.list_part_files(root, model_version, fs):
        try:
            ids = pq.read_table(ft.join(directory, name), columns=["image_id"], filesystem=fs).column(0)
        except (pa.ArrowInvalid, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                continue
            fs.delete_file(ft.join(directory, name))
            removed.append(name)
            continue
        tables.append(pa.table({"image_id": ids.cast(pa.string()),
                                "part": pa.array(np.full(len(ids), name, dtype=object), pa.string())}))
    if not tables:
        return pa.table({"image_id": pa.array([], pa.string()), "part": pa.array([], pa.string())}), removed
    return pa.concat_tables(tables), removed


def finalize(root: str, fs: pafs.FileSystem, model_version: str, crop_policy: str, rows_per_file: int,
             extra: dict | None = None) -> dict:
    """Merge small parts, drop duplicate rows, write the index, then the manifest (last)."""
    rows, _ = written_ids(root, fs, model_version)
    directory = ft.version_dir(root, model_version)
    names = ft.list_part_files(root, model_version, fs)
    codes = pc.index_in(rows.column("part"), value_set=pa.array(names, pa.string())).to_numpy(zero_copy_only=False)
    codes = codes.astype(np.intp)
    counts = np.bincount(codes, minlength=len(names))
    # the first copy of an id wins, taking parts by size (largest first) so big parts stay untouched
    order = sorted(range(len(names)), key=lambda i: (-counts[i], names[i]))
    rank = np.empty(len(names), np.intp)
    rank[order] = np.arange(len(names))
    keys = ft.id_keys(rows.column("image_id").combine_chunks()) if rows.num_rows else np.zeros(0, "S1")
    by = np.lexsort((rank[codes], keys))
    first = np.ones(len(by), bool)
    first[1:] = keys[by][1:] != keys[by][:-1]
    keep = np.zeros(len(keys), bool)
    keep[by[first]] = True
    dirty = {names[i] for i in np.unique(codes[~keep])}
    small = {n for n, c in zip(names, counts, strict=True) if c < rows_per_file // 2}
    rewrite = dirty | (small if len(small) > 1 else set())
    keep_parts = [n for n in names if n not in rewrite]
    new_parts: list[ft.PartInfo] = []
    if rewrite:
        in_rewrite = np.isin(codes, [i for i, n in enumerate(names) if n in rewrite])
        kept_ids = rows.column("image_id").take(pa.array(np.flatnonzero(keep & in_rewrite)))
        table = ft.read_parts(root, model_version, sorted(rewrite), filesystem=fs)
        table = table.filter(pc.is_in(table.column("image_id"), value_set=kept_ids))
        table = _first_per_id(table)
        for begin in range(0, table.num_rows, rows_per_file):
            new_parts.append(ft.write_part(root, table.slice(begin, rows_per_file), crop_policy, fs))
        fresh = {p.name for p in new_parts}
        for name in sorted(rewrite - fresh):
            fs.delete_file(ft.join(directory, name))
    parts = [_part_info(fs, directory, n) for n in keep_parts] + new_parts
    digest = ft.manifest_digest({"model_version": model_version,
                                 "parts": [p.as_dict() for p in sorted(parts, key=lambda p: p.name)]})
    if ft.is_complete(root, model_version, fs):
        previous = ft.read_manifest(root, model_version, fs)
        if previous.get("digest") == digest and ft.exists(fs, ft.join(directory, ft.INDEX_NAME)):
            return previous  # a re-run that found nothing new: the version stands as it was
    ft.write_index(root, model_version, fs, manifest={"digest": digest, "parts": [p.as_dict() for p in parts]})
    manifest = ft.write_manifest(root, model_version, parts, crop_policy, fs, extra=extra)
    assert manifest["digest"] == digest
    return manifest


def _first_per_id(table: pa.Table) -> pa.Table:
    if not table.num_rows:
        return table
    keys = ft.id_keys(table.column("image_id").combine_chunks())
    _, first = np.unique(keys, return_index=True)
    return table.take(pa.array(np.sort(first)))


def _part_info(fs: pafs.FileSystem, directory: str, name: str) -> ft.PartInfo:
    path = ft.join(directory, name)
    with fs.open_input_file(path) as f:
        meta = pq.ParquetFile(f).metadata
        error = pq.read_table(f, columns=["error"]).column(0)
        size = f.size()
    return ft.PartInfo(name, meta.num_rows, len(error) - error.null_count, size)


# ---------------------------------------------------------------- the job

def run_job(config: JobConfig) -> dict:
    """Run (or resume) the job; returns the summary that `pam features` prints."""
    started = time.perf_counter()
    probe = open_feature_backend(config.backend, threads=1, max_batch_size=config.batch_size)
    model_version = ft.check_version_name(probe.model_version)
    crop_policy = getattr(probe, "crop_policy", "") or ""
    content_names = getattr(probe, "content_names", None)  # the model's content class names, if any
    probe.close()

    sources = list_sources(config.inputs, config.input_filesystem, all_files=config.all_files)
    out_fs, out_root = ft.resolve(config.out, config.output_filesystem)
    ft.remove_stale_temporaries(out_root, model_version, out_fs)
    done, removed = written_ids(out_root, out_fs, model_version)
    todo = _remaining(sources.table, done)
    summary = {
        "model_version": model_version, "crop_policy": crop_policy, "out": config.out,
        "inputs": config.inputs, "input_kind": sources.kind, "listed": len(sources),
        "duplicate_ids_listed": sources.duplicates, "not_images_skipped": len(sources.skipped),
        "already_written": len(sources) - todo.num_rows, "unreadable_parts_removed": removed,
    }

    attempts, retried_errors, processed = 0, [], {"ok": 0, "failed": 0, "seconds": 0.0, "failures": []}
    plans: list[ResourcePlan] = []
    started_ray = False
    try:
        while todo.num_rows and attempts < config.max_attempts:
            attempts += 1
            if not plans:
                started_ray = _ensure_ray(config)
            plans.append(_plan(config))  # every attempt: a retry after a lost node fits what is left
            try:
                _run_pipeline(config, sources, todo, out_root, out_fs, model_version, crop_policy, plans[-1],
                              processed)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # a lost node or actor, a stalled pipeline: redo what is not written
                if not (_is_ray_error(exc) or isinstance(exc, PipelineStalled)):
                    raise
                retried_errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
                del exc
                _release_failed_pipeline()
            done, _ = written_ids(out_root, out_fs, model_version)
            todo = _remaining(sources.table, done)
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
    })
    if todo.num_rows:
        summary.update({"complete": False, "remaining": todo.num_rows,
                        "seconds": time.perf_counter() - started})
        return summary
    manifest = finalize(out_root, out_fs, model_version, crop_policy, config.rows_per_file,
                        extra={"inputs": config.inputs, "backend": config.backend,
                               **({"content_names": json.loads(content_names)} if content_names else {})})
    promoted = False
    if config.promote:
        ft.set_current(out_root, model_version, out_fs)
        promoted = True
    summary.update({
        "complete": True, "remaining": 0, "promoted": promoted,
        "table": {"rows": manifest["rows"], "rows_ok": manifest["rows_ok"],
                  "rows_failed": manifest["rows_failed"], "files": len(manifest["parts"]),
                  "bytes": sum(p["bytes"] for p in manifest["parts"])},
        "seconds": time.perf_counter() - started,
    })
    return summary


def _remaining(sources: pa.Table, done: pa.Table) -> pa.Table:
    if not done.num_rows:
        return sources
    return sources.filter(pc.invert(pc.is_in(sources.column("image_id"), value_set=done.column("image_id"))))


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
        # the pipeline runs ~4 actors beside its tasks (the scoring actors, Ray Data's location
        # tracker, autoscaling coordinator and stats actor); at the default soft limit (one worker
        # per CPU) Ray kills the workers it prestarted as soon as those start, and the first
        # decode tasks wait for new ones
        init_local_ray(num_cpus=cpus, object_store_memory=config.object_store_memory,
                       _system_config={"num_workers_soft_limit": cpus + 8}, **kwargs)
    return True


def _plan(config: JobConfig) -> ResourcePlan:
    import ray

    return plan_resources(ray.nodes(), backend_kind(config.backend), config.actors, config.threads,
                          config.decode_cpus, config.gpus_per_actor)


class _ScorerRegistry:
    """Handles of one pipeline's scoring actors, kept in the GCS's key-value store.

    Ray Data lets a failed pipeline's actors go by dropping its handles, and lineage kept for the
    blocks they produced can keep them alive, each holding the CPU a retry needs (on a 1-CPU node,
    all of it: the retry then waits forever). The driver kills them by these handles instead.
    Each actor files its own handle as it starts; the GCS outlives any worker node, and no process
    of our own has to run for it (an idle Ray worker costs ~0.01 cores, and its start-up competes
    with the pipeline's first seconds).
    """

    NAMESPACE = "pam-features"

    def __init__(self):
        self.prefix = f"scorers/{os.getpid()}-{time.time_ns()}/"

    def add_current_actor(self) -> None:
        import ray
        from ray.experimental import internal_kv

        handle = ray.get_runtime_context().current_actor
        key = self.prefix + ray.get_runtime_context().get_actor_id()
        internal_kv._internal_kv_put(key, ray.cloudpickle.dumps(handle), namespace=self.NAMESPACE)

    def kill_all(self) -> int:
        """Kill every actor filed under this pipeline; returns how many were filed."""
        import ray
        from ray.experimental import internal_kv

        try:
            keys = internal_kv._internal_kv_list(self.prefix, namespace=self.NAMESPACE)
        except Exception:  # the GCS unreachable: nothing more can be done from here
            return 0
        for key in keys:
            try:
                ray.kill(ray.cloudpickle.loads(internal_kv._internal_kv_get(key, namespace=self.NAMESPACE)),
                         no_restart=True)
            except Exception:  # already gone, or its handle no longer resolves
                pass
            internal_kv._internal_kv_del(key, namespace=self.NAMESPACE)
        return len(keys)


def _release_failed_pipeline(timeout_s: float = 30.0) -> None:
    """Let the actors of a failed pipeline go before the retry plans its own.

    Ray Data releases a failed pipeline's actors by dropping its handles, not by killing them;
    the executor's threads keep those handles in reference cycles until a garbage collection.
    An actor left alive holds CPU the retry's decode tasks need (on a small node: all of it).
    """
    import gc

    import ray

    gc.collect()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0.0) >= ray.cluster_resources().get("CPU", 0.0) - 1e-6:
            return
        time.sleep(0.5)
        gc.collect()


class PipelineStalled(RuntimeError):
    """No scored batch for too long (a node and its actors gone, nothing to replace them)."""


class _StallWatchdog:
    """Shuts a Ray Data execution down when it stops producing batches.

    Ray Data can wait forever for an actor that cannot come back (its node is gone and the
    cluster has no room for a replacement). The driver then blocks in iter_batches, so a thread
    watches the time since the last batch and, past the limit, shuts the executor down; the
    iteration ends and run_job re-plans on the nodes that are left.
    """

    def __init__(self, ds, stall_timeout_s: float, node_loss_grace_s: float, poll_s: float = 1.0):
        import threading

        self._ds = ds
        self._stall_timeout_s = stall_timeout_s
        self._node_loss_grace_s = node_loss_grace_s
        self._poll_s = min(poll_s, stall_timeout_s / 2)
        self._nodes_at_start = _alive_node_ids()
        # the clock starts at the first batch: start-up (actors loading a model) is not a stall,
        # and before its first block Ray Data has no executor to shut down
        self._last_batch: float | None = None
        self._stop = threading.Event()
        self.reason: str | None = None
        self._thread = threading.Thread(target=self._watch, name="pam-stall-watchdog", daemon=True)

    def __enter__(self) -> _StallWatchdog:
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
                continue
            idle = time.monotonic() - self._last_batch
            if idle > self._stall_timeout_s:
                self._abort(f"no scored batch for {idle:.0f} s")
                return
            checks += 1
            if idle > self._node_loss_grace_s and checks % 5 == 0:  # ray.nodes() asks the GCS
                lost = self._nodes_at_start - _alive_node_ids()
                if lost:
                    self._abort(f"{len(lost)} node(s) lost and no scored batch for {idle:.0f} s")
                    return

    def _abort(self, reason: str) -> None:
        self.reason = reason
        executor = getattr(self._ds, "_current_executor", None)  # set once the first block is out
        if executor is not None:
            executor.shutdown(force=True, exception=PipelineStalled(reason))


def _alive_node_ids() -> set[str]:
    import ray

    try:
        return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    except Exception:  # the GCS briefly unreachable: report no loss rather than a false one
        return set()


def _is_ray_error(exc: BaseException) -> bool:
    import ray.exceptions

    return isinstance(exc, ray.exceptions.RayError) or type(exc).__module__.startswith("ray.")


def _run_pipeline(config: JobConfig, sources: Sources, todo: pa.Table, out_root: str, out_fs: pafs.FileSystem,
                  model_version: str, crop_policy: str, plan: ResourcePlan, processed: dict) -> None:
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver's bar counts written rows with images/s
    context.enable_operator_progress_bars = False
    # small input blocks keep the first scored rows (and the steady state) early; at most ~10,000
    # blocks keep the driver's bookkeeping small on runs of millions
    decode_batch = config.decode_batch or max(16, config.batch_size // 2)
    block = min(512, max(2 * decode_batch, math.ceil(todo.num_rows / 10_000)))
    chunks = [todo.slice(i, block) for i in range(0, todo.num_rows, block)]
    ds = ray.data.from_arrow(chunks)
    ds = ds.map_batches(read_and_decode, batch_size=decode_batch, batch_format="numpy",
                        fn_kwargs={"filesystem": sources.filesystem, "read_threads": config.read_threads},
                        num_cpus=plan.decode_cpus,
                        # decode workers are recycled every 500 calls (what a leaking decoder can
                        # hold stays bounded); remote args unlike the actors' also keep decoding a
                        # task stage of its own: fused into the scoring actors, it would serialise
                        # with scoring and leave a GPU idle while its actor decodes
                        max_calls=500)
    registry = _ScorerRegistry()
    # min_size 1 lets Ray Data's pool shrink (idle actors near the end of the input); a lost actor
    # is not waited for: max_restarts=0 below fails the pipeline and run_job re-plans
    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=plan.actors, initial_size=plan.actors)
    with warnings.catch_warnings():
        # max_restarts has no named parameter in Ray 2.60; the **ray_remote_args route warns
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(Scorer, batch_size=config.batch_size, batch_format="numpy",
                            fn_constructor_kwargs={"backend_spec": config.backend, "threads": plan.threads,
                                                   "batch_size": config.batch_size, "registry": registry},
                            compute=pool, num_cpus=plan.actor_cpus, num_gpus=plan.actor_gpus or None,
                            # Ray Data's default restarts a dead actor forever and parks its tasks
                            # until then; when its node is gone and nothing can replace it the job
                            # hangs. Failing fast lets run_job re-plan on the nodes that are left
                            max_restarts=0)
    writer = PartWriter(out_root, out_fs, model_version, crop_policy, config.rows_per_file, config.flush_s)
    bar = _progress(todo.num_rows, config.progress)
    start = time.perf_counter()
    arrivals: list[tuple[float, int]] = []  # (time, rows so far) as batches reach the driver
    written = 0
    watchdog = _StallWatchdog(ds, config.stall_timeout_s, config.node_loss_grace_s)
    try:
        try:
            with watchdog:
                # no prefetch: rows are ~1 KB, so fetching ahead saves nothing, and a prefetching
                # iterator fills its window before its first batch (13 s, not 6.7, to the first
                # rows at 128 photos per batch on 2 CPUs)
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
                    watchdog.batch_arrived()
                    written += writer.add(batch)
                    arrivals.append((time.perf_counter(), written))
                    bar.update(len(batch["image_id"]))
                    if config.on_rows:
                        config.on_rows(written)
        except Exception as exc:  # whatever a forced shutdown makes the iteration raise
            if watchdog.reason:
                raise PipelineStalled(watchdog.reason) from exc
            raise
        if watchdog.reason:
            raise PipelineStalled(watchdog.reason)
    finally:
        registry.kill_all()  # Ray Data has let them go (or failed): none may outlive the pipeline
        writer.close()  # on Ctrl-C too: what was scored is kept
        end = time.perf_counter()
        processed["seconds"] += end - start
        if arrivals:
            processed["startup_s"] = arrivals[0][0] - start
            processed["steady_rate"] = steady_rate(arrivals)
        processed["ok"] += writer.ok
        processed["failed"] += writer.failed
        processed["failures"].extend(writer.failures)
        processed.setdefault("stages", []).append(_stage_lines(ds))
        bar.close()


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
