"""Many instances, one truth (issue 15, item 2): two gunicorn instances, separate process
trees with instance folders of their own (as if on two hosts), on one SecantusDB and one
Redis, started here with the dev launcher (polymicro_dev) and stopped at the end.

- A write through one instance is never read stale through the other: the projects
  list, a project (with the reader's ETag), a project's logs and its CPU metrics, each
  read first (so the reader's answer is cached), then written through the other
  instance, then read again at once; many rounds, the roles and the path prefixes
  (``/api``, ``/api/v1``) alternating.  The caches and their generations live in Redis,
  so every instance sees every write's invalidation.
- Rate limits are shared: login attempts split across the two instances (and the two
  prefixes) exhaust one budget.

- The background workers (``flask worker``, one started beside each instance, checking
  every second) make each state change once: services with a 1 s TTL and 1 s of grace
  go silent after one heartbeat, so each becomes critical and then offline with no
  request; both workers race for every change, and each change is one transition row,
  one event and one log line of the one worker that recorded it.  Nothing reads the
  catalog through the instances meanwhile (a catalog read would record the changes
  too), so every critical and offline change is a worker's.

Without ``POLYMICRO_TEST_REDIS_URL`` a private redis-server is started; with it, that
database is used (and flushed).  About 20-30 s, most of it starting the servers.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pymongo
import pytest
from bson import ObjectId

from polymicro import create_app
from polymicro.extensions import close_db
from polymicro_dev import (
    GunicornSettings,
    HttpClient,
    Processes,
    Server,
    app_env,
    ensure_redis,
    start_gunicorn,
    start_secantus,
    wait_until,
)
from polymicro_dev.processes import venv_exe
from tests.conftest import TEST_REDIS_URL, make_config, token_for

SECRET = "two-instances-share-this-signing-key-of-48-chars"
LOGIN_LIMIT = 5
ROUNDS = 24
WRONG = {"username": "nobody", "password": "wrong password"}
# Liveness on a short fuse: the workers check every second, a silent service is critical
# 2 s after its heartbeat (TTL 1 s + grace 1 s) and offline 2 s after that.
CHECK_SECONDS = 1
OFFLINE_AFTER_SECONDS = 2
SILENT_SERVICES = 12
CHANGED = "service.liveness_changed"


@dataclass
class Cluster:
    servers: list[Server]  # the two gunicorn instances
    workers: list[Server]  # a `flask worker` beside each
    mongodb_uri: str


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two running instances (1 worker x 4 threads each), each with its `flask worker`,
    on one database and one Redis."""
    workdir = tmp_path_factory.mktemp("two-instances")
    with Processes() as procs:
        database = start_secantus(procs, workdir / "db", workdir, database="polymicro_test")
        redis_url = ensure_redis(procs, workdir, TEST_REDIS_URL or None)
        env = app_env(
            database.uri,
            redis_url,
            POLYMICRO_AUTH_ENABLED="true",
            POLYMICRO_SECRET_KEY=SECRET,
            POLYMICRO_RATELIMIT_ENABLED="true",
            POLYMICRO_RATELIMIT_LOGIN=f"{LOGIN_LIMIT} per minute",
            POLYMICRO_RATELIMIT_DEFAULT="100000 per minute",
            POLYMICRO_PASSWORD_HASH_TIME_COST="1",
            POLYMICRO_PASSWORD_HASH_MEMORY_KIB="1024",
            POLYMICRO_LIVENESS_CHECK_SECONDS=str(CHECK_SECONDS),
            POLYMICRO_HEARTBEAT_OFFLINE_AFTER_SECONDS=str(OFFLINE_AFTER_SECONDS),
        )
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each instance its own (gunicorn.conf.py)
        servers = [
            start_gunicorn(
                procs,
                {**env, "POLYMICRO_INSTANCE_PATH": str(workdir / f"instance-{name}")},
                workdir,
                GunicornSettings(workers=1, threads=4),
                name=f"instance-{name}",
            )
            for name in ("a", "b")
        ]
        workers = [start_worker(procs, env, workdir, name) for name in ("a", "b")]
        yield Cluster(servers, workers, database.uri)


def start_worker(procs: Processes, env: dict, workdir: Path, name: str) -> Server:
    """``flask worker`` beside instance ``name`` (its log at INFO: one line per change it
    records); returns once it has started its loop."""
    log_path = workdir / f"worker-{name}.log"
    argv = [venv_exe("flask"), "--app", "wsgi:app", "worker"]
    worker_env = {
        **env,
        "POLYMICRO_INSTANCE_PATH": str(workdir / f"instance-{name}"),
        "POLYMICRO_LOG_LEVEL": "INFO",
    }
    worker = procs.start(f"worker-{name}", argv, 0, "", log_path, env=worker_env)
    wait_until(
        lambda: "worker started" in log_path.read_text(),
        60,
        f"worker-{name} to start its loop",
        server=worker,
    )
    return worker


@pytest.fixture(scope="module")
def instances(cluster):
    return cluster.servers


@pytest.fixture(scope="module")
def admin_headers():
    """An admin's access token, signed with the instances' key (the role travels in the
    token: no user document is needed)."""
    app = create_app(make_config(SECRET_KEY=SECRET))
    try:
        return {"Authorization": f"Bearer {token_for(app, 'admin')}"}
    finally:
        close_db()


class Instance:
    """One instance, seen by a client: JSON calls with the admin's token."""

    def __init__(self, server, headers: dict) -> None:
        self.name = server.name
        self.http = HttpClient(server.port)
        self.headers = headers

    def call(self, method: str, path: str, body=None, expect: int = 200, headers=None):
        response = self.http.request(method, path, body, {**self.headers, **(headers or {})})
        assert response.status == expect, (self.name, method, path, response.body[:300])
        return response


def test_a_write_through_one_instance_is_never_read_stale_through_the_other(
    instances, admin_headers
):
    a, b = (Instance(server, admin_headers) for server in instances)
    project = a.call("POST", "/api/v1/projects", {"name": "shared"}, 201).json()
    pid = project["id"]
    service = a.call("POST", "/api/v1/services", {"project_id": pid, "name": "api"}, 201).json()
    metric = {"project_id": pid, "service_name": "api"}
    mid = a.call("POST", "/api/v1/metrics/cpu", metric, 201).json()["id"]
    try:
        for round_ in range(ROUNDS):
            writer, reader = (a, b) if round_ % 2 == 0 else (b, a)
            w, r = ("/api/v1", "/api") if round_ % 4 < 2 else ("/api", "/api/v1")

            # The projects list.
            before = reader.call("GET", f"{r}/projects").json()
            name = f"project-{round_}"
            writer.call("POST", f"{w}/projects", {"name": name}, 201)
            after = reader.call("GET", f"{r}/projects").json()
            assert len(after) == len(before) + 1, round_
            assert name in [p["name"] for p in after], round_

            # A project, read with the ETag the reader holds.
            seen = reader.call("GET", f"{r}/projects/{pid}")
            etag = seen.headers["ETag"]
            writer.call("PATCH", f"{w}/projects/{pid}", {"description": f"round {round_}"})
            fresh = reader.call("GET", f"{r}/projects/{pid}", headers={"If-None-Match": etag})
            assert fresh.json()["description"] == f"round {round_}", round_
            assert fresh.headers["ETag"] != etag

            # A project's logs.
            logs_path = f"{r}/logs/project/{pid}"
            assert len(reader.call("GET", logs_path).json()) == round_
            entry = {
                "project_id": pid,
                "service_id": service["id"],
                "severity": "info",
                "message": f"round {round_}",
            }
            created = writer.call("POST", f"{w}/logs", entry, 201).json()
            logs = reader.call("GET", logs_path).json()
            assert len(logs) == round_ + 1, round_
            assert created["id"] in [log["id"] for log in logs], round_

            # CPU metrics of the project.
            cpu_path = f"{r}/metrics/cpu/project/{pid}"
            assert len(reader.call("GET", cpu_path).json()[0]["data"]) == round_
            point = {"load": float(round_), "memory": 10.0, "threads": 4}
            writer.call("POST", f"{w}/metrics/cpu/{mid}/data", point, 201)
            points = reader.call("GET", cpu_path).json()[0]["data"]
            assert len(points) == round_ + 1, round_
            assert float(round_) in [p["load"] for p in points], round_
    finally:
        a.http.close()
        b.http.close()


def test_the_login_limit_is_shared_by_the_instances(instances):
    clients = [HttpClient(server.port) for server in instances]
    paths = ("/api/auth/login", "/api/v1/auth/login")
    try:
        statuses = [
            clients[i % 2].request("POST", paths[i // 2 % 2], WRONG).status
            for i in range(LOGIN_LIMIT)
        ]
        assert statuses == [401] * LOGIN_LIMIT  # 3 through one instance, 2 through the other
        for client in clients:  # attempt N+1 is refused by either instance
            refused = client.request("POST", "/api/auth/login", WRONG)
            assert refused.status == 429
            assert 0 < int(refused.headers["Retry-After"]) <= 60
    finally:
        for client in clients:
            client.close()


def test_the_workers_beside_the_instances_record_each_liveness_change_once(cluster, admin_headers):
    a, b = (Instance(server, admin_headers) for server in cluster.servers)
    mongo = pymongo.MongoClient(cluster.mongodb_uri, serverSelectionTimeoutMS=5000)
    db = mongo.get_default_database()
    try:
        pid = a.call("POST", "/api/v1/projects", {"name": "silent"}, 201).json()["id"]
        ids = []
        for i in range(SILENT_SERVICES):
            through = (a, b)[i % 2]
            body = {"project_id": pid, "name": f"job-{i}", "heartbeat_ttl": 1, "heartbeat_grace": 1}
            sid = through.call("POST", "/api/services", body, 201).json()["id"]
            through.call("POST", f"/api/services/{sid}/heartbeat", {})  # then silence
            ids.append(sid)

        def rows() -> dict[str, list[dict]]:
            found = defaultdict(list)
            query = {"project_id": ObjectId(pid)}
            for row in db["liveness_transitions"].find(query).sort("version", 1):
                found[str(row["service_id"])].append(row)
            return found

        # Polled in the database: a read through an instance would record changes too.
        wait_until(
            lambda: all(r and r[-1]["after"] == "offline" for r in map(rows().get, ids)),
            30,
            "every silent service to be recorded offline",
            interval=0.2,
        )
        # Two more worker rounds: a second recording of any change would show by then.
        time.sleep(2.5 * CHECK_SECONDS)
        for worker in cluster.workers:
            worker.check_alive()

        transitions = rows()
        events = defaultdict(list)
        for event in db["events"].find({"type": CHANGED, "project_id": ObjectId(pid)}):
            events[str(event["subject"]["id"])].append(event["changes"]["liveness"])
        path = [(None, "passing"), ("passing", "critical"), ("critical", "offline")]
        for sid in ids:
            recorded = [(row["before"], row["after"]) for row in transitions[sid]]
            assert recorded == path, (sid, recorded)
            published = sorted(events[sid], key=lambda change: change["version"])
            assert [(c["before"], c["after"]) for c in published] == path, (sid, published)
            assert [c["version"] for c in published] == [r["version"] for r in transitions[sid]]

        # Every critical and offline change came from a worker, each from exactly one.
        lines = {
            worker.name: re.findall(r"is (critical|offline): ", worker.log_path.read_text())
            for worker in cluster.workers
        }
        assert sum(map(len, lines.values())) == 2 * SILENT_SERVICES, lines
    finally:
        mongo.close()
        a.http.close()
        b.http.close()
