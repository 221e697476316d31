"""Ranking metrics of the paper: Spearman's rho with ties, and the correlation improvement.

rho is the Pearson correlation of average ranks (scipy.stats.spearmanr's definition), so ties,
which 1-5 integer ratings are full of, are handled; the paper's 1 - 6 sum d^2 / (N^3 - N) is the
same number when there are no ties. rho is NaN when either side is constant (no ranking to
compare); callers skip NaN rather than count it as zero.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def spearman_rho(a, b) -> float:
    """Spearman's rank correlation with average ranks for ties; NaN when a or b is constant."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman_rho: lengths differ ({a.size} vs {b.size})")
    if a.size < 2:
        return float("nan")
    ra = rankdata(a) - (a.size + 1) / 2.0
    rb = rankdata(b) - (b.size + 1) / 2.0
    denom = np.sqrt((ra @ ra) * (rb @ rb))
    if denom == 0.0:
        return float("nan")
    return float(np.clip((ra @ rb) / denom, -1.0, 1.0))


def correlation_improvement(y_true, y_personal, y_generic) -> float:
    """rho(user's scores, personalized prediction) - rho(user's scores, generic score)."""
    return spearman_rho(y_true, y_personal) - spearman_rho(y_true, y_generic)
