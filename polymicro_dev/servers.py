"""The servers of the dev tooling: SecantusDB, Redis and gunicorn, on 127.0.0.1.

Each starter registers its process in a :class:`~polymicro_dev.processes.Processes`
and returns a :class:`~polymicro_dev.processes.Server` once it answers; ``server.uri``
is what a client connects to.

SecantusDB runs as its own process (``secantusd-py``), never in the tool's process:
it is GPL-2.0-only, and in-process it would share the tool's GIL with the load it
measures.
"""

from __future__ import annotations

import os
import runpy
import shutil
from dataclasses import dataclass
from pathlib import Path

import redis

from polymicro_dev.client import TRANSPORT_ERRORS, HttpClient
from polymicro_dev.processes import (
    HOST,
    ROOT,
    DevError,
    Processes,
    Server,
    free_port,
    venv_exe,
    wait_until,
)

# What the tools (bench, soak, fuzz, faults) give the app.  Authentication is off (the
# runs have no account; authorization is covered by the role-matrix tests) and so is the
# per-client rate limit (one client address sends thousands of requests a second).
TOOL_APP_ENV = {
    "POLYMICRO_AUTH_ENABLED": "false",
    "POLYMICRO_RATELIMIT_ENABLED": "false",
    "POLYMICRO_LOG_LEVEL": "WARNING",
    "POLYMICRO_GUNICORN_LOGLEVEL": "warning",
}

# The repo's gunicorn.conf.py without the access log (one line per request would
# measure the terminal, not the service).
GUNICORN_CONF = ROOT / "bench" / "gunicorn_conf.py"


def app_env(mongo_uri: str, redis_url: str | None, **overrides: str) -> dict:
    """This process's environment for the app: :data:`TOOL_APP_ENV`, the database and
    the cache, then ``overrides``; nothing inherited that would rebind or mock it."""
    env = dict(os.environ)
    for name in ("POLYMICRO_GUNICORN_BIND", "POLYMICRO_MONGODB_MOCK"):
        env.pop(name, None)
    env.update(TOOL_APP_ENV, POLYMICRO_MONGODB_URI=mongo_uri)
    if redis_url:
        env["POLYMICRO_REDIS_URL"] = redis_url
    env.update(overrides)
    return env


# --- SecantusDB ---------------------------------------------------------------------------


def start_secantus(
    procs: Processes,
    storage: Path,
    log_dir: Path,
    port: int | None = None,
    database: str = "polymicro",
) -> Server:
    """SecantusDB on ``port`` (a free one by default) with its data in ``storage`` and
    its log in ``log_dir/secantus.log``; ``uri`` names ``database``.

    Starting it again on the same storage and port is how a fault run brings the
    database back."""
    port = port or free_port()
    argv = [venv_exe("secantusd-py"), "--host", HOST, "--port", str(port)]
    argv += ["--storage-path", str(storage), "--log-level", "WARNING"]
    uri = f"mongodb://{HOST}:{port}/{database}"
    server = procs.start("SecantusDB", argv, port, uri, log_dir / "secantus.log")
    procs.wait_for_port(server)
    return server


# --- Redis --------------------------------------------------------------------------------


def start_redis(procs: Processes, workdir: Path, port: int | None = None) -> Server:
    """A private redis-server (no persistence) as a child process on ``port`` (a free
    one by default): stopping or flushing it affects nobody else on the machine."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise DevError("redis-server is not installed (apt-get install -y redis-server)")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [exe, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(workdir), "--daemonize", "no"]
    server = procs.start("Redis", argv, port, f"redis://{HOST}:{port}/0", workdir / "redis.log")
    procs.wait_for_port(server)
    return server


def ensure_redis(procs: Processes, workdir: Path, url: str | None = None) -> str:
    """The URL of an empty Redis database for one run.

    Without ``url``: a private redis-server (:func:`start_redis`).  With ``url``: that
    database, which must answer (nothing is started for it); it is flushed now and again
    when ``procs`` stops."""
    if url is None:
        return start_redis(procs, workdir / "redis").uri
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        raise DevError(f"Redis does not answer at {url}: {exc}") from None
    procs.on_stop(client.flushdb)  # leave none of the run's keys behind
    return url


# --- gunicorn -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GunicornSettings:
    workers: int = 2
    threads: int = 4
    worker_class: str = "polymicro.serving.BalancedThreadWorker"  # gunicorn.conf.py's

    @property
    def label(self) -> str:
        return f"{self.workers}x{self.threads} {self.worker_class}"


def start_gunicorn(
    procs: Processes,
    env: dict,
    log_dir: Path,
    settings: GunicornSettings | None = None,
    app: str = "wsgi:app",
    name: str = "gunicorn",
    ready_path: str = "/api/health",
    extra_args: list[str] | None = None,
    timeout: float = 60.0,
) -> Server:
    """``app`` under gunicorn (``-c`` :data:`GUNICORN_CONF`, ``settings`` on the command
    line, where they win over any config file) on a free port, its log in
    ``log_dir/<name>.log``; returns once ``ready_path`` answers 200 (the master binds
    before its workers have imported the app)."""
    settings = settings or GunicornSettings()
    port = free_port()
    argv = [venv_exe("gunicorn"), "-c", str(GUNICORN_CONF), "--bind", f"{HOST}:{port}"]
    argv += ["--workers", str(settings.workers), "--threads", str(settings.threads)]
    argv += ["--worker-class", settings.worker_class, *(extra_args or []), app]
    uri = f"http://{HOST}:{port}"
    server = procs.start(name, argv, port, uri, log_dir / f"{name}.log", env=env)
    wait_ready(server, ready_path, timeout)
    return server


def read_gunicorn_conf(env: dict) -> dict:
    """The settings gunicorn.conf.py gives a server started with ``env``: the file run in
    this process with ``env`` as the environment, which is restored after.  A placeholder
    ``PROMETHEUS_MULTIPROC_DIR`` (unless ``env`` names one) keeps the read from making
    the private directory a started server makes."""
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update({"PROMETHEUS_MULTIPROC_DIR": "(read only)", **env})
        return runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def listens_with_reuse_port(env: dict) -> bool:
    """Whether gunicorn.conf.py gives reuse_port (a socket per worker) to a server started
    with ``env``: its POLYMICRO_GUNICORN_REUSE_PORT (false when unset).  The benchmarks
    print it beside the workers' spread."""
    return bool(read_gunicorn_conf(env)["reuse_port"])


def wait_ready(server: Server, path: str, timeout: float = 60.0) -> float:
    """Wait until GET ``path`` answers 200; returns the seconds it took."""

    def ready() -> bool:
        with HttpClient(server.port, timeout=5) as client:
            try:
                return client.request("GET", path).status == 200
            except TRANSPORT_ERRORS:
                return False

    return wait_until(ready, timeout, f"{server.name} to answer 200 on {path}", server=server)
