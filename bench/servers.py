"""Processes the benchmark starts (SecantusDB, gunicorn, Redis when absent) and stops.

Every server is started in its own session (so a Ctrl-C in the terminal reaches only
bench/run.py, which then stops them in order) and registered in a :class:`Processes`,
whose :meth:`Processes.stop_all` ends each one by its process group: SIGTERM, then
SIGKILL after a grace period.  Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
VENV_BIN = ROOT / ".venv" / "bin"
HOST = "127.0.0.1"
STOP_GRACE_S = 15.0


class BenchError(Exception):
    """Something broke (a server did not start, a request failed): no measurement."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    url: str = field(init=False)

    def __post_init__(self):
        self.url = f"http://{HOST}:{self.port}"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.name} exited with code {self.proc.returncode}; "
                f"last lines of {self.log_path}:\n{tail(self.log_path)}"
            )


class Processes:
    """Every process this run started, stopped in reverse order by :meth:`stop_all`."""

    def __init__(self) -> None:
        self._servers: list[Server] = []

    def start(
        self, name: str, argv: list[str], port: int, log_path: Path, env: dict | None = None
    ) -> Server:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped by us, not by ^C
            )
        server = Server(name, proc, port, log_path)
        self._servers.append(server)
        return server

    def wait_for_port(self, server: Server, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server.check_alive()
            if accepts(server.port):
                return
            time.sleep(0.1)
        raise BenchError(
            f"{server.name} did not accept connections on {HOST}:{server.port} within "
            f"{timeout:.0f} s; last lines of {server.log_path}:\n{tail(server.log_path)}"
        )

    def stop(self, server: Server) -> None:
        """SIGTERM to the server's process group, SIGKILL if it is still there later."""
        if server in self._servers:
            self._servers.remove(server)
        proc = server.proc
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                print(f"bench: {server.name} did not stop in {STOP_GRACE_S:.0f} s; killing it")
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        # Workers left behind by a master that died still carry its process group id.
        _signal_group(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for server in reversed(list(self._servers)):
            try:
                self.stop(server)
            except Exception as exc:  # keep stopping the others
                print(f"bench: could not stop {server.name} (pid {server.proc.pid}): {exc}")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# --- the servers ------------------------------------------------------------------------


def start_secantus(procs: Processes, storage: Path, log_dir: Path) -> Server:
    exe = VENV_BIN / "secantusd-py"
    if not exe.exists():
        raise BenchError(f"{exe} is missing; run 'make venv'")
    port = free_port()
    argv = [str(exe), "--host", HOST, "--port", str(port), "--storage-path", str(storage)]
    argv += ["--log-level", "WARNING"]
    server = procs.start("SecantusDB", argv, port, log_dir / "secantus.log")
    procs.wait_for_port(server)
    return server


@dataclass
class GunicornSettings:
    workers: int
    threads: int
    worker_class: str

    @property
    def label(self) -> str:
        return f"{self.workers}x{self.threads} {self.worker_class}"


def start_gunicorn(
    procs: Processes,
    name: str,
    app: str,
    settings: GunicornSettings,
    log_dir: Path,
    env: dict,
    ready_path: str,
    pythonpath: Path | None = None,
) -> Server:
    """gunicorn with bench/gunicorn_conf.py (the repo's settings, no access log), on a
    free port; returns once ``ready_path`` answers 200."""
    port = free_port()
    argv = [str(VENV_BIN / "gunicorn"), "-c", str(BENCH_DIR / "gunicorn_conf.py")]
    argv += ["--bind", f"{HOST}:{port}", "--workers", str(settings.workers)]
    argv += ["--threads", str(settings.threads), "--worker-class", settings.worker_class]
    if pythonpath is not None:
        argv += ["--pythonpath", str(pythonpath)]
    argv.append(app)
    server = procs.start(name, argv, port, log_dir / f"{name}.log", env=env)
    procs.wait_for_port(server)
    _wait_ready(server, ready_path)
    return server


def _wait_ready(server: Server, path: str, timeout: float = 60.0) -> None:
    """The master binds before its workers have imported the app: wait for a 200."""
    import http.client

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        server.check_alive()
        conn = http.client.HTTPConnection(HOST, server.port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status == 200:
                return
            last = f"{response.status} {body[:300]!r}"
        except OSError as exc:
            last = repr(exc)
        finally:
            conn.close()
        time.sleep(0.2)
    raise BenchError(
        f"{server.name} did not answer 200 on {path} within {timeout:.0f} s (last: {last}); "
        f"last lines of {server.log_path}:\n{tail(server.log_path)}"
    )


# --- Redis ----------------------------------------------------------------------------------

REDIS_START = [
    "redis-server",
    "--daemonize", "yes",
    "--bind", "127.0.0.1", "-::1",
    "--port", "6379",
    "--save", "",
    "--appendonly", "no",
    "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def ensure_redis(url: str) -> tuple[redis.Redis, bool]:
    """A client for ``url``'s database, flushed; starts the machine's Redis on 6379 when
    it does not answer.  Returns (client, whether this run started the server)."""
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    started = False
    try:
        client.ping()
    except redis.ConnectionError:
        if shutil.which("redis-server") is None:
            raise BenchError(
                f"Redis does not answer at {url} and redis-server is not installed "
                "(apt-get install -y redis-server)"
            ) from None
        print("bench: Redis does not answer; starting redis-server on 127.0.0.1:6379")
        for folder in ("/var/lib/redis", "/var/log/redis"):
            Path(folder).mkdir(parents=True, exist_ok=True)
        subprocess.run(REDIS_START, check=True, stdout=subprocess.DEVNULL)
        started = True
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise BenchError("redis-server started but does not answer") from None
                time.sleep(0.1)
    client.flushdb()
    return client, started


def stop_redis(client: redis.Redis) -> None:
    """Shut down the Redis server this run started (it runs daemonized, not as a child)."""
    # The expected answer is a ConnectionError: the server closes it while exiting.
    with contextlib.suppress(redis.ConnectionError):
        client.shutdown(nosave=True)
