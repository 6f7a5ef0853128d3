"""CPU metrics use cases: one entry per service of a project, points stored one per
document (see ``models.py``), windows read through the ``(metric_id, time)`` index and
downsampling done by the database.

Appending points does not touch the entry document: points arrive all day, and
rewriting the entry (or moving its ``updated_at``) on every append would turn each
append into two writes and make the entry a hot spot shared by every writer.  An
entry's ``updated_at`` therefore moves only when the entry itself changes (its service
is renamed, or ``PUT`` replaces its points).

The entries of a project (the dashboard's hot read) are cached in the namespace
``metrics:<project id>``; every write to an entry or its points bumps it.  Projects
and services are looked up through their domains' ``require_*``/``find_service``
functions (cached), never by reading their documents.

After points are stored, :data:`points_stored` names their services (the liveness
domain, above this one, counts them as heartbeats of the services that opt in).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from functools import partial

from blinker import Namespace as Signals
from bson import ObjectId
from flask import current_app
from pymongo import DeleteOne, MongoClient, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError

from polymicro.common import atomic, caching, retention
from polymicro.common.atomic import insert_all_or_nothing
from polymicro.common.models import as_view, average_size, name_key
from polymicro.common.pagination import PagedQuery
from polymicro.common.timeutil import to_utc_naive, utcnow
from polymicro.errors import Conflict, InvalidInput, NotFound
from polymicro.metrics.aggregation import EPOCH, bucket_view, ceil_to, floor_to, merge, raw_partials
from polymicro.metrics.models import (
    DEFAULT_POINTS,
    DEFAULT_SERIES_WINDOW,
    DEFAULT_STEP,
    MAX_BUCKETS,
    MAX_POINTS_PER_WRITE,
    MAX_STEP,
    MIN_STEP,
    ROLLUP_RETENTION_SETTINGS,
    ROLLUP_SIZES,
    ROLLUP_TTL_INDEX,
    ROLLUPS,
    TYPICAL_POINT_BYTES,
    TYPICAL_ROLLUP_BYTES,
    CpuMetric,
    CpuPoint,
    CpuRollupDirty,
)
from polymicro.observability import record_ingest
from polymicro.projects import service as projects
from polymicro.security import charge_ingest, ensure_project
from polymicro.services import service as services

# Points past the retention horizon are hidden.  As in the logs namespace: the days kept
# (the project's override) are part of every cached read's key; the horizon's minute is
# the epoch of its entries, not part of the key (it was, and at each minute every
# cached read of every reader missed at once), so an entry of the minute before is
# served like one of an older generation: within the staleness window, refreshed ahead.
METRICS = caching.Namespace(
    "metrics",
    scope="project_id",
    unscoped=False,
    bounded_staleness=True,
    salt=lambda project_id: retention.visible_key(RETENTION, project_id),
    epoch=lambda project_id: retention.visible_epoch(RETENTION, project_id),
)

_signals = Signals()
points_stored = _signals.signal(
    "cpu-points-stored",
    doc="Sent with service_ids= after CPU points of those services were stored.",
)


ORDER = ("id",)  # creation order, served by the _id index
POINT_FIELDS = ("time", "load", "memory", "threads")


def _points_of_project(project_id: ObjectId) -> dict:
    return {"metric_id": {"$in": CpuMetric.objects(project_id=project_id).distinct("id")}}


# Retention of raw CPU points (POLYMICRO_RETENTION_POINTS_DAYS, a project's
# ``retention.points_days``); registered in polymicro/domains.py.
RETENTION = retention.Kind(
    "points",
    lambda: CpuPoint._get_collection(),
    "time",
    "RETENTION_POINTS_DAYS",
    override="points_days",
    project_scope=_points_of_project,
)


def _rollup_kind(size: str) -> retention.Kind:
    return retention.Kind(
        f"rollups_{size}",
        lambda: ROLLUPS[size]._get_collection(),
        "time",
        ROLLUP_RETENTION_SETTINGS[size],
        index_name=ROLLUP_TTL_INDEX,
    )


# Retention of the rollups (POLYMICRO_RETENTION_ROLLUPS_5M_DAYS / _1H_DAYS: longer than
# raw points, no per-project override); registered in polymicro/domains.py, so their TTL
# indexes are applied at start-up, swept where missing, and shown by /api/retention.
ROLLUP_RETENTION = {size: _rollup_kind(size) for size in ROLLUPS}


# --- reading ------------------------------------------------------------------------


# The first window of time read for the latest points of an entry (see latest_points).
FIRST_WINDOW = timedelta(hours=1)


def latest_points(
    metric_id: ObjectId,
    since: datetime | None = None,
    until: datetime | None = None,
    points: int = DEFAULT_POINTS,
) -> list[dict]:
    """The latest ``points`` points of an entry inside ``[since, until]``, oldest first.

    An index range scan on ``(metric_id, time)``, newest first, ``points`` at most;
    reversed here.  SecantusDB reads every point of the range before it sorts and
    stops (counted: 721 points fetched for the latest 60 of five days, and with the
    retention horizon as ``since`` a list read every point kept), so the range is read
    from its end in a window first (``FIRST_WINDOW``), then in wider ones (as wide as
    the points found say is needed, a day when none were), at most three, then whole:
    a window holding ``points`` points holds the latest ones, so each step's answer is
    exact, and a step is taken only when the one before held too few.
    """
    end = until if until is not None else utcnow()
    width = FIRST_WINDOW
    for _ in range(3):
        if end - datetime.min <= width or (since is not None and end - width <= since):
            break  # the window would reach past the range: read the range
        rows = _latest(metric_id, end - width, until, points)
        if len(rows) == points:
            return rows
        # Twice what this window's density needs; a day when it held none (an entry
        # whose agent stopped).
        width = width * 2 * points / len(rows) if rows else width * 24
    return _latest(metric_id, since, until, points)


def _latest(metric_id, since, until, points: int) -> list[dict]:
    query = CpuPoint.objects(metric_id=metric_id)
    if since is not None:
        query = query.filter(time__gte=since)
    if until is not None:
        query = query.filter(time__lte=until)
    rows = query.order_by("-time").limit(points).only(*POINT_FIELDS).as_pymongo()
    return [{key: row.get(key) for key in POINT_FIELDS} for row in reversed(list(rows))]


def metric_views(
    metrics: list[CpuMetric],
    since: datetime | None = None,
    until: datetime | None = None,
    points: int = DEFAULT_POINTS,
) -> list[dict]:
    """Views of entries with their ``data`` for the window (one indexed query each);
    points past the retention horizon of the entry's project are not shown."""
    return [
        as_view(
            m,
            data=latest_points(
                m.id, retention.floor(RETENTION, m.project_id, since), until, points
            ),
        )
        for m in metrics
    ]


def _paged(query, since, until, points) -> PagedQuery:
    window = partial(metric_views, since=since, until=until, points=points)
    return PagedQuery(query.order_by(*ORDER), per_page=window)


def list_metrics(
    project_id: ObjectId | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    points: int = DEFAULT_POINTS,
) -> PagedQuery:
    """Entries (optionally of one project); each page gets the points of its entries."""
    query = CpuMetric.objects
    if project_id is not None:
        query = query.filter(project_id=project_id)
    return _paged(query, since, until, points)


@METRICS.reads
def list_project_metrics(
    project_id: ObjectId,
    since: datetime | None = None,
    until: datetime | None = None,
    points: int = DEFAULT_POINTS,
) -> caching.CachedQuery:
    """The entries of a project with their points (cached per project)."""
    projects.require_project(project_id)
    epoch = retention.visible_epoch(RETENTION, project_id)  # taken before the horizon
    paged = list_metrics(project_id=project_id, since=since, until=until, points=points)
    kept = retention.visible_key(RETENTION, project_id)  # the days, not the minute
    key = caching.make_key("project-metrics", since=since, until=until, points=points, kept=kept)
    return caching.CachedQuery(METRICS.key(project_id), key, paged, epoch=epoch)


def list_service_metrics(
    service_name: str,
    project_id: ObjectId | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    points: int = DEFAULT_POINTS,
) -> PagedQuery:
    """Entries whose service has this name (case-insensitive), in any project or in one."""
    query = CpuMetric.objects(service_key=name_key(service_name.strip()))
    if project_id is not None:
        query = query.filter(project_id=project_id)
    return _paged(query, since, until, points)


def load_metric(metric_id: ObjectId) -> CpuMetric:
    """The stored entry (for writes); NotFound when there is none."""
    metric = CpuMetric.objects(id=metric_id).first()
    if metric is None:
        raise NotFound(f"CPU metrics entry {metric_id} not found.")
    return metric


def get_metric(
    metric_id: ObjectId,
    since: datetime | None = None,
    until: datetime | None = None,
    points: int = DEFAULT_POINTS,
) -> dict:
    """An entry with the latest ``points`` points of the window in ``data``."""
    return metric_views([load_metric(metric_id)], since, until, points)[0]


# --- writing ------------------------------------------------------------------------


def _insert_points(metric_id: ObjectId, points: list[dict]) -> list[ObjectId]:
    """Store validated points in one bulk write; returns their ids.

    Times are stored as naive UTC with millisecond precision (now when absent); absent
    measurements are left out of the document (as mongoengine stores ``None``).
    """
    if not points:
        return []
    docs = []
    for point in points:
        time = point.get("time")
        doc = {"metric_id": metric_id, "time": utcnow() if time is None else to_utc_naive(time)}
        doc.update((k, point[k]) for k in ("load", "memory", "threads") if point.get(k) is not None)
        docs.append(doc)
    ids = insert_all_or_nothing(CpuPoint._get_collection(), docs)
    atomic.after_commit(lambda: record_ingest("cpu_points", len(ids)))
    atomic.after_commit(partial(_mark_dirty, _hours_of(docs)))
    return ids


def _delete_points_except(metric_id: ObjectId, keep: list[ObjectId]) -> None:
    """Delete the entry's other points; the hours they were in are marked (their
    rollups are recomputed without them)."""
    match = {"metric_id": metric_id, "_id": {"$nin": keep}}
    hours = _hours_with_points(match)
    CpuPoint._get_collection().delete_many(match)
    _mark_dirty(hours)


@METRICS.writes
def create_metric(data: dict, scope: ObjectId | None = None) -> dict:
    """Create the entry of a service of a project, with optional initial points.

    The service is named case-insensitively; the entry stores its id and its canonical
    name.  One entry per (project, service): a second is a 409 (the unique index on
    ``(project_id, service_id)`` settles a race).
    """
    project_id = data["project_id"]
    ensure_project(scope, project_id)
    projects.require_project(project_id, field="project_id")
    svc = services.find_service(project_id, data["service_name"])
    if svc is None:
        raise InvalidInput.field("service_name", "The project has no service with this name.")
    if CpuMetric.objects(project_id=project_id, service_id=svc["id"]).count():
        raise Conflict(f"Service {svc['name']!r} of project {project_id} already has a CPU entry.")
    charge_ingest(scope, len(data.get("data") or []))  # a key's points count against its budget
    metric = CpuMetric(
        project_id=project_id,
        service_id=svc["id"],
        service_name=svc["name"],
        service_key=name_key(svc["name"]),
        rollups=True,  # every point it gets is marked: its rollups are complete
    )
    metric.save(force_insert=True)
    if _insert_points(metric.id, data.get("data") or []):
        points_stored.send(None, service_ids=[metric.service_id])
    METRICS.bump(project_id)
    return metric_views([metric])[0]


@METRICS.writes
def replace_points(metric_id: ObjectId, data: dict, scope: ObjectId | None = None) -> dict:
    """``PUT``: replace every point of the entry with ``data["data"]``.

    The new points are inserted first, then the old ones are deleted by ``_id``: an
    interruption between the two leaves old and new points side by side (repeating the
    request repairs it), never an empty entry.  Points appended by another client while
    the replacement runs are removed with the old ones (the last ``PUT`` wins).
    A body without ``data`` changes nothing.
    """
    metric = load_metric(metric_id)
    ensure_project(scope, metric.project_id)
    charge_ingest(scope, len(data.get("data") or []))  # a key's points count against its budget
    if "data" in data:
        new_ids = _insert_points(metric.id, data["data"])
        _delete_points_except(metric.id, new_ids)
        metric.updated_at = utcnow()
        metric.save()
        METRICS.bump(metric.project_id)
        if new_ids:
            points_stored.send(None, service_ids=[metric.service_id])
    return metric_views([metric])[0]


@METRICS.writes
def append_cpu_points(
    metric_id: ObjectId, points: list[dict], scope: ObjectId | None = None
) -> int:
    """Append validated points to an entry in one bulk write; returns how many.

    The entry document is not rewritten (see the module docstring).
    """
    if not 1 <= len(points) <= MAX_POINTS_PER_WRITE:
        message = f"Send 1 to {MAX_POINTS_PER_WRITE} points (got {len(points)})."
        raise InvalidInput(message, {"json": {"_schema": [message]}})
    owner = CpuMetric.objects(id=metric_id).scalar("project_id", "service_id").first()
    if owner is None:
        raise NotFound(f"CPU metrics entry {metric_id} not found.")
    project_id, service_id = owner
    ensure_project(scope, project_id)
    charge_ingest(scope, len(points))  # an API key's points count against its budget
    inserted = len(_insert_points(metric_id, points))
    METRICS.bump(project_id)
    points_stored.send(None, service_ids=[service_id])
    return inserted


@METRICS.writes
def delete_metric(metric_id: ObjectId) -> None:
    """Delete an entry and its points (points first: never orphans no API can reach)."""
    metric = load_metric(metric_id)
    CpuPoint.objects(metric_id=metric.id).delete()
    _delete_rollups([metric.id])
    metric.delete()
    METRICS.bump(metric.project_id)


@METRICS.writes
def delete_metrics(project_id: ObjectId, service_id: ObjectId | None = None) -> int:
    """Delete the metrics entries (and their points) of a project, or of one of its
    services (used by the cascades)."""
    query = CpuMetric.objects(project_id=project_id)
    if service_id is not None:
        query = query.filter(service_id=service_id)
    metric_ids = list(query.scalar("id"))
    if metric_ids:
        CpuPoint.objects(metric_id__in=metric_ids).delete()
        _delete_rollups(metric_ids)
    deleted = query.delete()
    METRICS.bump(project_id)
    return deleted


@METRICS.writes
def rename_service(_sender, *, project_id: ObjectId, service_id: ObjectId, name: str) -> None:
    """Receiver of ``services.service_renamed``: keep the entry's ``service_name`` equal
    to its service's current name."""
    CpuMetric.objects(service_id=service_id).update(
        set__service_name=name, set__service_key=name_key(name), set__updated_at=utcnow()
    )
    METRICS.bump(project_id)


def on_services_deleting(_sender, *, project_id: ObjectId, service_id: ObjectId | None) -> None:
    """Receiver of ``services.services_deleting``: their metrics go first."""
    delete_metrics(project_id, service_id=service_id)


# --- rollups ------------------------------------------------------------------------
#
# Every write of points marks the hours it touched (``cpu_rollup_dirty``, after the
# points are visible); the worker job :func:`recompute_rollups` rewrites the 5m and 1h
# rollups of marked hours from the raw points present and unmarks them with a
# compare-and-set.  A series read never trusts a marked hour's rollups: it computes
# those hours from raw points.  So rollups are exact for the data present whatever the
# order, lateness or repetition of writes, and several workers may run the job.

HOUR = ROLLUP_SIZES["1h"]
# A rollup size serves a series only when the window holds at least this many whole
# buckets of it (shorter windows have few raw points: raw is as fast and simpler).
MIN_ROLLUP_BUCKETS = 12
SOURCES = ("auto", "raw", "5m", "1h")
AGGREGATES = {
    "avg": None,
    "min": None,
    "max": None,
    "p50": 0.5,
    "p90": 0.9,
    "p95": 0.95,
    "p99": 0.99,
}


def _mark_dirty(hours_by_metric: dict[ObjectId, set[datetime]]) -> None:
    """Mark these hours of these entries: their rollups must be recomputed."""
    ops = [
        UpdateOne({"metric_id": metric_id, "time": hour}, {"$inc": {"version": 1}}, upsert=True)
        for metric_id, hours in hours_by_metric.items()
        for hour in sorted(hours)
    ]
    if not ops:
        return
    collection = CpuRollupDirty._get_collection()
    try:
        _bulk_write(collection, ops)
    except BulkWriteError as exc:  # two first marks of one hour raced: the loser retries
        if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
            raise
        _bulk_write(collection, ops)


def _bulk_write(collection, ops: list) -> None:
    """One unordered ``bulk_write`` (mongomock's does not take pymongo 4.9+'s
    operations: there, one by one)."""
    if isinstance(collection.database.client, MongoClient):
        collection.bulk_write(ops, ordered=False)
        return
    for op in ops:
        if isinstance(op, DeleteOne):
            collection.delete_one(op._filter)
        elif isinstance(op, ReplaceOne):
            collection.replace_one(op._filter, op._doc, upsert=op._upsert)
        else:
            collection.update_one(op._filter, op._doc, upsert=op._upsert)


def _hours_of(docs: list[dict]) -> dict[ObjectId, set[datetime]]:
    hours: dict[ObjectId, set[datetime]] = {}
    for doc in docs:
        hours.setdefault(doc["metric_id"], set()).add(floor_to(doc["time"], HOUR))
    return hours


def _delete_rollups(metric_ids: list[ObjectId]) -> None:
    for model in (*ROLLUPS.values(), CpuRollupDirty):
        model._get_collection().delete_many({"metric_id": {"$in": metric_ids}})


def _rollup_doc(metric_id: ObjectId, part: dict) -> dict:
    return {"metric_id": metric_id} | {
        key: part[key]
        for key in (
            "time",
            "count",
            "load_sum",
            "load_min",
            "load_max",
            "load_p",
            "memory_count",
            "memory_sum",
            "memory_min",
            "memory_max",
            "memory_p",
            "threads_max",
        )
    }


def recompute_hour(metric_id: ObjectId, hour: datetime) -> None:
    """Rewrite the rollups of one hour of an entry from its raw points."""
    recompute_hours(metric_id, hour, hour + HOUR)


def recompute_hours(metric_id: ObjectId, start: datetime, end: datetime) -> None:
    """Rewrite the rollups of the whole hours ``[start, end)`` of an entry from its raw
    points: their 1h buckets and 5m buckets (one aggregation and one bulk upsert per
    size; buckets left without points are deleted)."""
    for size, model in ROLLUPS.items():
        parts = raw_partials(
            metric_id, start, end, ROLLUP_SIZES[size], percentiles=True, until_inclusive=False
        )
        collection = model._get_collection()
        docs = [_rollup_doc(metric_id, part) for part in parts]
        in_range = {"metric_id": metric_id, "time": {"$gte": start, "$lt": end}}
        if docs and collection.count_documents(in_range, limit=1) == 0:
            # Nothing there yet (a first build): plain inserts, several times faster
            # than upserts on SecantusDB.  Another worker inserting the same buckets
            # meanwhile makes some fail as duplicates: then upsert them all.
            try:
                collection.insert_many([dict(doc) for doc in docs], ordered=False)
                continue
            except BulkWriteError as exc:
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    raise
        ops = [
            ReplaceOne({"metric_id": metric_id, "time": doc["time"]}, doc, upsert=True)
            for doc in docs
        ]
        if ops:
            _bulk_write(collection, ops)
        present = {doc["time"] for doc in docs}
        stale = [row["time"] for row in collection.find(in_range, {"time": 1})]
        stale = [time for time in stale if time not in present]
        if stale:  # buckets whose points are gone (a `$nin` of thousands is slow)
            collection.delete_many({"metric_id": metric_id, "time": {"$in": stale}})


def recompute_rollups(limit: int = 200) -> int:
    """Worker job: recompute the rollups of up to ``limit`` marked hours (oldest marks
    first; adjacent hours of an entry together) and unmark each one whose mark did not
    move meanwhile; returns how many hours were recomputed.  A mark whose entry is gone
    is dropped."""
    collection = CpuRollupDirty._get_collection()
    marks = list(collection.find({}).sort([("_id", 1)]).limit(limit))
    live = set(CpuMetric.objects(id__in=list({m["metric_id"] for m in marks})).scalar("id"))
    horizon = _raw_horizon()
    by_metric: dict[ObjectId, list[datetime]] = {}
    for mark in marks:
        if mark["metric_id"] in live and (horizon is None or mark["time"] >= horizon):
            by_metric.setdefault(mark["metric_id"], []).append(mark["time"])
    for metric_id, hours in by_metric.items():
        hours.sort()
        start = end = hours[0]
        for hour in [*hours[1:], None]:
            if hour is not None and hour <= end + HOUR:
                end = max(end, hour)
                continue
            recompute_hours(metric_id, start, end + HOUR)
            if hour is not None:
                start = end = hour
    if marks:
        unmark = [DeleteOne({"_id": m["_id"], "version": m["version"]}) for m in marks]
        _bulk_write(collection, unmark)
    return len(marks)


def roll_up_due(budget_seconds: float = 5.0, limit: int = 200) -> int:
    """The worker job: :func:`recompute_rollups` in batches of ``limit`` until no mark
    is left or ``budget_seconds`` have passed (the rest waits for the next turn; reads
    stay exact meanwhile).  Returns how many hours were recomputed."""
    began = time.monotonic()
    total = 0
    while True:
        done = recompute_rollups(limit)
        total += done
        if done < limit or time.monotonic() - began >= budget_seconds:
            return total


def _raw_horizon() -> datetime | None:
    """The start of the oldest hour whose raw points are all still kept
    (``RETENTION_POINTS_DAYS``; None: kept forever).  Older hours are never recomputed:
    their raw points are gone or going, and the rollups are what is left of them (a
    late point stored that far back leaves them as they are)."""
    days = current_app.config.get("RETENTION_POINTS_DAYS") or 0
    if days <= 0:
        return None
    return ceil_to(utcnow() - timedelta(days=days), HOUR)


def rebuild_rollups(metric_id: ObjectId | None = None) -> int:
    """Mark every hour that has points (of one entry, or of all) and flag the entries
    as covered: the worker then (re)builds their rollups.  For entries stored before
    rollups existed, or after rollups were lost; returns how many hours were marked."""
    query = CpuMetric.objects if metric_id is None else CpuMetric.objects(id=metric_id)
    marked = 0
    for one in list(query.scalar("id")):  # one aggregation per entry: bounded work
        hours = _hours_with_points({"metric_id": one})
        _mark_dirty(hours)
        CpuMetric.objects(id=one).update(set__rollups=True)
        marked += sum(len(h) for h in hours.values())
    return marked


def _hours_with_points(match: dict) -> dict[ObjectId, set[datetime]]:
    """The hours in which the points matching ``match`` lie, per entry."""
    hour_ms = HOUR // timedelta(milliseconds=1)
    pipeline = [
        {"$match": match},
        {
            "$group": {
                "_id": {
                    "metric_id": "$metric_id",
                    "hour": {
                        "$subtract": [
                            "$time",
                            {"$mod": [{"$subtract": ["$time", EPOCH]}, hour_ms]},
                        ]
                    },
                }
            }
        },
    ]
    hours: dict[ObjectId, set[datetime]] = {}
    for row in CpuPoint._get_collection().aggregate(pipeline, allowDiskUse=True):
        hours.setdefault(row["_id"]["metric_id"], set()).add(row["_id"]["hour"])
    return hours


def rollup_retention(config: dict) -> dict[str, int]:
    """Make each rollup collection's TTL index on ``time`` say its setting
    (``RETENTION_ROLLUPS_*_DAYS``; 0: no TTL index): created when missing, changed in
    place with ``collMod`` when its ``expireAfterSeconds`` differs, dropped for 0
    (``retention.apply_ttl``; the registry applies the same at start-up, these being
    registered kinds).  Returns ``{size: seconds}`` (0: kept forever)."""
    applied = {}
    for size, kind in ROLLUP_RETENTION.items():
        days = max(0, int(config.get(kind.setting, 0) or 0))
        retention.apply_ttl(kind.collection(), kind.time_field, kind.index_name, days)
        applied[size] = days * 86400
    return applied


# --- series -------------------------------------------------------------------------


def _bucket_count(since: datetime, until: datetime, step_ms: int) -> int:
    """How many epoch-aligned buckets of ``step_ms`` the window ``[since, until]`` touches."""

    def ms(value: datetime) -> int:
        return (value - EPOCH) // timedelta(milliseconds=1)

    return ms(until) // step_ms - ms(since) // step_ms + 1


def choose_source(
    metric: CpuMetric,
    since: datetime,
    until: datetime,
    step: timedelta,
    percentiles: tuple[float, ...] = (),
) -> str:
    """``"1h"``, ``"5m"`` or ``"raw"``: the largest rollup size that divides ``step``
    whose buckets the window holds at least ``MIN_ROLLUP_BUCKETS`` whole times; with
    percentiles only a size equal to ``step`` (a bucket's percentiles do not merge into
    a larger bucket's).  Raw for entries not covered by rollups yet."""
    if not metric.rollups:
        return "raw"
    for size in ("1h", "5m"):
        width = ROLLUP_SIZES[size]
        if step % width or (percentiles and step != width):
            continue
        if until - since >= MIN_ROLLUP_BUCKETS * width:
            return size
    return "raw"


def _dirty_ranges(metric_id: ObjectId, since: datetime, until: datetime) -> list[tuple]:
    """The marked hours of an entry inside ``[since, until)``, as merged ranges."""
    rows = (
        CpuRollupDirty._get_collection()
        .find(
            {"metric_id": metric_id, "time": {"$gte": floor_to(since, HOUR), "$lt": until}},
            {"time": 1},
        )
        .sort([("time", 1)])
    )
    ranges: list[list[datetime]] = []
    for row in rows:
        start, end = max(row["time"], since), min(row["time"] + HOUR, until)
        if ranges and ranges[-1][1] >= start:
            ranges[-1][1] = max(ranges[-1][1], end)
        else:
            ranges.append([start, end])
    return [tuple(r) for r in ranges]


def _rollup_partials(
    metric_id: ObjectId,
    size: str,
    since: datetime,
    until: datetime,
    step: timedelta,
    pcts: bool,
    raw_floor: datetime | None = None,
) -> list[dict]:
    """Partials of ``[since, until]``: whole rollup buckets inside it that are not in a
    marked hour from the rollups, the rest (the window's ragged edges, marked hours)
    from raw points.  Raw points are read from ``raw_floor`` on (the points' retention
    horizon) and rollups from their own horizon: rollups are kept longer than raw
    points, so a long chart still shows what raw retention has let go."""

    def raw(lo: datetime, hi: datetime, inclusive: bool) -> list[dict]:
        lo = max(lo, raw_floor) if raw_floor else lo
        if lo > hi or (lo == hi and not inclusive):
            return []
        return raw_partials(metric_id, lo, hi, step, percentiles=pcts, until_inclusive=inclusive)

    width = ROLLUP_SIZES[size]
    first = ceil_to(since, width)
    end = floor_to(until + timedelta(milliseconds=1), width)  # `until` is inclusive
    if first >= end:
        return raw(since, until, True)
    dirty = _dirty_ranges(metric_id, first, end)
    parts = []
    if since < first:
        parts += raw(since, first, False)
    fields = {"_id": 0, "metric_id": 0} | ({} if pcts else {"load_p": 0, "memory_p": 0})
    kept = retention.floor(ROLLUP_RETENTION[size], None, first)
    condition: dict = {"metric_id": metric_id, "time": {"$gte": kept, "$lt": end}}
    if dirty:
        condition["$nor"] = [{"time": {"$gte": lo, "$lt": hi}} for lo, hi in dirty]
    parts += ROLLUPS[size]._get_collection().find(condition, fields).sort([("time", 1)])
    for lo, hi in dirty:
        parts += raw(lo, hi, False)
    parts += raw(end, until, True)
    return parts


def parse_aggregates(agg: list[str] | None) -> tuple[float, ...]:
    """The percentiles asked for in ``agg`` (``avg``, ``min`` and ``max`` are always
    returned); 422 for a name that is not one of ``AGGREGATES``."""
    found = []
    for name in agg or ():
        if name not in AGGREGATES:
            message = f"Unknown aggregate {name!r}; use {', '.join(AGGREGATES)}."
            raise InvalidInput.field("agg", message, "query")
        if AGGREGATES[name] is not None and AGGREGATES[name] not in found:
            found.append(AGGREGATES[name])
    return tuple(sorted(found))


def cpu_series_with_source(
    metric_id: ObjectId,
    since: datetime | None = None,
    until: datetime | None = None,
    step: timedelta = DEFAULT_STEP,
    agg: list[str] | None = None,
    source: str = "auto",
) -> tuple[list[dict], str]:
    """The points of ``[since, until]`` grouped into buckets of ``step``, oldest first,
    and which source served them (``raw``, ``5m`` or ``1h``).

    Buckets are aligned on multiples of ``step`` since the Unix epoch (a 5m bucket starts
    at :00, :05, …); ``time`` is a bucket's start.  Buckets without points are left out.
    Default window: the 24 hours up to now.  ``agg`` may add percentiles (``p50``,
    ``p90``, ``p95``, ``p99``) of load and memory.  ``source`` ``auto`` lets
    :func:`choose_source` pick; ``raw`` forces raw points; ``5m``/``1h`` force a rollup
    size (422 when it cannot serve this step).  Every source gives the same buckets
    (sums and extremes merge exactly; percentiles come from a rollup only when the
    step is its size).
    """
    if not MIN_STEP <= step <= MAX_STEP:
        raise InvalidInput.field("step", "The step must be between 10s and 1d.", "query")
    if source not in SOURCES:
        raise InvalidInput.field("source", f"Use one of {', '.join(SOURCES)}.", "query")
    pcts = parse_aggregates(agg)
    until = until if until is not None else utcnow()
    since = since if since is not None else until - DEFAULT_SERIES_WINDOW
    if since > until:
        raise InvalidInput.field("since", "`since` must not be after `until`.", "query")
    step_ms = step // timedelta(milliseconds=1)
    buckets = _bucket_count(since, until, step_ms)
    if buckets > MAX_BUCKETS:
        raise InvalidInput.field(
            "step",
            f"The window spans {buckets} buckets of this step; at most {MAX_BUCKETS}: "
            "choose a larger step or a shorter window.",
            "query",
        )
    if source in ROLLUP_SIZES:
        width = ROLLUP_SIZES[source]
        if step % width or (pcts and step != width):
            message = f"`{source}` rollups serve steps that are multiples of {source}"
            raise InvalidInput.field(
                "source", message + " (equal to it with percentiles).", "query"
            )
    metric = load_metric(metric_id)
    if source == "auto":
        source = choose_source(metric, since, until, step, pcts)
    elif source != "raw" and not metric.rollups:
        source = "raw"  # not covered by rollups yet: raw is the only exact answer
    kept = retention.floor(RETENTION, metric.project_id, since)  # raw points' horizon
    if source == "raw":
        parts = raw_partials(metric_id, kept, until, step, percentiles=bool(pcts))
    else:
        parts = _rollup_partials(metric_id, source, since, until, step, bool(pcts), kept)
    return [bucket_view(part, pcts) for part in merge(parts, step)], source


def cpu_series(metric_id: ObjectId, *args, **kwargs) -> list[dict]:
    """:func:`cpu_series_with_source` without the source."""
    return cpu_series_with_source(metric_id, *args, **kwargs)[0]


# --- usage --------------------------------------------------------------------------


def usage_of_projects(project_ids: list[ObjectId] | None) -> dict[ObjectId, dict]:
    """Receiver of ``projects.project_usage``: per project, ``points`` and ``rollups``
    (counts) and the ``oldest``/``newest`` point time, with ``bytes``, an estimate of
    what they store (counts × each collection's average document size, from
    ``collStats`` where the database gives it, else a measured typical size)."""
    query = (
        CpuMetric.objects if project_ids is None else CpuMetric.objects(project_id__in=project_ids)
    )
    project_of = dict(query.scalar("id", "project_id"))
    usage: dict[ObjectId, dict] = {}
    if not project_of:
        return usage
    ids = list(project_of)
    point_size = average_size(CpuPoint._get_collection(), TYPICAL_POINT_BYTES)
    rows = CpuPoint._get_collection().aggregate(
        [
            {"$match": {"metric_id": {"$in": ids}}},
            {
                "$group": {
                    "_id": "$metric_id",
                    "n": {"$sum": 1},
                    "oldest": {"$min": "$time"},
                    "newest": {"$max": "$time"},
                }
            },
        ]
    )
    for row in rows:
        entry = usage.setdefault(project_of[row["_id"]], _empty_usage())
        entry["points"] += row["n"]
        entry["bytes"] += row["n"] * point_size
        entry["oldest"] = _lower(entry["oldest"], row["oldest"])
        entry["newest"] = _higher(entry["newest"], row["newest"])
    for model in ROLLUPS.values():
        collection = model._get_collection()
        size = average_size(collection, TYPICAL_ROLLUP_BYTES)
        grouped = collection.aggregate(
            [
                {"$match": {"metric_id": {"$in": ids}}},
                {"$group": {"_id": "$metric_id", "n": {"$sum": 1}}},
            ]
        )
        for row in grouped:
            entry = usage.setdefault(project_of[row["_id"]], _empty_usage())
            entry["rollups"] += row["n"]
            entry["bytes"] += row["n"] * size
    return usage


def _empty_usage() -> dict:
    return {"points": 0, "rollups": 0, "oldest": None, "newest": None, "bytes": 0}


def _lower(a, b):
    return b if a is None else a if b is None else min(a, b)


def _higher(a, b):
    return b if a is None else a if b is None else max(a, b)


# --- ingest (OTLP) ------------------------------------------------------------------


@METRICS.writes
def append_ingested_points(
    project_id: ObjectId, points_by_service: dict[ObjectId, list[dict]]
) -> int:
    """Append validated points to the entries of several services of one project, in
    one all-or-nothing insert; an entry is created for a service that has none (the
    unique index on ``(project_id, service_id)`` settles a race).  Points of a service
    that no longer exists are not stored.  Returns how many points were stored.

    Used by ingest (``polymicro.ingest``), where one request carries the points of any
    number of services; the key's project has already been checked.
    """
    from mongoengine import NotUniqueError

    svcs = {}
    for service_id in points_by_service:
        try:
            svc = services.require_service(service_id)
        except NotFound:  # deleted meanwhile: its points are not stored
            continue
        if svc["project_id"] == project_id:
            svcs[service_id] = svc
    metric_ids = dict(
        CpuMetric.objects(project_id=project_id, service_id__in=list(svcs)).scalar(
            "service_id", "id"
        )
    )
    for service_id, svc in svcs.items():
        if service_id in metric_ids:
            continue
        metric = CpuMetric(
            project_id=project_id,
            service_id=service_id,
            service_name=svc["name"],
            service_key=name_key(svc["name"]),
            rollups=True,
        )
        try:
            metric.save(force_insert=True)
        except NotUniqueError:
            metric = CpuMetric.objects(project_id=project_id, service_id=service_id).first()
            if metric is None:  # created and deleted meanwhile
                continue
        metric_ids[service_id] = metric.id
    docs = [
        {"metric_id": metric_ids[service_id], "time": to_utc_naive(point["time"])}
        | {k: point[k] for k in ("load", "memory", "threads") if point.get(k) is not None}
        for service_id, points in points_by_service.items()
        if service_id in metric_ids
        for point in points
    ]
    if not docs:
        return 0
    ids = insert_all_or_nothing(CpuPoint._get_collection(), docs)
    record_ingest("cpu_points", len(ids))
    _mark_dirty(_hours_of(docs))
    METRICS.bump(project_id)
    stored = [sid for sid, points in points_by_service.items() if sid in metric_ids and points]
    points_stored.send(None, service_ids=stored)
    return len(ids)
