"""The service speaks in domain errors; one table turns them into HTTP statuses."""

from __future__ import annotations

import ast
import inspect

from serving.online import errors
from serving.online.http_errors import STATUS, status_of
from tests.conftest import ROOT

SERVICE_MODULES = ("service", "catalog", "photos", "user_store", "taste", "api_models", "errors")


def _kinds() -> list[type[errors.ServiceError]]:
    return [k for _, k in inspect.getmembers(errors, inspect.isclass) if issubclass(k, errors.ServiceError)]


def test_every_kind_of_error_has_a_client_status():
    for kind in _kinds():
        if kind is errors.ServiceError:
            continue
        assert 400 <= status_of(kind) < 600 and status_of(kind) != 500, kind.__name__
    assert status_of(errors.UnknownUser) == 404 and status_of(errors.RequestIdConflict) == 409
    assert status_of(errors.VersionSwitching) == status_of(errors.Overloaded) == 503
    assert set(STATUS) <= set(_kinds())


def test_bodies_keep_the_wire_shape():
    assert errors.UnknownUser("kim").body() == {"detail": "unknown user 'kim'", "error": "unknown_user",
                                                "unknown": ["kim"]}
    assert errors.TooLarge("too_many_items", "too many", limit=3).body() == {
        "detail": "too many", "error": "too_many_items", "limit": 3}
    assert errors.Overloaded("busy", 1).body()["retry_after_s"] == 1


def test_the_service_never_imports_http():
    for name in SERVICE_MODULES:
        tree = ast.parse((ROOT / "serving" / "online" / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        web = {m for m in imported if m.split(".")[0] in ("fastapi", "starlette", "http")
               or m in ("serving.online.http_errors", "serving.online.routes", "serving.online.app")}
        assert not web, (name, web)
