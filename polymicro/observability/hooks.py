"""The per-request hooks: request id, access line, request metrics.

Three functions per app, placed so that every request gets them, including one that
another hook answers early (415, 401, 429): the first ``before_request`` (start: clock,
request id), the last ``after_request`` (the ``X-Request-ID`` header, then the access
line and the metrics, once) and the last teardown (a request whose exception escaped
every handler is still logged and counted, as a 500; then the id is cleared).  Log lines
written by the other hooks, the view and the other teardowns carry the id.

Kept cheap (bench/hooks.py measures each; figures in the package docstring: the request
id hook went from 31 to 12 µs, the metrics from 19 to 6 µs):

- the request proxy is resolved once per hook, the id header read from the environ;
- a new id is 128 random bits in hex (32 hex digits, like ``uuid4().hex``) from the
  ``random`` module's generator, not ``os.urandom``: an id correlates log lines, it is no
  secret (a client may choose its own), and ``os.urandom`` is a system call on every
  request (``getrandom``; on the 2-core VM of the benchmarks a system call costs several
  µs).  CPython reseeds that generator from the OS in every forked child, so gunicorn's
  workers never share a sequence (tests/test_observability.py forks two);
- the access line is built only when its logger is enabled for INFO, and goes through
  ``Logger.makeRecord``/``Logger.handle`` (public API) rather than ``Logger.info``,
  which would walk the stack for a source location that is always this line;
- the route template is ``request.url_rule.rule`` (matched once by Flask) and the metric
  children of a label set are cached (polymicro/observability/metrics.py).
"""

from __future__ import annotations

import logging
import random
import re
from time import perf_counter

from flask import Flask, request

from polymicro.observability import logs
from polymicro.observability.metrics import METHODS, UNMATCHED_ENDPOINT, metrics

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_ENVIRON = "HTTP_X_REQUEST_ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
ACCESS_LOGGER = "polymicro.access"

# Per-request state lives in the WSGI environ (one per request, whatever the contexts).
START = "polymicro.start"
REQUEST_ID = "polymicro.request_id"
_OBSERVED = "polymicro.observed"

_access_log = logging.getLogger(ACCESS_LOGGER)
_INFO = logging.INFO
_ACCESS_FORMAT = "%s %s %s %.1fms"
_random_bits = random.getrandbits  # the module's generator: reseeded in each forked child


def request_id_from(header: str | None) -> str:
    """The client's id when it is 1–128 characters of ``[A-Za-z0-9._-]``, else a new one."""
    if header and _VALID_REQUEST_ID.fullmatch(header):
        return header
    return f"{_random_bits(128):032x}"


def _start(environ: dict) -> str:
    environ[START] = perf_counter()
    request_id = request_id_from(environ.get(_REQUEST_ID_ENVIRON))
    environ[REQUEST_ID] = request_id
    logs._current_request_id.set(request_id)
    return request_id


def _observe(req, environ: dict, status: int, metrics_enabled: bool) -> None:
    """Access line and request metrics, once per request."""
    if _OBSERVED in environ:
        return
    environ[_OBSERVED] = True
    now = perf_counter()
    duration = now - environ.get(START, now)
    method = req.method
    if _access_log.isEnabledFor(_INFO):
        path = req.path
        ms = duration * 1000
        record = _access_log.makeRecord(
            ACCESS_LOGGER,
            _INFO,
            __file__,
            0,
            _ACCESS_FORMAT,
            (method, path, status, ms),
            None,
            extra={"method": method, "path": path, "status": status, "duration_ms": round(ms, 3)},
        )
        _access_log.handle(record)
    if metrics_enabled:
        rule = req.url_rule
        metrics().observe_request(
            rule.rule if rule is not None else UNMATCHED_ENDPOINT,
            method if method in METHODS else "other",
            status,
            duration,
        )


def register(app: Flask, metrics_enabled: bool) -> None:
    """Put the three hooks first in line (see the module docstring)."""

    def start_request() -> None:
        _start(request.environ)

    def finish_request(response):
        req = request._get_current_object()
        environ = req.environ
        request_id = environ.get(REQUEST_ID) or _start(environ)  # start_request ran first
        response.headers[REQUEST_ID_HEADER] = request_id
        _observe(req, environ, response.status_code, metrics_enabled)
        return response

    def end_request(exc: BaseException | None) -> None:
        try:
            if exc is not None:
                req = request._get_current_object()
                if START in req.environ:
                    _observe(req, req.environ, 500, metrics_enabled)  # after_request did not run
        finally:
            logs._current_request_id.set(None)

    app.before_request_funcs.setdefault(None, []).insert(0, start_request)
    # after_request and teardown functions run in reverse order: index 0 runs last.
    app.after_request_funcs.setdefault(None, []).insert(0, finish_request)
    app.teardown_request_funcs.setdefault(None, []).insert(0, end_request)
