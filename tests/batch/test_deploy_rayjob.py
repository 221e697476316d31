"""deploy/rayjob.yaml parses, and its entrypoint is a `pam features` command line this CLI accepts."""

from __future__ import annotations

import shlex

import yaml

from pam.cli import build_parser
from tests.conftest import ROOT


def test_rayjob_manifest_runs_this_cli():
    import ray

    (manifest,) = yaml.safe_load_all((ROOT / "deploy" / "rayjob.yaml").read_text())
    assert manifest["kind"] == "RayJob" and manifest["apiVersion"] == "ray.io/v1"
    spec = manifest["spec"]
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1  # reruns resume
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["pam", "features"]
    args = build_parser("features").parse_args(argv[1:])
    assert args.inputs.startswith("s3://") and args.out.startswith("s3://")
    assert args.backend.startswith("triton+grpc://") and args.json
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the driver's pod runs no tasks
    images = {c["image"] for group in [head, *spec["rayClusterSpec"]["workerGroupSpecs"]]
              for c in group["template"]["spec"]["containers"]}
    assert len(images) == 1  # one image everywhere (deploy/Containerfile)
