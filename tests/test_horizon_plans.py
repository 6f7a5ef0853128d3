"""Log lists filtered by several severities, or by ``min_severity``, with the retention
horizon on (issue 9): served from an index on SecantusDB, and still right.

SecantusDB serves ``project_id = x, level $in [...], timestamp >= cut`` by fetching every
row of the horizon (its planner takes the compound index only for equalities followed
by one range), and a ``hint()`` walks the whole index.  So several levels with a time
range are one query per level (``level = n``: the compound index, exact), merged by
``logs.LevelsMerged``; where another filter rules the compound index out, the narrowest
equality comes first in the filter (the clause SecantusDB then looks up).

On the wire run the planner is asked (``explain``): each query scans an index and
examines only the rows it returns.  On every run the lists are compared with the rows
computed here, at the service layer and through the HTTP API (auth on).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from bson import ObjectId

from polymicro.common import clock
from polymicro.logs import service as logs
from polymicro.logs.models import SEVERITIES, SEVERITY_LEVEL, LogEntry
from tests.conftest import USES_REAL_DB, client_as
from tests.log_helpers import plain_query

DAYS = 30


@pytest.fixture
def rows(app, client):
    """Two projects of two services each; 160 logs of every level, 120 inside the
    30-day horizon and 40 older (not yet deleted: the TTL index runs later)."""
    app.config["RETENTION_LOGS_DAYS"] = DAYS
    made = []
    projects = []
    with app.app_context():
        LogEntry.ensure_indexes()
        now = clock.now()
        for p in range(2):
            project = client.post("/api/projects", json={"name": f"P{p}"}).json
            services = [
                client.post(
                    "/api/services", json={"project_id": project["id"], "name": f"s{s}"}
                ).json
                for s in range(2)
            ]
            projects.append({"project": project, "services": services})
            for i in range(80):
                old = i % 4 == 3  # a quarter beyond the horizon
                age = timedelta(days=DAYS + 1 + i % 5) if old else timedelta(hours=i, minutes=7)
                severity = SEVERITIES[(i * 3 + p) % len(SEVERITIES)]
                made.append(
                    {
                        "_id": ObjectId(),
                        "project_id": ObjectId(project["id"]),
                        "service_id": ObjectId(services[i % 2]["id"]),
                        "severity": severity,
                        "level": SEVERITY_LEVEL[severity],
                        "message": f"m{i}",
                        "timestamp": (now - age).replace(microsecond=0),
                        # two rows of a project share each second: the order needs the id
                    }
                )
            made[-1]["timestamp"] = made[-2]["timestamp"]
        LogEntry._get_collection().insert_many(made)
    return {"rows": made, "projects": projects}


def _expected(made, cut, *, project=None, service=None, levels=None, since=None):
    keep = [
        row
        for row in made
        if row["timestamp"] >= cut
        and (project is None or row["project_id"] == ObjectId(project))
        and (service is None or row["service_id"] == ObjectId(service))
        and (levels is None or row["level"] in levels)
        and (since is None or row["timestamp"] >= since)
    ]
    keep.sort(key=lambda row: (row["timestamp"], row["_id"]), reverse=True)
    return [str(row["_id"]) for row in keep]


def _levels(names):
    return {SEVERITY_LEVEL[name] for name in names}


MULTI = [
    ("project-two", {"severity": ["error", "critical"]}, True),
    ("project-three", {"severity": ["warn", "error", "critical"]}, True),
    ("project-min", {"min_severity": "warn"}, True),
    (
        "project-min-and-three",
        {"severity": ["debug", "error", "critical"], "min_severity": "warn"},
        True,
    ),
    ("all-two", {"severity": ["error", "critical"]}, False),
    ("all-min", {"min_severity": "error"}, False),
]


def _filters(case, data):
    _, filters, scoped = case
    return {
        **filters,
        **({"project_id": ObjectId(data["projects"][0]["project"]["id"])} if scoped else {}),
    }


def _expected_levels(filters):
    names = filters.get("severity") or SEVERITIES
    lowest = SEVERITY_LEVEL[filters.get("min_severity") or "debug"]
    return {level for level in _levels(names) if level >= lowest}


@pytest.mark.parametrize("case", MULTI, ids=[c[0] for c in MULTI])
def test_several_levels_with_the_horizon_are_one_indexed_query_per_level(app, rows, case):
    filters = _filters(case, rows)
    with app.app_context():
        query = logs.list_logs(**filters).query
        assert isinstance(query, logs.LevelsMerged)
        levels = _expected_levels(filters)
        assert len(query.parts) == len(levels)
        for part, level in zip(query.parts, sorted(levels, reverse=True), strict=True):
            match = part._query
            assert match["level"] == level  # an equality, not {"$in": [...]} nor $gte
            assert "$gt" in match["timestamp"]  # the horizon (see logs._query: not $gte)
            assert list(match) == [
                *(["project_id"] if "project_id" in filters else []),
                "level",
                "timestamp",
            ]
            if USES_REAL_DB:
                plan = part._cursor.limit(50).explain()
                stage = plan["queryPlanner"]["winningPlan"]
                while stage.get("stage") != "IXSCAN":
                    assert stage.get("stage") != "COLLSCAN", plan
                    stage = stage["inputStage"]
                expected_index = ["project_id", "level"] if "project_id" in filters else ["level"]
                assert list(stage["keyPattern"])[: len(expected_index) + 1] == [
                    *expected_index,
                    "timestamp",
                ]
                stats = plan["executionStats"]
                # Only the rows of that level inside the horizon are examined.
                assert stats["totalDocsExamined"] == stats["nReturned"] == part.count(), stats


@pytest.mark.parametrize("case", MULTI, ids=[c[0] for c in MULTI])
def test_several_levels_with_the_horizon_list_the_right_rows(app, rows, case):
    """Service layer: the merged lists give the rows, order, count and pages a single
    query would (newest first, the id breaking ties), with nothing past the horizon."""
    filters = _filters(case, rows)
    with app.app_context():
        cut = logs.retention.horizon(logs.RETENTION)
        expected = _expected(
            rows["rows"],
            cut,
            project=filters.get("project_id"),
            levels=_expected_levels(filters),
        )
        assert expected  # the data has rows of these levels
        listed = logs.list_logs(**filters)
        assert listed.count() == len(expected)
        assert [str(row["id"]) for row in listed[0 : len(expected)]] == expected
        for start, stop in [(0, 3), (3, 7), (5, 6), (len(expected) - 2, len(expected) + 5)]:
            page = plain_query(**filters)[start:stop]
            assert [str(row["id"]) for row in page] == expected[start:stop]


def _ids(response):
    assert response.status_code == 200, response.json
    return [row["id"] for row in response.json]


API = [
    (
        "filtered-two",
        "/api/logs?project_id={p}&severity=error&severity=critical",
        ["error", "critical"],
    ),
    ("filtered-min", "/api/logs?project_id={p}&min_severity=warn", ["warn", "error", "critical"]),
    ("project-two", "/api/logs/project/{p}?severity=ERROR&severity=fatal", ["error", "critical"]),
    ("project-min", "/api/logs/project/{p}?min_severity=warning", ["warn", "error", "critical"]),
    ("service-two", "/api/logs/service/{s}?severity=warn&severity=info", ["warn", "info"]),
    ("service-min", "/api/logs/service/{s}?min_severity=error", ["error", "critical"]),
    ("all-min", "/api/logs?min_severity=error", ["error", "critical"]),
]


@pytest.mark.parametrize("case", API, ids=[c[0] for c in API])
def test_through_the_api_the_lists_stay_right(app, rows, case):
    """As a viewer (auth on): every page of each list, its total, and the same list
    again (served from the response cache)."""
    _, path, names = case
    target = rows["projects"][1]
    path = path.format(p=target["project"]["id"], s=target["services"][0]["id"])
    with app.app_context():
        cut = logs.retention.horizon(logs.RETENTION)
    expected = _expected(
        rows["rows"],
        cut,
        project=None if "/api/logs?min" in path else target["project"]["id"],
        service=target["services"][0]["id"] if "/service/" in path else None,
        levels=_levels(names),
    )
    assert expected
    viewer = client_as(app, "viewer")
    sep = "&" if "?" in path else "?"
    seen = []
    pages = -(-len(expected) // 7)
    for page in range(1, pages + 1):
        response = viewer.get(f"{path}{sep}page={page}&page_size=7")
        assert json.loads(response.headers["X-Pagination"])["total"] == len(expected)
        seen += _ids(response)
    assert seen == expected
    assert _ids(viewer.get(path)) == expected
    assert _ids(viewer.get(path)) == expected  # cached


def test_since_older_than_the_horizon_does_not_show_what_retention_hides(app, rows):
    """``since`` before the horizon used to replace it in the query (two ``$gte`` on one
    field: the last one won) and showed rows past retention; the later bound wins."""
    project = rows["projects"][0]["project"]["id"]
    viewer = client_as(app, "viewer")
    with app.app_context():
        cut = logs.retention.horizon(logs.RETENTION)
        since = cut - timedelta(days=10)
    expected = _expected(rows["rows"], cut, project=project, since=since)
    stamp = since.isoformat() + "Z"
    for path in (
        f"/api/logs/project/{project}?since={stamp}",
        f"/api/logs/project/{project}?since={stamp}&severity=error&severity=debug",
    ):
        got = _ids(viewer.get(path.replace("+", "%2B")))
        wanted = expected
        if "severity" in path:
            keep = {
                str(r["_id"]) for r in rows["rows"] if r["level"] in _levels(["error", "debug"])
            }
            wanted = [i for i in expected if i in keep]
        assert got == wanted
        assert wanted


NARROWEST = [
    ({"service_id": ObjectId(), "severity": ["error", "warn"]}, "service_id"),
    ({"service_id": ObjectId(), "severity": ["error"]}, "service_id"),
    ({"project_id": ObjectId(), "service_id": ObjectId(), "min_severity": "warn"}, "service_id"),
    ({"project_id": ObjectId(), "source": "a", "severity": ["error", "warn"]}, "source"),
    ({"project_id": ObjectId(), "q": "boom", "severity": ["error", "warn"]}, "project_id"),
]


@pytest.mark.parametrize(
    ("filters", "first"), NARROWEST, ids=[n[1] + str(i) for i, n in enumerate(NARROWEST)]
)
def test_with_another_filter_the_narrowest_equality_comes_first(app, filters, first):
    """No compound index serves these with the horizon; SecantusDB then looks up the
    first clause that leads an index and checks the others on each row.  That clause
    was the horizon (every row of it fetched: 7,561 of 10,000 counted); it is now the
    narrowest equality.  (``explain`` calls both a collection scan, so the order of the
    filter is what is checked.)"""
    app.config["RETENTION_LOGS_DAYS"] = DAYS
    with app.app_context():
        query = logs.list_logs(**filters).query
        assert not isinstance(query, logs.LevelsMerged)
        assert next(iter(query.queryset._query)) == first
        assert "$gt" in query.queryset._query["timestamp"]
