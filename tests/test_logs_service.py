"""Log rules at the service layer (no HTTP)."""

from __future__ import annotations

import pytest
from bson import ObjectId
from mongoengine.queryset import QuerySet

from polymicro.common.caching import CachedQuery
from polymicro.common.timeutil import utcnow
from polymicro.errors import InvalidInput, NotFound
from polymicro.logs import service
from polymicro.logs.models import LogEntry
from polymicro.projects.service import require_project as projects_require
from polymicro.services.service import require_service as services_require
from tests.factories import at, log_data, make_log, make_logs, make_service

pytestmark = pytest.mark.usefixtures("ctx")


@pytest.fixture
def svc():
    return make_service()


@pytest.fixture
def sibling(svc):
    """Another service of the project of ``svc``."""
    return make_service(project_id=svc.project_id)


@pytest.fixture
def other_svc():
    """A service of another project."""
    return make_service()


class TestCreate:
    def test_stores_entry_with_level_and_receipt_time(self, svc):
        before = utcnow()
        entry = make_log(svc, severity="error", attributes={"trace": "t1"})
        after = utcnow()
        stored = LogEntry.objects.get(id=entry.id)
        assert stored.severity == "error"
        assert stored.level == 3
        assert before <= stored.timestamp <= after
        assert stored.attributes == {"trace": "t1"}
        assert (stored.project_id, stored.service_id) == (svc.project_id, svc.id)

    @pytest.mark.parametrize(
        ("given", "severity", "level"),
        [
            ("debug", "debug", 0),
            ("INFO", "info", 1),
            ("warning", "warn", 2),
            ("Warn", "warn", 2),
            ("error", "error", 3),
            ("fatal", "critical", 4),
            ("critical", "critical", 4),
        ],
    )
    def test_severity_is_canonical_and_level_follows(self, svc, given, severity, level):
        stored = LogEntry.objects.get(id=make_log(svc, severity=given).id)
        assert (stored.severity, stored.level) == (severity, level)

    def test_given_timestamp_is_kept(self, svc):
        assert LogEntry.objects.get(id=make_log(svc, timestamp=at(3)).id).timestamp == at(3)

    def test_unknown_severity_is_invalid_input(self, svc):
        with pytest.raises(InvalidInput) as info:
            make_log(svc, severity="loud")
        assert "severity" in info.value.errors["json"]
        assert LogEntry.objects.count() == 0

    def test_unknown_project_is_invalid_input(self, svc):
        with pytest.raises(InvalidInput) as info:
            make_log(svc, project_id=ObjectId())
        assert list(info.value.errors["json"]) == ["project_id"]
        assert LogEntry.objects.count() == 0

    def test_unknown_service_is_invalid_input(self, svc):
        with pytest.raises(InvalidInput) as info:
            make_log(svc, service_id=ObjectId())
        assert info.value.errors["json"] == {"service_id": ["No service with this id."]}
        assert LogEntry.objects.count() == 0

    def test_service_of_another_project_is_invalid_input(self, svc, other_svc):
        with pytest.raises(InvalidInput) as info:
            make_log(svc, service_id=other_svc.id)
        assert info.value.errors["json"] == {
            "service_id": ["This service belongs to another project."]
        }
        assert LogEntry.objects.count() == 0

    def test_unknown_project_and_service_are_both_named(self, svc):
        with pytest.raises(InvalidInput) as info:
            make_log(svc, project_id=ObjectId(), service_id=ObjectId())
        assert set(info.value.errors["json"]) == {"project_id", "service_id"}
        assert LogEntry.objects.count() == 0


class TestCreateMany:
    def test_stores_all_and_returns_ids_in_input_order(self, svc, other_svc):
        entries = [
            log_data(svc, message="a"),
            log_data(other_svc, message="b", severity="fatal"),
            log_data(svc, message="c", timestamp=at(1)),
        ]
        before = utcnow()
        ids = service.create_logs(entries)
        assert len(ids) == 3
        assert all(isinstance(i, ObjectId) for i in ids)
        stored = [LogEntry.objects.get(id=i) for i in ids]
        assert [e.message for e in stored] == ["a", "b", "c"]
        assert [e.level for e in stored] == [1, 4, 1]
        assert stored[0].timestamp == stored[1].timestamp  # one receipt time per batch
        assert stored[0].timestamp >= before
        assert stored[2].timestamp == at(1)

    def test_any_bad_reference_stores_nothing_and_names_each_index(self, svc, other_svc):
        entries = [log_data(svc, message=str(i)) for i in range(8)]
        entries[2]["service_id"] = other_svc.id
        entries[5]["project_id"] = ObjectId()
        entries[7]["service_id"] = ObjectId()
        with pytest.raises(InvalidInput) as info:
            service.create_logs(entries)
        errors = info.value.errors["json"]
        assert set(errors) == {"2", "5", "7"}
        assert errors["2"] == {"service_id": ["This service belongs to another project."]}
        assert errors["5"] == {"project_id": ["No project with this id."]}
        assert errors["7"] == {"service_id": ["No service with this id."]}
        assert LogEntry.objects.count() == 0

    def test_empty_batch_is_invalid_input(self):
        with pytest.raises(InvalidInput):
            service.create_logs([])

    def test_references_are_checked_once_per_distinct_project_and_service(self, monkeypatch):
        services = [make_service() for _ in range(5)]
        entries = [log_data(services[i % 5], message=str(i)) for i in range(200)]
        asked = []

        def counting(require):
            def wrapper(object_id, **kwargs):
                asked.append(object_id)
                return require(object_id, **kwargs)

            return wrapper

        monkeypatch.setattr(service.projects, "require_project", counting(projects_require))
        monkeypatch.setattr(service.services, "require_service", counting(services_require))
        assert len(service.create_logs(entries)) == 200
        expected = {s.project_id for s in services} | {s.id for s in services}
        assert sorted(asked) == sorted(expected)  # 10 lookups for 200 entries

    def test_one_bulk_insert_and_no_single_saves(self, svc, monkeypatch):
        inserts = []
        collection_class = type(LogEntry._get_collection())
        real_insert = collection_class.insert_many

        def counting_insert(self, docs, *args, **kwargs):
            inserts.append(len(docs))
            return real_insert(self, docs, *args, **kwargs)

        def no_save(self, *args, **kwargs):
            raise AssertionError("a batch must not save entries one by one")

        monkeypatch.setattr(collection_class, "insert_many", counting_insert)
        monkeypatch.setattr(LogEntry, "save", no_save)
        service.create_logs([log_data(svc, message=str(i)) for i in range(50)])
        assert inserts == [50]
        assert LogEntry.objects.count() == 50


class TestGetUpdateDelete:
    def test_get_unknown_raises_not_found(self):
        with pytest.raises(NotFound):
            service.get_log(ObjectId())

    def test_get_returns_the_entry(self, svc):
        entry = make_log(svc)
        assert service.get_log(entry.id).id == entry.id

    def test_severity_update_keeps_level_in_step(self, svc):
        entry = make_log(svc, severity="debug")
        service.update_log(entry, {"severity": "Fatal"})
        stored = LogEntry.objects.get(id=entry.id)
        assert (stored.severity, stored.level) == ("critical", 4)

    def test_other_fields_are_updated_and_the_rest_kept(self, svc):
        entry = make_log(svc, source="api", attributes={"a": 1}, timestamp=at(0))
        service.update_log(entry, {"message": "edited", "timestamp": at(5)})
        stored = LogEntry.objects.get(id=entry.id)
        assert (stored.message, stored.timestamp) == ("edited", at(5))
        assert (stored.source, stored.attributes, stored.level) == ("api", {"a": 1}, 1)

    @pytest.mark.parametrize("field", ["project_id", "service_id"])
    def test_project_and_service_cannot_change(self, svc, other_svc, field):
        entry = make_log(svc)
        elsewhere = {"project_id": other_svc.project_id, "service_id": other_svc.id}[field]
        with pytest.raises(InvalidInput) as info:
            service.update_log(entry, {field: elsewhere, "message": "moved"})
        assert list(info.value.errors["json"]) == [field]
        stored = LogEntry.objects.get(id=entry.id)
        assert (stored.project_id, stored.service_id, stored.message) == (
            svc.project_id,
            svc.id,
            "started",
        )

    def test_repeating_project_and_service_is_accepted(self, svc):
        entry = make_log(svc)
        updated = service.update_log(
            entry, {"project_id": svc.project_id, "service_id": svc.id, "message": "same ids"}
        )
        assert updated.message == "same ids"
        assert LogEntry.objects.get(id=entry.id).message == "same ids"

    def test_noop_update_does_not_write(self, svc, monkeypatch):
        entry = make_log(svc, severity="warn")

        def no_save(*args, **kwargs):
            raise AssertionError("nothing changed: nothing to save")

        monkeypatch.setattr(entry, "save", no_save)
        same = {"severity": "warning", "message": "started", "project_id": svc.project_id}
        assert service.update_log(entry, same) is entry
        assert service.update_log(entry, {}) is entry

    def test_delete_log_deletes_only_that_entry(self, svc):
        gone, kept = make_log(svc), make_log(svc)
        service.delete_log(gone)
        assert [e.id for e in LogEntry.objects] == [kept.id]

    def test_delete_logs_of_a_service(self, svc, sibling):
        make_log(svc)
        make_log(svc)
        kept = make_log(sibling)
        assert service.delete_logs(service_id=svc.id) == 2
        assert [e.id for e in LogEntry.objects] == [kept.id]

    def test_delete_logs_of_a_project(self, svc, other_svc):
        make_log(svc)
        kept = make_log(other_svc)
        assert service.delete_logs(project_id=svc.project_id) == 1
        assert [e.id for e in LogEntry.objects] == [kept.id]

    def test_delete_logs_needs_a_parent(self, svc):
        make_log(svc)
        with pytest.raises(ValueError, match="project_id or service_id"):
            service.delete_logs()
        assert LogEntry.objects.count() == 1


@pytest.fixture
def by_severity(svc):
    """One entry per severity: debug oldest … critical newest."""
    names = ["debug", "info", "warn", "error", "critical"]
    stored = make_logs(svc, [{"severity": n, "timestamp": at(i)} for i, n in enumerate(names)])
    return dict(zip(names, stored, strict=True))


def listed(query) -> list[ObjectId]:
    return [entry.id for entry in query]


def database_query(cached: CachedQuery) -> QuerySet:
    """The mongoengine queryset behind a cached, paged list."""
    return cached.query.queryset


class TestList:
    def test_returns_newest_first_pages_read_as_raw_rows(self, svc):
        first = make_log(svc, timestamp=at(1))
        tie_a = make_log(svc, timestamp=at(2))
        tie_b = make_log(svc, timestamp=at(2))
        last = make_log(svc, timestamp=at(3))
        query = service.list_logs()
        assert isinstance(query, CachedQuery)
        assert database_query(query)._ordering == [("timestamp", -1), ("_id", -1)]
        assert database_query(query)._as_pymongo  # no document built per row
        assert listed(query) == [last.id, tie_b.id, tie_a.id, first.id]
        assert query.count() == 4
        assert listed(query[1:3]) == [tie_b.id, tie_a.id]

    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            ({"severity": ["error"]}, ["error"]),
            ({"severity": ["warning", "FATAL"]}, ["critical", "warn"]),
            ({"min_severity": "warn"}, ["critical", "error", "warn"]),
            ({"min_severity": "warning"}, ["critical", "error", "warn"]),
            ({"min_severity": "critical"}, ["critical"]),
            ({"severity": ["info", "error"], "min_severity": "warn"}, ["error"]),
            ({"severity": ["debug"], "min_severity": "info"}, []),
            ({"since": at(1), "until": at(3)}, ["error", "warn", "info"]),
            ({"since": at(4)}, ["critical"]),
            ({"until": at(0)}, ["debug"]),
            ({"since": at(2), "until": at(2)}, ["warn"]),
        ],
    )
    def test_filters(self, by_severity, filters, expected):
        assert listed(service.list_logs(**filters)) == [by_severity[s] for s in expected]

    def test_min_severity_uses_the_stored_level(self, by_severity):
        query = service.list_logs(min_severity="error")
        assert database_query(query)._query == {"level": {"$gte": 3}}

    def test_unknown_severity_filter_is_invalid_input(self):
        with pytest.raises(InvalidInput):
            service.list_logs(min_severity="loud")

    @pytest.mark.parametrize("field", ["source", "test_id", "func_id"])
    def test_exact_match_fields(self, svc, field):
        hit = make_log(svc, **{field: "alpha"})
        make_log(svc, **{field: "alphabet"})
        make_log(svc, **{field: "Alpha"})
        make_log(svc)
        assert listed(service.list_logs(**{field: "alpha"})) == [hit.id]

    @pytest.mark.parametrize("needle", [".*[(", "\\", "a+b", "(x|y)", "[a-z]", "C:\\temp"])
    def test_q_is_literal_and_case_insensitive(self, svc, needle):
        hit = make_log(svc, message=f"BEFORE {needle.upper()} after")
        make_log(svc, message="abbb aab x y z C:/temp")
        assert listed(service.list_logs(q=needle)) == [hit.id]

    def test_project_and_service_filters(self, svc, sibling, other_svc):
        own, sib = make_log(svc, timestamp=at(1)), make_log(sibling, timestamp=at(2))
        other = make_log(other_svc)
        assert listed(service.list_logs(project_id=svc.project_id)) == [sib.id, own.id]
        assert listed(service.list_logs(service_id=svc.id)) == [own.id]
        assert listed(service.list_project_logs(other_svc.project_id)) == [other.id]
        assert listed(service.list_service_logs(sibling.id)) == [sib.id]
        assert listed(service.list_project_logs(svc.project_id, service_id=svc.id)) == [own.id]

    def test_parent_lists_raise_not_found(self):
        with pytest.raises(NotFound):
            service.list_project_logs(ObjectId())
        with pytest.raises(NotFound):
            service.list_service_logs(ObjectId())


class TestCascades:
    """The logs of a deleted service or project go with it (``on_services_deleting``)."""

    def test_deleting_a_service_deletes_its_logs(self, svc, sibling):
        from polymicro.services import service as services

        make_log(svc)
        kept = make_log(sibling)
        services.delete_service(svc.id)
        assert [e.id for e in LogEntry.objects] == [kept.id]

    def test_deleting_a_project_deletes_its_logs(self, svc, other_svc):
        from polymicro.projects import service as projects

        make_log(svc)
        kept = make_log(other_svc)
        projects.delete_project(svc.project_id)
        assert [e.id for e in LogEntry.objects] == [kept.id]
