import numpy as np
import onnxruntime as ort


def test_tiny_graph_honours_the_contract(tiny_onnx_model, rng):
    sess = ort.InferenceSession(str(tiny_onnx_model), providers=["CPUExecutionProvider"])
    images = rng.integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": images}), strict=True))
    assert out["aes_score"].shape == (3, 1) and ((out["aes_score"] >= 1) & (out["aes_score"] <= 5)).all()
    assert out["aes_feat"].shape == (3, 176)
    assert out["attributes"].shape == (3, 10)
    np.testing.assert_allclose(out["content"].sum(1), 1, rtol=1e-5)
    assert sess.get_modelmeta().custom_metadata_map["pam_model_version"] == "tiny-test-0"
    # different pixels give different rows: the graph really looks at the image
    assert not np.allclose(out["aes_feat"][0], out["aes_feat"][1])
