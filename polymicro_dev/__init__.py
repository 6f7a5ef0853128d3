"""The launcher of polymicro's dev tooling (bench/, scripts/, the test fixtures, make
run and make dev): start SecantusDB, Redis and gunicorn on 127.0.0.1, talk HTTP to the
app, and stop everything at the end.

Installed with the package (``pip install -e .[dev]``), so every tool imports it by name.
The application never imports it, and it works from a checkout only (it finds
``gunicorn.conf.py`` and ``bench/`` beside itself).

- :mod:`polymicro_dev.processes`: :class:`Processes` (the group that stops everything:
  SIGTERM, then SIGKILL; on exit and on signals), :func:`run_main`, :func:`free_port`,
  :func:`wait_until`.
- :mod:`polymicro_dev.servers`: :func:`start_secantus`, :func:`start_redis` /
  :func:`ensure_redis`, :func:`start_gunicorn`, :func:`app_env`.
- :mod:`polymicro_dev.client`: :class:`HttpClient`, the one HTTP client.
- :mod:`polymicro_dev.serve`: ``make run`` and ``make dev``.
"""

from polymicro_dev.client import (
    TRANSPORT_ERRORS,
    HttpClient,
    Response,
    encode,
    request_once,
)
from polymicro_dev.processes import (
    HOST,
    ROOT,
    DevError,
    Processes,
    Server,
    Stopped,
    child_pids,
    free_port,
    handle_signals,
    rss_kib,
    run_main,
    tail,
    wait_until,
)
from polymicro_dev.servers import (
    TOOL_APP_ENV,
    GunicornSettings,
    app_env,
    ensure_redis,
    listens_with_reuse_port,
    read_gunicorn_conf,
    start_gunicorn,
    start_redis,
    start_secantus,
)

__all__ = [
    "HOST",
    "ROOT",
    "TOOL_APP_ENV",
    "TRANSPORT_ERRORS",
    "DevError",
    "GunicornSettings",
    "HttpClient",
    "Processes",
    "Response",
    "Server",
    "Stopped",
    "app_env",
    "child_pids",
    "encode",
    "ensure_redis",
    "free_port",
    "handle_signals",
    "listens_with_reuse_port",
    "read_gunicorn_conf",
    "request_once",
    "rss_kib",
    "run_main",
    "start_gunicorn",
    "start_redis",
    "start_secantus",
    "tail",
    "wait_until",
]
