"""The served version's population taste prior, and the personal models the service builds on it.

`pam fit-prior` stores a prior beside a feature version's parts (personalize.prior.PRIOR_FILE). A
Catalog loads the prior of the version it opens (`load_served_prior`); with one, a user's personal
model is Prior-PAM (personalize.prior.PriorPAM) and `next` uses the posterior strategy
(personalize.strategy.PosteriorStrategy); without one, PAM and Active-PAM (eq. 6), as the paper,
and so too when the prior's own cross-validation measured Prior-PAM losing to PAM (`served`).
Before a user's first rating the re-rank shows the population offset when the prior measured it to
beat the generic score on held-out raters (`use_population_offset`), the generic score otherwise.
"""

from __future__ import annotations

import numpy as np

from personalize.features import PAM_INPUT_DIM
from personalize.prior import PRIOR_FILE, PriorPAM, TastePrior, load_prior

MODEL_PRIOR, MODEL_PAM = "prior-pam", "pam"  # the user state's gain.model
STRATEGY_POSTERIOR, STRATEGY_ACTIVE_PAM = "posterior", "active-pam"  # `next`'s strategy


def load_served_prior(store) -> TastePrior | None:
    """The prior stored with the version `store` (a FeatureStore) serves, or None when it has none.
    Side files are kept only on local tables: a version on object storage is served without one. A
    prior that cannot be read, or was fit on other features, is an error: the version is not served
    with a model other than the one its operator fit."""
    table = store.table
    if not table.is_local:
        return None
    path = table.version(store.model_version).sidecar_path(PRIOR_FILE)
    try:
        prior = load_prior(path)
    except (OSError, ValueError, KeyError) as exc:  # np.load's errors for what is not a prior's npz
        raise ValueError(f"{path}: not a readable taste prior ({type(exc).__name__}: {exc}); fit it again "
                         "with `pam fit-prior`, or serve without it (--no-prior)") from None
    if prior is not None and prior.n_features != PAM_INPUT_DIM:
        raise ValueError(f"{path}: the taste prior was fit on {prior.n_features} features; the service's "
                         f"personal models take {PAM_INPUT_DIM}")
    return prior


def served(prior: TastePrior | None) -> TastePrior | None:
    """The prior the service serves: a stored one, unless its own cross-validation measured Prior-PAM
    losing to PAM on held-out training raters (`beats_pam` False); not measured (None) serves it."""
    return prior if prior is not None and getattr(prior, "beats_pam", None) is not False else None


def prior_summary(prior: TastePrior | None) -> dict | None:
    """What `info` says of the served prior (None: no prior, PAM and Active-PAM)."""
    if prior is None:
        return None
    return {"model": MODEL_PRIOR, "strategy": STRATEGY_POSTERIOR,
            "covariance": "full" if prior.rank is None else f"rank {prior.rank} + floor",
            "residual_C": prior.residual_C, "residual_min_ratings": prior.residual_min_ratings,
            "zero_ratings": "population offset" if prior.use_population_offset else "generic score"}


def prior_check(prior: TastePrior | None, stored: TastePrior | None = None) -> str:
    """The readiness report's line on the served prior (`stored`: the version's, served or not)."""
    if prior is None and stored is not None:
        return ("not served: the version's prior lost to PAM on held-out training raters; PAM and "
                "Active-PAM (eq. 6)")
    if prior is None:
        return "none: PAM and Active-PAM (eq. 6)"
    start = "population offset" if prior.use_population_offset else "generic score"
    return f"loaded: Prior-PAM and the posterior strategy; {start} before the first rating"


def empty_model(prior: TastePrior) -> PriorPAM:
    """A user's model before any rating: the prior's (population offset or generic score)."""
    return PriorPAM(prior).fit_empty(prior.n_features)


def zero_rating_scores(prior: TastePrior | None, x: np.ndarray, aes_score: np.ndarray) -> np.ndarray:
    """Scores of a user without ratings: generic, plus the population offset when the prior says it helps."""
    aes_score = np.asarray(aes_score, dtype=np.float64)
    if prior is None or not prior.use_population_offset:
        return aes_score
    return aes_score + prior.phi(x) @ prior.mu
