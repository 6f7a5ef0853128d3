"""Role × endpoint → status: every API endpoint, every kind of caller.

Callers: nobody (no credentials), a viewer, an editor, an admin, and an API key of the
project the request is about.  A caller below the endpoint's role gets 403, nobody gets
401, and everyone allowed gets the endpoint's success status on a valid request (so a
"pass" is a real success, not a 404 or a 422).  Every row runs under both paths of the
route, ``/api/…`` and its twin ``/api/v1/…``.  The last tests make sure no API route
escapes the table and every view declares its access.
"""

from __future__ import annotations

import pytest

from polymicro.alerts import delivery as alert_delivery
from polymicro.alerts import service as alerts
from polymicro.alerts.delivery_models import Delivery
from polymicro.auth import service as auth
from polymicro.common.timeutil import utcnow
from polymicro.logs import service as logs
from polymicro.metrics import service as metrics
from tests.conftest import token_for
from tests.factories import make_project, make_service

CALLERS = ("nobody", "viewer", "editor", "admin", "key")
VERSIONS = ("/api", "/api/v1")  # every route answers under both
RANK = {"viewer": 0, "editor": 1, "admin": 2}

LOG = {"severity": "info", "message": "hello"}
HOOK = "http://8.8.8.8/hook"  # a public address: no DNS, and nothing is sent here

# (method, path, body, minimum role, API keys allowed, success status)
ENDPOINTS = [
    ("GET", "/api/projects", None, "viewer", False, 200),
    ("POST", "/api/projects", {"name": "new"}, "editor", False, 201),
    ("GET", "/api/projects/{pid}", None, "viewer", False, 200),
    ("PUT", "/api/projects/{pid}", {"owner": "x"}, "editor", False, 200),
    ("PATCH", "/api/projects/{pid}", {"owner": "x"}, "editor", False, 200),
    ("DELETE", "/api/projects/{pid}", None, "admin", False, 204),
    ("GET", "/api/projects/{pid}/usage", None, "viewer", False, 200),
    ("GET", "/api/services", None, "viewer", False, 200),
    ("POST", "/api/services", {"project_id": "{pid}", "name": "new"}, "editor", False, 201),
    ("GET", "/api/services/project/{pid}", None, "viewer", False, 200),
    ("GET", "/api/services/{sid}", None, "viewer", False, 200),
    ("PUT", "/api/services/{sid}", {"version": "2"}, "editor", False, 200),
    ("PATCH", "/api/services/{sid}", {"version": "2"}, "editor", False, 200),
    ("DELETE", "/api/services/{sid}", None, "editor", False, 204),
    ("GET", "/api/logs", None, "viewer", False, 200),
    ("POST", "/api/logs", "LOG", "editor", True, 201),
    ("POST", "/api/logs/batch", ["LOG", "LOG"], "editor", True, 201),
    ("GET", "/api/logs/project/{pid}", None, "viewer", False, 200),
    ("GET", "/api/logs/service/{sid}", None, "viewer", False, 200),
    ("GET", "/api/logs/{lid}", None, "viewer", False, 200),
    ("PUT", "/api/logs/{lid}", {"message": "edited"}, "editor", False, 200),
    ("PATCH", "/api/logs/{lid}", {"message": "edited"}, "editor", False, 200),
    ("DELETE", "/api/logs/{lid}", None, "editor", False, 204),
    ("GET", "/api/metrics/cpu", None, "viewer", False, 200),
    (
        "POST",
        "/api/metrics/cpu",
        {"project_id": "{pid}", "service_name": "web"},
        "editor",
        True,
        201,
    ),
    ("GET", "/api/metrics/cpu/project/{pid}", None, "viewer", False, 200),
    ("GET", "/api/metrics/cpu/service/api", None, "viewer", False, 200),
    ("GET", "/api/metrics/cpu/{mid}", None, "viewer", False, 200),
    ("PUT", "/api/metrics/cpu/{mid}", {"data": [{"load": 2.0}]}, "editor", True, 200),
    ("DELETE", "/api/metrics/cpu/{mid}", None, "editor", False, 204),
    ("POST", "/api/metrics/cpu/{mid}/data", {"load": 3.0}, "editor", True, 201),
    ("GET", "/api/metrics/cpu/{mid}/series", None, "viewer", False, 200),
    ("GET", "/api/auth/me", None, "viewer", False, 200),
    ("PUT", "/api/auth/me", {"email": "changed@example.com"}, "viewer", False, 200),
    ("GET", "/api/auth/users", None, "admin", False, 200),
    ("PATCH", "/api/auth/users/{uid}", {"role": "editor"}, "admin", False, 200),
    ("GET", "/api/retention", None, "admin", False, 200),
    ("GET", "/api/projects/{pid}/keys", None, "editor", False, 200),
    ("POST", "/api/projects/{pid}/keys", {"name": "ci"}, "editor", False, 201),
    ("DELETE", "/api/projects/{pid}/keys/{kid}", None, "editor", False, 204),
    ("GET", "/api/events", None, "viewer", False, 200),
    ("GET", "/api/events/stream", None, "viewer", False, 200),
    ("POST", "/api/events/stream-token", {"stream": "events"}, "viewer", False, 201),
    ("GET", "/api/logs/stream", None, "viewer", False, 200),
    ("POST", "/api/services/{sid}/heartbeat", None, "editor", True, 200),
    ("POST", "/api/services/{sid}/heartbeat/start", {"run_id": "r1"}, "editor", True, 200),
    ("POST", "/api/services/{sid}/heartbeat/fail", {"note": "exit 1"}, "editor", True, 200),
    ("GET", "/api/services/{sid}/liveness", None, "viewer", False, 200),
    ("GET", "/api/alert-receivers", None, "viewer", False, 200),
    ("POST", "/api/alert-receivers", {"name": "new", "url": HOOK}, "editor", False, 201),
    ("GET", "/api/alert-receivers/{xid}", None, "viewer", False, 200),
    ("PUT", "/api/alert-receivers/{xid}", {"enabled": False}, "editor", False, 200),
    ("PATCH", "/api/alert-receivers/{xid}", {"enabled": False}, "editor", False, 200),
    ("DELETE", "/api/alert-receivers/{xid}", None, "editor", False, 204),
    ("GET", "/api/alert-receivers/{xid}/deliveries", None, "viewer", False, 200),
    ("POST", "/api/alert-receivers/{xid}/deliveries/{did}/redeliver", None, "editor", False, 202),
    ("GET", "/api/alert-rules", None, "viewer", False, 200),
    (
        "POST",
        "/api/alert-rules",
        {"project_id": "{pid}", "name": "down", "kind": "liveness"},
        "editor",
        False,
        201,
    ),
    ("GET", "/api/alert-rules/{rid}", None, "viewer", False, 200),
    ("PUT", "/api/alert-rules/{rid}", {"enabled": False}, "editor", False, 200),
    ("PATCH", "/api/alert-rules/{rid}", {"enabled": False}, "editor", False, 200),
    ("DELETE", "/api/alert-rules/{rid}", None, "editor", False, 204),
    ("POST", "/api/alert-rules/{rid}/backtest", None, "viewer", False, 200),
    ("GET", "/api/alerts", None, "viewer", False, 200),
    ("GET", "/api/alerts/{aid}", None, "viewer", False, 200),
    ("POST", "/api/alerts/{aid}/silence", {"until": "2999-01-01T00:00:00Z"}, "editor", False, 200),
]

# Routes with their own rules, tested below and in test_auth_api.py.
SPECIAL = {
    ("POST", "/api/auth/register"),  # closed: anyone but an admin gets 403 (not 401)
    ("POST", "/api/auth/login"),  # public
    ("POST", "/api/auth/refresh"),  # needs a refresh token
}
PUBLIC = {("GET", "/api/health"), ("GET", "/api/health/live"), ("GET", "/api/health/ready")}


@pytest.fixture
def world(ctx):
    project = make_project(name="Shop")
    svc = make_service(project, name="api")
    make_service(project, name="web")
    metric = metrics.create_metric({"project_id": project.id, "service_name": "api"})
    metrics.append_cpu_points(metric["id"], [{"load": 1.0, "time": utcnow()}])
    entry = logs.create_log({"project_id": project.id, "service_id": svc.id, **LOG})
    users = {
        role: auth.register_user(
            {
                "username": role,
                "email": f"{role}@example.com",
                "password": "pw-" + role * 3,
                "role": role,
            },
            by_admin=True,
        )
        for role in ("viewer", "editor", "admin")
    }
    target = auth.register_user(
        {"username": "target", "email": "t@example.com", "password": "password1"}, by_admin=True
    )
    key = auth.create_api_key(project.id, "ingest", "admin")
    receiver = alert_delivery.create_receiver({"name": "pager", "url": HOOK})
    now = utcnow()
    sent = Delivery(
        key="alert:1",
        receiver_id=receiver["id"],
        project_id=project.id,
        alert_status="firing",
        body="{}",
        status="failed",
        created_at=now,
        retry_from=now,
        next_attempt_at=now,
    )
    sent.save()
    rule = alerts.create_rule(
        {
            "project_id": project.id,
            "service_id": svc.id,
            "name": "busy",
            "kind": "metric_threshold",
            "aggregate": "max",
            "field": "load",
            "window": 3600,
            "operator": ">",
            "threshold": 0.0,
        }
    )
    alerts.evaluate_all()
    [alert] = alerts.list_alerts(rule_id=rule["id"])
    return {
        "ids": {
            "pid": str(project.id),
            "sid": str(svc.id),
            "mid": str(metric["id"]),
            "lid": str(entry.id),
            "uid": str(target["id"]),
            "kid": str(key["id"]),
            "xid": str(receiver["id"]),
            "did": str(sent.id),
            "rid": str(rule["id"]),
            "aid": alert["id"],
        },
        "users": users,
        "key": key["key"],
    }


def _fill(value, world):
    if value == "LOG":
        return {"project_id": world["ids"]["pid"], "service_id": world["ids"]["sid"], **LOG}
    if isinstance(value, str):
        return value.format(**world["ids"])
    if isinstance(value, list):
        return [_fill(v, world) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, world) for k, v in value.items()}
    return value


def _headers(app, caller, world) -> dict:
    if caller == "nobody":
        return {}
    if caller == "key":
        return {"X-API-Key": world["key"]}
    user_id = str(world["users"][caller]["id"])
    return {"Authorization": f"Bearer {token_for(app, caller, user_id)}"}


def _expected(caller, role, keys, success) -> int:
    if caller == "nobody":
        return 401
    if caller == "key":
        return success if keys else 403
    return success if RANK[caller] >= RANK[role] else 403


def _under(prefix: str, path: str) -> str:
    return prefix + path.removeprefix("/api")


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(
    ("method", "path", "body", "role", "keys", "success"),
    ENDPOINTS,
    ids=[f"{e[0]} {e[1]}" for e in ENDPOINTS],
)
@pytest.mark.parametrize("prefix", VERSIONS)
def test_matrix(app, world, prefix, caller, method, path, body, role, keys, success):
    response = app.test_client().open(
        _fill(_under(prefix, path), world),
        method=method,
        json=_fill(body, world),
        headers=_headers(app, caller, world),
    )
    expected = _expected(caller, role, keys, success)
    assert response.status_code == expected, response.get_json()
    if expected in (401, 403):
        assert response.json["code"] == expected
        assert response.json["message"]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("prefix", VERSIONS)
def test_register_is_an_admin_call_while_registration_is_closed(app, world, prefix, caller):
    body = {"username": f"new-{caller}", "email": f"{caller}@new.example", "password": "longpass1"}
    response = app.test_client().post(
        _under(prefix, "/api/auth/register"), json=body, headers=_headers(app, caller, world)
    )
    assert response.status_code == (201 if caller == "admin" else 403)


@pytest.mark.parametrize(("method", "path"), sorted(PUBLIC))
@pytest.mark.parametrize("prefix", VERSIONS)
def test_health_is_public(anon_client, prefix, method, path):
    assert anon_client.open(_under(prefix, path), method=method).status_code in (200, 503)


def _api_routes(app) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api"):
            continue
        path = rule.rule.rstrip("/") or rule.rule
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((method, path))
    return routes


def _normalise(path: str) -> str:
    """/api/projects/{pid}, /api/projects/<objectid:project_id> and their /api/v1 twins →
    one shape (the matrix runs each row under both prefixes)."""
    import re

    path = re.sub(r"^/api/v1(?=/|$)", "/api", path)
    path = re.sub(r"<[^>]+>", "*", path)
    path = re.sub(r"\{[a-z]+\}", "*", path)
    return path.replace("/service/api", "/service/*")


def test_every_api_route_is_in_the_matrix(app):
    covered = {(m, _normalise(p)) for m, p, *_ in ENDPOINTS}
    covered |= {(m, _normalise(p)) for m, p in SPECIAL | PUBLIC}
    routes = {(m, _normalise(p)) for m, p in _api_routes(app)}
    assert routes - covered == set(), "routes without a row in the access matrix"


def test_every_route_is_served_under_both_prefixes(app):
    routes = _api_routes(app)
    v1 = {(m, p.removeprefix("/api/v1")) for m, p in routes if p.startswith("/api/v1/")}
    unversioned = {(m, p.removeprefix("/api")) for m, p in routes if not p.startswith("/api/v1/")}
    assert v1 == unversioned
    assert len(v1) >= len(ENDPOINTS) + len(SPECIAL) + len(PUBLIC)


def test_every_api_view_declares_its_access(app):
    missing = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api"):
            continue
        view_class = getattr(app.view_functions[rule.endpoint], "view_class", None)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            func = getattr(view_class, method.lower(), None)
            if getattr(func, "_access", None) is None:
                missing.append((method, rule.rule))
    assert missing == []
