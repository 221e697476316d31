"""`pam bench features` at a small size (timings are not asserted), and the CPU-by-role sampler
it uses, against processes whose titles name their role."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pam.bench.features import DRIVER, _ceiling, _CpuSampler

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
    spin_s = 3.0
    with _CpuSampler(every_s=0.2) as sampler:
        decode, scorer = _busy("ray::MapBatches(read_and_decode)", spin_s), _busy("ray::MapWorker(MapBatches(Scorer))", spin_s)
        used = {"decode tasks": _cpu_seconds(decode), "scoring actor": _cpu_seconds(scorer)}
        time.sleep(0.5)
    cores = sampler.steady_cores()
    assert cores is not None, "too few samples"
    # each spinning process gets the share of the cores it really had (two cores when the machine is
    # quiet, less when other programs run): the sampler must give it to its role, not to "other programs"
    for role, cpu_s in used.items():
        assert cores.get(role, 0) > 0.5 * cpu_s / spin_s, (role, cpu_s, cores)


def _cpu_seconds(process: subprocess.Popen) -> float:
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0
    return usage.ru_utime + usage.ru_stime


def test_ceiling_is_scoring_alone_on_the_cores_the_other_processes_leave():
    roles = {"scoring actor": 1.75, "decode tasks": 0.13, "Ray system": 0.06, DRIVER: 0.04, "other programs": 0.01}
    c = _ceiling(roles, steady=39.7, score_n=44.2, cpus=2, decode_ms=2.5)
    assert c["non_scoring_cores"] == pytest.approx(0.23)  # "other programs" run beside scoring alone too
    assert c["images_per_s"] == pytest.approx(44.2 * 1.77 / 2)
    assert c["steady_vs_ceiling"] == pytest.approx(39.7 / (44.2 * 1.77 / 2))
    # bare decoding at the job's rate + Ray + driver: what no change of ours gives back
    assert c["floor_cores"] == pytest.approx(2.5 * 39.7 / 1e3 + 0.06 + 0.04)
    assert c["best_vs_scoring_alone"] == pytest.approx((2 - c["floor_cores"]) / 2)
    assert _ceiling({}, 39.7, 44.2, 2, 2.5) is None and _ceiling(roles, None, 44.2, 2, 2.5) is None
