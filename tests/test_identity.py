"""polymicro/security/identity.py: how a caller is recognised.

- A project API key is accepted in three forms wherever keys are (``X-API-Key``,
  ``Authorization: Bearer pmk_…``, the password of Basic auth with any username), and
  refused the same way in each form when wrong, revoked or of another project; never
  from the URL.

(That the credential is verified once per request, though both the rate limiter and
``access`` ask, is in test_security.py with the other rate-limit tests.)
"""

from __future__ import annotations

import base64

import pytest

from polymicro.auth import service as auth
from polymicro.logs.models import LogEntry
from polymicro.metrics import service as metrics
from polymicro.metrics.models import CpuPoint
from tests.conftest import client_as
from tests.factories import make_service

LOGS = "/api/logs"


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


FORMS = {
    "X-API-Key": lambda key: {"X-API-Key": key},
    "Bearer": lambda key: {"Authorization": f"Bearer {key}"},
    "Basic, any username": lambda key: {"Authorization": basic("fluent-bit", key)},
    "Basic, empty username": lambda key: {"Authorization": basic("", key)},
}


@pytest.fixture
def world(ctx):
    svc = make_service(name="api")
    other = make_service(name="api")  # another project
    metric = metrics.create_metric({"project_id": svc.project_id, "service_name": "api"})
    return {
        "svc": svc,
        "metric_id": str(metric["id"]),
        "key": auth.create_api_key(svc.project_id, "shipper", None),
        "other_key": auth.create_api_key(other.project_id, "other", None)["key"],
    }


def log_body(svc, message="hello") -> dict:
    return {
        "project_id": str(svc.project_id),
        "service_id": str(svc.id),
        "severity": "info",
        "message": message,
    }


def writes(world):
    """Every endpoint that takes a key: (method, path, body, success status)."""
    svc, metric = world["svc"], world["metric_id"]
    return [
        ("post", LOGS, log_body(svc), 201),
        ("post", f"{LOGS}/batch", [log_body(svc), log_body(svc)], 201),
        ("post", f"/api/metrics/cpu/{metric}/data", [{"load": 1.0}], 201),
        ("put", f"/api/metrics/cpu/{metric}", {"data": [{"load": 2.0}]}, 200),
    ]


def stored() -> tuple[int, int]:
    return LogEntry.objects.count(), CpuPoint.objects.count()


def assert_error(response, code: int) -> None:
    assert response.status_code == code, response.get_data(as_text=True)
    assert response.json["code"] == code
    assert response.json["message"]


@pytest.mark.parametrize("form", FORMS)
def test_a_key_is_accepted_in_each_form_on_every_endpoint_that_takes_keys(app, world, form):
    client = app.test_client()
    for method, path, body, success in writes(world):
        response = getattr(client, method)(
            path, json=body, headers=FORMS[form](world["key"]["key"])
        )
        assert response.status_code == success, (path, response.json)
    assert LogEntry.objects(project_id=world["svc"].project_id).count() == 3
    assert CpuPoint.objects.count() == 1  # the PUT replaced the appended point


@pytest.mark.parametrize("form", FORMS)
def test_a_wrong_key_is_401_in_each_form_and_nothing_is_stored(app, world, form):
    raw = world["key"]["key"]
    client = app.test_client()
    for wrong in (raw[:-3] + "xyz", "pmk_0123456789ab_made-up"):
        for method, path, body, _ in writes(world):
            response = getattr(client, method)(path, json=body, headers=FORMS[form](wrong))
            assert_error(response, 401)
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="polymicro"'
    assert stored() == (0, 0)


@pytest.mark.parametrize("form", FORMS)
def test_a_revoked_key_is_401_in_each_form_and_nothing_is_stored(app, world, form):
    auth.revoke_api_key(world["svc"].project_id, world["key"]["id"])
    client = app.test_client()
    for method, path, body, _ in writes(world):
        response = getattr(client, method)(
            path, json=body, headers=FORMS[form](world["key"]["key"])
        )
        assert_error(response, 401)
    assert stored() == (0, 0)


@pytest.mark.parametrize("form", FORMS)
def test_another_projects_key_is_403_in_each_form_and_nothing_is_stored(app, world, form):
    client = app.test_client()
    for method, path, body, _ in writes(world):
        response = getattr(client, method)(path, json=body, headers=FORMS[form](world["other_key"]))
        assert_error(response, 403)
        assert "another project" in response.json["message"]
    assert stored() == (0, 0)


@pytest.mark.parametrize("form", FORMS)
def test_a_valid_key_in_any_form_is_403_where_keys_are_not_taken(app, world, form):
    client = app.test_client()
    headers = FORMS[form](world["key"]["key"])
    assert_error(client.get("/api/projects", headers=headers), 403)
    assert_error(client.post("/api/projects", json={"name": "x"}, headers=headers), 403)


@pytest.mark.parametrize(
    "query", ["api_key={key}", "X-API-Key={key}", "key={key}", "access_token={key}"]
)
def test_a_key_in_the_url_is_not_read(app, world, query):
    path = f"{LOGS}?{query.format(key=world['key']['key'])}"
    assert_error(app.test_client().post(path, json=log_body(world["svc"])), 401)
    assert stored() == (0, 0)


@pytest.mark.parametrize("password", ["password", "", "eyJhbGciOiJIUzI1NiJ9.e30.x"])
def test_basic_auth_without_a_key_as_password_is_401_saying_what_to_send(app, world, password):
    headers = {"Authorization": basic("alice", password)}
    response = app.test_client().post(LOGS, json=log_body(world["svc"]), headers=headers)
    assert_error(response, 401)
    assert "API key as the password" in response.json["message"]
    assert stored() == (0, 0)


def test_the_x_api_key_header_wins_over_authorization(app, world):
    """One credential per request: with both, the X-API-Key decides (here: a wrong one)."""
    headers = {"X-API-Key": "pmk_0123456789ab_made-up", **FORMS["Bearer"](world["key"]["key"])}
    assert_error(app.test_client().post(LOGS, json=log_body(world["svc"]), headers=headers), 401)
    assert stored() == (0, 0)


def test_a_bearer_jwt_still_reaches_the_user_path(app, world):
    response = client_as(app, "editor").post(LOGS, json=log_body(world["svc"]))
    assert response.status_code == 201
    assert stored() == (1, 0)
