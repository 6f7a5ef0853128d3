"""Every ingest path takes the project API key in the three forms shippers can send
(X-API-Key, Authorization: Bearer, the password of Basic auth), and answers 401 in the
shipper's own shape without one; the per-project ingest budget applies to them."""

from __future__ import annotations

import base64

import pytest

from polymicro.logs.models import LogEntry
from tests.ingest_helpers import make_tenant, now_ns

PUSH = "/loki/api/v1/push"


def key_headers(form: str, key: str) -> dict:
    if form == "x-api-key":
        return {"X-API-Key": key}
    if form == "bearer":
        return {"Authorization": f"Bearer {key}"}
    basic = base64.b64encode(f"fluent-bit:{key}".encode()).decode()
    return {"Authorization": f"Basic {basic}"}


def one_stream(message: str) -> dict:
    return {"streams": [{"stream": {"app": "api"}, "values": [[str(now_ns()), message]]}]}


@pytest.mark.parametrize("form", ["x-api-key", "bearer", "basic"])
def test_each_key_form_stores_into_the_keys_project(app, ctx, form):
    tenant = make_tenant()
    response = app.test_client().post(
        PUSH, json=one_stream(f"via {form}"), headers=key_headers(form, tenant.key)
    )
    assert response.status_code == 204
    stored = LogEntry.objects.get(message=f"via {form}")
    assert stored.project_id == tenant.project.id


@pytest.mark.parametrize("path", [PUSH, "/otlp/v1/logs", "/otlp/v1/metrics"])
def test_no_credentials_is_a_401_naming_the_key_forms(app, ctx, path):
    response = app.test_client().post(path, json={})
    assert response.status_code == 401
    assert "API key" in response.get_json()["message"]
    assert LogEntry.objects.count() == 0


@pytest.mark.parametrize("form", ["bearer", "basic"])
def test_a_wrong_key_in_any_form_is_401_and_stores_nothing(app, ctx, form):
    make_tenant()
    response = app.test_client().post(
        PUSH, json=one_stream("nope"), headers=key_headers(form, "pmk_abc_not-a-key")
    )
    assert response.status_code == 401
    assert LogEntry.objects.count() == 0


def test_the_ingest_budget_answers_429_with_retry_after_and_stores_nothing(app, ctx):
    app.config.update(RATELIMIT_ENABLED=True, INGEST_RATE_PER_SECOND=2, INGEST_BURST=2)
    tenant = make_tenant()
    streams = {
        "streams": [
            {"stream": {"app": "api"}, "values": [[str(now_ns() + i), f"m{i}"] for i in range(3)]}
        ]
    }
    response = app.test_client().post(PUSH, json=streams, headers=key_headers("basic", tenant.key))
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert LogEntry.objects.count() == 0
