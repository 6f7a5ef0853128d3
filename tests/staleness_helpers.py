"""Counters shared by the tests that count what cached reads cost under a writer
(tests/test_staleness_counts.py, tests/test_metrics_epoch.py): which lookups of the
response cache were served, and which list queries reached the database."""

from __future__ import annotations

from collections.abc import Callable

from polymicro.common import caching
from polymicro.common.pagination import NewestFirst, PagedQuery


def count_list_queries(monkeypatch, record: Callable[[str], None]) -> None:
    """Call ``record("count")`` before each total and ``record("page")`` before each page
    a list asks of the database (a ``PagedQuery`` of any kind; a log list's total through
    its ``AppendCount`` counts once)."""
    count, getitem, newest_count = PagedQuery.count, PagedQuery.__getitem__, NewestFirst.count
    monkeypatch.setattr(PagedQuery, "count", lambda self: record("count") or count(self))
    monkeypatch.setattr(
        NewestFirst,
        "count",  # without an AppendCount it is PagedQuery.count: recorded there
        lambda self: (self.counter is not None and record("count")) or newest_count(self),
    )
    monkeypatch.setattr(
        PagedQuery, "__getitem__", lambda self, window: record("page") or getitem(self, window)
    )


def count_lookups(monkeypatch, counts: dict) -> None:
    """Add 1 to ``counts["served"]`` for each response-cache lookup that found what it
    may serve, to ``counts["computed"]`` for each that did not."""
    peek = caching.Reader.peek

    def counted_peek(self, key, background=False, settle=None):
        value = peek(self, key, background, settle)
        if not self.unsettled:  # a key guessed wrong is looked up again: count that one
            counts["served" if value is not None else "computed"] += 1
        return value

    monkeypatch.setattr(caching.Reader, "peek", counted_peek)


def log_writer(app, client) -> dict:
    """A project with a service, and a test client that writes logs with the project's
    API key (as a service does): ``project`` (its JSON), ``writer``, and ``entry``, the
    fields of an error log of that service for ``POST /api/logs``."""
    project = client.post("/api/projects", json={"name": "Shop"}).json
    svc = client.post("/api/services", json={"project_id": project["id"], "name": "api"}).json
    key = client.post(f"/api/projects/{project['id']}/keys", json={"name": "svc"}).json["key"]
    writer = app.test_client()
    writer.environ_base["HTTP_X_API_KEY"] = key
    entry = {"project_id": project["id"], "service_id": svc["id"], "severity": "error"}
    return {"project": project, "writer": writer, "entry": entry}
