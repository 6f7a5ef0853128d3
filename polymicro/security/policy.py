"""May the caller do this: the ``access`` rule of every endpoint, roles, project scope.

Every API endpoint carries an :func:`access` decorator naming what it needs:

==========================================  ==========================================
``access("viewer")``                        read
``access("editor")``                        write the catalog, logs, metrics, API keys
``access("admin")``                         users, project deletion
``access("editor", keys=True)``             also a project API key: write the logs and
                                            CPU points of *that key's project* only
``access(public=True)``                     no credentials (login, health)
==========================================  ==========================================

Roles are ordered: an admin may do what an editor may, an editor what a viewer may.  A
key is an editor of one project on the endpoints that take keys, and nothing anywhere
else (403).  The resource passes :func:`project_scope` to the service, whose
:func:`ensure_project` refuses (403) any other project.  The full role × endpoint table
is tests/test_access_matrix.py.

The role travels in the access token: a role change or deactivation takes effect at the
next refresh, at most ``ACCESS_TOKEN_MINUTES`` later (refresh re-reads the user).  With
``AUTH_ENABLED=false`` every request acts as an anonymous admin.
"""

from __future__ import annotations

from functools import wraps

import flask_smorest
from bson import ObjectId
from flask import current_app, g, request
from flask_smorest.utils import load_info_from_docstring

from polymicro.errors import Forbidden, Unauthorized
from polymicro.security.identity import ANONYMOUS_ADMIN, Principal, caller, has_credentials

ROLES = ("viewer", "editor", "admin")
RANK = {role: rank for rank, role in enumerate(ROLES)}
KEY_FORMS = "X-API-Key, Authorization: Bearer pmk_…, or the password of HTTP Basic auth"
AUTH_RESPONSES = {
    "401": {"description": "Missing, invalid or expired credentials."},
    "403": {"description": "Authenticated, but not allowed."},
}
INGEST_RESPONSES = {
    "429": {
        "description": "An API key's project is over its ingest budget (entries per second); "
        "nothing was stored. Retry after `Retry-After` seconds."
    }
}


def access(role: str | None = None, *, keys: bool = False, public: bool = False):
    """Require ``role`` (or, with ``keys``, a project API key) for this view method.

    It runs before argument parsing, so an anonymous caller gets 401 before any 422.
    The rule is kept on the view as ``_access`` (read by the rate limiter and by the
    test that every view declares one).

    The requirement goes into the OpenAPI document through flask-smorest's public
    ``Blueprint.doc`` (a static method: it needs no blueprint instance, so this
    decorator, shared by every blueprint, can use it).  Its ``description`` replaces
    the one flask-smorest takes from the docstring, so the docstring's description (the
    text after the summary line) is carried over, followed by "Requires …".
    """
    if not public and role not in RANK:
        raise ValueError(f"unknown role {role!r}")

    def decorator(func):
        @wraps(func)
        def wrapper(*args, **kwargs):
            g.principal = _admit(role, keys, public)
            return func(*args, **kwargs)

        wrapper._access = {"role": role, "keys": keys, "public": public}
        return flask_smorest.Blueprint.doc(**_apidoc(func, role, keys, public))(wrapper)

    return decorator


def _apidoc(func, role: str | None, keys: bool, public: bool) -> dict:
    if public:
        return {"security": []}
    who = f"role {role}" + (f" or a project API key ({KEY_FORMS})" if keys else "")
    described = load_info_from_docstring(func.__doc__ or "").get("description", "")
    return {
        "security": [{"bearerAuth": []}] + ([{"apiKey": []}, {"basicAuth": []}] if keys else []),
        "description": f"{described}\n\nRequires {who}.".strip(),
        "responses": AUTH_RESPONSES | (INGEST_RESPONSES if keys else {}),
    }


def _admit(role: str | None, keys: bool, public: bool) -> Principal | None:
    if public:
        return None
    if not current_app.config["AUTH_ENABLED"]:
        return ANONYMOUS_ADMIN
    principal = caller()
    if principal.kind == "key":
        if not keys:
            raise Forbidden("API keys can only write the logs and metrics of their project.")
        return principal
    if principal.jwt_type != "access":
        raise Unauthorized("Use an access token here (a refresh token only refreshes).")
    if RANK.get(principal.role, -1) < RANK[role]:
        raise Forbidden(f"This needs the {role} role; you are {principal.role}.")
    return principal


def current_principal() -> Principal | None:
    """The caller admitted by :func:`access` (None on public endpoints)."""
    return g.get("principal")


def project_scope() -> ObjectId | None:
    """The only project this caller may write to, or None when not limited (users)."""
    principal = current_principal()
    return principal.project_id if principal is not None and principal.kind == "key" else None


def ensure_project(scope: ObjectId | None, project_id: ObjectId) -> None:
    """A service-layer rule: a caller limited to ``scope`` may not touch another project."""
    if scope is not None and scope != project_id:
        raise Forbidden("This API key belongs to another project.")


def caller_is_admin() -> bool:
    """For endpoints open to anyone that do more for an admin (registration): an
    admin's valid token says yes; no credentials say no; bad credentials are a 401."""
    if not current_app.config["AUTH_ENABLED"]:
        return True
    if not has_credentials():
        return False
    principal = caller()
    if principal.kind == "user" and principal.jwt_type != "access":
        raise Unauthorized("Use an access token here (a refresh token only refreshes).")
    return principal.kind == "user" and principal.role == "admin"


def endpoint_rule() -> dict | None:
    """The ``access`` rule of the view that answers this request (None: no such view,
    or a view without one).  Known before the view runs (the rate limiter asks)."""
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None:
        return None
    view_class = getattr(view, "view_class", None)
    if view_class is not None:
        method = "get" if request.method == "HEAD" else request.method.lower()
        view = getattr(view_class, method, None)
    return getattr(view, "_access", None)
