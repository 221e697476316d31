"""Side-by-side benchmarks, one module per hot path; `pam bench NAME` runs one.

Each module exposes HELP, add_arguments(parser) and run(args) -> dict. A summary reports the
project's figure, the obvious alternative's figure measured in the same run, their ratio, and
where it applies the physical limit (FLOP/s or bytes/s) and how close the project gets.
"""

# name -> (module, one-line help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "personalize": ("pam.bench.personalize", "PAM fit/predict, Active-PAM step, Table-4 protocol"),
    "scoring": ("pam.bench.scoring", "fused five-crop ONNX vs torch eager per image; FMA peak; INT8"),
    "decode": ("pam.bench.decode", "decode + warp throughput on real JPEGs"),
    "triton": ("pam.bench.triton", "Triton requests/s and latency vs in-process ONNX Runtime"),
    "features": ("pam.bench.features", "the Ray Data batch job vs a single-process loop"),
    "store": ("pam.bench.store", "feature-store lookups of 1,000 ids in 1M rows vs pandas"),
    "finalize": ("pam.bench.finalize", "finalizing a version of 1M / 5M rows: peak memory, time"),
    "serve": ("pam.bench.serve", "re-rank through Ray Serve vs library call vs echo (wrk)"),
    "search": ("pam.bench.search", "search alone vs search + personalized re-rank over HTTP; the client's overhead"),
}
