"""Child processes of the dev tooling, and the group that stops them all.

Every server is started in its own session, so a Ctrl-C typed in the terminal reaches
only the tool (which then stops its servers in order) and a server's own children
(gunicorn's workers, the reloader's child) are stopped with it: :meth:`Processes.stop`
signals the whole process group, SIGTERM first, SIGKILL after a grace period.

A :class:`Processes` stops everything it started when it is left as a context manager,
when :meth:`Processes.stop_all` is called, and at interpreter exit (``atexit``).
:func:`handle_signals` turns SIGTERM and SIGHUP into :class:`Stopped`, a
``KeyboardInterrupt``, so they unwind like Ctrl-C through every ``finally`` (and through
pytest's fixture teardown) instead of killing the tool and orphaning its servers.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout (installed with pip -e)
HOST = "127.0.0.1"
STOP_GRACE_S = 15.0


class DevError(Exception):
    """A server did not start, or a request of the tooling failed: the run cannot go on."""


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread the way Ctrl-C raises
    KeyboardInterrupt (``signum`` says which)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, _frame):
    raise Stopped(signum)


def handle_signals() -> None:
    """Ctrl-C, SIGTERM and SIGHUP raise in the main thread (KeyboardInterrupt or
    :class:`Stopped`); Ctrl-C does so even where the shell started us with SIGINT
    ignored (a background job)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_stopped)
    signal.signal(signal.SIGHUP, _raise_stopped)


def ignore_signals() -> None:
    """While stopping: a second Ctrl-C must not cut the clean-up short (it is bounded by
    the SIGKILL after :data:`STOP_GRACE_S`)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def exit_status(exc: KeyboardInterrupt) -> int:
    """The shell's status for a run ended by a signal: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def free_port_from(start: int, tries: int = 200) -> int:
    """``start`` if nothing listens there, else the next port that is free."""
    for port in range(start, min(start + tries, 65536)):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    raise DevError(f"no free TCP port on {HOST} from {start} to {start + tries - 1}")


def accepts(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path | None, lines: int = 20) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def venv_exe(name: str) -> str:
    """A program of this virtualenv (beside the running Python)."""
    exe = Path(sys.executable).with_name(name)
    if not exe.exists():
        raise DevError(f"{exe} is missing; run 'make venv'")
    return str(exe)


@dataclass(eq=False)
class Server:
    """A started process that listens on ``port``; ``uri`` is how a client reaches it."""

    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path | None
    uri: str

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            where = f"; last lines of {self.log_path}:\n{tail(self.log_path)}"
            raise DevError(f"{self.name} exited with code {self.proc.returncode}{where}")

    def failure(self, what: str) -> DevError:
        """A DevError about this server, with the end of its log."""
        if self.log_path is None:
            return DevError(f"{self.name}: {what}")
        return DevError(
            f"{self.name}: {what}; last lines of {self.log_path}:\n{tail(self.log_path)}"
        )


class Processes:
    """Every process a tool started, stopped in reverse order by :meth:`stop_all`
    (then the callbacks given to :meth:`on_stop`, newest first)."""

    def __init__(self) -> None:
        self._servers: list[Server] = []
        self._callbacks: list[Callable[[], object]] = []
        atexit.register(self.stop_all)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    @property
    def servers(self) -> list[Server]:
        """The servers started and not stopped yet, oldest first."""
        return list(self._servers)

    def start(
        self,
        name: str,
        argv: list[str],
        port: int,
        uri: str,
        log_path: Path | None,
        env: dict | None = None,
    ) -> Server:
        """Start ``argv`` in its own session, output appended to ``log_path`` (or to our
        terminal when None); it is not waited for (see :meth:`wait_for_port`)."""
        if log_path is None:
            out = contextlib.nullcontext(None)
        else:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = log_path.open("ab")
        with out as log:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=None if log is None else subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped by us, not by ^C
            )
        server = Server(name, proc, port, log_path, uri)
        self._servers.append(server)
        return server

    def wait_for_port(self, server: Server, timeout: float = 30.0) -> None:
        wait_until(
            lambda: accepts(server.port),
            timeout,
            f"{server.name} to accept connections on {HOST}:{server.port}",
            server=server,
            interval=0.1,
        )

    def stop(self, server: Server, sig: signal.Signals = signal.SIGTERM) -> None:
        """``sig`` (SIGTERM) to the server's process group, SIGKILL if it is still there
        after :data:`STOP_GRACE_S`."""
        if server in self._servers:
            self._servers.remove(server)
        proc = server.proc
        if proc.poll() is None:
            signal_group(proc.pid, sig)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                print(f"{server.name} did not stop in {STOP_GRACE_S:.0f} s; killing it", flush=True)
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        # Workers left behind by a master that died still carry its process group id.
        signal_group(proc.pid, signal.SIGKILL)

    def on_stop(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` in :meth:`stop_all`, after the servers are stopped."""
        self._callbacks.append(callback)

    def stop_all(self) -> None:
        for server in reversed(list(self._servers)):
            try:
                self.stop(server)
            except Exception as exc:  # keep stopping the others
                print(f"could not stop {server.name} (pid {server.proc.pid}): {exc}", flush=True)
        while self._callbacks:
            callback = self._callbacks.pop()
            try:
                callback()
            except Exception as exc:  # keep cleaning up
                print(f"clean-up failed: {exc!r}", flush=True)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    server: Server | None = None,
    interval: float = 0.2,
) -> float:
    """Poll ``condition`` until it is true (an OSError counts as false); returns the
    seconds it took.  DevError on timeout, or as soon as ``server`` has exited."""
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
            message = f"timed out after {timeout:.0f} s waiting for {what}"
            raise server.failure(message) if server else DevError(message)
        time.sleep(interval)


def run_main(main: Callable[[Processes], int], name: str) -> int:
    """Run ``main(procs)`` with :func:`handle_signals`; whatever happens, stop every
    process it started.

    Exit status: main's; 1 on a DevError (something did not start, or a request the run
    relies on failed); 130/143/129 when interrupted by Ctrl-C/SIGTERM/SIGHUP."""
    handle_signals()
    procs = Processes()
    try:
        return main(procs)
    except DevError as exc:
        print(f"{name}: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as exc:
        print(f"{name}: interrupted ({exc or 'SIGINT'})", file=sys.stderr, flush=True)
        return exit_status(exc)
    finally:
        ignore_signals()
        procs.stop_all()


# --- gunicorn's workers, seen from outside ------------------------------------------------


def child_pids(parent: int) -> list[int]:
    """The pids of a process's children (a gunicorn master's workers)."""
    children = Path(f"/proc/{parent}/task/{parent}/children")
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
        if int(fields[1]) == parent:
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
