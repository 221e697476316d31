"""The torch backend inside the batch job: where its actors go (GPUs when the cluster has them),
and the scoring actor's two input forms (pixels decoded by CPU tasks, or encoded bytes decoded
on the actor's device)."""

from __future__ import annotations

import numpy as np
import pyarrow.fs as pafs
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from export import gpu_decode  # noqa: E402
from export import onnx_export as ox  # noqa: E402
from export.networks import create_model  # noqa: E402
from export.torch_backend import WEIGHTS_FILE, save_weights  # noqa: E402
from serving.batch.job import (  # noqa: E402
    JobConfig,
    Scorer,
    backend_kind,
    plan_resources,
    read_and_decode,
    run_job,
)
from serving.scoring.backends import OnnxRuntimeBackend  # noqa: E402

pytestmark = pytest.mark.torch


def node(cpus, gpus=0):
    return {"Alive": True, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    net = create_model("tiny", seed=5).eval()
    folder = tmp_path_factory.mktemp("torch-job")
    version = ox.make_model_version("tiny", net)
    ox.export_onnx(net, folder / "pam_features.onnx", version)
    save_weights(net, folder / WEIGHTS_FILE, version)
    return folder


@pytest.fixture(scope="module")
def photo_rows(tmp_path_factory):
    """Paths of real-format photos (JPEG, PNG, a broken file, a missing one) as the job lists them."""
    from PIL import Image

    root = tmp_path_factory.mktemp("job-photos")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        array = (rng.integers(0, 256, (120 + 20 * i, 160, 3)) * (0.3 + 0.1 * i)).astype(np.uint8)
        path = root / f"p{i}.{'png' if i == 4 else 'jpg'}"
        Image.fromarray(array).save(path)
        paths.append(path)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    paths += [root / "broken.jpg", root / "missing.jpg"]
    return {"image_id": np.array([p.name for p in paths], dtype=object),
            "path": np.array([str(p) for p in paths], dtype=object)}


def test_kind_and_placement():
    assert backend_kind("torch:/models/v1") == "torch"
    assert backend_kind("onnx:/m.onnx") == "onnx" and backend_kind("triton+grpc://h:1") == "triton"
    gpu = plan_resources([node(16, gpus=4), node(16, gpus=4)], "torch")
    assert (gpu.actors, gpu.actor_gpus, gpu.actor_cpus) == (8, 1.0, 1.0)
    assert plan_resources([node(16, gpus=4)], "torch", gpus_per_actor=0.5).actors == 8
    cpu = plan_resources([node(2)], "torch")
    assert cpu.actor_gpus == 0.0 and cpu == plan_resources([node(2)], "onnx")


def test_scorer_rows_equal_the_onnx_graph_on_cpu_decoded_pixels(export_dir, photo_rows):
    batch = read_and_decode(photo_rows, pafs.LocalFileSystem())
    rows = Scorer(f"torch:{export_dir}", threads=None, batch_size=4)(batch)
    ok = rows["error"] == ""
    assert ok.tolist() == [True] * 6 + [False, False]
    assert rows["error"][6].startswith("truncated") and rows["error"][7].startswith("not_found")
    expected = OnnxRuntimeBackend(export_dir / "pam_features.onnx").score(batch["pixels"][ok])
    for name, value in expected.items():
        np.testing.assert_allclose(rows[name][ok], value, atol=1e-4, err_msg=name)
    assert not rows["aes_feat"][~ok].any()


def test_scorer_decoding_on_its_device(export_dir, photo_rows, monkeypatch):
    """gpu_decode: the read tasks ship bytes and the actor decodes them. Pillow stands in for
    nvJPEG (torchvision is not importable beside this torch); routing and fallback are real."""
    monkeypatch.setattr(gpu_decode, "nvjpeg_decoder", lambda device: gpu_decode.pillow_full_decoder)
    encoded = read_and_decode(photo_rows, pafs.LocalFileSystem(), decode_pixels=False)
    assert set(encoded) == {"image_id", "data", "error"} and "pixels" not in encoded
    assert encoded["error"][7].startswith("not_found") and encoded["data"][7] == b""
    scorer = Scorer(f"torch:{export_dir}", threads=None, batch_size=4, gpu_decode=True)
    rows = scorer(encoded)
    assert [e.split(":")[0] for e in rows["error"]] == [""] * 6 + ["truncated", "not_found"]
    assert scorer.decoder.counts["gpu"] == 5 and scorer.decoder.counts["cpu"] == 1  # the PNG on the CPU
    cpu_rows = Scorer(f"torch:{export_dir}", threads=None, batch_size=4)(
        read_and_decode(photo_rows, pafs.LocalFileSystem()))
    # decoded at full size and resized vs Pillow's path: these small photos give identical pixels +-1
    np.testing.assert_allclose(rows["aes_score"][:6], cpu_rows["aes_score"][:6], atol=1e-2)


def test_gpu_decode_needs_the_torch_backend(tmp_path, tiny_onnx_model):
    with pytest.raises(ValueError, match="torch backend"):
        run_job(JobConfig(inputs=str(tmp_path), out=str(tmp_path / "out"), backend=str(tiny_onnx_model),
                          gpu_decode=True, progress=False))


def test_a_real_job_with_the_torch_backend(export_dir, photo_rows, tmp_path):
    """The whole job on a local Ray (2 CPUs, no GPU: the torch actor plans like ONNX Runtime's):
    the same rows as the ONNX graph, the failures named."""
    from serving import feature_table as ft

    folder = tmp_path / "photos"
    folder.mkdir()
    for path in photo_rows["path"][:7]:  # the six photos and the broken file
        (folder / path.rsplit("/", 1)[1]).write_bytes(open(path, "rb").read())
    summary = run_job(JobConfig(inputs=str(folder), out=str(tmp_path / "out"), backend=f"torch:{export_dir}",
                                batch_size=4, num_cpus=2, progress=False))
    assert summary["complete"] and summary["rows_ok"] == 6 and summary["rows_failed"] == 1, summary
    assert summary["plan"]["actor_gpus"] == 0.0
    table = ft.FeatureTable(str(tmp_path / "out")).read().to_pydict()
    ok = [i for i, e in enumerate(table["error"]) if e is None]
    ids = [table["image_id"][i] for i in ok]
    from export.preprocess import decode_file

    expected = OnnxRuntimeBackend(export_dir / "pam_features.onnx").score(np.stack([decode_file(folder / i) for i in ids]))
    np.testing.assert_allclose(np.array([table["aes_feat"][i] for i in ok]), expected["aes_feat"], atol=1e-4)
