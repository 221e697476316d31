"""`pam bench features` at a small size (timings are not asserted), and the CPU-by-role sampler
it uses, against processes whose titles name their role."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pam.bench.features import _CpuSampler

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.ray
@pytest.mark.photos
@pytest.mark.slow
def test_features_bench_runs_at_a_small_size(shared_photos):
    out = subprocess.run([sys.executable, "-m", "pam.cli", "bench", "features", "--photos", str(shared_photos),
                          "--limit", "24", "--repeat", "2", "--skip-one-cpu", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    job = summary["job"][str(summary["cpus"])]
    assert summary["images"] == 48 and job["rows_ok"] == 48 and job["rows_failed"] == 0
    assert summary["loop_images_per_s"] > 0 and summary["decode_ms_per_image_1core"] > 0
    assert summary["estimate_10m"]["decode_cpus_per_gpu"] > 0


def _busy(title: str, seconds: float) -> subprocess.Popen:
    """A process that spins one core for `seconds`, with `title` in its command line."""
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
    return subprocess.Popen([sys.executable, "-c", code, title])


def test_cpu_sampler_gives_each_role_its_cores():
    with _CpuSampler(every_s=0.2) as sampler:
        decode, scorer = _busy("ray::MapBatches(read_and_decode)", 3.0), _busy("ray::MapWorker(MapBatches(Scorer))", 3.0)
        decode.wait(), scorer.wait()
        time.sleep(0.5)
    cores = sampler.steady_cores()
    # two spinning processes on a 2-core machine: each near one core in the window sampled
    assert cores is not None and cores.get("decode tasks", 0) > 0.4 and cores.get("scoring actor", 0) > 0.4, cores
