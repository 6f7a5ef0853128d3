"""Every filter and sort the API offers is served by a declared index.

On a real server (the wire run) the query planner is asked: the winning plan of each
list query must scan an index (``IXSCAN``), never the whole collection.  On mongomock,
which has no planner, the declared indexes are checked instead.  For the log lists the
query is the one ``logs.list_logs`` builds for each filter, and its index must also
serve the newest-first sort.

``q`` (text *contains*) is the one filter no index can serve: an unanchored pattern
is matched against every name or message the other filters leave (see the README).
"""

from __future__ import annotations

import pytest
from bson import ObjectId

from polymicro.alerts.delivery_models import Delivery, Receiver
from polymicro.logs import service as logs
from polymicro.logs.models import SEVERITY_LEVEL, LogEntry
from polymicro.metrics.models import CpuMetric, CpuPoint
from polymicro.projects.models import Project
from polymicro.services.models import Service
from tests.conftest import USES_REAL_DB
from tests.factories import T0

pytestmark = pytest.mark.usefixtures("ctx")

OID = ObjectId()

# (document, filter, sort, the field an index must start with)
CASES = [
    (Project, {}, [("name_key", 1)], "name_key"),
    (Project, {"name_key": "shop"}, None, "name_key"),
    (Project, {"owner": "x"}, None, "owner"),
    (Project, {"tags": "x"}, None, "tags"),
    (Project, {}, [("created_at", -1)], "created_at"),
    (Service, {"project_id": OID}, [("name_key", 1)], "project_id"),
    (Service, {"status": "Running"}, None, "status"),
    (Service, {"health": "Healthy"}, None, "health"),
    (Service, {}, [("name_key", 1)], "name_key"),
    (CpuMetric, {"project_id": OID}, None, "project_id"),
    (CpuMetric, {"service_key": "api"}, None, "service_key"),
    (CpuMetric, {"service_id": OID}, None, "service_id"),
    (CpuPoint, {"metric_id": OID, "time": {"$gte": T0}}, [("time", -1)], "metric_id"),
    (Receiver, {}, [("name_key", 1)], "name_key"),
    (Delivery, {"receiver_id": OID}, [("created_at", -1)], "receiver_id"),
    (Delivery, {"status": "pending", "next_attempt_at": {"$lte": T0}}, None, "status"),
]


def _winning_plan(collection, query: dict, sort) -> dict:
    cursor = collection.find(query)
    if sort:
        cursor = cursor.sort(sort)
    return cursor.limit(10).explain()["queryPlanner"]["winningPlan"]


def _touch(document) -> None:
    """mongoengine creates a collection's indexes when it first uses the collection."""
    document.ensure_indexes()


def _index_scans(plan: dict) -> list[str]:
    stages = []
    while plan:
        if plan.get("stage") == "IXSCAN":
            stages.append(next(iter(plan["keyPattern"])))
        plan = plan.get("inputStage")
    return stages


@pytest.mark.parametrize(
    ("document", "query", "sort", "leading"),
    CASES,
    ids=[f"{c[0].__name__}-{c[3]}-{i}" for i, c in enumerate(CASES)],
)
def test_filter_is_served_by_an_index(document, query, sort, leading):
    _touch(document)
    collection = document._get_collection()
    keys = [next(iter(spec["key"]))[0] for spec in collection.index_information().values()]
    assert leading in keys, f"no index of {document.__name__} starts with {leading}"
    if USES_REAL_DB:
        plan = _winning_plan(collection, query, sort)
        assert _index_scans(plan), f"{document.__name__} {query} scans the collection: {plan}"


# Log lists: each filter of ``logs.list_logs``, with the query and the sort it builds.
LOG_FILTERS = [
    ({}, "timestamp"),
    ({"since": T0}, "timestamp"),
    ({"project_id": OID}, "project_id"),
    ({"service_id": OID}, "service_id"),
    ({"severity": ["error"]}, "level"),
    ({"min_severity": "warn"}, "level"),
    ({"source": "a"}, "source"),
    ({"test_id": "a"}, "test_id"),
    ({"func_id": "a"}, "func_id"),
]


@pytest.mark.parametrize(("filters", "leading"), LOG_FILTERS, ids=[f[1] for f in LOG_FILTERS])
def test_every_log_filter_has_an_index_that_also_sorts(filters, leading):
    _touch(LogEntry)
    queryset = logs.list_logs(**filters).query.queryset  # what the service will run
    sort = queryset._ordering
    keys = [spec["key"] for spec in LogEntry._get_collection().index_information().values()]
    assert next(iter(queryset._query), "timestamp") == leading
    assert sort == [("timestamp", -1), ("_id", -1)]
    assert any(key[0][0] == leading and key[-2:] == sort for key in keys), keys
    if USES_REAL_DB:
        plan = _winning_plan(LogEntry._get_collection(), queryset._query, sort)
        assert _index_scans(plan), f"logs {filters} scan the collection: {plan}"


# The dashboard's log lists with retention on (as in production, not in TestingConfig):
# every query then carries the read horizon (``timestamp >= cut``).  SecantusDB plans
# ``project_id = x, level $in [...]`` beside that range as a scan of the whole collection
# (issue 9: the filtered logs of a project examined 10,000 rows instead of 338), so one
# severity must be an equality.
HORIZON_FILTERS = [
    ({"project_id": OID}, "project_id"),
    ({"project_id": OID, "severity": ["error"]}, "project_id"),
    ({"severity": ["error"]}, "level"),
    ({"service_id": OID}, "service_id"),
]


@pytest.mark.parametrize(
    ("filters", "leading"), HORIZON_FILTERS, ids=["project", "project-severity", "severity", "svc"]
)
def test_log_lists_with_a_retention_horizon_scan_an_index(app, filters, leading):
    app.config["RETENTION_LOGS_DAYS"] = 30
    _touch(LogEntry)
    queryset = logs.list_logs(**filters).query.queryset
    query = queryset._query
    assert "$gt" in query["timestamp"]  # the horizon is in the query (logs._query: $gt)
    if "severity" in filters:
        assert query["level"] == SEVERITY_LEVEL["error"]  # an equality, not {"$in": [...]}
    if USES_REAL_DB:
        plan = _winning_plan(LogEntry._get_collection(), query, queryset._ordering)
        assert _index_scans(plan)[:1] == [leading], f"logs {filters} scan: {plan}"
