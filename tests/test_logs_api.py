"""Logs through the HTTP API.

Rules every JSON endpoint shares (media type, malformed JSON, a body of the wrong JSON
type) are tested once for every endpoint in ``test_hostile_inputs.py``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from polymicro.logs.models import LogEntry
from tests.factories import MISSING, created, log_body, make_service, stamp

MISSING_ID = "0123456789abcdef01234567"


@pytest.fixture
def svc(ctx):
    return make_service()


@pytest.fixture
def sibling(svc):
    """Another service of the project of ``svc``."""
    return make_service(project_id=svc.project_id)


@pytest.fixture
def other_svc(ctx):
    """A service of another project."""
    return make_service()


def post(client, svc, **fields) -> dict:
    """Create an entry of ``svc`` through the API (info, "started" unless overridden)."""
    return created(client, "/api/logs", log_body(svc, **fields))


def seed(client, svc, *entries: dict) -> list[dict]:
    return [post(client, svc, **fields) for fields in entries]


def ids(response) -> list[str]:
    assert response.status_code == 200, response.json
    return [entry["id"] for entry in response.json]


class TestCreate:
    def test_returns_the_entry_with_defaults(self, client, svc):
        before = datetime.now(UTC).replace(tzinfo=None)
        body = post(client, svc, message="  hello  ", severity="INFO")
        after = datetime.now(UTC).replace(tzinfo=None)
        assert list(body) == [
            "id",
            "project_id",
            "service_id",
            "severity",
            "message",
            "timestamp",
            "source",
            "test_id",
            "func_id",
            "attributes",
        ]
        assert body["project_id"] == str(svc.project_id)
        assert body["service_id"] == str(svc.id)
        assert body["severity"] == "info"
        assert body["message"] == "hello"
        assert body["attributes"] == {}
        assert body["source"] is None
        assert body["timestamp"].endswith("Z")
        stamp = datetime.strptime(body["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
        assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= stamp <= after
        assert client.get(f"/api/logs/{body['id']}").json == body
        assert client.get("/api/logs").json == [body]
        assert client.get("/api/logs/").json == [body]

    @pytest.mark.parametrize(
        ("given", "stored"),
        [
            ("debug", "debug"),
            ("Info", "info"),
            ("WARN", "warn"),
            ("warning", "warn"),
            ("Warning", "warn"),
            ("error", "error"),
            ("critical", "critical"),
            ("FATAL", "critical"),
            (" error ", "error"),
        ],
    )
    def test_severity_is_case_insensitive_with_aliases(self, client, svc, given, stored):
        assert post(client, svc, severity=given)["severity"] == stored

    def test_stores_the_numeric_level(self, client, svc):
        body = post(client, svc, severity="Fatal")
        assert LogEntry.objects.get(id=body["id"]).level == 4

    def test_optional_fields_are_trimmed_and_kept(self, client, svc):
        body = post(
            client,
            svc,
            timestamp="2026-11-26T12:10:47.123456+02:00",
            source=" pytest ",
            test_id=" t-1 ",
            func_id=" f ",
            attributes={"trace": "abc", "n": 3, "ratio": 0.5, "ok": True, "none": None},
        )
        assert body["timestamp"] == "2026-11-26T10:10:47.123Z"
        assert (body["source"], body["test_id"], body["func_id"]) == ("pytest", "t-1", "f")
        assert body["attributes"] == {
            "trace": "abc",
            "n": 3,
            "ratio": 0.5,
            "ok": True,
            "none": None,
        }
        assert client.get(f"/api/logs/{body['id']}").json == body

    def test_limits_are_inclusive(self, client, svc):
        body = post(
            client,
            svc,
            message="m" * 16384,
            source="s" * 256,
            attributes={
                **{f"k{i}": i for i in range(31)},
                "k" * 64: "v" * 1024,
            },
        )
        assert len(body["message"]) == 16384
        assert len(body["attributes"]) == 32
        big = post(client, svc, attributes={"max": 2**63 - 1, "min": -(2**63)})
        assert big["attributes"] == {"max": 2**63 - 1, "min": -(2**63)}

    def test_naive_and_space_separated_times_are_utc(self, client, svc):
        assert post(client, svc, timestamp="2026-11-26 18:10:47")["timestamp"] == (
            "2026-11-26T18:10:47.000Z"
        )
        assert post(client, svc, timestamp="2026-11-26T18:10:47.5")["timestamp"] == (
            "2026-11-26T18:10:47.500Z"
        )


INVALID_BODIES = [
    ("missing project_id", {"project_id": MISSING}, "project_id"),
    ("missing service_id", {"service_id": MISSING}, "service_id"),
    ("missing severity", {"severity": MISSING}, "severity"),
    ("missing message", {"message": MISSING}, "message"),
    ("empty message", {"message": ""}, "message"),
    ("blank message", {"message": "   "}, "message"),
    ("overlong message", {"message": "m" * 16385}, "message"),
    ("message not a string", {"message": 12}, "message"),
    ("message huge int", {"message": 2**64}, "message"),
    ("message null", {"message": None}, "message"),
    ("message lone surrogate", {"message": "bad \ud800 text"}, "message"),
    ("bad severity", {"severity": "loud"}, "severity"),
    ("severity not a string", {"severity": 3}, "severity"),
    ("bad time", {"timestamp": "yesterday"}, "timestamp"),
    ("time as a number", {"timestamp": 1764151847}, "timestamp"),
    ("impossible date", {"timestamp": "2026-02-30T00:00:00Z"}, "timestamp"),
    ("malformed project_id", {"project_id": "xyz"}, "project_id"),
    ("project_id not a string", {"project_id": 12}, "project_id"),
    ("malformed service_id", {"service_id": "0123"}, "service_id"),
    ("unknown project", {"project_id": MISSING_ID}, "project_id"),
    ("unknown service", {"service_id": MISSING_ID}, "service_id"),
    ("service of another project", {"service_id": "<other>"}, "service_id"),
    ("unknown field", {"level": 3}, "level"),
    ("overlong source", {"source": "s" * 257}, "source"),
    ("overlong test_id", {"test_id": "t" * 257}, "test_id"),
    ("overlong func_id", {"func_id": "f" * 257}, "func_id"),
    ("source not a string", {"source": ["a"]}, "source"),
    ("attributes not an object", {"attributes": ["a"]}, "attributes"),
    ("attribute key $x", {"attributes": {"$x": 1}}, "attributes"),
    ("attribute key a.b", {"attributes": {"a.b": 1}}, "attributes"),
    ("attribute key with NUL", {"attributes": {"a\x00b": 1}}, "attributes"),
    ("empty attribute key", {"attributes": {"": 1}}, "attributes"),
    ("overlong attribute key", {"attributes": {"k" * 65: 1}}, "attributes"),
    ("nested object value", {"attributes": {"a": {"b": 1}}}, "attributes"),
    ("array value", {"attributes": {"a": [1, 2]}}, "attributes"),
    ("overlong text value", {"attributes": {"a": "v" * 1025}}, "attributes"),
    ("too many attributes", {"attributes": {f"k{i}": i for i in range(33)}}, "attributes"),
    ("int above 2**63", {"attributes": {"n": 2**63}}, "attributes"),
    ("int below -2**63", {"attributes": {"n": -(2**63) - 1}}, "attributes"),
    ("huge int", {"attributes": {"n": 10**40}}, "attributes"),
    ("NaN value", {"attributes": {"n": float("nan")}}, "attributes"),
    ("infinite value", {"attributes": {"n": float("inf")}}, "attributes"),
]


class TestCreateValidation:
    @pytest.mark.parametrize(
        ("overrides", "field"),
        [pytest.param(o, f, id=name) for name, o, f in INVALID_BODIES],
    )
    def test_invalid_body_is_422_and_stores_nothing(self, client, svc, other_svc, overrides, field):
        overrides = {k: str(other_svc.id) if v == "<other>" else v for k, v in overrides.items()}
        response = client.post("/api/logs", json=log_body(svc, **overrides))
        assert response.status_code == 422, response.json
        assert response.json["code"] == 422
        assert field in response.json["errors"]["json"]
        assert LogEntry.objects.count() == 0

    def test_huge_number_in_raw_json_is_422(self, client, svc):
        raw = json.dumps(log_body(svc))[:-1] + ', "attributes": {"n": 1e400}}'
        response = client.post("/api/logs", data=raw, content_type="application/json")
        assert response.status_code == 422
        assert "attributes" in response.json["errors"]["json"]
        assert LogEntry.objects.count() == 0

    def test_a_bad_key_names_the_key(self, client, svc):
        response = client.post("/api/logs", json=log_body(svc, attributes={"a.b": 1, "ok": 2}))
        assert response.status_code == 422
        assert list(response.json["errors"]["json"]["attributes"]) == ["a.b"]


def valid_batch(svc, n: int) -> list[dict]:
    return [log_body(svc, message=f"line {i}") for i in range(n)]


class TestBatch:
    def test_stores_all_and_returns_ids_in_input_order(self, client, svc):
        entries = valid_batch(svc, 3)
        entries[1]["severity"] = "warning"
        response = client.post("/api/logs/batch", json=entries)
        assert response.status_code == 201, response.json
        assert response.json["inserted"] == 3
        assert len(response.json["ids"]) == 3
        messages = [client.get(f"/api/logs/{i}").json["message"] for i in response.json["ids"]]
        assert messages == ["line 0", "line 1", "line 2"]
        assert client.get(f"/api/logs/{response.json['ids'][1]}").json["severity"] == "warn"
        assert LogEntry.objects.get(id=response.json["ids"][1]).level == 2
        assert LogEntry.objects.count() == 3

    def test_trailing_slash_is_not_needed(self, client, svc):
        response = client.post("/api/logs/batch/", json=valid_batch(svc, 1))
        assert response.status_code == 201
        assert LogEntry.objects.count() == 1

    def test_1000_entries_are_accepted(self, client, svc):
        response = client.post("/api/logs/batch", json=valid_batch(svc, 1000))
        assert response.status_code == 201, response.json
        assert response.json["inserted"] == 1000
        assert len(set(response.json["ids"])) == 1000
        assert LogEntry.objects.count() == 1000

    def test_1001_entries_are_422(self, client, svc):
        response = client.post("/api/logs/batch", json=valid_batch(svc, 1001))
        assert response.status_code == 422
        assert "_schema" in response.json["errors"]["json"]
        assert LogEntry.objects.count() == 0

    def test_empty_array_is_422(self, client, svc):
        response = client.post("/api/logs/batch", json=[])
        assert response.status_code == 422
        assert LogEntry.objects.count() == 0

    @pytest.mark.parametrize("index", [0, 3, 9])
    def test_one_invalid_entry_stores_nothing_and_names_its_index(self, client, svc, index):
        entries = valid_batch(svc, 10)
        entries[index]["message"] = ""
        response = client.post("/api/logs/batch", json=entries)
        assert response.status_code == 422
        assert response.json["errors"]["json"] == {
            str(index): {"message": ["Length must be between 1 and 16384."]}
        }
        assert LogEntry.objects.count() == 0

    def test_every_bad_reference_is_named_and_nothing_is_stored(self, client, svc, other_svc):
        entries = valid_batch(svc, 6)
        entries[1]["service_id"] = str(other_svc.id)  # service of another project
        entries[3]["project_id"] = MISSING_ID
        entries[4]["service_id"] = MISSING_ID
        response = client.post("/api/logs/batch", json=entries)
        assert response.status_code == 422
        errors = response.json["errors"]["json"]
        assert set(errors) == {"1", "3", "4"}
        assert list(errors["1"]) == ["service_id"]
        assert list(errors["3"]) == ["project_id"]
        assert list(errors["4"]) == ["service_id"]
        assert LogEntry.objects.count() == 0

    def test_schema_errors_of_several_entries_are_all_named(self, client, svc):
        entries = valid_batch(svc, 4)
        entries[0]["severity"] = "loud"
        entries[2]["attributes"] = {"$where": 1}
        entries[3]["extra"] = True
        response = client.post("/api/logs/batch", json=entries)
        assert response.status_code == 422
        errors = response.json["errors"]["json"]
        assert set(errors) == {"0", "2", "3"}
        assert "severity" in errors["0"]
        assert "attributes" in errors["2"]
        assert "extra" in errors["3"]
        assert LogEntry.objects.count() == 0

    def test_entries_of_several_services_and_projects(self, client, svc, other_svc):
        entries = [log_body(svc), log_body(other_svc), log_body(svc, severity="fatal")]
        response = client.post("/api/logs/batch", json=entries)
        assert response.status_code == 201
        assert len(ids(client.get(f"/api/logs/service/{svc.id}"))) == 2
        assert len(ids(client.get(f"/api/logs/service/{other_svc.id}"))) == 1


class TestListOrderAndPages:
    def test_newest_first_across_pages(self, client, svc):
        made = seed(
            client,
            svc,
            {"timestamp": stamp(3)},
            {"timestamp": stamp(1)},
            {"timestamp": stamp(5)},
            {"timestamp": stamp(2)},
            {"timestamp": stamp(2)},  # same time: the later id comes first
            {"timestamp": stamp(4)},
            {"timestamp": stamp(0)},
        )
        expected = [
            made[2]["id"],
            made[5]["id"],
            made[0]["id"],
            made[4]["id"],
            made[3]["id"],
            made[1]["id"],
            made[6]["id"],
        ]
        seen = []
        for page in range(1, 5):
            response = client.get(f"/api/logs?page={page}&page_size=2")
            assert response.status_code == 200
            pagination = json.loads(response.headers["X-Pagination"])
            assert pagination["total"] == 7
            assert pagination["total_pages"] == 4
            assert pagination["page"] == page
            assert pagination["first_page"] == 1
            assert pagination["last_page"] == 4
            if page < 4:
                assert pagination["next_page"] == page + 1
            else:
                assert "next_page" not in pagination
            seen += ids(response)
        assert seen == expected
        assert ids(client.get("/api/logs")) == expected

    def test_page_past_the_end_is_empty(self, client, svc):
        seed(client, svc, {}, {})
        response = client.get("/api/logs?page=5&page_size=1")
        assert response.status_code == 200
        assert response.json == []
        assert json.loads(response.headers["X-Pagination"])["total"] == 2

    @pytest.mark.parametrize("query", ["page=0", "page_size=0", "page_size=1001", "page=x"])
    def test_bad_paging_is_422(self, client, query):
        assert client.get(f"/api/logs?{query}").status_code == 422


@pytest.fixture
def levels(client, svc):
    """One entry per severity, oldest = debug … newest = critical."""
    made = seed(
        client,
        svc,
        {"severity": "debug", "timestamp": stamp(0)},
        {"severity": "info", "timestamp": stamp(1)},
        {"severity": "warn", "timestamp": stamp(2)},
        {"severity": "error", "timestamp": stamp(3)},
        {"severity": "critical", "timestamp": stamp(4)},
    )
    return {entry["severity"]: entry["id"] for entry in made}


class TestFilters:
    def test_project_and_service(self, client, svc, sibling, other_svc):
        own = post(client, svc)["id"]
        sib = post(client, sibling)["id"]
        other = post(client, other_svc)["id"]
        assert set(ids(client.get(f"/api/logs?project_id={svc.project_id}"))) == {own, sib}
        assert ids(client.get(f"/api/logs?service_id={svc.id}")) == [own]
        assert ids(client.get(f"/api/logs?project_id={other_svc.project_id}")) == [other]
        both = f"/api/logs?project_id={svc.project_id}&service_id={sibling.id}"
        assert ids(client.get(both)) == [sib]
        mismatch = f"/api/logs?project_id={svc.project_id}&service_id={other_svc.id}"
        assert ids(client.get(mismatch)) == []

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("severity=error", ["error"]),
            ("severity=ERROR", ["error"]),
            ("severity=warning", ["warn"]),
            ("severity=fatal", ["critical"]),
            ("severity=error&severity=critical", ["critical", "error"]),
            ("severity=debug&severity=warn&severity=debug", ["warn", "debug"]),
            ("min_severity=warn", ["critical", "error", "warn"]),
            ("min_severity=Warning", ["critical", "error", "warn"]),
            ("min_severity=debug", ["critical", "error", "warn", "info", "debug"]),
            ("min_severity=critical", ["critical"]),
            ("severity=info&severity=error&min_severity=warn", ["error"]),
            ("severity=debug&min_severity=info", []),
        ],
    )
    def test_severity_and_min_severity(self, client, levels, query, expected):
        assert ids(client.get(f"/api/logs?{query}")) == [levels[s] for s in expected]

    @pytest.mark.parametrize("field", ["source", "test_id", "func_id"])
    def test_exact_match_fields(self, client, svc, field):
        a = post(client, svc, **{field: "alpha"})["id"]
        post(client, svc, **{field: "alphabet"})
        post(client, svc, **{field: "ALPHA"})
        post(client, svc)
        assert ids(client.get(f"/api/logs?{field}=alpha")) == [a]
        assert ids(client.get(f"/api/logs?{field}=%20alpha%20")) == [a]  # trimmed
        assert ids(client.get(f"/api/logs?{field}=alp")) == []

    def test_since_and_until_are_inclusive(self, client, svc):
        made = seed(client, svc, *({"timestamp": stamp(m)} for m in range(5)))
        by_minute = [entry["id"] for entry in made]
        window = f"since={stamp(1)}&until={stamp(3)}"
        assert ids(client.get(f"/api/logs?{window}")) == by_minute[3:0:-1]
        assert ids(client.get(f"/api/logs?since={stamp(3)}")) == [by_minute[4], by_minute[3]]
        assert ids(client.get(f"/api/logs?until={stamp(1)}")) == [by_minute[1], by_minute[0]]
        assert ids(client.get(f"/api/logs?since={stamp(2)}&until={stamp(2)}")) == [by_minute[2]]
        # a millisecond either side excludes the boundary entry
        just_after = f"since={stamp(2, ms=1)}&until={stamp(3)}"
        assert ids(client.get(f"/api/logs?{just_after}")) == [by_minute[3]]
        assert ids(client.get("/api/logs?until=2025-12-31T23:59:59.999Z")) == []

    def test_since_with_offset_is_converted_to_utc(self, client, svc):
        made = seed(client, svc, {"timestamp": stamp(0)}, {"timestamp": stamp(5)})
        response = client.get("/api/logs", query_string={"since": "2026-01-01T02:05:00+02:00"})
        assert ids(response) == [made[1]["id"]]

    def test_q_is_case_insensitive_contains(self, client, svc):
        hit = post(client, svc, message="Connection REFUSED by upstream")["id"]
        post(client, svc, message="all good")
        assert ids(client.get("/api/logs?q=refused")) == [hit]
        assert ids(client.get("/api/logs?q=%20refused%20by%20")) == [hit]

    @pytest.mark.parametrize(
        "needle",
        [".*[(", "\\", "a+b", "(x|y)", "^start", "end$", "[a-z]", "?", "{2}", "C:\\temp\\x"],
    )
    def test_q_matches_regex_metacharacters_literally(self, client, svc, needle):
        hit = post(client, svc, message=f"before {needle} after")["id"]
        post(client, svc, message="before plain after")
        post(client, svc, message="abbb start xy end C:/temp/x aab")
        post(client, svc, message="start of a line that ends with end")
        assert ids(client.get("/api/logs", query_string={"q": needle})) == [hit]

    def test_filters_combine(self, client, svc, other_svc):
        match = {"severity": "error", "source": "api", "message": "Timeout", "timestamp": stamp(2)}
        want = post(client, svc, **match)["id"]
        post(client, svc, **{**match, "timestamp": stamp(9)})
        post(client, svc, **{**match, "severity": "info"})
        post(client, svc, **{**match, "source": "db"})
        post(client, svc, **{**match, "message": "fine"})
        post(client, other_svc, **match)
        query = {
            "project_id": str(svc.project_id),
            "min_severity": "warn",
            "source": "api",
            "q": "timeout",
            "since": stamp(1),
            "until": stamp(3),
        }
        assert ids(client.get("/api/logs", query_string=query)) == [want]

    @pytest.mark.parametrize(
        ("query", "field"),
        [
            ("severity=loud", "severity"),
            ("severity=error&severity=loud", "severity"),
            ("min_severity=loud", "min_severity"),
            ("project_id=xyz", "project_id"),
            ("service_id=123", "service_id"),
            ("since=yesterday", "since"),
            ("until=2026-13-01", "until"),
            (f"since={stamp(5)}&until={stamp(1)}", "since"),
            ("q=a%00b", "q"),
            ("source=" + "s" * 257, "source"),
        ],
    )
    def test_bad_filter_is_422(self, client, query, field):
        response = client.get(f"/api/logs?{query}")
        assert response.status_code == 422
        assert field in response.json["errors"]["query"]

    @pytest.mark.parametrize(
        "query", ["until=0001-01-01T00:00:17.0%2B01:01", "since=9999-12-31T23:59:59-00:01"]
    )
    def test_a_time_outside_the_years_in_utc_is_a_clear_422(self, client, query):
        """A valid RFC 3339 time whose offset moves it before 0001 or after 9999 in UTC
        (found by the fuzz in CI): a 422 that says so, not 'use RFC 3339'."""
        response = client.get(f"/api/logs?{query}")
        assert response.status_code == 422
        field = query.split("=")[0]
        assert response.json["errors"]["query"][field] == [
            "A time must fall within the years 0001-9999 once converted to UTC."
        ]

    def test_a_log_stamped_outside_the_years_in_utc_is_refused(self, client, svc):
        response = client.post(
            "/api/logs", json=log_body(svc, timestamp="0001-01-01T00:00:00+00:01")
        )
        assert response.status_code == 422
        assert "timestamp" in response.json["errors"]["json"]
        assert LogEntry.objects.count() == 0

    def test_unknown_query_parameters_are_ignored(self, client, svc):
        made = post(client, svc)["id"]
        assert ids(client.get("/api/logs?colour=blue")) == [made]


class TestParentLists:
    def test_project_logs(self, client, svc, sibling, other_svc):
        older = post(client, svc, timestamp=stamp(1), severity="error")["id"]
        newer = post(client, sibling, timestamp=stamp(2), severity="info")["id"]
        post(client, other_svc)
        url = f"/api/logs/project/{svc.project_id}"
        assert ids(client.get(url)) == [newer, older]
        assert ids(client.get(f"{url}?min_severity=warn")) == [older]
        assert ids(client.get(f"{url}?service_id={sibling.id}")) == [newer]
        assert ids(client.get(f"{url}?until={stamp(1)}")) == [older]
        pagination = json.loads(client.get(f"{url}?page_size=1").headers["X-Pagination"])
        assert pagination["total"] == 2
        assert pagination["total_pages"] == 2

    def test_project_logs_ignore_a_project_id_query(self, client, svc, other_svc):
        own = post(client, svc)["id"]
        post(client, other_svc)
        url = f"/api/logs/project/{svc.project_id}?project_id={other_svc.project_id}"
        assert ids(client.get(url)) == [own]

    def test_service_logs(self, client, svc, sibling):
        first = post(client, svc, timestamp=stamp(1), source="a")["id"]
        second = post(client, svc, timestamp=stamp(2), source="b")["id"]
        post(client, sibling)
        url = f"/api/logs/service/{svc.id}"
        assert ids(client.get(url)) == [second, first]
        assert ids(client.get(f"{url}?source=a")) == [first]
        assert ids(client.get(f"{url}?q=START")) == [second, first]

    def test_parent_without_logs_is_an_empty_list(self, client, svc):
        assert ids(client.get(f"/api/logs/project/{svc.project_id}")) == []
        assert ids(client.get(f"/api/logs/service/{svc.id}")) == []

    @pytest.mark.parametrize("parent", ["project", "service"])
    @pytest.mark.parametrize("parent_id", [MISSING_ID, "nothex", "0123"])
    def test_unknown_parent_is_404(self, client, parent, parent_id):
        response = client.get(f"/api/logs/{parent}/{parent_id}")
        assert response.status_code == 404
        assert response.json["code"] == 404

    def test_bad_filter_on_parent_list_is_422(self, client, svc):
        response = client.get(f"/api/logs/service/{svc.id}?severity=loud")
        assert response.status_code == 422
        assert "severity" in response.json["errors"]["query"]


class TestItem:
    @pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
    @pytest.mark.parametrize("log_id", [MISSING_ID, "nothex", "0123", "0123456789abcdef0123456z"])
    def test_unknown_or_malformed_id_is_404(self, client, method, log_id):
        kwargs = {} if method in {"get", "delete"} else {"json": {"message": "x"}}
        response = getattr(client, method)(f"/api/logs/{log_id}", **kwargs)
        assert response.status_code == 404
        assert response.json["code"] == 404

    def test_etag_and_if_none_match(self, client, svc):
        entry = post(client, svc)
        response = client.get(f"/api/logs/{entry['id']}")
        etag = response.headers["ETag"]
        assert etag
        cached = client.get(f"/api/logs/{entry['id']}", headers={"If-None-Match": etag})
        assert cached.status_code == 304
        client.patch(f"/api/logs/{entry['id']}", json={"message": "changed"})
        fresh = client.get(f"/api/logs/{entry['id']}", headers={"If-None-Match": etag})
        assert fresh.status_code == 200
        assert fresh.headers["ETag"] != etag

    @pytest.mark.parametrize("method", ["put", "patch", "delete"])
    def test_stale_if_match_is_412_and_changes_nothing(self, client, svc, method):
        entry = post(client, svc)
        stale = client.get(f"/api/logs/{entry['id']}").headers["ETag"]
        client.patch(f"/api/logs/{entry['id']}", json={"message": "newer"})
        kwargs = {} if method == "delete" else {"json": {"message": "lost update"}}
        response = getattr(client, method)(
            f"/api/logs/{entry['id']}", headers={"If-Match": stale}, **kwargs
        )
        assert response.status_code == 412
        assert client.get(f"/api/logs/{entry['id']}").json["message"] == "newer"

    @pytest.mark.parametrize("method", ["put", "patch"])
    def test_current_if_match_is_accepted(self, client, svc, method):
        entry = post(client, svc)
        etag = client.get(f"/api/logs/{entry['id']}").headers["ETag"]
        response = getattr(client, method)(
            f"/api/logs/{entry['id']}", json={"message": "ok"}, headers={"If-Match": etag}
        )
        assert response.status_code == 200
        assert response.json["message"] == "ok"

    def test_delete_with_current_if_match(self, client, svc):
        entry = post(client, svc)
        etag = client.get(f"/api/logs/{entry['id']}").headers["ETag"]
        response = client.delete(f"/api/logs/{entry['id']}", headers={"If-Match": etag})
        assert response.status_code == 204
        assert LogEntry.objects.count() == 0


class TestUpdate:
    @pytest.mark.parametrize("method", ["put", "patch"])
    def test_partial_body_keeps_other_fields(self, client, svc, method):
        entry = post(client, svc, source="api", attributes={"a": 1}, timestamp=stamp(1))
        response = getattr(client, method)(
            f"/api/logs/{entry['id']}", json={"message": " edited ", "severity": "FATAL"}
        )
        assert response.status_code == 200, response.json
        assert response.json == {**entry, "message": "edited", "severity": "critical"}
        assert client.get(f"/api/logs/{entry['id']}").json == response.json

    def test_severity_change_moves_the_level(self, client, svc):
        entry = post(client, svc, severity="debug")
        client.patch(f"/api/logs/{entry['id']}", json={"severity": "warning"})
        assert LogEntry.objects.get(id=entry["id"]).level == 2
        assert ids(client.get("/api/logs?min_severity=warn")) == [entry["id"]]
        assert ids(client.get("/api/logs?min_severity=error")) == []

    @pytest.mark.parametrize("body", [{}, {"message": "started"}, {"severity": "INFO"}])
    def test_noop_update_is_200(self, client, svc, body):
        entry = post(client, svc)
        response = client.patch(f"/api/logs/{entry['id']}", json=body)
        assert response.status_code == 200
        assert response.json == entry

    def test_same_project_and_service_may_be_repeated(self, client, svc):
        entry = post(client, svc)
        response = client.put(
            f"/api/logs/{entry['id']}",
            json={"project_id": entry["project_id"], "service_id": entry["service_id"]},
        )
        assert response.status_code == 200
        assert response.json == entry

    def test_fields_can_be_cleared_and_replaced(self, client, svc):
        entry = post(client, svc, source="api", attributes={"a": 1})
        response = client.patch(
            f"/api/logs/{entry['id']}",
            json={"source": None, "attributes": {"b": "x"}, "timestamp": stamp(7)},
        )
        assert response.status_code == 200
        assert response.json["source"] is None
        assert response.json["attributes"] == {"b": "x"}
        assert response.json["timestamp"] == stamp(7)

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"project_id": "<other-project>"}, "project_id"),
            ({"service_id": "<other-service>"}, "service_id"),
            ({"service_id": MISSING_ID}, "service_id"),
            ({"project_id": "xyz"}, "project_id"),
            ({"message": ""}, "message"),
            ({"message": "m" * 16385}, "message"),
            ({"message": None}, "message"),
            ({"severity": "loud"}, "severity"),
            ({"severity": None}, "severity"),
            ({"timestamp": "later"}, "timestamp"),
            ({"timestamp": None}, "timestamp"),
            ({"attributes": {"a.b": 1}}, "attributes"),
            ({"attributes": {"n": 2**64}}, "attributes"),
            ({"id": MISSING_ID}, "id"),
            ({"level": 0}, "level"),
        ],
    )
    def test_invalid_update_is_422_and_changes_nothing(self, client, svc, other_svc, body, field):
        entry = post(client, svc, attributes={"a": 1})
        replacements = {
            "<other-project>": str(other_svc.project_id),
            "<other-service>": str(other_svc.id),
        }
        body = {k: replacements.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
        response = client.patch(f"/api/logs/{entry['id']}", json=body)
        assert response.status_code == 422, response.json
        assert field in response.json["errors"]["json"]
        assert client.get(f"/api/logs/{entry['id']}").json == entry
        assert LogEntry.objects.count() == 1


class TestDelete:
    def test_delete_is_204_then_404(self, client, svc):
        entry = post(client, svc)
        keep = post(client, svc)
        response = client.delete(f"/api/logs/{entry['id']}")
        assert response.status_code == 204
        assert response.data == b""
        assert client.get(f"/api/logs/{entry['id']}").status_code == 404
        assert client.delete(f"/api/logs/{entry['id']}").status_code == 404
        assert ids(client.get("/api/logs")) == [keep["id"]]

    def test_deleting_the_service_deletes_its_logs(self, client, svc, sibling):
        post(client, svc)
        post(client, svc)
        kept = post(client, sibling)["id"]
        assert client.delete(f"/api/services/{svc.id}").status_code == 204
        assert LogEntry.objects(service_id=svc.id).count() == 0
        assert ids(client.get("/api/logs")) == [kept]

    def test_deleting_the_project_deletes_its_logs(self, client, svc, sibling, other_svc):
        post(client, svc)
        post(client, sibling)
        kept = post(client, other_svc)["id"]
        assert client.delete(f"/api/projects/{svc.project_id}").status_code == 204
        assert LogEntry.objects(project_id=svc.project_id).count() == 0
        assert ids(client.get("/api/logs")) == [kept]
        assert client.get(f"/api/logs/project/{svc.project_id}").status_code == 404
