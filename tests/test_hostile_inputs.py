"""Hostile inputs on every write endpoint, and regression tests for what fuzzing found.

The table ``HOSTILE`` sends each input to a write endpoint (POST/PUT/PATCH of projects,
services, logs, the log batch, CPU metrics entries and their points) and checks that

- the answer is a 4xx in the one error shape ``{"code", "status", "message", ...}``
  with ``code`` equal to the HTTP status and a message that says something;
- nothing was stored and nothing changed: every document of every collection is the
  same before and after (not only the counts).

The table is the one home of the rules every JSON endpoint shares (media types,
malformed or over-deep JSON, a body of the wrong JSON type, the size cap, operator
objects).  The ordinary limits of one field (a length, a type, a range, a count) are
tested in the domain's API tests, whose tables also say which field the error names;
the table keeps only the field values no ordinary client sends.

``QUERY_INJECTION`` checks that operator objects in query strings are never operators:
the contract ignores unknown parameters (``owner[$ne]``) and matches ``q`` literally.

The rest are regression tests, one per finding of ``make fuzz`` (scripts/fuzz.py) or of
this table; each names the finding.  Everything runs on mongomock and, with
``POLYMICRO_TEST_DB=secantus`` (``make test-wire``), on a real wire-protocol server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mongoengine
import pytest
from marshmallow import ValidationError

from polymicro.common.fields import NAME_PATTERN, TAG_PATTERN, URL_PATTERN, WS
from polymicro.common.timeutil import format_time
from polymicro.metrics.schemas import STEP_PATTERN, Step
from tests.factories import as_json, log_body, make_log, make_metric, make_project, make_service

DEEP = 10_000  # levels of nesting in the "deeply nested" inputs


# --- the world every hostile request is aimed at ------------------------------------


@pytest.fixture
def world(ctx) -> dict[str, str]:
    """A project with two services; a CPU entry and a log entry for the first service.
    The second service has no CPU entry yet (the target of POST /api/metrics/cpu)."""
    project = make_project(name="target", owner="team-a", tags=["t"])
    svc = make_service(project, name="api", port=80)
    spare = make_service(project, name="spare")
    metric = make_metric(svc, points=[{"load": 1.0}])
    log = make_log(svc, message="m")
    ids = {"pid": project.id, "sid": svc.id, "mid": metric.id, "lid": log.id}
    return {**as_json(ids), "spare": spare.name}


PATHS = {
    "projects": "/api/projects",
    "project": "/api/projects/{pid}",
    "services": "/api/services",
    "service": "/api/services/{sid}",
    "logs": "/api/logs",
    "log": "/api/logs/{lid}",
    "batch": "/api/logs/batch",
    "metrics": "/api/metrics/cpu",
    "metric": "/api/metrics/cpu/{mid}",
    "points": "/api/metrics/cpu/{mid}/data",
}


def valid_body(target: str, w: dict[str, str]) -> Any:
    """A body the endpoint accepts; hostile rows change one part of it."""
    log = log_body(project_id=w["pid"], service_id=w["sid"], message="x")
    return {
        "projects": {"name": "new-project"},
        "project": {"name": "renamed"},
        "services": {"project_id": w["pid"], "name": "new-service"},
        "service": {"name": "renamed"},
        "logs": log,
        "log": {"message": "changed"},
        "batch": [log],
        "metrics": {"project_id": w["pid"], "service_name": w["spare"]},
        "metric": {"data": [{"load": 2.0}]},
        "points": {"load": 2.0},
    }[target]


# --- how a row describes its request ------------------------------------------------


@dataclass
class Raw:
    """A body sent exactly as given (text or bytes), e.g. JSON no encoder would write."""

    body: str | bytes | Callable[[dict[str, str]], str | bytes]

    def render(self, w: dict[str, str]) -> bytes:
        body = self.body(w) if callable(self.body) else self.body
        return body.encode() if isinstance(body, str) else body


@dataclass
class Hostile:
    id: str
    method: str
    target: str  # a key of PATHS
    # A dict of overrides merged into valid_body (for "batch", into its only entry; for
    # "metric", into its only point), a callable(world) -> JSON value, or a Raw body.
    body: Any
    status: int
    content_type: str | None = "application/json"

    def request(self, w: dict[str, str]) -> tuple[str, str, bytes]:
        path = PATHS[self.target].format(**w)
        if isinstance(self.body, Raw):
            return self.method, path, self.body.render(w)
        if callable(self.body):
            value = self.body(w)
        else:
            value = valid_body(self.target, w)
            if self.target == "batch":
                value = [{**value[0], **self.body}]
            elif self.target == "metric" and "data" not in self.body:
                value = {"data": [{**value["data"][0], **self.body}]}
            else:
                value = {**value, **self.body}
        return self.method, path, json.dumps(value).encode()


def nested(depth: int, leaf: str = "1", kind: str = "array") -> str:
    if kind == "array":
        return "[" * depth + leaf + "]" * depth
    return '{"a":' * depth + leaf + "}" * depth


def valid_json_with(target: str, w: dict[str, str], field: str, raw_value: str) -> str:
    """The valid body of ``target`` as JSON text with ``field`` set to ``raw_value`` (JSON
    text that no encoder would write: lone surrogates, NaN, 1e400, deep nesting)."""
    body = valid_body(target, w)
    marker = "__RAW_VALUE__"
    if target == "batch":
        body = [{**body[0], field: marker}]
    elif target == "metric":
        body = {"data": [{**body["data"][0], field: marker}]}
    else:
        body = {**body, field: marker}
    return json.dumps(body).replace(f'"{marker}"', raw_value)


def raw_field(target: str, field: str, raw_value: str) -> Raw:
    return Raw(lambda w: valid_json_with(target, w, field, raw_value))


# The string fields of each write endpoint (where an operator object must be refused).
STRING_FIELDS = {
    "projects": ["name", "description", "owner", "path", "tests_dir_path"],
    "services": [
        "project_id",
        "name",
        "description",
        "url",
        "version",
        "uptime",
        "container_name",
        "status",
        "health",
        "last_deployment",
    ],
    "logs": [
        "project_id",
        "service_id",
        "severity",
        "message",
        "timestamp",
        "source",
        "test_id",
        "func_id",
    ],
    "metrics": ["project_id", "service_name"],
    "points": ["time"],
}
WRITE_TARGETS = ["projects", "project", "services", "service", "logs", "log", "batch"]
WRITE_TARGETS += ["metrics", "metric", "points"]
ITEM_UPDATE = {"project": "projects", "service": "services", "log": "logs"}


def method_of(target: str) -> str:
    return "PUT" if target == "metric" else "PATCH" if target in ITEM_UPDATE else "POST"


def _operator_rows() -> list[Hostile]:
    rows = []
    for target, fields in STRING_FIELDS.items():
        for field in fields:
            for operator in ({"$ne": ""}, {"$gt": ""}):
                name = next(iter(operator))
                rows.append(
                    Hostile(f"{name} in {target}.{field}", "POST", target, {field: operator}, 422)
                )
        update = {"projects": "project", "services": "service", "logs": "log"}.get(target)
        for field in fields if update else []:
            if field in ("project_id", "service_id"):
                continue
            for method in ("PUT", "PATCH"):
                rows.append(
                    Hostile(
                        f"$ne in {method} {update}.{field}",
                        method,
                        update,
                        {field: {"$ne": None}},
                        422,
                    )
                )
    for field in ("project_id", "service_id", "message"):
        rows.append(Hostile(f"$gt in batch.{field}", "POST", "batch", {field: {"$gt": ""}}, 422))
    rows.append(Hostile("$in in tags", "POST", "projects", {"tags": [{"$in": ["a"]}]}, 422))
    rows.append(
        Hostile("operator as the whole tags", "POST", "projects", {"tags": {"$ne": []}}, 422)
    )
    rows.append(Hostile("$gt in point.load", "POST", "points", {"load": {"$gt": 0}}, 422))
    rows.append(Hostile("$ne in PUT point.time", "PUT", "metric", {"time": {"$ne": ""}}, 422))
    return rows


def _each_target(label: str, body_for: Callable[[str], Any], status: int, **kw) -> list[Hostile]:
    return [
        Hostile(f"{label} ({target})", method_of(target), target, body_for(target), status, **kw)
        for target in WRITE_TARGETS
    ]


def _json_rows() -> list[Hostile]:
    rows = []
    rows += _each_target(
        f"{DEEP} levels of [[[...]]] as the body", lambda t: Raw(nested(DEEP)), 400
    )
    rows += _each_target(
        f"{DEEP} levels of {{a:{{a:...}}}} as the body",
        lambda t: Raw(nested(DEEP, kind="object")),
        400,
    )
    rows += _each_target("a JSON string as the body", lambda t: Raw('"text"'), 422)
    rows += _each_target("a JSON number as the body", lambda t: Raw("12"), 422)
    rows += _each_target("JSON null as the body", lambda t: Raw("null"), 422)
    rows += _each_target("true as the body", lambda t: Raw("true"), 422)
    rows += _each_target("malformed JSON", lambda t: Raw('{"name": '), 400)
    rows += _each_target(
        "a UTF-8 byte-order mark before the JSON",
        lambda t: Raw(lambda w, t=t: b"\xef\xbb\xbf" + json.dumps(valid_body(t, w)).encode()),
        400,
    )
    rows += _each_target("bytes that are not UTF-8", lambda t: Raw(b'{"name": "\xff\xfe"}'), 400)
    rows += _each_target(
        "an integer of 5000 digits", lambda t: Raw('{"x": 1' + "0" * 5000 + "}"), 400
    )
    rows += _each_target(
        "text/plain",
        lambda t: Raw(lambda w, t=t: json.dumps(valid_body(t, w))),
        415,
        content_type="text/plain",
    )
    rows += _each_target(
        "a form",
        lambda t: Raw("name=x&load=1"),
        415,
        content_type="application/x-www-form-urlencoded",
    )
    rows += _each_target(
        "multipart",
        lambda t: Raw(b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n--b--\r\n'),
        415,
        content_type="multipart/form-data; boundary=b",
    )
    rows += _each_target(
        "a JSON body without a content type",
        lambda t: Raw(lambda w, t=t: json.dumps(valid_body(t, w))),
        415,
        content_type=None,
    )
    # Arrays where an object is expected and vice versa.
    rows += [
        Hostile(
            "an array of the object (projects)", "POST", "projects", lambda w: [{"name": "a"}], 422
        ),
        Hostile(
            "an array of the object (services)",
            "POST",
            "services",
            lambda w: [valid_body("services", w)],
            422,
        ),
        Hostile(
            "an array of the object (logs)", "POST", "logs", lambda w: [valid_body("logs", w)], 422
        ),
        Hostile(
            "an array of the object (metrics)",
            "POST",
            "metrics",
            lambda w: [valid_body("metrics", w)],
            422,
        ),
        Hostile("an array for PATCH project", "PATCH", "project", lambda w: [{"name": "x"}], 422),
        Hostile(
            "an object where the batch array goes",
            "POST",
            "batch",
            lambda w: valid_body("logs", w),
            422,
        ),
        Hostile(
            "an array of arrays as the batch",
            "POST",
            "batch",
            lambda w: [[valid_body("logs", w)]],
            422,
        ),
        Hostile("an array of arrays of points", "POST", "points", lambda w: [[{"load": 1}]], 422),
        Hostile(
            "an object where data's array goes",
            "PUT",
            "metric",
            lambda w: {"data": {"load": 1}},
            422,
        ),
        Hostile("an empty object (POST logs)", "POST", "logs", lambda w: {}, 422),
        Hostile("an empty body (POST projects)", "POST", "projects", Raw(b""), 422),
        Hostile("an empty body (POST services)", "POST", "services", Raw(b""), 422),
        Hostile("an empty body (POST logs)", "POST", "logs", Raw(b""), 422),
        Hostile("an empty body (POST batch)", "POST", "batch", Raw(b""), 422),
        Hostile("an empty body (POST metrics)", "POST", "metrics", Raw(b""), 422),
        Hostile("an empty body (POST points)", "POST", "points", Raw(b""), 422),
    ]
    # Duplicate keys: two readers could see two different requests.
    rows += [
        Hostile("duplicate name key", "POST", "projects", Raw('{"name": "a", "name": "b"}'), 400),
        Hostile("duplicate key in PATCH", "PATCH", "service", Raw('{"port": 1, "port": 2}'), 400),
        Hostile(
            "duplicate attribute key",
            "POST",
            "logs",
            raw_field("logs", "attributes", '{"k": 1, "k": 2}'),
            400,
        ),
        Hostile(
            "duplicate key in a batch entry",
            "POST",
            "batch",
            Raw(lambda w: "[" + json.dumps(valid_body("logs", w))[:-1] + ', "message": "y"}]'),
            400,
        ),
        Hostile("duplicate key in a point", "POST", "points", Raw('{"load": 1, "load": 2}'), 400),
    ]
    # Deep nesting inside a field.
    for target, field in (
        ("projects", "name"),
        ("services", "tags"),
        ("logs", "attributes"),
        ("batch", "message"),
        ("metric", "load"),
        ("points", "load"),
    ):
        rows.append(
            Hostile(
                f"{DEEP} levels nested in {target}.{field}",
                method_of(target),
                target,
                raw_field(target, field, nested(DEEP)),
                400,
            )
        )
    rows.append(
        Hostile(
            "20 levels nested in logs.attributes (parses; refused by the schema)",
            "POST",
            "logs",
            raw_field("logs", "attributes", nested(20, kind="object")),
            422,
        )
    )
    return rows


LONE = '"a\\ud800b"'  # JSON text of a lone high surrogate
LONE_LOW = '"\\udc00"'


def _value_rows() -> list[Hostile]:
    big = 2**70
    rows = [
        # Overlong strings.
        Hostile("name of 1,000,000 chars", "POST", "projects", {"name": "n" * 1_000_000}, 422),
        Hostile(
            "name of 97 chars + 4 spaces", "POST", "projects", {"name": "    " + "n" * 97}, 422
        ),
        Hostile("description of 2001 chars", "PATCH", "project", {"description": "d" * 2001}, 422),
        Hostile("owner of 101 chars", "PUT", "project", {"owner": "o" * 101}, 422),
        Hostile("a tag of 51 chars", "PATCH", "service", {"tags": ["t" * 51]}, 422),
        Hostile("url of 2049 chars", "POST", "services", {"url": "http://h/" + "u" * 2040}, 422),
        Hostile("version of 65 chars", "PUT", "service", {"version": "v" * 65}, 422),
        Hostile(
            "message of 16385 chars in a batch", "POST", "batch", {"message": "m" * 16385}, 422
        ),
        Hostile("source of 257 chars", "PATCH", "log", {"source": "s" * 257}, 422),
        Hostile("service_name of 101 chars", "POST", "metrics", {"service_name": "s" * 101}, 422),
        Hostile(
            "a body over the 20 MiB cap",
            "POST",
            "batch",
            Raw(b'[{"message": "' + b"m" * (21 * 1024 * 1024) + b'"}]'),
            413,
        ),
        # Huge numbers.
        Hostile("port 2**70", "POST", "services", {"port": big}, 422),
        Hostile("port 1e400", "POST", "services", raw_field("services", "port", "1e400"), 422),
        Hostile("port -1e400", "PATCH", "service", raw_field("service", "port", "-1e400"), 422),
        Hostile("load 1e400", "POST", "points", raw_field("points", "load", "1e400"), 422),
        Hostile("load 2**70", "POST", "points", {"load": big}, 422),
        Hostile("threads 2**70", "PUT", "metric", {"threads": big}, 422),
        Hostile("memory 1e308 * 10", "POST", "points", raw_field("points", "memory", "1e309"), 422),
        Hostile(
            "attribute 1e19 (a float beyond 64 bits)",
            "POST",
            "logs",
            {"attributes": {"n": 1e19}},
            422,
        ),
        # NaN and infinity literals (not JSON; no field takes them).
        Hostile("load Infinity", "PUT", "metric", raw_field("metric", "load", "Infinity"), 422),
        Hostile(
            "memory -Infinity", "POST", "points", raw_field("points", "memory", "-Infinity"), 422
        ),
        Hostile("port NaN", "POST", "services", raw_field("services", "port", "NaN"), 422),
        Hostile("name NaN", "POST", "projects", raw_field("projects", "name", "NaN"), 422),
        # Wrong types.
        Hostile("name true", "PATCH", "project", {"name": True}, 422),
        Hostile("name an array", "PUT", "project", {"name": ["a"]}, 422),
        Hostile("name an object", "POST", "services", {"name": {"a": 1}}, 422),
        Hostile("port 80.5", "PATCH", "service", {"port": 80.5}, 422),
        Hostile("tags [1]", "PATCH", "project", {"tags": [1]}, 422),
        Hostile("message []", "POST", "batch", {"message": []}, 422),
        Hostile("timestamp a number", "PATCH", "log", {"timestamp": 1764151847}, 422),
        Hostile("threads 1.5", "PUT", "metric", {"threads": 1.5}, 422),
        Hostile("attributes a list", "PUT", "log", {"attributes": ["a"]}, 422),
        # Unicode edge cases.
        Hostile(
            "lone low surrogate in a service name",
            "PATCH",
            "service",
            raw_field("service", "name", LONE_LOW),
            422,
        ),
        Hostile(
            "lone surrogate in a batch message",
            "POST",
            "batch",
            raw_field("batch", "message", LONE),
            422,
        ),
        Hostile(
            "lone surrogate in an attribute key",
            "POST",
            "logs",
            raw_field("logs", "attributes", '{"\\ud800": 1}'),
            422,
        ),
        Hostile(
            "lone surrogate in description",
            "PUT",
            "project",
            raw_field("project", "description", LONE),
            422,
        ),
        Hostile(
            "right-to-left override in name", "POST", "projects", {"name": "abc\u202egpj.exe"}, 422
        ),
        Hostile(
            "bidi isolate in a service name", "POST", "services", {"name": "a\u2066b\u2069"}, 422
        ),
        Hostile("zero-width space only", "POST", "projects", {"name": "\u200b"}, 422),
        Hostile("zero-width space inside a name", "PATCH", "service", {"name": "ad\u200bmin"}, 422),
        Hostile("byte-order mark in a name", "POST", "projects", {"name": "\ufeffname"}, 422),
        Hostile("NUL in a name", "POST", "projects", {"name": "a\x00b"}, 422),
        Hostile("NUL in a service name", "PUT", "service", {"name": "\x00"}, 422),
        Hostile("newline inside a name", "POST", "services", {"name": "a\nINFO forged line"}, 422),
        Hostile("escape sequence in a name", "POST", "projects", {"name": "\x1b[31mred"}, 422),
        Hostile("NUL in service_name", "POST", "metrics", {"service_name": "api\x00"}, 422),
        Hostile("101 emoji as a name", "POST", "projects", {"name": "\U0001f600" * 101}, 422),
        Hostile(
            "emoji name with a bidi override", "POST", "services", {"name": "\U0001f680\u202e"}, 422
        ),
        Hostile("a name of white space only", "POST", "projects", {"name": " \t\u3000\u00a0"}, 422),
        Hostile("a tag with a Kelvin sign", "POST", "projects", {"tags": ["\u212a8s"]}, 422),
        Hostile("a tag with a space inside", "PATCH", "project", {"tags": ["a b"]}, 422),
        # Values that are not what they claim.
        Hostile("url javascript:", "POST", "services", {"url": "javascript:alert(1)"}, 422),
        Hostile("url with a space inside", "PATCH", "service", {"url": "http://a b/"}, 422),
        Hostile("timestamp year 0", "POST", "logs", {"timestamp": "0000-01-01T00:00:00Z"}, 422),
        Hostile(
            "timestamp overflowing to year 0",
            "POST",
            "logs",
            {"timestamp": "0001-01-01T00:00:00+01:00"},
            422,
        ),
        Hostile("timestamp year 10000", "POST", "points", {"time": "10000-01-01T00:00:00Z"}, 422),
        Hostile("severity with NUL", "POST", "logs", {"severity": "info\x00"}, 422),
        Hostile(
            "a second entry for a service",
            "POST",
            "metrics",
            lambda w: {"project_id": w["pid"], "service_name": "api"},
            409,
        ),
        Hostile(
            "moving a service to another project",
            "PATCH",
            "service",
            {"project_id": "0123456789abcdef01234567"},
            422,
        ),
        Hostile(
            "moving a log to another service",
            "PUT",
            "log",
            {"service_id": "0123456789abcdef01234567"},
            422,
        ),
    ]
    return rows


HOSTILE = _operator_rows() + _json_rows() + _value_rows()


def test_the_table_is_big_and_covers_every_write_endpoint():
    assert len(HOSTILE) >= 50
    assert {row.target for row in HOSTILE} == set(PATHS)
    assert {(row.method, row.target) for row in HOSTILE} >= {
        ("POST", "projects"),
        ("PUT", "project"),
        ("PATCH", "project"),
        ("POST", "services"),
        ("PUT", "service"),
        ("PATCH", "service"),
        ("POST", "logs"),
        ("PUT", "log"),
        ("PATCH", "log"),
        ("POST", "batch"),
        ("POST", "metrics"),
        ("PUT", "metric"),
        ("POST", "points"),
    }
    assert len({row.id for row in HOSTILE}) == len(HOSTILE)


def snapshot() -> dict[str, list[dict]]:
    """Every document of every collection (the whole database is small in a test)."""
    db = mongoengine.get_db()
    return {
        name: list(db[name].find({}).sort("_id", 1))
        for name in sorted(db.list_collection_names())
        if not name.startswith("system.")
    }


def assert_error_shape(response, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.get_data()[:500])
    body = response.get_json(silent=True)
    assert isinstance(body, dict), response.get_data()[:300]
    assert body["code"] == status
    assert isinstance(body["status"], str)
    assert body["status"]
    message = body["message"]
    assert isinstance(message, str)
    assert len(message) >= 10
    assert "Internal error" not in message
    assert "Traceback" not in response.get_data(as_text=True)


@pytest.mark.parametrize("row", HOSTILE, ids=[row.id for row in HOSTILE])
def test_a_hostile_input_is_a_clear_4xx_and_stores_nothing(app, client, world, row):
    method, path, body = row.request(world)
    with app.app_context():
        before = snapshot()
    headers = {"Content-Type": row.content_type} if row.content_type else {}
    response = client.open(path, method=method, data=body, headers=headers)
    assert_error_shape(response, row.status)
    if row.status == 422:
        assert response.json.get("errors"), response.json
    with app.app_context():
        assert snapshot() == before


# --- operator objects in query strings are never operators --------------------------


@pytest.fixture
def two_projects(client, world):
    """``target`` (owner team-a, from ``world``) and ``other`` (owner team-b)."""
    response = client.post("/api/projects", json={"name": "other", "owner": "team-b"})
    assert response.status_code == 201
    return world


QUERY_INJECTION = [
    # (query, the names the list must return): unknown parameters are ignored, filters
    # are compared as plain text.
    ("owner[$ne]=team-a", ["other", "target"]),
    ("owner[%24ne]=team-a", ["other", "target"]),
    ('owner={"$ne": "team-a"}', []),
    ('owner={"$ne": null}', []),
    ('q={"$regex": ".*"}', []),
    ("q=.*", []),
    ("q=^t", []),
    ("q=(", []),
    ("q=$where", []),
    ("tag[$exists]=true", ["other", "target"]),
    ('tag={"$exists": true}', []),
    ("q[$regex]=.*", ["other", "target"]),
    ("owner=team-a&owner[$ne]=team-a", ["target"]),
]


@pytest.mark.parametrize(("query", "names"), QUERY_INJECTION)
def test_operator_objects_in_query_strings_are_plain_text(client, two_projects, query, names):
    response = client.get(f"/api/projects?{query}")
    assert response.status_code == 200, response.json
    assert sorted(p["name"] for p in response.json) == names


@pytest.mark.parametrize(
    "query",
    ["project_id[$ne]=x", 'severity={"$in": ["info"]}', 'source={"$gt": ""}', "q=.*", "q=\\"],
)
def test_log_filters_are_never_operators(client, world, query):
    response = client.get(f"/api/logs?{query}")
    if "severity" in query:  # not one of the severities: named, not guessed
        assert_error_shape(response, 422)
        return
    assert response.status_code == 200, response.json
    expected = 1 if query.startswith("project_id[") else 0
    assert len(response.json) == expected


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/api/services", 'project_id={"$ne": null}'),
        ("/api/logs", "project_id[$ne]=&project_id=xyz"),
        ("/api/metrics/cpu", 'project_id={"$gt": ""}'),
        ("/api/logs", "q=a%00b"),
        ("/api/metrics/cpu/{mid}/series", 'step={"$gt": ""}'),
        ("/api/metrics/cpu/{mid}/series", "step=%D9%A1%D9%A0s"),  # Arabic-Indic digits "10s"
        ("/api/projects", 'page_size={"$gt": 0}'),
    ],
)
def test_malformed_filters_are_a_clear_422(client, world, path, query):
    response = client.get(f"{path.format(**world)}?{query}")
    assert_error_shape(response, 422)


# --- legitimate text that looks hostile is stored exactly -----------------------------


@pytest.mark.parametrize(
    "name",
    [
        "\U0001f680 rocket",
        "\U0001f600" * 100,  # 100 code points (200 UTF-16 units): within the limit
        "\U0001f468\u200d\U0001f469\u200d\U0001f467 family",  # zero-width joiners
        "\u05e9\u05dc\u05d5\u05dd",  # Hebrew, right to left by itself
        "\u0645\u0631\u062d\u0628\u0627",  # Arabic
        "caf\u0065\u0301",  # combining accent
        "\u0928\u092e\u0938\u094d\u200c\u0924\u0947",  # Devanagari with a zero-width non-joiner
        "a" * 100,
    ],
    ids=["emoji", "100-emoji", "zwj-family", "hebrew", "arabic", "combining", "zwnj", "100-chars"],
)
def test_unusual_but_valid_names_round_trip(client, name):
    """Valid Unicode is stored exactly: length counts code points, joiners stay."""
    sent = f"  {name}  " if len(name) <= 96 else name  # surrounding space is trimmed
    created = client.post("/api/projects", json={"name": sent})
    assert created.status_code == 201, created.json
    assert created.json["name"] == name
    assert client.get(f"/api/projects/{created.json['id']}").json["name"] == name


@pytest.mark.parametrize(
    "message",
    [
        "line one\nline two\ttabbed",
        "NUL \x00 inside",
        "\x1b[31mred\x1b[0m",
        "\u202eevil",
        "\U0001f4a5",
    ],
)
def test_free_text_keeps_control_characters_exactly(client, world, message):
    body = log_body(project_id=world["pid"], service_id=world["sid"], message=message)
    created = client.post("/api/logs", json=body)
    assert created.status_code == 201, created.json
    assert client.get(f"/api/logs/{created.json['id']}").json["message"] == message


# --- regression tests for what `make fuzz` found --------------------------------------


def spec(client) -> dict:
    return client.get("/openapi.json").json


def schema_of(client, name: str) -> dict:
    return spec(client)["components"]["schemas"][name]


def test_fuzz_year_below_1000_is_four_digits_in_responses(client, world):
    # Found: "0140-02-02T21:11:38.4Z" in was "140-02-02T21:11:38.400Z" out, not RFC 3339.
    response = client.patch(
        f"/api/services/{world['sid']}", json={"last_deployment": "0140-02-02T21:11:38.4Z"}
    )
    assert response.status_code == 200, response.json
    assert response.json["last_deployment"] == "0140-02-02T21:11:38.400Z"
    from datetime import datetime

    assert format_time(datetime(1, 1, 1)) == "0001-01-01T00:00:00.000Z"


def test_fuzz_length_limits_count_the_white_space_that_is_trimmed(client):
    # Found: 4 spaces + 100 characters passed `maxLength: 100` (checked after trimming).
    too_long = client.post("/api/projects", json={"name": "    " + "n" * 100})
    assert too_long.status_code == 422
    fits = client.post("/api/projects", json={"name": "  " + "n" * 96 + "  "})
    assert fits.status_code == 201
    assert fits.json["name"] == "n" * 96


def _doc_matches(pattern: str, value: str) -> bool:
    return re.search(pattern, value) is not None


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("http://localhost:8080", True),
        ("HTTPS://api.example/v1?x=1#top", True),
        ("  http://svc:3000/health\n", True),
        ("http://host/\u00e9t\u00e9", True),
        ("", False),
        ("ftp://host", False),
        ("not a url", False),
        ("http://", False),
        ("http:///path", False),
        ("http://a b", False),
        ("http://a\x85b", False),  # NEL: white space to Python, not to ECMA-262's \s
        ("http://a\ufeffb", True),  # BOM: white space to ECMA-262's \s, not to Python
        ("javascript:alert(1)", False),
    ],
)
def test_fuzz_url_accepted_exactly_when_the_documented_pattern_matches(
    client, world, value, accepted
):
    # Found: "" and other strings were schema-valid (`format: url` constrains nothing)
    # but refused; then NEL (U+0085) read as white space by Python and not by ECMA `\s`.
    pattern = schema_of(client, "Service")["properties"]["url"]["pattern"]
    assert pattern == URL_PATTERN
    assert "\\s" not in pattern
    assert "\\S" not in pattern
    assert _doc_matches(pattern, value) is accepted
    response = client.patch(f"/api/services/{world['sid']}", json={"url": value})
    assert response.status_code == (200 if accepted else 422), response.json


@pytest.mark.parametrize(
    ("tag", "accepted"),
    [
        ("Web", True),
        ("  api-v2 \n", True),
        ("a.b_c-d", True),
        ("\u212a8s", False),
        ("", False),
        ("a b", False),
        ("t" * 51, False),
        ("\u00e9t\u00e9", False),
    ],
)
def test_fuzz_tags_accepted_exactly_when_the_documented_pattern_matches(client, tag, accepted):
    # Found while fixing: tags were checked after lower-casing, so the Kelvin sign
    # (U+212A, which lower-cases to "k") passed a documented pattern of ASCII letters.
    items = schema_of(client, "Project")["properties"]["tags"]["items"]
    assert items["pattern"] == TAG_PATTERN
    assert _doc_matches(TAG_PATTERN, tag) is accepted
    response = client.post("/api/projects", json={"name": "p", "tags": [tag]})
    assert response.status_code == (201 if accepted else 422), response.json
    if accepted:
        assert response.json["tags"] == [tag.strip().lower()]


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("ok", True),
        ("  spaced out  ", True),
        ("\u3000wide\u3000", True),
        ("a\u200db", True),
        ("", False),
        (" \u00a0 ", False),
        ("a\x00", False),
        ("a\tb", False),
        ("a\u202eb", False),
        ("\u200b", False),
        ("\ufeffa", False),
        ("a\u2028b", False),
        ("\x85a", True),
        ("a\x85b", False),
    ],
)
def test_names_accepted_exactly_when_the_documented_pattern_matches(client, name, accepted):
    pattern = schema_of(client, "Project")["properties"]["name"]["pattern"]
    assert pattern == NAME_PATTERN
    assert _doc_matches(pattern, name) is accepted
    response = client.post("/api/projects", json={"name": name})
    assert response.status_code == (201 if accepted else 422), response.json


def test_documented_white_space_is_exactly_what_is_trimmed():
    space = re.compile(f"[{WS}]")
    for code in range(0x110000):
        char = chr(code)
        assert bool(space.fullmatch(char)) is char.isspace(), hex(code)


def test_fuzz_attributes_are_documented_as_what_is_accepted(client, world):
    # Found: values were documented as anything (`{"nullable": true}`), the key count as
    # `maxLength` (a string keyword); {"a": {}} was schema-valid and refused.
    attributes = schema_of(client, "LogEntry")["properties"]["attributes"]
    assert attributes["maxProperties"] == 32
    assert "maxLength" not in attributes
    kinds = [choice["type"] for choice in attributes["additionalProperties"]["anyOf"]]
    assert kinds == ["string", "number", "boolean"]
    assert attributes["additionalProperties"]["nullable"] is True
    body = log_body(project_id=world["pid"], service_id=world["sid"])
    ok = client.post(
        "/api/logs",
        json={
            **body,
            "attributes": {
                "max": 2**63 - 1,
                "min": -(2**63),
                "f": 9.2e18,
                "t": True,
                "n": None,
                "s": "x",
            },
        },
    )
    assert ok.status_code == 201, ok.json
    # 1e19 as a float is as far out of 64-bit range as the integer 10**19: both refused.
    for value in (10**19, 1e19, -1e19):
        response = client.post("/api/logs", json={**body, "attributes": {"v": value}})
        assert response.status_code == 422


def test_fuzz_step_pattern_is_exactly_the_accepted_steps():
    # Found: "0d" and "2d" matched the documented `^(\d+)(s|m|h|d)$` and got a 422; and
    # "\u0661\u0660s" (Arabic-Indic digits) was taken for 10s.
    step, pattern = Step(), re.compile(STEP_PATTERN)
    samples = [
        f"{n}{unit}"
        for unit in "smhd"
        for n in (0, 1, 9, 10, 24, 25, 59, 60, 1440, 1441, 86400, 86401, 100000)
    ] + ["010s", " 5m ", "5m\n", "\u0661\u0660s", "5", "m", "-5m"]
    for sample in samples:
        try:
            step.deserialize(sample)
            accepted = True
        except ValidationError:
            accepted = False
        assert bool(pattern.search(sample)) is accepted, sample


def test_fuzz_series_step_out_of_range_is_422_and_documented(client, world):
    series = spec(client)["paths"]["/api/metrics/cpu/{metric_id}/series"]["get"]
    documented = next(p for p in series["parameters"] if p["name"] == "step")
    assert documented["schema"]["pattern"] == STEP_PATTERN
    for bad in ("0d", "2d", "9s", "\u0661\u0660s"):
        response = client.get(f"/api/metrics/cpu/{world['mid']}/series", query_string={"step": bad})
        assert_error_shape(response, 422)
    response = client.get(f"/api/metrics/cpu/{world['mid']}/series", query_string={"step": "1d"})
    assert response.status_code == 200


def test_fuzz_request_bodies_document_their_array_limits(client):
    # Found: POST /api/logs/batch with [] was schema-valid (no minItems) and refused;
    # POST .../data was documented as one point only.
    paths = spec(client)["paths"]
    batch = paths["/api/logs/batch"]["post"]["requestBody"]["content"]["application/json"]
    assert batch["schema"]["minItems"] == 1
    assert batch["schema"]["maxItems"] == 1000
    data = paths["/api/metrics/cpu/{metric_id}/data"]["post"]["requestBody"]["content"]
    choices = data["application/json"]["schema"]["oneOf"]
    assert choices[0] == {"$ref": "#/components/schemas/Point"}
    assert choices[1]["type"] == "array"
    assert choices[1]["minItems"] == 1
    assert choices[1]["maxItems"] == 10000


def test_fuzz_x_pagination_is_documented_as_a_json_object(client, world):
    # Found: documented as a `schema` of type object (the `simple` style: "total,3,..."),
    # while the header carries JSON.
    header = spec(client)["components"]["headers"]["PAGINATION"]
    assert "schema" not in header
    assert header["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PaginationMetadata"
    }
    response = client.get("/api/projects")
    assert set(json.loads(response.headers["X-Pagination"])) >= {"total", "page"}


def test_fuzz_405_lists_the_allowed_methods(client, world):
    # Found: TRACE answered 405 without the `Allow` header RFC 9110 requires.
    response = client.open(f"/api/projects/{world['pid']}", method="TRACE")
    assert_error_shape(response, 405)
    assert set(response.headers["Allow"].split(", ")) == {
        "DELETE",
        "GET",
        "HEAD",
        "OPTIONS",
        "PATCH",
        "PUT",
    }


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (nested(DEEP), "nested too deeply"),
        ('{"name": "a", "name": "b"}', "duplicate key 'name'"),
        ('{"port": 1' + "0" * 5000 + "}", "4300 digits"),
        (b'{"name": "\xff"}', "not UTF-8"),
    ],
)
def test_table_finding_strict_json_parser_names_the_problem(client, body, reason):
    # Found by this table: 10,000 levels of nesting raised RecursionError (a 500), and an
    # integer of 5000 digits a bare ValueError (a 500); duplicate keys kept the last one.
    response = client.post("/api/projects", data=body, content_type="application/json")
    assert_error_shape(response, 400)
    assert response.json["message"] == "Malformed JSON body."
    assert reason in response.json["errors"]["json"][0]


def test_fuzz_a_body_is_documented_as_required_only_when_it_is(client, world):
    # Found: PUT/PATCH documented `requestBody.required: true`, yet without a body they
    # change nothing and answer 200 (as `{}` does); POST without a body is a 422.
    paths = spec(client)["paths"]
    for path, method in (("/api/projects/{project_id}", "patch"),
                         ("/api/services/{service_id}", "put"),
                         ("/api/logs/{log_id}", "patch"),
                         ("/api/metrics/cpu/{metric_id}", "put")):  # fmt: skip
        assert paths[path][method]["requestBody"]["required"] is False, (method, path)
    for path in ("/api/projects/", "/api/logs/batch", "/api/metrics/cpu/{metric_id}/data"):
        assert paths[path]["post"]["requestBody"]["required"] is True, path
    before = client.get(f"/api/projects/{world['pid']}").json
    response = client.patch(f"/api/projects/{world['pid']}")
    assert response.status_code == 200
    assert response.json == before
    assert_error_shape(client.post("/api/projects"), 422)


def test_fuzz_tag_limit_counts_the_tags_as_sent(client):
    # Found: 25 tags with repeats passed `maxItems: 20` (counted after dropping repeats).
    response = client.post("/api/projects", json={"name": "p", "tags": ["a", "A"] * 11})
    assert_error_shape(response, 422)
    fits = client.post("/api/projects", json={"name": "p", "tags": ["a", "A"] * 10})
    assert fits.status_code == 201
    assert fits.json["tags"] == ["a"]


def test_fuzz_every_parameter_is_in_an_openapi_location(client):
    # Found: the login's fields were documented as parameters `in: json_or_form`, which
    # is no OpenAPI location, so its body counted as optional (an empty POST is a 422).
    document = spec(client)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                if "$ref" in parameter:
                    name = parameter["$ref"].rsplit("/", 1)[-1]
                    parameter = document["components"]["parameters"][name]
                where = parameter.get("in")
                assert where in {"query", "header", "path", "cookie"}, (method, path, parameter)
    login = document["paths"]["/api/auth/login"]["post"]["requestBody"]
    assert login["required"] is True
    assert set(login["content"]) == {"application/json", "application/x-www-form-urlencoded"}


def test_fuzz_an_api_key_not_revoked_conforms_to_its_schema(client, world):
    # Found: `revoked_at` is null until a key is revoked; the schema did not allow null.
    revoked_at = schema_of(client, "ApiKey")["properties"]["revoked_at"]
    assert revoked_at["nullable"] is True
    created = client.post(f"/api/projects/{world['pid']}/keys", json={"name": "ci"})
    assert created.status_code == 201, created.json
    assert created.json["revoked_at"] is None
