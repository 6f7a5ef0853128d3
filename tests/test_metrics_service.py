"""CPU metrics use cases at the service layer (no HTTP)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import mongoengine
import pytest
from bson import ObjectId

from polymicro.common.timeutil import utcnow
from polymicro.errors import Conflict, InvalidInput, NotFound
from polymicro.metrics import service as metrics
from polymicro.metrics.models import CpuMetric, CpuPoint
from polymicro.projects import service as projects
from polymicro.services import service as services
from tests.factories import (
    T0,
    at,
    hour_of_points,
    make_metric,
    make_project,
    make_service,
    metric_data,
    minute_points,
)

UNKNOWN_ID = ObjectId("0123456789abcdef01234567")


@pytest.fixture
def svc(ctx):
    return make_service(name="Checkout")


def loads(metric) -> list[float]:
    return [p["load"] for p in metric.data]


# --- create -------------------------------------------------------------------------


def test_create_stores_the_service_id_and_canonical_name(svc):
    metric = metrics.create_metric(metric_data(svc, service_name="CHECKOUT"))

    stored = CpuMetric.objects.get(id=metric.id)
    assert (stored.project_id, stored.service_id) == (svc.project_id, svc.id)
    assert stored.service_name == "Checkout"
    assert stored.service_key == "checkout"
    assert metric.data == []


def test_create_stores_initial_points_and_returns_them_oldest_first(svc):
    metric = make_metric(svc, [{"time": at(5), "load": 5.0}, {"time": at(1), "load": 1.0}])

    assert loads(metric) == [1.0, 5.0]
    assert metric.data[0] == {"time": at(1), "load": 1.0, "memory": None, "threads": None}
    assert CpuPoint.objects(metric_id=metric.id).count() == 2


def test_create_twice_for_one_service_raises_conflict(svc):
    make_metric(svc)

    with pytest.raises(Conflict):
        make_metric(svc)
    assert CpuMetric.objects.count() == 1


def test_the_unique_index_rejects_a_duplicate_that_skipped_the_check(svc):
    metric = make_metric(svc)
    duplicate = CpuMetric(
        project_id=metric.project_id,
        service_id=metric.service_id,
        service_name=metric.service_name,
        service_key=metric.service_key,
    )

    with pytest.raises(mongoengine.NotUniqueError):
        duplicate.save(force_insert=True)


def test_create_with_an_unknown_project_raises_invalid_input_on_project_id(svc):
    with pytest.raises(InvalidInput) as caught:
        metrics.create_metric(metric_data(svc, project_id=UNKNOWN_ID))

    assert "project_id" in caught.value.errors["json"]


def test_create_with_a_service_of_another_project_raises_invalid_input_on_service_name(svc):
    other = make_project()

    with pytest.raises(InvalidInput) as caught:
        metrics.create_metric(metric_data(svc, project_id=other.id))

    assert "service_name" in caught.value.errors["json"]
    assert CpuMetric.objects.count() == 0


# --- reads --------------------------------------------------------------------------


def test_get_returns_the_latest_points_of_the_window_oldest_first(svc):
    metric = make_metric(svc, minute_points(30))

    latest = metrics.get_metric(metric.id, points=4)
    window = metrics.get_metric(metric.id, since=at(10), until=at(20), points=3)
    whole = metrics.get_metric(metric.id, since=at(10), until=at(12))

    assert loads(latest) == [26.0, 27.0, 28.0, 29.0]
    assert loads(window) == [18.0, 19.0, 20.0]
    assert loads(whole) == [10.0, 11.0, 12.0]


def test_get_of_an_unknown_entry_raises_not_found(ctx):
    with pytest.raises(NotFound):
        metrics.get_metric(UNKNOWN_ID)


def test_lists_are_paged_queries_that_load_points_for_the_page_only(ctx, monkeypatch):
    project = make_project()
    created = [make_metric(make_service(project), minute_points(3)) for _ in range(5)]
    loaded = []
    real = metrics.latest_points
    monkeypatch.setattr(
        metrics, "latest_points", lambda mid, *a: loaded.append(mid) or real(mid, *a)
    )

    paged = metrics.list_metrics(project_id=project.id, points=2)
    page = paged[2:4]

    assert paged.count() == 5
    assert [m.id for m in page] == [m.id for m in created[2:4]]
    assert [loads(m) for m in page] == [[1.0, 2.0], [1.0, 2.0]]
    assert loaded == [m.id for m in created[2:4]]


def test_list_project_metrics_needs_an_existing_project(ctx):
    with pytest.raises(NotFound):
        metrics.list_project_metrics(UNKNOWN_ID)


def test_list_service_metrics_matches_names_case_insensitively(ctx):
    first, second = make_project(), make_project()
    a = make_metric(make_service(first, name="Billing"))
    b = make_metric(make_service(second, name="BILLING"))
    make_metric(make_service(first, name="Search"))

    assert [m.id for m in metrics.list_service_metrics("billing")] == [a.id, b.id]
    assert [m.id for m in metrics.list_service_metrics("bIlLiNg", project_id=second.id)] == [b.id]
    assert list(metrics.list_service_metrics("nothing")) == []


# --- writes -------------------------------------------------------------------------


def test_append_stores_each_point_as_its_own_document_without_touching_the_entry(svc):
    metric = make_metric(svc)
    collection = CpuMetric._get_collection()
    # An old updated_at, so that a bump within the same millisecond would still show.
    collection.update_one({"_id": metric.id}, {"$set": {"updated_at": T0}})
    before = collection.find_one({"_id": metric.id})

    inserted = metrics.append_cpu_points(metric.id, minute_points(50))

    assert inserted == 50
    assert CpuPoint.objects(metric_id=metric.id).count() == 50
    assert collection.find_one({"_id": metric.id}) == before


def test_append_normalises_times_to_naive_utc_and_defaults_to_now(svc):
    metric = make_metric(svc)
    aware = datetime(2026, 1, 1, 2, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    before = utcnow()

    metrics.append_cpu_points(metric.id, [{"time": aware, "load": 1.0}, {"load": 2.0}])

    first, second = metrics.get_metric(metric.id).data
    assert first["time"] == datetime(2026, 1, 1, 1, 0, 0, 123000)
    assert before <= second["time"] <= utcnow()


@pytest.mark.parametrize("count", [0, metrics.MAX_POINTS_PER_WRITE + 1])
def test_append_refuses_an_empty_or_oversized_batch(svc, count):
    metric = make_metric(svc)

    with pytest.raises(InvalidInput):
        metrics.append_cpu_points(metric.id, minute_points(count))
    assert CpuPoint.objects(metric_id=metric.id).count() == 0


def test_append_to_an_unknown_entry_raises_not_found(ctx):
    with pytest.raises(NotFound):
        metrics.append_cpu_points(UNKNOWN_ID, minute_points(1))
    assert CpuPoint.objects.count() == 0


def test_replace_points_replaces_every_point(svc):
    metric = make_metric(svc, minute_points(10))

    replaced = metrics.replace_points(metric.id, {"data": minute_points(2, start=50)})

    assert loads(replaced) == [50.0, 51.0]
    assert CpuPoint.objects(metric_id=metric.id).count() == 2


def test_replace_points_without_data_changes_nothing(svc):
    metric = make_metric(svc, minute_points(3))
    updated_at = metric.updated_at

    same = metrics.replace_points(metric.id, {})

    assert loads(same) == [0.0, 1.0, 2.0]
    assert CpuMetric.objects.get(id=metric.id).updated_at == updated_at


def test_replace_points_inserts_before_deleting_so_a_crash_never_empties_the_entry(
    svc, monkeypatch
):
    metric = make_metric(svc, minute_points(3))

    class Crash(Exception):
        pass

    def crash(*args, **kwargs):
        raise Crash

    monkeypatch.setattr(metrics, "_delete_points_except", crash)
    with pytest.raises(Crash):
        metrics.replace_points(metric.id, {"data": minute_points(2, start=50)})
    monkeypatch.undo()

    assert CpuPoint.objects(metric_id=metric.id).count() == 5  # old and new, never none
    assert loads(metrics.replace_points(metric.id, {"data": minute_points(2, start=50)})) == [
        50.0,
        51.0,
    ]


def find_metric(metric_id):
    return CpuMetric.objects(id=metric_id).first()


def test_delete_metric_removes_the_entry_and_its_points_only(ctx):
    kept = make_metric(make_service(), minute_points(2))
    gone = make_metric(make_service(), minute_points(3))

    metrics.delete_metric(gone.id)

    assert find_metric(gone.id) is None
    assert CpuPoint.objects(metric_id=gone.id).count() == 0
    assert CpuPoint.objects(metric_id=kept.id).count() == 2


def test_delete_metrics_by_service_and_by_project(ctx):
    project = make_project()
    one, two = make_service(project), make_service(project)
    first, second = make_metric(one, minute_points(2)), make_metric(two, minute_points(2))
    elsewhere = make_metric(make_service(), minute_points(2))

    assert metrics.delete_metrics(project.id, service_id=one.id) == 1
    assert find_metric(first.id) is None
    assert find_metric(second.id) is not None
    assert metrics.delete_metrics(project.id) == 1
    assert CpuPoint.objects(metric_id__in=[first.id, second.id]).count() == 0
    assert CpuPoint.objects(metric_id=elsewhere.id).count() == 2


def test_deleting_a_service_cascades_to_its_metrics_only(svc):
    metric = make_metric(svc, minute_points(2))
    sibling = make_metric(make_service(project_id=svc.project_id), minute_points(3))

    services.delete_service(svc.id)

    assert find_metric(metric.id) is None
    assert CpuPoint.objects(metric_id=metric.id).count() == 0
    assert CpuPoint.objects(metric_id=sibling.id).count() == 3


def test_deleting_a_project_cascades_to_the_metrics_of_its_services_only(svc):
    sibling = make_metric(make_service(project_id=svc.project_id), minute_points(2))
    metric = make_metric(svc, minute_points(2))
    elsewhere = make_metric(make_service(), minute_points(2))

    projects.delete_project(svc.project_id)

    assert [m.id for m in CpuMetric.objects] == [elsewhere.id]
    assert CpuPoint.objects(metric_id__in=[sibling.id, metric.id]).count() == 0
    assert CpuPoint.objects(metric_id=elsewhere.id).count() == 2


def test_renaming_a_service_renames_its_entry(svc):
    metric = make_metric(svc)

    services.update_service(svc.id, {"name": "Payments"})

    assert metrics.get_metric(metric.id).service_name == "Payments"
    assert [m.id for m in metrics.list_service_metrics("PAYMENTS")] == [metric.id]
    assert list(metrics.list_service_metrics("checkout")) == []


# --- series -------------------------------------------------------------------------


@pytest.fixture
def hour_metric(svc):
    """An entry with ``hour_of_points()``: load = minute, memory = minute % 10 (none in
    minutes 10-14), threads = minute // 2."""
    return make_metric(svc, hour_of_points())


def test_series_returns_buckets_computed_by_the_database(hour_metric):
    buckets = metrics.cpu_series(hour_metric.id, at(0), at(59), timedelta(minutes=5))

    assert [b["time"] for b in buckets] == [at(5 * k) for k in range(12)]
    assert [b["count"] for b in buckets] == [5] * 12
    assert buckets[0]["load"] == {"avg": 2.0, "min": 0.0, "max": 4.0}
    assert buckets[3] == {
        "time": at(15),
        "count": 5,
        "load": {"avg": 17.0, "min": 15.0, "max": 19.0},
        "memory": {"avg": 7.0, "max": 9.0},
        "threads": {"max": 9},
    }
    assert buckets[2]["memory"] == {"avg": None, "max": None}


def test_series_window_is_inclusive_and_buckets_are_aligned(hour_metric):
    buckets = metrics.cpu_series(hour_metric.id, at(4), at(10), timedelta(minutes=5))

    assert [(b["time"], b["count"]) for b in buckets] == [(at(0), 1), (at(5), 5), (at(10), 1)]


def test_series_default_window_is_the_last_24_hours(svc):
    now = utcnow()
    metric = make_metric(
        svc,
        [
            {"time": now - timedelta(hours=25), "load": 9.0},
            {"time": now - timedelta(hours=23), "load": 1.0},
        ],
    )

    buckets = metrics.cpu_series(metric.id, step=timedelta(hours=1))

    assert [b["count"] for b in buckets] == [1]
    assert buckets[0]["load"]["max"] == 1.0


@pytest.mark.parametrize(
    ("since", "until", "step", "field"),
    [
        (at(0), at(60), timedelta(seconds=5), "step"),
        (at(0), at(60), timedelta(days=2), "step"),
        (at(0), at(3 * 24 * 60), timedelta(seconds=10), "step"),
        (at(60), at(0), timedelta(minutes=5), "since"),
    ],
)
def test_series_refuses_bad_steps_and_windows(hour_metric, since, until, step, field):
    with pytest.raises(InvalidInput) as caught:
        metrics.cpu_series(hour_metric.id, since, until, step)

    assert field in caught.value.errors["query"]


def test_series_accepts_exactly_10000_buckets(hour_metric):
    step = timedelta(seconds=10)
    until = at(0) + step * (metrics.MAX_BUCKETS - 1)

    buckets = metrics.cpu_series(hour_metric.id, at(0), until, step)

    assert sum(b["count"] for b in buckets) == 60
    with pytest.raises(InvalidInput):
        metrics.cpu_series(hour_metric.id, at(0), until + step, step)


def test_series_of_an_unknown_entry_raises_not_found(ctx):
    with pytest.raises(NotFound):
        metrics.cpu_series(UNKNOWN_ID, at(0), at(60))
