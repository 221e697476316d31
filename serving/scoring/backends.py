"""Feature backends: uint8[B, 256, 256, 3] -> {aes_score, aes_feat, attributes, content}.

Two implementations share one contract (tests/backends): ONNX Runtime in-process (the embedded
default) and a Triton server through tritonclient. Training and export own the graph; these only
run it. Never imports torch. `open_backend(spec)` builds either from one string:

    onnx:/path/model.onnx              (or just /path/model.onnx)
    triton+http://127.0.0.1:8000       Triton's HTTP endpoint, model pam_features
    triton+grpc://127.0.0.1:8001/NAME  Triton's gRPC endpoint, model NAME
    torch:/path/export-or-run          the graph in PyTorch (CUDA FP16 where a GPU is; CPU FP32
                                       otherwise): export.torch_backend, imported only when asked
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections import deque
from concurrent.futures import Future, wait
from typing import Protocol, runtime_checkable

import numpy as np

from personalize.features import AES_FEAT_DIM, FEATURE_NAMES, N_ATTRIBUTES, N_CONTENT

INPUT_NAME = "images"
MODEL_VERSION_KEY = "pam_model_version"
CROP_POLICY_KEY = "pam_crop_policy"
TRITON_MODEL_NAME = "pam_features"
UNEXPORTED_VERSION = "unexported"  # what model_repository/ in git carries before pam export


class BackendUnavailable(RuntimeError):
    """The backend cannot answer now: server unreachable, model not READY, connection lost."""


class BackendError(RuntimeError):
    """The backend answered, but not with the feature contract (wrong or empty outputs)."""


@runtime_checkable
class FeatureBackend(Protocol):
    model_version: str
    max_batch_size: int

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images uint8 [B, 256, 256, 3] -> aes_score f32[B], aes_feat f32[B, 176],
        attributes f32[B, 10], content f32[B, 10]."""
        ...

    def close(self) -> None: ...


def check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (256, 256, 3):
        raise ValueError(f"expected uint8 [B, 256, 256, 3], got {images.dtype} {list(images.shape)}")
    return np.ascontiguousarray(images)


def normalise_outputs(outputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Shapes of the contract: aes_score [B] (the graph gives [B, 1]), the rest [B, D], float32.
    Raises BackendError naming the output when one is missing or has the wrong size."""
    shapes = {"aes_score": (batch,), "aes_feat": (batch, AES_FEAT_DIM),
              "attributes": (batch, N_ATTRIBUTES), "content": (batch, N_CONTENT)}
    result = {}
    for name in FEATURE_NAMES:
        if outputs.get(name) is None:
            raise BackendError(f"output {name} is missing")
        value = np.asarray(outputs[name], dtype=np.float32)
        if value.size != int(np.prod(shapes[name])):
            raise BackendError(f"output {name} has shape {list(value.shape)} for a batch of {batch}, "
                               f"expected {list(shapes[name])}"
                               + (" (empty: numpy 2 in Triton's Python backend does this)"
                                  if value.size == 0 and batch else ""))
        result[name] = value.reshape(shapes[name])
    return result


def _empty_outputs() -> dict[str, np.ndarray]:
    return normalise_outputs({n: np.zeros((0, 1), np.float32) for n in FEATURE_NAMES}, 0)


class OnnxRuntimeBackend:
    """The fused scoring graph in ONNX Runtime, in this process.

    parallel_sessions > 1 runs that many sessions side by side, `intra_op_threads //
    parallel_sessions` threads each (at least one), and splits a batch across them: on CPU, one
    single-thread session per core scored 4-5% more images/s than one session with a thread
    per core (each session keeps its own memory arena, and no thread waits for the slowest
    one between operators). spin=False stops idle ONNX Runtime threads from spinning, for
    processes that share their cores with other work (decoding in the batch job).

    `micro_batch` is how many photos one `session.run` gets. A single-thread session does best
    with one photo (five crops) per run: its activations stay in the core's caches (lite0, two
    single-thread sessions, batches of 64 photos: 45.3 img/s one photo per run, 43.9 with two,
    42.7 with four, 41.5 with 16). A multi-thread session needs whole batches to keep its threads
    busy (one photo per run: 32.7 against 39.3 img/s). The default follows the threads per session.
    """

    def __init__(self, model_path: str | os.PathLike, intra_op_threads: int | None = None,
                 max_batch_size: int = 32, parallel_sessions: int = 1, spin: bool = True,
                 micro_batch: int | None = None):
        import onnxruntime as ort

        if parallel_sessions < 1:
            raise ValueError(f"parallel_sessions must be >= 1, got {parallel_sessions}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if micro_batch is not None and micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        threads_per_session = 0  # ONNX Runtime's default: one per core
        if intra_op_threads or parallel_sessions > 1:
            threads_per_session = max(1, (intra_op_threads or parallel_sessions) // parallel_sessions)
            options.intra_op_num_threads = threads_per_session
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.model_path = str(model_path)
        self._sessions = [ort.InferenceSession(self.model_path, options, providers=["CPUExecutionProvider"])
                          for _ in range(parallel_sessions)]
        metadata = self._sessions[0].get_modelmeta().custom_metadata_map
        if MODEL_VERSION_KEY not in metadata:
            raise ValueError(f"{model_path} has no {MODEL_VERSION_KEY} in its metadata: not a pam export")
        self.model_version = metadata[MODEL_VERSION_KEY]
        self.crop_policy = metadata.get(CROP_POLICY_KEY, "")
        self.content_names = metadata.get("pam_content_names")  # JSON text (export.content_names)
        self.max_batch_size = max_batch_size
        self.micro_batch = min(max_batch_size, micro_batch or (1 if threads_per_session == 1 else max_batch_size))
        self._output_names = [o.name for o in self._sessions[0].get_outputs()]
        missing = set(FEATURE_NAMES) - set(self._output_names)
        if missing:
            raise ValueError(f"{model_path} lacks outputs {sorted(missing)}")
        self._pool = None
        if parallel_sessions > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(parallel_sessions, thread_name_prefix="pam-ort")

    def _run(self, session, chunk: np.ndarray) -> dict[str, np.ndarray]:
        values = session.run(self._output_names, {INPUT_NAME: chunk})
        return normalise_outputs(dict(zip(self._output_names, values, strict=True)), len(chunk))

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = check_images(images)
        sessions = self._sessions
        if not sessions:
            raise BackendUnavailable(f"backend for {self.model_path} is closed")
        step = self.micro_batch
        starts = range(0, len(images), step)
        if self._pool is None or len(starts) < 2:
            return _concatenate([self._run(sessions[0], images[start:start + step]) for start in starts])
        # each worker owns one session and takes the next micro-batch when it is free, so a slow
        # photo never leaves the other cores idle; ONNX Runtime releases the GIL while it runs
        results: list[dict[str, np.ndarray] | None] = [None] * len(starts)
        queue = iter(enumerate(starts))
        lock = threading.Lock()

        def work(session) -> None:
            while True:
                with lock:
                    item = next(queue, None)
                if item is None:
                    return
                index, start = item
                results[index] = self._run(session, images[start:start + step])

        futures = [self._pool.submit(work, session) for session in sessions[:len(starts)]]
        wait(futures)  # all of them, so no session is still running when an error is raised
        for future in futures:
            future.result()
        return _concatenate(results)

    def close(self) -> None:
        self._sessions = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _concatenate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return _empty_outputs()
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in FEATURE_NAMES}


class TritonBackend:
    """The scoring graph served by a Triton server, through tritonclient (HTTP or gRPC).

    Checks at construction that the server is reachable and the model READY, and reads the
    model version from the model config's parameters (`pam_model_version`), so a backend never
    scores with an unknown model. Batches larger than the model's max_batch_size go as several
    requests, up to `concurrency` of them in flight at once.
    """

    def __init__(self, url: str, protocol: str = "http", model_name: str = TRITON_MODEL_NAME,
                 max_batch_size: int | None = None, timeout_s: float = 60.0, concurrency: int = 2):
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
        self.url = _host_port(url)
        self.protocol = protocol
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.concurrency = max(1, int(concurrency))
        self._where = f"Triton {protocol}://{self.url} model {model_name}"
        if protocol == "http":
            import tritonclient.http as client_module
        else:
            import tritonclient.grpc as client_module
        self._module = client_module
        # The HTTP client (gevent) only works in the thread that made it: one per thread. The
        # gRPC client is thread-safe: one for all.
        self._local = threading.local()
        self._clients: list = []
        self._clients_lock = threading.Lock()
        self._closed = False
        self._client = self._thread_client()
        try:
            self._read_model(self._check_ready_and_read_config(), max_batch_size)
        except BaseException:
            self.close()
            raise

    def _read_model(self, config: dict, max_batch_size: int | None) -> None:
        server_max = int(config.get("max_batch_size", 0))
        if server_max <= 0:
            raise BackendError(f"{self._where} has max_batch_size {server_max}: the scoring graph batches")
        self.max_batch_size = min(server_max, max_batch_size) if max_batch_size else server_max
        parameters = config.get("parameters", {})
        version = parameters.get(MODEL_VERSION_KEY, {}).get("string_value", "")
        if not version:
            raise BackendError(f"{self._where} has no {MODEL_VERSION_KEY} parameter in its config: "
                               "not a repository written by pam export")
        if version == UNEXPORTED_VERSION:
            raise BackendError(f"{self._where} config says {MODEL_VERSION_KEY}={UNEXPORTED_VERSION!r}: "
                               "the repository's configs were never written by pam export")
        self.model_version = version
        outputs = {o["name"] for o in config.get("output", [])}
        missing = set(FEATURE_NAMES) - outputs
        if missing:
            raise BackendError(f"{self._where} lacks outputs {sorted(missing)}")

    def _check_ready_and_read_config(self) -> dict:
        try:
            live = self._client.is_server_live()
        except Exception as exc:
            raise BackendUnavailable(f"{self._where}: server unreachable ({type(exc).__name__}: {exc})") from exc
        if not live:
            raise BackendUnavailable(f"{self._where}: server is not live")
        try:
            ready = self._client.is_model_ready(self.model_name)
            if not ready:
                index = self._client.get_model_repository_index()
                if self.protocol == "grpc":
                    index = [{"name": m.name, "state": m.state, "reason": m.reason} for m in index.models]
                states = {m.get("name"): f"{m.get('state', 'UNKNOWN')} {m.get('reason', '')}".strip()
                          for m in index}
                raise BackendUnavailable(f"{self._where}: model is not READY "
                                         f"(state: {states.get(self.model_name, 'absent')}; "
                                         f"repository: {states})")
            if self.protocol == "grpc":
                return self._client.get_model_config(self.model_name, as_json=True)["config"]
            return self._client.get_model_config(self.model_name)
        except BackendUnavailable:
            raise
        except Exception as exc:
            raise BackendUnavailable(f"{self._where}: {type(exc).__name__}: {exc}") from exc

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = check_images(images)
        if self._closed:
            raise BackendUnavailable(f"{self._where}: backend is closed")
        chunks = [images[i:i + self.max_batch_size] for i in range(0, len(images), self.max_batch_size)]
        try:
            parts = self._infer_all(self._thread_client(), chunks)
        except (BackendError, BackendUnavailable):
            raise
        except Exception as exc:
            raise _inference_failure(self._where, exc) from exc
        return _concatenate([normalise_outputs(p, len(c)) for p, c in zip(parts, chunks, strict=True)])

    def _thread_client(self):
        if self.protocol == "grpc" and self._clients:
            return self._clients[0]
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "http":
                client = self._module.InferenceServerClient(
                    self.url, concurrency=self.concurrency, connection_timeout=self.timeout_s,
                    network_timeout=self.timeout_s)
            else:
                client = self._module.InferenceServerClient(self.url)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _infer_all(self, client, chunks: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Send the chunks with up to `concurrency` requests in flight; results in order. One
        chunk (or concurrency 1) goes synchronously: the async paths add a greenlet or thread
        hand-off (about 6 ms per HTTP request here)."""
        if len(chunks) <= 1 or self.concurrency == 1:
            return [self._infer(client, chunk) for chunk in chunks]
        pending: deque[tuple[int, object]] = deque()
        results: list[dict[str, np.ndarray]] = [{} for _ in chunks]
        for index, chunk in enumerate(chunks):
            if len(pending) >= self.concurrency:
                done, handle = pending.popleft()
                results[done] = self._collect(handle)
            pending.append((index, self._submit(client, chunk)))
        while pending:
            done, handle = pending.popleft()
            results[done] = self._collect(handle)
        return results

    def _request(self, chunk: np.ndarray) -> tuple[list, list]:
        module = self._module
        inputs = [module.InferInput(INPUT_NAME, list(chunk.shape), "UINT8")]
        if self.protocol == "http":
            inputs[0].set_data_from_numpy(chunk, binary_data=True)
            outputs = [module.InferRequestedOutput(name, binary_data=True) for name in FEATURE_NAMES]
        else:
            inputs[0].set_data_from_numpy(chunk)
            outputs = [module.InferRequestedOutput(name) for name in FEATURE_NAMES]
        return inputs, outputs

    def _infer(self, client, chunk: np.ndarray) -> dict[str, np.ndarray]:
        inputs, outputs = self._request(chunk)
        if self.protocol == "http":
            result = client.infer(self.model_name, inputs, outputs=outputs)
        else:
            result = client.infer(self.model_name, inputs, outputs=outputs, client_timeout=self.timeout_s)
        return self._outputs(result)

    def _submit(self, client, chunk: np.ndarray):
        inputs, outputs = self._request(chunk)
        if self.protocol == "http":
            return client.async_infer(self.model_name, inputs, outputs=outputs)
        future: Future = Future()

        def done(result, error):
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        client.async_infer(self.model_name, inputs, done, outputs=outputs, client_timeout=self.timeout_s)
        return future

    def _collect(self, handle) -> dict[str, np.ndarray]:
        if self.protocol == "http":
            result = handle.get_result(block=True, timeout=self.timeout_s)
        else:
            result = handle.result(timeout=self.timeout_s)
        return self._outputs(result)

    def _outputs(self, result) -> dict[str, np.ndarray]:
        outputs = {}
        for name in FEATURE_NAMES:
            try:
                outputs[name] = result.as_numpy(name)
            except ValueError as exc:  # tritonclient reshaping a body of the wrong size
                raise BackendError(f"{self._where}: output {name} unreadable ({exc}); an empty output "
                                   "is what numpy 2 in Triton's Python backend gives") from exc
        return outputs

    def close(self) -> None:
        self._closed = True
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # an HTTP client made in another thread cannot be closed from here
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# statuses that say "not now" rather than "not this": tritonclient's gRPC codes, HTTP codes
_TRANSIENT_STATUSES = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED",
                       "StatusCode.RESOURCE_EXHAUSTED", "429", "502", "503", "504"}


def _inference_failure(where: str, exc: Exception) -> Exception:
    """Connection trouble and overload -> BackendUnavailable; the server rejecting or failing
    the request (bad model, an exception in the model) -> BackendError."""
    from tritonclient.utils import InferenceServerException

    text = f"{where}: inference failed ({type(exc).__name__}: {exc})"
    if isinstance(exc, InferenceServerException) and str(exc.status()) not in _TRANSIENT_STATUSES:
        return BackendError(text)
    return BackendUnavailable(text)


def _host_port(url: str) -> str:
    """tritonclient wants host:port; accept http://host:port too."""
    parsed = urllib.parse.urlsplit(url if "://" in url else f"//{url}")
    if not parsed.hostname or not parsed.port:
        raise ValueError(f"expected HOST:PORT for a Triton endpoint, got {url!r}")
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"{host}:{parsed.port}"


BACKEND_SPECS = ("onnx:/path/model.onnx", "triton+http://HOST:PORT[/MODEL]", "triton+grpc://HOST:PORT[/MODEL]",
                 "torch:/path/export-folder-or-run")


def open_backend(spec: str | os.PathLike, **options) -> FeatureBackend:
    """A feature backend from one string (see the module docstring); options go to its class
    (max_batch_size for all; intra_op_threads, parallel_sessions, spin for ONNX; timeout_s,
    concurrency for Triton; device, dtype, mode, threads for torch)."""
    text = os.fspath(spec)
    if text.startswith("torch:"):
        from export.torch_backend import TorchBackend  # torch only when asked for

        return TorchBackend.open(text[len("torch:"):], **options)
    if text.startswith("onnx:"):
        return OnnxRuntimeBackend(text[len("onnx:"):], **options)
    if text.startswith(("triton+http://", "triton+grpc://", "triton://")):
        parsed = urllib.parse.urlsplit(text)
        protocol = "grpc" if parsed.scheme == "triton+grpc" else "http"
        model_name = parsed.path.strip("/") or TRITON_MODEL_NAME
        if parsed.query or "/" in model_name:
            raise ValueError(f"unexpected path or query in {text!r}; expected one of {BACKEND_SPECS}")
        return TritonBackend(parsed.netloc, protocol=protocol, model_name=model_name, **options)
    if "://" not in text and text.endswith(".onnx"):
        return OnnxRuntimeBackend(text, **options)
    raise ValueError(f"unknown feature backend {text!r}; expected one of {BACKEND_SPECS}")
