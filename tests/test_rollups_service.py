"""CPU rollups and the series sources at the service layer: every source gives the
buckets a plain Python computation over the raw points gives, including after late
points land in an hour that was rolled up already, and percentiles match a Python
reference (nearest rank)."""

from __future__ import annotations

import math
import random
from datetime import timedelta

import pytest

from polymicro import worker
from polymicro.errors import InvalidInput
from polymicro.metrics import aggregation
from polymicro.metrics import service as metrics
from polymicro.metrics.models import CpuMetric, CpuRollup1h, CpuRollup5m, CpuRollupDirty
from tests.conftest import USES_REAL_DB
from tests.factories import T0, at, make_metric, make_service

PCTS = (0.5, 0.9, 0.95, 0.99)


def random_points(rng: random.Random, start_min: float, end_min: float, n: int) -> list[dict]:
    points = []
    for _ in range(n):
        point = {
            "time": at(rng.uniform(start_min, end_min)).replace(microsecond=0),
            "load": round(rng.uniform(0, 400), 3),
        }
        if rng.random() < 0.8:
            point["memory"] = round(rng.uniform(0, 100), 2)
        if rng.random() < 0.5:
            point["threads"] = rng.randint(1, 500)
        points.append(point)
    return points


def nearest_rank(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def reference(points, since, until, step, pcts=()) -> list[dict]:
    """The series as plain Python computes it from the raw points."""
    step_ms = step // timedelta(milliseconds=1)
    groups: dict = {}
    for point in points:
        if since <= point["time"] <= until:
            ms = (point["time"] - aggregation.EPOCH) // timedelta(milliseconds=1)
            start = aggregation.EPOCH + timedelta(milliseconds=ms // step_ms * step_ms)
            groups.setdefault(start, []).append(point)
    out = []
    for start in sorted(groups):
        group = groups[start]
        loads = [p["load"] for p in group]
        memory = [p["memory"] for p in group if p.get("memory") is not None]
        threads = [p["threads"] for p in group if p.get("threads") is not None]
        bucket = {
            "time": start,
            "count": len(group),
            "load": {"avg": sum(loads) / len(loads), "min": min(loads), "max": max(loads)},
            "memory": {
                "avg": sum(memory) / len(memory) if memory else None,
                "max": max(memory) if memory else None,
            },
            "threads": {"max": max(threads) if threads else None},
        }
        for p in pcts:
            bucket["load"][f"p{round(p * 100)}"] = nearest_rank(loads, p)
            bucket["memory"][f"p{round(p * 100)}"] = nearest_rank(memory, p)
        out.append(bucket)
    return out


def approx(buckets):
    """Averages may differ in the last bits (sums in another order)."""
    return [
        {
            **b,
            "load": {k: pytest.approx(v, rel=1e-12) for k, v in b["load"].items()},
            "memory": {
                k: (None if v is None else pytest.approx(v, rel=1e-12))
                for k, v in b["memory"].items()
            },
        }
        for b in buckets
    ]


def run_worker() -> int:
    total = 0
    while done := metrics.recompute_rollups():
        total += done
    return total


@pytest.fixture
def rng():
    return random.Random(1234)


@pytest.fixture
def six_hours(ctx, rng):
    """An entry with ~900 random points over six hours from T0, rolled up."""
    points = random_points(rng, 0, 360, 900)
    metric = make_metric(make_service(), points)
    assert CpuRollupDirty.objects(metric_id=metric.id).count() == 6
    assert run_worker() == 6
    assert CpuRollupDirty.objects(metric_id=metric.id).count() == 0
    return metric.id, points


WINDOWS = [
    (at(0), at(360), timedelta(minutes=5)),
    (at(7, seconds=13), at(341, seconds=2), timedelta(minutes=5)),
    (at(3), at(333), timedelta(minutes=15)),
    (at(0), at(359, seconds=59, ms=999), timedelta(hours=1)),
    (at(-30), at(400), timedelta(hours=2)),
    (at(61, ms=1), at(299, ms=999), timedelta(minutes=30)),
]


@pytest.mark.parametrize("source", ["raw", "5m", "1h", "auto"])
@pytest.mark.parametrize(("since", "until", "step"), WINDOWS)
def test_every_source_gives_the_raw_computation(six_hours, source, since, until, step):
    metric_id, points = six_hours
    if source == "1h" and step % timedelta(hours=1):
        with pytest.raises(InvalidInput):
            metrics.cpu_series_with_source(metric_id, since, until, step, source=source)
        return
    buckets, used = metrics.cpu_series_with_source(metric_id, since, until, step, source=source)
    assert buckets == approx(reference(points, since, until, step))
    assert used == (source if source != "auto" else used)


def test_rollup_documents_hold_exact_statistics_of_their_bucket(six_hours):
    metric_id, points = six_hours
    for model, size in ((CpuRollup5m, timedelta(minutes=5)), (CpuRollup1h, timedelta(hours=1))):
        stored = list(model.objects(metric_id=metric_id).order_by("time"))
        expected = reference(points, at(0), at(360), size, PCTS)
        assert [r.time for r in stored] == [b["time"] for b in expected]
        for rollup, bucket in zip(stored, expected, strict=True):
            assert rollup.count == bucket["count"]
            assert rollup.load_min == bucket["load"]["min"]
            assert rollup.load_max == bucket["load"]["max"]
            assert rollup.load_sum / rollup.count == pytest.approx(bucket["load"]["avg"])
            assert rollup.load_p == [bucket["load"][f"p{round(p * 100)}"] for p in PCTS]
            assert rollup.memory_max == bucket["memory"]["max"]


def test_a_late_point_in_an_old_hour_is_served_exactly_before_and_after_the_worker(six_hours, rng):
    metric_id, points = six_hours
    late = [{"time": at(62), "load": 9999.0, "memory": 0.5}, {"time": at(125), "load": 0.0}]
    metrics.append_cpu_points(metric_id, late)
    points = points + late
    marked = sorted(m.time for m in CpuRollupDirty.objects(metric_id=metric_id))
    assert marked == [at(60), at(120)]
    since, until, step = at(0), at(360), timedelta(minutes=5)
    expected = approx(reference(points, since, until, step, PCTS[2:3]))

    # Not rolled up yet: the marked hours come from raw points.
    buckets, used = metrics.cpu_series_with_source(metric_id, since, until, step, agg=["p95"])
    assert used == "5m"
    assert buckets == expected

    assert run_worker() == 2
    assert CpuRollupDirty.objects(metric_id=metric_id).count() == 0
    buckets, used = metrics.cpu_series_with_source(metric_id, since, until, step, agg=["p95"])
    assert (used, buckets) == ("5m", expected)
    hourly, used = metrics.cpu_series_with_source(
        metric_id, since, until, timedelta(hours=1), source="1h"
    )
    assert used == "1h"
    assert hourly == approx(reference(points, since, until, timedelta(hours=1)))


def test_recomputing_again_changes_nothing(six_hours):
    metric_id, _points = six_hours
    before = [r.to_mongo().to_dict() for r in CpuRollup5m.objects(metric_id=metric_id)]
    metrics.rebuild_rollups(metric_id)
    run_worker()
    metrics.recompute_hour(metric_id, at(60))  # a retry, or a second worker
    after = [r.to_mongo().to_dict() for r in CpuRollup5m.objects(metric_id=metric_id)]
    assert after == before


def test_a_point_stored_while_an_hour_is_recomputed_keeps_it_marked(six_hours, monkeypatch):
    metric_id, _points = six_hours
    metrics.append_cpu_points(metric_id, [{"time": at(70), "load": 1.0}])
    recompute = metrics.recompute_hours

    def racing(metric, start, end):
        recompute(metric, start, end)  # computed from the points of its snapshot...
        metrics.append_cpu_points(metric_id, [{"time": at(71), "load": 5000.0}])  # ...then

    monkeypatch.setattr(metrics, "recompute_hours", racing)
    assert metrics.recompute_rollups() == 1
    monkeypatch.undo()
    mark = CpuRollupDirty.objects.get(metric_id=metric_id)
    assert mark.time == at(60)  # the compare-and-set kept the mark
    buckets = metrics.cpu_series(metric_id, at(0), at(360), timedelta(hours=1), source="1h")
    assert buckets[1]["load"]["max"] == 5000.0  # served from raw meanwhile
    run_worker()
    assert CpuRollup1h.objects.get(metric_id=metric_id, time=at(60)).load_max == 5000.0


def test_replacing_the_points_recomputes_every_hour_they_left(six_hours):
    metric_id, _points = six_hours
    new = [{"time": at(30), "load": 7.0}]
    metrics.replace_points(metric_id, {"data": new})
    since, until = at(0), at(360)
    for source in ("raw", "5m", "1h"):
        got = metrics.cpu_series(metric_id, since, until, timedelta(hours=1), source=source)
        assert got == approx(reference(new, since, until, timedelta(hours=1)))
    run_worker()
    assert CpuRollup1h.objects(metric_id=metric_id).count() == 1
    assert CpuRollup5m.objects(metric_id=metric_id).count() == 1


def test_deleting_an_entry_deletes_its_rollups_and_marks(six_hours):
    metric_id, _points = six_hours
    metrics.append_cpu_points(metric_id, [{"time": at(1), "load": 1.0}])
    metrics.delete_metric(metric_id)
    for model in (CpuRollup5m, CpuRollup1h, CpuRollupDirty):
        assert model.objects(metric_id=metric_id).count() == 0


def test_deleting_a_service_deletes_the_rollups_of_its_entry(six_hours):
    metric_id, _points = six_hours
    from polymicro.services import service as services

    services.delete_service(CpuMetric.objects.get(id=metric_id).service_id)
    assert CpuRollup5m.objects(metric_id=metric_id).count() == 0


@pytest.mark.parametrize(
    ("window", "step", "agg", "expected"),
    [
        (timedelta(minutes=30), timedelta(minutes=5), None, "raw"),  # short: raw
        (timedelta(hours=24), timedelta(minutes=5), None, "5m"),
        (timedelta(hours=24), timedelta(minutes=15), None, "5m"),
        (timedelta(days=7), timedelta(hours=1), None, "1h"),
        (timedelta(days=30), timedelta(hours=6), None, "1h"),
        (timedelta(hours=24), timedelta(seconds=90), None, "raw"),  # no size divides it
        (timedelta(hours=24), timedelta(minutes=5), ["p95"], "5m"),
        (timedelta(hours=24), timedelta(minutes=15), ["p95"], "raw"),  # no merge of p95
        (timedelta(days=30), timedelta(hours=6), ["p99"], "raw"),
        (timedelta(days=7), timedelta(hours=1), ["avg", "p50"], "1h"),
    ],
)
def test_the_source_follows_step_window_and_percentiles(ctx, window, step, agg, expected):
    metric = make_metric(make_service(), [{"time": at(1), "load": 1.0}])
    _, used = metrics.cpu_series_with_source(metric.id, T0, T0 + window, step, agg=agg)
    assert used == expected


def test_an_entry_stored_before_rollups_is_served_raw_until_rebuilt(ctx, rng):
    points = random_points(rng, 0, 180, 300)
    metric = make_metric(make_service(), points)
    CpuMetric.objects(id=metric.id).update(unset__rollups=True)  # as before this version
    for model in (CpuRollup5m, CpuRollup1h, CpuRollupDirty):
        model.objects.delete()
    window = (at(0), at(180), timedelta(minutes=5))
    buckets, used = metrics.cpu_series_with_source(metric.id, *window, source="5m")
    assert used == "raw"
    assert buckets == approx(reference(points, *window))

    assert metrics.rebuild_rollups() == 3
    run_worker()
    buckets, used = metrics.cpu_series_with_source(metric.id, *window)
    assert used == "5m"
    assert buckets == approx(reference(points, *window))


@pytest.mark.parametrize("step", [timedelta(minutes=5), timedelta(minutes=20), timedelta(hours=1)])
def test_percentiles_match_the_python_reference(six_hours, step):
    metric_id, points = six_hours
    agg = ["avg", "min", "max", "p50", "p90", "p95", "p99"]
    since, until = at(0), at(360)
    for source in ("raw", "auto"):
        buckets = metrics.cpu_series(metric_id, since, until, step, agg=agg, source=source)
        assert buckets == approx(reference(points, since, until, step, PCTS))


def test_percentiles_are_computed_by_the_database_where_it_can(six_hours):
    metric_id, _points = six_hours
    metrics.cpu_series(metric_id, at(0), at(30), timedelta(minutes=5), agg=["p95"], source="raw")
    # SecantusDB has `$percentile` (exact nearest rank); mongomock does not (Python).
    assert aggregation.database_percentiles() is USES_REAL_DB


@pytest.mark.parametrize("agg", [["p42"], ["avg", "median"]])
def test_an_unknown_aggregate_is_refused(six_hours, agg):
    with pytest.raises(InvalidInput):
        metrics.cpu_series(six_hours[0], at(0), at(30), agg=agg)


@pytest.mark.parametrize(
    ("source", "step", "agg"),
    [("1h", timedelta(minutes=5), None), ("5m", timedelta(minutes=15), ["p95"]), ("x", None, None)],
)
def test_a_forced_rollup_that_cannot_serve_the_step_is_refused(six_hours, source, step, agg):
    with pytest.raises(InvalidInput):
        metrics.cpu_series(
            six_hours[0], at(0), at(360), step or timedelta(minutes=5), agg=agg, source=source
        )


def test_points_from_ingest_are_marked(ctx):
    svc = make_service()
    stored = metrics.append_ingested_points(
        svc.project_id, {svc.id: [{"time": at(5), "load": 3.0}]}
    )
    assert stored == 1
    metric = CpuMetric.objects.get(service_id=svc.id)
    assert metric.rollups is True
    assert [m.time for m in CpuRollupDirty.objects(metric_id=metric.id)] == [at(0)]


def test_the_worker_runs_the_rollups_job(app):
    with app.app_context():
        metric = make_metric(make_service(), [{"time": at(5), "load": 3.0}])
    jobs = {job.name: job for job in worker.jobs(app)}
    assert jobs["rollups"].every == app.config["ROLLUPS_CHECK_SECONDS"]
    assert jobs["rollups"].run() == 1
    with app.app_context():
        assert CpuRollup5m.objects(metric_id=metric.id).count() == 1
        assert CpuRollupDirty.objects.count() == 0


def test_the_retention_settings_become_ttl_indexes(ctx):
    def ttl(model):
        info = model._get_collection().index_information().get("time_ttl")
        return None if info is None else info["expireAfterSeconds"]

    try:
        config = {"RETENTION_ROLLUPS_5M_DAYS": 90, "RETENTION_ROLLUPS_1H_DAYS": 730}
        assert metrics.rollup_retention(config) == {"5m": 90 * 86400, "1h": 730 * 86400}
        assert (ttl(CpuRollup5m), ttl(CpuRollup1h)) == (90 * 86400, 730 * 86400)
        config["RETENTION_ROLLUPS_5M_DAYS"] = 30  # changed setting: changed in place
        metrics.rollup_retention(config)
        assert ttl(CpuRollup5m) == 30 * 86400
        config["RETENTION_ROLLUPS_1H_DAYS"] = 0  # kept forever: no TTL index
        assert metrics.rollup_retention(config)["1h"] == 0
        assert ttl(CpuRollup1h) is None
    finally:  # the wire run keeps indexes between tests: leave none that expires T0 data
        metrics.rollup_retention({})
    assert (ttl(CpuRollup5m), ttl(CpuRollup1h)) == (None, None)


def test_hours_apart_are_recomputed_separately_and_the_hours_between_kept(six_hours):
    metric_id, points = six_hours
    late = [{"time": at(5), "load": 111.0}, {"time": at(300), "load": 222.0}]
    metrics.append_cpu_points(metric_id, late)
    CpuRollup1h.objects(metric_id=metric_id, time=at(120)).update(set__load_max=-1.0)  # a canary
    assert run_worker() == 2
    assert CpuRollup1h.objects.get(metric_id=metric_id, time=at(120)).load_max == -1.0
    CpuRollup1h.objects(metric_id=metric_id, time=at(120)).delete()
    metrics.recompute_hour(metric_id, at(120))
    since, until, step = at(0), at(360), timedelta(hours=1)
    got = metrics.cpu_series(metric_id, since, until, step, source="1h")
    assert got == approx(reference(points + late, since, until, step))


def test_hours_past_the_raw_retention_are_never_recomputed(app):
    from polymicro.common import clock

    # Near the real time: the points' TTL index (7 days) is applied, and mongomock
    # expires by the real time, not by the test's clock.
    base = clock.SystemClock().now().replace(minute=0, second=0, microsecond=0)
    base -= timedelta(days=10)
    app.config["RETENTION_POINTS_DAYS"] = 7
    with clock.use(clock.ManualClock(base + timedelta(days=10))), app.app_context():
        old = base + timedelta(minutes=5)
        metric = make_metric(make_service(), [{"time": old, "load": 3.0}])
        CpuRollup5m.objects.delete()
        assert metrics.recompute_rollups() == 1  # the mark is dropped...
        assert CpuRollupDirty.objects.count() == 0
        assert CpuRollup5m.objects(metric_id=metric.id).count() == 0  # ...untouched
        metrics.append_cpu_points(metric.id, [{"time": base + timedelta(days=9), "load": 1.0}])
        assert metrics.recompute_rollups() == 1
        assert CpuRollup5m.objects(metric_id=metric.id).count() == 1


def test_the_job_works_through_every_mark_in_batches(ctx):
    metric = make_metric(make_service(), [{"time": at(60 * h), "load": 1.0} for h in range(5)])
    assert metrics.roll_up_due(limit=2) == 5
    assert CpuRollupDirty.objects.count() == 0
    assert CpuRollup1h.objects(metric_id=metric.id).count() == 5


def test_rollups_outlive_the_raw_points_they_summarise(app):
    """Rollups are registered retention kinds with their own, longer horizon: once raw
    points pass theirs, a raw series hides them and a rollup series still shows them."""
    from polymicro.common import clock, retention

    assert {"rollups_5m", "rollups_1h"} <= {kind.name for kind in retention.kinds()}
    app.config["RETENTION_POINTS_DAYS"] = 7
    app.config["RETENTION_ROLLUPS_1H_DAYS"] = 0  # kept forever
    start = clock.SystemClock().now().replace(minute=0, second=0, microsecond=0)
    start -= timedelta(days=3)
    with clock.use(clock.ManualClock(start + timedelta(days=3))) as manual, app.app_context():
        points = [{"time": start + timedelta(minutes=10 * i), "load": float(i)} for i in range(36)]
        metric = make_metric(make_service(), points)
        metrics.roll_up_due()
        window = {"since": start, "until": start + timedelta(hours=12), "step": timedelta(hours=1)}
        before = metrics.cpu_series(metric.id, source="raw", **window)
        assert sum(bucket["count"] for bucket in before) == 36
        manual.advance(5 * 86400)  # the raw points are now 8 days old: past 7
        assert metrics.cpu_series(metric.id, source="raw", **window) == []
        kept, source = metrics.cpu_series_with_source(metric.id, source="1h", **window)
        assert source == "1h"
        assert [b["count"] for b in kept] == [b["count"] for b in before]
