"""PAM (section 4.1): a per-user nu-SVR with RBF kernel on score offsets over x (eq. 3).

The estimator takes X = [x, aes_score]: every column but the last is the regressor's input x
(20 in the feature contract: attributes then content), the last is the generic score. It fits
offsets y - aes_score and predicts aes_score + offset. It follows scikit-learn's estimator API
(clone, cross_val_score, check_estimator) and serializes to plain numbers (`to_dict`), never
pickle.

Prediction evaluates the RBF expansion itself (one matrix product over the support vectors)
instead of going through libsvm: the same numbers to ~1e-12, several times faster for the
re-ranking path, and it is the only representation a reloaded model needs.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.model_selection import KFold
from sklearn.svm import NuSVR
from sklearn.utils.validation import check_is_fitted, validate_data

from personalize.metrics import spearman_rho

FORMAT = "pam/1"

# Chosen on the simulated panel's TRAINING workers only (pam eval tune; docs/personalize.md).
DEFAULT_NU = 0.5
DEFAULT_C = 1.0
DEFAULT_GAMMA = 0.1


def rbf_offsets(x: np.ndarray, support_vectors: np.ndarray, dual_coef: np.ndarray,
                intercept: float, gamma: float) -> np.ndarray:
    """sum_s dual_coef[s] * exp(-gamma * |x - sv_s|^2) + intercept, vectorised over rows of x."""
    if support_vectors.shape[0] == 0:
        return np.full(x.shape[0], intercept, dtype=np.float64)
    sq = (np.einsum("ij,ij->i", x, x)[:, None]
          + np.einsum("ij,ij->i", support_vectors, support_vectors)[None, :]
          - 2.0 * (x @ support_vectors.T))
    np.maximum(sq, 0.0, out=sq)
    np.multiply(sq, -gamma, out=sq)
    np.exp(sq, out=sq)
    return sq @ dual_coef + intercept


class PAM(RegressorMixin, BaseEstimator):
    """Personalized aesthetics model: generic score + nu-SVR offset (eq. 3).

    Parameters
    ----------
    nu : float in (0, 1]
        Bound on the fraction of support vectors / margin errors (eq. 3).
    C : float > 0
        Regularization of eq. 3.
    gamma : float > 0 or "scale"
        RBF width; "scale" is scikit-learn's 1 / (n_features * var(x)). The value used is kept
        in `gamma_` so a serialized model needs no training data.
    tol : float
        libsvm's stopping tolerance.

    With fewer than two ratings, or when every offset is equal, the offset is that constant
    (libsvm needs two distinct targets to have anything to fit).
    """

    def __init__(self, nu: float = DEFAULT_NU, C: float = DEFAULT_C,
                 gamma: float | str = DEFAULT_GAMMA, tol: float = 1e-3):
        self.nu = nu
        self.C = C
        self.gamma = gamma
        self.tol = tol

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # By design the model shrinks towards the last column (the generic score) and is
        # regularized for 10-100 ratings; check_estimator's generic regression data (whose last
        # column is just another feature) is not what it is built to fit to R^2 > 0.5.
        tags.regressor_tags.poor_score = True
        return tags

    def fit(self, X, y):
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        if not 0.0 < self.nu <= 1.0:
            raise ValueError(f"nu must be in (0, 1], got {self.nu!r}")
        if not self.C > 0:
            raise ValueError(f"C must be > 0, got {self.C!r}")
        x, aes = X[:, :-1], X[:, -1]
        offsets = y - aes
        self.gamma_ = self._resolve_gamma(x)
        if x.shape[1] == 0 or X.shape[0] < 2 or np.ptp(offsets) == 0.0:
            self.support_ = np.zeros(0, dtype=np.int64)
            self.support_vectors_ = np.zeros((0, x.shape[1]))
            self.dual_coef_ = np.zeros(0)
            self.intercept_ = float(np.mean(offsets))
            return self
        svr = NuSVR(nu=self.nu, C=self.C, kernel="rbf", gamma=self.gamma_, tol=self.tol)
        svr.fit(x, offsets)
        self.support_ = np.asarray(svr.support_, dtype=np.int64)  # training rows (not serialized)
        self.support_vectors_ = np.ascontiguousarray(svr.support_vectors_, dtype=np.float64)
        self.dual_coef_ = np.ascontiguousarray(svr.dual_coef_[0], dtype=np.float64)
        self.intercept_ = float(svr.intercept_[0])
        return self

    def _resolve_gamma(self, x: np.ndarray) -> float:
        if isinstance(self.gamma, str):
            if self.gamma != "scale":
                raise ValueError(f"gamma must be a positive number or 'scale', got {self.gamma!r}")
            var = float(x.var()) if x.size else 0.0
            return 1.0 / (x.shape[1] * var) if var > 0 and x.shape[1] else 1.0
        if not self.gamma > 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma!r}")
        return float(self.gamma)

    def predict_offsets(self, X) -> np.ndarray:
        """The personal offsets alone (same X layout as predict)."""
        check_is_fitted(self, "dual_coef_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return rbf_offsets(X[:, :-1], self.support_vectors_, self.dual_coef_,
                           self.intercept_, self.gamma_)

    def predict(self, X) -> np.ndarray:
        """aes_score + predicted offset, for X = [x, aes_score]."""
        check_is_fitted(self, "dual_coef_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return X[:, -1] + rbf_offsets(X[:, :-1], self.support_vectors_, self.dual_coef_,
                                      self.intercept_, self.gamma_)

    # --- serialization: plain numbers only --------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-safe dict (lists and floats) from which `from_dict` rebuilds this model."""
        check_is_fitted(self, "dual_coef_")
        return {
            "format": FORMAT,
            "params": {"nu": float(self.nu), "C": float(self.C),
                       "gamma": self.gamma if isinstance(self.gamma, str) else float(self.gamma),
                       "tol": float(self.tol)},
            "n_features_in": int(self.n_features_in_),
            "gamma_": float(self.gamma_),
            "support_vectors": self.support_vectors_.tolist(),
            "dual_coef": self.dual_coef_.tolist(),
            "intercept": float(self.intercept_),
        }

    @classmethod
    def from_dict(cls, d: dict) -> PAM:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a serialized PAM model (format {d.get('format')!r}, want {FORMAT!r})")
        model = cls(**d["params"])
        n_in = int(d["n_features_in"])
        model.n_features_in_ = n_in
        model.gamma_ = float(d["gamma_"])
        sv = np.asarray(d["support_vectors"], dtype=np.float64).reshape(-1, n_in - 1)
        coef = np.asarray(d["dual_coef"], dtype=np.float64).reshape(-1)
        if sv.shape[0] != coef.shape[0]:
            raise ValueError(f"{sv.shape[0]} support vectors but {coef.shape[0]} coefficients")
        model.support_vectors_ = np.ascontiguousarray(sv)
        model.dual_coef_ = coef
        model.intercept_ = float(d["intercept"])
        return model

    def save_npz(self, path) -> None:
        d = self.to_dict()
        np.savez(path, format=np.str_(FORMAT), nu=d["params"]["nu"], C=d["params"]["C"],
                 gamma=np.str_(str(d["params"]["gamma"])), tol=d["params"]["tol"],
                 n_features_in=d["n_features_in"], gamma_=d["gamma_"],
                 support_vectors=self.support_vectors_, dual_coef=self.dual_coef_,
                 intercept=d["intercept"])

    @classmethod
    def load_npz(cls, path) -> PAM:
        with np.load(path, allow_pickle=False) as z:
            gamma = str(z["gamma"])
            return cls.from_dict({
                "format": str(z["format"]),
                "params": {"nu": float(z["nu"]), "C": float(z["C"]), "tol": float(z["tol"]),
                           "gamma": gamma if gamma == "scale" else float(gamma)},
                "n_features_in": int(z["n_features_in"]), "gamma_": float(z["gamma_"]),
                "support_vectors": z["support_vectors"], "dual_coef": z["dual_coef"],
                "intercept": float(z["intercept"]),
            })


def estimate_gain(X, y, cv: int = 5, min_ratings: int = 10, random_state: int = 0, make_model=None,
                  **pam_params) -> float | None:
    """Cross-validated mean of rho(PAM) - rho(generic) on held-out ratings of one user
    (make_model: another personal model's factory, e.g. lambda: PriorPAM(prior); default PAM).

    X = [x, aes_score] of the rated images, y the user's scores. Folds hold at least 3 ratings
    (fewer folds when there are few ratings); folds whose held-out scores are all equal carry no
    ranking and are skipped. None when there are fewer than `min_ratings` ratings or no fold
    could be scored.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()
    n = y.shape[0]
    if n < max(min_ratings, 6):
        return None
    folds = KFold(n_splits=max(2, min(cv, n // 3)), shuffle=True, random_state=random_state)
    gains = []
    for train, test in folds.split(X):
        model = (PAM(**pam_params) if make_model is None else make_model()).fit(X[train], y[train])
        gain = spearman_rho(y[test], model.predict(X[test])) - spearman_rho(y[test], X[test, -1])
        if np.isfinite(gain):
            gains.append(gain)
    return float(np.mean(gains)) if gains else None
