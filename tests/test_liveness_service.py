"""Liveness at the service layer: heartbeats, deadlines recorded once, polymicro's own
outage, ingest as heartbeats, the filters, history and uptime.  Time is a manual clock
(``Timeline``); ``advance`` runs the worker's job as ``flask worker`` would, or not."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from bson import ObjectId

from polymicro import worker
from polymicro.common import caching
from polymicro.errors import Forbidden, NotFound
from polymicro.liveness import rules
from polymicro.liveness import service as liveness
from polymicro.liveness.models import REPORTED, LivenessState, LivenessTransition, Observer
from polymicro.liveness.rules import FAIL, START, Outage
from polymicro.logs import service as logs
from polymicro.metrics import service as metrics
from polymicro.services import service as services
from tests.factories import log_data, make_metric, make_project, make_service
from tests.liveness_helpers import Timeline, changes, liveness_events, state_row, transition_rows

pytestmark = pytest.mark.usefixtures("ctx")


@pytest.fixture
def timeline(ctx):
    with Timeline() as line:
        yield line


def fast(project=None, **fields):
    """A service that promises a heartbeat every 10 s, with 10 s of grace."""
    return make_service(project, heartbeat_ttl=10, heartbeat_grace=10, **fields)


def shown(svc) -> tuple:
    view = services.get_service(svc.id)
    return view["liveness"], view["health"], view["status"]


def restart(app) -> None:
    """What a new process remembers: nothing."""
    app.extensions.pop("polymicro-liveness", None)


# --- heartbeats ---------------------------------------------------------------------------


def test_a_service_without_heartbeats_keeps_its_stored_fields(timeline):
    svc = make_service(health="Degraded", status="Starting")
    assert shown(svc) == (None, "Degraded", "Starting")
    assert liveness.liveness_of([svc.id])[svc.id]["state"] is None


def test_a_first_heartbeat_turns_liveness_on_with_one_transition(timeline):
    svc = fast(health="Degraded", status="Stopped")
    report = liveness.heartbeat(svc.id)
    assert report["state"] == "passing"
    assert report["last_seen"] == timeline.now()  # the server's time
    assert report["deadline"] == timeline.now() + timedelta(seconds=20)
    assert shown(svc) == ("passing", "Healthy", "Running")
    assert changes(svc.id) == [(None, "passing")]
    (row,) = transition_rows(svc.id)
    assert (row["before"], row["after"], row["at"]) == (None, "passing", timeline.now())


def test_a_steady_heartbeat_is_one_write_with_no_cache_bump_and_no_event(timeline, monkeypatch):
    svc = fast()
    liveness.heartbeat(svc.id)
    bumps = []
    monkeypatch.setattr(caching, "bump", lambda *ns, **_: bumps.append(ns))
    for _ in range(5):
        timeline.advance(5)
        before = state_row(svc.id)["version"]
        liveness.heartbeat(svc.id)
        assert state_row(svc.id)["version"] == before + 1  # one write
    assert bumps == []
    assert changes(svc.id) == [(None, "passing")]


def test_a_changed_report_is_recorded_by_the_heartbeat_itself(timeline, monkeypatch):
    svc = fast()
    liveness.heartbeat(svc.id)
    bumps = []
    real = caching.bump
    monkeypatch.setattr(caching, "bump", lambda *ns, **kw: (bumps.append(ns), real(*ns, **kw)))
    version = state_row(svc.id)["version"]
    report = liveness.heartbeat(svc.id, data={"status": "warning", "note": "disk 91%"})
    assert state_row(svc.id)["version"] == version + 1  # the change rode on the same write
    assert report["state"] == "warning"
    assert report["reason"] == "heartbeat reported warning: disk 91%"
    assert bumps == [("catalog",)]
    assert shown(svc) == ("warning", "Warning", "Running")
    (event,) = liveness_events(svc.id)[1:]
    assert event["changes"]["liveness"]["reason"] == "heartbeat reported warning: disk 91%"


def test_another_project_s_scope_is_refused_and_nothing_is_stored(timeline):
    svc = fast()
    with pytest.raises(Forbidden):
        liveness.heartbeat(svc.id, scope=make_project().id)
    assert state_row(svc.id) is None
    assert liveness_events() == []
    assert Observer.objects.count() == 0


def test_an_unknown_service_is_not_found(timeline):
    with pytest.raises(NotFound):
        liveness.heartbeat(ObjectId())
    assert LivenessState.objects.count() == 0


# --- deadlines ----------------------------------------------------------------------------


def test_the_worker_records_a_passed_deadline_once_at_the_instant_it_passed(timeline):
    svc = fast()
    liveness.heartbeat(svc.id)
    start = timeline.now()
    assert timeline.advance(18) == 0
    assert shown(svc)[0] == "passing"
    assert timeline.advance(2) == 1  # the round at +20 s: due
    assert shown(svc) == ("critical", "Critical", "Error")
    assert timeline.advance(300) == 0  # recorded once, whatever the rounds after
    assert changes(svc.id) == [(None, "passing"), ("passing", "critical")]
    change = liveness_events(svc.id)[-1]["changes"]["liveness"]
    assert change["reason"].startswith("no heartbeat since ")
    assert transition_rows(svc.id)[-1]["at"] == start + timedelta(seconds=20)


def test_a_heartbeat_one_second_late_never_produces_a_transition(timeline):
    svc = fast()
    for _ in range(60):  # ten minutes of heartbeats every TTL + 1 s
        liveness.heartbeat(svc.id)
        timeline.advance(11)
    assert changes(svc.id) == [(None, "passing")]


def test_by_default_the_grace_is_one_interval_so_a_late_heartbeat_is_fine(timeline):
    svc = make_service(heartbeat_ttl=20)  # grace: max(60 s, one TTL)
    liveness.heartbeat(svc.id)
    timeline.advance(79)
    assert shown(svc)[0] == "passing"
    timeline.advance(1)
    assert shown(svc)[0] == "critical"


def test_n_consecutive_failures_are_needed_before_critical(timeline):
    svc = fast(heartbeat_failures=3)
    liveness.heartbeat(svc.id)
    for _ in range(2):
        assert liveness.heartbeat(svc.id, data={"status": "critical"})["state"] == "passing"
    assert liveness.heartbeat(svc.id, FAIL, {"note": "exit 2"})["state"] == "critical"
    assert liveness.heartbeat(svc.id)["state"] == "passing"
    assert changes(svc.id) == [(None, "passing"), ("passing", "critical"), ("critical", "passing")]


def test_a_job_start_without_finish_within_the_grace_goes_critical(timeline):
    svc = make_service(heartbeat_ttl=3600, heartbeat_grace=30)
    liveness.heartbeat(svc.id, START, {"run_id": "backup"})
    timeline.advance(25)
    assert shown(svc)[0] == "passing"
    timeline.advance(5)
    assert shown(svc)[0] == "critical"
    reason = liveness_events(svc.id)[-1]["changes"]["liveness"]["reason"]
    assert "run 'backup' started at" in reason
    assert liveness.heartbeat(svc.id, data={"run_id": "backup"})["state"] == "passing"


def test_overlapping_runs_are_paired_by_run_id(timeline):
    svc = make_service(heartbeat_ttl=3600, heartbeat_grace=30)
    liveness.heartbeat(svc.id, START, {"run_id": "a"})
    timeline.advance(10)
    liveness.heartbeat(svc.id, START, {"run_id": "b"})
    liveness.heartbeat(svc.id, data={"run_id": "a"})  # a finishes; b is due at +40 s
    timeline.advance(25)
    assert shown(svc)[0] == "passing"  # a's deadline (+30 s) went with it
    timeline.advance(5)
    assert shown(svc)[0] == "critical"
    assert "run 'b'" in liveness_events(svc.id)[-1]["changes"]["liveness"]["reason"]


def test_a_silent_service_goes_offline_after_the_setting(app, timeline):
    app.config["HEARTBEAT_OFFLINE_AFTER_SECONDS"] = 60
    svc = fast()
    liveness.heartbeat(svc.id)
    timeline.advance(20 + 55)
    assert shown(svc)[0] == "critical"
    timeline.advance(5)
    assert shown(svc) == ("offline", "Critical", "Stopped")
    timeline.advance(600)
    assert changes(svc.id) == [(None, "passing"), ("passing", "critical"), ("critical", "offline")]
    assert liveness.heartbeat(svc.id)["state"] == "passing"


def test_without_a_worker_reads_derive_the_right_state(app, timeline):
    svc = fast()
    liveness.heartbeat(svc.id)
    restart(app)  # even in a fresh process
    timeline.advance(25, worker=False)
    assert liveness.liveness_of([svc.id])[svc.id]["state"] == "critical"
    assert liveness_events(svc.id)[-1]["changes"]["liveness"]["after"] == "passing"  # not yet


def test_a_catalog_read_without_a_worker_records_the_change(timeline):
    svc = fast()
    liveness.heartbeat(svc.id)
    assert shown(svc)[0] == "passing"  # cached in the catalog now
    timeline.advance(25, worker=False)
    liveness.catch_up()  # what every catalog GET does first
    assert shown(svc)[0] == "critical"
    assert changes(svc.id)[-1] == ("passing", "critical")


def test_catch_up_runs_at_most_once_per_check_interval(timeline, monkeypatch):
    calls = []
    monkeypatch.setattr(liveness, "record_due", lambda: calls.append(timeline.now()))
    for _ in range(10):
        liveness.catch_up()
        timeline.advance(1, worker=False)
    assert len(calls) == 2  # at 0 s and 5 s


# --- polymicro's own outage ---------------------------------------------------------------


def test_worker_stopped_longer_than_the_ttl_then_restarted_with_services_pinging(app, timeline):
    """The issue's test: zero critical transitions."""
    pinging = [fast() for _ in range(5)]
    for _ in range(6):  # a minute of normal life
        for svc in pinging:
            liveness.heartbeat(svc.id)
        timeline.advance(10)
    timeline.advance(300, worker=False)  # polymicro down: no worker, no request
    restart(app)
    for _ in range(30):  # back: the worker runs (first), the services ping
        timeline.advance(5)
        for svc in pinging:
            liveness.heartbeat(svc.id)
    for svc in pinging:
        assert "critical" not in [after for _before, after in changes(svc.id)]
        assert shown(svc)[0] == "passing"
    (outage,) = Observer.objects
    assert outage.outage_end - outage.outage_start > timedelta(seconds=300)


def test_after_an_outage_a_service_that_does_not_ping_is_unknown_then_critical(app, timeline):
    silent, pinging = fast(), fast()
    for svc in (silent, pinging):
        liveness.heartbeat(svc.id)
    timeline.advance(5)
    timeline.advance(100, worker=False)
    restart(app)
    liveness.heartbeat(pinging.id)  # the first sign of the recovery is a heartbeat
    recovered = timeline.now()
    report = liveness.liveness_of([silent.id])[silent.id]
    assert report["state"] == "unknown"  # what alerts see: do not fire
    assert "not observing" in report["reason"]
    assert report["next_change"] == recovered + timedelta(seconds=20)
    for _ in range(3):
        timeline.advance(5)
        liveness.heartbeat(pinging.id)
    assert shown(silent) == ("unknown", "Unknown", "Unknown")
    timeline.advance(5)
    liveness.heartbeat(pinging.id)
    assert shown(silent)[0] == "critical"  # one interval after the recovery: it is dead
    assert changes(silent.id) == [
        (None, "passing"),
        ("passing", "unknown"),
        ("unknown", "critical"),
    ]
    assert changes(pinging.id) == [(None, "passing")]


def test_an_outage_is_recorded_once_by_the_first_tick_after_it(app, timeline, caplog):
    liveness.record_due()
    timeline.advance(20, worker=False)  # a quiet spell shorter than the outage threshold
    liveness.record_due()
    assert Observer.objects.get().outage_start is None
    timeline.advance(31, worker=False)
    liveness.record_due()
    observer = Observer.objects.get()
    assert (observer.outage_start, observer.outage_end) == (
        timeline.now() - timedelta(seconds=31),
        timeline.now(),
    )
    assert "was not observing" in caplog.text
    restart(app)
    timeline.advance(5, worker=False)
    liveness.record_due()
    assert Observer.objects.get().outage_end == observer.outage_end


def test_liveness_of_project_lists_its_services_with_liveness(timeline):
    project = make_project()
    one, two = fast(project), fast(project)
    fast(project)  # no heartbeat
    liveness.heartbeat(one.id)
    liveness.heartbeat(two.id, data={"status": "warning"})
    found = liveness.liveness_of_project(project.id)
    assert {sid: report["state"] for sid, report in found.items()} == {
        one.id: "passing",
        two.id: "warning",
    }
    fields = {"state", "since", "reason", "last_seen", "deadline", "next_change"}
    assert set(found[one.id]) == fields


# --- the filters --------------------------------------------------------------------------


def _rows_for_every_case(now, project_id) -> list[dict]:
    """Rows around ``now``: each reported status, due before/after now and the outage,
    heard before or after the recovery, short and long windows."""
    rows = []
    for reported, due_offset, seen_offset, window in itertools.product(
        REPORTED, (-5000, -700, -450, -250, -50, 0, 30), (-900, -400, -150), (20, 200, 600)
    ):
        rows.append(
            {
                "_id": ObjectId(),
                "project_id": project_id,
                "version": 1,
                "reported": reported,
                "reported_since": now + timedelta(seconds=seen_offset),
                "last_seen": now + timedelta(seconds=seen_offset),
                "due": now + timedelta(seconds=due_offset),
                "deadline": now + timedelta(seconds=due_offset),
                "window": window,
                "ttl": window // 2,
                "grace": window - window // 2,
                "runs": [],
            }
        )
    return rows


@pytest.mark.parametrize("with_outage", [False, True])
def test_the_filter_finds_exactly_the_rows_in_each_state(app, timeline, with_outage):
    """Every combination of report, deadline, last heartbeat and interval around an
    outage: the index ranges (``rules.candidates``) miss none of a state's rows."""
    app.config["HEARTBEAT_OFFLINE_AFTER_SECONDS"] = 1000
    now = timeline.now()
    rows = _rows_for_every_case(now, ObjectId())
    LivenessState._get_collection().insert_many(rows)
    outage = None
    if with_outage:
        outage = Outage(now - timedelta(seconds=600), now - timedelta(seconds=300))
        Observer._get_collection().insert_one(
            {
                "_id": "observer",
                "last_tick": now,
                "outage_start": outage.start,
                "outage_end": outage.end,
            }
        )
    restart(app)  # read the observer afresh
    expected = {state: set() for state in rules.STATUS}
    for row in rows:
        expected[rules.derive(row, now, outage, timedelta(seconds=1000)).state].add(row["_id"])
    for state, ids in expected.items():
        assert set(liveness.ids_in({state})) == ids, state
    assert (
        set(liveness.ids_in({"critical", "offline"})) == expected["critical"] | expected["offline"]
    )
    assert all(expected.values()) or not with_outage  # every state occurs with an outage


def test_the_services_list_filters_on_the_derived_liveness(app, timeline):
    app.config["HEARTBEAT_OFFLINE_AFTER_SECONDS"] = 90
    project = make_project()
    quiet, warn, gone, never = fast(project), fast(project), fast(project), fast(project)
    for svc in (quiet, warn, gone):
        liveness.heartbeat(svc.id)
    timeline.advance(100)
    liveness.heartbeat(quiet.id)
    liveness.heartbeat(warn.id, data={"status": "warning"})  # both due at 120 s
    timeline.advance(5)  # gone: critical since 20 s, offline at 110 s

    def names(**args):
        return {row["name"] for row in services.list_services(**args)}

    assert names(liveness="passing") == {quiet.name}
    assert names(liveness="warning") == {warn.name}
    assert names(liveness="critical") == {gone.name}
    timeline.advance(5)
    assert names(liveness="critical") == set()
    assert names(liveness="offline") == {gone.name}
    assert names(liveness="unknown") == set()
    assert never.name not in names(liveness="passing") | names(liveness="offline")
    assert names(liveness="offline", project_id=ObjectId()) == set()


def test_health_and_status_filters_match_what_the_views_show(timeline):
    untracked = make_service(health="Critical", status="Error")
    dead = fast(health="Healthy", status="Running")
    alive = fast(health="Critical", status="Error")  # stored values, overridden by liveness
    liveness.heartbeat(dead.id)
    timeline.advance(15)
    liveness.heartbeat(alive.id)
    timeline.advance(10)

    def ids(**args):
        return {row["id"] for row in services.list_services(**args)}

    assert ids(health="Critical") == {untracked.id, dead.id}
    assert ids(status="Error") == {untracked.id, dead.id}
    assert ids(health="Healthy") == {alive.id}
    assert ids(status="Running", health="Healthy") == {alive.id}
    for svc in (untracked, dead, alive):
        view = services.get_service(svc.id)
        assert svc.id in ids(health=view["health"])
        assert svc.id in ids(status=view["status"])


def test_project_views_show_the_liveness_of_their_services(timeline):
    from polymicro.projects import service as projects

    project = make_project()
    svc = fast(project, health="Degraded", status="Stopped")
    liveness.heartbeat(svc.id, data={"status": "warning"})
    (tree,) = projects.get_project(project.id)["microservices"]
    assert (tree["health"], tree["status"]) == ("Warning", "Running")


# --- ingest as heartbeats ---------------------------------------------------------------


def test_logs_count_as_heartbeats_of_a_service_that_opts_in(timeline):
    opted, other = fast(heartbeat_from_ingest=True), fast()
    logs.create_log(log_data(opted))
    logs.create_logs([log_data(other)])
    assert shown(opted)[0] == "passing"
    assert shown(other)[0] is None
    assert "received" in liveness_events(opted.id)[0]["changes"]["liveness"]["reason"]


def test_points_count_as_heartbeats_of_a_service_that_opts_in(timeline):
    svc = fast(heartbeat_from_ingest=True)
    metric = make_metric(svc)
    assert shown(svc)[0] is None  # an entry without points says nothing
    metrics.append_cpu_points(metric.id, [{"load": 1.0}])
    assert shown(svc)[0] == "passing"
    timeline.advance(15)
    point = {"time": timeline.now(), "load": 2.0}
    metrics.append_ingested_points(svc.project_id, {svc.id: [point]})
    assert state_row(svc.id)["last_seen"] == timeline.now()


def test_ingest_heartbeats_are_one_write_per_service_per_check_interval(timeline):
    svc = fast(heartbeat_from_ingest=True)
    for _ in range(20):
        logs.create_log(log_data(svc))
        timeline.advance(0.2, worker=False)
    assert state_row(svc.id)["version"] == 1
    timeline.advance(1, worker=False)
    logs.create_log(log_data(svc))
    assert state_row(svc.id)["version"] == 2


def test_ingest_does_not_override_a_reported_status(timeline):
    svc = fast(heartbeat_from_ingest=True)
    liveness.heartbeat(svc.id, FAIL)
    logs.create_log(log_data(svc))
    assert shown(svc)[0] == "critical"


# --- history and uptime -----------------------------------------------------------------


def test_uptime_and_transitions_come_from_the_recorded_changes(timeline):
    svc = make_service(heartbeat_ttl=60, heartbeat_grace=60)
    start = timeline.now()
    for _ in range(60):  # an hour of heartbeats, a minute apart
        liveness.heartbeat(svc.id)
        timeline.advance(60, step=20)
    timeline.advance(30 * 60 - 60, step=25)  # silent: critical 2 min after the last one
    page = liveness.get_liveness(svc.id)
    assert page["state"] == "critical"
    assert page["last_seen"] == start + timedelta(minutes=59)
    up, down = 61 * 60, 30 * 60 - 60 - 60
    assert page["uptime"]["24h"] == pytest.approx(100 * up / (up + down), abs=0.001)
    assert page["uptime"]["30d"] == page["uptime"]["24h"]
    newest, first = page["transitions"]
    assert (newest["before"], newest["after"], newest["until"]) == ("passing", "critical", None)
    assert newest["duration_seconds"] == down
    assert (first["after"], first["until"]) == ("passing", newest["at"])
    assert first["duration_seconds"] == up


def test_uptime_of_the_window_counts_the_state_held_before_it(timeline):
    svc = make_service(heartbeat_ttl=3600, heartbeat_grace=3600)
    liveness.heartbeat(svc.id, FAIL)  # critical, reported, for two days
    for _ in range(48):
        timeline.advance(3600, step=25, worker=False)
        liveness.heartbeat(svc.id, FAIL)
    liveness.heartbeat(svc.id)  # passing for the last 6 hours
    for _ in range(6):
        timeline.advance(3600, step=25, worker=False)
        liveness.heartbeat(svc.id)
    uptime = liveness.get_liveness(svc.id)["uptime"]
    assert uptime["24h"] == pytest.approx(25.0)
    assert uptime["7d"] == pytest.approx(100 * 6 / 54, abs=0.001)


def test_a_change_not_recorded_yet_counts_in_the_uptime(app, timeline):
    svc = fast()
    liveness.heartbeat(svc.id)
    timeline.advance(40, worker=False)  # critical since +20 s, nobody recorded it
    page = liveness.get_liveness(svc.id)
    assert page["state"] == "critical"
    assert page["uptime"]["24h"] == 50.0
    assert [t["after"] for t in page["transitions"]] == ["passing"]


def test_the_page_shows_the_settings_in_effect_and_the_open_runs(timeline):
    svc = make_service(heartbeat_ttl=300)
    liveness.heartbeat(svc.id, START, {"run_id": "r", "note": "nightly"})
    page = liveness.get_liveness(svc.id)
    assert page["note"] == "nightly"
    assert (page["heartbeat_ttl"], page["heartbeat_grace"], page["heartbeat_failures"]) == (
        300,
        300,
        1,
    )
    assert page["runs"] == [
        {"id": "r", "started": timeline.now(), "deadline": timeline.now() + timedelta(minutes=5)}
    ]


# --- the rest of the domain -------------------------------------------------------------


def test_deleting_a_service_or_its_project_removes_its_liveness(timeline):
    project = make_project()
    one, two = fast(project), fast(project)
    for svc in (one, two):
        liveness.heartbeat(svc.id)
    services.delete_service(one.id)
    assert state_row(one.id) is None
    assert LivenessTransition.objects(service_id=one.id).count() == 0
    from polymicro.projects import service as projects

    projects.delete_project(project.id)
    assert LivenessState.objects.count() == LivenessTransition.objects.count() == 0


def test_the_worker_runs_the_liveness_job_on_its_interval(app, timeline):
    (job,) = [job for job in worker.jobs(app) if job.name == "liveness"]
    assert job.every == app.config["LIVENESS_CHECK_SECONDS"]
    svc = fast()
    liveness.heartbeat(svc.id)
    timeline.clock.advance(25)
    result = app.test_cli_runner().invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert changes(svc.id)[-1] == ("passing", "critical")


# --- indexes --------------------------------------------------------------------------------


def _index_scans(collection, query: dict, sort=None) -> list[str]:
    cursor = collection.find(query)
    if sort:
        cursor = cursor.sort(sort)
    plan = cursor.limit(10).explain()["queryPlanner"]["winningPlan"]
    stages = []
    while plan:
        if plan.get("stage") == "IXSCAN":
            stages.append(next(iter(plan["keyPattern"])))
        plan = plan.get("inputStage")
    return stages


def _liveness_queries(now) -> list[tuple]:
    outage = Outage(now - timedelta(minutes=10), now - timedelta(minutes=5))
    ranges = [
        (LivenessState, query, None, next(iter(query)))
        for state in rules.STATUS
        for query in rules.candidates(state, now, outage, timedelta(hours=1))
    ]
    return [
        (LivenessState, {"next_check": {"$lte": now}}, [("next_check", 1)], "next_check"),
        (LivenessState, {"project_id": ObjectId()}, None, "project_id"),
        *ranges,
        (
            LivenessTransition,
            {"service_id": ObjectId(), "at": {"$gte": now}},
            [("at", -1), ("version", -1)],
            "service_id",
        ),
    ]


def test_the_worker_the_filters_and_the_history_read_through_indexes(timeline):
    from tests.conftest import USES_REAL_DB

    for document, query, sort, leading in _liveness_queries(timeline.now()):
        document.ensure_indexes()
        collection = document._get_collection()
        keys = [next(iter(spec["key"]))[0] for spec in collection.index_information().values()]
        assert leading in keys, (document.__name__, leading)
        if USES_REAL_DB:
            assert _index_scans(collection, query, sort), (document.__name__, query)


def test_without_heartbeats_anywhere_the_health_filter_is_the_stored_field(timeline):
    make_service(health="Critical")
    condition = liveness.filter_service_views(None, status=None, health="Critical", liveness=None)
    assert condition == {"$and": [{"health": "Critical"}]}  # served by the `health` index


def test_catch_up_records_within_its_own_time_budget_and_never_fails(timeline, monkeypatch):
    """With the database away, recording before a read must not cost a whole
    server-selection timeout (the read then waits one of its own): record_due runs under
    pymongo's client-side timeout of CATCH_UP_SECONDS, and its failure is only logged."""
    from pymongo import _csot
    from pymongo.errors import ServerSelectionTimeoutError

    budgets = []

    def unreachable():
        budgets.append(_csot.get_timeout())
        raise ServerSelectionTimeoutError("no server")

    monkeypatch.setattr(liveness, "record_due", unreachable)
    liveness.catch_up()  # logged, not raised
    assert budgets == [liveness.CATCH_UP_SECONDS]
    assert 0 < liveness.CATCH_UP_SECONDS <= 0.5
    assert _csot.get_timeout() is None  # only around the recording
