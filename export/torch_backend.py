"""The fused five-crop graph in PyTorch: a feature backend for CUDA machines (and CPU, for tests).

Same contract as serving.scoring.backends.OnnxRuntimeBackend: `score(uint8 [B, 256, 256, 3])` ->
aes_score f32[B], aes_feat f32[B, 176], attributes f32[B, 10], content f32[B, 10]; also
`score_tensor` for images already on the device (GPU decoding hands them over there).

On CUDA: FP16 (or BF16) through autocast, channels-last activations (a permuted NHWC input is
channels-last already), one CUDA graph per batch bucket (batches are padded up to a power of two,
at most max_batch_size, so a few graphs cover every size), or `torch.compile` instead. On CPU:
FP32 eager, the reference the parity tests compare with the ONNX graph.

Weights (`load_network`): an export folder (`pam export` writes `pam_features.safetensors`
beside `pam_features.onnx`, with the same model version), that file itself, or a trained run
(`model.safetensors`). Reads safetensors directly: no scipy, no training code.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path

import numpy as np
import torch

from personalize.features import FEATURE_NAMES

from .networks import FiveCropScorer, PamNet, create_model
from .networks.model import CROP_POLICY, OUTPUT_NAMES

WEIGHTS_FILE = "pam_features.safetensors"
WEIGHTS_FORMAT = "pam-torch-weights/1"
RUN_MODEL_FILE = "model.safetensors"
RUN_FORMAT = "pam-train-checkpoint/1"
MODES = ("eager", "cuda-graphs", "compile")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------- weights

def save_weights(net: PamNet, path: str | os.PathLike, model_version: str) -> Path:
    """The network's state dict as safetensors, with what rebuilding it needs in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    metadata = {"format": WEIGHTS_FORMAT, "backbone": net.backbone.name, "pam_model_version": model_version,
                "pam_crop_policy": CROP_POLICY}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_network(source: str | os.PathLike) -> tuple[PamNet, str, str]:
    """(network in eval mode, model_version, crop policy) from an export folder, its
    pam_features.safetensors (or .onnx: the weights beside it), a run folder or its model file."""
    from safetensors import safe_open

    path = Path(source)
    if path.is_dir():
        candidates = [path / WEIGHTS_FILE, path / RUN_MODEL_FILE]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path} holds neither {WEIGHTS_FILE} (pam export) nor {RUN_MODEL_FILE} "
                                    "(pam train)")
        path = found
    elif path.suffix == ".onnx":
        path = path.with_name(WEIGHTS_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path} (pam export writes {WEIGHTS_FILE} beside the graph)")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        kind = metadata.get("format")
        if kind == WEIGHTS_FORMAT:
            state = {k: f.get_tensor(k) for k in f.keys()}
            backbone, dropout, seed = metadata["backbone"], 0.5, 0
        elif kind == RUN_FORMAT:
            state = {k.removeprefix("net/"): f.get_tensor(k) for k in f.keys() if k.startswith("net/")}
            run_state = json.loads(metadata["state"])
            if run_state.get("stage") != "done":
                raise ValueError(f"{path} is an unfinished run (stage {run_state.get('stage')!r})")
            config = run_state["config"]
            backbone, dropout, seed = config["backbone"], config.get("dropout", 0.5), config.get("seed", 0)
        else:
            raise ValueError(f"{path} is neither a pam export's weights nor a pam training run ({kind!r})")
    net = create_model(backbone, weights=None, dropout=dropout, seed=seed)
    net.load_state_dict(state)
    net.eval()
    from .onnx_export import make_model_version, weights_digest

    version = metadata.get("pam_model_version") or _onnx_version_beside(path) or make_model_version(backbone, net)
    digest = weights_digest(net)[:8]
    if not version.endswith(digest):
        raise ValueError(f"{path}: model version {version} does not match these weights (digest {digest})")
    return net, version, metadata.get("pam_crop_policy", CROP_POLICY)


def _onnx_version_beside(path: Path) -> str | None:
    onnx_path = path.with_name("pam_features.onnx")
    if not onnx_path.is_file():
        return None
    from .onnx_export import MODEL_VERSION_KEY, read_metadata

    return read_metadata(onnx_path).get(MODEL_VERSION_KEY)


# ---------------------------------------------------------------- the backend

def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def bucket(n: int, max_batch_size: int) -> int:
    """The padded batch a graph is recorded for: the next power of two, at most max_batch_size."""
    return min(max_batch_size, 1 << max(0, n - 1).bit_length())


class _Float32Linear(torch.nn.Module):
    """A Linear layer that autocast leaves in FP32 (its input cast up first)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.linear(x.float())


class TorchBackend:
    """The fused graph in PyTorch. `net` is a PamNet (or see `open`); device "cuda" or "cpu".

    dtype: "float16" (CUDA default), "bfloat16" or "float32" (CPU default), through autocast
    (weights stay FP32; BN folding is left to cuDNN's fused kernels). mode: "cuda-graphs"
    (CUDA default: a graph per batch bucket, recorded on first use), "compile" (torch.compile,
    minutes of compiling per bucket), or "eager" (CPU default).
    """

    def __init__(self, net: PamNet, model_version: str, crop_policy: str = CROP_POLICY,
                 device: str | None = None, dtype: str | None = None, mode: str | None = None,
                 max_batch_size: int = 512, threads: int | None = None):
        device = device or default_device()
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        dtype = dtype or ("float16" if cuda else "float32")
        mode = mode or ("cuda-graphs" if cuda else "eager")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "cuda-graphs" and not cuda:
            raise ValueError("mode 'cuda-graphs' needs a CUDA device")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if threads and not cuda:
            torch.set_num_threads(threads)
        self.model_version = model_version
        self.crop_policy = crop_policy
        self.max_batch_size = max_batch_size
        self.dtype_name, self.mode = dtype, mode
        self._dtype = DTYPES[dtype]
        net = copy.deepcopy(net).eval()
        # the linear layers in FP32: an FP16 score near 3 (0.6 on the training scale) moves in
        # steps of 0.0024, BF16 in steps of 0.02, which would tie and reorder close photos
        for owner, name in ((net.aesthetics, "fc"), (net.attributes, "fc"), (net, "content")):
            setattr(owner, name, _Float32Linear(getattr(owner, name)))
        scorer = FiveCropScorer(net).eval().to(self.device)
        if cuda:
            scorer = scorer.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        for p in scorer.parameters():
            p.requires_grad_(False)
        self._scorer = torch.compile(scorer, dynamic=False) if mode == "compile" else scorer
        self._graphs: dict[int, tuple] = {}  # bucket -> (graph, static input, static outputs)
        self._pool = None
        self._lock = threading.Lock()  # one graph replay (and its static buffers) at a time
        self._closed = False

    @classmethod
    def open(cls, source: str | os.PathLike, **options) -> TorchBackend:
        net, version, policy = load_network(source)
        return cls(net, version, policy, **options)

    # the forward pass on one padded batch, outputs float32 on the device
    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        autocast = self._dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self._dtype, enabled=autocast, cache_enabled=False):
            out = self._scorer(images)
        return tuple(o.float() for o in out)

    def _graph_for(self, size: int):
        entry = self._graphs.get(size)
        if entry is None:
            static = torch.zeros((size, 256, 256, 3), dtype=torch.uint8, device=self.device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up outside the graph (cuDNN picks algorithms)
                for _ in range(3):
                    self._forward(static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            # one memory pool for every bucket: replays never overlap (the lock) and each
            # replay's outputs are copied out before the next, so the graphs may reuse memory
            with torch.cuda.graph(graph, pool=self._pool):
                outputs = self._forward(static)
            entry = self._graphs[size] = (graph, static, outputs)
        return entry

    @torch.inference_mode()
    def score_tensor(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 [B, 256, 256, 3] (any device) -> the contract's outputs as float32 tensors on this
        backend's device (aes_score [B])."""
        if self._closed:
            raise RuntimeError("backend is closed")
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (256, 256, 3):
            raise ValueError(f"expected uint8 [B, 256, 256, 3], got {images.dtype} {list(images.shape)}")
        parts = []
        for start in range(0, images.shape[0], self.max_batch_size):
            chunk = images[start:start + self.max_batch_size]
            parts.append(self._score_chunk(chunk))
        if not parts:
            return {name: torch.zeros((0, *shape), device=self.device)
                    for name, shape in zip(OUTPUT_NAMES, ((), (176,), (10,), (10,)), strict=True)}
        return {name: torch.cat([p[i] for p in parts]) for i, name in enumerate(OUTPUT_NAMES)}

    def _score_chunk(self, chunk: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = chunk.shape[0]
        if self.mode == "eager":
            out = self._forward(chunk.to(self.device).contiguous())
        else:
            size = bucket(n, self.max_batch_size)
            if self.mode == "compile":
                padded = torch.zeros((size, 256, 256, 3), dtype=torch.uint8, device=self.device)
                padded[:n] = chunk.to(self.device, non_blocking=True)
                out = self._forward(padded)
            else:
                with self._lock:
                    graph, static, outputs = self._graph_for(size)
                    static[:n].copy_(chunk, non_blocking=True)
                    if n < size:
                        static[n:].zero_()
                    graph.replay()
                    out = tuple(o.clone() for o in outputs)
        aes_score, *rest = (o[:n] for o in out)
        return (aes_score.reshape(n), *rest)

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (256, 256, 3):
            raise ValueError(f"expected uint8 [B, 256, 256, 3], got {images.dtype} {list(images.shape)}")
        tensor = torch.from_numpy(np.ascontiguousarray(images))
        if self.device.type == "cuda" and len(images):
            tensor = tensor.pin_memory()
        out = self.score_tensor(tensor)
        return {name: out[name].cpu().numpy().astype(np.float32, copy=False) for name in FEATURE_NAMES}

    def close(self) -> None:
        self._closed = True
        self._graphs.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- parity with the ONNX graph

# the backend against the FP32 ONNX graph on real photos (FP16 on a GPU must clear these too)
PARITY_LIMITS = {"aes_score_max_abs_diff": 1e-2, "aes_score_spearman": 0.999, "aes_feat_cosine_min": 0.999}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (numpy only: the device check runs without scipy)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def parity_figures(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict:
    """How far `candidate` is from `reference` (both in the contract's shapes), and whether that
    is within PARITY_LIMITS."""
    ref_score = np.asarray(reference["aes_score"], np.float64).reshape(-1)
    got_score = np.asarray(candidate["aes_score"], np.float64).reshape(-1)
    a = np.asarray(reference["aes_feat"], np.float64)
    b = np.asarray(candidate["aes_feat"], np.float64)
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    figures = {
        "photos": len(ref_score),
        "aes_score_max_abs_diff": float(np.abs(ref_score - got_score).max()),
        "aes_score_spearman": spearman(ref_score, got_score),
        "aes_score_std": float(ref_score.std()),
        "aes_feat_cosine_min": float(cosine.min()),
        "aes_feat_cosine_mean": float(cosine.mean()),
        "attributes_max_abs_diff": float(np.abs(np.asarray(reference["attributes"])
                                                - np.asarray(candidate["attributes"])).max()),
        "content_max_abs_diff": float(np.abs(np.asarray(reference["content"])
                                             - np.asarray(candidate["content"])).max()),
        "limits": PARITY_LIMITS,
    }
    figures["ok"] = bool(figures["aes_score_max_abs_diff"] <= PARITY_LIMITS["aes_score_max_abs_diff"]
                         and figures["aes_score_spearman"] >= PARITY_LIMITS["aes_score_spearman"]
                         and figures["aes_feat_cosine_min"] >= PARITY_LIMITS["aes_feat_cosine_min"])
    return figures
