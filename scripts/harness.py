"""The service stack for the reliability runs (scripts/fuzz.py, scripts/faults.py,
bench/soak.py): a fresh SecantusDB, a Redis and gunicorn, all on 127.0.0.1.

Builds on bench/servers.py: every process is started in its own process group, registered
in a ``Processes`` and stopped by ``stop_all`` (SIGTERM, then SIGKILL after a grace period),
also when the run fails or is interrupted (``run_main`` turns SIGTERM/SIGHUP into an exit
that unwinds through the caller's ``finally``).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from servers import (  # noqa: E402 - bench/ is put on the path just above
    BENCH_DIR,
    HOST,
    VENV_BIN,
    BenchError,
    Processes,
    Server,
    free_port,
    tail,
)

__all__ = [
    "HOST",
    "ROOT",
    "BenchError",
    "Processes",
    "Server",
    "app_env",
    "free_port",
    "gunicorn_workers",
    "request",
    "rss_kib",
    "run_main",
    "start_app",
    "start_redis",
    "start_secantus",
    "tail",
    "wait_until",
]

# What every reliability run gives the app.  Authentication is off (the runs have no
# account; authorization is covered by the role-matrix tests) and so is the per-client
# rate limit (one client address sends thousands of requests).
APP_ENV = {
    "POLYMICRO_AUTH_ENABLED": "false",
    "POLYMICRO_RATELIMIT_ENABLED": "false",
    "POLYMICRO_LOG_LEVEL": "WARNING",
    "POLYMICRO_GUNICORN_LOGLEVEL": "warning",
}


def app_env(mongo_uri: str, redis_url: str, **overrides: str) -> dict:
    env = dict(os.environ)
    for name in ("POLYMICRO_GUNICORN_BIND", "POLYMICRO_MONGODB_MOCK"):
        env.pop(name, None)
    env.update(APP_ENV)
    env.update(POLYMICRO_MONGODB_URI=mongo_uri, POLYMICRO_REDIS_URL=redis_url)
    env.update(overrides)
    return env


def start_secantus(
    procs: Processes, storage: Path, log_dir: Path, port: int | None = None
) -> Server:
    """SecantusDB on ``port`` (a free one by default) with its data in ``storage``.

    Starting it again on the same storage and port is how a fault run brings the
    database back."""
    exe = VENV_BIN / "secantusd-py"
    if not exe.exists():
        raise BenchError(f"{exe} is missing; run 'make venv'")
    port = port or free_port()
    argv = [str(exe), "--host", HOST, "--port", str(port), "--storage-path", str(storage)]
    argv += ["--log-level", "WARNING"]
    server = procs.start("SecantusDB", argv, port, log_dir / "secantus.log")
    procs.wait_for_port(server)
    return server


def start_redis(procs: Processes, workdir: Path, port: int | None = None) -> Server:
    """A private redis-server (no persistence) as a child process: stopping it affects
    nobody else using the machine's Redis."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise BenchError("redis-server is not installed (apt-get install -y redis-server)")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [exe, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(workdir), "--daemonize", "no"]
    server = procs.start("Redis", argv, port, workdir / "redis.log")
    procs.wait_for_port(server)
    return server


def start_app(
    procs: Processes,
    log_dir: Path,
    env: dict,
    workers: int = 2,
    threads: int = 4,
    extra_args: list[str] | None = None,
    ready_path: str = "/api/health",
) -> Server:
    """polymicro under gunicorn (``-c bench/gunicorn_conf.py``: the repo's settings without
    the access log) on a free port; returns once ``ready_path`` answers 200."""
    port = free_port()
    argv = [str(VENV_BIN / "gunicorn"), "-c", str(BENCH_DIR / "gunicorn_conf.py")]
    argv += ["--bind", f"{HOST}:{port}", "--workers", str(workers), "--threads", str(threads)]
    argv += ["--worker-class", "gthread", *(extra_args or []), "wsgi:app"]
    server = procs.start("gunicorn", argv, port, log_dir / "gunicorn.log", env=env)
    procs.wait_for_port(server)
    wait_until(
        lambda: request(port, "GET", ready_path, timeout=5)[0] == 200,
        timeout=60,
        what=f"gunicorn to answer 200 on {ready_path}",
        server=server,
    )
    return server


def request(
    port: int,
    method: str,
    path: str,
    payload=None,
    timeout: float = 30.0,
    headers: dict | None = None,
) -> tuple[int, object]:
    """One request on a new connection; (status, decoded JSON or raw bytes).  A
    connection error is status 0 with the exception as the body."""
    body = None if payload is None else json.dumps(payload).encode()
    sent = {"Content-Type": "application/json"} if body is not None else {}
    sent.update(headers or {})
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return 0, exc
    finally:
        conn.close()
    try:
        return response.status, json.loads(data) if data else None
    except ValueError:
        return response.status, data


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    server: Server | None = None,
    interval: float = 0.2,
) -> float:
    """Poll ``condition`` until it is true; returns the seconds it took."""
    started = time.monotonic()
    while True:
        if server is not None:
            server.check_alive()
        try:
            if condition():
                return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > timeout:
            where = f"; last lines of {server.log_path}:\n{tail(server.log_path)}" if server else ""
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}{where}")
        time.sleep(interval)


def gunicorn_workers(master_pid: int) -> list[int]:
    """The pids of the worker processes of a gunicorn master (its children)."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    try:
        return sorted(int(pid) for pid in children.read_text().split())
    except OSError:
        pass
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master_pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def rss_kib(pid: int) -> int | None:
    """Resident set size of a process (VmRSS in /proc/<pid>/status), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _exit_on_signal(signum, _frame):
    # SystemExit unwinds through the caller's finally, which stops every server.
    print(f"stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def run_main(main: Callable[[Processes], int], name: str) -> int:
    """Run ``main(procs)``; whatever happens, stop every process it started.

    Exit status: main's, 1 on a BenchError (something did not start or a check broke the
    run), 130/143 when interrupted."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    procs = Processes()
    try:
        return main(procs)
    except BenchError as exc:
        print(f"{name}: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        procs.stop_all()
