"""Serve polymicro on this machine: ``make run`` (gunicorn) and ``make dev`` (the reloader).

    python -m polymicro_dev.serve          # make run: gunicorn -c gunicorn.conf.py
    python -m polymicro_dev.serve --dev    # make dev: flask --app polymicro run --debug

1. Unless POLYMICRO_MONGODB_URI is set, start SecantusDB on 127.0.0.1 with its data in
   var/db and its log in var/secantus.log (port 27018, or the next free one).  One server
   per storage directory: var/secantus.pid holds "SECANTUS_PID OWNER_PID"; a second run
   is refused while the first is alive, and a server left behind by a dead run is stopped.
2. ``flask --app polymicro seed-demo --if-empty``, then ``flask --app polymicro worker``
   (the background worker, log in var/worker.log).
3. The app on 127.0.0.1:POLYMICRO_PORT (default 8000, the next free port if busy):
   gunicorn, or with ``--dev`` Flask's development server with the reloader and the
   debugger, which restarts on every saved change of the code.

Ctrl-C (exit 0) or SIGTERM (exit 143) stops the app and the SecantusDB this run started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from polymicro_dev.processes import (
    HOST,
    ROOT,
    DevError,
    Processes,
    Server,
    Stopped,
    exit_status,
    free_port_from,
    handle_signals,
    ignore_signals,
    venv_exe,
)
from polymicro_dev.servers import start_secantus

VAR = ROOT / "var"
DB_DIR = VAR / "db"
PID_FILE = VAR / "secantus.pid"
DB_PORT = 27018
APP_PORT = 8000


def say(text: str) -> None:
    with contextlib.suppress(OSError):  # the terminal or a pipe may be gone
        print(f"run: {text}", flush=True)


# --- the embedded database ------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    """The command line of a live process ("" when there is none, or only a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return ""
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, IndexError):
        return ""


def _stop_stale(pid: int) -> None:
    """SIGTERM, up to 30 s, then SIGKILL: a server no process of ours started."""
    say(f"stopping the SecantusDB (pid {pid}) that an earlier run left behind")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _cmdline(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _cmdline(pid):
        os.kill(pid, signal.SIGKILL)


def _claim_storage() -> None:
    """Refuse while another run uses var/db; stop a server that a dead run left."""
    try:
        fields = PID_FILE.read_text().split()
    except OSError:
        return
    server, owner = (int(f) if f.isdigit() else 0 for f in [*fields, "", ""][:2])
    if owner and "polymicro_dev.serve" in _cmdline(owner):
        raise DevError(f"another 'make run' or 'make dev' (pid {owner}) uses {DB_DIR}")
    if server and "secantusd" in _cmdline(server):
        _stop_stale(server)
    PID_FILE.unlink(missing_ok=True)


def start_database(procs: Processes) -> str:
    """The embedded SecantusDB of make run and make dev; returns its URI."""
    VAR.mkdir(exist_ok=True)
    _claim_storage()
    port = free_port_from(DB_PORT)
    say(f"starting SecantusDB on {HOST}:{port} (data in var/db, log in var/secantus.log)")
    server = start_secantus(procs, DB_DIR, VAR, port=port)
    PID_FILE.write_text(f"{server.proc.pid} {os.getpid()}\n")
    procs.on_stop(lambda: PID_FILE.unlink(missing_ok=True))
    return server.uri


# --- the app --------------------------------------------------------------------------------


def start_app(procs: Processes, env: dict, port: int, dev: bool) -> Server:
    """gunicorn (``dev`` False) or ``flask run --debug``, its output on our terminal."""
    if dev:
        argv = [venv_exe("flask"), "--app", "polymicro", "run", "--debug"]
        argv += ["--host", HOST, "--port", str(port)]
        name = "flask run --debug"
    else:
        argv = [venv_exe("gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")]
        argv += ["--bind", f"{HOST}:{port}", "wsgi:app"]
        name = "gunicorn"
    server = procs.start(name, argv, port, f"http://{HOST}:{port}", None, env=env)
    procs.wait_for_port(server, timeout=60)
    return server


def start_worker(procs: Processes, env: dict) -> Server:
    """``flask worker``: the one background process (liveness deadlines, alerts,
    webhooks, retention); its log in var/worker.log."""
    argv = [venv_exe("flask"), "--app", "polymicro", "worker"]
    say("starting the background worker (flask worker; log in var/worker.log)")
    return procs.start("worker", argv, 0, "", VAR / "worker.log", env=env)


def banner(port: int, env: dict, dev: bool) -> None:
    base = f"http://{HOST}:{port}"
    lines = [
        "",
        f"polymicro is serving on {base}  (Swagger UI: {base}/docs) — Ctrl-C stops everything",
        f"probes: /api/health/live, /api/health/ready; Prometheus metrics: {base}/metrics",
    ]
    if dev:
        lines.append("make dev: the app restarts on every saved change of polymicro/")
    # seed-demo keeps the demo admin's generated password in the instance folder.
    creds = Path(env.get("POLYMICRO_INSTANCE_PATH") or ROOT / "instance") / "demo-admin.txt"
    try:
        user, password = creds.read_text().split()[:2]
        lines.append(f"log in: POST /api/auth/login with username '{user}', password '{password}'")
        lines.append(f"        (or Authorize in the Swagger UI; from {creds})")
    except (OSError, ValueError):
        lines.append("log in: create an admin with: .venv/bin/flask --app polymicro create-admin")
    if env.get("POLYMICRO_AUTH_ENABLED", "true").strip().lower() == "false":
        lines.append("WARNING: POLYMICRO_AUTH_ENABLED=false: no login needed, and none is checked")
    for line in [*lines, ""]:
        print(line, flush=True)


def serve(procs: Processes, dev: bool) -> int:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if env.get("POLYMICRO_MONGODB_URI"):
        say("using POLYMICRO_MONGODB_URI as given; no embedded database is started")
    else:
        env["POLYMICRO_MONGODB_URI"] = start_database(procs)
    seed = [venv_exe("flask"), "--app", "polymicro", "seed-demo", "--if-empty"]
    if subprocess.run(seed, cwd=ROOT, env=env, check=False).returncode != 0:
        raise DevError("flask seed-demo --if-empty failed (its message is above)")
    wanted = int(env.get("POLYMICRO_PORT") or APP_PORT)
    port = free_port_from(wanted)
    if port != wanted:
        say(f"port {wanted} is busy; using {port}")
    start_worker(procs, env)
    app = start_app(procs, env, port, dev)
    banner(port, env, dev)
    return app.proc.wait()  # until the app exits, or a signal raises here


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polymicro_dev.serve", description=__doc__)
    parser.add_argument("--dev", action="store_true", help="flask run --debug (the reloader)")
    args = parser.parse_args(argv)
    handle_signals()
    procs = Processes()
    try:
        return serve(procs, args.dev)
    except DevError as exc:
        print(f"run: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C is the normal way to stop: not an error
        return exit_status(exc) if isinstance(exc, Stopped) else 0
    finally:
        ignore_signals()
        started = procs.servers
        procs.stop_all()
        if started:
            say("stopped")


if __name__ == "__main__":
    sys.exit(main())
