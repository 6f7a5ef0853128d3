"""What the benchmark scripts share (bench/run.py, mixed.py, ingest.py, ingest_curve.py,
post_cost.py, soak.py): the servers of one run, credentials, the seed data, and a few
figures.  Each script is run as ``python bench/<name>.py``, so this directory is on its
``sys.path`` and ``import common`` needs no tricks; the servers themselves are started by
:mod:`polymicro_dev`.

- :func:`start_backends`: a temporary directory (removed at the end unless kept), a Redis
  database (private unless ``--redis-url``) and a fresh SecantusDB; :func:`start_app`:
  polymicro under gunicorn on them, authentication off (as ``make bench``) or on
  (:func:`auth_env`, then :func:`tokens` for users and :func:`tenant` for a project API
  key).
- :class:`Plan`, :class:`DataMaker`, :func:`seed`: the data of ``make bench``, seeded
  through the API; :func:`stored_log`: an entry as the app stores it (for raw inserts).
- :func:`copy_log_indexes`: a scratch collection with every index of ``logs``.
- :func:`percentile`, :func:`commit`, :func:`machine`: figures for the reports.
"""

from __future__ import annotations

import os
import platform
import random
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pymongo
from bson import ObjectId
from load import run_parallel

from polymicro_dev import (
    ROOT,
    DevError,
    GunicornSettings,
    HttpClient,
    Processes,
    Server,
    app_env,
    encode,
    ensure_redis,
    listens_with_reuse_port,
    start_gunicorn,
    start_secantus,
)

# --- the servers of one run ---------------------------------------------------------------


@dataclass
class Backends:
    """The temporary directory, the cache and the database of one run."""

    workdir: Path
    redis_url: str
    db: Server

    @property
    def mongo_uri(self) -> str:
        return self.db.uri


def workspace(procs: Processes, prefix: str, keep: bool = False) -> Path:
    """A temporary directory for the run's database and logs, removed when ``procs``
    stops (kept, and said so, with ``keep``)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"polymicro-{prefix}-"))
    if keep:
        procs.on_stop(lambda: print(f"{prefix}: kept {workdir} (database in db/, logs beside)"))
    else:
        procs.on_stop(lambda: shutil.rmtree(workdir, ignore_errors=True))
    return workdir


def start_backends(
    procs: Processes, prefix: str, redis_url: str | None = None, keep: bool = False
) -> Backends:
    """:func:`workspace`, then Redis (a private redis-server, or ``redis_url`` flushed
    before and after) and a fresh SecantusDB in it."""
    workdir = workspace(procs, prefix, keep)
    redis_url = ensure_redis(procs, workdir, redis_url)
    db = start_secantus(procs, workdir / "db", workdir)
    return Backends(workdir, redis_url, db)


# Signs the tokens of the runs with authentication on (a throw-away secret, 32+ bytes).
AUTH_SECRET = "bench-secret-" + "x" * 40

# The benchmarks serve polymicro with gunicorn.conf.py's listening default (one shared
# socket, the balancing worker class) unless POLYMICRO_GUNICORN_REUSE_PORT is in the
# environment; the reports say which it was.  Until 2026-11-30 they forced a socket per
# worker, as plain gthread on a shared socket could put every connection of the load on one
# worker (the logs of a project at 15% of the ceiling, a third of the run with a socket
# per worker).
BENCH_APP_ENV: dict[str, str] = {}


def bench_reuse_port(overrides: dict) -> bool:
    """Whether an app started with ``overrides`` (over :data:`BENCH_APP_ENV` and this
    environment, as :func:`start_app` and bench/run.py start it) listens with a socket
    per worker."""
    return listens_with_reuse_port({**os.environ, **BENCH_APP_ENV, **overrides})


def sockets(reuse_port: bool | None) -> str:
    """The listening mode as the reports print it."""
    return "a socket per worker" if reuse_port else "one shared socket"


def auth_env(workdir: Path) -> dict[str, str]:
    """App settings for a run with authentication on (the rate limit stays off)."""
    return {
        "POLYMICRO_AUTH_ENABLED": "true",
        "POLYMICRO_SECRET_KEY": AUTH_SECRET,
        "POLYMICRO_INSTANCE_PATH": str(workdir / "instance"),
    }


def start_app(
    procs: Processes,
    backends: Backends,
    settings: GunicornSettings | None = None,
    auth: bool = False,
    env: dict | None = None,
    name: str = "polymicro",
) -> Server:
    """polymicro under gunicorn on ``backends`` (polymicro_dev.TOOL_APP_ENV and
    :data:`BENCH_APP_ENV`, with :func:`auth_env` when ``auth``, then ``env``); returns
    once it answers."""
    overrides = {**BENCH_APP_ENV, **(auth_env(backends.workdir) if auth else {}), **(env or {})}
    full_env = app_env(backends.mongo_uri, backends.redis_url, **overrides)
    return start_gunicorn(procs, full_env, backends.workdir, settings, name=name)


def parse_app_env(items: list[str]) -> dict[str, str]:
    """``--app-env KEY=VALUE`` options as a dict."""
    if any("=" not in item for item in items):
        raise DevError("--app-env takes KEY=VALUE")
    return dict(item.split("=", 1) for item in items)


# --- credentials ----------------------------------------------------------------------------


def tokens(roles: tuple[str, ...] = ("admin", "viewer")) -> dict[str, str]:
    """An access token per role, signed with :data:`AUTH_SECRET` (claims only, as the
    tests make them; no user is stored)."""
    from flask_jwt_extended import create_access_token

    from polymicro import create_app

    app = create_app(
        {
            "SECRET_KEY": AUTH_SECRET,
            "ACCESS_TOKEN_MINUTES": 24 * 60,
            "INSTANCE_PATH": tempfile.gettempdir(),
        }
    )
    with app.app_context():
        return {
            role: create_access_token(
                identity=str(ObjectId()),
                additional_claims={"role": role, "username": f"bench-{role}"},
            )
            for role in roles
        }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def tenant(mongo_uri: str, redis_url: str, name: str) -> tuple[str, str, str]:
    """A project, one service ``checkout`` and a project API key, made through the
    service layer in this process: (project id, service id, key)."""
    os.environ.update(
        POLYMICRO_MONGODB_URI=mongo_uri,
        POLYMICRO_REDIS_URL=redis_url,
        POLYMICRO_SECRET_KEY=AUTH_SECRET,  # else one is generated under ./instance
    )
    from polymicro import create_app
    from polymicro.auth import service as auth
    from polymicro.extensions import close_db
    from polymicro.projects import service as projects
    from polymicro.services import service as services

    app = create_app()
    with app.app_context():
        project = projects.create_project({"name": name})
        svc = services.create_service({"project_id": project["id"], "name": "checkout"})
        key = auth.create_api_key(project["id"], "bench", None)["key"]
    close_db()
    return str(project["id"]), str(svc["id"]), key


# --- seed data ------------------------------------------------------------------------------

SEVERITIES = ("debug", "info", "warn", "error", "critical")
SEVERITY_WEIGHTS = (15, 55, 15, 12, 3)  # 12% errors: a project has a few pages of them
LEVEL = {name: rank for rank, name in enumerate(SEVERITIES)}
SEED_WINDOW = timedelta(days=2)


@dataclass(frozen=True)
class Plan:
    """Sizes of the seed data (and of bench/run.py's ingest runs)."""

    projects: int = 5
    services_per_project: int = 10
    logs_per_project: int = 2_000
    points_per_service: int = 96
    single_posts: int = 2_000
    log_batches: int = 20
    batch_size: int = 1_000
    point_posts: int = 10
    points_per_post: int = 10_000


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


@dataclass
class Seeded:
    project_ids: list[str]
    service_ids: dict[str, list[str]]  # by project id
    metric_ids: list[str]
    seconds: float


class DataMaker:
    """Deterministic, plausible request bodies."""

    VERBS = ("GET", "POST", "PUT", "DELETE")
    PATHS = ("/orders", "/users/{n}", "/cart", "/search?q=item{n}", "/health", "/pay/{n}")

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = datetime.now(UTC).replace(tzinfo=None)

    def project(self, index: int) -> dict:
        return {
            "name": f"bench-project-{index}",
            "description": f"Benchmark project {index}",
            "owner": f"team-{index % 3}",
            "tags": ["bench", f"tier-{index % 3}"],
        }

    def service(self, project_id: str, index: int) -> dict:
        port = 8000 + index
        return {
            "project_id": project_id,
            "name": f"svc-{index}",
            "description": f"Benchmark service {index}",
            "port": port,
            "url": f"http://svc-{index}.internal:{port}",
            "status": "Running",
            "health": self.rng.choice(("Healthy", "Healthy", "Warning")),
            "version": f"1.{index}.0",
            "uptime": f"{self.rng.randint(1, 30)}d",
            "last_deployment": iso(self.now - timedelta(days=self.rng.randint(1, 30))),
            "tags": ["bench"],
        }

    def log(self, project_id: str, service_ids: list[str], live: bool = False) -> dict:
        """A log entry: stamped at random over the seed's window (the last two days), or,
        ``live``, as a running service's shipper sends it: the time it is sent, less up
        to a second (a shipper's batching)."""
        rng = self.rng
        severity = rng.choices(SEVERITIES, SEVERITY_WEIGHTS)[0]
        path = rng.choice(self.PATHS).format(n=rng.randint(1, 9999))
        request_id = f"{rng.getrandbits(64):016x}"
        if live:
            when = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=rng.uniform(0, 1))
        else:
            when = self.now - timedelta(seconds=rng.uniform(0, SEED_WINDOW.total_seconds()))
        return {
            "project_id": project_id,
            "service_id": rng.choice(service_ids),
            "severity": severity,
            "message": f"{rng.choice(self.VERBS)} {path} answered in {rng.randint(1, 900)} ms "
            f"(request {request_id})",
            "timestamp": iso(when),
            "source": "bench",
            "attributes": {"request_id": request_id, "attempt": rng.randint(1, 3)},
        }

    def points(self, count: int, start: datetime, step: timedelta) -> list[dict]:
        rng = self.rng
        return [
            {
                "time": iso(start + i * step),
                "load": round(rng.uniform(0, 180), 2),
                "memory": round(rng.uniform(10, 90), 2),
                "threads": rng.randint(4, 64),
            }
            for i in range(count)
        ]


def stored_log(entry: dict) -> dict:
    """A log entry as the app stores it (mongoengine's field order, ids, level, naive UTC)."""
    return {
        "project_id": ObjectId(entry["project_id"]),
        "service_id": ObjectId(entry["service_id"]),
        "severity": entry["severity"],
        "level": LEVEL[entry["severity"]],
        "message": entry["message"],
        "timestamp": datetime.strptime(entry["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ"),
        "source": entry["source"],
        "attributes": entry["attributes"],
    }


def seed(
    port: int, plan: Plan, maker: DataMaker, batch_clients: int, headers: dict | None = None
) -> Seeded:
    """The data of ``make bench``, through the API (``headers``: credentials when
    authentication is on)."""
    print(
        f"bench: seeding: {plan.projects} projects x {plan.services_per_project} services, "
        f"{plan.logs_per_project} logs per project, {plan.points_per_service} CPU points "
        "per service",
        flush=True,
    )
    started = time.perf_counter()
    client = HttpClient(port, timeout=300, headers=headers)
    project_ids, service_ids, metric_ids = [], {}, []
    for p in range(plan.projects):
        project_id = client.call("POST", "/api/projects", maker.project(p), expect=201)["id"]
        project_ids.append(project_id)
        service_ids[project_id] = [
            client.call("POST", "/api/services", maker.service(project_id, s), expect=201)["id"]
            for s in range(plan.services_per_project)
        ]
    # Logs: whole batches of at most batch_size, spread over every project's services.
    jobs = []
    for project_id in project_ids:
        entries = [
            maker.log(project_id, service_ids[project_id]) for _ in range(plan.logs_per_project)
        ]
        for i in range(0, len(entries), plan.batch_size):
            jobs.append(("POST", "/api/logs/batch", encode(entries[i : i + plan.batch_size])))
    run_parallel(port, batch_clients, jobs, expect=201, headers=headers)
    # CPU: one entry per service, then its points (every 30 min over two days for 96).
    step = SEED_WINDOW / max(plan.points_per_service, 1)
    for p, project_id in enumerate(project_ids):
        for s in range(plan.services_per_project):
            body = {"project_id": project_id, "service_name": f"svc-{s}"}
            metric_id = client.call("POST", "/api/metrics/cpu", body, expect=201)["id"]
            metric_ids.append(metric_id)
            points = maker.points(plan.points_per_service, maker.now - SEED_WINDOW, step)
            inserted = client.call("POST", f"/api/metrics/cpu/{metric_id}/data", points, 201)
            if inserted != {"inserted": len(points)}:
                raise DevError(f"seeding project {p}: CPU points answered {inserted}")
    client.close()
    seconds = time.perf_counter() - started
    print(f"bench: seeded in {seconds:.1f} s", flush=True)
    return Seeded(project_ids, service_ids, metric_ids, seconds)


# --- the database, directly -----------------------------------------------------------------


def copy_log_indexes(db, name: str = "bench_raw_logs"):
    """A fresh collection ``name`` with every index of the app's ``logs`` collection
    (for raw inserts beside the API's); returns it."""
    scratch = db[name]
    scratch.drop()
    indexes = db["logs"].index_information()
    if len(indexes) < 2:
        raise DevError("the logs collection has no secondary index to copy")
    for index, spec in indexes.items():
        if index != "_id_":
            options = {k: v for k, v in spec.items() if k not in ("key", "v", "ns")}
            scratch.create_index(spec["key"], name=index, **options)
    return scratch


def count_logs(mongo_uri: str) -> int:
    client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        return client.get_default_database()["logs"].count_documents({})
    finally:
        client.close()


# --- figures --------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """The ``pct``-th percentile (nearest rank) of ``values``; 0 when there are none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def commit() -> str:
    """The commit measured, with ``+uncommitted changes`` when app files differ from it."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "polymicro", "wsgi.py", "gunicorn.conf.py")
    return head + (" +uncommitted changes" if dirty else "")


def machine() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
