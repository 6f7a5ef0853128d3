"""Service use cases: existence of the project, per-project name uniqueness, cascades."""

from __future__ import annotations

from collections import defaultdict

from bson import ObjectId

from polymicro.common.models import contains_literally, name_key
from polymicro.common.timeutil import utcnow
from polymicro.errors import Conflict, InvalidInput, NotFound
from polymicro.logs import service as logs
from polymicro.metrics import service as metrics
from polymicro.projects.models import Project
from polymicro.services.models import Service

ORDER = ("name_key", "id")


def services_by_project(project_ids: list[ObjectId]) -> dict[ObjectId, list[Service]]:
    """The services of several projects, fetched in one query."""
    grouped: dict[ObjectId, list[Service]] = defaultdict(list)
    if project_ids:
        for svc in Service.objects(project_id__in=project_ids).order_by(*ORDER):
            grouped[svc.project_id].append(svc)
    return grouped


def list_services(
    project_id: ObjectId | None = None,
    status: str | None = None,
    health: str | None = None,
    q: str | None = None,
):
    query = Service.objects
    if project_id is not None:
        query = query.filter(project_id=project_id)
    if status:
        query = query.filter(status=status)
    if health:
        query = query.filter(health=health)
    if q:
        query = query.filter(__raw__=contains_literally("name_key", name_key(q)))
    return query.order_by(*ORDER)


def list_project_services(project_id: ObjectId):
    if not Project.objects(id=project_id).count():
        raise NotFound(f"Project {project_id} not found.")
    return list_services(project_id=project_id)


def find_service(service_id: ObjectId) -> Service | None:
    return Service.objects(id=service_id).first()


def get_service(service_id: ObjectId) -> Service:
    svc = find_service(service_id)
    if svc is None:
        raise NotFound(f"Service {service_id} not found.")
    return svc


def find_service_by_name(project_id: ObjectId, name: str) -> Service | None:
    return Service.objects(project_id=project_id, name_key=name_key(name)).first()


def _ensure_name_free(project_id: ObjectId, name: str, exclude: ObjectId | None = None) -> None:
    clash = Service.objects(project_id=project_id, name_key=name_key(name))
    if exclude is not None:
        clash = clash.filter(id__ne=exclude)
    if clash.first() is not None:
        raise Conflict(
            f"Project {project_id} already has a service named {name!r} "
            "(names are case-insensitive)."
        )


def create_service(data: dict) -> Service:
    if not Project.objects(id=data["project_id"]).count():
        raise InvalidInput.field("project_id", "No project with this id.")
    _ensure_name_free(data["project_id"], data["name"])
    svc = Service(**data, name_key=name_key(data["name"]))
    svc.save(force_insert=True)
    return svc


def update_service(svc: Service, data: dict) -> Service:
    """Apply a partial update.  ``project_id`` cannot change; a rename carries over to the
    service's CPU metrics entry (the dashboard matches entries by name)."""
    if "project_id" in data and data["project_id"] != svc.project_id:
        raise InvalidInput.field("project_id", "A service cannot move to another project.")
    data = {k: v for k, v in data.items() if k != "project_id"}
    if "name" in data and name_key(data["name"]) != svc.name_key:
        _ensure_name_free(svc.project_id, data["name"], exclude=svc.id)
    changed = {k: v for k, v in data.items() if getattr(svc, k) != v}
    if changed:
        for key, value in changed.items():
            setattr(svc, key, value)
        svc.name_key = name_key(svc.name)
        svc.updated_at = utcnow()
        svc.save()
        if "name" in changed:
            metrics.rename_service(svc.id, svc.name)
    return svc


def delete_service(svc: Service) -> None:
    """Delete the service with its logs and metrics (children first)."""
    logs.delete_logs(service_id=svc.id)
    metrics.delete_metrics(service_id=svc.id)
    svc.delete()


def delete_services_of_project(project_id: ObjectId) -> None:
    logs.delete_logs(project_id=project_id)
    metrics.delete_metrics(project_id=project_id)
    Service.objects(project_id=project_id).delete()
