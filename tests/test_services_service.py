"""Service rules at the service layer (no HTTP).

What a service's deletion or rename does to its logs and metrics is tested where that
reaction lives, in ``test_logs_service.py`` and ``test_metrics_service.py``.
"""

from __future__ import annotations

import pytest
from bson import ObjectId

from polymicro.errors import Conflict, InvalidInput, NotFound
from polymicro.services import service
from polymicro.services.models import Service
from tests.factories import make_project, make_service

pytestmark = pytest.mark.usefixtures("ctx")


def test_create_in_unknown_project_is_invalid_input():
    with pytest.raises(InvalidInput) as info:
        service.create_service({"project_id": ObjectId(), "name": "api"})
    assert "project_id" in info.value.errors["json"]
    assert Service.objects.count() == 0


def test_name_is_unique_per_project_case_insensitively():
    project = make_project()
    make_service(project, name="API")
    with pytest.raises(Conflict):
        service.create_service({"project_id": project.id, "name": "api"})
    make_service(make_project(), name="api")  # another project: fine
    assert Service.objects.count() == 2


def test_list_project_services_of_unknown_project_raises_not_found():
    with pytest.raises(NotFound):
        service.list_project_services(ObjectId())


def test_get_unknown_raises_not_found():
    with pytest.raises(NotFound):
        service.get_service(ObjectId())


def test_list_filters():
    project = make_project()
    make_service(project, name="b", status="Running")
    make_service(project, name="a", status="Stopped", health="Critical")
    assert [s.name for s in service.list_services(project_id=project.id)] == ["a", "b"]
    assert [s.name for s in service.list_services(status="Running")] == ["b"]
    assert [s.name for s in service.list_services(health="Critical")] == ["a"]
    assert [s.name for s in service.list_services(q="B")] == ["b"]


def test_project_cannot_change():
    svc = make_service()
    with pytest.raises(InvalidInput):
        service.update_service(svc.id, {"project_id": make_project().id})
    assert Service.objects.get(id=svc.id).project_id == svc.project_id


def test_same_project_id_is_accepted_as_noop():
    svc = make_service()
    before = svc.updated_at
    assert service.update_service(svc.id, {"project_id": svc.project_id}).updated_at == before


def test_rename_to_taken_name_raises_conflict():
    project = make_project()
    make_service(project, name="a")
    svc = make_service(project, name="b")
    with pytest.raises(Conflict):
        service.update_service(svc.id, {"name": "A"})


def test_services_by_project_groups_in_one_call():
    p1, p2 = make_project(), make_project()
    make_service(p1, name="x")
    make_service(p2, name="y")
    grouped = service.services_by_project([p1.id, p2.id])
    assert [s.name for s in grouped[p1.id]] == ["x"]
    assert [s.name for s in grouped[p2.id]] == ["y"]
    assert service.services_by_project([]) == {}
