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

from datetime import datetime, timedelta
from functools import partial

from blinker import Namespace as Signals
from bson import ObjectId

from polymicro.common import atomic, caching, retention
from polymicro.common.atomic import insert_all_or_nothing
from polymicro.common.models import as_view, name_key
from polymicro.common.pagination import PagedQuery
from polymicro.common.timeutil import to_utc_naive, utcnow
from polymicro.errors import Conflict, InvalidInput, NotFound
from polymicro.metrics.models import (
    DEFAULT_POINTS,
    DEFAULT_SERIES_WINDOW,
    DEFAULT_STEP,
    MAX_BUCKETS,
    MAX_POINTS_PER_WRITE,
    MAX_STEP,
    MIN_STEP,
    CpuMetric,
    CpuPoint,
)
from polymicro.observability import record_ingest
from polymicro.projects import service as projects
from polymicro.security import charge_ingest, ensure_project
from polymicro.services import service as services

# Points past the retention horizon are hidden; the horizon (it moves with the time and
# the project's override) is part of every cached read's key.
METRICS = caching.Namespace(
    "metrics",
    scope="project_id",
    unscoped=False,
    bounded_staleness=True,
    salt=lambda project_id: retention.horizon(RETENTION, project_id),
)

_signals = Signals()
points_stored = _signals.signal(
    "cpu-points-stored",
    doc="Sent with service_ids= after CPU points of those services were stored.",
)


ORDER = ("id",)  # creation order, served by the _id index
EPOCH = datetime(1970, 1, 1)
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


# --- reading ------------------------------------------------------------------------


def latest_points(
    metric_id: ObjectId,
    since: datetime | None = None,
    until: datetime | None = None,
    points: int = DEFAULT_POINTS,
) -> list[dict]:
    """The latest ``points`` points of an entry inside ``[since, until]``, oldest first.

    One index range scan on ``(metric_id, time)``, newest first, stopped after
    ``points`` documents; reversed here.
    """
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
    paged = list_metrics(project_id=project_id, since=since, until=until, points=points)
    kept = retention.horizon(RETENTION, project_id)  # moves by the minute: part of the key
    key = caching.make_key("project-metrics", since=since, until=until, points=points, kept=kept)
    return caching.CachedQuery(METRICS.key(project_id), key, paged)


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
    return ids


def _delete_points_except(metric_id: ObjectId, keep: list[ObjectId]) -> None:
    CpuPoint._get_collection().delete_many({"metric_id": metric_id, "_id": {"$nin": keep}})


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


# --- downsampling -------------------------------------------------------------------


def _bucket_count(since: datetime, until: datetime, step_ms: int) -> int:
    """How many epoch-aligned buckets of ``step_ms`` the window ``[since, until]`` touches."""

    def ms(value: datetime) -> int:
        return (value - EPOCH) // timedelta(milliseconds=1)

    return ms(until) // step_ms - ms(since) // step_ms + 1


def cpu_series(
    metric_id: ObjectId,
    since: datetime | None = None,
    until: datetime | None = None,
    step: timedelta = DEFAULT_STEP,
) -> list[dict]:
    """The points of ``[since, until]`` grouped into buckets of ``step``, oldest first.

    Buckets are aligned on multiples of ``step`` since the Unix epoch (a 5m bucket starts
    at :00, :05, …); ``time`` is a bucket's start.  Buckets without points are left out.
    Default window: the 24 hours up to now.  The database does the work: one aggregation
    (``$match`` on the ``(metric_id, time)`` index, ``$group``, ``$sort``); the bucket key
    is computed with ``$subtract``/``$mod`` because ``$dateTrunc`` is not available
    everywhere the service runs (mongomock).
    """
    if not MIN_STEP <= step <= MAX_STEP:
        raise InvalidInput.field("step", "The step must be between 10s and 1d.", "query")
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
    metric = load_metric(metric_id)
    kept = retention.floor(RETENTION, metric.project_id, since)  # the retention horizon
    pipeline = [
        {"$match": {"metric_id": metric_id, "time": {"$gte": kept, "$lte": until}}},
        {
            "$group": {
                "_id": {
                    "$subtract": ["$time", {"$mod": [{"$subtract": ["$time", EPOCH]}, step_ms]}]
                },
                "count": {"$sum": 1},
                "load_avg": {"$avg": "$load"},
                "load_min": {"$min": "$load"},
                "load_max": {"$max": "$load"},
                "memory_avg": {"$avg": "$memory"},
                "memory_max": {"$max": "$memory"},
                "threads_max": {"$max": "$threads"},
            }
        },
        {"$sort": {"_id": 1}},
    ]
    return [
        {
            "time": row["_id"],
            "count": row["count"],
            "load": {"avg": row["load_avg"], "min": row["load_min"], "max": row["load_max"]},
            "memory": {"avg": row.get("memory_avg"), "max": row.get("memory_max")},
            "threads": {"max": row.get("threads_max")},
        }
        for row in CpuPoint._get_collection().aggregate(pipeline)
    ]


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
    METRICS.bump(project_id)
    stored = [sid for sid, points in points_by_service.items() if sid in metric_ids and points]
    points_stored.send(None, service_ids=stored)
    return len(ids)
