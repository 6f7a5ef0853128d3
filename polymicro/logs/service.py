"""Log use cases: references to a project and one of its services, severity levels,
newest-first lists, all-or-nothing batches.

Lists are read as raw rows (no mongoengine document per row) and cached per project
(namespace ``logs:<project id>``; lists not scoped to a project use ``logs``).  Every
log write bumps both, so a list never outlives a write that changes it.  References
are checked through the services and projects domains' ``require_*`` functions
(cached), never by reading their documents.

After entries are stored, :data:`entries_stored` names their services (the liveness
domain, above this one, counts them as heartbeats of the services that opt in).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from datetime import datetime, timedelta

from blinker import Namespace as Signals
from bson import ObjectId
from flask import current_app

from polymicro.common import atomic, caching, retention
from polymicro.common.atomic import insert_all_or_nothing, insert_row
from polymicro.common.models import average_size, contains_literally, row_view, to_row
from polymicro.common.pagination import AppendCount, NewestFirst, PagedQuery
from polymicro.common.timeutil import utcnow
from polymicro.errors import InvalidInput, NotFound
from polymicro.logs.models import SEVERITY_ALIASES, SEVERITY_LEVEL, TYPICAL_LOG_BYTES, LogEntry
from polymicro.observability import record_ingest
from polymicro.projects import service as projects
from polymicro.security import charge_ingest, ensure_project
from polymicro.services import service as services

# Lists hide what retention no longer keeps (see RETENTION below): the days kept (the
# project's override) are part of every cached list's key; the horizon, which moves by
# the minute, is the epoch of its entries (an entry of an older minute is served like
# one of an older generation: within the staleness window), not part of the key.
LOGS = caching.Namespace(
    "logs",
    scope="project_id",
    unscoped=True,
    bounded_staleness=True,
    salt=lambda project_id: retention.visible_key(RETENTION, project_id),
    epoch=lambda project_id: retention.visible_epoch(RETENTION, project_id),
    append_history=True,
)

_signals = Signals()
entries_stored = _signals.signal(
    "log-entries-stored",
    doc="Sent with service_ids= after log entries of those services were stored.",
)

ORDER = ("-timestamp", "-id")
IMMUTABLE = ("project_id", "service_id")

# Retention of log entries (POLYMICRO_RETENTION_LOGS_DAYS, a project's
# ``retention.logs_days``); registered in polymicro/domains.py.
RETENTION = retention.Kind(
    "logs",
    lambda: LogEntry._get_collection(),
    "timestamp",
    "RETENTION_LOGS_DAYS",
    override="logs_days",
    project_scope=lambda project_id: {"project_id": project_id},
)


def _rows(rows: list[dict]) -> list[dict]:
    return [row_view(LogEntry, row) for row in rows]


@LOGS.reads
def list_logs(
    project_id: ObjectId | None = None,
    service_id: ObjectId | None = None,
    severity: Iterable[str] | None = None,
    min_severity: str | None = None,
    source: str | None = None,
    test_id: str | None = None,
    func_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    q: str | None = None,
) -> caching.CachedQuery:
    """Log entries matching every given filter, newest first (lazy, paged, cached)."""
    filters = {
        "project_id": project_id,
        "service_id": service_id,
        "severity": sorted({canonical_severity(s) for s in severity or ()}),
        "min_severity": min_severity and canonical_severity(min_severity),
        "source": source,
        "test_id": test_id,
        "func_id": func_id,
        "since": since,
        "until": until,
        "q": q,
    }
    # What retention still keeps: its days are part of the key, the minute its horizon
    # is at is the entries' epoch (taken first; see retention.visible_epoch).
    epoch = retention.visible_epoch(RETENTION, project_id)
    key = caching.make_key("logs", kept=retention.visible_key(RETENTION, project_id), **filters)
    filters["kept"] = retention.visible(RETENTION, project_id)
    query = _query(**filters)
    namespace = LOGS.key(project_id)
    if not isinstance(query, LevelsMerged):  # each level's query is already narrow
        query = NewestFirst(
            query.queryset,
            narrowed=lambda t: (
                _query(**{**filters, "since": max(since, t) if since else t}).queryset
            ),
            time_field="timestamp",
            hint_key=key,
            per_page=_rows,
            counter=AppendCount(
                between=lambda low, high: _query(**filters, at_least=low, below=high).queryset,
                history=lambda floor: caching.history(namespace, floor),
                key=key,
                epoch=epoch,
                now=utcnow,
            ),
        )
    return caching.CachedQuery(namespace, key, query, epoch=epoch)


# How SecantusDB (0.7) serves a log list (read in its storage planner, and counted with a
# server that counted the rows it fetched: 5 projects of 2,000 logs, 40 days of them, a
# 30-day horizon).  An index is used in two shapes only: equalities on the leading fields
# of a compound index, then one range or ``$in`` on its next field (``project_id = x,
# level = 3, timestamp >= cut``: the 157 rows that match); otherwise the *first* clause
# of the filter, in its order, that leads an index, every other clause being checked on
# each row fetched.  So ``level $in [...]`` (or ``level >= n``) beside the horizon fetched
# every row of the horizon, 7,561 of 10,000, as did ``service_id = y, level = 3`` (no
# compound index starts with the two), while ``explain()`` called both a collection scan.
# A ``hint()`` is no cure: explain then shows the index and 227 rows examined, but the
# server walks the whole index (10,000 rows fetched, 4 times slower than without it).
# Hence: the filter's clauses go in the order below (the narrowest equality first), and
# several levels with a time range and no other filter than the project are one query
# per level (``level = n`` each: the compound index, exact), merged (227 rows fetched;
# a count and a page of a project's errors and criticals took 80 ms instead of 1.33 s).
MS = timedelta(milliseconds=1)
NARROWEST_FIRST = ("test_id", "func_id", "source", "service_id", "project_id")


def _query(
    project_id,
    service_id,
    severity,
    min_severity,
    source,
    test_id,
    func_id,
    since,
    until,
    q,
    kept,
    at_least: datetime | None = None,
    below: datetime | None = None,
) -> PagedQuery:
    """The query of a list; ``at_least``/``below`` bound its time further (for
    ``AppendCount``: ``at_least <= timestamp < below``)."""
    equal = {
        "test_id": test_id or None,
        "func_id": func_id or None,
        "source": source or None,
        "service_id": service_id,
        "project_id": project_id,
    }
    match = {name: equal[name] for name in NARROWEST_FIRST if equal[name] is not None}
    levels = _levels(severity, min_severity)
    if levels is not None and len(levels) == 1:
        match["level"] = levels[0]
    elif levels is not None:  # min_severity alone is one range
        match["level"] = {"$in": levels} if severity else {"$gte": min(levels)}
    kept = dict(kept or {})
    horizon = (kept.pop("timestamp", None) or {}).get("$gte")
    lower = max((t for t in (horizon, since, at_least) if t is not None), default=None)
    upper = until if below is None or (until is not None and until < below) else None
    when = {}
    if lower is not None:
        # ``$gt`` a millisecond before, not ``$gte``: SecantusDB's ``$gte`` on the
        # (project, -timestamp) index leaves out the rows equal to the bound (a log at
        # the horizon or at ``since`` was missing; see pagination.BOUNDARY_MARGIN).
        # Stored times are whole milliseconds, so the two select the same rows.
        when["$gt"] = _ceil_ms(lower) - MS
    if upper is not None:
        when["$lte"] = upper
    elif below is not None:
        when["$lt"] = below
    if when:
        match["timestamp"] = when
    if q:
        match |= contains_literally("message", q, ignore_case=True)
    match |= kept  # what else the retention asks (a $nor of shorter overrides)
    if levels and len(levels) > 1 and when and set(match) <= {"project_id", "level", "timestamp"}:
        parts = [_newest_first({**match, "level": level}) for level in levels]
        return LevelsMerged(_newest_first(match), parts, per_page=_rows)
    return PagedQuery(_newest_first(match), per_page=_rows)


def _ceil_ms(value: datetime) -> datetime:
    """``value`` rounded up to a whole millisecond."""
    rest = value.microsecond % 1000
    return value + timedelta(microseconds=1000 - rest) if rest else value


def _levels(severity: list[str], min_severity: str | None) -> list[int] | None:
    """The levels a list keeps (None: all); ``severity`` and ``min_severity`` together
    keep the levels both allow."""
    if not severity and not min_severity:
        return None
    levels = [SEVERITY_LEVEL[name] for name in severity] or list(SEVERITY_LEVEL.values())
    lowest = SEVERITY_LEVEL[min_severity] if min_severity else 0
    return sorted({level for level in levels if level >= lowest}, reverse=True)


def _newest_first(match: dict):
    return LogEntry.objects(__raw__=match).order_by(*ORDER).as_pymongo()


def _newest_key(row: dict) -> tuple:
    return row["timestamp"], row["_id"]


class LevelsMerged(PagedQuery):
    """A list of several levels as one query per level (see above ``NARROWEST_FIRST``):
    the count is the sum of theirs; a page ``[a:b]`` merges the first ``b`` rows of
    each, newest first (``ORDER``), as the database orders a single query.  ``queryset``
    stays the single query (``level $in``) for what adds clauses to it (a log stream).
    Written by hand: SecantusDB has no plan that serves ``level $in`` beside a time
    range from an index, and a ``$or`` of the equalities is a collection scan there."""

    def __init__(self, queryset, parts: list, per_page):
        super().__init__(queryset, per_page)
        self.parts = parts

    def count(self) -> int:
        return sum(part.count() for part in self.parts)

    def __getitem__(self, window: slice) -> list:
        start, stop = window.start or 0, window.stop
        firsts = [part if stop is None else part[0:stop] for part in self.parts]
        merged = heapq.merge(*firsts, key=_newest_key, reverse=True)
        return self.per_page(list(itertools.islice(merged, start, stop)))


@LOGS.reads
def list_project_logs(project_id: ObjectId, **filters) -> caching.CachedQuery:
    projects.require_project(project_id)
    filters["project_id"] = project_id  # the path wins over a query parameter
    return list_logs(**filters)


@LOGS.reads
def list_service_logs(service_id: ObjectId, **filters) -> caching.CachedQuery:
    services.require_service(service_id)
    return list_logs(service_id=service_id, **filters)


def get_log(log_id: ObjectId) -> LogEntry:
    entry = LogEntry.objects(id=log_id).first()
    if entry is not None:
        cut = retention.horizon(RETENTION, entry.project_id)
        entry = None if cut is not None and entry.timestamp < cut else entry
    if entry is None:
        raise NotFound(f"Log entry {log_id} not found.")
    return entry


def canonical_severity(severity: str) -> str:
    """``WARNING`` → ``warn``; an unknown name is an InvalidInput on ``severity``."""
    name = severity.strip().lower()
    name = SEVERITY_ALIASES.get(name, name)
    if name not in SEVERITY_LEVEL:
        raise InvalidInput.field("severity", f"Unknown severity {severity!r}.")
    return name


def _reference_errors(entry: dict, refs: dict[ObjectId, dict | None]) -> dict[str, list[str]]:
    """What is wrong with an entry's ``project_id``/``service_id`` (empty when nothing)."""
    errors = {}
    if refs[entry["project_id"]] is None:
        errors["project_id"] = ["No project with this id."]
    service = refs[entry["service_id"]]
    if service is None:
        errors["service_id"] = ["No service with this id."]
    elif service["project_id"] != entry["project_id"] and "project_id" not in errors:
        errors["service_id"] = ["This service belongs to another project."]
    return errors


def _check_references(entries: list[dict]) -> list[dict[str, list[str]]]:
    """The reference errors of every entry: one cached lookup per distinct project and
    service, whatever the number of entries."""
    refs: dict[ObjectId, dict | None] = {}
    for pid in {e["project_id"] for e in entries}:
        refs[pid] = _or_none(projects.require_project, pid)
    for sid in {e["service_id"] for e in entries}:
        refs[sid] = _or_none(services.require_service, sid)
    return [_reference_errors(e, refs) for e in entries]


def _or_none(require, object_id: ObjectId) -> dict | None:
    try:
        return require(object_id)
    except NotFound:
        return None


def _new_entry(data: dict, received: datetime) -> dict:
    """Validated input completed with what the service owns: canonical severity, its
    level, and the time of receipt when no timestamp was given."""
    data = dict(data)
    data["severity"] = canonical_severity(data["severity"])
    data["level"] = SEVERITY_LEVEL[data["severity"]]
    if data.get("timestamp") is None:
        data["timestamp"] = received
    return data


@LOGS.writes
def create_log(data: dict, scope: ObjectId | None = None) -> LogEntry:
    """Store one entry; a caller limited to project ``scope`` (an API key) may write only
    to that project."""
    ensure_project(scope, data["project_id"])
    (errors,) = _check_references([data])
    if errors:
        raise InvalidInput("Invalid log entry: see `errors`.", {"json": errors})
    charge_ingest(scope, 1)  # an API key's entries count against its project's budget
    row = to_row(LogEntry, _new_entry(data, utcnow()))
    row["_id"] = ObjectId()
    # A plain row, as in create_logs: the schema validated it, and a mongoengine save
    # (a second validation, to_mongo) was a fifth of the Python time of a single POST.
    insert_row(LogEntry._get_collection(), row, grouped=current_app.config["LOG_GROUP_COMMIT"])
    atomic.after_commit(lambda: record_ingest("logs", 1))
    # An append (see caching.history): a count may keep what it counted before this time.
    LOGS.bump(row["project_id"], appended_from=row["timestamp"])
    entries_stored.send(None, service_ids=[row["service_id"]])
    return LogEntry._from_son(row)


@LOGS.writes
def create_logs(
    entries: list[dict], scope: ObjectId | None = None, *, charged: bool = False
) -> list[ObjectId]:
    """Store every entry or none: a bad reference anywhere is a 422 naming each bad
    entry by its index; otherwise one bulk insert.  Returns the ids in input order.

    The schema has validated every entry (once); rows go to the database as plain
    dicts in one ``insert_many``, without a mongoengine document (and its second
    validation) per entry.
    """
    if not entries:
        raise InvalidInput.field("_schema", "Send at least one log entry.")
    for entry in entries:
        ensure_project(scope, entry["project_id"])
    errors = {
        str(index): problems
        for index, problems in enumerate(_check_references(entries))
        if problems
    }
    if errors:
        raise InvalidInput(
            f"{len(errors)} of {len(entries)} log entries are invalid; none was stored.",
            {"json": errors},
        )
    if not charged:  # ingest charges a whole request before decoding it
        charge_ingest(scope, len(entries))  # an API key's entries count against its budget
    received = utcnow()
    rows = [to_row(LogEntry, _new_entry(data, received)) for data in entries]
    ids = insert_all_or_nothing(LogEntry._get_collection(), rows)
    atomic.after_commit(lambda: record_ingest("logs", len(ids)))
    LOGS.bump(
        *(row["project_id"] for row in rows), appended_from=min(row["timestamp"] for row in rows)
    )
    entries_stored.send(None, service_ids=list(dict.fromkeys(row["service_id"] for row in rows)))
    return ids


@LOGS.writes
def update_log(entry: LogEntry, data: dict) -> LogEntry:
    """Apply a partial update; the project and service of an entry cannot change."""
    for field in IMMUTABLE:
        if field in data and data[field] != getattr(entry, field):
            raise InvalidInput.field(field, "A log entry cannot move to another project/service.")
    data = {k: v for k, v in data.items() if k not in IMMUTABLE}
    if "severity" in data:
        data["severity"] = canonical_severity(data["severity"])
        data["level"] = SEVERITY_LEVEL[data["severity"]]
    changed = {k: v for k, v in data.items() if getattr(entry, k) != v}
    if changed:
        for key, value in changed.items():
            setattr(entry, key, value)
        entry.save()
        LOGS.bump(entry.project_id)
    return entry


@LOGS.writes
def delete_log(entry: LogEntry) -> None:
    entry.delete()
    LOGS.bump(entry.project_id)


@LOGS.writes
def delete_logs(project_id: ObjectId | None = None, service_id: ObjectId | None = None) -> int:
    """Delete the logs of a project or of a service (used by the cascades)."""
    if project_id is None and service_id is None:
        raise ValueError("delete_logs needs project_id or service_id")
    query = LogEntry.objects
    if project_id is not None:
        query = query.filter(project_id=project_id)
    if service_id is not None:
        query = query.filter(service_id=service_id)
    project_ids = query.distinct("project_id") if project_id is None else [project_id]
    deleted = query.delete()
    LOGS.bump(*project_ids)
    return deleted


def on_services_deleting(_sender, *, project_id: ObjectId, service_id: ObjectId | None) -> None:
    """Receiver of ``services.services_deleting``: their logs go first."""
    delete_logs(project_id=project_id, service_id=service_id)


# --- live tail (GET /api/logs/stream) -----------------------------------------------------


class LogTail:
    """The reads of one live log stream: new entries matching the list filters, in
    ``_id`` order (the order they were made).

    An ``_id`` is made by the writing process before its insert, so entries do not
    become visible in ``_id`` order: a batch commits a moment after its ids were made,
    and two workers interleave.  Each poll therefore re-reads ``window`` seconds behind
    the newest entry it sent and sends what it has not sent yet (an entry committed
    later than that after its id was made is missed; the list endpoints have it).  The
    same holds when a client resumes after an id: entries with older ids committed
    while it was away are not sent again.
    """

    def __init__(self, filters: dict, window_seconds: float):
        self.query = list_logs(**filters).query.queryset.order_by("id")
        self.window = timedelta(seconds=window_seconds)
        self.cursor: ObjectId | None = None
        self.sent: set[ObjectId] = set()

    def _floor(self) -> ObjectId:
        return ObjectId.from_datetime(utcnow() - self.window)

    def start(self, after: ObjectId | None, tail: int) -> list[dict]:
        """Begin after the entry ``after`` (a resume), else with the last ``tail``
        entries; returns those, oldest first.  Entries already stored before the start
        are never sent as new."""
        backlog = []
        if after is None:
            newest = self.query.order_by("-id")
            backlog = list(reversed(list(newest[:tail]))) if tail else []
            first = list(newest[:1])
            after = first[0]["_id"] if first else self._floor()
        self.cursor = after
        floor = self._floor()
        if floor < after:
            existing = self.query.filter(id__gte=floor, id__lte=after).only("id")
            self.sent = {row["_id"] for row in existing}
        return _rows(backlog)

    def poll(self, limit: int = 500) -> tuple[list[dict], bool]:
        """Entries not sent yet (oldest id first), and whether more are waiting."""
        floor = self._floor()
        low = min(self.cursor, floor)
        fetch = limit + len(self.sent)
        rows = list(self.query.filter(id__gt=low)[:fetch])
        new = [row for row in rows if row["_id"] not in self.sent][:limit]
        for row in new:
            self.sent.add(row["_id"])
            self.cursor = max(self.cursor, row["_id"])
        self.sent = {entry_id for entry_id in self.sent if entry_id >= floor}
        return _rows(new), len(rows) == fetch


def usage_of_projects(project_ids: list[ObjectId] | None) -> dict[ObjectId, dict]:
    """Receiver of ``projects.project_usage``: per project (of ``project_ids``, or every
    one with logs), ``logs`` (a count), the ``oldest``/``newest`` timestamps and
    ``bytes``, an estimate (the count × the collection's average document size from
    ``collStats``, or a typical size where the database gives none)."""
    match = {} if project_ids is None else {"project_id": {"$in": project_ids}}
    collection = LogEntry._get_collection()
    size = average_size(collection, TYPICAL_LOG_BYTES)
    rows = collection.aggregate(
        [
            {"$match": match},
            {
                "$group": {
                    "_id": "$project_id",
                    "n": {"$sum": 1},
                    "oldest": {"$min": "$timestamp"},
                    "newest": {"$max": "$timestamp"},
                }
            },
        ]
    )
    return {
        row["_id"]: {
            "logs": row["n"],
            "oldest": row["oldest"],
            "newest": row["newest"],
            "bytes": row["n"] * size,
        }
        for row in rows
    }
