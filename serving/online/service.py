"""The personalization service as a plain library: no Ray, no HTTP (serving.online.app adds both).

Split as LitServe splits a server: *setup* (`PersonalizationService(config)` opens the user store,
the catalog of one model version (serving.online.catalog) and photo scoring
(serving.online.photos)), *decode* (serving.online.api_models parses and validates requests),
*predict* (the methods below), *encode* (`encode_json`). What goes wrong is raised as the errors of
serving.online.errors, never as HTTP statuses.

Per-user state is a `UserModel`: the album's feature rows, the personal model fit on every stored
rating (Prior-PAM when the served version has a taste prior, PAM otherwise: serving.online.
prior_model), and (lazily) the rating strategy's state (the posterior strategy, or Active-PAM). It
carries the versions it was built from, so a caller can check it against the user store before each
reply (read-your-writes across replicas; `ensure_fresh`). The user store is the source of truth;
models are rebuilt from it, never pickled.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from personalize.active import ActivePAM
from personalize.features import SCORE_MAX, SCORE_MIN, W_AES_PAPER, pam_input, visual_vector
from personalize.pam import PAM, estimate_gain, rbf_offsets
from personalize.prior import PriorPAM, TastePrior
from personalize.strategy import PosteriorStrategy
from serving.online import prior_model, taste
from serving.online.api_models import (
    MAX_ALBUM_IDS,
    MAX_SCORE_IDS,
    MAX_SUGGESTIONS,
    USER_ID_PATTERN,
    RerankQuery,
    check_image_ids,
    check_request_id,
    check_user_id,
    parse_ratings,
)
from serving.online.catalog import Catalog, pam_matrix
from serving.online.errors import InvalidInput, Unauthorized, UnknownUser, VersionSwitching
from serving.online.photos import Photos
from serving.online.user_store import (
    DEFAULT_TENANT,
    UserSnapshot,
    UserStore,
    Versions,
    open_user_store,
)

try:  # orjson encodes a 1,000-candidate reply ~20x faster than json (floats dominate)
    import orjson

    def encode_json(obj) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
except ImportError:  # pragma: no cover - orjson is in the serve extra
    def encode_json(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":"), default=_json_default).encode()


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


SCORE_DECIMALS = 6


@dataclass
class ServiceConfig:
    """Everything a replica needs; plain JSON so it travels in a Serve config file."""

    feature_root: str
    model: str | None = None  # ONNX file (in-process) or backend spec; None: no scoring of new photos
    user_store: str = "sqlite:///pam-users.db"
    photos_root: str | None = None  # image_id -> file under it (thumbnails, scoring unseen ids)
    thumbnail_dir: str | None = None  # thumbnails of uploaded photos are kept here
    api_keys: dict[str, str] | None = None  # API key -> tenant; None: open, one tenant
    model_cache_size: int = 1024  # per replica (@serve.multiplexed max_num_models_per_replica)
    min_ratings_for_gain: int = 10
    w_aes: float = W_AES_PAPER
    pam_params: dict = field(default_factory=dict)
    # the served version's taste prior, when it has one (Prior-PAM and the posterior strategy);
    # False: PAM and Active-PAM whatever the version holds
    use_prior: bool = True
    # BLAS threads in this process. The service's matrices are small (1,000 x 20 by a few dozen
    # support vectors); a second BLAS thread only adds wake-up latency (20 ms instead of 1 ms per
    # re-rank on a busy 2-core machine). None leaves the process's setting alone.
    blas_threads: int | None = 1
    # overload: a replica whose event loop has been more than queue_delay_target_ms behind for a
    # whole queue_delay_interval_ms refuses new work with 503 until it catches up
    # (serving.online.loop_lag); a target of 0 turns this off (Admission's count limits still hold)
    queue_delay_target_ms: float = 50.0
    queue_delay_interval_ms: float = 100.0

    @classmethod
    def from_dict(cls, data: Mapping) -> ServiceConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown service settings {sorted(unknown)}; known: {sorted(known)}")
        config = cls(**dict(data))
        if config.api_keys is not None:
            for tenant in config.api_keys.values():
                check_user_id(tenant)  # tenant names obey the user-id rule (they key the store too)
        if not (config.queue_delay_target_ms >= 0 and config.queue_delay_interval_ms > 0):
            raise ValueError(f"queue_delay_target_ms must be >= 0 and queue_delay_interval_ms > 0, got "
                             f"{config.queue_delay_target_ms} and {config.queue_delay_interval_ms}")
        return config

    def to_dict(self) -> dict:
        return asdict(self)


def model_key(tenant: str, user_id: str) -> str:
    """The multiplexed model id of a user: the user id (prefixed by a non-default tenant)."""
    return user_id if tenant == DEFAULT_TENANT else f"{tenant}:{user_id}"


def split_model_key(key: str) -> tuple[str, str]:
    tenant, _, user_id = key.rpartition(":")
    return (tenant or DEFAULT_TENANT), user_id


def user_seed(tenant: str, user_id: str) -> int:
    """Active-PAM's seed for a user: stable across replicas and restarts."""
    return int.from_bytes(hashlib.sha256(f"{tenant}/{user_id}".encode()).digest()[:8], "little")


@dataclass(frozen=True)
class Fit:
    """What a reply needs of a user model, swapped in whole: a concurrent reader sees the versions
    together with the model fit on exactly those ratings, never new versions beside an old model.

    `pam` is the personal model (PAM, or PriorPAM under `prior`), None before the first rating."""

    versions: Versions
    model_version: str
    pam: PAM | PriorPAM | None
    n_ratings: int
    prior: TastePrior | None = None

    @property
    def model_name(self) -> str:
        """The personal model's name: prior-pam (the version has a taste prior) or pam."""
        return prior_model.MODEL_PRIOR if self.prior is not None else prior_model.MODEL_PAM

    @property
    def fallback(self) -> str | None:
        """Why a reply is not personalized, when it is not."""
        if self.pam is not None:
            return None
        if self.prior is not None and self.prior.use_population_offset:
            return ("population offset: the user has no ratings yet (the taste prior's mean offset, measured "
                    "to beat the generic score on held-out raters)")
        return "generic scores: the user has no ratings yet"

    def covers(self, versions: Versions, model_version: str) -> bool:
        """True when this fit includes every change up to `versions` (read-your-writes)."""
        mine = self.versions
        return (mine.generation == versions.generation and mine.ratings >= versions.ratings
                and mine.album >= versions.album and self.model_version == model_version)

    def predict(self, x: np.ndarray, aes_score: np.ndarray) -> np.ndarray:
        """The user's scores for rows x [n, 20] with generic scores [n] (without ratings: generic,
        or generic plus the population offset when the prior says it helps)."""
        pam = self.pam
        if pam is None:
            return prior_model.zero_rating_scores(self.prior, x, aes_score)
        if isinstance(pam, PriorPAM):
            return pam.predict(np.column_stack([x, aes_score]))
        return aes_score + rbf_offsets(x, pam.support_vectors_, pam.dual_coef_, pam.intercept_, pam.gamma_)

    def predict_std(self, x: np.ndarray, aes_score: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(scores, their predictive s.d.): the posterior s.d. under the taste prior; None without
        one (PAM has no predictive distribution)."""
        if self.prior is None:
            return self.predict(x, aes_score), None
        model = self.pam if self.pam is not None else prior_model.empty_model(self.prior)
        return model.predict(np.column_stack([x, aes_score]), return_std=True)


class UserModel:
    """One user's album rows, the personal model fit on all stored ratings (`fit`: Prior-PAM under
    the version's taste prior, else PAM), and (lazily) the rating strategy (`active`: the posterior
    strategy under a prior, else Active-PAM), both rebuilt from the stored ratings alone.

    `fit` is read without a lock (the re-rank path); everything else is read and changed under
    `lock`, and `fit` is assigned last, once the rest is consistent.
    """

    def __init__(self, tenant: str, user_id: str, snapshot: UserSnapshot, catalog: Catalog,
                 config: ServiceConfig):
        self.tenant = tenant
        self.user_id = user_id
        self.lock = threading.RLock()
        self._config = config
        self._build(snapshot, catalog)

    def _build(self, snapshot: UserSnapshot, catalog: Catalog) -> None:
        found, missing = catalog.lookup(snapshot.album, self.tenant) if snapshot.album else (None, [])
        if found is None:
            self.album_ids: list[str] = []
            self.X = np.zeros((0, 21))
            self.V = np.zeros((0, 177))
        else:
            self.album_ids = found.image_ids
            self.X = pam_matrix(found)
            self.V = visual_vector(found.aes_feat, found.aes_score, self._config.w_aes)
        self.album_unavailable = len(missing) + (len(found.failed) if found is not None else 0)
        self.album_index = {image_id: i for i, image_id in enumerate(self.album_ids)}
        self.scores: dict[str, float] = dict(zip(snapshot.rated_ids, snapshot.scores, strict=True))
        self.prior: TastePrior | None = catalog.prior  # the version's: a version switch rebuilds
        self._active: ActivePAM | PosteriorStrategy | None = None
        self._gain: tuple[int, float | None] | None = None
        self.fit = Fit(snapshot.versions, catalog.model_version, self._fit_pam(), len(self.scores), self.prior)

    def _rated_pairs(self) -> list[tuple[int, float]]:
        return [(self.album_index[i], s) for i, s in self.scores.items() if i in self.album_index]

    def _fit_pam(self) -> PAM | PriorPAM | None:
        pairs = self._rated_pairs()
        if not pairs:
            return None
        idx = np.fromiter((p[0] for p in pairs), np.int64, len(pairs))
        y = np.fromiter((p[1] for p in pairs), np.float64, len(pairs))
        return self._new_model().fit(self.X[idx], y)

    def _new_model(self) -> PAM | PriorPAM:
        return PriorPAM(self.prior) if self.prior is not None else PAM(**self._config.pam_params)

    @property
    def strategy_name(self) -> str:
        return prior_model.STRATEGY_POSTERIOR if self.prior is not None else prior_model.STRATEGY_ACTIVE_PAM

    @property
    def versions(self) -> Versions:
        return self.fit.versions

    @property
    def model_version(self) -> str:
        return self.fit.model_version

    @property
    def n_ratings(self) -> int:
        return self.fit.n_ratings

    @property
    def pam(self) -> PAM | PriorPAM | None:
        return self.fit.pam

    def covers(self, versions: Versions, model_version: str) -> bool:
        return self.fit.covers(versions, model_version)

    def refresh(self, snapshot: UserSnapshot, catalog: Catalog) -> None:
        """Catch up with a newer snapshot (call under `lock`): ratings-only changes incrementally,
        anything else (album, generation, model version) by a rebuild."""
        fit = self.fit
        same_base = (snapshot.versions.generation == fit.versions.generation
                     and snapshot.versions.album == fit.versions.album
                     and catalog.model_version == fit.model_version)
        if not same_base:
            self._build(snapshot, catalog)
            return
        changed = [(i, s) for i, s in zip(snapshot.rated_ids, snapshot.scores, strict=True)
                   if self.scores.get(i) != s]
        self.scores.update(changed)
        self._gain = None
        if self._active is not None:
            self._active.add_ratings((self.album_index[i], s) for i, s in changed if i in self.album_index)
            # the strategy's model is the one fit on the same ratings (the posterior strategy's is
            # the prior's own before any rating: the reply's model is None then)
            pam = self._active.model if self._active.rated_indices.size else None
        else:
            pam = self._fit_pam()
        self.fit = Fit(snapshot.versions, fit.model_version, pam, len(self.scores), self.prior)

    @property
    def active(self) -> ActivePAM | PosteriorStrategy:
        """The rating strategy's state, replayed from the stored ratings (the same suggestions on
        every replica and after a restart)."""
        if self._active is None:
            seed = user_seed(self.tenant, self.user_id)
            if self.prior is not None:
                self._active = PosteriorStrategy.rebuild(self.V, self.X, self._rated_pairs(), prior=self.prior,
                                                         seed=seed)
            else:
                state = ActivePAM(self.V, self.X, seed=seed, pam_params=self._config.pam_params)
                state.add_ratings(self._rated_pairs())
                self._active = state
        return self._active

    def predict(self, x: np.ndarray, aes_score: np.ndarray) -> np.ndarray:
        return self.fit.predict(x, aes_score)

    def gain(self) -> float | None:
        """Cross-validated rho(model) - rho(generic) over the ratings, of the user's personal model
        (Prior-PAM or PAM: `fit.model_name`); None below the minimum."""
        ratings_version = self.fit.versions.ratings
        if self._gain is None or self._gain[0] != ratings_version:
            pairs = self._rated_pairs()
            value = None
            if len(pairs) >= self._config.min_ratings_for_gain:
                idx = np.array([p[0] for p in pairs])
                y = np.array([p[1] for p in pairs])
                value = estimate_gain(self.X[idx], y, min_ratings=self._config.min_ratings_for_gain,
                                      make_model=self._new_model if self.prior is not None else None,
                                      **self._config.pam_params)
            self._gain = (ratings_version, value)
        return self._gain[1]


class LocalModelCache:
    """An LRU of UserModels for use outside Serve (Serve replicas use @serve.multiplexed)."""

    def __init__(self, service: PersonalizationService, capacity: int):
        self._service = service
        self._capacity = capacity
        self._models: OrderedDict[str, UserModel] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.loads = 0

    def get(self, key: str) -> UserModel:
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                self.hits += 1
                return model
        model = self._service.load_user_model(key)
        with self._lock:
            self.loads += 1
            self._models[key] = model
            while len(self._models) > self._capacity:
                self._models.popitem(last=False)
        return model

    async def aget(self, key: str) -> UserModel:
        import asyncio

        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                self.hits += 1
                return model
        return await asyncio.to_thread(self.get, key)

    def __len__(self) -> int:
        return len(self._models)


class PersonalizationService:
    """setup: open the stores and the backend. The methods are the API, minus HTTP."""

    def __init__(self, config: ServiceConfig | Mapping):
        self.config = config if isinstance(config, ServiceConfig) else ServiceConfig.from_dict(config)
        if self.config.blas_threads is not None:
            from personalize.blas import blas_threads

            self._blas_limit = blas_threads(self.config.blas_threads)
        self.users: UserStore = open_user_store(self.config.user_store)
        self.catalog = Catalog(self.config.feature_root, self.config.model, use_prior=self.config.use_prior)
        self._key_hashes = {hashlib.sha256(k.encode()).digest(): t for k, t in (self.config.api_keys or {}).items()}
        self._switch_lock = threading.Lock()
        self.photos = Photos(lambda: self.catalog, self.config.photos_root, self.config.thumbnail_dir)

    # ------------------------------------------------------------------ setup and versions
    def switch_model(self, model: str | None, model_version: str | None = None) -> str:
        """Open the new version completely, then swap it in with one assignment (atomic)."""
        with self._switch_lock:
            new = Catalog(self.config.feature_root, model, model_version, use_prior=self.config.use_prior)
            # requests in flight keep their reference to the old catalog until they reply
            self.catalog = new
            self.config.model = model
        return new.model_version

    def close(self) -> None:
        self.photos.close()
        self.catalog.close()
        self.users.close()

    # ------------------------------------------------------------------ auth and users
    @property
    def has_api_keys(self) -> bool:
        return bool(self._key_hashes)

    def tenant_for(self, api_key: str | None) -> str:
        if not self._key_hashes:
            return DEFAULT_TENANT
        if not api_key:
            raise Unauthorized("missing_api_key", "this service needs an API key: send the header "
                               "'X-API-Key: <key>' or 'Authorization: Bearer <key>'")
        digest = hashlib.sha256(api_key.encode()).digest()
        for known, tenant in self._key_hashes.items():
            if hmac.compare_digest(known, digest):
                return tenant
        raise Unauthorized("invalid_api_key", "the API key is not valid")

    def versions(self, tenant: str, user_id: str) -> Versions:
        try:
            return self.users.versions(user_id, tenant)
        except UnknownUser:
            raise UnknownUser(user_id, f"unknown user {user_id!r}: register an album first "
                              f"(POST /v1/users/{user_id}/album)") from None

    def load_user_model(self, key: str) -> UserModel:
        tenant, user_id = split_model_key(key)
        catalog = self.catalog
        snapshot = self.users.snapshot(user_id, tenant)
        return UserModel(tenant, user_id, snapshot, catalog, self.config)

    def ensure_fresh(self, model: UserModel, versions: Versions, catalog: Catalog) -> UserModel:
        """Bring a cached model up to `versions` (read from the store at the request's start)."""
        if model.covers(versions, catalog.model_version):
            return model
        with model.lock:
            if not model.covers(versions, catalog.model_version):
                model.refresh(self.users.snapshot(model.user_id, model.tenant), catalog)
        return model

    # ------------------------------------------------------------------ photos
    @property
    def photo_pool(self):
        return self.photos.pool

    def score_ids(self, image_ids: list[str], include_features: bool = False, tenant: str = DEFAULT_TENANT) -> dict:
        return self.photos.score_ids(check_image_ids(image_ids, "image_ids", MAX_SCORE_IDS), include_features, tenant)

    def score_uploads(self, uploads: Sequence[tuple[str, bytes, str | None]], include_features: bool = False,
                      tenant: str = DEFAULT_TENANT) -> dict:
        return self.photos.score_uploads(uploads, include_features, tenant)

    def thumbnail(self, image_id: str, size: int, tenant: str = DEFAULT_TENANT) -> tuple[bytes, bool]:
        return self.photos.thumbnail(image_id, size, tenant)

    # ------------------------------------------------------------------ users
    def create_user(self, tenant: str, user_id: str) -> bool:
        check_user_id(user_id)
        return self.users.create_user(user_id, tenant)

    def add_album(self, tenant: str, user_id: str, image_ids: list[str]) -> dict:
        """Register or extend the album; `image_ids` as a client sent them (checked here)."""
        return self.store_album(tenant, check_user_id(user_id), check_image_ids(image_ids, "image_ids", MAX_ALBUM_IDS))

    def store_album(self, tenant: str, user_id: str, image_ids: list[str]) -> dict:
        """add_album for ids already checked and normalized (a decoded request)."""
        scored = self.photos.known_or_scored(self.catalog, image_ids, tenant)
        ack = self.users.add_album(user_id, image_ids, tenant)
        return {"user_id": user_id, "added": ack.added, "album_size": ack.album_size, "scored_online": scored}

    def add_ratings(self, tenant: str, user_id: str, ratings: list, request_id: str | None) -> dict:
        """Store ratings given as a client sent them ([{image_id, score}], checked here)."""
        check_user_id(user_id)
        check_request_id(request_id)
        return self.store_ratings(tenant, user_id, parse_ratings(ratings), request_id)

    def store_ratings(self, tenant: str, user_id: str, pairs: list[tuple[str, float]],
                      request_id: str | None) -> dict:
        """add_ratings for (image_id, score) pairs already checked (a decoded request)."""
        self.versions(tenant, user_id)  # an unknown user is reported before the image checks
        self.photos.known_or_scored(self.catalog, [p[0] for p in pairs], tenant)
        ack = self.users.add_ratings(user_id, pairs, request_id=request_id, tenant=tenant)
        return {"user_id": user_id, "ratings_version": ack.ratings_version, "n_ratings": ack.n_ratings,
                "replayed": ack.replayed}

    def album(self, tenant: str, user_id: str) -> dict:
        """The album's ids in the order they were added, and the user's ratings oldest first."""
        check_user_id(user_id)
        snapshot = self.users.snapshot(user_id, tenant)
        return {"user_id": user_id, "image_ids": snapshot.album, "album_version": snapshot.versions.album,
                "ratings_version": snapshot.versions.ratings,
                "ratings": [{"image_id": i, "score": s} for i, s in zip(snapshot.rated_ids, snapshot.scores,
                                                                         strict=True)]}

    def delete_user(self, tenant: str, user_id: str) -> dict:
        check_user_id(user_id)
        if not self.users.delete_user(user_id, tenant):
            raise UnknownUser(user_id)
        return {"user_id": user_id, "deleted": True}

    # ------------------------------------------------------------------ predict (model in hand)
    def rerank(self, model: UserModel, query: RerankQuery, catalog: Catalog) -> dict:
        fit = model.fit  # one reference: versions, model and counts that belong together
        if fit.model_version != catalog.model_version:
            # another request refit this user on a version switched in after ours began: read
            # that version's rows, so the features match the model
            catalog = self.catalog
            if fit.model_version != catalog.model_version:
                raise VersionSwitching()
        if query.inline:
            ids, x, generic = query.ids, query.x, query.aes_score
        else:
            rows = catalog.rows(query.ids, model.tenant)
            ids = rows.image_ids
            x = pam_input(rows.attributes, rows.content)
            generic = rows.aes_score.astype(np.float64)
        std = None
        if "uncertainty" in query.include:
            scores, std = fit.predict_std(x, generic)
        else:
            scores = fit.predict(x, generic)
        if not np.isfinite(scores).all():
            raise InvalidInput("non_finite_score", "these features give a non-finite score; send features "
                               "as the service's photo scoring returns them")
        order = np.argsort(-scores, kind="stable")
        if query.top_k is not None:
            order = order[:query.top_k]
        ids_array = ids if isinstance(ids, list) else list(ids)
        reply = {
            "user_id": model.user_id,
            "personalized": fit.pam is not None,
            "fallback": fit.fallback,
            "model_version": catalog.model_version,
            "ratings_version": fit.versions.ratings,
            "n_ratings": fit.n_ratings,
            "image_ids": [ids_array[i] for i in order.tolist()],
            # shown on the rating scale: clipped to [1, 5], ordered by the unclipped value (clipping
            # first would tie the top photos). 6 decimals: 9 bytes a score instead of 18, a third
            # less reply to carry through the proxy
            "scores": np.round(np.clip(scores[order], SCORE_MIN, SCORE_MAX), SCORE_DECIMALS),
            "generic_scores": np.round(generic[order], SCORE_DECIMALS),
        }
        if "uncertainty" in query.include:
            # the predicted score's posterior s.d. (score units, unclipped); null without a prior
            reply["std"] = None if std is None else np.round(std[order], SCORE_DECIMALS)
        if "reasons" in query.include:
            reply["reasons"] = taste.rerank_reasons(model, fit, x[order], generic[order], catalog)
        return reply

    def next_photos(self, model: UserModel, n: int) -> dict:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SUGGESTIONS:
            raise InvalidInput("invalid_n", f"n must be an integer in [1, {MAX_SUGGESTIONS}]")
        with model.lock:
            if not model.album_ids:
                chosen, phase = [], "done"
            else:
                active = model.active
                chosen = active.suggest(n)  # a page of n: each pick conditioned on the ones before
                seeds = set(active.seed_indices.tolist())
                phase = "done" if not chosen else ("seed" if all(i in seeds for i in chosen) else "active")
            strategy = model.strategy_name
        return {"user_id": model.user_id, "image_ids": [model.album_ids[i] for i in chosen], "phase": phase,
                "strategy": strategy, "n_ratings": model.n_ratings, "album_size": len(model.album_ids),
                "ratings_version": model.versions.ratings, "model_version": model.model_version}

    def user_state(self, model: UserModel) -> dict:
        with model.lock:
            gain = model.gain()
            fit = model.fit
        return {"user_id": model.user_id, "tenant": model.tenant, "n_ratings": model.n_ratings,
                "album_size": len(model.album_ids), "album_unavailable": model.album_unavailable,
                "ratings_version": model.versions.ratings, "album_version": model.versions.album,
                "model_version": model.model_version, "personalized": model.pam is not None,
                "gain": {"value": gain, "model": fit.model_name, "min_ratings": self.config.min_ratings_for_gain,
                         "method": "5-fold cross-validated mean of rho(model) - rho(generic) over the user's "
                                   "ratings"}}

    # ------------------------------------------------------------------ operations
    def ready(self) -> dict:
        checks = {}
        try:
            self.users.ping()
            checks["user_store"] = "ok"
        except Exception as exc:  # readiness reports, never raises
            checks["user_store"] = f"unavailable: {type(exc).__name__}: {exc}"
        catalog = self.catalog
        checks["feature_store"] = f"ok: {catalog.model_version}, {len(catalog.store)} rows"
        checks["backend"] = (f"ok: {type(catalog.backend).__name__}" if catalog.backend is not None
                             else "none (scoring new photos disabled)")
        checks["prior"] = prior_model.prior_check(catalog.prior, catalog.stored_prior)
        return {"ready": checks["user_store"] == "ok", "checks": checks}

    def info(self) -> dict:
        catalog = self.catalog
        return {"model_version": catalog.model_version, "feature_rows": len(catalog.store),
                "backend": type(catalog.backend).__name__ if catalog.backend is not None else None,
                "user_store": type(self.users).__name__, "photos_root": bool(self.photos.photos_root),
                "auth": "api-key" if self._key_hashes else "open", "user_id_pattern": USER_ID_PATTERN,
                "prior": prior_model.prior_summary(catalog.prior)}
