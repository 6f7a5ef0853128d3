"""Retention at the service layer (issue 14): horizons, per-project overrides, the sweep,
the TTL indexes (collMod where the database has it), and the status report.

Time comes from a ManualClock: a row "expires" because the clock moved past its horizon,
never because a test waited for the database's TTL monitor (which uses the real time,
so the rows a test stores stay in the database until the sweep or the test removes them).
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest

from polymicro import create_app
from polymicro.common import caching, clock, retention
from polymicro.errors import InvalidInput, NotFound
from polymicro.events import service as events
from polymicro.events.models import Event
from polymicro.extensions import close_db
from polymicro.logs import service as logs
from polymicro.logs.models import LogEntry
from polymicro.metrics import service as metrics
from polymicro.metrics.models import CpuPoint
from polymicro.projects import service as projects
from tests import retention_helpers
from tests.conftest import TEST_DB, USES_REAL_DB, _empty_database, make_config
from tests.factories import make_logs, make_metric, make_service

# The shared fixtures (an app context with retention days, a ManualClock).
ctx = retention_helpers.ctx
manual = retention_helpers.manual

DAY = 86400
USES_SECANTUS = TEST_DB == "secantus"


def listed(**filters) -> list[str]:
    return [row["message"] for row in logs.list_logs(**filters)[0:1000]]


def stored_logs() -> int:
    return LogEntry._get_collection().count_documents({})


def aged_logs(svc, manual, ages_days: list[float]) -> None:
    """One entry per age (message "age <d>"), stored at now - age."""
    now = manual.now()
    make_logs(
        svc, [{"message": f"age {d}", "timestamp": now - timedelta(days=d)} for d in ages_days]
    )


# --- the horizon --------------------------------------------------------------------------


def test_reads_hide_logs_past_the_horizon_while_they_are_still_stored(manual):
    svc = make_service()
    aged_logs(svc, manual, [0, 3, 6.9])
    assert listed() == ["age 0", "age 3", "age 6.9"]
    manual.advance(0.2 * DAY)  # 6.9 days + 0.2: past the 7-day horizon
    assert listed() == ["age 0", "age 3"]
    assert listed(project_id=svc.project_id) == ["age 0", "age 3"]
    assert logs.list_logs().count() == 2
    assert stored_logs() == 3  # not deleted yet: the answer does not wait for the TTL monitor


def test_the_horizon_is_rounded_up_to_the_minute_and_never_shows_what_a_ttl_may_delete(manual):
    kind = logs.RETENTION
    cut = retention.horizon(kind)
    exact = manual.now() - timedelta(days=7)
    assert exact <= cut < exact + timedelta(seconds=retention.HORIZON_STEP)
    assert cut.second == 0
    assert cut.microsecond == 0


def test_zero_keeps_everything_forever(ctx, manual):
    ctx.config["RETENTION_LOGS_DAYS"] = 0
    svc = make_service()
    aged_logs(svc, manual, [0, 400])
    manual.advance(3650 * DAY)
    assert listed() == ["age 0", "age 400"]
    assert retention.horizon(logs.RETENTION) is None


def test_a_log_past_the_horizon_is_not_found_by_id(manual):
    svc = make_service()
    entry = logs.create_log(
        {
            "project_id": svc.project_id,
            "service_id": svc.id,
            "severity": "info",
            "message": "x",
            "timestamp": manual.now(),
        }
    )
    assert logs.get_log(entry.id).id == entry.id
    manual.advance(8 * DAY)
    with pytest.raises(NotFound):
        logs.get_log(entry.id)


def test_points_past_the_horizon_are_hidden_from_entries_and_series(manual):
    svc = make_service()
    now = manual.now()
    points = [{"time": now - timedelta(days=d), "load": float(d)} for d in (0, 2, 4.9)]
    metric = make_metric(svc, points=points)
    loads = lambda: [p["load"] for p in metrics.get_metric(metric["id"])["data"]]  # noqa: E731
    assert loads() == [4.9, 2.0, 0.0]
    manual.advance(0.2 * DAY)
    assert loads() == [2.0, 0.0]
    listed_project = list(metrics.list_project_metrics(svc.project_id)[0:10])
    assert [p["load"] for p in listed_project[0]["data"]] == [2.0, 0.0]
    series = metrics.cpu_series(
        metric["id"], since=now - timedelta(days=6), until=manual.now(), step=timedelta(days=1)
    )
    assert sum(bucket["count"] for bucket in series) == 2
    assert CpuPoint._get_collection().count_documents({}) == 3


def test_a_series_window_entirely_past_the_horizon_is_empty_not_an_error(manual):
    svc = make_service()
    metric = make_metric(svc, points=[{"time": manual.now(), "load": 1.0}])
    manual.advance(30 * DAY)
    since = manual.now() - timedelta(days=20)
    assert metrics.cpu_series(metric["id"], since=since, until=since + timedelta(hours=1)) == []


def test_events_use_the_same_registry(ctx, manual):
    events.publish("project.created", {"id": "a", "name": "a"})
    assert events.read_events()["events"]
    manual.advance(91 * DAY)
    assert events.read_events()["events"] == []
    assert Event._get_collection().index_information()[events.TTL_INDEX]["expireAfterSeconds"] == (
        90 * DAY
    )


# --- per-project overrides ----------------------------------------------------------------


def test_an_override_shortens_one_projects_logs_and_the_sweep_deletes_them(ctx, manual):
    short, other = make_service(), make_service()
    aged_logs(short, manual, [0, 1, 2.5, 3, 4])
    aged_logs(other, manual, [0, 1, 2.5, 3, 4])
    projects.update_project(short.project_id, {"retention": {"logs_days": 2}})
    assert listed(project_id=short.project_id) == ["age 0", "age 1"]
    assert listed(project_id=other.project_id) == ["age 0", "age 1", "age 2.5", "age 3", "age 4"]
    assert len(listed()) == 7  # the unscoped list honours the override too
    assert len(listed(service_id=short.id)) == 2
    ctx.config.update(RETENTION_SWEEP_BATCH=2, RETENTION_SWEEP_MAX_BATCHES=1)
    assert retention.sweep()["logs"] == 2  # one bounded batch per run
    assert retention.sweep()["logs"] == 1
    assert retention.sweep()["logs"] == 0
    assert LogEntry._get_collection().count_documents({"project_id": short.project_id}) == 2
    assert LogEntry._get_collection().count_documents({"project_id": other.project_id}) == 5
    assert listed(project_id=short.project_id) == ["age 0", "age 1"]


def test_an_override_shortens_one_projects_points(ctx, manual):
    svc = make_service()
    now = manual.now()
    metric = make_metric(
        svc, points=[{"time": now - timedelta(days=d), "load": float(d)} for d in (0, 1, 3)]
    )
    projects.update_project(svc.project_id, {"retention": {"points_days": 2}})
    assert [p["load"] for p in metrics.get_metric(metric["id"])["data"]] == [1.0, 0.0]
    assert retention.sweep()["points"] == 1
    assert CpuPoint._get_collection().count_documents({}) == 2


def test_clearing_an_override_shows_what_the_sweep_has_not_deleted(ctx, manual):
    svc = make_service()
    aged_logs(svc, manual, [0, 3])
    projects.update_project(svc.project_id, {"retention": {"logs_days": 1}})
    assert listed() == ["age 0"]
    projects.update_project(svc.project_id, {"retention": None})
    assert listed() == ["age 0", "age 3"]
    assert projects.get_project(svc.project_id)["retention"] == {}


@pytest.mark.parametrize(
    ("values", "bad"),
    [({"logs_days": 8}, "logs_days"), ({"points_days": 6}, "points_days")],
)
def test_an_override_longer_than_the_global_setting_is_refused(ctx, values, bad):
    svc = make_service()
    with pytest.raises(InvalidInput) as caught:
        projects.update_project(svc.project_id, {"retention": values})
    assert bad in caught.value.errors["json"]["retention"]
    assert projects.get_project(svc.project_id)["retention"] == {}


def test_any_override_is_allowed_when_the_global_setting_keeps_forever(ctx, manual):
    ctx.config["RETENTION_LOGS_DAYS"] = 0
    svc = make_service()
    aged_logs(svc, manual, [0, 400])
    projects.update_project(svc.project_id, {"retention": {"logs_days": 365}})
    assert listed() == ["age 0"]
    assert retention.sweep()["logs"] == 1


def test_the_sweep_is_the_backstop_where_the_ttl_index_is_missing(ctx, manual):
    svc = make_service()
    aged_logs(svc, manual, [0])
    manual.advance(10 * DAY)
    retention.ensure_applied()
    LogEntry._get_collection().drop_index(logs.RETENTION.index_name)
    assert retention.sweep()["logs"] == 1
    assert stored_logs() == 0


def test_two_sweeps_at_once_delete_each_row_once(ctx, manual):
    svc = make_service()
    aged_logs(svc, manual, [0, 3, 3, 3, 3])
    projects.update_project(svc.project_id, {"retention": {"logs_days": 1}})
    assert retention.sweep()["logs"] + retention.sweep()["logs"] == 4
    assert stored_logs() == 1


# --- TTL indexes --------------------------------------------------------------------------


def ttl_days(kind) -> float | None:
    return retention.index_days(kind)


def test_the_ttl_indexes_follow_the_settings(ctx):
    retention.ensure_applied()
    assert ttl_days(logs.RETENTION) == 7
    assert ttl_days(metrics.RETENTION) == 5
    assert ttl_days(events.RETENTION) == 90
    ctx.config["RETENTION_LOGS_DAYS"] = 3
    retention.ensure_applied()  # a changed setting is applied at the next use
    assert ttl_days(logs.RETENTION) == 3
    ctx.config["RETENTION_LOGS_DAYS"] = 0
    assert retention.apply_all()["logs"] == "dropped"
    assert ttl_days(logs.RETENTION) is None


def test_a_changed_setting_uses_collmod_where_the_database_has_it(ctx):
    collection = LogEntry._get_collection()
    assert retention.apply_ttl(collection, "timestamp", "retention_ttl", 30) == "created"
    assert retention.apply_ttl(collection, "timestamp", "retention_ttl", 30) == "unchanged"
    action = retention.apply_ttl(collection, "timestamp", "retention_ttl", 7)
    # mongomock has no collMod: the workaround drops the index and makes it again.
    assert action == ("collMod" if USES_REAL_DB else "recreated")
    assert collection.index_information()["retention_ttl"]["expireAfterSeconds"] == 7 * DAY


# --- without TTL indexes (SecantusDB) -------------------------------------------------------


class _Admin:
    def __init__(self, build_info: dict) -> None:
        self.build_info, self.asked = build_info, 0

    def command(self, name: str) -> dict:
        assert name == "buildInfo"
        self.asked += 1
        return self.build_info


def _collection_of(build_info: dict) -> SimpleNamespace:
    """A stand-in collection whose database answers ``buildInfo`` with ``build_info``."""
    return SimpleNamespace(
        database=SimpleNamespace(client=SimpleNamespace(admin=_Admin(build_info)))
    )


def test_auto_means_no_ttl_indexes_on_secantusdb_only_and_asks_once(ctx):
    ctx.config["RETENTION_TTL_INDEXES"] = "auto"
    secantus = _collection_of({"version": "7.0.0", "secantusVersion": "0.7.0b3"})
    mongod = _collection_of({"version": "7.0.0"})
    assert retention.ttl_indexes(secantus) is False
    assert retention.ttl_indexes(secantus) is False
    assert secantus.database.client.admin.asked == 1  # remembered on the client
    assert retention.ttl_indexes(mongod) is True
    assert retention.ttl_indexes(LogEntry._get_collection()) is not USES_SECANTUS
    ctx.config["RETENTION_TTL_INDEXES"] = "true"
    assert retention.ttl_indexes(secantus) is True
    ctx.config["RETENTION_TTL_INDEXES"] = "false"
    assert retention.ttl_indexes(mongod) is False
    ctx.config["RETENTION_TTL_INDEXES"] = "sometimes"
    with pytest.raises(RuntimeError, match="POLYMICRO_RETENTION_TTL_INDEXES"):
        retention.ttl_indexes(mongod)


def test_without_ttl_indexes_the_time_field_gets_an_ordinary_index_unless_one_leads_with_it(ctx):
    retention.ensure_applied()  # TTL indexes, as a start before this setting made them
    assert ttl_days(metrics.RETENTION) == 5
    ctx.config["RETENTION_TTL_INDEXES"] = "false"
    done = retention.apply_all()
    assert done["points"] == "replaced"  # the TTL index goes, an ordinary one takes its place
    assert done["logs"] == "dropped"  # the logs' timestamp index serves the sweep
    assert done["events"] == "replaced"
    points = CpuPoint._get_collection().index_information()
    assert points[metrics.RETENTION.index_name]["key"] == [("time", 1)]
    assert "expireAfterSeconds" not in points[metrics.RETENTION.index_name]
    assert logs.RETENTION.index_name not in LogEntry._get_collection().index_information()
    assert [ttl_days(kind) for kind in (logs.RETENTION, metrics.RETENTION)] == [None, None]
    assert retention.apply_all()["points"] == "unchanged"
    assert retention.apply_all()["logs"] == "none"
    ctx.config["RETENTION_POINTS_DAYS"] = 0  # kept forever: nothing to sweep, no index
    assert retention.apply_all()["points"] == "dropped"
    assert metrics.RETENTION.index_name not in CpuPoint._get_collection().index_information()


def test_without_ttl_indexes_the_sweep_deletes_past_the_global_horizon(ctx, manual):
    ctx.config["RETENTION_TTL_INDEXES"] = "false"
    svc = make_service()
    aged_logs(svc, manual, [0, 6, 8, 9])
    now = manual.now()
    make_metric(svc, points=[{"time": now - timedelta(days=d), "load": 1.0} for d in (0, 4, 6)])
    swept = retention.sweep()
    assert (swept["logs"], swept["points"]) == (2, 1)  # logs kept 7 days, points 5
    assert stored_logs() == 2
    assert CpuPoint._get_collection().count_documents({}) == 2
    assert listed() == ["age 0", "age 6"]
    report = {entry["kind"]: entry for entry in retention.status()}
    assert report["logs"]["index_days"] is None
    assert report["logs"]["oldest"] == now - timedelta(days=6)
    assert report["points"]["oldest"] == now - timedelta(days=4)
    assert not report["logs"]["behind"]
    assert not report["points"]["behind"]


# --- status ---------------------------------------------------------------------------------


def test_status_reports_the_setting_the_index_the_oldest_and_behind(ctx, manual):
    svc = make_service()
    aged_logs(svc, manual, [0, 1])
    report = {entry["kind"]: entry for entry in retention.status()}
    assert set(report) >= {"logs", "points", "events"}
    entry = report["logs"]
    assert entry["days"] == 7
    assert entry["index_days"] == 7
    assert entry["setting"] == "POLYMICRO_RETENTION_LOGS_DAYS"
    assert entry["oldest"] == manual.now() - timedelta(days=1)
    assert entry["behind"] is False
    manual.advance(6 * DAY + 600)  # past the horizon, within the 30-minute margin
    assert {e["kind"]: e for e in retention.status()}["logs"]["behind"] is False
    manual.advance(3600)
    assert {e["kind"]: e for e in retention.status()}["logs"]["behind"] is True
    assert report["points"]["oldest"] is None
    assert report["points"]["behind"] is False


def test_status_reports_overrides_that_are_behind(ctx, manual):
    svc = make_service()
    aged_logs(svc, manual, [0, 2])
    projects.update_project(svc.project_id, {"retention": {"logs_days": 1}})
    entry = {e["kind"]: e for e in retention.status()}["logs"]
    assert entry["overrides"][0]["project_id"] == svc.project_id
    assert entry["overrides"][0]["behind"] is True
    assert entry["behind"] is True
    retention.sweep()
    entry = {e["kind"]: e for e in retention.status()}["logs"]
    assert entry["overrides"][0]["behind"] is False
    assert entry["behind"] is False


# --- start-up with another setting (two apps, one database) -------------------------------


@pytest.fixture
def wire_db(wire_uri, redis_url):
    yield lambda **settings: create_app(make_config(wire_uri, redis_url, **settings))
    close_db()


def test_starting_again_with_another_setting_changes_the_index_in_place(wire_db):
    first = wire_db(RETENTION_LOGS_DAYS=30)
    caching.reset_state()
    with first.app_context():
        _empty_database()
        LogEntry._get_collection().drop_indexes()
        retention.ensure_applied()
        assert ttl_days(logs.RETENTION) == 30
    close_db()
    second = wire_db(RETENTION_LOGS_DAYS=7)
    with second.app_context():
        collection = LogEntry._get_collection()
        retention.ensure_applied()  # the first use of the database after a start
        assert ttl_days(logs.RETENTION) == 7
        # changed by collMod: the same index (a rebuild would be a second index build)
        assert retention.apply_ttl(collection, "timestamp", "retention_ttl", 7) == "unchanged"
        assert retention.apply_ttl(collection, "timestamp", "retention_ttl", 8) == "collMod"
    close_db()
    third = wire_db(RETENTION_LOGS_DAYS=0)
    with third.app_context():
        retention.ensure_applied()
        assert ttl_days(logs.RETENTION) is None
        _empty_database()


def test_the_answer_is_the_same_before_and_after_the_rows_are_deleted(ctx, manual):
    short, other = make_service(), make_service()
    aged_logs(short, manual, [0, 3, 6.5])
    aged_logs(other, manual, [0, 3, 6.5])
    projects.update_project(short.project_id, {"retention": {"logs_days": 2}})
    manual.advance(DAY)

    def answers():
        return (
            listed(),
            listed(project_id=short.project_id),
            listed(project_id=other.project_id),
            logs.list_logs().count(),
        )

    before = answers()
    assert before == (["age 0", "age 0", "age 3"], ["age 0"], ["age 0", "age 3"], 3)
    assert stored_logs() == 6
    retention.sweep()  # deletes what the override hides
    LogEntry._get_collection().drop_index(logs.RETENTION.index_name)
    manual.advance(1)
    retention.sweep()  # and the backstop what the global setting hides
    assert stored_logs() == 3
    assert answers() == before


def test_the_worker_runs_the_sweep(ctx, manual):
    from polymicro import worker

    svc = make_service()
    aged_logs(svc, manual, [0, 3])
    projects.update_project(svc.project_id, {"retention": {"logs_days": 1}})
    job = next(job for job in worker.jobs(ctx) if job.name == "retention")
    assert job.every == ctx.config["RETENTION_SWEEP_SECONDS"]
    assert worker.serve(ctx, once=True) == 0
    assert stored_logs() == 1


def test_status_does_not_sort_a_kind_without_an_index_on_its_time(ctx, manual):
    ctx.config["RETENTION_POINTS_DAYS"] = 0  # kept forever: no TTL index on cpu_points.time
    make_metric(make_service(), points=[{"time": manual.now(), "load": 1.0}])
    entry = {e["kind"]: e for e in retention.status()}["points"]
    assert entry["index_days"] is None
    assert entry["oldest"] is None  # unknown rather than a read of the whole collection
    assert entry["behind"] is False


def test_writes_go_on_while_the_sweep_deletes_in_batches(wire_db, capsys):
    """On SecantusDB: a sweep of 5,000 rows in batches of 500 while another thread
    stores log entries one by one; the writer is never held until the sweep ends."""
    import threading
    import time

    app = wire_db(RETENTION_LOGS_DAYS=30, RETENTION_SWEEP_BATCH=500)
    caching.reset_state()
    with app.app_context():
        _empty_database()
        svc = make_service()
        projects.update_project(svc.project_id, {"retention": {"logs_days": 1}})
        old = clock.now() - timedelta(days=2)
        rows = [
            {
                "project_id": svc.project_id,
                "service_id": svc.id,
                "severity": "info",
                "level": 1,
                "message": f"old {i}",
                "timestamp": old,
            }
            for i in range(5_000)
        ]
        LogEntry._get_collection().insert_many(rows)
        done = threading.Event()
        written_during = []

        def writer():
            with app.app_context():
                while not done.is_set():
                    logs.create_log(
                        {
                            "project_id": svc.project_id,
                            "service_id": svc.id,
                            "severity": "info",
                            "message": "new",
                        }
                    )
                    if not done.is_set():
                        written_during.append(1)

        thread = threading.Thread(target=writer)
        started = time.perf_counter()
        thread.start()
        deleted = retention.sweep()["logs"]
        elapsed = time.perf_counter() - started
        done.set()
        thread.join(10)
        assert deleted == 5_000
        assert len(written_during) > 0  # stored while the sweep was running
        assert LogEntry._get_collection().count_documents({"message": "new"}) >= len(written_during)
        with capsys.disabled():
            print(
                f"\nsweep: {deleted} rows in {elapsed:.2f} s ({deleted / elapsed:,.0f} rows/s), "
                f"{len(written_during)} single writes meanwhile"
            )
        _empty_database()
