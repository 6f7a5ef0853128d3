"""Builders shared by the tests: one per domain, so a test says only what matters to it.

Every builder has sensible defaults, gives each name a unique suffix, and lets a test
override any field.  Two kinds:

- ``make_*`` store through the service layer (so the rules apply: uniqueness,
  references, severity levels, cache bumps) and return what the service returns.  They
  need an app context: use the ``ctx`` fixture (it combines with ``client``).
- ``*_data``, ``*_body``, the points and the clock are plain values, no database:
  ``log_data`` is what ``logs.create_log`` takes, ``log_body`` the JSON a client posts.
  ``MISSING`` as a value leaves that field out.

Times: ``T0`` (2026-01-01 00:00 UTC, naive as stored) is the start of every test's
clock; ``at(minutes)`` is an instant after it, ``stamp(minutes)`` the same instant as
the API writes it (RFC 3339, milliseconds, ``Z``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import datetime, timedelta

from bson import ObjectId

from polymicro.auth import service as auth
from polymicro.common.timeutil import format_time
from polymicro.logs import service as logs
from polymicro.metrics import service as metrics
from polymicro.projects import service as projects
from polymicro.services import service as services

_seq = itertools.count(1)

T0 = datetime(2026, 1, 1)
PASSWORD = "correct horse battery"  # the password of every user make_user creates
MISSING = object()  # a value that removes its field from data or a body


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_seq)}"


# --- the clock and plain values -------------------------------------------------------


def at(minutes: float = 0, *, seconds: float = 0, ms: int = 0) -> datetime:
    """``T0`` plus the given minutes, seconds and milliseconds."""
    return T0 + timedelta(minutes=minutes, seconds=seconds, milliseconds=ms)


def stamp(minutes: float = 0, *, seconds: float = 0, ms: int = 0) -> str:
    """``at(...)`` as the API writes times: ``2026-01-01T00:05:00.000Z``."""
    return format_time(at(minutes, seconds=seconds, ms=ms))


def as_json(value):
    """``value`` as a client sends it: ids as text, times in RFC 3339, MISSING left out."""
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items() if v is not MISSING}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, ObjectId):
        return str(value)
    return value


def _fields(defaults: dict, overrides: dict) -> dict:
    merged = {**defaults, **overrides}
    return {k: v for k, v in merged.items() if v is not MISSING}


def minute_points(count: int, start: int = 0) -> list[dict]:
    """CPU points one minute apart from ``at(start)``; each point's load is its minute."""
    return [{"time": at(start + i), "load": float(start + i)} for i in range(count)]


def hour_of_points() -> list[dict]:
    """60 points, one a minute from ``T0``: load = minute, threads = minute // 2, and
    memory = minute % 10 except in minutes 10-14 (not measured)."""
    points = []
    for minute in range(60):
        point = {"time": at(minute), "load": float(minute), "threads": minute // 2}
        if not 10 <= minute <= 14:
            point["memory"] = float(minute % 10)
        points.append(point)
    return points


def log_data(svc=None, **fields) -> dict:
    """What ``logs.create_log`` takes: an info entry "started" of ``svc``.  Without a
    service, give ``project_id`` and ``service_id``."""
    defaults = {"severity": "info", "message": "started"}
    if svc is not None:
        defaults = {"project_id": svc.project_id, "service_id": svc.id, **defaults}
    return _fields(defaults, fields)


def log_body(svc=None, **fields) -> dict:
    """The JSON body of ``POST /api/logs`` (one entry of ``/api/logs/batch``)."""
    return as_json(log_data(svc, **fields))


def metric_data(svc, **fields) -> dict:
    """What ``metrics.create_metric`` takes: the entry of ``svc``, no points."""
    return _fields({"project_id": svc.project_id, "service_name": svc.name}, fields)


def metric_body(svc, **fields) -> dict:
    """The JSON body of ``POST /api/metrics/cpu``."""
    return as_json(metric_data(svc, **fields))


# --- stored through the service layer --------------------------------------------------


def make_project(**fields):
    """A stored project (the document)."""
    data = _fields({"name": unique("project")}, fields)
    return projects.load_project(projects.create_project(data)["id"])


def make_service(project=None, **fields):
    """A stored service (the document) of ``project``, or of a new project.  Another
    service of the project of ``svc``: ``make_service(project_id=svc.project_id)``."""
    if "project_id" not in fields:
        fields["project_id"] = (project or make_project()).id
    data = _fields({"name": unique("service")}, fields)
    return services.load_service(services.create_service(data)["id"])


def make_log(svc=None, **fields):
    """A stored log entry (the document) of ``svc``, or of a new service."""
    return logs.create_log(log_data(svc or make_service(), **fields))


def make_logs(svc=None, entries: int | Iterable[dict] = 1, **fields) -> list[ObjectId]:
    """One batch stored by ``logs.create_logs``; returns the ids in order.

    ``entries`` is a count (messages "line 0", "line 1", ...) or one dict of fields
    per entry; ``fields`` apply to every entry.
    """
    svc = svc or make_service()
    if isinstance(entries, int):
        entries = [{"message": f"line {i}"} for i in range(entries)]
    return logs.create_logs([log_data(svc, **{**fields, **entry}) for entry in entries])


def make_metric(svc=None, points: list[dict] | None = None, **fields):
    """The stored CPU metrics entry of ``svc`` (or of a new service) with ``points``;
    returns the service's view (``.id``, ``.data`` ...)."""
    data = metric_data(svc or make_service(), **fields)
    if points is not None:
        data["data"] = points
    return metrics.create_metric(data)


def make_user(role: str = "viewer", *, active: bool = True, **fields) -> dict:
    """A stored user with ``role``, registered by an admin; the password is ``PASSWORD``
    and the e-mail ``<username>@example.com``.  ``active=False`` switches it off."""
    username = fields.pop("username", None) or unique("user")
    data = _fields(
        {"username": username, "email": f"{username}@example.com", "password": PASSWORD},
        {**fields, "role": role},
    )
    user = auth.register_user(data, by_admin=True)
    if not active:
        user = auth.admin_update_user(user["id"], {"is_active": False})
    return user


def make_key(project=None, name: str | None = None, created_by: str | None = None) -> dict:
    """A live API key of ``project`` (or of a new project); ``.key`` is the raw secret,
    which only its creation shows."""
    project = project or make_project()
    return auth.create_api_key(project.id, name or unique("key"), created_by)


# --- through the HTTP API --------------------------------------------------------------


def created(client, path: str, body) -> dict:
    """POST ``body`` (plain values are converted by ``as_json``) and return the 201's JSON."""
    response = client.post(path, json=as_json(body))
    assert response.status_code == 201, response.json
    return response.json
