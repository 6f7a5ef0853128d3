"""Project rules at the service layer (no HTTP).

What a project's deletion does to the logs and metrics of its services is tested where
that reaction lives, in ``test_logs_service.py`` and ``test_metrics_service.py``.
"""

from __future__ import annotations

import pytest
from bson import ObjectId

from polymicro.errors import Conflict, NotFound
from polymicro.projects import service
from polymicro.projects.models import Project
from polymicro.services.models import Service
from tests.factories import make_project, make_service

pytestmark = pytest.mark.usefixtures("ctx")


def names(paged) -> list[str]:
    return [p.name for p in paged[0 : paged.count()]]


def test_create_stores_the_case_insensitive_key():
    project = service.create_project({"name": "Straße"})
    assert project.name_key == "strasse"
    assert Project.objects.get(id=project.id).name == "Straße"


@pytest.mark.parametrize("clash", ["ALPHA", "alpha", "Alpha"])
def test_duplicate_name_raises_conflict(clash):
    service.create_project({"name": "Alpha"})
    with pytest.raises(Conflict):
        service.create_project({"name": clash})
    assert Project.objects.count() == 1


def test_unique_index_backs_the_rule():
    """Even a write that skips the service check cannot store a duplicate name."""
    import mongoengine

    service.create_project({"name": "Alpha"})
    with pytest.raises(mongoengine.NotUniqueError):
        Project(name="ALPHA", name_key="alpha").save()


def test_get_unknown_raises_not_found():
    with pytest.raises(NotFound):
        service.get_project(ObjectId())


def test_list_filters_are_literal_and_sorted():
    make_project(name="a+b", owner="x", tags=["t"])
    make_project(name="aab", owner="y")
    assert names(service.list_projects(q="a+b")) == ["a+b"]
    assert names(service.list_projects(q="A")) == ["a+b", "aab"]
    assert names(service.list_projects(owner="y")) == ["aab"]
    assert names(service.list_projects(tag="t")) == ["a+b"]
    assert names(service.list_projects(sort="-name")) == ["aab", "a+b"]


def test_list_pages_attach_microservices_in_bulk():
    project = make_project()
    make_service(project, name="b")
    make_service(project, name="a")
    page = service.list_projects()[0:10]
    assert [s.name for s in page[0].microservices] == ["a", "b"]


def test_update_without_change_keeps_updated_at():
    project = make_project(owner="me")
    before = project.updated_at
    updated = service.update_project(project.id, {"owner": "me"})
    assert updated.updated_at == before


def test_update_changes_fields_and_updated_at():
    project = make_project(owner="me")
    updated = service.update_project(project.id, {"owner": "you", "name": "New"})
    stored = Project.objects.get(id=project.id)
    assert (stored.owner, stored.name, stored.name_key) == ("you", "New", "new")
    assert updated.updated_at >= project.created_at


def test_rename_onto_another_name_raises_conflict():
    make_project(name="taken")
    project = make_project(name="mine")
    with pytest.raises(Conflict):
        service.update_project(project.id, {"name": "TAKEN"})
    assert Project.objects.get(id=project.id).name == "mine"


def test_delete_removes_the_project_and_its_services_only():
    doomed, kept = make_project(), make_project()
    make_service(doomed)
    make_service(doomed)
    survivor = make_service(kept)
    service.delete_project(doomed.id)
    assert [p.id for p in Project.objects] == [kept.id]
    assert [s.id for s in Service.objects] == [survivor.id]
