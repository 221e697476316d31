"""deploy/: the Serve config runs here (`serve run`), the manifests parse and agree with the code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests
import yaml

from serving.online.app import SERVE_ONLY_KEYS, build_app, expand_env
from serving.online.service import ServiceConfig
from tests.conftest import ROOT, free_port

DEPLOY = ROOT / "deploy"


def _serve_schema():
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema


def test_serve_config_validates_and_builds(feature_env, monkeypatch, tmp_path):
    config = yaml.safe_load((DEPLOY / "serve.yaml").read_text())
    _serve_schema().model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == "serving.online.app:build_app"
    monkeypatch.setenv("PAM_FEATURES", feature_env["feature_root"])
    monkeypatch.setenv("PAM_MODEL", feature_env["model"])
    monkeypatch.setenv("PAM_USERS", f"sqlite:///{tmp_path / 'u.db'}")
    monkeypatch.setenv("PAM_PHOTOS", feature_env["photos_root"])
    build_app(app["args"])
    auto = app["deployments"][0]["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"]) == (1, 2)
    monkeypatch.delenv("PAM_MODEL")
    with pytest.raises(ValueError, match="PAM_MODEL"):
        build_app(app["args"])


def test_rayservice_manifest_matches_the_service(monkeypatch):
    import ray

    (manifest,) = yaml.safe_load_all((DEPLOY / "kuberay" / "rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService" and manifest["apiVersion"] == "ray.io/v1"
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    _serve_schema().model_validate(serve_config)
    (app,) = serve_config["applications"]
    assert app["args"]["user_store"] == "${PAM_USERS}"  # from the pods' Secret
    monkeypatch.setenv("PAM_USERS_TEST", "postgresql://pam@db/pam")
    args = expand_env({**app["args"], "user_store": "${PAM_USERS_TEST}"})
    ServiceConfig.from_dict({k: v for k, v in args.items() if k not in SERVE_ONLY_KEYS})
    auto = app["deployments"][0]["autoscaling_config"]
    assert auto["min_replicas"] < auto["max_replicas"]
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__ and cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = cluster["workerGroupSpecs"][0]
    assert workers["minReplicas"] < workers["maxReplicas"]
    assert workers["template"]["spec"]["containers"][0]["image"] == head["image"]
    assert "PAM_USERS" in {e["name"] for e in head["env"]}
    assert app["args"]["model"].startswith("triton+grpc://pam-triton:")


def test_admission_limits_in_the_configs_are_the_code_s():
    """YAML cannot import: the Serve queue limits it states must be the ones the code deploys with."""
    from serving.online.app import MAX_ONGOING_REQUESTS, MAX_QUEUED_REQUESTS

    (manifest,) = yaml.safe_load_all((DEPLOY / "kuberay" / "rayservice.yaml").read_text())
    configs = {"serve.yaml": yaml.safe_load((DEPLOY / "serve.yaml").read_text()),
               "kuberay/rayservice.yaml": yaml.safe_load(manifest["spec"]["serveConfigV2"])}
    for name, config in configs.items():
        (deployment,) = config["applications"][0]["deployments"]
        assert (deployment["max_ongoing_requests"], deployment["max_queued_requests"]) == (
            MAX_ONGOING_REQUESTS, MAX_QUEUED_REQUESTS), name


def test_triton_manifest_serves_the_backend_the_service_calls():
    docs = list(yaml.safe_load_all((DEPLOY / "triton" / "triton.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert service["metadata"]["name"] == "pam-triton"
    assert {p["port"] for p in service["spec"]["ports"]} == {8000, 8001, 8002}


def test_containerfile_runs_the_install_script():
    recipe = (DEPLOY / "Containerfile").read_text()
    assert "bash scripts/install.sh" in recipe and "FROM " in recipe


@pytest.mark.ray
def test_serve_run_deploys_the_config_here(feature_env, tmp_path):
    config = yaml.safe_load((DEPLOY / "serve.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PAM_FEATURES": feature_env["feature_root"], "PAM_MODEL": feature_env["model"],
           "PAM_USERS": f"sqlite:///{tmp_path / 'users.db'}", "PAM_PHOTOS": feature_env["photos_root"],
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    serve_cli = os.path.join(os.path.dirname(sys.executable), "serve")
    proc = subprocess.Popen([serve_cli, "run", "-a", "local", str(path)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 150
        while time.time() < deadline:
            try:
                if requests.get(f"{base}/v1/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(1)
        else:
            raise AssertionError("serve run did not become ready")
        requests.post(f"{base}/v1/users/yaml/album", json={"image_ids": feature_env["ids"][:4]}, timeout=30)
        reply = requests.post(f"{base}/v1/users/yaml/rerank", json={"candidates": feature_env["ids"][:4]}, timeout=30)
        assert reply.status_code == 200 and len(reply.json()["image_ids"]) == 4
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
