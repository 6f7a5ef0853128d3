"""gunicorn settings for polymicro (`gunicorn -c gunicorn.conf.py wsgi:app`).

Every value can be overridden from the environment; a `--bind` on the command line
(as scripts/run.sh passes) wins over POLYMICRO_GUNICORN_BIND.

Tracing (OpenTelemetry, on when OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set): `post_fork` sets up the tracer provider in
each worker, right after the fork, so that its BatchSpanProcessor's export thread lives
in the process whose spans it sends; `worker_exit` sends what is still queued.  The app
is not preloaded (no `preload_app`): each worker imports wsgi.py itself, after
`post_fork`, and its `create_app` finds tracing started (polymicro/observability/
tracing.py).  The master imports the polymicro package only for the worker class
(polymicro/serving.py); that import connects to nothing and starts nothing.

Prometheus metrics from several workers: each worker writes its counters to files in
PROMETHEUS_MULTIPROC_DIR and /metrics sums them all (polymicro/observability/metrics.py).
This file sets that variable before any worker starts (prometheus_client reads it when it is
first imported): to a fresh private temporary directory, removed when gunicorn exits,
unless it is set already, in which case that directory is emptied at start (so counters
restart from zero with the server, never from a previous run's files).
"""

import os
import shutil
import tempfile
from pathlib import Path


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


# The Docker image sets POLYMICRO_GUNICORN_BIND=0.0.0.0:8000; outside a container
# the default stays on loopback.
bind = [os.environ.get("POLYMICRO_GUNICORN_BIND", "127.0.0.1:8000")]

# From make bench --sweep 1x8,2x4,2x8,4x2 on the 2-core reference machine (README,
# Performance): the combinations differed by less than the machine's noise; 2 workers x
# 4 threads uses both cores for the Python work and lets each worker overlap its
# database and Redis waits, and more workers only add memory and contention.
# gunicorn's gthread, accepting from the shared socket by fewest connections
# (polymicro/serving.py): plain gthread put 6 or more of 8 simultaneous keep-alive
# connections on one of two workers in 16 of 40 trials, this worker 4:4 in 40 of 40.
worker_class = "polymicro.serving.BalancedThreadWorker"
# Without Redis the cache is an in-process SimpleCache: each worker would keep its own
# copy and a write through one worker would not invalidate the others'.  So without
# POLYMICRO_REDIS_URL the default is a single (threaded) worker, whose cache is coherent.
_shared_cache = bool(os.environ.get("POLYMICRO_REDIS_URL", "").strip())
workers = _int_env("POLYMICRO_GUNICORN_WORKERS", 2 if _shared_cache else 1)
threads = _int_env("POLYMICRO_GUNICORN_THREADS", 4)

# POLYMICRO_GUNICORN_REUSE_PORT (false | true | auto).  false (the default): one listening
# socket shared by the workers, each accepting only while no sibling holds fewer
# connections (the worker class above), so connections spread evenly.  true: a socket per
# worker (SO_REUSEPORT), the kernel hashing each new connection onto one: 8 connections land
# 7:1 or 8:0 with odds of 18 in 256.  And a worker's own socket dies with it: when a worker
# is killed (OOM, a crash, the timeout below) the connections waiting in its accept queue
# are reset, unless the kernel hands them to a sibling socket (net.ipv4.tcp_migrate_req = 1,
# Linux >= 5.14); make faults saw 3 of 4 runs of its worker-kill scenario lose requests
# that way.  auto: true only where the kernel migrates those connections.
_MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def _reuse_port(value: str) -> bool:
    choice = value.strip().lower() or "false"
    if choice == "auto":
        try:
            return _MIGRATE_REQ.read_text().strip() == "1"
        except OSError:
            return False
    if choice in ("true", "false"):
        return choice == "true"
    raise RuntimeError(
        f"invalid POLYMICRO_GUNICORN_REUSE_PORT: expected auto, true or false, got {value!r}"
    )


reuse_port = _reuse_port(os.environ.get("POLYMICRO_GUNICORN_REUSE_PORT", "false"))

# Log filters (a `q` of up to 1,000 characters, several of them) can make a request line
# longer than gunicorn's default 4,094 bytes, which gunicorn would answer itself (414).
limit_request_line = 8190

timeout = 30
graceful_timeout = 10

# gunicorn >= 27 opens a control socket in ~/.gunicorn by default; nothing here uses
# it, and two servers on one machine would share the path. (Older versions ignore this.)
control_socket_disable = True

# --- logs -------------------------------------------------------------------------------
# The application writes one access line per request itself (logger polymicro.access:
# method, path, status, duration, request id; JSON with POLYMICRO_LOG_FORMAT=json), so
# gunicorn's own access log would only repeat it without the request id.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("POLYMICRO_GUNICORN_LOGLEVEL", "info")

if os.environ.get("POLYMICRO_LOG_FORMAT", "").strip().lower() == "json":
    # gunicorn's own lines (start, worker boot/exit, timeouts) as JSON objects too, in
    # the application's shape, so that every line of the output parses.  The root
    # logger gets no handler here: each worker's app installs its own.
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "polymicro.observability.RequestIdFilter"}},
        "formatters": {"json": {"()": "polymicro.observability.json_formatter"}},
        "handlers": {
            "json_stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": []},
        "loggers": {
            "gunicorn.error": {
                "level": loglevel.upper(),
                "handlers": ["json_stderr"],
                "propagate": False,
            },
            "gunicorn.access": {"handlers": [], "propagate": False},
        },
    }

# --- Prometheus multiprocess mode -------------------------------------------------------
# Set at import, in the master, before it forks any worker (gunicorn reads this file
# first).  A reload (SIGHUP) reads it again and finds the variable already set.
_PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Remembered in the environment, not in a variable: a reload re-runs this file.
_OWNED_DIR_ENV = "POLYMICRO_OWNED_PROMETHEUS_DIR"
if not os.environ.get(_PROMETHEUS_DIR_ENV):
    os.environ[_PROMETHEUS_DIR_ENV] = tempfile.mkdtemp(prefix="polymicro-prometheus-")
    os.environ[_OWNED_DIR_ENV] = os.environ[_PROMETHEUS_DIR_ENV]


def on_starting(server):
    """Once, in the master, before the first worker: an empty metrics directory."""
    path = Path(os.environ[_PROMETHEUS_DIR_ENV])
    path.mkdir(parents=True, exist_ok=True)
    stale = list(path.glob("*.db"))
    for file in stale:
        file.unlink(missing_ok=True)
    server.log.info(
        "Prometheus multiprocess directory %s (%d stale files removed)", path, len(stale)
    )


def post_fork(server, worker):
    """In the worker, right after the fork: tracing, when configured (see above)."""
    from polymicro.observability.tracing import start_tracing

    start_tracing()


def worker_exit(server, worker):
    """In the worker, as it exits: send the spans still queued."""
    from polymicro.observability.tracing import flush_tracing

    flush_tracing()


def child_exit(server, worker):
    """In the master, after a worker exits: drop its live gauges (counters stay summed)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """The directory this file created goes with the server; one given is left in place."""
    owned = os.environ.get(_OWNED_DIR_ENV)
    if owned and owned == os.environ.get(_PROMETHEUS_DIR_ENV):
        shutil.rmtree(owned, ignore_errors=True)
