"""Per-request hooks made cheap (issue 9, item 5): the probes and /metrics are never rate
limited, and the security headers are added in one pass (each once, a view's own value
kept).  Their values are tested in test_security.py."""

from __future__ import annotations

import pytest

from polymicro.extensions import close_db
from tests.conftest import client_as
from tests.limits_helpers import limited_app

PROBES = (
    "/api/health",
    "/api/health/live",
    "/api/health/ready",
    "/api/v1/health",
    "/api/v1/health/live",
    "/api/v1/health/ready",
    "/metrics",
)
HARDENING = (
    "X-Content-Type-Options",
    "X-Frame-Options",
    "Referrer-Policy",
    "Cross-Origin-Resource-Policy",
    "Content-Security-Policy",
)


@pytest.fixture
def tight_app(mongodb_uri, redis_url):
    """Two requests per minute per client: any limited path refuses the third."""
    yield limited_app(mongodb_uri, redis_url, RATELIMIT_DEFAULT="2 per minute")
    close_db()


def test_the_probes_and_metrics_are_never_rate_limited(tight_app):
    prober = tight_app.test_client()  # an orchestrator: no credentials, one address
    for path in PROBES:
        for _ in range(4):
            response = prober.get(path)
            assert response.status_code in (200, 503), path  # 503: a check failed, not 429
            assert "X-RateLimit-Limit" not in response.headers, path
    viewer = client_as(tight_app, "viewer")  # the limits are on for the rest
    assert viewer.get("/api/projects").status_code == 200
    assert viewer.get("/api/projects").headers["X-RateLimit-Remaining"] == "0"
    assert viewer.get("/api/projects").status_code == 429
    assert prober.get("/api/health/live").status_code == 200


def test_each_security_header_is_sent_once(app):
    client = client_as(app, "viewer")
    for response in (
        client.get("/api/v1/projects"),
        client.get("/api/projects/0123456789abcdef01234567"),  # 404
        app.test_client().get("/api/v1/projects"),  # 401
        client.get("/metrics"),
        client.get("/docs"),  # sets its own CSP
        client.get("/redoc"),
    ):
        for header in HARDENING:
            assert len(response.headers.getlist(header)) == 1, (response.request.path, header)
