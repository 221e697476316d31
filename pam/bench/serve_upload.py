"""`pam bench serve --modes upload`: the replica's memory while it takes 24-megapixel uploads.

One replica behind Serve's proxy, with a feature model, gets a 6000x4000 JPEG, then the same as a
PNG, then six of each at once; the replica process's resident memory (the driver's descendant
titled ray::ServeReplica:pam:pam) is sampled every 10 ms: before, peak and a few seconds after
each. Target: growth <= 300 MB and back to the baseline after.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

from pam.bench.measure import rss_bytes

MEGAPIXEL_SIZE = (6000, 4000)
GROWTH_TARGET_MB = 300.0
SETTLE_S = 3.0  # how long after the last reply "after" is read


def big_photo(fmt: str, size: tuple[int, int] = MEGAPIXEL_SIZE, seed: int = 0) -> bytes:
    """A photo-like picture of `size` as JPEG or PNG: a real photo from ../shared/photos upscaled,
    with a little sensor-like grain; without the shared photos, gradients and smooth noise."""
    import numpy as np
    from PIL import Image

    from pam.demo.album import shared_photos_dir

    width, height = size
    rng = np.random.default_rng(seed)
    shared = shared_photos_dir()
    sources = sorted(shared.rglob("*.JPEG"))[:50] if shared is not None else []
    if sources:
        with Image.open(sources[seed % len(sources)]) as source:
            image = source.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    else:
        yy, xx = np.mgrid[0:height // 40, 0:width // 40].astype(np.float32)
        smooth = rng.normal(0, 30, (height // 40, width // 40, 3)).astype(np.float32)
        base = np.stack([xx / xx.max() * 180, yy / yy.max() * 160, (xx + yy) / (xx.max() + yy.max()) * 200], -1)
        small = np.clip(base + smooth + 30, 0, 255).astype(np.uint8)
        image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16)
    grain = rng.integers(-3, 4, pixels.shape, dtype=np.int16)
    image = Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90) if fmt == "JPEG" else image.save(out, "PNG", compress_level=6)
    return out.getvalue()


def replica_pids(deployment: str = "pam", timeout_s: float = 60.0) -> list[int]:
    """Process ids of a Serve deployment's live replicas in the Ray this process started: its
    descendants (Ray's workers are the raylet's children) titled ray::ServeReplica:<app>:<name>."""
    import os

    deadline = time.time() + timeout_s
    while True:
        parents, titles = {}, {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                status = Path(f"/proc/{entry.name}/status").read_text()
                titles[int(entry.name)] = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")[0].decode().strip()
            except OSError:
                continue
            parents[int(entry.name)] = int(next(line.split()[1] for line in status.splitlines()
                                                if line.startswith("PPid:")))

        def mine(pid: int, parents=parents) -> bool:
            while pid > 1:
                pid = parents.get(pid, 0)
                if pid == os.getpid():
                    return True
            return False

        pids = sorted(pid for pid, title in titles.items()
                      if title.startswith("ray::ServeReplica:")
                      and title.split(".", 1)[0].endswith(f":{deployment}") and mine(pid))
        if pids or time.time() > deadline:
            return pids
        time.sleep(0.5)


class RssSampler:
    """Samples a process's RSS every `every_s` in a thread; `peak` is the largest sample."""

    def __init__(self, pid: int, every_s: float = 0.01):
        self.pid, self.every_s = pid, every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid) or 0)
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def upload_memory(url: str, pid: int, name: str, data: bytes, copies: int = 1) -> dict:
    """`copies` uploads of `data` at once (distinct ids); the replica's RSS before, peak, after."""
    import requests

    mb = 1e6
    before = rss_bytes(pid) or 0
    statuses: list[int] = []
    started = time.perf_counter()

    def send(k: int):
        with requests.Session() as http:
            reply = http.post(f"{url}/v1/photos", timeout=600,
                              files=[("files", (name, data, "application/octet-stream"))],
                              data={"image_ids": f"bench-upload/{name}-{k}-{time.time_ns()}"})
            statuses.append(reply.status_code)

    with RssSampler(pid) as sampler:
        threads = [threading.Thread(target=send, args=(k,)) for k in range(copies)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        time.sleep(SETTLE_S)
    after = rss_bytes(pid) or 0
    peak = max(sampler.peak, before, after)
    return {"file": name, "bytes": len(data), "copies": copies, "statuses": sorted(statuses),
            "seconds": round(seconds, 2), "rss_before_mb": round(before / mb, 1), "rss_peak_mb": round(peak / mb, 1),
            "rss_after_mb": round(after / mb, 1), "growth_mb": round((peak - before) / mb, 1),
            "kept_mb": round((after - before) / mb, 1)}


def upload_session(params: dict) -> dict:
    import ray
    import requests
    from ray import serve

    from pam.bench.tiny_graph import build_tiny_feature_model
    from serving.cluster.local_ray import init_local_ray
    from serving.cluster.ports import free_port_block
    from serving.online.app import build_app

    work = Path(params["work"])
    model = build_tiny_feature_model(work / "upload-model.onnx", params["model_version"])
    size = tuple(params.get("upload_size", MEGAPIXEL_SIZE))
    photos = {"photo.jpg": big_photo("JPEG", size), "photo.png": big_photo("PNG", size)}
    init_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out: dict = {"mode": "upload", "size": list(size), "target_growth_mb": GROWTH_TARGET_MB}
    try:
        port = free_port_block(1, start=42000)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = {**params["config"], "model": str(model), "thumbnail_dir": str(work / "thumbnails"),
                  "num_replicas": 1}
        serve.run(build_app(config), name="pam", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        pid = replica_pids("pam")[0]
        out["replica_pid"] = pid
        # warm: the model, Pillow's codecs and the multipart parser are loaded before "before"
        small = big_photo("JPEG", (640, 480), seed=1)
        requests.post(f"{url}/v1/photos", files=[("files", ("warm.jpg", small, "image/jpeg"))],
                      timeout=120).raise_for_status()
        time.sleep(SETTLE_S)
        runs = [upload_memory(url, pid, "photo.jpg", photos["photo.jpg"]),
                upload_memory(url, pid, "photo.png", photos["photo.png"]),
                upload_memory(url, pid, "photo.png", photos["photo.png"], copies=params.get("concurrent", 6)),
                upload_memory(url, pid, "photo.jpg", photos["photo.jpg"], copies=params.get("concurrent", 6))]
        out["runs"] = runs
        out["meets_growth_target"] = all(r["growth_mb"] <= GROWTH_TARGET_MB for r in runs)
        out["back_to_baseline"] = all(r["kept_mb"] <= 0.1 * GROWTH_TARGET_MB for r in runs)
        out["all_accepted"] = all(r["statuses"] == [200] * r["copies"] for r in runs)
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def render_upload(res: dict) -> list[str]:
    lines = [f"  replica memory (RSS of the replica process, sampled every 10 ms) around uploads of "
             f"{res['size'][0]}x{res['size'][1]} photos to POST /v1/photos:"]
    for r in res["runs"]:
        lines.append(f"    {r['copies']} x {r['file']} ({r['bytes'] / 1e6:.1f} MB): {r['statuses']} in {r['seconds']:.1f} s; "
                     f"RSS {r['rss_before_mb']:.0f} -> peak {r['rss_peak_mb']:.0f} -> {r['rss_after_mb']:.0f} MB "
                     f"(growth {r['growth_mb']:.0f} MB, kept {r['kept_mb']:.0f} MB)")
    lines.append(f"    growth <= {res['target_growth_mb']:.0f} MB: {'met' if res['meets_growth_target'] else 'NOT met'}; "
                 f"back to baseline: {'yes' if res['back_to_baseline'] else 'NO'}")
    return lines

