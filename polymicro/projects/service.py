"""Project use cases: the rules between the API and the documents.

Reads return plain views (dicts) and are cached in the ``catalog`` namespace together
with the services (a project embeds its services); every write bumps it.

Other domains ask whether a project exists with :func:`require_project` (cached while
it exists) and never read ``Project`` documents themselves.  Deleting a project
deletes what hangs off it first: the domains above this one (services, API keys)
subscribe to :data:`project_deleting` (see ``polymicro/domains.py``), so this module
imports none of them.
"""

from __future__ import annotations

from blinker import Namespace as Signals
from bson import ObjectId

from polymicro.common import caching, local_cache, retention
from polymicro.common.models import apply_changes, as_view, contains_literally, name_key
from polymicro.common.pagination import PagedQuery
from polymicro.errors import Conflict, InvalidInput, NotFound
from polymicro.events import service as events
from polymicro.projects.models import Project

# Projects and services share one namespace: a project's view embeds its services.
CATALOG = caching.Namespace("catalog")

_signals = Signals()
project_deleting = _signals.signal(
    "project-deleting",
    doc="Sent with the project id before a project is deleted: delete its children.",
)
project_views_extras = _signals.signal(
    "project-views",
    doc="Sent with a list of project ids; a receiver returns {project_id: {field: value}} "
    "to embed in the views (the services embed themselves as `microservices`).",
)
project_usage = _signals.signal(
    "project-usage",
    doc="Sent with a list of project ids (None: every project); a receiver returns "
    "{project_id: {kind: count, 'oldest', 'newest', 'bytes'}} for what it stores (the "
    "logs count logs, the metrics points and rollups).",
)

USAGE_COUNTS = ("logs", "points", "rollups")

SORTS = {
    "name": ("name_key", "id"),
    "-name": ("-name_key", "-id"),
    "created_at": ("created_at", "id"),
    "-created_at": ("-created_at", "-id"),
}


@CATALOG.reads
def list_projects(
    q: str | None = None, owner: str | None = None, tag: str | None = None, sort: str = "name"
) -> caching.CachedQuery:
    """Projects matching the filters; each page gets its services in one query."""
    query = Project.objects
    if q:
        query = query.filter(__raw__=contains_literally("name_key", name_key(q)))
    if owner:
        query = query.filter(owner=owner)
    if tag:
        query = query.filter(tags=tag)
    query = _ByUsage(query) if sort == "usage" else query.order_by(*SORTS[sort])
    paged = PagedQuery(query, per_page=project_views)
    key = caching.make_key("projects", q=q, owner=owner, tag=tag, sort=sort)
    return caching.CachedQuery(CATALOG.key(), key, paged)


class _ByUsage:
    """Projects of a query ordered by their estimated storage, largest first (then by
    name); pageable like a query set.  Usage is gathered once for all of them."""

    def __init__(self, query):
        self.query = query
        self._ids = None

    def _ordered(self) -> list[ObjectId]:
        if self._ids is None:
            rows = self.query.order_by(*SORTS["name"]).scalar("id")
            ids = list(rows)
            usage = usage_of(ids)
            self._ids = sorted(ids, key=lambda pid: -usage.get(pid, {}).get("bytes", 0))
        return self._ids

    def count(self) -> int:
        return len(self._ordered())

    def __getitem__(self, window: slice) -> list[Project]:
        ids = self._ordered()[window]
        found = {p.id: p for p in Project.objects(id__in=ids)}
        return [found[pid] for pid in ids if pid in found]


def usage_of(project_ids: list[ObjectId] | None) -> dict[ObjectId, dict]:
    """What the domains above store per project (see :data:`project_usage`), merged:
    counts, ``oldest``/``newest`` and ``storage_bytes``."""
    merged: dict[ObjectId, dict] = {}
    for _receiver, returned in project_usage.send(project_ids):
        for project_id, found in (returned or {}).items():
            entry = merged.setdefault(project_id, _empty_usage())
            for kind in USAGE_COUNTS:
                entry[kind] += found.get(kind, 0)
            entry["bytes"] += found.get("bytes", 0)
            for field, pick in (("oldest", min), ("newest", max)):
                if found.get(field) is not None:
                    current = entry[field]
                    entry[field] = found[field] if current is None else pick(current, found[field])
    return merged


def _empty_usage() -> dict:
    return dict.fromkeys(USAGE_COUNTS, 0) | {"oldest": None, "newest": None, "bytes": 0}


def project_usage_view(project_id: ObjectId) -> dict:
    """``GET /api/projects/{id}/usage``: counts of the project's logs, CPU points and
    rollups, the oldest and newest stored timestamps, and an estimated size in bytes
    (counts × average stored document size).  Computed on each call (not cached)."""
    require_project(project_id)
    usage = usage_of([project_id]).get(project_id, _empty_usage())
    return {"project_id": project_id, **usage}


def project_views(projects: list[Project]) -> list[dict]:
    """Views of projects with what other domains embed in them (their
    ``microservices``), fetched in one query per domain for the whole page."""
    ids = [p.id for p in projects]
    extras: dict = {p.id: {} for p in projects}
    for _receiver, returned in project_views_extras.send(ids):
        for project_id, fields in (returned or {}).items():
            extras[project_id] |= fields
    return [as_view(p, **extras[p.id]) for p in projects]


def load_project(project_id: ObjectId) -> Project:
    """The stored document (for this domain's writes); NotFound when there is none."""
    project = Project.objects(id=project_id).first()
    if project is None:
        raise NotFound(f"Project {project_id} not found.")
    return project


@CATALOG.reads
def require_project(project_id: ObjectId, *, field: str | None = None) -> dict:
    """``{"id", "name"}`` of an existing project, cached while it exists.

    The one way to ask "does this project exist?".  NotFound (404) when it does not,
    or, with ``field``, an InvalidInput (422) on that body field (the id came in a
    request body rather than in the path).
    """
    parts = ("project-ref", project_id)
    ref = local_cache.cached(CATALOG.key(), parts, lambda: _project_ref(project_id))
    if ref is None:
        if field is not None:
            raise InvalidInput.field(field, "No project with this id.")
        raise NotFound(f"Project {project_id} not found.")
    return ref


def _project_ref(project_id: ObjectId) -> dict | None:
    row = Project.objects(id=project_id).only("name").as_pymongo().first()
    return None if row is None else {"id": row["_id"], "name": row["name"]}


@CATALOG.reads
def get_project(project_id: ObjectId) -> dict:
    """A project with its ``microservices`` (cached)."""
    key = caching.make_key("project", project_id)
    return caching.cached(CATALOG.key(), key, lambda: project_views([load_project(project_id)])[0])


def _ensure_name_free(name: str, exclude: ObjectId | None = None) -> None:
    clash = Project.objects(name_key=name_key(name))
    if exclude is not None:
        clash = clash.filter(id__ne=exclude)
    if clash.first() is not None:
        raise Conflict(f"A project named {name!r} already exists (names are case-insensitive).")


def _retention(data: dict) -> None:
    """Normalise and check ``retention`` in a body: null or {} clears it, null values are
    left out, and no value may be longer than the global setting (422)."""
    if "retention" not in data:
        return
    values = {k: v for k, v in (data["retention"] or {}).items() if v is not None}
    retention.check_overrides(values)
    data["retention"] = values


@CATALOG.reads
def retention_overrides() -> dict:
    """``{project_id: {"logs_days": …, "points_days": …}}`` of the projects that shorten
    the retention (the retention registry reads it on every list read).

    Kept in this process like the project and service references
    (:func:`polymicro.common.local_cache.cached`): exact in the worker that changed a
    project's ``retention``, at most ``REFERENCE_RECHECK_MS`` (500 ms) late in the
    others, whose horizons move by the minute anyway.  Every cached read of a project's
    logs or CPU points asks for it (the epoch and the key of its response): as a Redis
    entry it doubled the keys of each hit's ``MGET`` (8 instead of 4) and cost about a
    tenth of the hit's CPU (bench/hit_cost.py, README "Where issue 9 stands")."""
    return local_cache.cached(CATALOG.key(), ("retention-overrides",), _overrides)


def _overrides() -> dict:
    query = {"$or": [{"retention.logs_days": {"$gt": 0}}, {"retention.points_days": {"$gt": 0}}]}
    rows = Project.objects(__raw__=query).only("retention").as_pymongo()
    return {row["_id"]: dict(row.get("retention") or {}) for row in rows}


@CATALOG.writes
def create_project(data: dict) -> dict:
    _retention(data)
    _ensure_name_free(data["name"])
    project = Project(**data, name_key=name_key(data["name"]))
    project.save(force_insert=True)  # a racing duplicate hits the unique index → 409
    CATALOG.bump()
    events.publish("project.created", project, project_id=project.id)
    return project_views([project])[0]


@CATALOG.writes
def update_project(project_id: ObjectId, data: dict) -> dict:
    """Apply a partial update; ``updated_at`` moves only when something changed."""
    _retention(data)
    project = load_project(project_id)
    if "name" in data and name_key(data["name"]) != project.name_key:
        _ensure_name_free(data["name"], exclude=project.id)
    changed = apply_changes(project, data)
    if changed:
        CATALOG.bump()
        events.publish(
            "project.updated", project, project_id=project.id, changes=events.changes_of(changed)
        )
    return project_views([project])[0]


@CATALOG.writes
def delete_project(project_id: ObjectId) -> None:
    """Delete the project with everything that hangs off it.

    Children go first (the receivers of :data:`project_deleting`: services with their
    logs and metrics, API keys): an interruption leaves the project visible (and
    deletable again), never orphans that no API can reach.
    """
    project = load_project(project_id)
    project_deleting.send(project.id)
    project.delete()
    CATALOG.bump()
    events.publish("project.deleted", project, project_id=project.id)
