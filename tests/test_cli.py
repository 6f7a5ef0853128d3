"""``flask seed-demo``: the demo data command and the generators behind it.

Seeding is the slow part on a real server, so the tests that only read what one
``seed-demo --days 1`` run produced share a module-scoped snapshot of the database
(taken right after the run, through the models and the API; on a real server in a
database of its own, dropped right after).  The tests that run the command on a
database they prepare (idempotency, ``--if-empty``, bad options) use the usual ``app``
fixture.
"""

from __future__ import annotations

import itertools
import json
import random
import string
from collections import Counter
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import mongoengine
import pytest
from bson import ObjectId

from polymicro import create_app, demo
from polymicro.common import caching
from polymicro.common.models import name_key
from polymicro.common.timeutil import format_time, utcnow
from polymicro.extensions import cache, close_db
from polymicro.logs.models import SEVERITIES, SEVERITY_LEVEL, LogEntry
from polymicro.logs.schemas import BATCH_MAX, LogBatchSchema
from polymicro.metrics.models import MAX_POINTS_PER_WRITE, CpuMetric, CpuPoint
from polymicro.metrics.schemas import PointsBodySchema
from polymicro.projects.models import Project
from polymicro.services.models import HEALTHS, STATUSES, Service
from tests.conftest import client_as, free_port, make_config
from tests.factories import make_project

SEED_ONE_DAY = ["seed-demo", "--days", "1"]
QUARTER_HOUR = timedelta(minutes=15)


def counts() -> dict[str, int]:
    return {
        "projects": Project.objects.count(),
        "services": Service.objects.count(),
        "metrics": CpuMetric.objects.count(),
        "points": CpuPoint.objects.count(),
        "logs": LogEntry.objects.count(),
    }


def _database_of_its_own(uri: str) -> str:
    """The same server, another database: dropping it at the end is cheaper than
    emptying collections, and the function-scoped fixtures never see its data."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=(parts.path.rstrip("/") or "/polymicro_test") + "_cli"))


@pytest.fixture(scope="module")
def seeded(mongodb_uri, redis_url):
    """One ``seed-demo --days 1`` on an empty database and what it left there."""
    uri = _database_of_its_own(mongodb_uri) if mongodb_uri else None
    app = create_app(make_config(uri, redis_url))
    try:
        with app.app_context():
            if uri:
                mongoengine.get_db().client.drop_database(mongoengine.get_db().name)
            before = utcnow()
            result = app.test_cli_runner().invoke(args=SEED_ONE_DAY)
            after = utcnow()
            return {
                "result": result,
                "before": before,
                "after": after,
                "counts": counts(),
                "projects": {p.id: p for p in Project.objects},
                "services": list(Service.objects),
                "metrics": list(CpuMetric.objects),
                "logs": list(
                    LogEntry.objects.only(
                        "service_id", "severity", "level", "timestamp", "message"
                    ).as_pymongo()
                ),
                "points": list(CpuPoint.objects.order_by("metric_id", "time").as_pymongo()),
                "api": client_as(app).get("/api/projects"),
            }
    finally:
        if uri:
            with app.app_context():
                mongoengine.get_db().client.drop_database(mongoengine.get_db().name)
        close_db()


# --- one run -------------------------------------------------------------------------


def test_seed_demo_exits_0_and_prints_the_counts_it_created(seeded):
    result, created = seeded["result"], seeded["counts"]
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    summary = result.output.strip().splitlines()[-1]
    assert summary.startswith("Created ")
    assert f"{created['projects']} projects" in summary
    assert f"{created['services']} services" in summary
    assert f"{created['points']:,} CPU points" in summary
    assert f"{created['logs']:,} logs" in summary


def test_seed_demo_creates_projects_each_with_several_varied_services(seeded):
    projects, services = seeded["projects"], seeded["services"]
    assert len(projects) >= 3
    per_project = Counter(svc.project_id for svc in services)
    assert set(per_project) == set(projects)
    assert all(3 <= n <= 5 for n in per_project.values())
    for project in projects.values():
        assert project.owner
        assert project.description
        assert project.tags
    assert len({svc.status for svc in services}) == len(STATUSES)
    assert len({svc.health for svc in services}) == len(HEALTHS)
    for svc in services:
        assert svc.port
        assert svc.url.startswith("http://")
        assert svc.version
        assert svc.container_name
        assert svc.last_deployment <= seeded["after"]
        if svc.status in ("Running", "Starting"):
            assert svc.uptime


def test_seed_demo_writes_hundreds_of_logs_over_the_last_day(seeded):
    logs = seeded["logs"]
    assert len(logs) > 500
    first_allowed = seeded["before"] - timedelta(days=1)
    for entry in logs:
        assert first_allowed <= entry["timestamp"] <= seeded["after"]
        assert entry["timestamp"].microsecond % 1000 == 0
        assert entry["message"]
    # every service logged something in the period (even the stopped one, before it stopped)
    assert {entry["service_id"] for entry in logs} == {svc.id for svc in seeded["services"]}


def test_seeded_logs_have_a_realistic_severity_mix_and_consistent_levels(seeded):
    logs = seeded["logs"]
    severities = Counter(entry["severity"] for entry in logs)
    assert set(severities) == set(SEVERITIES)
    assert severities.most_common()[0][0] == "info"
    assert severities.most_common()[-1][0] == "critical"
    assert (severities["info"] + severities["debug"]) / len(logs) > 0.75
    assert severities["warn"] > severities["error"] > severities["critical"] > 0
    assert all(entry["level"] == SEVERITY_LEVEL[entry["severity"]] for entry in logs)


def test_seed_demo_creates_one_metric_entry_per_service(seeded):
    by_service = {metric.service_id: metric for metric in seeded["metrics"]}
    assert len(by_service) == len(seeded["metrics"]) == len(seeded["services"])
    for svc in seeded["services"]:
        metric = by_service[svc.id]
        assert metric.project_id == svc.project_id
        assert metric.service_name == svc.name
        assert metric.service_key == name_key(svc.name)


def test_seeded_cpu_points_come_every_15_minutes_for_the_day(seeded):
    by_metric: dict = {}
    for point in seeded["points"]:
        by_metric.setdefault(point["metric_id"], []).append(point)
    assert set(by_metric) == {metric.id for metric in seeded["metrics"]}
    for points in by_metric.values():
        assert abs(len(points) - 96) <= 1
        times = [point["time"] for point in points]
        assert all(b - a == QUARTER_HOUR for a, b in itertools.pairwise(times))
        # The last point is the latest quarter hour of the seeding, which began at
        # `before` and ended at `after` (it may straddle a quarter-hour boundary).
        assert seeded["before"] < times[-1] + QUARTER_HOUR
        assert times[-1] <= seeded["after"]
        for point in points:
            assert point["load"] >= 0
            assert 0 <= point["memory"] <= 100
            assert isinstance(point["threads"], int)
            assert point["threads"] >= 0


def test_seeded_cpu_load_follows_a_daily_rhythm(seeded):
    gateway = next(svc for svc in seeded["services"] if svc.name == "api-gateway")
    metric = next(m for m in seeded["metrics"] if m.service_id == gateway.id)
    by_hour: dict[int, list[float]] = {}
    for point in seeded["points"]:
        if point["metric_id"] == metric.id:
            by_hour.setdefault(point["time"].hour, []).append(point["load"])

    def mean(hours):
        loads = [load for hour in hours for load in by_hour[hour]]
        return sum(loads) / len(loads)

    assert mean(range(12, 17)) > 1.5 * mean(range(0, 5))


def test_seeded_data_is_readable_through_the_projects_api(seeded):
    response = seeded["api"]
    assert response.status_code == 200
    body = response.json
    services_per_project = Counter(str(svc.project_id) for svc in seeded["services"])
    assert {item["name"] for item in body} == {p.name for p in seeded["projects"].values()}
    for item in body:
        assert len(item["microservices"]) == services_per_project[item["id"]]
        for micro in item["microservices"]:
            assert micro["projectId"] == item["id"]
            assert micro["status"] in STATUSES
            assert micro["health"] in HEALTHS


# --- runs on a database of their own -------------------------------------------------


def test_seed_demo_twice_creates_nothing_twice(app):
    runner = app.test_cli_runner()
    assert runner.invoke(args=SEED_ONE_DAY).exit_code == 0
    with app.app_context():
        first = counts()

    again = runner.invoke(args=SEED_ONE_DAY)

    assert again.exit_code == 0, again.output
    assert "nothing created" in again.output
    with app.app_context():
        assert counts() == first


def test_seeding_writes_each_services_logs_in_one_batch_of_at_most_the_api_cap(app, monkeypatch):
    batches = []
    create_logs = demo.logs.create_logs

    def spy(entries):
        batches.append([entry["service_id"] for entry in entries])
        return create_logs(entries)

    monkeypatch.setattr(demo.logs, "create_logs", spy)
    with app.app_context():
        demo.seed_demo(days=1)
        services = list(Service.objects.scalar("id"))

    assert all(1 <= len(batch) <= BATCH_MAX for batch in batches)
    in_batches = Counter(service_id for batch in batches for service_id in set(batch))
    assert sorted(in_batches) == sorted(services)
    assert set(in_batches.values()) == {1}  # each service's logs in one batch
    assert len(batches) < len(services) / 2  # several services per batch


def test_if_empty_on_a_non_empty_database_creates_nothing(app):
    with app.app_context():
        make_project(name="Someone's project")

    result = app.test_cli_runner().invoke(args=[*SEED_ONE_DAY, "--if-empty"])

    assert result.exit_code == 0, result.output
    assert "nothing seeded" in result.output
    with app.app_context():
        assert counts() == {"projects": 1, "services": 0, "metrics": 0, "points": 0, "logs": 0}


def test_reads_cached_before_seeding_show_the_seeded_data_without_a_cache_clear(app, monkeypatch):
    """seed-demo writes through the service layer, which bumps the namespaces it changes:
    the catalog, the project's logs and its CPU metrics, cached (data and responses)
    before the seeding, show the new data at once, and nothing clears the cache."""
    client = client_as(app)
    with app.app_context():
        storefront = make_project(name="Storefront Platform")  # the seeding reuses it
    logs_url = f"/api/logs/project/{storefront.id}"
    metrics_url = f"/api/metrics/cpu/project/{storefront.id}"
    for url in ("/api/projects", logs_url, metrics_url):
        assert client.get(url).status_code == 200
    # Those reads are cached: a write that skips the service layer (no bump) stays unseen.
    Project(name="Written past the cache", name_key="written past the cache").save()
    assert [p["name"] for p in client.get("/api/projects").json] == ["Storefront Platform"]

    def no_clear(*args, **kwargs):
        pytest.fail("seed-demo cleared the cache")

    monkeypatch.setattr(cache, "clear", no_clear)
    result = app.test_cli_runner().invoke(args=SEED_ONE_DAY)
    assert result.exit_code == 0, result.output

    projects = client.get("/api/projects").json  # the catalog is exact: no window
    assert {p["name"] for p in projects} == {p.name for p in Project.objects}
    assert len(projects) == len(demo.catalog()) + 1
    seeded_storefront = next(p for p in projects if p["id"] == str(storefront.id))
    service_names = {svc.name for svc in demo.catalog()[0].services}
    assert {m["name"] for m in seeded_storefront["microservices"]} == service_names
    # Log and point lists may lag another caller's writes (here the CLI's) by the
    # staleness window (README, Performance): read them once it has passed.
    later = caching.clock() + app.config["LIST_STALENESS_MS"] / 1000 + 1
    monkeypatch.setattr(caching, "clock", lambda: later)
    logs = client.get(logs_url)
    total = json.loads(logs.headers["X-Pagination"])["total"]
    assert total == LogEntry.objects(project_id=storefront.id).count() > 0
    assert logs.json[0]["timestamp"] == format_time(
        LogEntry.objects(project_id=storefront.id).order_by("-timestamp").first().timestamp
    )
    entries = client.get(metrics_url).json
    assert {entry["service_name"] for entry in entries} == service_names
    assert all(len(entry["data"]) >= 96 for entry in entries)


@pytest.mark.parametrize("days", ["0", "-1", "many"])
def test_seed_demo_rejects_a_bad_days_value(app, days):
    result = app.test_cli_runner().invoke(args=["seed-demo", "--days", days])
    assert result.exit_code == 2
    with app.app_context():
        assert counts()["projects"] == 0


@pytest.fixture
def unreachable_app():
    port = free_port()  # nothing listens there
    app = create_app(
        make_config(f"mongodb://127.0.0.1:{port}/polymicro_test", MONGODB_TIMEOUT_MS=200)
    )
    yield app, port
    close_db()


def test_unreachable_database_gives_a_one_line_error_and_exit_1(unreachable_app):
    app, port = unreachable_app

    result = app.test_cli_runner().invoke(args=SEED_ONE_DAY)

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1
    assert error_lines[0].startswith(f"Error: cannot reach MongoDB at 127.0.0.1:{port}")


# --- the generators (no database) ----------------------------------------------------


def _generate(seed: int, now: datetime, project=None, spec=None):
    """One day of one service's points and logs (the first service of the catalog)."""
    project = project or demo.catalog()[0]
    spec = spec or project.services[0]
    rng = demo.service_rng(seed, project, spec, "timeline")
    timeline = demo.plan_timeline(rng, spec.status, now)
    times = demo.point_times(now, 1)
    points = demo.generate_points(
        spec, timeline, demo.service_rng(seed, project, spec, "points"), times
    )
    maker = demo.LogMaker(None, None, project, spec, demo.service_rng(seed, project, spec, "logs"))
    hot = [p for p in points if p["load"] >= demo.data()["high_load"]]
    logs = demo.generate_logs(maker, timeline, now - timedelta(days=1), now, hot)
    return points, logs


def _comparable(seed: int, now: datetime):
    points, logs = _generate(seed, now)
    return (
        [(p["time"], p["load"], p["memory"], p["threads"]) for p in points],
        [(e["timestamp"], e["severity"], e["message"], e["attributes"]) for e in logs],
    )


def test_the_same_seed_gives_the_same_data_and_another_seed_other_data():
    now = datetime(2026, 11, 20, 9, 41, 7, 123000)
    assert _comparable(7, now) == _comparable(7, now)
    assert _comparable(7, now) != _comparable(8, now)


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_message_template_has_a_filler_for_each_placeholder():
    templates = demo.data()["templates"]
    parts = [templates["common"], templates["http"], templates["worker"]]
    parts += templates["domains"].values()
    used = set()
    for part in parts:
        assert set(part) <= set(SEVERITIES)
        for pairs in part.values():
            for text, logger in pairs:
                assert logger
                used |= _placeholders(text)
    assert used <= set(demo.data()["fillers"])
    assert set(demo.data()["attributes"]) <= set(demo.data()["fillers"])


def test_every_filler_draws_a_value_for_every_service():
    rng = random.Random(1)
    for project in demo.catalog():
        for spec in project.services:
            for name, rule in demo.data()["fillers"].items():
                value = demo.draw(rule, rng, spec)
                assert str(value), (spec.name, name)
                assert "{" not in str(value), (spec.name, name)


def test_the_data_file_covers_every_status_health_and_domain():
    data = demo.data()
    assert set(data["timelines"]) == set(STATUSES)
    assert set(data["severity_weights"]) == set(HEALTHS)
    weights = [*data["severity_weights"].values(), data["failing_weights"]]
    assert all(len(w) == len(SEVERITIES) and abs(sum(w) - 1) < 1e-9 for w in weights)
    specs = [spec for project in demo.catalog() for spec in project.services]
    assert {spec.domain for spec in specs} == set(data["templates"]["domains"])
    assert set(data["templates"]["http_domains"]) <= set(data["templates"]["domains"])
    for spec in specs:
        assert spec.status in STATUSES
        assert spec.health in HEALTHS
        assert spec.paths
        assert spec.deps


def test_generated_logs_and_points_are_valid_api_input():
    """The service layer takes validated input: every generated entry and point passes
    the API's schemas (a batch, a points array)."""
    now = datetime(2026, 11, 20, 9, 41, 7, 123000)
    project_id, service_id = str(ObjectId()), str(ObjectId())
    for project in demo.catalog():
        for spec in project.services:
            points, logs = _generate(42, now, project, spec)
            body = [
                {
                    **entry,
                    "project_id": project_id,
                    "service_id": service_id,
                    "timestamp": format_time(entry["timestamp"]),
                }
                for entry in logs
            ]
            loaded = LogBatchSchema(many=True).load(body)
            assert [e["message"] for e in loaded] == [e["message"] for e in logs]
            points_body = [{**p, "time": format_time(p["time"])} for p in points]
            assert len(PointsBodySchema().load(points_body)) == len(points)


def test_logs_and_points_are_written_in_batches_no_larger_than_the_api_caps(monkeypatch):
    batches = {"logs": [], "points": []}
    monkeypatch.setattr(
        demo.logs, "create_logs", lambda entries: batches["logs"].append(len(entries))
    )
    monkeypatch.setattr(
        demo.metrics,
        "append_cpu_points",
        lambda metric_id, points: batches["points"].append(len(points)),
    )

    assert demo.write_logs([{}] * (2 * BATCH_MAX + 1)) == 2 * BATCH_MAX + 1
    assert demo.write_points(ObjectId(), [{}] * (MAX_POINTS_PER_WRITE + 5)) == (
        MAX_POINTS_PER_WRITE + 5
    )

    assert batches == {"logs": [BATCH_MAX, BATCH_MAX, 1], "points": [MAX_POINTS_PER_WRITE, 5]}


def test_poisson_has_the_requested_mean():
    rng = random.Random(1)
    for lam in (0.5, 4.0, 50.0):
        draws = [demo.poisson(rng, lam) for _ in range(4000)]
        assert abs(sum(draws) / len(draws) - lam) < 0.1 * lam + 0.05


# --- admins -------------------------------------------------------------------------------


def test_seed_demo_creates_the_demo_admin_once_and_keeps_its_password(app, tmp_path):
    from pathlib import Path

    from polymicro.auth import service as auth
    from polymicro.auth.models import User

    first = app.test_cli_runner().invoke(args=["seed-demo", "--days", "1", "--if-empty"])
    assert first.exit_code == 0, first.output
    assert "Created the demo admin" in first.output
    username, password = (Path(app.instance_path) / "demo-admin.txt").read_text().split()
    with app.app_context():
        assert auth.authenticate(username, password).role == "admin"
    second = app.test_cli_runner().invoke(args=["seed-demo", "--days", "1", "--if-empty"])
    assert "Created the demo admin" not in second.output
    with app.app_context():
        assert User.objects.count() == 1


def test_create_admin_creates_then_resets(app):
    from polymicro.auth import service as auth

    runner = app.test_cli_runner()
    created = runner.invoke(args=["create-admin", "--username", "root", "--password", "s3cret-pw"])
    assert created.exit_code == 0, created.output
    assert "Created admin 'root'" in created.output
    reset = runner.invoke(args=["create-admin", "--username", "root"])
    assert "Updated admin 'root'" in reset.output
    password = reset.output.split("Password: ")[1].split()[0]
    with app.app_context():
        assert auth.authenticate("root", password).role == "admin"


def test_create_admin_refuses_a_short_password(app):
    result = app.test_cli_runner().invoke(args=["create-admin", "--password", "short"])
    assert result.exit_code == 2
    assert "at least 8 characters" in result.output


@pytest.mark.parametrize("status", ["Running", "Error"])
def test_lifecycle_logs_near_now_are_never_in_the_future(status):
    """A deployment a moment ago (start-up lines follow it by seconds) or a crash just
    before now (its restart follows by 5-20 s) must not write logs dated after now."""
    now = datetime(2026, 11, 20, 9, 41, 7, 123000)
    project = demo.catalog()[0]
    spec = project.services[0]
    timeline = demo.Timeline(
        deployed_at=now - timedelta(milliseconds=500),
        failing_since=(now - timedelta(seconds=1)) if status == "Error" else None,
    )
    maker = demo.LogMaker(None, None, project, spec, demo.service_rng(1, project, spec, "logs"))
    logs = demo.generate_logs(maker, timeline, now - timedelta(days=1), now)
    assert logs, "the day before the deployment still has logs"
    assert max(entry["timestamp"] for entry in logs) <= now
    if status == "Error":
        assert any(
            "crash" in entry["message"].lower() or entry["severity"] == "critical" for entry in logs
        )
