"""The plain query of a log list (``logs._query`` with every filter given, the
retention horizon included), for tests that compare what a list shows with what one
query of the database gives.  Shared by tests/test_append_count.py,
tests/test_horizon_plans.py and tests/test_logs_newest_first.py."""

from __future__ import annotations

from polymicro.logs import service as logs

# Taken at import: tests that record the calls of ``logs._query`` replace it afterwards.
_QUERY = logs._query


def query_args(**filters) -> dict:
    """Every argument of ``logs._query``: none set but ``filters``, and what retention
    keeps for their project (or for all projects)."""
    return {
        "project_id": None,
        "service_id": None,
        "severity": [],
        "min_severity": None,
        "source": None,
        "test_id": None,
        "func_id": None,
        "since": None,
        "until": None,
        "q": None,
        "kept": logs.retention.visible(logs.RETENTION, filters.get("project_id")),
        **filters,
    }


def plain_query(**filters):
    """``logs._query`` of these filters (a ``PagedQuery``; ``.queryset`` is the single
    query of the database)."""
    return _QUERY(**query_args(**filters))
