"""The robustness panel: a second simulated rater panel, built so that what the default panel makes
easy is hard, and frozen before any personalization method ran on it.

It keeps the default panel's set-up (personalize.simulate: sizes, split, check images, random
labellers, shared taste q, the 1-5 scale, the bias / taste / noise split of a rating's deviation)
and changes five things, fixed in advance:

1. Personal taste is non-linear in x: half of its variance is a linear function of the TRUE
   x = [attributes, content] (standardized), half is v_j . tanh(P x) over N_PROJECTIONS fixed
   random projections (PROJECTION_SCALE makes the tanh saturate), with the part of each tanh that
   is linear in x removed (least squares over the images), so a linear model of the true x
   explains exactly half of a rater's taste. No part of it lies on factors outside x, but:
2. the observed attributes are noisy copies of the true ones: observed = tanh(0.8 (z + s_k e)),
   where the true attribute is tanh(0.8 z), with s_k set so that each attribute's rank correlation
   with the truth is the paper's Table 3 value for it (0.26-0.69), as a real attribute network's
   outputs are. Content probabilities are observed exactly.
3. Raters come from N_CLUSTERS taste clusters: a rater's taste weights are
   sqrt(CLUSTER_SHARE) * their cluster's centre + sqrt(1 - CLUSTER_SHARE) * an individual part.
4. The generic network's error is sqrt(GENERIC_ERROR_ON_X) * a fixed non-linear function of the
   true x (shared by all raters) + sqrt(1 - GENERIC_ERROR_ON_X) * independent noise, in variance
   shares 40 / 60.
5. Population shift: training raters are drawn from the clusters uniformly (TRAIN_CLUSTERS),
   test raters with cluster 0 twice as common as each other (TEST_CLUSTERS).

Calibration: as for the default panel, DEVIATION_R and SIGMA_E_R are solved by bisection for the
paper's two statistics (Table 1's weighted per-image s.d. 0.79, the generic score's rho 0.702 vs
IM_j), and the attribute noises s_k analytically from Table 3 (rank correlation of a bivariate
normal: rho_S = 6/pi * asin(r/2)); tests/personalize/test_robust_panel.py pins all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from personalize.features import ATTRIBUTE_NAMES, N_ATTRIBUTES, N_CONTENT
from personalize.simulate import (
    BIAS_SHARE,
    NOISE_SHARE,
    TASTE_SHARE,
    Panel,
    PanelConfig,
    Properties,
    Raters,
    assemble_panel,
    simulate_properties,
)

# --- fixed by the panel's specification ---------------------------------------------------------
NONLINEAR_TASTE = 0.5  # share of personal taste variance that is tanh of random projections of x
CLUSTER_SHARE = 0.5  # share of a rater's taste weights' variance from their cluster
N_CLUSTERS = 4
GENERIC_ERROR_ON_X = 0.4  # share of the generic error's variance that is a function of x
TRAIN_CLUSTERS = (0.25, 0.25, 0.25, 0.25)
TEST_CLUSTERS = (0.4, 0.2, 0.2, 0.2)  # cluster 0 twice as common as each other one
# Table 3 of the paper: rank correlation of each predicted attribute with the truth
TABLE3_RHO = {"VC": 0.6938, "GL": 0.4963, "IC": 0.5641, "SY": 0.2558, "DoF": 0.5476,
              "OE": 0.6718, "BE": 0.3104, "CH": 0.5176, "RE": 0.3749, "RoT": 0.2737}
# --- a-priori choices -----------------------------------------------------------------------------
N_PROJECTIONS = 8
PROJECTION_SCALE = 1.5  # s.d. of a projection before tanh: well into its saturating range
STREAM = 20261203  # the panel's random stream, apart from the default panel's for the same seed
PANEL = PanelConfig()  # the paper's sizes, seed 0
# --- calibrated (calibrate_robust; frozen) --------------------------------------------------------
DEVIATION_R = 0.867
SIGMA_E_R = 0.341


def attribute_noise() -> np.ndarray:
    """s_k per attribute (ATTRIBUTE_NAMES order) so that rho_S(observed, true) = Table 3's value."""
    rho = np.asarray([TABLE3_RHO[a] for a in ATTRIBUTE_NAMES])
    r = 2.0 * np.sin(np.pi * rho / 6.0)  # Pearson r of the underlying normals
    return np.sqrt(1.0 / r**2 - 1.0)


def _standardize_columns(a: np.ndarray) -> np.ndarray:
    sd = a.std(0)
    return (a - a.mean(0)) / np.where(sd > 0, sd, 1.0)


def _robust_properties(config: PanelConfig, rng: np.random.Generator, sigma_e: float):
    props = simulate_properties(config.n_images, rng, sigma_e=0.0)  # q on the true attributes
    true_attr = props.attributes
    x_true = _standardize_columns(np.hstack([true_attr, props.content]))
    # 4. the generic error: a shared non-linear function of x plus independent noise
    proj = rng.normal(0, PROJECTION_SCALE / np.sqrt(x_true.shape[1]), (x_true.shape[1], N_PROJECTIONS))
    on_x = np.tanh(x_true @ proj) @ rng.normal(size=N_PROJECTIONS)
    on_x = (on_x - on_x.mean()) / on_x.std()
    error = sigma_e * (np.sqrt(GENERIC_ERROR_ON_X) * on_x
                       + np.sqrt(1 - GENERIC_ERROR_ON_X) * rng.normal(size=config.n_images))
    g = np.clip(props.shared_quality + error, 1.0, 5.0)
    # 2. observed attributes: noisy copies with Table 3's rank correlations
    z = np.arctanh(np.clip(true_attr, -1 + 1e-12, 1 - 1e-12)) / 0.8
    observed = np.tanh(0.8 * (z + attribute_noise()[None, :] * rng.normal(size=z.shape)))
    props = Properties(**{**props.__dict__, "attributes": observed, "aes_score": g})
    return props, true_attr, x_true


@dataclass(frozen=True)
class RobustTaste:
    """Every rater's true personal taste on the robustness panel, a function of the standardized
    true x (1. in the module docstring): sd_t (a w_lin . x + b w_nl . basis(x)), where basis(x) is
    tanh(x P) less its least-squares linear part over the panel's images, standardized. Called as
    taste(worker_idx, image_idx) it is the rater model's taste term (on the panel's images, from
    the precomputed basis); `offset` and `gradient` evaluate it, and its exact derivative, at any x."""

    x_raw: np.ndarray  # [images, 20]: the true attributes and the content probabilities
    x_true: np.ndarray  # [images, 20]: x_raw standardized over the panel's images
    proj: np.ndarray  # P [20, N_PROJECTIONS]
    linear_part: np.ndarray  # [21, N_PROJECTIONS]: intercept and slopes removed from each tanh
    basis_mean: np.ndarray  # [N_PROJECTIONS]
    basis_sd: np.ndarray  # [N_PROJECTIONS]
    basis: np.ndarray  # [images, N_PROJECTIONS]: basis(x_true)
    w_lin: np.ndarray  # [workers, 20]
    w_nl: np.ndarray  # [workers, N_PROJECTIONS]
    sd_t: float
    linear_weight: float  # a = sqrt(1 - NONLINEAR_TASTE)
    nonlinear_weight: float  # b = sqrt(NONLINEAR_TASTE)

    def __call__(self, worker: np.ndarray, image: np.ndarray) -> np.ndarray:
        return self.sd_t * (self.linear_weight * np.einsum("ij,ij->i", self.w_lin[worker], self.x_true[image])
                            + self.nonlinear_weight * np.einsum("ij,ij->i", self.w_nl[worker], self.basis[image]))

    def _basis(self, x: np.ndarray) -> np.ndarray:
        resid = np.tanh(x @ self.proj) - self.linear_part[0] - x @ self.linear_part[1:]
        return (resid - self.basis_mean) / self.basis_sd

    def offset(self, worker: int, x: np.ndarray) -> np.ndarray:
        """Worker `worker`'s taste at standardized true inputs x [n, 20] (any x, not only the panel's)."""
        return self.sd_t * (self.linear_weight * (x @ self.w_lin[worker])
                            + self.nonlinear_weight * (self._basis(x) @ self.w_nl[worker]))

    def gradient(self, worker: int, x: np.ndarray) -> np.ndarray:
        """d offset / d x [n, 20] at standardized true inputs x [n, 20], analytically:
        d basis_m / dx = (sech^2(x . P_m) P_m - slopes_m) / sd_m."""
        sech2 = 1.0 - np.tanh(x @ self.proj) ** 2  # [n, M]
        v = self.w_nl[worker] / self.basis_sd  # [M]
        nonlinear = (sech2 * v) @ self.proj.T - self.linear_part[1:] @ v  # [n, 20]
        return self.sd_t * (self.linear_weight * self.w_lin[worker] + self.nonlinear_weight * nonlinear)

    def raw_gradient(self, worker: int, image: np.ndarray) -> np.ndarray:
        """d offset / d x_raw [n, 20] at the panel's images: per unit of the true attribute and of
        the content probability (the units personalize.explain differentiates in)."""
        return self.gradient(worker, self.x_true[image]) / self.x_raw.std(0)


def _robust_raters(rng, x_raw: np.ndarray, shared: np.ndarray, n_workers: int, n_tw: int, n_te: int,
                   deviation: float) -> Raters:
    sd_b, sd_t, sd_n = (deviation * np.sqrt(s) for s in (BIAS_SHARE, TASTE_SHARE, NOISE_SHARE))
    x_true = _standardize_columns(x_raw)
    d = x_true.shape[1]
    bias = rng.normal(0, sd_b, n_workers)
    # 1. the taste's two parts, each of unit variance over images
    proj = rng.normal(0, PROJECTION_SCALE / np.sqrt(d), (d, N_PROJECTIONS))
    basis = np.tanh(x_true @ proj)  # [images, N_PROJECTIONS]
    # keep only what no linear function of x explains, so that the non-linear half is non-linear
    design = np.hstack([np.ones((x_true.shape[0], 1)), x_true])
    linear_part = np.linalg.lstsq(design, basis, rcond=None)[0]
    resid = basis - design @ linear_part
    basis_mean, basis_sd = resid.mean(0), resid.std(0)
    basis = _standardize_columns(resid)
    # 3. clusters (5. with a shifted mix for the test raters)
    centres_lin = rng.normal(size=(N_CLUSTERS, d))
    centres_nl = rng.normal(size=(N_CLUSTERS, N_PROJECTIONS))
    cluster = np.zeros(n_workers, dtype=np.int64)
    cluster[:n_tw] = rng.choice(N_CLUSTERS, size=n_tw, p=TRAIN_CLUSTERS)
    cluster[n_tw:n_tw + n_te] = rng.choice(N_CLUSTERS, size=n_te, p=TEST_CLUSTERS)
    c, i = np.sqrt(CLUSTER_SHARE), np.sqrt(1 - CLUSTER_SHARE)
    w_lin = c * centres_lin[cluster] + i * rng.normal(size=(n_workers, d))
    w_nl = c * centres_nl[cluster] + i * rng.normal(size=(n_workers, N_PROJECTIONS))
    # scale each part to unit variance over images and raters
    lin_sd = np.sqrt(np.mean(np.var(x_true @ w_lin[:n_tw + n_te].T, axis=0)))
    nl_sd = np.sqrt(np.mean(np.var(basis @ w_nl[:n_tw + n_te].T, axis=0)))
    w_lin /= lin_sd
    w_nl /= nl_sd
    taste = RobustTaste(x_raw, x_true, proj, linear_part, basis_mean, basis_sd, basis, w_lin, w_nl, sd_t,
                        float(np.sqrt(1 - NONLINEAR_TASTE)), float(np.sqrt(NONLINEAR_TASTE)))

    def rate(worker: np.ndarray, image: np.ndarray) -> np.ndarray:
        latent = shared[image] + bias[worker] + taste(worker, image) + rng.normal(0, sd_n, image.size)
        return np.clip(np.rint(latent), 1, 5)

    truth = {w: {"bias": float(bias[w]), "cluster": int(cluster[w]), "linear_taste": w_lin[w].round(6).tolist(),
                 "nonlinear_taste": w_nl[w].round(6).tolist()} for w in range(n_workers)}
    return Raters(bias, sd_n, rate, truth, taste)


def simulate_robust_panel(config: PanelConfig = PANEL, *, deviation: float = DEVIATION_R,
                          sigma_e: float = SIGMA_E_R) -> Panel:
    """The robustness panel (seeded by config.seed). `deviation` and `sigma_e` are arguments only
    for `calibrate_robust`."""
    rng = np.random.default_rng([STREAM, config.seed])
    props, true_attr, _ = _robust_properties(config, rng, sigma_e)
    x_raw = np.hstack([true_attr, props.content])
    return assemble_panel(config, rng, props, lambda n_workers, n_tw, n_te: _robust_raters(
        rng, x_raw, props.shared_quality, n_workers, n_tw, n_te, deviation))


def robust_statistics(panel: Panel) -> dict:
    """panel_statistics plus what the specification fixes, measured."""
    from personalize.simulate import panel_statistics

    stats = panel_statistics(panel)
    clusters = np.asarray([panel.workers[w]["cluster"] for w in sorted(panel.workers)
                           if panel.workers[w]["role"] != "random"])
    roles = np.asarray([panel.workers[w]["role"] for w in sorted(panel.workers) if panel.workers[w]["role"] != "random"])
    stats["cluster_shares"] = {role: np.bincount(clusters[roles == role], minlength=N_CLUSTERS).tolist()
                               for role in ("train", "test")}
    stats["target_attribute_rho"] = dict(TABLE3_RHO)
    return stats


def true_inputs(config: PanelConfig = PANEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(observed attributes, true attributes, standardized true x) of the panel's images."""
    rng = np.random.default_rng([STREAM, config.seed])
    props, true_attr, x_true = _robust_properties(config, rng, SIGMA_E_R)
    return props.attributes, true_attr, x_true


def measured_attribute_rho(config: PanelConfig = PANEL) -> dict[str, float]:
    """Rank correlation of each observed attribute with the true one, on the panel's images."""
    from personalize.metrics import spearman_rho

    observed, true_attr, _ = true_inputs(config)
    return {name: spearman_rho(observed[:, k], true_attr[:, k]) for k, name in enumerate(ATTRIBUTE_NAMES)}


def calibrate_robust(config: PanelConfig = PANEL, iterations: int = 12) -> tuple[float, float]:
    """Solve (DEVIATION_R, SIGMA_E_R) for the default panel's targets by bisection; run once,
    results frozen above."""
    from personalize.simulate import bisect_calibration

    return bisect_calibration(lambda **kw: simulate_robust_panel(config, **kw), iterations=iterations)


assert N_ATTRIBUTES + N_CONTENT == 20 and len(TRAIN_CLUSTERS) == len(TEST_CLUSTERS) == N_CLUSTERS
