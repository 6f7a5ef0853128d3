"""Ingest rules at the service layer: identity, services, budget, time window, outcome."""

from __future__ import annotations

import pytest

from polymicro.errors import Forbidden
from polymicro.ingest import service as ingest
from polymicro.ingest.service import LogRecordIn, Outcome, PointIn
from polymicro.logs.models import LogEntry
from polymicro.metrics.models import CpuPoint
from polymicro.services import service as services
from polymicro.services.models import Service
from tests.factories import make_project, make_service


@pytest.fixture
def project(ctx):
    return make_project(name="shop")


def test_without_a_project_scope_nothing_is_stored(ctx):
    with pytest.raises(Forbidden, match="project API key"):
        ingest.store_logs(None, [LogRecordIn(service="a", message="x")], Outcome())
    assert LogEntry.objects.count() == 0
    assert Service.objects.count() == 0


def test_the_budget_is_charged_once_per_request_with_the_item_count(project, monkeypatch):
    calls = []
    monkeypatch.setattr(ingest, "_charge", lambda pid, n: calls.append((pid, n)))
    records = [LogRecordIn(service="a", message=f"m{i}") for i in range(3)]
    ingest.store_logs(project.id, records, Outcome())
    ingest.store_points(project.id, [PointIn(service="a", time_ns=None, load=1.0)], Outcome())
    assert calls == [(project.id, 3), (project.id, 1)]


def test_an_over_budget_request_stores_nothing(project, monkeypatch):
    class OverBudget(Exception):
        pass

    def refuse(project_id, entries):
        raise OverBudget

    monkeypatch.setattr(ingest, "_charge", refuse)
    with pytest.raises(OverBudget):
        ingest.store_logs(project.id, [LogRecordIn(service="a", message="x")], Outcome())
    assert LogEntry.objects.count() == 0
    assert Service.objects.count() == 0


class TestResolveServices:
    def test_existing_names_match_case_insensitively(self, project):
        svc = make_service(project, name="Checkout")
        ids, problems = ingest.resolve_services(project.id, {"checkout", "CHECKOUT"})
        assert ids == {"checkout": svc.id, "CHECKOUT": svc.id}
        assert problems == {}
        assert Service.objects.count() == 1

    def test_a_race_lost_in_the_service_check_ends_with_one_service(self, project, monkeypatch):
        real = services.create_service

        def other_request_wins(data):
            winner = real({"project_id": data["project_id"], "name": data["name"]})
            monkeypatch.setattr(services, "create_service", real)
            real(data)  # raises Conflict: the name is taken now
            return winner

        monkeypatch.setattr(services, "create_service", other_request_wins)
        ids, problems = ingest.resolve_services(project.id, {"api"})
        assert problems == {}
        (svc,) = Service.objects(project_id=project.id)
        assert ids == {"api": svc.id}

    def test_a_race_lost_at_the_unique_index_ends_with_one_service(self, project, monkeypatch):
        """Both requests passed the check; the index refuses the second insert."""
        real = services.create_service
        won = {}

        def racing(data):
            monkeypatch.setattr(services, "_ensure_name_free", lambda *a, **k: None)
            won["id"] = real({"project_id": data["project_id"], "name": data["name"]})["id"]
            return real(data)  # NotUniqueError from the (project_id, name_key) index

        monkeypatch.setattr(services, "create_service", racing)
        ids, problems = ingest.resolve_services(project.id, {"api"})
        assert problems == {}
        assert ids == {"api": won["id"]}
        assert Service.objects(project_id=project.id).count() == 1

    def test_at_most_twenty_new_services_per_request(self, project):
        names = {f"svc-{i:02d}" for i in range(25)}
        ids, problems = ingest.resolve_services(project.id, names)
        assert len(ids) == 20
        assert len(problems) == 5
        assert set(problems.values()) == {"more than 20 new services in one request"}
        assert Service.objects(project_id=project.id, discovered=True).count() == 20

    def test_a_deleted_project_rejects_instead_of_registering(self, ctx):
        from bson import ObjectId

        ids, problems = ingest.resolve_services(ObjectId(), {"api"})
        assert ids == {}
        assert problems == {"api": "the project no longer exists"}


def test_a_service_deleted_while_the_request_runs_rejects_only_its_records(project, monkeypatch):
    keep = make_service(project, name="keep")
    gone = make_service(project, name="gone")
    real = ingest.resolve_services

    def resolve_then_delete(project_id, names):
        result = real(project_id, names)
        services.delete_service(gone.id)
        return result

    monkeypatch.setattr(ingest, "resolve_services", resolve_then_delete)
    outcome = ingest.store_logs(
        project.id,
        [LogRecordIn(service="keep", message="a"), LogRecordIn(service="gone", message="b")],
        Outcome(),
    )
    assert outcome.accepted == 1
    assert outcome.rejected == {"service deleted while the request ran": 1}
    assert [e.message for e in LogEntry.objects] == ["a"]
    assert LogEntry.objects.first().service_id == keep.id


def test_points_of_a_service_deleted_meanwhile_are_rejected(project, monkeypatch):
    gone = make_service(project, name="gone")
    real = ingest.resolve_services

    def resolve_then_delete(project_id, names):
        result = real(project_id, names)
        services.delete_service(gone.id)
        return result

    monkeypatch.setattr(ingest, "resolve_services", resolve_then_delete)
    outcome = ingest.store_points(
        project.id, [PointIn(service="gone", time_ns=None, load=1.0)], Outcome()
    )
    assert outcome.accepted == 0
    assert outcome.rejected == {"service deleted while the request ran": 1}
    assert CpuPoint.objects.count() == 0


def test_a_record_the_logs_schema_refuses_is_rejected_alone(project):
    records = [
        LogRecordIn(service="a", message="fine"),
        LogRecordIn(service="a", message="bad key", attributes={"$where": "x"}),
        LogRecordIn(service="a", message="lone \ud800 surrogate"),
    ]
    outcome = ingest.store_logs(project.id, records, Outcome())
    assert outcome.accepted == 1
    assert outcome.rejected_count == 2
    assert any(reason.startswith("invalid attributes") for reason in outcome.rejected)
    assert any(reason.startswith("invalid message") for reason in outcome.rejected)
    assert [e.message for e in LogEntry.objects] == ["fine"]


def test_a_point_out_of_range_is_rejected_alone(project):
    points = [
        PointIn(service="a", time_ns=None, load=5.0),
        PointIn(service="a", time_ns=None, load=1e12),
    ]
    outcome = ingest.store_points(project.id, points, Outcome())
    assert outcome.accepted == 1
    assert list(outcome.rejected) == [
        "invalid load: Must be greater than or equal to 0 and less than or equal to 100000.0."
    ]


def test_the_outcome_message_lists_rejections_then_warnings():
    outcome = Outcome()
    outcome.rejected["empty body"] += 2
    outcome.rejected["timestamp older than X"] += 1
    outcome.warnings["messages cut"] += 4
    assert outcome.rejected_count == 3
    assert outcome.message() == (
        "2 rejected: empty body; 1 rejected: timestamp older than X; messages cut (4)"
    )


def test_the_outcome_message_names_at_most_ten_reasons():
    outcome = Outcome()
    for i in range(15):
        outcome.rejected[f"reason {i:02d}"] += 15 - i
    message = outcome.message()
    assert message.startswith("15 rejected: reason 00; 14 rejected: reason 01")
    assert "reason 09" in message
    assert "reason 10" not in message
    assert message.endswith("5 more reasons")
