"""One BLAS thread for the small matrices of personal models.

The products here (100x100 factorisations, 1,000x100 kernels) are too small for BLAS threads to
pay, and numpy and scipy each bring their own OpenBLAS: two thread pools that busy-wait against
each other on a small machine (a user's taste took 11 ms with them, 1.7 ms without). threadpoolctl
limits only the libraries loaded when it is called, so `single_blas_thread` loads every BLAS the
personal models use first.
"""

from __future__ import annotations


def _load_numeric_libraries() -> None:
    import numpy  # noqa: F401
    import scipy.linalg
    import scipy.optimize  # noqa: F401
    import sklearn.svm  # noqa: F401  (brings libgomp)


def single_blas_thread():
    """A threadpoolctl limit of one BLAS/OpenMP thread over every numeric library the personal
    models load; use as a context manager, or keep the returned object for a process-wide limit."""
    from threadpoolctl import threadpool_limits

    _load_numeric_libraries()
    return threadpool_limits(1)


def blas_threads(n: int):
    """As single_blas_thread, for n threads of the BLAS only."""
    from threadpoolctl import threadpool_limits

    _load_numeric_libraries()
    return threadpool_limits(limits=n, user_api="blas")
