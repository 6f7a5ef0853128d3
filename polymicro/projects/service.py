"""Project use cases: the rules between the API and the documents.

Reads return plain views (dicts) and are cached in the ``catalog`` namespace together
with the services (a project embeds its services); every write bumps it.
"""

from __future__ import annotations

from bson import ObjectId

from polymicro.auth import service as auth
from polymicro.common import caching
from polymicro.common.models import as_view, contains_literally, name_key
from polymicro.common.pagination import PagedQuery
from polymicro.common.timeutil import utcnow
from polymicro.errors import Conflict, NotFound
from polymicro.events import service as events
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
) -> caching.CachedQuery:
    """Projects matching the filters; each page gets its services in one query."""
    query = Project.objects
    if q:
        query = query.filter(__raw__=contains_literally("name_key", name_key(q)))
    if owner:
        query = query.filter(owner=owner)
    if tag:
        query = query.filter(tags=tag)
    paged = PagedQuery(query.order_by(*SORTS[sort]), per_page=project_views)
    key = caching.make_key("projects", q=q, owner=owner, tag=tag, sort=sort)
    return caching.CachedQuery(caching.CATALOG, key, paged)


def project_views(projects: list[Project]) -> list[dict]:
    """Views of projects with their ``microservices``, fetched in one query for all."""
    by_project = services.services_by_project([p.id for p in projects])
    return [as_view(p, microservices=by_project.get(p.id, [])) for p in projects]


def load_project(project_id: ObjectId) -> Project:
    """The stored document (for writes); NotFound when there is none."""
    project = Project.objects(id=project_id).first()
    if project is None:
        raise NotFound(f"Project {project_id} not found.")
    return project


def get_project(project_id: ObjectId) -> dict:
    """A project with its ``microservices`` (cached)."""
    key = caching.make_key("project", project_id)
    return caching.cached(
        caching.CATALOG, key, lambda: project_views([load_project(project_id)])[0]
    )


def _ensure_name_free(name: str, exclude: ObjectId | None = None) -> None:
    clash = Project.objects(name_key=name_key(name))
    if exclude is not None:
        clash = clash.filter(id__ne=exclude)
    if clash.first() is not None:
        raise Conflict(f"A project named {name!r} already exists (names are case-insensitive).")


def create_project(data: dict) -> dict:
    _ensure_name_free(data["name"])
    project = Project(**data, name_key=name_key(data["name"]))
    project.save(force_insert=True)  # a racing duplicate hits the unique index → 409
    caching.bump(caching.CATALOG)
    events.publish("project.created", project, project_id=project.id)
    return as_view(project, microservices=[])


def update_project(project_id: ObjectId, data: dict) -> dict:
    """Apply a partial update; ``updated_at`` moves only when something changed."""
    project = load_project(project_id)
    if "name" in data and name_key(data["name"]) != project.name_key:
        _ensure_name_free(data["name"], exclude=project.id)
    changed = {k: v for k, v in data.items() if getattr(project, k) != v}
    if changed:
        update = events.diff(project, changed)
        for key, value in changed.items():
            setattr(project, key, value)
        project.name_key = name_key(project.name)
        project.updated_at = utcnow()
        project.save()
        caching.bump(caching.CATALOG)
        events.publish("project.updated", project, project_id=project.id, changes=update)
    return project_views([project])[0]


def delete_project(project_id: ObjectId) -> None:
    """Delete the project with its services, their logs and their metrics.

    Children go first: an interruption leaves the project visible (and deletable
    again), never orphans that no API can reach.
    """
    project = load_project(project_id)
    services.delete_services_of_project(project.id)
    auth.delete_api_keys(project.id)
    project.delete()
    caching.bump(caching.CATALOG)
    events.publish("project.deleted", project, project_id=project.id)
