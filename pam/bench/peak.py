"""The float32 FMA peak of the cores a benchmark runs on, measured there.

A constant (FMA units x lanes x clock) is right for one processor only: an AVX-512 core with two
full-width FMA units does twice an AVX2 core's work per cycle, and a core boosts above its base
clock. So the peak is measured: a small C kernel, compiled for this processor (`-march=native`)
at the widest vector width the compiler enables, runs 16 independent FMA chains per thread (enough
to cover the FMA latency on every port) for a fixed count of iterations, one thread per core side
by side, each timing its own CPU time. The sum over cores is the peak; a real kernel cannot pass it.

Without a C compiler the peak falls back to one thread's numpy sgemm rate times the cores (about
85-95% of the real peak): `source` says which one a figure is a fraction of.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

KERNEL = r"""
#include <time.h>
#if defined(__AVX512F__)
#define WIDTH 64
#elif defined(__AVX__)
#define WIDTH 32
#else
#define WIDTH 16
#endif
#define LANES (WIDTH / 4)
#define CHAINS 16
typedef float vf __attribute__((vector_size(WIDTH)));

int fma_lanes(void) { return LANES; }

/* FLOPs done, with the calling thread's CPU seconds in *cpu_s; mul and add come from the caller
   so nothing folds at compile time, and the sum of the chains goes to *sink so nothing is dropped. */
double fma_burn(long iterations, float mul, float add, double *cpu_s, float *sink) {
    vf m, a, acc[CHAINS];
    for (int i = 0; i < LANES; i++) { m[i] = mul; a[i] = add; }
    for (int k = 0; k < CHAINS; k++) for (int i = 0; i < LANES; i++) acc[k][i] = (float)(k + i);
    struct timespec t0, t1;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
#if defined(__x86_64__)
    __asm__("" : "+v"(m), "+v"(a));  /* in registers: a memory operand per FMA halves the rate */
#elif defined(__aarch64__)
    __asm__("" : "+w"(m), "+w"(a));
#endif
    for (long n = 0; n < iterations; n++) {
#pragma GCC unroll 16
        for (int k = 0; k < CHAINS; k++) acc[k] = acc[k] * m + a;
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
    float s = 0;
    for (int k = 0; k < CHAINS; k++) for (int i = 0; i < LANES; i++) s += acc[k][i];
    *sink = s;
    *cpu_s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
    return 2.0 * iterations * CHAINS * LANES;
}
"""
FLAGS = ["-O2", "-march=native", "-ffp-contract=fast", "-fPIC", "-shared"]


def cpu_fma_peak(cores: int | None = None, seconds: float = 0.25) -> dict:
    """{"gflops": all cores, "gflops_per_core", "cores", "source", "lanes"}; cached per process."""
    cores = cores or len(os.sched_getaffinity(0))
    return dict(_measure(cores, seconds))


@functools.cache
def _measure(cores: int, seconds: float) -> tuple:
    lib = _compile()
    if lib is None:
        per_core = _sgemm_gflops_per_cpu_s()
        return (("gflops", per_core * cores), ("gflops_per_core", per_core), ("cores", cores),
                ("source", "numpy sgemm, one thread (no C compiler)"), ("lanes", None))
    iterations = _calibrate(lib, seconds)
    rates = [0.0] * cores

    def burn(i: int) -> None:
        rates[i] = max(_burn_once(lib, iterations) for _ in range(3))

    threads = [threading.Thread(target=burn, args=(i,)) for i in range(cores)]  # ctypes drops the GIL
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_core = sorted(rates)[len(rates) // 2]
    return (("gflops", per_core * cores), ("gflops_per_core", per_core), ("cores", cores),
            ("source", f"FMA kernel, {lib.fma_lanes()} fp32 lanes, one thread per core"),
            ("lanes", lib.fma_lanes()))


def _burn_once(lib, iterations: int) -> float:
    cpu, sink = ctypes.c_double(), ctypes.c_float()
    flops = lib.fma_burn(iterations, ctypes.c_float(0.9999999), ctypes.c_float(1e-7),
                         ctypes.byref(cpu), ctypes.byref(sink))
    return flops / max(cpu.value, 1e-9) / 1e9


def _calibrate(lib, seconds: float) -> int:
    iterations = 1 << 16
    while True:
        cpu, sink = ctypes.c_double(), ctypes.c_float()
        lib.fma_burn(iterations, ctypes.c_float(1.0), ctypes.c_float(0.0), ctypes.byref(cpu), ctypes.byref(sink))
        if cpu.value >= seconds / 4 or iterations >= 1 << 34:
            return int(iterations * seconds / max(cpu.value, 1e-9))
        iterations *= 4


def _compile():
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None
    digest = hashlib.sha1((KERNEL + " ".join(FLAGS) + compiler).encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"pam-fma-peak-{os.getuid()}-{digest}.so"
    if not target.exists():
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "fma.c"
            source.write_text(KERNEL)
            built = Path(tmp) / "fma.so"
            done = subprocess.run([compiler, *FLAGS, str(source), "-o", str(built)], capture_output=True)
            if done.returncode != 0:
                return None
            os.replace(built, target)  # atomic: concurrent benchmarks never load a half-written file
    lib = ctypes.CDLL(str(target))
    lib.fma_burn.restype = ctypes.c_double
    lib.fma_burn.argtypes = [ctypes.c_long, ctypes.c_float, ctypes.c_float,
                             ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_float)]
    lib.fma_lanes.restype = ctypes.c_int
    return lib


def _sgemm_gflops_per_cpu_s(size: int = 1536, repeat: int = 3) -> float:
    import time

    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = (rng.random((size, size), dtype=np.float32) for _ in range(2))
    best = float("inf")
    with threadpool_limits(1):
        a @ b
        for _ in range(repeat):
            t0 = time.thread_time()
            a @ b
            best = min(best, time.thread_time() - t0)
    return 2 * size**3 / best / 1e9
