"""scripts/schemathesis_hooks.py drops only the documented answers it names: here, the
503 of a stream endpoint whose process holds all its stream slots, and the 422 to an
Idempotency-Key already used for a different request."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

HOOKS = Path(__file__).resolve().parents[1] / "scripts" / "schemathesis_hooks.py"


@pytest.fixture(scope="module")
def hooks():
    spec = importlib.util.spec_from_file_location("polymicro_fuzz_hooks", HOOKS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FULL = "This server holds its maximum of 2 open streams; try again shortly."


def answer(status: int, message: str, retry_after: bool = True):
    headers = {"content-type": ["application/json"]}
    if retry_after:
        headers["retry-after"] = ["1"]
    body = json.dumps({"code": status, "message": message}).encode()
    return SimpleNamespace(status_code=status, headers=headers, content=body)


def kept(hooks, path: str, response) -> bool:
    case = SimpleNamespace(path=path, headers={})
    return hooks.filter_failure(None, SimpleNamespace(code="ST101"), case, response)


@pytest.mark.parametrize("path", ["/api/v1/events/stream", "/api/v1/logs/stream"])
def test_a_stream_at_its_cap_is_the_documented_503(hooks, path):
    assert kept(hooks, path, answer(503, FULL)) is False


@pytest.mark.parametrize(
    ("path", "response"),
    [
        ("/api/v1/events/stream", answer(503, FULL, retry_after=False)),  # no Retry-After
        ("/api/v1/events/stream", answer(503, "Database unavailable.")),  # another 503
        ("/api/v1/events/stream", answer(500, FULL)),  # not a 503
        ("/api/v1/projects/", answer(503, FULL)),  # not a stream
    ],
)
def test_every_other_server_error_is_still_a_finding(hooks, path, response):
    assert kept(hooks, path, response) is True


REUSED = {"headers": {"Idempotency-Key": ["Used for a different request."]}}


def rejected(errors: dict):
    body = json.dumps({"code": 422, "message": "…", "errors": errors}).encode()
    return SimpleNamespace(
        status_code=422, headers={"content-type": ["application/json"]}, content=body
    )


def schema_valid_rejected(hooks, response) -> bool:
    case = SimpleNamespace(path="/api/v1/logs/", headers={})
    return hooks.filter_failure(None, SimpleNamespace(code="ST202"), case, response)


def test_a_reused_idempotency_key_is_the_documented_422(hooks):
    assert schema_valid_rejected(hooks, rejected(REUSED)) is False


OUT_OF_RANGE = {
    "query": {"until": ["A time must fall within the years 0001-9999 once converted to UTC."]}
}


def test_a_time_outside_the_years_in_utc_is_the_documented_422(hooks):
    assert schema_valid_rejected(hooks, rejected(OUT_OF_RANGE)) is False


@pytest.mark.parametrize(
    "errors",
    [
        {**REUSED, "json": {"message": ["Missing data for required field."]}},  # and more
        {"headers": {"Idempotency-Key": ["Not a valid key."]}},  # another key problem
        {"query": {"until": ["Not a valid time: use RFC 3339, e.g. 2026-11-26T18:10:47.123Z."]}},
    ],
)
def test_a_422_naming_anything_else_is_still_a_finding(hooks, errors):
    assert schema_valid_rejected(hooks, rejected(errors)) is True
