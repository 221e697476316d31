"""One model version at a time: the catalog pairs the backend with the store's rows of its version,
and a switch opens the new version whole before swapping it in (user models then refit)."""

from __future__ import annotations

import numpy as np
import pytest

from pam.bench.tiny_graph import build_tiny_feature_model
from serving.online.app import LocalRuntime
from serving.online.service import Catalog, PersonalizationService, UserModel, model_key


def test_switch_is_atomic_and_user_models_follow(feature_env, second_version, tmp_path):
    svc = PersonalizationService({"feature_root": feature_env["feature_root"], "model": feature_env["model"],
                                  "user_store": f"sqlite:///{tmp_path / 'u.db'}"})
    ids = feature_env["ids"]
    svc.add_album("default", "vic", ids[:20])
    svc.add_ratings("default", "vic", [{"image_id": i, "score": 1 + k % 5} for k, i in enumerate(ids[:10])], None)
    from serving.online.api_models import parse_rerank

    query = parse_rerank({"candidates": ids[20:30]})
    runtime_model = svc.load_user_model(model_key("default", "vic"))
    before = svc.rerank(runtime_model, query, svc.catalog)
    assert before["model_version"] == "tiny-test-0"

    old_catalog = svc.catalog
    assert svc.switch_model(second_version) == "tiny-test-1"
    assert svc.catalog is not old_catalog and svc.info()["model_version"] == "tiny-test-1"
    catalog = svc.catalog
    model = svc.ensure_fresh(runtime_model, svc.versions("default", "vic"), catalog)
    assert model.model_version == "tiny-test-1"  # refit on the new version's rows
    after = svc.rerank(model, query, catalog)
    assert after["model_version"] == "tiny-test-1"
    assert not np.allclose(np.sort(after["generic_scores"]), np.sort(before["generic_scores"]))
    # a request that began before the switch answers from the old version, whole
    old_model = UserModel("default", "vic", svc.users.snapshot("vic"), old_catalog, svc.config)
    stale = svc.rerank(old_model, query, old_catalog)
    assert stale["model_version"] == "tiny-test-0" and stale["scores"].tolist() == before["scores"].tolist()
    # one holding the old catalog whose user model another request refit on the new version
    # reads the new version's rows: features always match the model
    crossed = svc.rerank(model, query, old_catalog)
    assert crossed["model_version"] == "tiny-test-1" and crossed["scores"].tolist() == after["scores"].tolist()
    svc.close()


def test_model_and_store_versions_never_mix(feature_env, second_version, tmp_path):
    other = build_tiny_feature_model(tmp_path / "m.onnx", "never-scored-9")
    with pytest.raises(Exception, match="never-scored-9"):
        Catalog(feature_env["feature_root"], str(other))
    with pytest.raises(ValueError, match="versions never mix"):
        Catalog(feature_env["feature_root"], feature_env["model"], model_version="tiny-test-1")


def test_a_runtime_without_model_serves_current_and_refuses_uploads(feature_env, tmp_path):
    runtime = LocalRuntime({"feature_root": feature_env["feature_root"], "user_store": f"sqlite:///{tmp_path / 'u.db'}"})
    assert runtime.service.catalog.model_version == "tiny-test-0"  # CURRENT
    from serving.online.api_models import ApiError

    with pytest.raises(ApiError, match="no feature backend"):
        runtime.service.score_uploads([("a.jpg", b"xx", None)])
    runtime.close()
