"""Service use cases: existence of the project, per-project name uniqueness, cascades.

Reads return plain views (dicts), cached in the ``catalog`` namespace (projects embed
their services, so both share it); every write bumps it.
"""

from __future__ import annotations

from collections import defaultdict

from bson import ObjectId

from polymicro.common import caching
from polymicro.common.models import as_view, contains_literally, name_key
from polymicro.common.pagination import PagedQuery
from polymicro.common.timeutil import utcnow
from polymicro.errors import Conflict, InvalidInput, NotFound
from polymicro.events import service as events
from polymicro.logs import service as logs
from polymicro.metrics import service as metrics
from polymicro.projects.models import Project
from polymicro.services.models import Service

ORDER = ("name_key", "id")


def _views(services: list[Service]) -> list[dict]:
    return [as_view(svc) for svc in services]


def services_by_project(project_ids: list[ObjectId]) -> dict[ObjectId, list[dict]]:
    """Views of the services of several projects, fetched in one query."""
    grouped: dict[ObjectId, list[dict]] = defaultdict(list)
    if project_ids:
        for svc in Service.objects(project_id__in=project_ids).order_by(*ORDER):
            grouped[svc.project_id].append(as_view(svc))
    return grouped


def list_services(
    project_id: ObjectId | None = None,
    status: str | None = None,
    health: str | None = None,
    q: str | None = None,
) -> caching.CachedQuery:
    query = Service.objects
    if project_id is not None:
        query = query.filter(project_id=project_id)
    if status:
        query = query.filter(status=status)
    if health:
        query = query.filter(health=health)
    if q:
        query = query.filter(__raw__=contains_literally("name_key", name_key(q)))
    paged = PagedQuery(query.order_by(*ORDER), per_page=_views)
    key = caching.make_key("services", project_id=project_id, status=status, health=health, q=q)
    return caching.CachedQuery(caching.CATALOG, key, paged)


def list_project_services(project_id: ObjectId) -> caching.CachedQuery:
    exists = caching.cached(  # only a True is cached (None is not): deletes bump CATALOG
        caching.CATALOG,
        caching.make_key("project-exists", project_id),
        lambda: Project.objects(id=project_id).count() > 0 or None,
    )
    if not exists:
        raise NotFound(f"Project {project_id} not found.")
    return list_services(project_id=project_id)


def load_service(service_id: ObjectId) -> Service:
    """The stored document (for writes); NotFound when there is none."""
    svc = Service.objects(id=service_id).first()
    if svc is None:
        raise NotFound(f"Service {service_id} not found.")
    return svc


def get_service(service_id: ObjectId) -> dict:
    """A service (cached)."""
    key = caching.make_key("service", service_id)
    return caching.cached(caching.CATALOG, key, lambda: as_view(load_service(service_id)))


def _ensure_name_free(project_id: ObjectId, name: str, exclude: ObjectId | None = None) -> None:
    clash = Service.objects(project_id=project_id, name_key=name_key(name))
    if exclude is not None:
        clash = clash.filter(id__ne=exclude)
    if clash.first() is not None:
        raise Conflict(
            f"Project {project_id} already has a service named {name!r} "
            "(names are case-insensitive)."
        )


def create_service(data: dict) -> dict:
    if not Project.objects(id=data["project_id"]).count():
        raise InvalidInput.field("project_id", "No project with this id.")
    _ensure_name_free(data["project_id"], data["name"])
    svc = Service(**data, name_key=name_key(data["name"]))
    svc.save(force_insert=True)
    caching.bump(caching.CATALOG)
    events.publish("service.created", svc, project_id=svc.project_id)
    return as_view(svc)


def update_service(service_id: ObjectId, data: dict) -> dict:
    """Apply a partial update.  ``project_id`` cannot change; a rename carries over to the
    service's CPU metrics entry (the dashboard matches entries by name)."""
    svc = load_service(service_id)
    if "project_id" in data and data["project_id"] != svc.project_id:
        raise InvalidInput.field("project_id", "A service cannot move to another project.")
    data = {k: v for k, v in data.items() if k != "project_id"}
    if "name" in data and name_key(data["name"]) != svc.name_key:
        _ensure_name_free(svc.project_id, data["name"], exclude=svc.id)
    changed = {k: v for k, v in data.items() if getattr(svc, k) != v}
    if changed:
        update = events.diff(svc, changed)
        for key, value in changed.items():
            setattr(svc, key, value)
        svc.name_key = name_key(svc.name)
        svc.updated_at = utcnow()
        svc.save()
        caching.bump(caching.CATALOG)
        events.publish("service.updated", svc, project_id=svc.project_id, changes=update)
        if "name" in changed:
            metrics.rename_service(svc.project_id, svc.id, svc.name)
    return as_view(svc)


def delete_service(service_id: ObjectId) -> None:
    """Delete the service with its logs and metrics (children first)."""
    svc = load_service(service_id)
    logs.delete_logs(service_id=svc.id)
    metrics.delete_metrics(svc.project_id, service_id=svc.id)
    svc.delete()
    caching.bump(caching.CATALOG)
    events.publish("service.deleted", svc, project_id=svc.project_id)


def delete_services_of_project(project_id: ObjectId) -> None:
    logs.delete_logs(project_id=project_id)
    metrics.delete_metrics(project_id)
    Service.objects(project_id=project_id).delete()
    caching.bump(caching.CATALOG)
