"""A user's taste (GET /v1/users/{user_id}/taste) and the reasons re-rank replies carry on request.

The numbers come from personalize.explain over the user's personal model and album; content
classes are named from the served model version's feature-store manifest (`content_names`, which
`pam features` copies from the model's ONNX metadata), numbered where a version has none. A taste
is computed once per fit (a fit is replaced whole on every change of ratings, album or version)
and kept on the user model.
"""

from __future__ import annotations

import json
import threading

import numpy as np

from personalize import explain
from personalize.features import N_CONTENT

CONTENT_NAMES_KEY = "content_names"  # manifest / ONNX metadata: JSON list of N_CONTENT lists of names
_names: dict[tuple[str, str], list[list[str]] | None] = {}
_names_lock = threading.Lock()


def parse_content_names(value) -> list[list[str]] | None:
    """A stored names value (JSON text or list) -> N_CONTENT lists of strings, or None if malformed."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if not isinstance(value, list) or len(value) != N_CONTENT:
        return None
    out = []
    for names in value:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return None
        out.append([n for n in names if n.strip()][:3])
    return out


def content_names(catalog) -> list[list[str]] | None:
    """The served version's content class names (manifest first, then the backend's metadata)."""
    store = catalog.store
    key = (str(store.root), catalog.model_version)
    with _names_lock:
        if key in _names:
            return _names[key]
    names = None
    try:
        manifest = store.table.version(catalog.model_version).manifest()
        names = parse_content_names(manifest.get(CONTENT_NAMES_KEY))
    except (OSError, ValueError):
        names = None
    if names is None and catalog.backend is not None:
        names = parse_content_names(getattr(catalog.backend, "content_names", None))
    with _names_lock:
        _names[key] = names
    return names


def _taste_of(model) -> tuple[object, explain.Taste]:
    """(fit, its Taste): computed once per fit and kept on the user model."""
    cached = getattr(model, "_taste", None)
    fit = model.fit
    if cached is not None and cached[0] is fit:
        return cached
    with model.lock:
        fit = model.fit
        pairs = model._rated_pairs()
        X = model.X
    idx = np.fromiter((p[0] for p in pairs), np.int64, len(pairs))
    y = np.fromiter((p[1] for p in pairs), np.float64, len(pairs))
    if fit.pam is None or not len(idx):
        result = explain.taste(None, X, X[:0], y[:0])
    else:
        result = explain.taste(fit.pam, X, X[idx], y)
    model._taste = (fit, result)
    return fit, result


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def user_taste(model, catalog) -> dict:
    """The taste endpoint's reply for a fresh user model."""
    fit, result = _taste_of(model)
    body = result.as_dict(content_names(catalog))
    for block in ("attributes", "content"):
        for row in body[block]:
            row["std"] = _finite(row["std"])
    return {"user_id": model.user_id, "n_ratings": fit.n_ratings, "model_version": fit.model_version,
            "attributes": body["attributes"], "content": body["content"]}


def rerank_reasons(model, fit, x: np.ndarray, aes_score: np.ndarray, catalog) -> dict:
    """The `reasons` field of a re-rank reply for candidates x [n, 20] (reply order)."""
    names = explain.feature_names(content_names(catalog))
    legend = dict(zip(explain.FEATURE_KEYS, names, strict=True))
    if fit.pam is None:
        return {"keys": [[] for _ in range(len(x))], "contributions": [[] for _ in range(len(x))], "names": legend}
    cached_fit, result = _taste_of(model)
    if cached_fit is not fit:  # refit between the reply's prediction and now: explain the reply's model
        result = explain.taste(fit.pam, model.X, model.X[:0], np.zeros(0))
    top, values = explain.top_reasons(fit.pam, result, np.column_stack([x, aes_score]))
    keys = np.asarray(explain.FEATURE_KEYS, dtype=object)[top].tolist()
    return {"keys": keys, "contributions": np.round(values, 4), "names": legend}
