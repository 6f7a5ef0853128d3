"""What each per-request hook costs, in microseconds per request (issue 9, item 5).

    .venv/bin/python bench/hooks.py                   # the table, ~1 min of one core
    .venv/bin/python bench/hooks.py --against DIR     # also the same table for the code in
                                                      # DIR (e.g. an older commit exported
                                                      # with git archive), interleaved, and
                                                      # the ratio new/old per row
    .venv/bin/python bench/hooks.py --exporter        # + prometheus-flask-exporter rows
                                                      # (pip install it first)

The app is ``create_app`` on mongomock (TestingConfig-like settings, authentication on,
nothing connects), and the request a ``GET /api/health/live``: public, no database, no
cache, so what is left is Flask, flask-smorest and the hooks.  The loop calls the WSGI
callable directly (no HTTP, no test client): a fresh copy of one prepared environ per
request, the body iterated and closed, ``--requests`` times; each variant is run
``--repeats`` times, interleaved with the others so that a slow moment of a shared
machine hits every variant alike, and the median is printed.  Log lines go to
/dev/null (formatting and writing them is part of the cost; a terminal is not).

Rows, each a hook added alone to the bare app (``+ x``: its cost is the difference with
``bare``), then everything at once as deployed:

- ``bare``: every hook below removed (the app's own request guards stay);
- ``request id``: polymicro.observability's hooks with the access log and metrics off;
- ``access log text`` / ``access log json``: the same plus the access line at INFO;
- ``metrics``: request id plus the Prometheus counter and histogram;
- ``security headers``: ``_security_headers`` (polymicro/security.py) alone;
- ``security headers, 1 pass``: :func:`security_headers_one_pass` below instead, the
  same headers set in one pass (a suggestion for polymicro/security.py, measured here);
- ``rate limit``: flask-limiter (memory storage) alone;
- ``Flask's session interface``: Flask's own ``SecureCookieSessionInterface`` instead of
  polymicro's ``CookieSessions`` (which opens no signed session for a request without
  cookies): what every request paid for a session the API never uses;
- ``all (text)`` / ``all (json)``: request id, access line, metrics, security headers,
  rate limit, as in production;
- ``tracing on``: ``all (json)`` plus OpenTelemetry (Flask instrumentation, spans to an
  exporter that drops them), to show what turning it on costs; timed in processes of
  its own (tracing is process-wide), against their own ``bare``.  Tracing off is every
  other row: with no ``OTEL_EXPORTER_OTLP_*ENDPOINT`` nothing of OpenTelemetry is on the
  request path, which ``--against`` shows against the code before tracing existed.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PATH = "/api/health/live"
CHUNK = 250  # requests timed in one go before moving to the next variant

# (name, settings): which hooks stay on.  "ours" = polymicro.observability's hooks.
VARIANTS: list[tuple[str, dict]] = [
    ("bare", {}),
    ("request id", {"ours": True}),
    ("access log text", {"ours": True, "access": "text"}),
    ("access log json", {"ours": True, "access": "json"}),
    ("metrics", {"ours": True, "metrics": True}),
    ("security headers", {"headers": True}),
    ("security headers, 1 pass", {"headers_one_pass": True}),
    ("rate limit", {"limiter": True}),
    ("Flask's session interface", {"flask_sessions": True}),
    (
        "all (text)",
        {"ours": True, "access": "text", "metrics": True, "headers": True, "limiter": True},
    ),
    (
        "all (json)",
        {"ours": True, "access": "json", "metrics": True, "headers": True, "limiter": True},
    ),
]
TRACING_VARIANT = (
    "tracing on",
    {
        "ours": True,
        "access": "json",
        "metrics": True,
        "headers": True,
        "limiter": True,
        "tracing": True,
    },
)
EXPORTER_VARIANTS = [
    # The library alone on the bare app: compare its +µs with ``metrics`` − ``request id``.
    ("prometheus-flask-exporter", {"exporter": True}),
]


# --- building one variant ---------------------------------------------------------------

_DEFAULT_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
_CSP = ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
_HEADER_NAMES = frozenset(name.lower() for name, _ in (*_DEFAULT_HEADERS, _CSP))


def security_headers_one_pass(response):
    """What ``_security_headers`` does, with the same result: werkzeug's
    ``Headers.setdefault`` scans the header list (twice) per call, five calls; here one
    scan says whether a view set any of them (rarely), else one ``extend`` adds them
    all.  The path and scheme come from the environ, not through the request proxy."""
    from flask import request

    headers = response.headers
    environ = request.environ
    path = environ.get("PATH_INFO", "")
    docs = path.startswith(("/docs", "/redoc"))
    wanted = _DEFAULT_HEADERS if docs else (*_DEFAULT_HEADERS, _CSP)
    if _HEADER_NAMES.isdisjoint(name.lower() for name, _value in headers.items()):
        headers.extend(wanted)
    else:  # a view set one of them itself: keep its value
        for name, value in wanted:
            headers.setdefault(name, value)
    if path.startswith("/api/auth"):
        headers["Cache-Control"] = "no-store"
    if environ.get("wsgi.url_scheme") == "https":
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


def _is_ours(func) -> bool:
    return getattr(func, "__module__", "").startswith("polymicro.observability")


def _is_limiter(func) -> bool:
    module = getattr(func, "__module__", "") or ""
    self_module = type(getattr(func, "__self__", None)).__module__
    return module.startswith("flask_limiter") or self_module.startswith("flask_limiter")


def _is_headers(func) -> bool:
    return getattr(func, "__name__", "") == "_security_headers"


def _strip(app, keep) -> None:
    """Remove the hooks ``keep`` does not keep from every hook list of the app."""
    for registry in (app.before_request_funcs, app.after_request_funcs):
        for key, funcs in registry.items():
            registry[key] = [f for f in funcs if keep(f)]
    for key, funcs in app.teardown_request_funcs.items():
        app.teardown_request_funcs[key] = [f for f in funcs if keep(f)]


def build(settings: dict):
    from polymicro import create_app
    from polymicro.config import TestingConfig

    config = {key: getattr(TestingConfig, key) for key in dir(TestingConfig) if key.isupper()}
    config.update(
        INSTANCE_PATH=str(REPO / "var" / "bench-instance"),
        METRICS_ENABLED=bool(settings.get("metrics")),
        RATELIMIT_ENABLED=bool(settings.get("limiter")),
        RATELIMIT_STORAGE_URI="memory://",
        RATELIMIT_DEFAULT="100000000 per minute",  # counted, never refused
        LOG_FORMAT=settings.get("access") or "text",
        LOG_LEVEL="INFO",
    )
    if settings.get("tracing"):
        _start_tracing()
    app = create_app(config)
    app.config["BENCH_ACCESS_LOG"] = bool(settings.get("access"))

    def keep(func) -> bool:
        if _is_ours(func):
            return bool(settings.get("ours"))
        if _is_limiter(func):
            return bool(settings.get("limiter"))
        if _is_headers(func):
            return bool(settings.get("headers"))
        return True

    _strip(app, keep)
    if settings.get("flask_sessions"):
        from flask.sessions import SecureCookieSessionInterface

        app.session_interface = SecureCookieSessionInterface()
    if settings.get("headers_one_pass"):
        app.after_request(security_headers_one_pass)
    if settings.get("exporter"):
        from prometheus_client import CollectorRegistry
        from prometheus_flask_exporter import PrometheusMetrics

        PrometheusMetrics(
            app,
            path=None,
            group_by="url_rule",
            defaults_prefix="bench",
            registry=CollectorRegistry(),
        )
    return app


def _start_tracing() -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter

    from polymicro.observability import tracing

    class Drop(SpanExporter):
        def export(self, spans):
            from opentelemetry.sdk.trace.export import SpanExportResult

            return SpanExportResult.SUCCESS

    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"  # never reached
    tracing.start_tracing(span_processor=SimpleSpanProcessor(Drop()))


# --- the loop ---------------------------------------------------------------------------


def _environ() -> dict:
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(path=PATH, method="GET", headers={"User-Agent": "bench/hooks"})
    try:
        environ = builder.get_environ()
    finally:
        builder.close()
    environ["REMOTE_ADDR"] = "127.0.0.1"
    return environ


def _start_response(status, headers, exc_info=None):
    return None


def _loop(app, base: dict, n: int) -> float:
    """µs per request over ``n`` requests through the WSGI callable of ``app``."""
    body = io.BytesIO(b"")
    clock = time.process_time  # CPU time of this process: other processes' load aside
    start = clock()
    for _ in range(n):
        environ = dict(base)
        environ["wsgi.input"] = body
        result = app(environ, _start_response)  # app.wsgi_app, whatever wrapped it
        for _chunk in result:
            pass
        getattr(result, "close", lambda: None)()
    return (clock() - start) / n * 1e6


def use(app) -> None:
    """Make the process-wide state what ``app`` wants: its log format, its access line
    on or off (by the level of that logger, as an operator would do it), its rate limits
    on or off."""
    from polymicro.observability import configure_logging

    configure_logging(app)
    level = logging.INFO if app.config["BENCH_ACCESS_LOG"] else logging.WARNING
    logging.getLogger("polymicro.access").setLevel(level)
    # polymicro's Limiter is one module-level object for every app, and init_app sets
    # its `enabled` for all of them (the last app built wins): set this app's.
    for limiter in app.extensions.get("limiter", ()):
        limiter.enabled = bool(app.config["RATELIMIT_ENABLED"])


def time_variants(apps: dict, n: int, chunk: int) -> dict[str, list[float]]:
    """Round-robin chunks of ``chunk`` requests over the variants until each has had
    ``n``; returns each variant's µs/request per chunk."""
    base = _environ()
    for app in apps.values():  # warm-up: first-request work is not per-request cost
        use(app)
        _loop(app, base, 200)
    timings: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(max(1, n // chunk)):
        for name, app in apps.items():
            use(app)
            timings[name].append(_loop(app, base, chunk))
    return timings


def _check(app) -> None:
    """The request answers 200 (a bench of errors would measure nothing useful)."""
    statuses = []
    environ = _environ()
    environ["wsgi.input"] = io.BytesIO(b"")
    result = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    list(result)
    getattr(result, "close", lambda: None)()
    if not statuses or not statuses[0].startswith("200"):
        raise SystemExit(f"GET {PATH} answered {statuses}")


# --- one process per variant group -------------------------------------------------------


def child(names: list[str], n: int) -> None:
    """Build each named variant once, then time them round-robin; print JSON lines."""
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of this process
    table = dict([*VARIANTS, TRACING_VARIANT, *EXPORTER_VARIANTS])
    apps = {}
    for name in names:
        if name == TRACING_VARIANT[0]:
            continue  # built last: tracing is process-wide once started
        apps[name] = build(table[name])
    if TRACING_VARIANT[0] in names:
        apps[TRACING_VARIANT[0]] = build(table[TRACING_VARIANT[0]])
    for app in apps.values():
        _check(app)
    gc.collect()
    gc.freeze()  # the apps built above are not garbage: keep the collector off them
    print(json.dumps(time_variants(apps, n, CHUNK)), flush=True)


def run_child(tree: Path, names: list[str], n: int) -> dict[str, list[float]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(POLYMICRO_MONGODB_MOCK="true")
    for key in list(env):
        if key.startswith("OTEL_"):
            del env[key]
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(names), str(n)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"child in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings per variant")
    parser.add_argument("--against", type=Path, help="an older tree to time alongside")
    parser.add_argument("--exporter", action="store_true", help="prometheus-flask-exporter")
    parser.add_argument("--no-tracing", action="store_true", help="skip the tracing row")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child[0]), int(args.child[1]))
        return

    names = [name for name, _ in VARIANTS]
    if args.exporter:
        names += [name for name, _ in EXPORTER_VARIANTS]
    new_names = names + ([] if args.no_tracing else [TRACING_VARIANT[0]])
    # Tracing is process-wide once started: its row gets a process of its own.
    trees = [("new", REPO, names)]
    if not args.no_tracing:
        trees.append(("new", REPO, ["bare", TRACING_VARIANT[0]]))
    if args.against:
        trees.append(("old", args.against.resolve(), names))
    samples: dict[str, dict[str, list[float]]] = {label: {} for label, _, _ in trees}
    samples["new tracing"] = {}
    for repeat in range(args.repeats):
        # Alternate which tree goes first, so neither always gets the quieter moment.
        order = trees if repeat % 2 == 0 else list(reversed(trees))
        for label, tree, tree_names in order:
            into = "new tracing" if TRACING_VARIANT[0] in tree_names else label
            for name, chunks in run_child(tree, tree_names, args.requests).items():
                samples[into].setdefault(name, []).extend(chunks)
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    med = {
        label: {name: statistics.median(v) for name, v in rows.items()}
        for label, rows in samples.items()
    }
    new = med["new"]
    old = med.get("old")
    if med["new tracing"]:  # its +µs against the bare app of its own processes
        traced = med["new tracing"]
        new[TRACING_VARIANT[0]] = new["bare"] + traced[TRACING_VARIANT[0]] - traced["bare"]
    print(
        f"GET {PATH}: {args.repeats} processes x {args.requests} requests per variant, "
        f"in interleaved chunks of {CHUNK}; median µs/request over the chunks"
    )
    header = f"{'variant':<28}{'µs/req':>9}{'+µs':>8}"
    if old:
        header += f"{'old µs':>9}{'old +µs':>9}{'new/old':>9}"
    print(header)
    for name in new_names:
        line = f"{name:<28}{new[name]:>9.1f}{new[name] - new['bare']:>8.1f}"
        if old and name in old:
            line += f"{old[name]:>9.1f}{old[name] - old['bare']:>9.1f}"
            line += f"{new[name] / old[name]:>9.3f}"
        print(line)


if __name__ == "__main__":
    main()
