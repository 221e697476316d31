"""`pam serve` as a user runs it: a subprocess that cannot import torch, on a free port."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.ray]


def test_pam_serve_answers_without_torch_and_stops_cleanly(feature_env, tmp_path):
    """With --ingress direct: the proxy port and the replica's own port both answer."""
    blocker = tmp_path / "no-torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked: the service must run without it')\n")
    env = {**os.environ, "PYTHONPATH": f"{blocker.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    port = free_port()
    command = [sys.executable, "-m", "pam.cli", "serve", "--json", "--features", feature_env["feature_root"],
               "--model", feature_env["model"], "--photos", feature_env["photos_root"],
               "--users", f"sqlite:///{tmp_path / 'users.db'}", "--port", str(port), "--num-cpus", "2",
               "--duration", "120", "--ingress", "direct"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline, line = time.time() + 120, ""
        while time.time() < deadline:
            line = proc.stderr.readline()
            if "listening on" in line or (not line and proc.poll() is not None):
                break
        match = re.search(r"listening on (http://\S+)", line)
        assert match, f"no listening line; exit {proc.poll()}: {line}"
        url = match.group(1)
        assert url == f"http://127.0.0.1:{port}"
        requests.post(f"{url}/v1/users/cli/album", json={"image_ids": feature_env["ids"][:5]}, timeout=30)
        reply = requests.post(f"{url}/v1/users/cli/rerank", json={"candidates": feature_env["ids"][:5]}, timeout=30)
        assert reply.status_code == 200 and reply.json()["fallback"], reply.text
        assert (tmp_path / "users.db").exists()
        direct = re.search(r"direct ingress \(no proxy hop\): (http://\S+)", proc.stderr.readline())
        assert direct, "no direct-ingress line"
        again = requests.post(f"{direct.group(1)}/v1/users/cli/rerank", json={"candidates": feature_env["ids"][:5]},
                              timeout=30)
        assert again.json()["image_ids"] == reply.json()["image_ids"]
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["url"] == url and summary["model_version"] == feature_env["model_version"]
        assert proc.returncode == 0, err[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def test_w_aes_flag_reaches_the_service_config(tmp_path):
    """pam serve --w-aes sets Active-PAM's balance of v (DESIGN: rescale for another trunk)."""
    from pam.cli import build_parser
    from pam.commands.serve import service_args
    from serving.online.app import SERVE_ONLY_KEYS
    from serving.online.service import ServiceConfig

    def replica_config(args):  # what a replica receives: the Serve-only options are split off
        return ServiceConfig.from_dict({k: v for k, v in service_args(args).items() if k not in SERVE_ONLY_KEYS})

    base = ["serve", "--features", str(tmp_path), "--users", f"sqlite:///{tmp_path / 'u.db'}"]
    assert replica_config(build_parser("serve").parse_args([*base, "--w-aes", "0.08"])).w_aes == 0.08
    assert "w_aes" not in service_args(build_parser("serve").parse_args(base))  # the paper's default
    with pytest.raises(SystemExit, match="w-aes must be > 0"):
        service_args(build_parser("serve").parse_args([*base, "--w-aes", "0"]))
