"""Soak polymicro: the dashboard's reads and a steady ingest of logs and CPU points from
many clients for minutes, then prove that nothing was lost and nothing leaked.

Usage (from the repository root; ``make soak`` builds .venv first)::

    make soak                                   # 3 minutes of load, about 4 minutes in all
    make soak SOAK_ARGS=--quick                 # 30 seconds of load (what CI runs)
    .venv/bin/python bench/soak.py --minutes 10 --clients 24

One run, everything on 127.0.0.1 and stopped at the end (also on error, Ctrl-C, SIGTERM):

1. A private redis-server (or the Redis database at ``--redis-url``, flushed before and
   after), a fresh SecantusDB in a temporary directory, polymicro under gunicorn
   (``-c bench/gunicorn_conf.py``: the repo's settings without the access log; 2 workers
   x 4 threads unless told otherwise), all started and stopped by polymicro_dev.
   Authentication and the rate limit are off (one client address, no account), as in
   ``make bench``.
2. Seeding through the API: ``--projects`` projects of 5 services, a CPU entry per service.
3. Load: ``--clients`` threads, one keep-alive connection (polymicro_dev's HttpClient)
   each, until the
   time (``--minutes``) or the request budget (``--max-requests``) is spent.  Each picks
   at random (fixed weights): the dashboard's reads (projects list, services of a project,
   CPU entries of a project with their points, logs of a project), a single log
   ``POST /api/logs``, a ``POST /api/logs/batch`` of 10-200 entries, or
   ``POST /api/metrics/cpu/{id}/data`` with one point (an object) or 2-100 (an array).
4. Accounting: every acknowledged write (201) is remembered: the id of every log entry,
   the number of points per CPU entry.  Afterwards the database is asked directly
   (pymongo): every acknowledged log id must be stored, and every CPU entry must hold
   exactly its initial points plus the acknowledged ones (``count_documents``).
5. Memory: VmRSS of every gunicorn worker (``/proc/<pid>/status``) after seeding and
   warm-up, every 10 seconds, and at the end; the report gives the growth.

Report on stdout and as JSON in var/soak/<UTC timestamp>.json.  Exit status 0 when
there was no 5xx, no failed request and no lost write; 1 otherwise (or when something
did not start); 130/143 when interrupted.  The RSS growth is reported, not judged:
caches fill up to their bounds during a soak (SimpleCache 5,000 keys, Redis flushed).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pymongo
from bson import ObjectId
from common import percentile

from polymicro_dev import (
    ROOT,
    TRANSPORT_ERRORS,
    DevError,
    GunicornSettings,
    HttpClient,
    Processes,
    app_env,
    child_pids,
    ensure_redis,
    rss_kib,
    run_main,
    start_gunicorn,
    start_secantus,
)

OUT_DIR = ROOT / "var" / "soak"
SEVERITIES = ("debug", "info", "warn", "error", "critical")

# What a client does, with its weight: the dashboard reads most, services push all day.
MIX = {
    "read_projects": 12,
    "read_project_services": 12,
    "read_project_metrics": 12,
    "read_project_logs": 14,
    "log_single": 20,
    "log_batch": 8,
    "points": 22,
}
READS = {name for name in MIX if name.startswith("read_")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/soak.py", description="Soak polymicro (see the module docstring)."
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="minutes of load (3)")
    parser.add_argument("--quick", action="store_true", help="30 seconds of load")
    parser.add_argument("--clients", type=int, default=16, help="client threads (16)")
    parser.add_argument(
        "--max-requests", type=int, default=500_000, help="request budget (500,000)"
    )
    parser.add_argument("--projects", type=int, default=4, help="projects of 5 services (4)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (4)")
    parser.add_argument(
        "--redis-url", help="a Redis database to use (flushed) instead of a private redis-server"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the load mix")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes = 0.5
    if args.minutes <= 0 or args.clients < 1 or args.max_requests < 1 or args.projects < 1:
        parser.error("--minutes, --clients, --max-requests and --projects must be positive")
    return args


def say(text: str) -> None:
    print(f"soak: {text}", flush=True)


# --- what the run keeps --------------------------------------------------------------


@dataclass
class Tally:
    """Everything the clients saw, merged under a lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: Counter = field(default_factory=Counter)  # kind -> requests
    statuses: dict = field(default_factory=lambda: defaultdict(Counter))  # kind -> status
    latencies: dict = field(default_factory=lambda: defaultdict(list))  # kind -> seconds
    errors: list = field(default_factory=list)  # (kind, description), first 20 kept
    error_count: int = 0
    log_ids: set = field(default_factory=set)
    logs_acked: int = 0
    points_acked: Counter = field(default_factory=Counter)  # metric id -> points
    retries: int = 0

    def record(self, kind: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[kind] += 1
            self.statuses[kind][status] += 1
            self.latencies[kind].append(seconds)

    def error(self, kind: str, description: str) -> None:
        with self.lock:
            self.error_count += 1
            if len(self.errors) < 20:
                self.errors.append((kind, description))

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def server_errors(self) -> int:
        return sum(n for by in self.statuses.values() for s, n in by.items() if s >= 500)


@dataclass
class World:
    projects: list[str]
    services: dict[str, list[str]]  # project id -> service ids
    metrics: dict[str, list[str]]  # project id -> CPU entry ids
    initial_points: dict[str, int]  # CPU entry id -> points stored by the seed


def seed(port: int, projects: int, run: str) -> World:
    client = HttpClient(port)

    def created(path: str, payload) -> dict:
        return client.call("POST", path, payload, expect=201)

    world = World([], {}, {}, {})
    for p in range(projects):
        project = created("/api/projects", {"name": f"soak-{run}-{p}", "owner": "soak"})
        pid = project["id"]
        world.projects.append(pid)
        world.services[pid], world.metrics[pid] = [], []
        for s in range(5):
            svc = created(
                "/api/services", {"project_id": pid, "name": f"svc-{s}", "port": 8000 + s}
            )
            world.services[pid].append(svc["id"])
            points = [{"load": float(i), "memory": 50.0, "threads": 8} for i in range(20)]
            metric = created(
                "/api/metrics/cpu", {"project_id": pid, "service_name": svc["name"], "data": points}
            )
            world.metrics[pid].append(metric["id"])
            world.initial_points[metric["id"]] = len(points)
    client.close()
    return world


def log_entry(rng: random.Random, world: World, pid: str, marker: str) -> dict:
    return {
        "project_id": pid,
        "service_id": rng.choice(world.services[pid]),
        "severity": rng.choice(SEVERITIES),
        "message": f"{marker} request handled in {rng.randint(1, 900)} ms",
        "source": "soak",
        "attributes": {"request_id": marker, "bytes": rng.randint(0, 10**6)},
    }


def point(rng: random.Random) -> dict:
    return {
        "load": round(rng.uniform(0, 400), 2),
        "memory": round(rng.uniform(0, 100), 2),
        "threads": rng.randint(1, 64),
    }


def client_loop(
    index: int,
    port: int,
    world: World,
    tally: Tally,
    deadline: float,
    budget: threading.Semaphore,
    seed_value: int,
) -> None:
    rng = random.Random(seed_value * 1000 + index)
    kinds, weights = list(MIX), list(MIX.values())
    client = HttpClient(port)
    sent = 0
    try:
        while time.monotonic() < deadline and budget.acquire(blocking=False):
            kind = rng.choices(kinds, weights)[0]
            pid = rng.choice(world.projects)
            marker = f"c{index}-{sent}"
            sent += 1
            payload = None
            if kind == "read_projects":
                method, path = "GET", "/api/projects"
            elif kind == "read_project_services":
                method, path = "GET", f"/api/services/project/{pid}"
            elif kind == "read_project_metrics":
                method, path = "GET", f"/api/metrics/cpu/project/{pid}?points=60"
            elif kind == "read_project_logs":
                method, path = "GET", f"/api/logs/project/{pid}?page_size=50"
            elif kind == "log_single":
                method, path = "POST", "/api/logs"
                payload = log_entry(rng, world, pid, marker)
            elif kind == "log_batch":
                method, path = "POST", "/api/logs/batch"
                size = rng.randint(10, 200)
                payload = [log_entry(rng, world, pid, f"{marker}-{i}") for i in range(size)]
            else:
                metric_id = rng.choice(world.metrics[pid])
                method, path = "POST", f"/api/metrics/cpu/{metric_id}/data"
                count = 1 if rng.random() < 0.3 else rng.randint(2, 100)
                payload = point(rng) if count == 1 else [point(rng) for _ in range(count)]
            started = time.perf_counter()
            try:
                response = client.request(method, path, payload)
            except TRANSPORT_ERRORS as exc:
                tally.error(kind, f"{method} {path}: {exc!r}")
                client.close()  # the next request opens a new connection
                continue
            status, body = response.status, response.body
            tally.record(kind, status, time.perf_counter() - started)
            expected = 200 if kind in READS else 201
            if status != expected:
                tally.error(kind, f"{method} {path} answered {status}: {body[:200]!r}")
                continue
            if kind == "log_single":
                with tally.lock:
                    tally.log_ids.add(json.loads(body)["id"])
                    tally.logs_acked += 1
            elif kind == "log_batch":
                answer = json.loads(body)
                with tally.lock:
                    tally.log_ids.update(answer["ids"])
                    tally.logs_acked += answer["inserted"]
            elif kind == "points":
                inserted = json.loads(body)["inserted"]
                with tally.lock:
                    tally.points_acked[metric_id] += inserted
    finally:
        with tally.lock:
            tally.retries += client.retries
        client.close()


# --- memory ---------------------------------------------------------------------------


def worker_rss(master_pid: int) -> dict[int, int]:
    return {pid: kib for pid in child_pids(master_pid) if (kib := rss_kib(pid))}


def sample_memory(master_pid: int, samples: list, stop: threading.Event, began: float) -> None:
    while not stop.wait(10):
        samples.append((round(time.monotonic() - began, 1), worker_rss(master_pid)))


# --- checking -------------------------------------------------------------------------


def count_stored(mongo_uri: str, world: World, tally: Tally) -> dict:
    """What the database holds of what was acknowledged."""
    client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
    try:
        db = client.get_default_database()
        ids = [ObjectId(i) for i in tally.log_ids]
        found = 0
        for start in range(0, len(ids), 5000):
            chunk = ids[start : start + 5000]
            found += db["logs"].count_documents({"_id": {"$in": chunk}})
        points = {}
        for metric_ids in world.metrics.values():
            for metric_id in metric_ids:
                stored = db["cpu_points"].count_documents({"metric_id": ObjectId(metric_id)})
                expected = world.initial_points[metric_id] + tally.points_acked[metric_id]
                points[metric_id] = (expected, stored)
        return {
            "log_ids_acknowledged": len(ids),
            "log_ids_stored": found,
            "logs_in_database": db["logs"].count_documents({}),
            "points": points,
        }
    finally:
        client.close()


# --- main -----------------------------------------------------------------------------


def main(procs: Processes, args: argparse.Namespace) -> int:
    began = time.monotonic()
    started_at = datetime.now(UTC)
    run = started_at.strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="polymicro-soak-"))
    if not args.keep:
        procs.on_stop(lambda: shutil.rmtree(workdir, ignore_errors=True))
    redis_url = ensure_redis(procs, workdir, args.redis_url)
    say(f"starting SecantusDB in {workdir}")
    db = start_secantus(procs, workdir / "db", workdir)
    mongo_uri = db.uri
    settings = GunicornSettings(args.workers, args.threads)
    app = start_gunicorn(procs, app_env(mongo_uri, redis_url), workdir, settings, name="polymicro")
    say(f"polymicro on {app.uri} ({settings.label}), Redis {redis_url}")

    world = seed(app.port, args.projects, run)
    entries = sum(map(len, world.metrics.values()))
    say(f"seeded {len(world.projects)} projects, {entries} CPU entries")
    # Warm-up: every worker imports lazily and fills its caches on first use.
    warm = Tally()
    client_loop(-1, app.port, world, warm, time.monotonic() + 3, threading.Semaphore(300), 0)
    if warm.server_errors or warm.error_count:
        raise DevError(f"warm-up failed: {warm.errors[:3]}")
    for metric_id, n in warm.points_acked.items():  # warm-up writes are counted too
        world.initial_points[metric_id] += n
    warm_log_ids = set(warm.log_ids)

    workers_start = worker_rss(app.proc.pid)
    say(
        f"workers at start: {format_rss(workers_start)}; {args.clients} clients for "
        f"{args.minutes:g} min (budget {args.max_requests:,} requests)"
    )
    tally = Tally()
    samples: list = [(0.0, workers_start)]
    stop = threading.Event()
    load_began = time.monotonic()
    sampler = threading.Thread(
        target=sample_memory, args=(app.proc.pid, samples, stop, load_began), daemon=True
    )
    sampler.start()
    deadline = load_began + args.minutes * 60
    budget = threading.Semaphore(args.max_requests)
    threads = [
        threading.Thread(
            target=client_loop,
            args=(i, app.port, world, tally, deadline, budget, args.seed),
            daemon=True,
        )
        for i in range(args.clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=args.minutes * 60 + 120)
    if any(thread.is_alive() for thread in threads):
        raise DevError("a client did not finish within 2 minutes of the deadline")
    load_seconds = time.monotonic() - load_began
    stop.set()
    app.check_alive()
    workers_end = worker_rss(app.proc.pid)
    samples.append((round(load_seconds, 1), workers_end))

    tally.log_ids |= warm_log_ids
    stored = count_stored(mongo_uri, world, tally)
    result = build_result(args, started_at, load_seconds, app, tally, stored, samples)
    result["elapsed_s"] = round(time.monotonic() - began, 1)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{run}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(render(result))
    print()
    say(f"took {result['elapsed_s']:.0f} s; JSON in {path.relative_to(ROOT)}")
    if result["failures"]:
        for failure in result["failures"]:
            say("FAILED: " + failure)
        return 1
    say("PASS: no 5xx, no failed request, no lost write")
    return 0


def format_rss(workers: dict[int, int]) -> str:
    return ", ".join(f"pid {pid} {kib / 1024:.1f} MiB" for pid, kib in sorted(workers.items()))


def build_result(args, started_at, load_seconds, app, tally: Tally, stored, samples) -> dict:
    first, last = samples[0][1], samples[-1][1]
    replaced = sorted(set(first) ^ set(last))
    growth = {str(pid): round((last[pid] - first[pid]) / 1024, 1) for pid in first if pid in last}
    lost_logs = stored["log_ids_acknowledged"] - stored["log_ids_stored"]
    point_mismatch = {m: v for m, v in stored["points"].items() if v[0] != v[1]}
    failures = []
    if tally.server_errors:
        failures.append(f"{tally.server_errors} responses were 5xx")
    if tally.error_count:
        failures.append(f"{tally.error_count} requests failed: {tally.errors[:5]}")
    if lost_logs:
        failures.append(f"{lost_logs} acknowledged log entries are not in the database")
    if point_mismatch:
        failures.append(
            "CPU entries whose stored points differ from initial + acknowledged "
            f"(expected, stored): {point_mismatch}"
        )
    if replaced:
        failures.append(f"gunicorn workers were replaced during the soak: {replaced}")
    kinds = {}
    for kind in MIX:
        lat = tally.latencies.get(kind, [])
        kinds[kind] = {
            "requests": tally.requests.get(kind, 0),
            "statuses": {str(k): v for k, v in sorted(tally.statuses.get(kind, {}).items())},
            "p50_ms": round(percentile(lat, 50) * 1000, 1),
            "p99_ms": round(percentile(lat, 99) * 1000, 1),
        }
    points_acked = sum(tally.points_acked.values())
    return {
        "date": started_at.isoformat(timespec="seconds"),
        "settings": {
            "minutes": args.minutes,
            "clients": args.clients,
            "max_requests": args.max_requests,
            "gunicorn": GunicornSettings(args.workers, args.threads).label,
            "projects": args.projects,
            "seed": args.seed,
        },
        "load_s": round(load_seconds, 1),
        "requests": tally.total,
        "requests_per_s": round(tally.total / load_seconds, 1) if load_seconds else 0,
        "server_errors": tally.server_errors,
        "failed_requests": tally.error_count,
        "client_retries_on_idle_close": tally.retries,
        "kinds": kinds,
        "writes": {
            "logs_acknowledged": stored["log_ids_acknowledged"],
            "logs_stored": stored["log_ids_stored"],
            "logs_lost": lost_logs,
            "points_acknowledged": points_acked,
            "point_entries_mismatched": len(point_mismatch),
        },
        "rss_mib": {
            "start": {str(p): round(k / 1024, 1) for p, k in first.items()},
            "end": {str(p): round(k / 1024, 1) for p, k in last.items()},
            "growth": growth,
            "samples": [
                (t, {str(p): round(k / 1024, 1) for p, k in w.items()}) for t, w in samples
            ],
        },
        "failures": failures,
    }


def render(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"## Soak {result['date']}: {s['clients']} clients, {result['load_s']:.0f} s, "
        f"gunicorn {s['gunicorn']}",
        "",
        "| kind | requests | statuses | p50 ms | p99 ms |",
        "|---|---:|---|---:|---:|",
    ]
    for kind, k in result["kinds"].items():
        statuses = ", ".join(f"{code}: {n}" for code, n in k["statuses"].items()) or "-"
        lines.append(f"| {kind} | {k['requests']:,} | {statuses} | {k['p50_ms']} | {k['p99_ms']} |")
    w = result["writes"]
    rss = result["rss_mib"]
    lines += [
        "",
        f"- requests: {result['requests']:,} ({result['requests_per_s']}/s); "
        f"5xx: {result['server_errors']}; failed requests: {result['failed_requests']}",
        f"- log entries acknowledged {w['logs_acknowledged']:,}, stored {w['logs_stored']:,}, "
        f"lost {w['logs_lost']}",
        f"- CPU points acknowledged {w['points_acknowledged']:,}; CPU entries whose count "
        f"differs: {w['point_entries_mismatched']}",
        "- worker RSS MiB (start -> end, growth): "
        + "; ".join(
            f"pid {pid}: {rss['start'][pid]} -> {rss['end'].get(pid, '?')} "
            f"({rss['growth'].get(pid, '?'):+})"
            if pid in rss["growth"]
            else f"pid {pid}: replaced"
            for pid in rss["start"]
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    sys.exit(run_main(lambda procs: main(procs, arguments), "soak"))
