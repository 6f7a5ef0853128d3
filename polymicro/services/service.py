"""Service use cases: existence of the project, per-project name uniqueness, cascades.

Reads return plain views (dicts), cached in the ``catalog`` namespace (projects embed
their services, so both share it); every write bumps it.

Other domains ask for a service with :func:`require_service` or :func:`find_service`
(cached) and never read ``Service`` documents themselves.  What hangs off a service
(its logs and CPU metrics) lives in domains above this one: they subscribe to
:data:`services_deleting` and :data:`service_renamed` (see ``polymicro/domains.py``),
so this module imports neither of them.

The liveness domain (above this one) adds to the views: every view goes through
:data:`service_views_extras` (``liveness``, and the ``health``/``status`` it implies),
and the ``status``, ``health`` and ``liveness`` filters ask :data:`service_view_filters`
for a condition that matches what the views show.  Without a receiver, ``status`` and
``health`` match the stored values and ``liveness`` matches nothing.
"""

from __future__ import annotations

from collections import defaultdict

from blinker import Namespace as Signals
from bson import ObjectId

from polymicro.common import caching, local_cache
from polymicro.common.models import apply_changes, as_view, contains_literally, name_key
from polymicro.common.pagination import PagedQuery
from polymicro.errors import Conflict, InvalidInput, NotFound
from polymicro.events import service as events
from polymicro.projects import service as projects
from polymicro.services.models import Service

CATALOG = projects.CATALOG  # a project's view embeds its services: one namespace

_signals = Signals()
services_deleting = _signals.signal(
    "services-deleting",
    doc="Sent with project_id= and service_id= (None: every service of the project) "
    "before services are deleted: delete what hangs off them.",
)
service_renamed = _signals.signal(
    "service-renamed",
    doc="Sent with project_id=, service_id= and name= after a service was renamed.",
)

service_views_extras = _signals.signal(
    "service-views",
    doc="Sent with a list of service ids; a receiver returns {service_id: {field: value}} "
    "to merge into the views (liveness: `liveness`, and the `health`/`status` it implies).",
)
service_view_filters = _signals.signal(
    "service-view-filters",
    doc="Sent with status=, health= and liveness= (None when not asked); a receiver returns "
    "a raw condition on services that matches the values the views show (or None).",
)

ORDER = ("name_key", "id")


def _views(services: list[Service]) -> list[dict]:
    """Views of stored services with what other domains add to them (one query per
    receiver for the whole list)."""
    views = [as_view(svc) for svc in services]
    if views:
        for _receiver, returned in service_views_extras.send([v["id"] for v in views]):
            for view in views:
                view |= (returned or {}).get(view["id"], {})
    return views


def services_by_project(project_ids: list[ObjectId]) -> dict[ObjectId, list[dict]]:
    """Views of the services of several projects, fetched in one query."""
    grouped: dict[ObjectId, list[dict]] = defaultdict(list)
    if project_ids:
        for view in _views(list(Service.objects(project_id__in=project_ids).order_by(*ORDER))):
            grouped[view["project_id"]].append(view)
    return grouped


def embed_in_project_views(project_ids: list[ObjectId]) -> dict[ObjectId, dict]:
    """Receiver of ``projects.project_views_extras``: each project's ``microservices``."""
    grouped = services_by_project(project_ids)
    return {pid: {"microservices": grouped.get(pid, [])} for pid in project_ids}


@CATALOG.reads
def list_services(
    project_id: ObjectId | None = None,
    status: str | None = None,
    health: str | None = None,
    q: str | None = None,
    liveness: str | None = None,
) -> caching.CachedQuery:
    query = Service.objects
    if project_id is not None:
        query = query.filter(project_id=project_id)
    raw = _view_filters(status, health, liveness)
    if q:
        raw.append(contains_literally("name_key", name_key(q)))
    if raw:
        query = query.filter(__raw__={"$and": raw})
    paged = PagedQuery(query.order_by(*ORDER), per_page=_views)
    key = caching.make_key(
        "services", project_id=project_id, status=status, health=health, q=q, liveness=liveness
    )
    return caching.CachedQuery(CATALOG.key(), key, paged)


def _view_filters(status: str | None, health: str | None, liveness: str | None) -> list[dict]:
    """Conditions matching the shown ``status``, ``health`` and ``liveness``."""
    if not (status or health or liveness):
        return []
    asked = {"status": status, "health": health, "liveness": liveness}
    found = [c for _r, c in service_view_filters.send(None, **asked) if c]
    if found:
        return found
    stored = [{field: asked[field]} for field in ("status", "health") if asked[field]]
    return stored + ([{"_id": {"$in": []}}] if liveness else [])


@CATALOG.reads
def list_project_services(project_id: ObjectId) -> caching.CachedQuery:
    projects.require_project(project_id)
    return list_services(project_id=project_id)


def load_service(service_id: ObjectId) -> Service:
    """The stored document (for this domain's writes); NotFound when there is none."""
    svc = Service.objects(id=service_id).first()
    if svc is None:
        raise NotFound(f"Service {service_id} not found.")
    return svc


def _ref(row: dict | None) -> dict | None:
    if row is None:
        return None
    return {"id": row["_id"], "project_id": row["project_id"], "name": row["name"]}


@CATALOG.reads
def require_service(service_id: ObjectId, *, field: str | None = None) -> dict:
    """``{"id", "project_id", "name"}`` of an existing service, cached while it exists.

    The one way to ask "does this service exist?".  NotFound (404) when it does not,
    or, with ``field``, an InvalidInput (422) on that body field.
    """
    parts = ("service-ref", service_id)
    ref = local_cache.cached(CATALOG.key(), parts, lambda: _service_ref(service_id))
    if ref is None:
        if field is not None:
            raise InvalidInput.field(field, "No service with this id.")
        raise NotFound(f"Service {service_id} not found.")
    return ref


def _service_ref(service_id: ObjectId) -> dict | None:
    # Built on a miss only: a queryset (three clones) per call was a cost of every POST.
    return _ref(Service.objects(id=service_id).only("project_id", "name").as_pymongo().first())


@CATALOG.reads
def find_service(project_id: ObjectId, name: str) -> dict | None:
    """``{"id", "project_id", "name"}`` of the project's service named ``name``
    (case-insensitively), or None; cached while it exists."""
    key = caching.make_key("service-named", project_id, name_key(name))
    fields = ("project_id", "name")
    return caching.cached(
        CATALOG.key(),
        key,
        lambda: _ref(
            Service.objects(project_id=project_id, name_key=name_key(name))
            .only(*fields)
            .as_pymongo()
            .first()
        ),
    )


@CATALOG.reads
def get_service(service_id: ObjectId) -> dict:
    """A service (cached)."""
    key = caching.make_key("service", service_id)
    return caching.cached(CATALOG.key(), key, lambda: _views([load_service(service_id)])[0])


def _ensure_name_free(project_id: ObjectId, name: str, exclude: ObjectId | None = None) -> None:
    clash = Service.objects(project_id=project_id, name_key=name_key(name))
    if exclude is not None:
        clash = clash.filter(id__ne=exclude)
    if clash.first() is not None:
        raise Conflict(
            f"Project {project_id} already has a service named {name!r} "
            "(names are case-insensitive)."
        )


@CATALOG.writes
def create_service(data: dict) -> dict:
    projects.require_project(data["project_id"], field="project_id")
    _ensure_name_free(data["project_id"], data["name"])
    svc = Service(**data, name_key=name_key(data["name"]))
    svc.save(force_insert=True)
    CATALOG.bump()
    events.publish("service.created", svc, project_id=svc.project_id)
    return _views([svc])[0]


@CATALOG.writes
def update_service(service_id: ObjectId, data: dict) -> dict:
    """Apply a partial update.  ``project_id`` cannot change; a rename is announced
    (:data:`service_renamed`: the CPU metrics entry follows, since the dashboard matches
    entries by name)."""
    svc = load_service(service_id)
    if "project_id" in data and data["project_id"] != svc.project_id:
        raise InvalidInput.field("project_id", "A service cannot move to another project.")
    data = {k: v for k, v in data.items() if k != "project_id"}
    if "name" in data and name_key(data["name"]) != svc.name_key:
        _ensure_name_free(svc.project_id, data["name"], exclude=svc.id)
    changed = apply_changes(svc, data)
    if changed:
        CATALOG.bump()
        events.publish(
            "service.updated", svc, project_id=svc.project_id, changes=events.changes_of(changed)
        )
        if "name" in changed:
            service_renamed.send(
                svc.id, project_id=svc.project_id, service_id=svc.id, name=svc.name
            )
    return _views([svc])[0]


@CATALOG.writes
def delete_service(service_id: ObjectId) -> None:
    """Delete the service with what hangs off it (children first)."""
    svc = load_service(service_id)
    services_deleting.send(svc.id, project_id=svc.project_id, service_id=svc.id)
    svc.delete()
    CATALOG.bump()
    events.publish("service.deleted", svc, project_id=svc.project_id)


@CATALOG.writes
def delete_services_of_project(project_id: ObjectId) -> None:
    """Receiver of ``projects.project_deleting``: every service of the project, with
    what hangs off them (children first)."""
    services_deleting.send(project_id, project_id=project_id, service_id=None)
    Service.objects(project_id=project_id).delete()
    CATALOG.bump()
