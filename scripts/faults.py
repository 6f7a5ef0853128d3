"""Fault scenarios against the real stack (``make faults``): gunicorn (2 workers x 4
threads), a SecantusDB and a private redis-server, all on 127.0.0.1, started here and
stopped at the end (also on error, Ctrl-C, SIGTERM).

Scenarios (``--only NAME`` runs some of them; all by default, in this order):

``redis``     Redis stops (SIGTERM) and comes back on the same port: every request keeps
              answering 2xx, none waits much longer than the cache's socket timeout,
              a write made during the outage is visible after it, and caching resumes.
              Then Redis freezes (SIGSTOP: a partition that keeps its data) and thaws:
              still 2xx, and how long the other worker may serve an entry that a write
              during the partition made stale is measured (caching.py documents it).
``database``  The database stops (SIGTERM) and comes back on the same storage and port:
              while it is down, data endpoints answer 503 with the clear message within
              ``POLYMICRO_MONGODB_TIMEOUT_MS`` plus a margin (8 at once too), readiness is
              503 and liveness 200; afterwards the service recovers without a gunicorn
              restart (same master and worker pids) and every write acknowledged before
              the stop is there.  The same again with SIGKILL (a crash).
``worker``    A gunicorn worker is killed (SIGKILL) while it handles a slow batch of
              1000 log entries of 15,000 characters: gunicorn starts a replacement, every later
              request succeeds, at most the in-flight request fails, and the batch is
              stored completely or not at all.
``batch``     A batch is never half-written: a large ``POST /api/logs/batch`` is
              interrupted while the database is inserting it (watched from a second
              connection: the first of its rows appears), by killing the worker, by
              stopping the database, by killing the database.  Afterwards the number of
              that batch's entries (each batch has its own marker) must be 0 or all.

Exit status 0 when every check held, 1 otherwise (each failed check is printed),
130/143 when interrupted.  The report is also written to var/faults/<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pymongo
import redis
from bson import ObjectId

from polymicro_dev import (
    ROOT,
    TRANSPORT_ERRORS,
    DevError,
    GunicornSettings,
    HttpClient,
    Processes,
    app_env,
    child_pids,
    request_once,
    run_main,
    start_gunicorn,
    start_redis,
    start_secantus,
    wait_until,
)

OUT_DIR = ROOT / "var" / "faults"
DB_TIMEOUT_MS = 2000  # POLYMICRO_MONGODB_TIMEOUT_MS for this run
DB_DOWN_MESSAGE = "The database is unavailable; try again shortly."
DOWN_MARGIN_S = 2.5  # what a request may take beyond the database timeout
CACHE_MARGIN_S = 1.5  # what a request may take when Redis does not answer
BATCH_SIZE = 1000
POINTS_SIZE = 10_000
BIG_MESSAGE = 15_000  # characters per message in the "large" batches (limit 16384)
SCENARIOS = ("redis", "database", "worker", "batch")


def say(text: str) -> None:
    print(f"faults: {text}", flush=True)


# --- results --------------------------------------------------------------------------


@dataclass
class Report:
    checks: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, scenario: str, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"scenario": scenario, "check": name, "ok": ok, "detail": detail})
        mark = "ok  " if ok else "FAIL"
        say(f"[{mark}] {scenario}: {name}" + (f" ({detail})" if detail else ""))
        return ok

    def note(self, scenario: str, text: str) -> None:
        self.notes.append(f"{scenario}: {text}")
        say(f"[note] {scenario}: {text}")

    @property
    def failed(self) -> list[dict]:
        return [c for c in self.checks if not c["ok"]]


# --- the stack ------------------------------------------------------------------------


class Stack:
    """The servers of this run; the database and Redis can be stopped and started again
    on the same port (and storage), gunicorn is never restarted."""

    def __init__(self, procs: Processes, workdir: Path):
        self.procs = procs
        self.workdir = workdir
        self.db = start_secantus(procs, workdir / "db", workdir)
        self.redis = start_redis(procs, workdir / "redis")
        self.mongo_uri = self.db.uri
        env = app_env(
            self.mongo_uri,
            self.redis.uri,
            POLYMICRO_MONGODB_TIMEOUT_MS=str(DB_TIMEOUT_MS),
            POLYMICRO_LOG_LEVEL="ERROR",
        )
        self.app = start_gunicorn(procs, env, workdir, GunicornSettings(2, 4))
        self.port = self.app.port
        self.mongo = pymongo.MongoClient(self.mongo_uri, serverSelectionTimeoutMS=3000)

    # database ------------------------------------------------------------------------
    def stop_db(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.procs.stop(self.db, sig)

    def start_db(self) -> None:
        self.db = start_secantus(self.procs, self.workdir / "db", self.workdir, port=self.db.port)

    # redis ---------------------------------------------------------------------------
    def stop_redis(self) -> None:
        self.procs.stop(self.redis)

    def start_redis(self) -> None:
        self.redis = start_redis(self.procs, self.workdir / "redis", port=self.redis.port)

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.uri, socket_timeout=2)

    # gunicorn ------------------------------------------------------------------------
    def workers(self) -> list[int]:
        return child_pids(self.app.proc.pid)

    def call(self, method: str, path: str, payload=None, timeout: float = 30.0):
        """One request on a connection of its own (a killed worker breaks no other)."""
        return request_once(self.port, method, path, payload, timeout=timeout)

    def ok(self, method: str, path: str, payload=None, expect: int = 200):
        status, body = self.call(method, path, payload)
        if status != expect:
            raise DevError(f"{method} {path} answered {status} (wanted {expect}): {body!r:.300}")
        return body

    def healthy(self, timeout: float = 60) -> float:
        return wait_until(
            lambda: self.call("GET", "/api/health", timeout=5)[0] == 200,
            timeout,
            "/api/health to answer 200",
            server=self.app,
        )


@dataclass
class Seeded:
    pid: str
    sid: str
    mid: str
    log_ids: list[str] = field(default_factory=list)
    points: int = 0


def seed(stack: Stack, tag: str) -> Seeded:
    project = stack.ok("POST", "/api/projects", {"name": f"faults-{tag}"}, 201)
    svc = stack.ok("POST", "/api/services", {"project_id": project["id"], "name": "api"}, 201)
    metric = stack.ok(
        "POST", "/api/metrics/cpu", {"project_id": project["id"], "service_name": "api"}, 201
    )
    return Seeded(project["id"], svc["id"], metric["id"])


def entry(seeded: Seeded, message: str, source: str = "faults") -> dict:
    return {
        "project_id": seeded.pid,
        "service_id": seeded.sid,
        "severity": "info",
        "message": message,
        "source": source,
    }


def acknowledged_writes(stack: Stack, seeded: Seeded) -> None:
    """Single logs, batches and points, each acknowledged (201) and remembered."""
    for i in range(20):
        seeded.log_ids.append(
            stack.ok("POST", "/api/logs", entry(seeded, f"single {i}"), 201)["id"]
        )
    for b in range(2):
        batch = [entry(seeded, f"batch {b} entry {i}") for i in range(100)]
        seeded.log_ids += stack.ok("POST", "/api/logs/batch", batch, 201)["ids"]
    for _ in range(10):
        points = [{"load": 10.0, "memory": 20.0, "threads": 4} for _ in range(10)]
        seeded.points += stack.ok("POST", f"/api/metrics/cpu/{seeded.mid}/data", points, 201)[
            "inserted"
        ]


def verify_writes(report: Report, scenario: str, stack: Stack, seeded: Seeded) -> None:
    db = stack.mongo.get_default_database()
    ids = [ObjectId(i) for i in seeded.log_ids]
    stored = db["logs"].count_documents({"_id": {"$in": ids}})
    report.check(
        scenario,
        "every log entry acknowledged before the fault is stored",
        stored == len(ids),
        f"{stored} of {len(ids)}",
    )
    points = db["cpu_points"].count_documents({"metric_id": ObjectId(seeded.mid)})
    report.check(
        scenario,
        "every CPU point acknowledged before the fault is stored",
        points == seeded.points,
        f"{points} of {seeded.points}",
    )
    sample = seeded.log_ids[:: max(1, len(seeded.log_ids) // 10)]
    statuses = {stack.call("GET", f"/api/logs/{log_id}")[0] for log_id in sample}
    report.check(scenario, "the API reads them back", statuses == {200}, f"statuses {statuses}")


def timed(stack: Stack, method: str, path: str, payload=None, timeout: float = 30.0):
    started = time.monotonic()
    status, body = stack.call(method, path, payload, timeout=timeout)
    return status, body, time.monotonic() - started


# --- (b) Redis ------------------------------------------------------------------------


def scenario_redis(stack: Stack, report: Report) -> None:
    name = "redis"
    seeded = seed(stack, "redis")
    acknowledged_writes(stack, seeded)
    reads = [
        ("GET", "/api/projects", None),
        ("GET", f"/api/services/project/{seeded.pid}", None),
        ("GET", f"/api/metrics/cpu/project/{seeded.pid}", None),
        ("GET", f"/api/logs/project/{seeded.pid}", None),
    ]
    for method, path, _ in reads:  # warm the cache
        stack.ok(method, path)
    report.check(
        name, "the cache holds entries before the outage", stack.redis_client().dbsize() > 0
    )

    stack.stop_redis()
    results = []
    for round_ in range(3):
        for method, path, payload in [
            *reads,
            ("POST", "/api/logs", entry(seeded, f"during redis outage {round_}")),
            ("POST", f"/api/metrics/cpu/{seeded.mid}/data", {"load": 1.0}),
            ("PATCH", f"/api/projects/{seeded.pid}", {"description": f"outage {round_}"}),
        ]:
            results.append((method, path, *timed(stack, method, path, payload)))
    bad = [(m, p, s) for m, p, s, _, _ in results if not 200 <= s < 300]
    slowest = max(t for *_, t in results)
    report.check(
        name,
        "Redis stopped: every request answers 2xx",
        not bad,
        f"{len(results)} requests; bad: {bad[:3]}",
    )
    report.check(
        name,
        "Redis stopped: no request waits long for it",
        slowest < CACHE_MARGIN_S,
        f"slowest {slowest:.2f} s (cache socket timeout 0.5 s)",
    )
    stack.ok(
        "PATCH", f"/api/projects/{seeded.pid}", {"description": "written while Redis was down"}
    )

    stack.start_redis()
    after = [timed(stack, m, p)[0] for m, p, _ in reads * 3]
    report.check(name, "Redis back: every request answers 2xx", all(200 <= s < 300 for s in after))
    described = {stack.ok("GET", f"/api/projects/{seeded.pid}")["description"] for _ in range(6)}
    report.check(
        name,
        "Redis back: a write made during the outage is what every worker reads",
        described == {"written while Redis was down"},
        f"read {described}",
    )

    def cache_used() -> bool:
        for method, path, _ in reads:
            stack.ok(method, path)
        return stack.redis_client().dbsize() > 0

    try:
        waited = wait_until(cache_used, 30, "caching to resume", interval=0.5)
        report.check(name, "Redis back: caching resumes", True, f"after {waited:.1f} s")
    except DevError as exc:
        report.check(name, "Redis back: caching resumes", False, str(exc))

    # A partition that keeps Redis's data: SIGSTOP, a write, SIGCONT.
    stack.ok("GET", "/api/projects")
    os.kill(stack.redis.proc.pid, signal.SIGSTOP)
    try:
        frozen = [
            timed(stack, m, p, pl)
            for m, p, pl in [
                *reads,
                (
                    "PATCH",
                    f"/api/projects/{seeded.pid}",
                    {"description": "written during the partition"},
                ),
                *reads,
            ]
        ]
    finally:
        os.kill(stack.redis.proc.pid, signal.SIGCONT)
    report.check(
        name,
        "Redis frozen (SIGSTOP): every request answers 2xx",
        all(200 <= s < 300 for s, _, _ in frozen),
        f"slowest {max(t for _, _, t in frozen):.2f} s",
    )
    started = time.monotonic()
    stale_until = 0.0
    while time.monotonic() - started < 70:
        listed = stack.ok("GET", "/api/projects?page_size=1000")
        desc = next(p["description"] for p in listed if p["id"] == seeded.pid)
        if desc != "written during the partition":
            stale_until = time.monotonic() - started
        elif time.monotonic() - started > stale_until + 6:
            break
        time.sleep(0.25)
    report.note(
        name,
        "after a partition that kept Redis's data, a list cached before the write was "
        + (f"served stale for up to {stale_until:.1f} s" if stale_until else "never served stale")
        + " (polymicro/common/caching.py documents this case: at most CACHE_DEFAULT_TIMEOUT)",
    )


# --- (a) the database -----------------------------------------------------------------


def scenario_database(stack: Stack, report: Report, sig: signal.Signals) -> None:
    name = f"database ({sig.name})"
    seeded = seed(stack, f"db-{sig.name}")
    acknowledged_writes(stack, seeded)
    master, workers = stack.app.proc.pid, stack.workers()
    bound = DB_TIMEOUT_MS / 1000 + DOWN_MARGIN_S

    stack.stop_db(sig)
    requests_down = [
        ("POST", "/api/logs", entry(seeded, "while the database is down")),
        ("POST", "/api/logs/batch", [entry(seeded, "batch while down")] * 10),
        ("POST", f"/api/metrics/cpu/{seeded.mid}/data", [{"load": 1.0}]),
        ("POST", "/api/projects", {"name": f"created while down {uuid.uuid4().hex[:6]}"}),
        ("PATCH", f"/api/services/{seeded.sid}", {"version": "2"}),
        ("GET", f"/api/logs/{seeded.log_ids[0]}", None),
        ("GET", f"/api/logs/project/{seeded.pid}?q={uuid.uuid4().hex}", None),  # not cached
        ("GET", f"/api/metrics/cpu/{seeded.mid}/series?step=1h", None),
    ]
    results = [(m, p, *timed(stack, m, p, pl)) for m, p, pl in requests_down]
    for method, path, status, body, seconds in results:
        message = body.get("message") if isinstance(body, dict) else body
        report.check(
            name,
            f"down: {method} {path.split('?')[0]} is 503 with the message, within {bound:.1f} s",
            status == 503 and message == DB_DOWN_MESSAGE and seconds <= bound,
            f"{status} {message!r:.80} in {seconds:.2f} s",
        )
    # Cached reads may still be served from the cache; none may fail otherwise.
    for path in ("/api/projects", f"/api/metrics/cpu/project/{seeded.pid}"):
        status, body, seconds = timed(stack, "GET", path)
        message = body.get("message") if isinstance(body, dict) else None
        report.check(
            name,
            f"down: GET {path} is 503 with the message or 200 from the cache, within {bound:.1f} s",
            (status == 200 or (status == 503 and message == DB_DOWN_MESSAGE)) and seconds <= bound,
            f"{status} in {seconds:.2f} s",
        )
    with ThreadPoolExecutor(8) as pool:
        started = time.monotonic()
        parallel = list(
            pool.map(
                lambda i: stack.call("POST", "/api/logs", entry(seeded, f"parallel {i}"))[0],
                range(8),
            )
        )
        took = time.monotonic() - started
    report.check(
        name,
        "down: 8 writes at once all answer 503 without piling up",
        set(parallel) == {503} and took <= 2 * bound,
        f"{parallel} in {took:.2f} s",
    )
    ready = stack.call("GET", "/api/health/ready", timeout=10)
    live = stack.call("GET", "/api/health/live", timeout=10)
    report.check(
        name,
        "down: readiness 503 naming the database, liveness 200",
        ready[0] == 503
        and isinstance(ready[1], dict)
        and ready[1].get("checks", {}).get("database") != "ok"
        and live[0] == 200,
        f"ready {ready[0]} {ready[1]!r:.120}, live {live[0]}",
    )

    restarted = time.monotonic()
    stack.start_db()
    try:
        recovered = stack.healthy(timeout=60)
        report.check(
            name, "back: /api/health is 200 again", True, f"{recovered:.1f} s after restart"
        )
    except DevError as exc:
        report.check(name, "back: /api/health is 200 again", False, str(exc))
        return
    report.check(
        name,
        "back: recovered without restarting gunicorn (same master and workers)",
        stack.app.proc.pid == master and stack.workers() == workers,
        f"workers before {workers}, after {stack.workers()}",
    )
    first_write = time.monotonic()
    status = stack.call("POST", "/api/logs", entry(seeded, "after the restart"))[0]
    report.check(
        name,
        "back: a write succeeds",
        status == 201,
        f"{status}, {first_write - restarted:.1f} s after the restart",
    )
    verify_writes(report, name, stack, seeded)


# --- (c) and (d): interrupting a large batch --------------------------------------------


def big_batch(seeded: Seeded, marker: str, size: int = BATCH_SIZE) -> bytes:
    text = "x" * BIG_MESSAGE
    entries = [entry(seeded, f"{marker} {i} {text}", source=marker) for i in range(size)]
    return json.dumps(entries).encode()


def connection_owner(port: int, client_port: int, pids: list[int]) -> int | None:
    """The worker whose socket is the server end of the client's connection."""
    wanted_local = f"0100007F:{port:04X}"
    wanted_remote = f"0100007F:{client_port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted_local and fields[2] == wanted_remote:
            inode = fields[9]
            break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(fd) == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


class BodySender(threading.Thread):
    """POSTs one body on its own connection; keeps the outcome and when the body was
    fully sent."""

    def __init__(self, port: int, path: str, body: bytes):
        super().__init__(daemon=True)
        self.port, self.path, self.body = port, path, body
        self.conn = HttpClient(port, timeout=120).conn  # driven by hand, to time the body
        self.conn.connect()
        self.client_port = self.conn.sock.getsockname()[1]
        self.sent = threading.Event()
        self.sent_at = 0.0
        self.done_at = 0.0
        self.outcome: str = "pending"

    def run(self) -> None:
        try:
            self.conn.putrequest("POST", self.path)
            self.conn.putheader("Content-Type", "application/json")
            self.conn.putheader("Content-Length", str(len(self.body)))
            self.conn.endheaders()
            self.conn.sock.sendall(self.body)
            self.sent_at = time.monotonic()
            self.sent.set()
            response = self.conn.getresponse()
            response.read()
            self.outcome = str(response.status)
        except TRANSPORT_ERRORS as exc:
            self.sent_at = self.sent_at or time.monotonic()
            self.sent.set()
            self.outcome = type(exc).__name__
        finally:
            self.done_at = time.monotonic()
            self.conn.close()


def send_and_find_worker(
    stack: Stack, target: Target, within: float
) -> tuple[BodySender, int | None]:
    """Start sending ``target``'s body; once it is sent, the worker that serves it
    (None when it is not found ``within`` seconds)."""
    workers = stack.workers()
    sender = BodySender(stack.port, target.path, target.body)
    sender.start()
    sender.sent.wait(60)
    owner = None
    deadline = time.monotonic() + within
    while owner is None and time.monotonic() < deadline:
        owner = connection_owner(stack.port, sender.client_port, workers)
    return sender, owner


@dataclass
class Target:
    """What a large write is: its path and body, and how to count what it stored."""

    label: str
    size: int
    path: str
    body: bytes
    count: Callable[[pymongo.database.Database], int]


def logs_target(stack: Stack, seeded: Seeded) -> Target:
    marker = f"m-{uuid.uuid4().hex[:10]}"
    return Target(
        f"a batch of {BATCH_SIZE} log entries",
        BATCH_SIZE,
        "/api/logs/batch",
        big_batch(seeded, marker),
        lambda db: db["logs"].count_documents({"source": marker}),
    )


def points_target(stack: Stack, seeded: Seeded) -> Target:
    svc = stack.ok(
        "POST", "/api/services", {"project_id": seeded.pid, "name": uuid.uuid4().hex}, 201
    )
    metric = stack.ok(
        "POST", "/api/metrics/cpu", {"project_id": seeded.pid, "service_name": svc["name"]}, 201
    )
    points = [{"load": 1.5, "memory": 2.5, "threads": i} for i in range(POINTS_SIZE)]
    metric_id = ObjectId(metric["id"])
    return Target(
        f"{POINTS_SIZE} CPU points",
        POINTS_SIZE,
        f"/api/metrics/cpu/{metric['id']}/data",
        json.dumps(points).encode(),
        lambda db: db["cpu_points"].count_documents({"metric_id": metric_id}),
    )


def stored_count(stack: Stack, target: Target) -> int:
    client = pymongo.MongoClient(stack.mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        return target.count(client.get_default_database())
    finally:
        client.close()


def first_rows_visible(stack: Stack, target: Target, sender: BodySender, until: float) -> bool:
    """Poll from a second connection until rows of the write are visible (never, inside
    a transaction, before its commit) or ``until``; True when rows appeared."""
    client = pymongo.MongoClient(stack.mongo_uri, serverSelectionTimeoutMS=2000)
    try:
        db = client.get_default_database()
        while time.monotonic() < until and sender.is_alive():
            if target.count(db):
                return True
        return False
    finally:
        client.close()


def calibrate(stack: Stack, seeded: Seeded, make: Callable[[Stack, Seeded], Target]) -> float:
    """Seconds from the body being sent to the answer, uninterrupted."""
    target = make(stack, seeded)
    sender = BodySender(stack.port, target.path, target.body)
    sender.start()
    sender.join(120)
    if sender.outcome != "201":
        raise DevError(f"{target.label} uninterrupted answered {sender.outcome}")
    return sender.done_at - sender.sent_at


def interrupt(
    stack: Stack,
    report: Report,
    seeded: Seeded,
    make: Callable[[Stack, Seeded], Target],
    how: str,
    n: int,
    delay: float,
) -> None:
    """Send a large write and interrupt it ``delay`` seconds after its body was sent, or
    as soon as its first rows are visible (a write that is not atomic), by ``how``:
    "worker" (SIGKILL the worker serving it), "db-term" or "db-kill" (stop the database
    with SIGTERM or SIGKILL, then start it again).  What it stored must be 0 or all."""
    target = make(stack, seeded)
    name = f"batch ({how})"
    sender, owner = send_and_find_worker(stack, target, within=5)
    visible = first_rows_visible(stack, target, sender, sender.sent_at + delay)
    at = time.monotonic() - sender.sent_at
    if how == "worker":
        if owner is None:
            report.check(name, f"{target.label} #{n}: found the worker serving it", False)
            sender.join(120)
            return
        os.kill(owner, signal.SIGKILL)
    else:
        stack.stop_db(signal.SIGTERM if how == "db-term" else signal.SIGKILL)
    sender.join(120)
    if how != "worker":
        stack.start_db()
    stack.healthy(timeout=60)
    stored = stored_count(stack, target)
    when = "after its first rows appeared" if visible else "before any row was visible"
    detail = (
        f"interrupted {at:.2f} s after the body was sent, {when}; request: {sender.outcome}; "
        f"stored {stored} of {target.size}"
    )
    report.check(
        name,
        f"{target.label} #{n}: stored completely or not at all",
        stored in (0, target.size),
        detail,
    )
    if sender.outcome == "201":
        report.check(
            name,
            f"{target.label} #{n}: acknowledged, so stored completely",
            stored == target.size,
            detail,
        )


def scenario_worker(stack: Stack, report: Report) -> None:
    name = "worker"
    seeded = seed(stack, "worker")
    before = stack.workers()
    target = logs_target(stack, seeded)
    sender, owner = send_and_find_worker(stack, target, within=10)
    if not report.check(name, "found the worker serving the slow batch", owner is not None):
        sender.join(120)
        return
    time.sleep(0.2)  # mid-request: the body is in, the worker is reading or validating it
    os.kill(owner, signal.SIGKILL)
    killed_at = time.monotonic()
    # Later requests, starting at once: the other worker answers, then the replacement.
    later = []
    while time.monotonic() - killed_at < 5:
        later.append(stack.call("GET", f"/api/services/project/{seeded.pid}", timeout=30)[0])
        later.append(stack.call("POST", "/api/logs", entry(seeded, "after the kill"))[0])
    sender.join(120)
    report.check(
        name,
        "every request after the kill succeeds",
        set(later) <= {200, 201},
        f"{len(later)} requests, statuses {sorted(set(later))}",
    )
    report.check(
        name,
        "at most the in-flight request failed",
        True,
        f"the slow batch: {sender.outcome}",
    )
    try:
        waited = wait_until(
            lambda: len(stack.workers()) == len(before) and owner not in stack.workers(),
            30,
            "gunicorn to replace the worker",
        )
        report.check(
            name,
            "gunicorn replaced the killed worker",
            True,
            f"{before} -> {stack.workers()} in {waited:.1f} s",
        )
    except DevError as exc:
        report.check(name, "gunicorn replaced the killed worker", False, str(exc))
    statuses = {stack.call("GET", "/api/projects")[0] for _ in range(20)}
    report.check(
        name, "requests keep succeeding on the new worker set", statuses == {200}, f"{statuses}"
    )
    stored = stored_count(stack, target)
    report.check(
        name,
        "the interrupted batch is stored completely or not at all",
        stored in (0, BATCH_SIZE),
        f"request: {sender.outcome}; stored {stored} of {BATCH_SIZE}",
    )


def scenario_batch(stack: Stack, report: Report, repeats: int) -> None:
    seeded = seed(stack, "batch")
    for make in (logs_target, points_target):
        took = calibrate(stack, seeded, make)
        label = make(stack, seeded).label
        report.note("batch", f"{label} takes {took:.2f} s uninterrupted")
        # Interrupt it at spread points of its processing (or at its first visible rows).
        delays = [took * (i + 0.5) / repeats for i in range(repeats)]
        for how in ("worker", "db-term", "db-kill"):
            for n, delay in enumerate(delays, 1):
                interrupt(stack, report, seeded, make, how, n, delay)


# --- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="repeatable")
    parser.add_argument("--repeats", type=int, default=3, help="interruptions per kind (3)")
    parser.add_argument("--keep", action="store_true", help="keep the servers' directory")
    return parser.parse_args(argv)


def main(procs: Processes, args: argparse.Namespace) -> int:
    began = time.monotonic()
    started_at = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="polymicro-faults-"))
    say(f"working directory {workdir}")
    stack = Stack(procs, workdir)
    say(f"polymicro on {stack.app.uri}; SecantusDB :{stack.db.port}; Redis :{stack.redis.port}")
    report = Report()
    chosen = args.only or list(SCENARIOS)
    runs: list[tuple[str, Callable[[], None]]] = []
    if "redis" in chosen:
        runs.append(("redis", lambda: scenario_redis(stack, report)))
    if "database" in chosen:
        runs.append(("database", lambda: scenario_database(stack, report, signal.SIGTERM)))
        runs.append(("database", lambda: scenario_database(stack, report, signal.SIGKILL)))
    if "worker" in chosen:
        runs.append(("worker", lambda: scenario_worker(stack, report)))
    if "batch" in chosen:
        runs.append(("batch", lambda: scenario_batch(stack, report, args.repeats)))
    for scenario, run in runs:
        say(f"--- {scenario}")
        try:
            run()
        except DevError as exc:
            report.check(scenario, "the scenario ran to the end", False, str(exc))
            # Bring the stack back for the next scenario.
            if stack.db.proc.poll() is not None:
                stack.start_db()
            if stack.redis.proc.poll() is not None:
                stack.start_redis()
    elapsed = time.monotonic() - began
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{started_at.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(
        json.dumps(
            {
                "date": started_at.isoformat(timespec="seconds"),
                "elapsed_s": round(elapsed, 1),
                "checks": report.checks,
                "notes": report.notes,
            },
            indent=2,
        )
        + "\n"
    )
    passed = len(report.checks) - len(report.failed)
    where = path.relative_to(ROOT)
    say(f"{passed} of {len(report.checks)} checks held in {elapsed:.0f} s; JSON in {where}")
    for note in report.notes:
        say(f"note: {note}")
    if report.failed:
        for failed in report.failed:
            say(f"FAILED: {failed['scenario']}: {failed['check']} ({failed['detail']})")
        return 1
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    sys.exit(run_main(lambda procs: main(procs, arguments), "faults"))
