"""The FMA peak every `pam bench` fraction is taken of, and the photos a benchmark falls back to."""

from __future__ import annotations

import pytest

from pam.bench import peak as peak_module
from pam.bench.peak import cpu_fma_peak


def test_the_measured_peak_is_a_peak_no_blas_product_passes():
    """On any processor (AVX2, AVX-512, one FMA unit or two) a large sgemm runs at or below the
    FMA peak; a kernel that fell back to narrow vectors or spilled to memory fails here."""
    measured = cpu_fma_peak(cores=1)
    assert measured["source"].startswith("FMA kernel"), "no C compiler: the peak is only an estimate"
    sgemm = peak_module._sgemm_gflops_per_cpu_s(size=1024)
    assert sgemm <= 1.02 * measured["gflops_per_core"], (sgemm, measured)
    assert measured["gflops_per_core"] <= 2 * 16 * 2 * 6.0, "more than 2 x 512-bit FMA units at 6 GHz"


def test_the_peak_scales_with_the_cores_it_is_asked_for():
    one, two = cpu_fma_peak(cores=1), cpu_fma_peak(cores=2)
    assert two["cores"] == 2 and two["gflops"] == pytest.approx(2 * two["gflops_per_core"])
    assert one["gflops_per_core"] == pytest.approx(two["gflops_per_core"], rel=0.5)


def test_without_a_compiler_the_peak_says_it_is_sgemm(monkeypatch):
    monkeypatch.setattr(peak_module, "_compile", lambda: None)
    peak_module._measure.cache_clear()
    try:
        measured = cpu_fma_peak(cores=1)
    finally:
        peak_module._measure.cache_clear()
    assert "sgemm" in measured["source"] and measured["gflops"] > 0


def test_a_missing_photo_folder_is_one_line_not_a_traceback(tmp_path):
    from pam.bench.photos import bench_photos

    with pytest.raises(SystemExit, match=r"pam bench scoring: --photos .*nowhere is not a folder"):
        bench_photos(tmp_path / "nowhere", "scoring")


def test_without_shared_photos_benchmarks_read_the_wheels_sample_photos(monkeypatch, tmp_path):
    pytest.importorskip("skimage")
    import pam.demo.album as album
    from pam.bench import photos

    monkeypatch.setattr(album, "shared_photos_dir", lambda: None)
    monkeypatch.setattr(photos.tempfile, "gettempdir", lambda: str(tmp_path))
    folder = photos.bench_photos(None, "scoring")
    assert len([p for p in folder.rglob("*.jpg")]) == photos.SAMPLE_ALBUM_SIZE
