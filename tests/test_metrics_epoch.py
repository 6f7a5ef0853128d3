"""The CPU metrics of a project when the retention horizon moves by a minute (issue 9):
counts, not times.

The horizon of raw points moves with the time (whole days before now, rounded up to the
minute).  It was the ``salt`` of the metrics namespace and part of the cached list's
key, so at each minute every cached read (the service's list and the response cache)
missed for every reader at once.  Now the days kept are the salt and the minute is the
entries' epoch (as in the logs namespace): an entry of the minute before is served like
one of an older generation, inside the staleness window, and refreshed ahead.

Time moves only by ``caching.clock`` and the process clock; retention is on, as in
production.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from bson import ObjectId

from polymicro.common import caching, retention
from polymicro.common import clock as common_clock
from polymicro.common.clock import ManualClock
from polymicro.metrics import service as metrics
from tests.conftest import client_as
from tests.staleness_helpers import count_list_queries, count_lookups
from tests.test_staleness_counts import Clocks, _drain

WINDOW_MS = 1000
WRITES = 40  # 2 s at 20 writes/s
READS_PER_WRITE = 5


@pytest.fixture
def world(app, client, monkeypatch):
    """A project with a CPU entry, an API key that appends points, and the clocks at
    59.5 s past a minute: the horizon moves half a second into the mix."""
    app.config["LIST_STALENESS_MS"] = WINDOW_MS
    app.config["RETENTION_POINTS_DAYS"] = 30
    start = datetime.utcnow().replace(second=0, microsecond=0) + timedelta(seconds=59.5)
    manual = ManualClock(start)
    clocks = Clocks(manual)
    monkeypatch.setattr(caching, "clock", clocks)
    monkeypatch.setattr(caching.Reader, "_took", lambda self: 100)  # every computation
    counts: dict = {"served": 0, "computed": 0, "db": 0}

    def record(_kind: str) -> None:
        counts["db"] += 1

    count_list_queries(monkeypatch, record)
    count_lookups(monkeypatch, counts)
    project = client.post("/api/projects", json={"name": "Shop"}).json
    client.post("/api/services", json={"project_id": project["id"], "name": "api"})
    metric = client.post(
        "/api/metrics/cpu", json={"project_id": project["id"], "service_name": "api"}
    ).json
    key = client.post(f"/api/projects/{project['id']}/keys", json={"name": "agent"}).json["key"]
    writer = app.test_client()
    writer.environ_base["HTTP_X_API_KEY"] = key
    with common_clock.use(manual):
        yield {
            "project": project,
            "metric": metric,
            "writer": writer,
            "clocks": clocks,
            "manual": manual,
            "counts": counts,
        }
    _drain()


def _mix(app, world) -> dict:
    """A writer appends a point 20 times a second (with the API key); a viewer reads the
    project's metrics five times between two writes, for two seconds.  Returns the
    counts of the reads."""
    viewer = client_as(app, "viewer")
    path = f"/api/metrics/cpu/project/{world['project']['id']}"
    data = f"/api/metrics/cpu/{world['metric']['id']}/data"
    assert world["writer"].post(data, json={"load": 1.0}).status_code == 201
    assert viewer.get(path).status_code == 200  # an open dashboard
    counts = world["counts"]
    reads = {"served": 0, "computed": 0, "db": 0}
    epochs = set()
    for i in range(WRITES):
        assert world["writer"].post(data, json={"load": float(i)}).status_code == 201
        for _ in range(READS_PER_WRITE):
            counts.update(served=0, computed=0, db=0)
            world["clocks"].advance_ms(1000 / 20 / READS_PER_WRITE)
            response = viewer.get(path)
            assert response.status_code == 200
            assert response.json[0]["data"]  # the points are there
            _drain()
            for name in reads:
                reads[name] += counts[name]
            with app.app_context():
                epochs.add(retention.visible_epoch(metrics.RETENTION, world["project"]["id"]))
    assert len(epochs) == 2  # the horizon moved by a minute during the mix
    return reads


def test_the_horizon_moving_by_a_minute_misses_no_read(app, world):
    """Every one of the 200 reads is answered from the response cache, across the
    minute; the database sees only the refreshes ahead (a count and a page each)."""
    reads = _mix(app, world)
    # 6 refreshes in the mix's 2 s: about two per window (REFRESH_AHEAD_FRACTION)
    assert reads == {"served": WRITES * READS_PER_WRITE, "computed": 0, "db": 6}


def test_with_the_minute_in_the_key_a_read_missed(app, world, monkeypatch):
    """The same mix with the horizon back in the salt (as before): the first read of
    the new minute finds no entry and waits for the database.  (Shows that the test
    above counts what it names.)"""
    monkeypatch.setattr(
        metrics.METRICS, "salt", lambda project_id: retention.horizon(metrics.RETENTION, project_id)
    )
    monkeypatch.setattr(metrics.METRICS, "epoch", None)
    reads = _mix(app, world)
    assert reads["computed"] == 1
    assert reads["served"] == WRITES * READS_PER_WRITE - 1


@pytest.mark.usefixtures("ctx")
def test_the_service_read_keeps_its_key_across_the_minute(app, world, monkeypatch):
    """Service layer: the cached list of a project's metrics has the same key in two
    minutes and carries the minute as its epoch; the entry of the minute before is
    served (no computation) inside the window, and not after it."""
    # Read at 600 ms old: no refresh ahead at half the window (tests/test_staleness.py)
    # in between, so that what is counted is the minute's effect alone.
    monkeypatch.setattr(caching, "REFRESH_AHEAD_FRACTION", 1.0)
    project_id = ObjectId(world["metric"]["project_id"])
    first = metrics.list_project_metrics(project_id)
    assert [m["id"] for m in first[0:10]] == [ObjectId(world["metric"]["id"])]
    db = world["counts"]["db"]
    world["clocks"].advance_ms(600)  # past the minute, inside the window
    second = metrics.list_project_metrics(project_id)
    assert second.key == first.key
    assert second._reader.epoch == first._reader.epoch + 1
    assert [m["id"] for m in second[0:10]] == [ObjectId(world["metric"]["id"])]
    assert world["counts"]["db"] == db  # served from the entry of the minute before
    world["clocks"].advance_ms(WINDOW_MS)  # past the window: computed again
    third = metrics.list_project_metrics(project_id)
    assert [m["id"] for m in third[0:10]] == [ObjectId(world["metric"]["id"])]
    assert world["counts"]["db"] == db + 1


# --- the latest points of an entry: a window of the range, not the whole range ---------


@pytest.mark.usefixtures("ctx")
@pytest.mark.parametrize(
    ("spacing_s", "age_h", "want", "reads"),
    [(10, 0, 60, 1), (10, 0, 500, 2), (3600, 0, 20, 2), (600, 0, 500, 2), (60, 2, 60, 2)],
    ids=["dense-60", "dense-500", "hourly-20", "10min-500", "none-in-the-last-hour"],
)
def test_the_latest_points_read_a_window_of_the_range(
    app, monkeypatch, spacing_s, age_h, want, reads
):
    """SecantusDB reads every point of a range before it sorts and stops, so the latest
    points of an entry are read from a window at the end of the range, widened only
    when it holds too few: the answer is the whole range's, and the points the ranges
    read hold (counted with ``count_documents`` on those ranges) stay near ``want``
    instead of every point kept (3,000 here)."""
    from polymicro.common.timeutil import utcnow
    from polymicro.metrics.models import CpuPoint

    app.config["RETENTION_POINTS_DAYS"] = 30
    metric_id = ObjectId()
    now = utcnow().replace(microsecond=0) - timedelta(hours=age_h)
    total = 3000
    CpuPoint._get_collection().insert_many(
        [
            {
                "metric_id": metric_id,
                "time": now - timedelta(seconds=spacing_s * i),
                "load": float(i),
            }
            for i in range(total)
        ]
    )
    expected = sorted((now - timedelta(seconds=spacing_s * i) for i in range(total)), reverse=True)
    floor = retention.floor(metrics.RETENTION, None, None)
    expected = sorted(t for t in expected if t >= floor)[-want:]
    ranges = []
    latest = metrics._latest

    def counted(metric, since, until, points):
        ranges.append((since, until))
        return latest(metric, since, until, points)

    monkeypatch.setattr(metrics, "_latest", counted)
    got = metrics.latest_points(metric_id, floor, None, want)
    assert [p["time"] for p in got] == expected
    assert len(ranges) == reads
    collection = CpuPoint._get_collection()
    read = sum(
        collection.count_documents({"metric_id": metric_id, "time": {"$gte": low or floor}})
        for low, _ in ranges
    )
    kept = collection.count_documents({"metric_id": metric_id, "time": {"$gte": floor}})
    first_window = 3600 // spacing_s  # the points of the last hour: read at least
    assert read <= max(4 * want, first_window) + (24 * first_window if age_h else 0) < kept


@pytest.mark.parametrize(
    ("query", "minutes"),
    [
        ("points=5", [0, 1, 2, 3, 4]),
        ("points=3&until={until}", [90, 91, 92]),
        ("until=0001-01-01T00:00:00Z", []),
    ],
    ids=["latest", "until", "until-year-1"],
)
def test_through_the_api_the_latest_points_stay_right(app, client, query, minutes):
    """As a viewer (auth on), with retention on: the latest points of the window, oldest
    first (points a minute apart for three hours, the newest now, then with ``until``
    90 minutes ago); a window reaching before year 1 is read whole (empty), not an
    error."""
    from polymicro.common.timeutil import format_time, utcnow
    from polymicro.metrics.models import CpuPoint

    app.config["RETENTION_POINTS_DAYS"] = 30
    project = client.post("/api/projects", json={"name": "Shop"}).json
    client.post("/api/services", json={"project_id": project["id"], "name": "api"})
    metric = client.post(
        "/api/metrics/cpu", json={"project_id": project["id"], "service_name": "api"}
    ).json
    now = utcnow().replace(second=0, microsecond=0)
    with app.app_context():
        CpuPoint._get_collection().insert_many(
            [
                {"metric_id": ObjectId(metric["id"]), "time": now - timedelta(minutes=m), "load": m}
                for m in range(180)
            ]
        )
    until = format_time(now - timedelta(minutes=90))
    viewer = client_as(app, "viewer")
    response = viewer.get(f"/api/metrics/cpu/project/{project['id']}?{query.format(until=until)}")
    assert response.status_code == 200, response.json
    assert [p["load"] for p in response.json[0]["data"]] == sorted(minutes, reverse=True)
