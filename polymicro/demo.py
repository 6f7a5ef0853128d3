"""Demo data: a few projects with their services, days of logs and CPU metrics.

Used by ``flask --app polymicro seed-demo`` (see ``cli.py``); plain functions so tests
can call them directly.

What the demo shows is data, in ``polymicro/data/demo.json`` (shipped with the package);
how it is generated (the shape of the curves, the daily rhythm, the volumes over time)
is code, here.  The sections of the file:

- ``projects``: the catalog.  A service lists what differs from ``service_defaults``:
  ``domain`` (selects extra message templates), ``paths`` (request paths, ``{id}`` is
  filled in), ``deps`` (what it calls), ``log_rate`` (logs per hour at the daily peak),
  ``cpu_base`` (typical load in % at the peak), ``mem_base`` (memory in % after a
  restart), ``mem_growth`` (memory in % gained per hour since the restart: a leak) and
  ``threads``.
- ``timelines``: by status, when the events it implies happened.  Each step sets one
  event (``deployed_at``, ``stopped_at``, ``failing_since``, ``silent_since``) to a time
  drawn uniformly from the ``ago`` range (one unit of ``timedelta``) before now, or
  before the event named by ``before``.
- ``severity_weights``: the share of each severity (debug, info, warn, error, critical)
  by the service's health; ``failing_weights`` while it crash-loops.
- ``templates``: ``[message, logger]`` pairs by severity: ``common`` to every service,
  ``http`` (services of ``http_domains``) or ``worker``, and per domain.
- ``events``: the messages of a deployment, a stop, a crash loop and a CPU spike (a
  point at or above ``high_load``).
- ``attributes``: the values of a message that also become attributes (and their names);
  ``test_cases``: the tests some entries name in ``test_id``.
- ``fillers``: how each ``{placeholder}`` of a template is drawn: a list (one of its
  items), ``{"int": [a, b]}``, ``{"uniform": [a, b], "digits": n}``,
  ``{"lognormal": [mu, sigma], "at_least": n}``, ``{"hex": bits}``, ``{"field": name}``
  (the service's), ``{"one_of": field, "fill": {name: rule}}`` (an item of the
  service's list, its ``{name}`` drawn) or ``{"format": text, "parts": [rule, …]}``.

Writes go through the domain service modules, as the API's do (their rules apply):
projects and services one at a time, CPU points in arrays of at most
``MAX_POINTS_PER_WRITE`` and logs in batches of at most ``BATCH_MAX`` (each one stored
completely or not at all).  Each write bumps the cache namespaces it changes, so cached
reads see the new data without clearing any cache.

- Idempotent: demo projects are found by name and reused, a service's logs and points
  are written only when it has none, its metrics entry only when missing.
- Reproducible: every random choice comes from a ``random.Random`` seeded with ``seed``
  and the project and service names, so one service's data does not depend on which
  other services already existed: the same seed and ``now`` give the same data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

from bson import ObjectId

from polymicro.common.models import View, as_view, name_key
from polymicro.common.timeutil import truncate_ms, utcnow
from polymicro.logs import service as logs
from polymicro.logs.models import SEVERITIES, LogEntry
from polymicro.logs.schemas import BATCH_MAX
from polymicro.metrics import service as metrics
from polymicro.metrics.models import MAX_POINTS_PER_WRITE, CpuMetric, CpuPoint
from polymicro.projects import service as projects
from polymicro.projects.models import Project
from polymicro.services import service as services
from polymicro.services.models import Service

DEFAULT_DAYS = 3
DEFAULT_SEED = 42
POINT_INTERVAL = timedelta(minutes=15)
POINTS_PER_DAY = int(timedelta(days=1) / POINT_INTERVAL)


# --- the data file ---------------------------------------------------------------------


@cache
def data() -> dict[str, Any]:
    """The contents of ``data/demo.json`` (read once, on first use)."""
    text = resources.files("polymicro").joinpath("data", "demo.json").read_text("utf-8")
    return json.loads(text)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    domain: str
    description: str
    port: int
    version: str
    status: str
    health: str
    tags: tuple[str, ...]
    paths: tuple[str, ...]
    deps: tuple[str, ...]
    log_rate: float
    cpu_base: float
    mem_base: float
    mem_growth: float
    threads: int


@dataclass(frozen=True)
class ProjectSpec:
    name: str
    slug: str
    owner: str
    description: str
    tags: tuple[str, ...]
    services: tuple[ServiceSpec, ...]


def _frozen(values: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


@cache
def catalog() -> tuple[ProjectSpec, ...]:
    """The demo projects and their services, as the data file lists them."""
    defaults = data()["service_defaults"]
    return tuple(
        ProjectSpec(
            **_frozen({k: v for k, v in project.items() if k != "services"}),
            services=tuple(
                ServiceSpec(**_frozen({**defaults, **spec})) for spec in project["services"]
            ),
        )
        for project in data()["projects"]
    )


# --- a service's timeline ------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """When the things a service's status implies happened (all naive UTC, ms)."""

    deployed_at: datetime  # the last deployment (the logs show its start-up)
    stopped_at: datetime | None = None  # Stopped: no logs, zero load after this
    silent_since: datetime | None = None  # Unknown: the logs stop here (no heartbeat)
    failing_since: datetime | None = None  # Error: crash-looping since then

    @property
    def logs_until(self) -> datetime | None:
        return self.stopped_at or self.silent_since


def service_rng(seed: int, project: ProjectSpec, spec: ServiceSpec, part: str) -> random.Random:
    """An independent, reproducible generator for one part of one service's data."""
    return random.Random(f"{seed}/{project.name}/{spec.name}/{part}")


def plan_timeline(rng: random.Random, status: str, now: datetime) -> Timeline:
    """The events of ``status`` (``timelines`` in the data file; Running's otherwise)."""
    timelines = data()["timelines"]
    events: dict[str, datetime] = {}
    for step in timelines.get(status, timelines["Running"]):
        ((unit, (low, high)),) = step["ago"].items()
        base = events[step["before"]] if "before" in step else now
        events[step["set"]] = truncate_ms(base - timedelta(**{unit: rng.uniform(low, high)}))
    return Timeline(**events)


def format_uptime(delta: timedelta) -> str:
    total = max(0, int(delta.total_seconds()))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


def daily_rhythm(t: datetime) -> float:
    """0 at 02:00 UTC, 1 at 14:00 UTC: a sine over 24 hours."""
    hours = t.hour + t.minute / 60 + t.second / 3600
    return 0.5 + 0.5 * math.sin(2 * math.pi * (hours - 8) / 24)


# --- CPU points ----------------------------------------------------------------------


def point_times(now: datetime, days: int) -> list[datetime]:
    """``days × 96`` quarter hours, oldest first, the last one at or before ``now``."""
    last = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
    count = days * POINTS_PER_DAY
    return [last - (count - 1 - i) * POINT_INTERVAL for i in range(count)]


def generate_points(
    spec: ServiceSpec, timeline: Timeline, rng: random.Random, times: list[datetime]
) -> list[dict]:
    """One point per time: daily rhythm, noise, occasional spikes, a leak where the spec
    has one; zero after a stop, erratic while crash-looping."""
    points = []
    spike_left, spike_extra = 0, 0.0
    first = times[0] if times else None
    for t in times:
        if timeline.stopped_at and t >= timeline.stopped_at:
            load, memory, threads = 0.0, 0.0, 0
        elif timeline.failing_since and t >= timeline.failing_since:
            # restarts: sometimes caught while booting (hot), sometimes just after a crash
            load = rng.uniform(75, 99) if rng.random() < 0.5 else rng.uniform(0, 8)
            memory = rng.uniform(88, 99.5)
            threads = rng.randint(0, spec.threads)
        else:
            rhythm = daily_rhythm(t)
            load = spec.cpu_base * (0.35 + 0.85 * rhythm) + rng.gauss(0, spec.cpu_base * 0.08)
            if spike_left:
                spike_left -= 1
                load += spike_extra
            elif rng.random() < 0.012:
                spike_left, spike_extra = rng.randint(0, 3), rng.uniform(35, 65)
                load += spike_extra
            restart = timeline.deployed_at if t >= timeline.deployed_at else first
            hours_up = (t - restart).total_seconds() / 3600
            memory = spec.mem_base + spec.mem_growth * hours_up + 4 * rhythm + rng.gauss(0, 1.2)
            threads = spec.threads + round(load / 8) + rng.randint(-2, 2)
        points.append(
            {
                "time": t,
                "load": round(min(max(load, 0.0), 100.0), 2),
                "memory": round(min(max(memory, 0.0), 100.0), 1),
                "threads": max(0, int(threads)),
            }
        )
    return points


# --- logs ----------------------------------------------------------------------------


def draw(rule: Any, rng: random.Random, spec: ServiceSpec) -> Any:
    """One value of a filler rule (the forms are listed in the module docstring)."""
    if isinstance(rule, list):
        return rng.choice(rule)
    if "int" in rule:
        return rng.randint(*rule["int"])
    if "uniform" in rule:
        value = rng.uniform(*rule["uniform"])
        return round(value, rule["digits"]) if "digits" in rule else value
    if "lognormal" in rule:
        return max(rule.get("at_least", 0), int(rng.lognormvariate(*rule["lognormal"])))
    if "hex" in rule:
        return f"{rng.getrandbits(rule['hex']):0{rule['hex'] // 4}x}"
    if "field" in rule:
        return getattr(spec, rule["field"])
    if "one_of" in rule:
        text = rng.choice(getattr(spec, rule["one_of"]))
        for name, part in rule.get("fill", {}).items():
            text = text.replace(f"{{{name}}}", str(draw(part, rng, spec)))
        return text
    if "format" in rule:
        return rule["format"].format(*(draw(part, rng, spec) for part in rule["parts"]))
    raise ValueError(f"unknown filler rule {rule!r}")


class _Fill(dict):
    """The values of a message: each placeholder drawn on first use."""

    def __init__(self, rng: random.Random, spec: ServiceSpec):
        super().__init__()
        self.rng, self.spec = rng, spec

    def __missing__(self, key: str) -> object:
        value = draw(data()["fillers"][key], self.rng, self.spec)
        self[key] = value
        return value


def templates_for(spec: ServiceSpec) -> dict[str, list[list[str]]]:
    """All ``[message, logger]`` templates a service can log, by severity."""
    templates = data()["templates"]
    kind = "http" if spec.domain in templates["http_domains"] else "worker"
    parts = [templates["common"], templates["domains"].get(spec.domain, {}), templates[kind]]
    merged: dict[str, list[list[str]]] = {severity: [] for severity in SEVERITIES}
    for part in parts:
        for severity, pairs in part.items():
            merged[severity].extend(pairs)
    return merged


def poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


@dataclass
class LogMaker:
    """Builds the log entries of one service (as ``create_logs`` takes them)."""

    project_id: ObjectId | None
    service_id: ObjectId | None
    project: ProjectSpec
    spec: ServiceSpec
    rng: random.Random
    templates: dict[str, list[list[str]]] = field(init=False)
    tests: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.templates = templates_for(self.spec)
        module = self.spec.name.replace("-", "_")
        self.tests = tuple(f"tests/test_{module}.py::test_{case}" for case in data()["test_cases"])

    def make(
        self, when: datetime, severity: str, text: str, logger: str, *, in_request: bool = False
    ) -> dict:
        """One entry; ``in_request``: logged while handling work (a request, a job), so it
        may carry request/trace ids, the function that logged it and a test id."""
        rng, spec = self.rng, self.spec
        fill = _Fill(rng, spec)
        message = text.format_map(fill)
        attributes: dict[str, object] = {"host": f"{self.project.slug}-{spec.name}-1"}
        if in_request and (logger.startswith("http") or rng.random() < 0.6):
            attributes["request_id"] = f"{rng.getrandbits(64):016x}"
            attributes["trace_id"] = f"{rng.getrandbits(128):032x}"
        for key, name in data()["attributes"].items():
            if key in fill:
                attributes[name] = fill[key]
        source = f"{spec.name}.{logger}" if rng.random() < 0.7 else None
        func_id = test_id = None
        if in_request and rng.random() < 0.3:
            func_id = f"{spec.name.replace('-', '_')}.{logger.split('.')[0]}.handle"
        if in_request and rng.random() < 0.05:
            test_id = rng.choice(self.tests)
        return {
            "project_id": self.project_id,
            "service_id": self.service_id,
            "severity": severity,
            "message": message,
            "timestamp": truncate_ms(when),
            "source": source,
            "test_id": test_id,
            "func_id": func_id,
            "attributes": attributes,
        }

    def event(self, when: datetime, severity: str, name: str, **values: object) -> dict:
        """The entry of a lifecycle event (``events`` in the data file)."""
        text, logger = data()["events"][name]
        return self.make(when, severity, text.format(**values), logger)

    def random_entry(self, when: datetime, weights: list[float]) -> dict:
        severity = self.rng.choices(SEVERITIES, weights=weights)[0]
        choices = self.templates[severity] or self.templates["warn"]
        text, logger = self.rng.choice(choices)
        return self.make(when, severity, text, logger, in_request=True)


def generate_logs(
    maker: LogMaker,
    timeline: Timeline,
    start: datetime,
    end: datetime,
    hot_points: Iterable[dict] = (),
) -> list[dict]:
    """Logs of one service between ``start`` and ``end``, oldest first.

    The volume follows the daily rhythm; start-up messages mark the last deployment, a
    shutdown the stop, restarts and crashes a crash loop, and warnings the CPU spikes.
    """
    rng, spec = maker.rng, maker.spec
    until = min(end, timeline.logs_until or end)
    weights_by_health = data()["severity_weights"]
    weights = weights_by_health.get(spec.health, weights_by_health["Unknown"])
    slot = POINT_INTERVAL
    entries: list[dict] = []

    t = start
    while t < until:
        slot_end = min(t + slot, until)
        failing = timeline.failing_since is not None and t >= timeline.failing_since
        rate = spec.log_rate * (0.25 + 0.75 * daily_rhythm(t)) * (3 if failing else 1)
        count = poisson(rng, rate * ((slot_end - t) / timedelta(hours=1)))
        for _ in range(count):
            when = t + (slot_end - t) * rng.random()
            entries.append(
                maker.random_entry(when, data()["failing_weights"] if failing else weights)
            )
        t = slot_end

    # a lifecycle message lands a few seconds after its anchor (start-up lines after the
    # deployment, a restart after its crash): near ``now`` that would be the future
    entries.extend(
        entry
        for entry in _lifecycle_logs(maker, timeline, start, until)
        if start <= entry["timestamp"] <= until
    )
    for point in hot_points:
        when = point["time"] + timedelta(seconds=rng.uniform(1, 60))
        if start <= when < until:
            threshold = data()["high_load"]
            entries.append(
                maker.event(when, "warn", "high_cpu", load=point["load"], threshold=threshold)
            )
    entries.sort(key=lambda entry: entry["timestamp"])
    return entries


def _lifecycle_logs(
    maker: LogMaker, timeline: Timeline, start: datetime, until: datetime
) -> Iterator[dict]:
    rng, spec = maker.rng, maker.spec
    events = data()["events"]

    def at(base: datetime, seconds: float) -> datetime:
        return base + timedelta(seconds=seconds)

    deployed = timeline.deployed_at
    if start <= deployed < until:
        yield maker.event(at(deployed, -2), "info", "deploying")
        values = {"name": spec.name, "version": spec.version, "port": spec.port}
        values["first_dep"] = spec.deps[0]
        for i, (text, logger) in enumerate(events["started"]):
            when = at(deployed, 0.4 * i + rng.uniform(0, 0.3))
            yield maker.make(when, "info", text.format(**values), logger)
    if timeline.stopped_at and start <= timeline.stopped_at <= until:
        stop = timeline.stopped_at
        yield maker.event(at(stop, -3), "info", "stopping")
        yield maker.event(at(stop, -1), "info", "stopped")
    if timeline.failing_since:
        t = max(timeline.failing_since, start)
        attempt = 0
        while t < until:
            attempt += 1
            rss = rng.randint(*events["crash_rss_mb"])
            yield maker.event(t, "critical", "crash", rss=rss)
            restarted = at(t, rng.uniform(5, 20))
            yield maker.event(restarted, "warn", "restart", attempt=attempt)
            t = at(t, rng.uniform(12, 25) * 60)


# --- writing (through the service layer) ---------------------------------------------


def database_has_projects() -> bool:
    return Project.objects.only("id").first() is not None


def ensure_project(spec: ProjectSpec) -> tuple[ObjectId, bool]:
    """The id of the demo project with this name, created when missing (``True``)."""
    found = Project.objects(name_key=name_key(spec.name)).scalar("id").first()
    if found is not None:
        return found, False
    body = {
        "name": spec.name,
        "owner": spec.owner,
        "description": spec.description,
        "tags": list(spec.tags),
        "path": f"/srv/projects/{spec.slug}",
        "tests_dir_path": "tests",
    }
    return projects.create_project(body)["id"], True


def ensure_service(
    project_id: ObjectId, spec: ServiceSpec, timeline: Timeline, now: datetime, slug: str
) -> tuple[View, bool]:
    found = Service.objects(project_id=project_id, name_key=name_key(spec.name)).first()
    if found is not None:
        return as_view(found), False
    running = spec.status in ("Running", "Starting")
    container = f"{slug}-{spec.name}-1"
    body = {
        "project_id": project_id,
        "name": spec.name,
        "description": spec.description,
        "port": spec.port,
        "url": f"http://{container}:{spec.port}",
        "status": spec.status,
        "health": spec.health,
        "version": spec.version,
        "uptime": format_uptime(now - timeline.deployed_at) if running else None,
        "last_deployment": timeline.deployed_at,
        "container_name": container,
        "tags": list(spec.tags),
    }
    return services.create_service(body), True


def ensure_metric(svc: View) -> tuple[ObjectId, bool]:
    """The id of the service's CPU metrics entry, created when missing (``True``)."""
    found = CpuMetric.objects(service_id=svc.id).scalar("id").first()
    if found is not None:
        return found, False
    entry = metrics.create_metric({"project_id": svc.project_id, "service_name": svc.name})
    return entry["id"], True


def _batches(items: list, size: int) -> Iterator[list]:
    return (items[i : i + size] for i in range(0, len(items), size))


def write_points(metric_id: ObjectId, points: list[dict]) -> int:
    """Append points in arrays of at most ``MAX_POINTS_PER_WRITE`` (each all-or-nothing)."""
    for batch in _batches(points, MAX_POINTS_PER_WRITE):
        metrics.append_cpu_points(metric_id, batch)
    return len(points)


def write_logs(entries: list[dict]) -> int:
    """Store log entries in batches of at most ``BATCH_MAX`` (each one all-or-nothing).

    ``seed_demo`` passes the logs of whole services, as many as fit in one batch: a
    service's logs (up to ``BATCH_MAX``) are stored together or not at all, so an
    interrupted seeding leaves none of them and the next run writes them all.  One batch
    for several services rather than one per service: on SecantusDB each batch is a
    transaction followed by an fsync (about 20 ms).
    """
    for batch in _batches(entries, BATCH_MAX):
        logs.create_logs(batch)
    return len(entries)


@dataclass
class ServiceWork:
    """One service still to fill (what the progress bar counts)."""

    project: ProjectSpec
    spec: ServiceSpec
    service: View
    timeline: Timeline

    @property
    def name(self) -> str:
        return f"{self.project.slug}/{self.spec.name}"


ProgressFactory = Callable[[list[ServiceWork]], AbstractContextManager[Iterable[ServiceWork]]]


def seed_demo(
    days: int = DEFAULT_DAYS,
    seed: int = DEFAULT_SEED,
    *,
    now: datetime | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, int]:
    """Create whatever of the demo data is missing; return the counts created.

    ``progress`` wraps the list of services to fill (e.g. ``click.progressbar``).
    Database errors (``pymongo.errors.ConnectionFailure``) propagate to the caller.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    now = truncate_ms(now or utcnow())
    start = now - timedelta(days=days)
    summary = dict.fromkeys(("projects", "services", "metrics", "points", "logs"), 0)
    summary.update(reused_projects=0, reused_services=0)

    work = []
    for project_spec in catalog():
        project_id, created = ensure_project(project_spec)
        summary["projects" if created else "reused_projects"] += 1
        for spec in project_spec.services:
            rng = service_rng(seed, project_spec, spec, "timeline")
            timeline = plan_timeline(rng, spec.status, now)
            svc, created = ensure_service(project_id, spec, timeline, now, project_spec.slug)
            summary["services" if created else "reused_services"] += 1
            if svc.last_deployment and svc.last_deployment != timeline.deployed_at:
                # a service that existed before: its logs show its own deployment
                timeline = dataclasses.replace(timeline, deployed_at=svc.last_deployment)
            work.append(ServiceWork(project_spec, spec, svc, timeline))

    times = point_times(now, days)
    pending: list[dict] = []  # the logs of whole services, written together (see write_logs)
    wrap = progress or nullcontext
    with wrap(work) as items:
        for item in items:
            created, entries = _fill_service(item, seed, times, start, now)
            if len(pending) + len(entries) > BATCH_MAX:
                write_logs(pending)
                pending = []
            pending += entries
            for key, count in created.items():
                summary[key] += count
        write_logs(pending)
    return summary


def _fill_service(
    item: ServiceWork, seed: int, times: list[datetime], start: datetime, now: datetime
) -> tuple[dict[str, int], list[dict]]:
    """Create the service's metrics entry and points when missing; return the counts
    created and the service's logs to write (none when it has logs already)."""
    svc = item.service
    metric_id, metric_created = ensure_metric(svc)
    points_rng = service_rng(seed, item.project, item.spec, "points")
    points = generate_points(item.spec, item.timeline, points_rng, times)
    created = {"metrics": int(metric_created), "points": 0, "logs": 0}
    if CpuPoint.objects(metric_id=metric_id).only("id").first() is None:
        created["points"] = write_points(metric_id, points)
    if LogEntry.objects(service_id=svc.id).only("id").first() is not None:
        return created, []
    logs_rng = service_rng(seed, item.project, item.spec, "logs")
    maker = LogMaker(svc.project_id, svc.id, item.project, item.spec, logs_rng)
    failing = item.timeline.failing_since
    hot = [
        p
        for p in points
        if p["load"] >= data()["high_load"] and not (failing and p["time"] >= failing)
    ]
    entries = generate_logs(maker, item.timeline, start, now, hot)
    created["logs"] = len(entries)
    return created, entries


def describe(summary: dict[str, int]) -> str:
    """The one-line summary the command prints."""
    created = (
        f"{summary['projects']} projects, {summary['services']} services, "
        f"{summary['metrics']} CPU metric entries, {summary['points']:,} CPU points and "
        f"{summary['logs']:,} logs"
    )
    if not any(summary[key] for key in ("projects", "services", "metrics", "points", "logs")):
        return "Demo data already present: nothing created."
    reused = summary["reused_projects"] + summary["reused_services"]
    suffix = (
        f" (reused {summary['reused_projects']} projects, {summary['reused_services']} services)"
        if reused
        else ""
    )
    return f"Created {created}{suffix}."
