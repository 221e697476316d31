"""A simulated rater panel in the shape of FLICKR-AES (UAD, section 3), for protocols without images.

Every image has properties: 10 AADB attributes in [-1, 1], a 10-way content softmax, a hidden
quality h that only the pixels show, and hidden style factors s (4-d) that only the pixels show.
Ratings come from latent scores rounded to 1-5 integers:

    rating_ij = clip(round(q_i + b_j + taste_j(i) + noise_ij), 1, 5)
    q_i       = MEAN + SIGMA_Q * (sqrt(X_SHARE) * f(x_i) + sqrt(1 - X_SHARE) * h_i)   shared taste
    taste_j   = SIGMA_T * (sqrt(1 - HIDDEN_TASTE) * (u_j . a_i + z_j . c_i)           personal taste
                           + sqrt(HIDDEN_TASTE) * y_j . s_i)

f(x) is a fixed linear function of x = [attributes, content] standardized over images, so a part of
the shared taste is visible to PAM's 20-d x and the rest (h) is not; the generic score
g_i = q_i + N(0, SIGMA_E) plays the generic network's prediction, which sees h through the pixels
but errs. aes_feat (176-d, non-negative like pooled activations) is a fixed random non-linear map
of [attributes, content, h, s] plus noise, so Active-PAM's visual vector knows what the pixels
know. Worker biases b_j, per-rating noise, 5 planted random labellers (uniform 1-5 on everything),
and ground-truth check images (true score 1 or 5, 3 per 20-image task) complete section 3's setup.

Sizes as the paper: 40,000 images; 173 training workers who rate the training images 5 times each
(activity heavy-tailed, as on AMT); 37 test workers who rate 105-171 images each from 4,737 test
images no training worker sees (about 1.07 ratings per test image).

Calibration (frozen; see CALIBRATION and tests/personalize/test_simulate.py): DEVIATION (the
spread of individual ratings around the shared taste) was solved so that the WP-weighted
per-image standard deviation averages 0.79 (Table 1), and SIGMA_E so that the generic score's
Spearman rho against the weighted means IM_j is 0.70 (the paper's 0.702), both measured on
training images (5 raters each). The split of DEVIATION into bias / taste / noise, X_SHARE,
HIDDEN_TASTE, MEAN and SIGMA_Q are a-priori choices (docs/personalize.md): the paper does not
pin them, and they were fixed before any method was compared on the panel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from personalize.data import FeatureMatrix, FlickrAES, Ratings, flickr_aes_from_ratings
from personalize.features import AES_FEAT_DIM, N_ATTRIBUTES, N_CONTENT

# --- frozen defaults (changing any of these changes every simulated result) -------------------
MEAN = 3.0  # centre of the 1-5 scale
SIGMA_Q = 0.65  # spread of the shared taste across images
X_SHARE = 0.4  # fraction of the shared taste's variance that x = [attributes, content] explains
DEVIATION = 0.82  # s.d. of an individual rating's latent deviation from q (calibrated: Table 1)
BIAS_SHARE, TASTE_SHARE, NOISE_SHARE = 0.2, 0.3, 0.5  # split of DEVIATION^2
HIDDEN_TASTE = 0.3  # fraction of personal taste variance on factors x cannot see
SIGMA_E = 0.44  # generic score's error s.d. (calibrated: rho(g, IM_j) = 0.70)
N_STYLE = 4  # hidden style factors
FEAT_SCALE = 12.0  # aes_feat magnitude: 0.001 * aes_feat distances ~ aes_score distances
CHECK_PER_TASK, TASK_SIZE = 3, 20
N_CHECK_IMAGES = 100
RANDOM_LABELLER_RATINGS = 300

# Statistics the defaults were calibrated to (paper, section 3 and 5.1) and what they give.
CALIBRATION = {"weighted_std_mean": 0.79, "generic_rho_vs_im": 0.702}


@dataclass(frozen=True)
class PanelConfig:
    n_images: int = 40_000
    n_train_workers: int = 173
    n_test_workers: int = 37
    n_test_images: int = 4_737
    test_ratings_range: tuple[int, int] = (105, 171)
    raters_per_train_image: int = 5
    n_random_labellers: int = 5
    activity_sigma: float = 1.0  # log-normal spread of training workers' activity
    seed: int = 0

    def scaled(self, factor: float) -> PanelConfig:
        """A smaller panel with the same per-image and per-worker structure (for tests)."""
        return PanelConfig(n_images=round(self.n_images * factor), n_train_workers=max(10, int(self.n_train_workers * factor)),
                           n_test_workers=max(4, int(self.n_test_workers * factor)),
                           n_test_images=max(1, round(self.n_test_images * factor)),
                           test_ratings_range=self.test_ratings_range,
                           raters_per_train_image=self.raters_per_train_image,
                           n_random_labellers=self.n_random_labellers, activity_sigma=self.activity_sigma,
                           seed=self.seed)


@dataclass(frozen=True)
class Properties:
    """Per-image properties: the observable feature contract plus the hidden truth."""

    image_ids: np.ndarray
    attributes: np.ndarray  # [N, 10] in [-1, 1]
    content: np.ndarray  # [N, 10] softmax
    hidden_quality: np.ndarray  # h [N]
    hidden_style: np.ndarray  # s [N, N_STYLE]
    shared_quality: np.ndarray  # q [N] (latent, 1-5 scale)
    aes_score: np.ndarray  # g [N]: the simulated generic network's score
    aes_feat: np.ndarray  # [N, 176]
    split: np.ndarray  # "train" / "test"

    def features(self) -> FeatureMatrix:
        return FeatureMatrix(self.image_ids, self.aes_score, self.aes_feat, self.attributes, self.content)


@dataclass
class Raters:
    """A rater model: each worker's bias, how a worker rates an image, and what is written to
    workers.json (the hidden truth)."""

    bias: np.ndarray  # [n_workers]
    noise_sd: float  # s.d. of a rating's noise (check images get it too)
    rate: object  # rate(worker_idx, image_idx) -> rounded, clipped 1-5 scores
    truth: dict  # worker index -> JSON-safe hidden parameters
    taste: object = None  # taste(worker_idx, image_idx) -> the personal taste term (the oracle's)


@dataclass
class Panel:
    config: PanelConfig
    properties: Properties
    ratings: Ratings  # every rating, check images and random labellers included
    test_workers: list[str]
    train_workers: list[str]
    random_labellers: list[str]
    check_truth: dict[str, float]
    workers: dict[str, dict] = field(default_factory=dict)  # id -> role, bias, taste weights
    raters: Raters | None = None  # the rater model (in memory only)
    worker_index: dict[str, int] = field(default_factory=dict)  # id -> index in the rater model

    def dataset(self) -> FlickrAES:
        """The cleaned data set, exactly as load_flickr_aes reads the written files."""
        return flickr_aes_from_ratings(self.ratings, self.test_workers, self.check_truth, source="simulated panel")

    def true_taste(self, worker: str, image_ids) -> np.ndarray:
        """The worker's personal taste term on these images (no bias, no noise): what an oracle
        that knows the worker's taste adds to the generic score."""
        rows = self.properties.features().rows(image_ids)
        w = np.full(rows.size, self.worker_index[worker], dtype=np.int64)
        return self.raters.taste(w, rows)


def _attributes(rng, n) -> np.ndarray:
    # a common "looks good" factor makes attributes correlate, as AADB's do
    common = rng.normal(size=(n, 1))
    loads = np.linspace(0.6, 0.2, N_ATTRIBUTES)[None, :]
    z = loads * common + np.sqrt(1 - loads**2) * rng.normal(size=(n, N_ATTRIBUTES))
    return np.tanh(0.8 * z)


def _content(rng, n) -> np.ndarray:
    prevalence = rng.dirichlet(np.full(N_CONTENT, 3.0))
    cluster = rng.choice(N_CONTENT, size=n, p=prevalence)
    logits = rng.normal(size=(n, N_CONTENT))
    logits[np.arange(n), cluster] += 3.0
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _standardize(v: np.ndarray) -> np.ndarray:
    return (v - v.mean()) / v.std()


def simulate_properties(n_images: int, rng: np.random.Generator, *, sigma_e: float = SIGMA_E) -> Properties:
    attributes = _attributes(rng, n_images)
    content = _content(rng, n_images)
    hidden = rng.normal(size=n_images)
    style = rng.normal(size=(n_images, N_STYLE))
    beta = rng.uniform(0.3, 1.0, N_ATTRIBUTES)  # every attribute helps the shared taste a little
    gamma = rng.normal(0, 0.7, N_CONTENT)  # some content is liked more than other
    visible = _standardize(attributes @ beta + content @ gamma)
    q = MEAN + SIGMA_Q * (np.sqrt(X_SHARE) * visible + np.sqrt(1 - X_SHARE) * hidden)
    g = np.clip(q + rng.normal(0, sigma_e, n_images), 1.0, 5.0)
    inputs = np.hstack([attributes, content, hidden[:, None], style, rng.normal(size=(n_images, 8))])
    W = rng.normal(0, 1 / np.sqrt(inputs.shape[1]), (inputs.shape[1], AES_FEAT_DIM))
    pre = inputs @ W + rng.normal(0, 0.3, (n_images, AES_FEAT_DIM))
    aes_feat = FEAT_SCALE * np.logaddexp(0.0, pre)  # softplus: non-negative like pooled ReLUs
    ids = np.asarray([f"img/{i:06d}.jpg" for i in range(n_images)])
    return Properties(ids, attributes, content, hidden, style, q, g, aes_feat.astype(np.float32),
                      np.full(n_images, "train", dtype=object))


def properties_from_features(base: FeatureMatrix, rng: np.random.Generator, *,
                             sigma_e: float = SIGMA_E) -> Properties:
    """Properties from a real feature table (e.g. photos' pixel attributes + ImageNet content):
    attributes, content and aes_feat are the table's; the hidden quality h is the part of the
    table's generic score that x does not explain (least-squares residual, standardized), the
    hidden style s the first N_STYLE principal components of aes_feat; the simulated generic
    score is then q + noise as for generated properties."""
    n = base.image_ids.shape[0]
    x = np.hstack([base.attributes, base.content, np.ones((n, 1))]).astype(np.float64)
    score = base.aes_score.astype(np.float64)
    coef, *_ = np.linalg.lstsq(x, score, rcond=None)
    resid = score - x @ coef
    hidden = _standardize(resid) if resid.std() > 0 else rng.normal(size=n)
    feat = base.aes_feat.astype(np.float64)
    feat = feat - feat.mean(0)
    _, _, vt = np.linalg.svd(feat, full_matrices=False)
    style = feat @ vt[:N_STYLE].T
    style = (style - style.mean(0)) / np.where(style.std(0) > 0, style.std(0), 1.0)
    beta = rng.uniform(0.3, 1.0, N_ATTRIBUTES)
    gamma = rng.normal(0, 0.7, N_CONTENT)
    raw = base.attributes @ beta + base.content @ gamma
    visible = _standardize(raw) if raw.std() > 0 else np.zeros(n)
    q = MEAN + SIGMA_Q * (np.sqrt(X_SHARE) * visible + np.sqrt(1 - X_SHARE) * hidden)
    g = np.clip(q + rng.normal(0, sigma_e, n), 1.0, 5.0)
    return Properties(base.image_ids.astype(str), base.attributes.astype(np.float64), base.content.astype(np.float64),
                      hidden, style, q, g, base.aes_feat.astype(np.float32), np.full(n, "train", dtype=object))


def _assign_train(rng, n_images: int, n_workers: int, per_image: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(image index, worker index) pairs: each image rated by `per_image` distinct workers,
    workers chosen in proportion to a heavy-tailed activity (Gumbel top-k)."""
    log_activity = rng.normal(0, sigma, n_workers)
    images, workers = [], []
    for start in range(0, n_images, 4096):
        stop = min(start + 4096, n_images)
        keys = log_activity[None, :] + rng.gumbel(size=(stop - start, n_workers))
        top = np.argpartition(-keys, per_image - 1, axis=1)[:, :per_image]
        images.append(np.repeat(np.arange(start, stop), per_image))
        workers.append(top.reshape(-1))
    return np.concatenate(images), np.concatenate(workers)


def _assign_test(rng, pool: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Each test worker's images: the pool is covered once, the rest drawn without repeats."""
    order = rng.permutation(pool)
    shares = np.floor(counts * min(1.0, pool.size / counts.sum())).astype(int)
    shares[: pool.size - shares.sum()] += 1 if shares.sum() < pool.size else 0
    bounds = np.r_[0, np.cumsum(shares)]
    assigned = []
    for j, n in enumerate(counts):
        base = order[bounds[j]:bounds[j + 1]][:n]
        rest = np.setdiff1d(pool, base, assume_unique=True)
        extra = rng.choice(rest, size=max(0, n - base.size), replace=False)
        assigned.append(np.concatenate([base, extra]))
    return assigned


def _default_raters(rng, props: Properties, n_workers: int, n_tw: int, n_te: int, deviation: float) -> Raters:
    sd_b, sd_t, sd_n = (deviation * np.sqrt(s) for s in (BIAS_SHARE, TASTE_SHARE, NOISE_SHARE))
    bias = rng.normal(0, sd_b, n_workers)
    # taste weights, normalised so each part of taste has unit variance over images
    u = rng.normal(size=(n_workers, N_ATTRIBUTES)) / np.sqrt(N_ATTRIBUTES * props.attributes.var(0).mean())
    z = rng.normal(size=(n_workers, N_CONTENT)) / np.sqrt(N_CONTENT * props.content.var(0).mean())
    y = rng.normal(size=(n_workers, N_STYLE)) / np.sqrt(N_STYLE)
    mix = np.sqrt(1 - HIDDEN_TASTE) / np.sqrt(2)
    content_mean = props.content.mean(0)

    def taste(worker: np.ndarray, image: np.ndarray) -> np.ndarray:
        return sd_t * (mix * (np.einsum("ij,ij->i", u[worker], props.attributes[image])
                              + np.einsum("ij,ij->i", z[worker], props.content[image] - content_mean))
                       + np.sqrt(HIDDEN_TASTE) * np.einsum("ij,ij->i", y[worker], props.hidden_style[image]))

    def rate(worker: np.ndarray, image: np.ndarray) -> np.ndarray:
        latent = props.shared_quality[image] + bias[worker] + taste(worker, image) + rng.normal(0, sd_n, image.size)
        return np.clip(np.rint(latent), 1, 5)

    truth = {w: {"bias": float(bias[w]), "attribute_taste": u[w].round(6).tolist(),
                 "content_taste": z[w].round(6).tolist(), "style_taste": y[w].round(6).tolist()}
             for w in range(n_workers)}
    return Raters(bias, sd_n, rate, truth, taste)


def simulate_panel(config: PanelConfig = PanelConfig(), *, base: FeatureMatrix | None = None,
                   deviation: float = DEVIATION, sigma_e: float = SIGMA_E) -> Panel:
    """Build the panel (seeded by config.seed). `base`: take image properties from a real
    feature table (config.n_images is then its row count). `deviation` and `sigma_e` are
    arguments only for `calibrate`."""
    rng = np.random.default_rng(config.seed)
    if base is None:
        props = simulate_properties(config.n_images, rng, sigma_e=sigma_e)
    else:
        props = properties_from_features(base, rng, sigma_e=sigma_e)
        if props.image_ids.shape[0] != config.n_images:
            raise ValueError(f"config.n_images={config.n_images} but the table has {props.image_ids.shape[0]} rows")
    return assemble_panel(config, rng, props,
                          lambda n_workers, n_tw, n_te: _default_raters(rng, props, n_workers, n_tw, n_te, deviation))


def assemble_panel(config: PanelConfig, rng: np.random.Generator, props: Properties, make_raters) -> Panel:
    """Section 3's set-up around a rater model: worker ids, the test split, who rates what,
    random labellers and check images. make_raters(n_workers, n_train, n_test) -> Raters; workers
    are indexed training first, then test, then random labellers."""
    n_tw, n_te, n_rand = config.n_train_workers, config.n_test_workers, config.n_random_labellers
    n_workers = n_tw + n_te + n_rand
    ids = np.asarray([f"W{k:04d}" for k in rng.permutation(n_workers) + 1])
    train_ids, test_ids, rand_ids = ids[:n_tw], ids[n_tw:n_tw + n_te], ids[n_tw + n_te:]
    raters = make_raters(n_workers, n_tw, n_te)

    # test split: test images are rated by test workers only
    split = np.full(config.n_images, "train", dtype=object)
    test_pool = rng.choice(config.n_images, size=config.n_test_images, replace=False)
    split[test_pool] = "test"
    lo, hi = config.test_ratings_range
    counts = np.minimum(rng.integers(lo, hi + 1, n_te), config.n_test_images)  # tiny panels only
    test_images = _assign_test(rng, test_pool, counts)
    te_img = np.concatenate(test_images)
    te_wrk = np.repeat(np.arange(n_tw, n_tw + n_te), [t.size for t in test_images])

    train_pool = np.flatnonzero(split == "train")
    tr_local, tr_wrk = _assign_train(rng, train_pool.size, n_tw, config.raters_per_train_image,
                                     config.activity_sigma)
    tr_img = train_pool[tr_local]

    worker_idx = np.concatenate([tr_wrk, te_wrk])
    image_idx = np.concatenate([tr_img, te_img])
    scores = raters.rate(worker_idx, image_idx)
    rating_workers = [ids[worker_idx]]
    rating_images = [props.image_ids[image_idx]]
    rating_scores = [scores]

    # random labellers: uniform 1-5 on training images (their own extra ratings)
    for wid in rand_ids:
        imgs = rng.choice(train_pool, size=min(RANDOM_LABELLER_RATINGS, train_pool.size), replace=False)
        rating_workers.append(np.full(imgs.size, wid))
        rating_images.append(props.image_ids[imgs])
        rating_scores.append(rng.integers(1, 6, imgs.size).astype(np.float64))

    # check images: 3 per 20-image task, true score 1 or 5; honest workers rate them like any image
    check_ids = np.asarray([f"check/{i:03d}.jpg" for i in range(N_CHECK_IMAGES)])
    check_ts = np.where(np.arange(N_CHECK_IMAGES) % 2 == 0, 1.0, 5.0)
    truth = dict(zip(check_ids.tolist(), check_ts.tolist(), strict=True))
    n_rated = np.bincount(worker_idx, minlength=n_workers)
    n_rated[n_tw + n_te:] = RANDOM_LABELLER_RATINGS
    for w in range(n_workers):
        n_check = min(N_CHECK_IMAGES, CHECK_PER_TASK * int(np.ceil(n_rated[w] / TASK_SIZE)))
        if n_check == 0:
            continue
        pick = rng.choice(N_CHECK_IMAGES, size=n_check, replace=False)
        if w >= n_tw + n_te:
            s = rng.integers(1, 6, n_check).astype(np.float64)
        else:
            s = np.clip(np.rint(check_ts[pick] + raters.bias[w] + rng.normal(0, raters.noise_sd, n_check)), 1, 5)
        rating_workers.append(np.full(n_check, ids[w]))
        rating_images.append(check_ids[pick])
        rating_scores.append(s)

    ratings = Ratings(np.concatenate(rating_workers), np.concatenate(rating_images),
                      np.concatenate(rating_scores))
    props = Properties(**{**props.__dict__, "split": split})
    roles = ["train"] * n_tw + ["test"] * n_te + ["random"] * n_rand
    workers = {str(ids[w]): {"role": roles[w], **raters.truth[w]} for w in range(n_workers)}
    return Panel(config, props, ratings, sorted(test_ids.tolist()), sorted(train_ids.tolist()),
                 sorted(rand_ids.tolist()), truth, workers, raters, {str(w): i for i, w in enumerate(ids.tolist())})


def panel_statistics(panel: Panel) -> dict:
    """The statistics the defaults are calibrated to, plus descriptive ones, on the cleaned data."""
    from personalize.metrics import spearman_rho

    data = panel.dataset()
    images, im, std, n = data.weighted_means(data.train_workers)
    full = n >= 2
    fm = panel.properties.features()
    g = fm.aes_score[fm.rows(images[full])]
    bins = {}
    for lo, hi in ((1, 2), (2, 3), (3, 4), (4, 5)):
        sel = full & (im >= lo) & (im < hi if hi < 5 else im <= hi)
        bins[f"({lo},{hi})"] = float(np.nanmean(std[sel])) if sel.any() else float("nan")
    per_test = [int((data.ratings.workers == w).sum()) for w in sorted(data.test_workers)]
    test_img = data.ratings.images[np.isin(data.ratings.workers, np.asarray(sorted(data.test_workers)))]
    return {
        "weighted_std_mean": float(np.nanmean(std[full])),
        "weighted_std_sd": float(np.nanstd(std[full])),
        "weighted_std_by_range": bins,
        "generic_rho_vs_im": spearman_rho(g, im[full]),
        "im_mean": float(im[full].mean()),
        "im_sd": float(im[full].std()),
        "n_train_images": int(full.sum()),
        "n_test_images": int(np.unique(test_img).size),
        "n_test_ratings": int(test_img.size),
        "test_ratings_per_worker": [min(per_test), float(np.mean(per_test)), max(per_test)],
        "excluded_workers": sorted(data.excluded_workers),
        "planted_random_labellers": panel.random_labellers,
        "mean_wp_retained": float(np.mean([p for w, p in data.worker_performance.items()
                                           if w not in data.excluded_workers])),
    }


def bisect_calibration(simulate, targets: dict = CALIBRATION, iterations: int = 12) -> tuple[float, float]:
    """(deviation, sigma_e) for the targets by bisection: deviation first (the WP-weighted per-image
    s.d.), then sigma_e at that deviation (the generic score's rho vs IM_j). simulate(deviation=,
    sigma_e=) -> Panel builds the panel being calibrated (sigma_e omitted: its own default)."""
    lo, hi = 0.3, 2.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        stats = panel_statistics(simulate(deviation=mid))
        lo, hi = (mid, hi) if stats["weighted_std_mean"] < targets["weighted_std_mean"] else (lo, mid)
    deviation = (lo + hi) / 2
    lo, hi = 0.0, 2.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        stats = panel_statistics(simulate(deviation=deviation, sigma_e=mid))
        lo, hi = (mid, hi) if stats["generic_rho_vs_im"] > targets["generic_rho_vs_im"] else (lo, mid)
    return deviation, (lo + hi) / 2


def calibrate(config: PanelConfig, targets: dict = CALIBRATION, iterations: int = 12) -> tuple[float, float]:
    """Solve (deviation, sigma_e) for the targets by bisection; run once, results frozen above."""
    return bisect_calibration(lambda **kw: simulate_panel(config, **kw), targets, iterations)
