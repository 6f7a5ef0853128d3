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

The third promise of the issue, that the background workers (``flask --app polymicro
worker``, one beside each instance) make each state change once, has no assertion here
yet: ``polymicro/worker.py`` registers no job so far (``jobs()`` is empty), so there is
no transition to count.  The first job that changes state should add it here.

Without ``POLYMICRO_TEST_REDIS_URL`` a private redis-server is started; with it, that
database is used (and flushed).  About 10-20 s, most of it starting the servers.
"""

from __future__ import annotations

import pytest

from polymicro import create_app
from polymicro.extensions import close_db
from polymicro_dev import (
    GunicornSettings,
    HttpClient,
    Processes,
    app_env,
    ensure_redis,
    start_gunicorn,
    start_secantus,
)
from tests.conftest import TEST_REDIS_URL, make_config, token_for

SECRET = "two-instances-share-this-signing-key-of-48-chars"
LOGIN_LIMIT = 5
ROUNDS = 24
WRONG = {"username": "nobody", "password": "wrong password"}


@pytest.fixture(scope="module")
def instances(tmp_path_factory):
    """Two running instances (1 worker x 4 threads each) on one database and one Redis."""
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
        yield servers


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
