"""Project use cases: the rules between the API and the documents."""

from __future__ import annotations

from bson import ObjectId

from polymicro.common.models import contains_literally, name_key
from polymicro.common.pagination import PagedQuery
from polymicro.common.timeutil import utcnow
from polymicro.errors import Conflict, NotFound
from polymicro.projects.models import Project
from polymicro.services import service as services

SORTS = {
    "name": ("name_key", "id"),
    "-name": ("-name_key", "-id"),
    "created_at": ("created_at", "id"),
    "-created_at": ("-created_at", "-id"),
}


def list_projects(
    q: str | None = None, owner: str | None = None, tag: str | None = None, sort: str = "name"
) -> PagedQuery:
    """Projects matching the filters; each page gets its services in one query."""
    query = Project.objects
    if q:
        query = query.filter(__raw__=contains_literally("name_key", name_key(q)))
    if owner:
        query = query.filter(owner=owner)
    if tag:
        query = query.filter(tags=tag)
    return PagedQuery(query.order_by(*SORTS[sort]), per_page=attach_microservices)


def attach_microservices(projects: list[Project]) -> list[Project]:
    by_project = services.services_by_project([p.id for p in projects])
    for project in projects:
        project.microservices = by_project.get(project.id, [])
    return projects


def find_project(project_id: ObjectId) -> Project | None:
    return Project.objects(id=project_id).first()


def get_project(project_id: ObjectId) -> Project:
    project = find_project(project_id)
    if project is None:
        raise NotFound(f"Project {project_id} not found.")
    return attach_microservices([project])[0]


def _ensure_name_free(name: str, exclude: ObjectId | None = None) -> None:
    clash = Project.objects(name_key=name_key(name))
    if exclude is not None:
        clash = clash.filter(id__ne=exclude)
    if clash.first() is not None:
        raise Conflict(f"A project named {name!r} already exists (names are case-insensitive).")


def create_project(data: dict) -> Project:
    _ensure_name_free(data["name"])
    project = Project(**data, name_key=name_key(data["name"]))
    project.save(force_insert=True)  # a racing duplicate hits the unique index → 409
    project.microservices = []
    return project


def update_project(project: Project, data: dict) -> Project:
    """Apply a partial update; ``updated_at`` moves only when something changed."""
    if "name" in data and name_key(data["name"]) != project.name_key:
        _ensure_name_free(data["name"], exclude=project.id)
    changed = {k: v for k, v in data.items() if getattr(project, k) != v}
    if changed:
        for key, value in changed.items():
            setattr(project, key, value)
        project.name_key = name_key(project.name)
        project.updated_at = utcnow()
        project.save()
    return attach_microservices([project])[0]


def delete_project(project: Project) -> None:
    """Delete the project with its services, their logs and their metrics.

    Children go first: an interruption leaves the project visible (and deletable
    again), never orphans that no API can reach.
    """
    services.delete_services_of_project(project.id)
    project.delete()
