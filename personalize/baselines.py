"""The paper's baselines for PAM (section 5.2): direct SVR on scores ("SVM") and non-linear FPMF.

DirectSVR: nu-SVR (RBF) from x straight to the user's score, ignoring the generic score (the
last column of X is dropped): what a user model without a generic network can do.

FPMF (non-linear feature-based matrix factorization, O'Donovan et al., as the paper uses it):
a one-layer network of 200 logistic units maps x to a 15-d latent item vector f(x); a user's
prediction is aes_score + b_u + u_u . f(x). The network and the training users' (u, b) are fit
jointly, once, on the training workers' ratings (L-BFGS on squared error + L2); a test user's
(u, b) is then the posterior mean under the Gaussian prior the training users' vectors define
(mean and covariance of (u, b) over training users, residual variance as noise), so each repeat
fits only the test user's latent vector, as in the paper. FPMF models the offset from the
generic score like PAM does: the paper's FPMF sits at ~0 correlation improvement with 10 images
(Table 4), which a score-level model on x cannot (it would fall with SVM), so we read it as
anchored to the generic score. `target="score"` gives the score-level variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.sparse import csr_matrix
from scipy.special import expit
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.svm import NuSVR
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from personalize.pam import DEFAULT_C, DEFAULT_GAMMA, DEFAULT_NU

N_HIDDEN = 200
N_LATENT = 15


class DirectSVR(RegressorMixin, BaseEstimator):
    """The "SVM" baseline: nu-SVR from x to the user's score. X = [x, aes_score] like PAM; the
    generic score column is ignored."""

    def __init__(self, nu: float = DEFAULT_NU, C: float = DEFAULT_C, gamma: float | str = DEFAULT_GAMMA):
        self.nu = nu
        self.C = C
        self.gamma = gamma

    def fit(self, X, y):
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        if X.shape[0] < 2 or np.ptp(y) == 0:
            self.constant_ = float(np.mean(y))
            self.svr_ = None
            return self
        self.constant_ = None
        self.svr_ = NuSVR(nu=self.nu, C=self.C, gamma=self.gamma).fit(X[:, :-1], y)
        return self

    def predict(self, X):
        check_is_fitted(self, "constant_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        if self.svr_ is None:
            return np.full(X.shape[0], self.constant_)
        return self.svr_.predict(X[:, :-1])


@dataclass
class FPMFNetwork:
    """f(x) = W2 . sigmoid(W1 x + c1) + c2, and the user prior learned with it."""

    W1: np.ndarray  # [d, 200]
    c1: np.ndarray  # [200]
    W2: np.ndarray  # [200, 15]
    c2: np.ndarray  # [15]
    x_mean: np.ndarray
    x_scale: np.ndarray
    prior_mean: np.ndarray  # [16]: (u, b) over training users
    prior_cov: np.ndarray  # [16, 16]
    noise_var: float
    target: str

    def latent(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.x_mean) / self.x_scale
        return expit(z @ self.W1 + self.c1) @ self.W2 + self.c2

    def fit_user(self, X: np.ndarray, y: np.ndarray) -> FPMFUser:
        """Posterior mean of the user's (u, b) from their ratings; X = [x, aes_score]."""
        X = np.asarray(X, dtype=np.float64)
        target = np.asarray(y, dtype=np.float64) - (X[:, -1] if self.target == "offset" else 0.0)
        F = np.hstack([self.latent(X[:, :-1]), np.ones((X.shape[0], 1))])
        prec0 = np.linalg.inv(self.prior_cov)
        A = F.T @ F / self.noise_var + prec0
        rhs = F.T @ target / self.noise_var + prec0 @ self.prior_mean
        return FPMFUser(self, np.linalg.solve(A, rhs))


@dataclass
class FPMFUser:
    network: FPMFNetwork
    theta: np.ndarray  # (u, b)

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        pred = self.network.latent(X[:, :-1]) @ self.theta[:-1] + self.theta[-1]
        return pred + (X[:, -1] if self.network.target == "offset" else 0.0)


def fpmf_objective(z, rating_image, rating_user, y, n_users: int, l2: float):
    """(loss_grad(theta) -> (loss, gradient), unpack(theta) -> parameters, sizes) of FPMF's
    mean squared error + L2 over the network weights and the users' vectors."""
    d = z.shape[1]
    shapes = [(d, N_HIDDEN), (N_HIDDEN,), (N_HIDDEN, N_LATENT), (N_LATENT,), (n_users, N_LATENT), (n_users,)]
    sizes = [int(np.prod(s)) for s in shapes]
    n = y.size
    zT = np.ascontiguousarray(z.T)  # z.T @ A on a transposed view is ~50x slower with threaded BLAS
    # one sparse users x images matrix whose data is refilled with the residuals on every call:
    # the two scatter-adds of the gradient become sparse products
    M = csr_matrix((np.arange(1, n + 1, dtype=np.float64), (rating_user, rating_image)),
                   shape=(n_users, z.shape[0]))
    slot = (M.data - 1).astype(np.int64)  # rating index held at each stored position
    if M.nnz != n:
        raise ValueError("a user rated the same image twice")

    def unpack(theta):
        out, at = [], 0
        for shape, size in zip(shapes, sizes, strict=True):
            out.append(theta[at:at + size].reshape(shape))
            at += size
        return out

    def loss_grad(theta):
        W1, c1, W2, c2, U, b = unpack(theta)
        H = expit(z @ W1 + c1)  # [I, 200]
        F = H @ W2 + c2  # [I, 15]
        pred = np.einsum("ij,ij->i", F[rating_image], U[rating_user]) + b[rating_user]
        err = pred - y
        loss = 0.5 * (err @ err) / n + 0.5 * l2 * ((W1**2).sum() + (W2**2).sum() + (U**2).sum())
        e = err / n
        M.data = e[slot]
        gU = M @ F + l2 * U
        gb = np.bincount(rating_user, weights=e, minlength=n_users)
        gF = M.T @ U
        gW2 = np.ascontiguousarray(H.T) @ gF + l2 * W2
        gc2 = gF.sum(0)
        gA = (gF @ W2.T) * H * (1 - H)
        gW1 = zT @ gA + l2 * W1
        gc1 = gA.sum(0)
        return loss, np.concatenate([g.ravel() for g in (gW1, gc1, gW2, gc2, gU, gb)])

    return loss_grad, unpack, sizes


def train_fpmf(X_images: np.ndarray, rating_image: np.ndarray, rating_user: np.ndarray,
               scores: np.ndarray, *, target: str = "offset", l2: float = 1e-3, max_iter: int = 300,
               seed: int = 0) -> FPMFNetwork:
    """Fit the network and the training users' vectors jointly.

    X_images [n_images, d + 1] = [x, aes_score] of every image rated by a training user;
    rating_image / rating_user: index of the image / user of each rating; scores: the ratings.
    """
    if target not in ("offset", "score"):
        raise ValueError(f"target must be 'offset' or 'score', got {target!r}")
    rng = np.random.default_rng(seed)
    X_images = np.asarray(X_images, dtype=np.float64)
    x = X_images[:, :-1]
    x_mean, x_scale = x.mean(0), np.where(x.std(0) > 0, x.std(0), 1.0)
    z = (x - x_mean) / x_scale
    y = np.asarray(scores, dtype=np.float64) - (X_images[rating_image, -1] if target == "offset" else 0.0)
    n_users = int(rating_user.max()) + 1
    d = z.shape[1]
    loss_grad, unpack, sizes = fpmf_objective(z, rating_image, rating_user, y, n_users, l2)

    theta0 = np.concatenate([
        rng.normal(0, 1 / np.sqrt(d), sizes[0]), np.zeros(sizes[1]),
        rng.normal(0, 1 / np.sqrt(N_HIDDEN), sizes[2]), np.zeros(sizes[3]),
        rng.normal(0, 0.1, sizes[4]), np.zeros(sizes[5])])
    with threadpool_limits(1):  # small products: threads only contend on a shared machine
        result = minimize(loss_grad, theta0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    W1, c1, W2, c2, U, b = unpack(result.x)
    F = expit(z @ W1 + c1) @ W2 + c2
    pred = np.einsum("ij,ij->i", F[rating_image], U[rating_user]) + b[rating_user]
    theta_users = np.hstack([U, b[:, None]])
    prior_cov = np.cov(theta_users, rowvar=False) + 1e-6 * np.eye(N_LATENT + 1)
    return FPMFNetwork(W1, c1, W2, c2, x_mean, x_scale, theta_users.mean(0), prior_cov,
                       float(np.mean((pred - y) ** 2)), target)
