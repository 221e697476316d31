"""The catalog: one model version's feature rows (the store) and the backend that scores new photos.

A tenant's uploaded photos live beside the catalog's rows under keys of their own (`tenant_key`);
`Catalog.lookup` merges them in, catalog ids first, so an upload never shadows a catalog photo.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from personalize.features import pam_input
from personalize.prior import TastePrior
from serving.feature_table.store import FeatureRows, FeatureStore
from serving.online import prior_model
from serving.online.errors import InvalidInput, NotFound

# Uploaded photos live in their tenant's namespace: stored as TENANT_MARK tenant TENANT_MARK id.
# The mark is a control character, which no client id may hold, so no id can reach another
# tenant's photos or the catalog's.
TENANT_MARK = "\x1d"


def tenant_key(tenant: str, image_id: str) -> str:
    return f"{TENANT_MARK}{tenant}{TENANT_MARK}{image_id}"


def _client_id(key: str) -> str:
    return key.rsplit(TENANT_MARK, 1)[-1] if key.startswith(TENANT_MARK) else key


def _merge_rows(image_ids: Sequence[str], catalog_rows: FeatureRows, own: FeatureRows) -> FeatureRows:
    """Rows of `image_ids` in the order asked, from the catalog's rows and a tenant's own rows
    (each in the order asked, ids it does not hold skipped)."""
    own_ids = [_client_id(i) for i in own.image_ids]
    picks, pc, po = [], 0, 0
    for image_id in image_ids:
        if pc < len(catalog_rows.image_ids) and catalog_rows.image_ids[pc] == image_id:
            picks.append(pc)
            pc += 1
        elif po < len(own_ids) and own_ids[po] == image_id:
            picks.append(len(catalog_rows) + po)
            po += 1
    take = np.asarray(picks, dtype=np.intp)
    ids = catalog_rows.image_ids + own_ids
    return FeatureRows(
        image_ids=[ids[i] for i in picks],
        **{name: np.concatenate([getattr(catalog_rows, name), getattr(own, name)])[take]
           for name in ("aes_score", "aes_feat", "attributes", "content")},
        model_version=catalog_rows.model_version,
        failed={**catalog_rows.failed, **{_client_id(k): v for k, v in own.failed.items()}})


def _open_backend(spec: str):
    from serving.scoring import backends

    opener = getattr(backends, "open_backend", None)
    return opener(spec) if opener is not None else backends.OnnxRuntimeBackend(spec)


def pam_matrix(rows: FeatureRows) -> np.ndarray:
    """X = [attributes, content, aes_score] (21 columns) of feature rows."""
    return np.hstack([pam_input(rows.attributes, rows.content),
                      np.asarray(rows.aes_score, dtype=np.float64).reshape(-1, 1)])


class Catalog:
    """One model version: the feature store opened at it, the backend that scores new photos, and
    the version's taste prior (None when it has none or the service is told not to use it).

    The service swaps a Catalog as a whole (atomic version switch); a request takes one reference
    at its start and uses only that, so no reply mixes rows of two versions.
    """

    def __init__(self, feature_root: str, model: str | None = None, model_version: str | None = None,
                 use_prior: bool = True):
        self.backend = _open_backend(model) if model else None
        version = model_version or (self.backend.model_version if self.backend is not None else None)
        self.store = FeatureStore.open(feature_root, model_version=version)
        self.model_version = self.store.model_version
        if self.backend is not None and self.backend.model_version != self.model_version:
            raise ValueError(f"the model at {model} is version {self.backend.model_version!r} but the "
                             f"feature store serves {self.model_version!r}: versions never mix")
        # the version's taste prior (`pam fit-prior`), read with the version: a switch reads the new one's
        self.stored_prior = prior_model.load_served_prior(self.store) if use_prior else None
        self.prior: TastePrior | None = prior_model.served(self.stored_prior)

    def lookup(self, image_ids: Sequence[str], tenant: str | None = None) -> tuple[FeatureRows, list[str]]:
        """The store's lookup, plus the photos `tenant` uploaded (catalog ids first: an upload
        never shadows a catalog photo)."""
        found, missing = self.store.lookup(image_ids)
        if not missing or tenant is None:
            return found, missing
        own, still = self.store.lookup([tenant_key(tenant, i) for i in missing])
        if not len(own) and not own.failed:
            return found, missing
        return _merge_rows(image_ids, found, own), [_client_id(i) for i in still]

    def rows(self, image_ids: Sequence[str], tenant: str | None = None) -> FeatureRows:
        """Feature rows of ids in the order given; NotFound listing unknown ids, InvalidInput listing failed ones."""
        found, missing = self.lookup(image_ids, tenant)
        if missing:
            raise NotFound("unknown_images", f"{len(missing)} image ids are not in the feature store "
                           f"(model version {self.model_version})", unknown=missing[:100])
        if found.failed:
            raise InvalidInput("unscorable_images", f"{len(found.failed)} images could not be scored",
                               failed=dict(list(found.failed.items())[:100]))
        return found

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        self.store.close()
