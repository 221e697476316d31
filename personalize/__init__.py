"""personalize: PAM, Active-PAM, baselines, metrics, protocols and the rater-panel simulator.

numpy / scipy / scikit-learn only (no torch, ray, onnxruntime, Pillow, pyarrow). Public API,
stable names (later versions add, never rename):

PAM(nu=0.5, C=1.0, gamma=0.1, tol=1e-3)  -- personalize.pam
    scikit-learn regressor (eq. 3). fit(X, y): X = [x, aes_score], x = the 20 feature-contract
    columns (10 attributes then 10 content probabilities; any width works, the LAST column is
    always the generic score), y = the user's 1-5 scores. predict(X) = aes_score + offset;
    predict_offsets(X) the offsets alone. One rating, or all offsets equal, gives a constant
    offset. to_dict() -> JSON-safe dict of lists/floats; PAM.from_dict(d) predicts identically
    (bit for bit); save_npz / load_npz the same with numpy arrays (allow_pickle=False).

ActivePAM(V, X, seed=0, n_seed=10, seed_indices=None, pam_params=None)  -- personalize.active
    Algorithm 1 for one album. V [N, 177] visual vectors (personalize.features.visual_vector),
    X [N, 21] as for PAM. ActivePAM.from_features(aes_feat, aes_score, attributes, content,
    seed=...) builds both. add_rating(index, score) / add_ratings(pairs): any rating joins R,
    re-rating replaces the score. suggest(n=1) -> album indices never rated: the seeded random
    seed set first (in order), then greedily by eq. 6, each pick counted as rated (batch mode). ActivePAM.rebuild(V, X,
    pairs, seed=...) replays stored ratings cheaply into the same state. .model (PAM or None),
    .predict() (scores for the whole album), .rated_indices, .rated_scores, .ratings(),
    .weights() (eq. 5), .objective() (eq. 6).

spearman_rho(a, b), correlation_improvement(y_true, y_personal, y_generic)  -- personalize.metrics
    rho with average ranks for ties (NaN when a side is constant).

estimate_gain(X, y, cv=5, min_ratings=10, random_state=0, **pam_params) -> float | None
    cross-validated mean of rho(PAM) - rho(generic) over one user's ratings; None when too few.

With a population taste prior (personalize.prior, personalize.strategy):
    load_prior(path) -> TastePrior | None   the prior `pam fit-prior` stored beside a feature
        version (_taste_prior.npz: PRIOR_FILE)
    PriorPAM(prior) -- scikit-learn regressor, PAM's X: fit(X, y) from a user's ratings;
        fit_empty(20) for a user with none (population offset or generic score, as the prior
        decided); predict(X) or predict(X, return_std=True) -> (scores, posterior s.d.);
        PriorPAM(None) is exactly PAM.
    PosteriorStrategy(V, X, prior=...) -- the rating strategy, with ActivePAM's interface
        (add_rating(s), suggest(n), model, predict(return_std=...), rebuild(V, X, pairs, prior=...)).
    fit_prior(raters, X_images) -> TastePrior (EM + cross-validated choice); TastePrior.save/load.

Data (personalize.data): load_flickr_aes(csv, test_workers=None, check_images=None) -> FlickrAES
    (WP of eq. 1, random labellers excluded, IM_j weighted means); load_aadb_raters(csv) ->
    Ratings; load_personal_albums(root) -> {owner: (image_ids, scores)}; FeatureMatrix (image ids
    -> X, V). Bad files raise DataError("<file>:<line>: <problem>").

Also (imported on demand, not re-exported here): personalize.baselines (DirectSVR, train_fpmf),
personalize.selection (Random/Greedy/MCAL/QBC selectors with ActivePAM's interface),
personalize.protocols (table4, active_curves, taste_experiment, tune_pam),
personalize.simulate (PanelConfig, simulate_panel, panel_statistics: the frozen rater panel).
Design notes, the panel's assumptions and measured results: docs/personalize.md.
"""

from importlib import import_module

# the public names load on first use (PEP 562): `import personalize.features`, which the batch
# job's Ray workers do, must not pay for scikit-learn (~1.3 s per worker process)
_HOME = {
    "ActivePAM": "personalize.active", "eq5_weights": "personalize.active",
    "DataError": "personalize.data", "FeatureMatrix": "personalize.data", "FlickrAES": "personalize.data",
    "Ratings": "personalize.data", "load_aadb_raters": "personalize.data", "load_flickr_aes": "personalize.data",
    "load_personal_albums": "personalize.data",
    "correlation_improvement": "personalize.metrics", "spearman_rho": "personalize.metrics",
    "PAM": "personalize.pam", "estimate_gain": "personalize.pam",
    "PriorPAM": "personalize.prior", "TastePrior": "personalize.prior", "fit_prior": "personalize.prior",
    "load_prior": "personalize.prior", "PRIOR_FILE": "personalize.prior",
    "PosteriorStrategy": "personalize.strategy",
}


def __getattr__(name: str):
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'personalize' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


__all__ = sorted(_HOME)  # the public names are the lazily loaded ones
