"""API versions: every endpoint under ``/api/v1`` (canonical) and under ``/api`` (its
alias), and the way a route is marked deprecated.

**Two paths, one endpoint.**  :func:`register_versioned` registers each blueprint of the
JSON API twice, with flask-smorest's public API: at ``/api/v1/…`` under its own name
(``projects.Projects``: the canonical endpoint, documented under the domain's tag), and
nested in one blueprint named ``unversioned`` at ``/api/…`` (``unversioned.projects.
Projects``: the alias, documented under the tag ``unversioned``).  Both rules call the
same view function, so authorization, validation, caching, ETags, pagination and errors
cannot differ.  What keys on a request's path or endpoint treats the twins as one:

- the response cache keys on :func:`unversioned_path` (``common/blueprint.py``), so a
  read through one twin is a hit for the other and a write through either invalidates
  both;
- the rate limiter counts on :func:`canonical_endpoint` (``security/limits.py``), so
  alternating twins buys no second budget;
- the request guards and the security headers match paths through
  :func:`unversioned_path` (form fields at login and registration, ``no-store`` under
  ``auth``).

The OpenAPI document lists both; :class:`AliasDocs` (an apispec plugin) marks each
alias with ``x-alias-of`` and a description naming its ``/api/v1`` twin.  They are not
``deprecated``: the dashboard uses them, and nothing announces their end.

**Deprecation.**  :func:`deprecated` marks a view method deprecated: the operation is
``deprecated: true`` in the document, and every response of it (under both paths,
errors included) carries ``Deprecation: @<unix time>`` (RFC 9745), ``Sunset:
<HTTP-date>`` when an end is set (RFC 8594), and ``Link: <…>; rel="deprecation"``
(RFC 9745) pointing at the explanation, plus ``rel="successor-version"`` (RFC 5829) when
a replacement exists.  The compatibility policy is in the README (API overview).
"""

from __future__ import annotations

import calendar
from copy import deepcopy
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import wraps

import flask_smorest
from apispec import BasePlugin
from flask import after_this_request
from werkzeug.http import http_date

API_PREFIX = "/api"
V1_PREFIX = "/api/v1"
# The blueprint that holds the unversioned aliases, and the start of their endpoints.
ALIASES = "unversioned"
ALIAS_ENDPOINT_PREFIX = ALIASES + "."
ALIASES_DESCRIPTION = (
    "The same operations under `/api` without a version: aliases of `/api/v1`, kept for "
    "the dashboard and existing clients. New clients use `/api/v1`."
)
DOCUMENT_NOTE = (
    "Every operation is served under `/api/v1` (canonical) and, unchanged, under `/api` "
    "(the aliases under the tag `unversioned`). Within v1, changes are additive only: new "
    "endpoints, new optional parameters, new response fields. A deprecated operation is "
    "marked `deprecated` here, and its responses carry `Deprecation`, `Sunset` and "
    '`Link: rel="deprecation"` headers.'
)


# --- paths and endpoints ---------------------------------------------------------------


def unversioned_path(path: str) -> str:
    """``/api/v1/projects/x`` → ``/api/projects/x``; any other path as it is.  What
    keys or tables that mean "this resource, whichever twin" use."""
    if path.startswith(V1_PREFIX) and path[len(V1_PREFIX) : len(V1_PREFIX) + 1] in ("", "/"):
        return API_PREFIX + path[len(V1_PREFIX) :]
    return path


def versioned_path(path: str) -> str:
    """``/api/projects/x`` → ``/api/v1/projects/x`` (the canonical twin of an alias)."""
    return V1_PREFIX + unversioned_path(path)[len(API_PREFIX) :]


def canonical_endpoint(endpoint: str) -> str:
    """``unversioned.projects.Projects`` → ``projects.Projects``: the endpoint of the
    ``/api/v1`` twin (itself for any other endpoint)."""
    if endpoint.startswith(ALIAS_ENDPOINT_PREFIX):
        return endpoint[len(ALIAS_ENDPOINT_PREFIX) :]
    return endpoint


# --- registration ----------------------------------------------------------------------


def register_versioned(api, blueprints) -> None:
    """Register each blueprint (``url_prefix`` under ``/api``) at ``/api/v1`` and, nested
    in the ``unversioned`` blueprint, at ``/api``: one view, two rules.  ``api``'s spec
    must have an :class:`AliasDocs` plugin (``register_api`` gives it one)."""
    from polymicro.common.blueprint import Blueprint  # it imports this module

    class Aliases(Blueprint):
        def register_views_in_doc(self, api, app, spec, *, name, parameters):
            """Each alias documented as a copy of its ``/api/v1`` twin's operations,
            already built (flask-smorest would build every one again from the views:
            measured, that doubled the cost of ``create_app``, 38 → 78 ms, paid by
            every test that builds an app; the copies add about 5 ms)."""
            for endpoint in self._docs:
                rule = next(app.url_map.iter_rules(f"{name}.{endpoint}"))
                operations, path_parameters = docs.twin(endpoint)
                spec.path(rule=rule, operations=operations, parameters=path_parameters)

    docs = next(p for p in api.spec.plugins if isinstance(p, AliasDocs))
    aliases = Aliases(ALIASES, __name__, url_prefix=API_PREFIX, description=ALIASES_DESCRIPTION)
    for blueprint in blueprints:
        tail = _tail(blueprint)
        api.register_blueprint(blueprint, url_prefix=V1_PREFIX + tail)
        aliases.register_blueprint(blueprint, url_prefix=tail)
    api.register_blueprint(aliases)


def _tail(blueprint) -> str:
    prefix = (blueprint.url_prefix or "").rstrip("/")
    if prefix != API_PREFIX and not prefix.startswith(API_PREFIX + "/"):
        raise ValueError(f"blueprint {blueprint.name!r}: url_prefix {prefix!r} is not under /api")
    if prefix.startswith(V1_PREFIX + "/") or prefix == V1_PREFIX:
        raise ValueError(f"blueprint {blueprint.name!r}: give the unversioned url_prefix")
    return prefix[len(API_PREFIX) :]


class AliasDocs(BasePlugin):
    """apispec plugin (public hooks: ``path_helper``, ``operation_helper``, run for
    every path flask-smorest documents).

    - Keeps a copy of every ``/api/v1`` path item as built (its path parameters and its
      operations, schemas already resolved), for :meth:`twin`.
    - Marks each operation of an alias: tag ``unversioned``, a description that names
      its ``/api/v1`` twin first, and ``x-alias-of`` (that path).
    """

    def __init__(self) -> None:
        super().__init__()
        self._built: dict[str, dict] = {}

    def path_helper(self, path=None, operations=None, parameters=None, **kwargs):
        rule = kwargs.get("rule")
        if rule is not None and not rule.endpoint.startswith(ALIAS_ENDPOINT_PREFIX):
            self._built[rule.endpoint] = {"parameters": deepcopy(parameters or [])}
        return None  # the path stays the one flask-smorest's plugin made

    def operation_helper(self, path=None, operations=None, **kwargs):
        rule = kwargs.get("rule")
        if rule is None or not path:
            return
        if not rule.endpoint.startswith(ALIAS_ENDPOINT_PREFIX):
            self._built[rule.endpoint]["operations"] = deepcopy(operations)
            return
        canonical = versioned_path(path)
        for method, operation in (operations or {}).items():
            note = (
                f"Alias of `{method.upper()} {canonical}`: the same operation, kept for the "
                "dashboard and existing clients; new clients use `/api/v1`."
            )
            described = operation.get("description")
            operation["description"] = f"{note}\n\n{described}" if described else note
            operation["tags"] = [ALIASES]
            operation["x-alias-of"] = canonical

    def twin(self, endpoint: str) -> tuple[dict, list]:
        """(operations, path parameters) of the ``/api/v1`` endpoint ``endpoint``, copies."""
        built = self._built[endpoint]
        return deepcopy(built["operations"]), deepcopy(built["parameters"])


# --- deprecation -----------------------------------------------------------------------


def _utc(moment: date | datetime) -> datetime:
    if not isinstance(moment, datetime):
        return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Deprecation:
    """What a deprecated operation announces (see the module docstring)."""

    since: datetime  # deprecated from (may be ahead: announced before it takes effect)
    link: str  # where the deprecation is explained (a page, or a section of the docs)
    sunset: datetime | None = None  # the operation may stop answering after this
    successor: str | None = None  # the operation (path) that replaces it

    def headers(self) -> list[tuple[str, str]]:
        found = [("Deprecation", f"@{calendar.timegm(self.since.utctimetuple())}")]
        if self.sunset is not None:
            found.append(("Sunset", http_date(self.sunset)))
        found.append(("Link", f'<{self.link}>; rel="deprecation"; type="text/html"'))
        if self.successor:
            found.append(("Link", f'<{self.successor}>; rel="successor-version"'))
        return found

    def apidoc(self) -> dict:
        notice = {"since": self.since.isoformat(), "link": self.link}
        if self.sunset is not None:
            notice["sunset"] = self.sunset.isoformat()
        if self.successor:
            notice["successor"] = self.successor
        return {"deprecated": True, "x-deprecation": notice}


def deprecated(
    *,
    since: date | datetime,
    link: str,
    sunset: date | datetime | None = None,
    successor: str | None = None,
):
    """Mark a view method deprecated (dates are UTC; a date means its midnight).

    Put it above ``access()``, so that every answer of the operation, a 401 or a 404
    as well as a success or a cached one, carries the headers.  A sunset before the
    deprecation date is a programming error (ValueError at import)."""
    notice = Deprecation(
        since=_utc(since),
        link=link,
        sunset=None if sunset is None else _utc(sunset),
        successor=successor,
    )
    if notice.sunset is not None and notice.sunset < notice.since:
        raise ValueError("a sunset cannot come before the deprecation")
    headers = notice.headers()

    def announce(response):
        response.headers.extend(headers)
        return response

    def decorator(func):
        @wraps(func)
        def wrapper(*args, **kwargs):
            after_this_request(announce)
            return func(*args, **kwargs)

        wrapper._deprecation = notice
        return flask_smorest.Blueprint.doc(**notice.apidoc())(wrapper)

    return decorator
