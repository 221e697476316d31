"""`pam bench features`: the Ray Data batch job vs a single-process loop, in one run.

Over the same photos (../shared/photos listed --repeat times under different ids) and model:
    scoring alone   the backend on images already decoded in memory (the ceiling: the job
                    cannot beat it, since decoding and Ray share the same cores)
    loop            one process: read, decode, score in batches, build the table
    job, N CPUs     `pam features` (serving.batch.job.run_job) on a local Ray of N CPUs, pinned
                    to N cores with sched_setaffinity (Ray's processes inherit it), for the
                    scaling from 1 core to all
Reported: images/s of each, job / loop, job / scoring alone (target >= 0.9), job(N) / job(1),
the per-stage costs (decode ms and scoring ms per image on one core), and what a 10-million-photo
run needs on a GPU cluster from those costs (the GPU's images/s is an input: measure it with
`pam bench triton` on a GPU machine).
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

from pam.bench.photos import bench_photos

HELP = "the Ray Data batch job vs a single-process loop vs scoring alone; 1 -> N CPU scaling"
ROOT = Path(__file__).resolve().parents[2]
DRIVER = "driver (listing, writing parts, Ray Data's scheduler)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--photos", type=Path, help="folder of photos (default: ../shared/photos, else the wheels' sample photos)")
    parser.add_argument("--limit", type=int, default=0, help="photos per listing (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="list the photos this many times under different ids")
    parser.add_argument("--model", help="exported pam_features.onnx (default: newest artifacts/models/*/, "
                                        "else the tiny test graph, which makes scoring unrealistically cheap)")
    parser.add_argument("--batch-size", type=int, default=128, help="photos per scoring call, job and alone")
    parser.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)), help="the 'all cores' figure")
    parser.add_argument("--skip-one-cpu", action="store_true", help="leave out the 1-CPU job run")
    parser.add_argument("--gpu-images-per-s", type=float, default=500.0,
                        help="five-crop images/s of one GPU for the 10M-photo estimate (default 500: an "
                             "assumed T4-class TensorRT FP16 figure, not measured here)")
    parser.add_argument("--target-hours", type=float, default=10.0, help="wall-clock goal of the 10M estimate")


def _model(args, workdir: Path) -> tuple[str, str]:
    from pam.commands.features import default_model

    if args.model:
        return args.model, "given"
    found = default_model() or _newest(ROOT / "artifacts" / "models")
    if found:
        return found, "exported"
    try:
        from pam.bench.tiny_graph import build_tiny_feature_model  # needs onnx (test extra)
    except ImportError as exc:
        raise SystemExit(f"pam bench features: no exported model and no tiny graph ({exc}); pass --model") from exc
    return str(build_tiny_feature_model(workdir / "tiny.onnx")), "tiny test graph"


def _newest(models: Path) -> str | None:
    candidates = list(models.glob("*/pam_features.onnx"))
    return str(max(candidates, key=lambda p: p.stat().st_mtime)) if candidates else None


def _pinned(cpus: int):
    """Context: this process (and what it starts) runs on the first `cpus` allowed cores."""
    class Pin:
        def __enter__(self):
            self.saved = os.sched_getaffinity(0)
            os.sched_setaffinity(0, sorted(self.saved)[:cpus])

        def __exit__(self, *exc):
            os.sched_setaffinity(0, self.saved)

    return Pin()


def _scoring_alone(model: str, images, threads: int, batch: int) -> float:
    from serving.scoring.backends import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(model, intra_op_threads=threads, parallel_sessions=threads, max_batch_size=batch)
    backend.score(images[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        backend.score(images[i:i + batch])
    return len(images) / (time.perf_counter() - start)


def _loop(model: str, paths: list[str], ids: list[str], threads: int, batch: int, out: Path) -> float:
    """The obvious single process: read, decode, score each batch, one table at the end."""
    import numpy as np
    import pyarrow.parquet as pq

    from export.preprocess import DecodeError, decode
    from serving import feature_table as ft
    from serving.scoring.backends import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(model, intra_op_threads=threads, max_batch_size=batch)
    start = time.perf_counter()
    tables = []
    for i in range(0, len(paths), batch):
        images, kept, errors = [], [], []
        for path, image_id in zip(paths[i:i + batch], ids[i:i + batch], strict=True):
            try:
                with open(path, "rb") as f:
                    images.append(decode(f.read()))
                kept.append(image_id)
            except (OSError, DecodeError) as exc:
                errors.append((image_id, str(exc)))
        if kept:
            tables.append(ft.feature_table(kept, backend.score(np.stack(images)), backend.model_version))
        if errors:
            tables.append(ft.feature_table([e[0] for e in errors], None, backend.model_version,
                                           [e[1] for e in errors]))
    import pyarrow as pa

    pq.write_table(pa.concat_tables(tables), out)
    return len(paths) / (time.perf_counter() - start)


def _job(model: str, manifest: Path, out: Path, cpus: int, batch: int) -> dict:
    from serving.batch.job import JobConfig, run_job

    with _pinned(cpus), _CpuSampler() as sampler:
        start = time.perf_counter()
        summary = run_job(JobConfig(inputs=str(manifest), out=str(out), backend=model, batch_size=batch,
                                    num_cpus=cpus, progress=False, promote=False,
                                    object_store_memory=512 * 1024 * 1024))
        wall = time.perf_counter() - start
    return {"images_per_s": summary["images_per_s"], "steady_images_per_s": summary["steady_images_per_s"],
            "first_batch_s": summary["first_batch_s"], "wall_s": wall, "pipeline_s": summary["pipeline_seconds"],
            "rows_ok": summary["rows_ok"], "rows_failed": summary["rows_failed"], "plan": summary["plan"],
            "stages": summary["ray_stages"], "cpu_by_role": sampler.steady_cores()}


class _CpuSampler:
    """Where the cores went while the job ran: CPU time per process (from /proc) every few seconds,
    grouped by role. steady_cores() takes the middle half of the run (after start-up, before the
    end, where decoding has finished), in cores (1.0 = one core busy)."""

    ROLES = (("scoring actor", "MapWorker"), ("decode tasks", "read_and_decode"), ("scoring actor", "Scorer"),
             ("Ray system", "raylet"), ("Ray system", "gcs_server"), ("Ray system", "ray::"),
             ("Ray system", "/ray/"))

    def __init__(self, every_s: float = 2.0):
        import threading

        self.every_s, self.samples, self.titles = every_s, [], {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        if Path("/proc/self/stat").exists():
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self):
        while True:
            self.samples.append((time.perf_counter(), self._snapshot()))
            if self._stop.wait(self.every_s):
                return

    def _snapshot(self) -> dict[int, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                title = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            pid = int(entry.name)
            cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks
            self.titles.setdefault(pid, set()).add(title)  # a worker between tasks shows ray::IDLE
        return cpu

    def _role(self, pid: int) -> str:
        if pid == os.getpid():
            return DRIVER
        titles = self.titles.get(pid, ())
        return next((role for role, marker in self.ROLES if any(marker in t for t in titles)), "other programs")

    def steady_cores(self) -> dict[str, float] | None:
        if len(self.samples) < 5:
            return None
        window = self.samples[len(self.samples) // 4:3 * len(self.samples) // 4 + 1]
        roles: dict[str, float] = {}
        # interval by interval: a process that ends (a recycled decode worker) keeps what it used
        # up to its last sample
        for (_, a), (_, b) in itertools.pairwise(window):
            for pid, seconds in b.items():
                role = self._role(pid)
                roles[role] = roles.get(role, 0.0) + seconds - a.get(pid, 0.0)
        span = window[-1][0] - window[0][0]
        roles = {k: v / span for k, v in roles.items()}
        return {k: round(v, 3) for k, v in sorted(roles.items(), key=lambda kv: -kv[1]) if v > 0.001}


def run(args: argparse.Namespace) -> dict:
    import numpy as np

    from export.preprocess import decode

    folder = bench_photos(args.photos, "features")
    photos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not photos:
        raise SystemExit(f"pam bench features: no photos in {folder}")
    if args.limit:
        photos = photos[:args.limit]
    with tempfile.TemporaryDirectory(prefix="pam-bench-features-") as tmp:
        workdir = Path(tmp)
        model, model_kind = _model(args, workdir)
        paths = [str(p) for _ in range(args.repeat) for p in photos]
        ids = [f"rep{r}/{p.name}" for r in range(args.repeat) for p in photos]
        manifest = workdir / "photos.txt"
        manifest.write_text("".join(f"{p}\t{i}\n" for p, i in zip(paths, ids, strict=True)))
        cpus = args.cpus

        # per-stage costs on one core
        sample = photos[:64]
        blobs = [p.read_bytes() for p in sample]
        with _pinned(1):
            images = np.stack([decode(b) for b in blobs])  # warm-up: Pillow's plugins, first allocations
            passes = []
            for _ in range(3):
                start = time.perf_counter()
                for b in blobs:
                    decode(b)
                passes.append(time.perf_counter() - start)
            decode_ms = min(passes) / len(blobs) * 1e3
            score_1 = _scoring_alone(model, images, threads=1, batch=args.batch_size)
        with _pinned(cpus):
            score_n = _scoring_alone(model, images, threads=cpus, batch=args.batch_size)
            loop = _loop(model, paths, ids, cpus, args.batch_size, workdir / "loop.parquet")
        job_n = _job(model, manifest, workdir / "job-n", cpus, args.batch_size)
        job_1 = None if args.skip_one_cpu or cpus == 1 else _job(model, manifest, workdir / "job-1", 1,
                                                                 args.batch_size)

    per_image_core_s = 1 / score_1
    photos_total = 10_000_000
    gpu_rate = args.gpu_images_per_s
    gpus = max(1, int(np.ceil(photos_total / gpu_rate / (args.target_hours * 3600))))
    # sizing uses what a decode task costs inside the job (reading, Ray's task and object-store
    # overhead included) when the CPU sampler saw it, else the bare decode
    roles, steady = job_n.get("cpu_by_role") or {}, job_n.get("steady_images_per_s")
    decode_ms_in_job = roles["decode tasks"] / steady * 1e3 if roles.get("decode tasks") and steady else None
    decode_cpus_per_gpu = gpu_rate * (decode_ms_in_job or decode_ms) / 1e3
    ceiling = _ceiling(roles, steady, score_n, cpus, decode_ms)
    summary = {
        "model": model, "model_kind": model_kind, "photos": len(photos), "repeat": args.repeat,
        "images": len(paths), "cpus": cpus,
        "decode_ms_per_image_1core": decode_ms,
        "decode_ms_per_image_in_job": decode_ms_in_job,
        "scoring_ms_per_image_1core": per_image_core_s * 1e3,
        "scoring_alone_images_per_s": {"1": score_1, str(cpus): score_n},
        "loop_images_per_s": loop,
        "job": {str(cpus): job_n, **({"1": job_1} if job_1 else {})},
        "job_vs_loop": job_n["images_per_s"] / loop,
        "job_vs_scoring_alone": job_n["images_per_s"] / score_n,
        "job_steady_vs_scoring_alone": (job_n["steady_images_per_s"] or 0) / score_n,
        "job_ceiling": ceiling,
        "job_scaling_1_to_n": (job_n["images_per_s"] / job_1["images_per_s"]) if job_1 else None,
        "estimate_10m": {
            "assumed_gpu_images_per_s": gpu_rate,
            "gpus_for_target": gpus, "target_hours": args.target_hours,
            "hours_with_those_gpus": photos_total / (gpus * gpu_rate) / 3600,
            "decode_cpus_per_gpu": decode_cpus_per_gpu,
            "decode_cpus_total": decode_cpus_per_gpu * gpus,
            "cpu_only_core_hours": photos_total * per_image_core_s / 3600,
        },
    }
    summary["_render"] = render(summary)
    return summary


def _ceiling(roles: dict, steady: float | None, score_n: float, cpus: int, decode_ms: float) -> dict | None:
    """What the job can reach on these cores, from where its CPU went in the middle of the run.

    Scoring runs at scoring alone's per-core rate on whatever the job's other processes leave, so
        ceiling = scoring alone x (cores - their cores) / cores.
    `floor_cores` is what the job cannot give back whatever this project does: decoding at its
    bare single-core cost, Ray's processes (raylet, GCS, agents, Ray Data's bookkeeping actors,
    idle workers) and the driver (Ray Data's scheduling loop, nearly all of it).
    """
    if not roles or not steady:
        return None
    others = sum(v for k, v in roles.items() if k not in ("scoring actor", "other programs"))
    ceiling = score_n * (cpus - others) / cpus
    decode_bare = decode_ms * steady / 1e3
    floor = decode_bare + roles.get("Ray system", 0.0) + roles.get(DRIVER, 0.0)
    return {"non_scoring_cores": others, "images_per_s": ceiling, "steady_vs_ceiling": steady / ceiling,
            "decode_bare_cores": decode_bare, "floor_cores": floor, "best_vs_scoring_alone": (cpus - floor) / cpus}


def render(s: dict) -> str:
    n = str(s["cpus"])
    lines = [f"batch features on {s['images']} images ({s['photos']} photos x {s['repeat']}), model: "
             f"{s['model_kind']} ({s['model']})",
             f"  per image on one core: decode {s['decode_ms_per_image_1core']:.1f} ms, "
             f"five-crop scoring {s['scoring_ms_per_image_1core']:.1f} ms"
             + (f"; a decode task in the job: {s['decode_ms_per_image_in_job']:.1f} ms of CPU per photo"
                if s.get("decode_ms_per_image_in_job") else ""),
             f"  scoring alone ({n} cores): {s['scoring_alone_images_per_s'][n]:.1f} img/s",
             f"  single-process loop:   {s['loop_images_per_s']:.1f} img/s",
             f"  job, {n} CPUs:           {s['job'][n]['images_per_s']:.1f} img/s, steady "
             f"{s['job'][n]['steady_images_per_s'] or 0:.1f} img/s in the middle (25-75% of rows); first batch at "
             f"{s['job'][n]['first_batch_s'] or 0:.1f} s (wall {s['job'][n]['wall_s']:.1f} s incl. Ray start)"]
    roles = s["job"][n].get("cpu_by_role")
    if roles:
        lines.append("  cores in use during the job's middle: " + ", ".join(f"{k} {v:.2f}" for k, v in roles.items()))
    if "1" in s["job"]:
        lines.append(f"  job, 1 CPU:            {s['job']['1']['images_per_s']:.1f} img/s "
                     f"(scaling 1 -> {n}: {s['job_scaling_1_to_n']:.2f}x)")
    lines.append(f"  job / loop: {s['job_vs_loop']:.2f}; job / scoring alone: {s['job_vs_scoring_alone']:.2f}, "
                 f"steady {s['job_steady_vs_scoring_alone']:.2f} (target >= 0.90)")
    c = s.get("job_ceiling")
    if c:
        lines.append(f"  ceiling: scoring alone on the {int(s['cpus'])} - {c['non_scoring_cores']:.2f} cores the job's other "
                     f"processes leave = {c['images_per_s']:.1f} img/s; the job's middle reaches "
                     f"{c['steady_vs_ceiling']:.2f} of it")
        lines.append(f"  bare decoding ({c['decode_bare_cores']:.2f} cores) + Ray's processes + the driver's Ray Data "
                     f"loop = {c['floor_cores']:.2f} cores: the job cannot pass {c['best_vs_scoring_alone']:.2f} of "
                     f"scoring alone on this machine, start-up not counted")
    e = s["estimate_10m"]
    lines.append(f"  10M photos: {e['gpus_for_target']} GPUs at an assumed {e['assumed_gpu_images_per_s']:.0f} img/s "
                 f"each -> {e['hours_with_those_gpus']:.1f} h, {e['decode_cpus_per_gpu']:.1f} decode CPUs per GPU; "
                 f"CPU-only: {e['cpu_only_core_hours']:.0f} core-hours")
    return "\n".join(lines)
