"""Benchmark OTLP/HTTP log ingest against ``POST /api/logs/batch`` in the same run.

Usage (from the repository root)::

    .venv/bin/python bench/ingest.py                 # about a minute on 2 cores
    .venv/bin/python bench/ingest.py --batches 10    # shorter
    .venv/bin/python bench/ingest.py --redis-url redis://127.0.0.1:6379/6

One run, everything on 127.0.0.1 and stopped at the end:

1. Redis at ``--redis-url`` (flushed) and a fresh SecantusDB in a temporary directory;
   polymicro under gunicorn with the repository's settings (``bench/gunicorn_conf.py``),
   authentication ON (both paths are called with the same project API key, as shippers
   do) and the per-client rate limit off.
2. A project with one service and a key, made through the service layer.
3. The same log entries sent both ways, in requests of 512 (what the OpenTelemetry SDK's
   batch processor sends): as OTLP/HTTP protobuf ``ExportLogsServiceRequest``\\ s to
   ``/otlp/v1/logs``, and as JSON arrays to ``/api/logs/batch``.  Each entry looks like
   what the SDK's logging handler produces (message, severity, time, code attributes,
   trace and span ids, scope).  ``--clients`` connections send in parallel; the two
   paths alternate over ``--rounds`` rounds so that drift on a shared machine hits both.
4. Entries/s of each path, the ratio OTLP / batch (target: at least 70%), and a check
   that the database holds every entry sent.

The servers come from ``bench/servers.py`` (the same starters ``bench/run.py`` uses);
switch the import below when they move into one importable module.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from servers import (  # the starters bench/run.py uses
    HOST,
    ROOT,
    BenchError,
    GunicornSettings,
    Processes,
    ensure_redis,
    start_gunicorn,
    start_secantus,
    stop_redis,
)

BATCH = 512
TARGET_RATIO = 0.70
APP_ENV = {
    "POLYMICRO_LOG_LEVEL": "WARNING",
    "POLYMICRO_GUNICORN_LOGLEVEL": "warning",
    "POLYMICRO_RATELIMIT_ENABLED": "false",
    "POLYMICRO_AUTH_ENABLED": "true",
}


def say(text: str) -> None:
    print(f"bench/ingest: {text}", flush=True)


# --- the entries ------------------------------------------------------------------------


def make_entries(count: int, start_ns: int) -> list[dict]:
    """Entries as the SDK's logging handler would produce them (one service)."""
    severities = [(9, "info")] * 6 + [(13, "warn")] * 2 + [(17, "error"), (5, "debug")]
    entries = []
    for i in range(count):
        number, name = severities[i % len(severities)]
        entries.append(
            {
                "time_ns": start_ns + i * 1_000_000,
                "severity_number": number,
                "severity": name,
                "message": f"order {i} processed in {i % 97} ms by worker {i % 8}",
                "function": f"handle_{i % 13}",
                "line": 100 + i % 50,
                "trace_id": (i * 7919 + 1).to_bytes(16, "big"),
                "span_id": (i * 104729 + 1).to_bytes(8, "big"),
            }
        )
    return entries


def otlp_body(entries: list[dict]) -> bytes:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
    )

    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    kv = resource_logs.resource.attributes.add(key="service.name")
    kv.value.string_value = "checkout"
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "shop.checkout"
    for entry in entries:
        record = scope_logs.log_records.add(
            time_unix_nano=entry["time_ns"],
            observed_time_unix_nano=entry["time_ns"],
            severity_number=entry["severity_number"],
            severity_text=entry["severity"].upper(),
            trace_id=entry["trace_id"],
            span_id=entry["span_id"],
        )
        record.body.string_value = entry["message"]
        for key, value in (
            ("code.file.path", "/srv/shop/checkout.py"),
            ("code.function.name", entry["function"]),
            ("code.line.number", entry["line"]),
        ):
            attribute = record.attributes.add(key=key)
            if isinstance(value, int):
                attribute.value.int_value = value
            else:
                attribute.value.string_value = value
    return request.SerializeToString()


def batch_body(entries: list[dict], project_id: str, service_id: str) -> bytes:
    """The same entries as ``/api/logs/batch`` stores them from OTLP."""
    rows = []
    for entry in entries:
        ms = entry["time_ns"] // 1_000_000
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
        rows.append(
            {
                "project_id": project_id,
                "service_id": service_id,
                "severity": entry["severity"],
                "message": entry["message"],
                "timestamp": f"{stamp}.{ms % 1000:03d}Z",
                "func_id": entry["function"],
                "attributes": {
                    "trace_id": entry["trace_id"].hex(),
                    "span_id": entry["span_id"].hex(),
                    "scope_name": "shop.checkout",
                    "code_file_path": "/srv/shop/checkout.py",
                    "code_line_number": entry["line"],
                },
            }
        )
    return json.dumps(rows).encode()


# --- sending ------------------------------------------------------------------------------


def send_all(port: int, path: str, headers: dict, bodies: list[bytes], expect: int, clients: int):
    """Every body, round-robin over ``clients`` keep-alive connections; wall seconds."""
    errors: list[str] = []
    conns = [http.client.HTTPConnection(HOST, port, timeout=300) for _ in range(clients)]
    for conn in conns:
        conn.connect()
    start = threading.Barrier(clients + 1)

    def work(index: int) -> None:
        conn = conns[index]
        start.wait()
        for body in bodies[index::clients]:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            if response.status != expect:
                errors.append(f"{path} answered {response.status}: {data[:300]!r}")
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    for conn in conns:
        conn.close()
    if errors:
        raise BenchError(errors[0])
    return elapsed


# --- the run ------------------------------------------------------------------------------


def tenant(mongo_uri: str, redis_url: str) -> tuple[str, str, str]:
    """A project, its service and an API key, made through the service layer."""
    os.environ.update(POLYMICRO_MONGODB_URI=mongo_uri, POLYMICRO_REDIS_URL=redis_url)
    from polymicro import create_app
    from polymicro.auth import service as auth
    from polymicro.extensions import close_db
    from polymicro.projects import service as projects
    from polymicro.services import service as services

    app = create_app()
    with app.app_context():
        project = projects.create_project({"name": "bench-ingest"})
        svc = services.create_service({"project_id": project["id"], "name": "checkout"})
        key = auth.create_api_key(project["id"], "bench", None)["key"]
    close_db()
    return str(project["id"]), str(svc["id"]), key


def count_logs(mongo_uri: str) -> int:
    import pymongo

    client = pymongo.MongoClient(mongo_uri)
    try:
        return client.get_default_database()["logs"].count_documents({})
    finally:
        client.close()


def run(args) -> dict:
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="polymicro-bench-ingest-"))
    redis_client, started_redis = ensure_redis(args.redis_url)
    try:
        db = start_secantus(procs, workdir / "db", workdir)
        mongo_uri = f"mongodb://{HOST}:{db.port}/polymicro_bench"
        env = dict(os.environ)
        env.pop("POLYMICRO_GUNICORN_BIND", None)
        env.update(APP_ENV, POLYMICRO_MONGODB_URI=mongo_uri, POLYMICRO_REDIS_URL=args.redis_url)
        settings = GunicornSettings(args.workers, args.threads, "gthread")
        say(f"gunicorn {settings.label}, {args.clients} clients, batches of {BATCH}")
        app = start_gunicorn(procs, "polymicro", "wsgi:app", settings, workdir, env, "/api/health")
        project_id, service_id, key = tenant(mongo_uri, args.redis_url)

        total = args.batches * BATCH
        otlp_headers = {"Content-Type": "application/x-protobuf", "X-API-Key": key}
        json_headers = {"Content-Type": "application/json", "X-API-Key": key}
        timings = {"otlp": 0.0, "batch": 0.0}
        sent = 0
        # Warm-up (imports, connection pools, first service lookups): not measured.
        warm = make_entries(BATCH, time.time_ns() - 3_600_000_000_000)
        send_all(app.port, "/otlp/v1/logs", otlp_headers, [otlp_body(warm)], 200, 1)
        send_all(
            app.port, "/api/logs/batch", json_headers,
            [batch_body(warm, project_id, service_id)], 201, 1,
        )  # fmt: skip
        sent += 2 * BATCH
        for round_no in range(args.rounds):
            base = time.time_ns() - 3_000_000_000_000 + round_no * 10**12
            entries = make_entries(total, base)
            chunks = [entries[i : i + BATCH] for i in range(0, total, BATCH)]
            otlp = [otlp_body(chunk) for chunk in chunks]
            batch = [batch_body(chunk, project_id, service_id) for chunk in chunks]
            order = ("batch", "otlp") if round_no % 2 == 0 else ("otlp", "batch")
            for path in order:
                if path == "otlp":
                    seconds = send_all(
                        app.port, "/otlp/v1/logs", otlp_headers, otlp, 200, args.clients
                    )
                else:
                    seconds = send_all(
                        app.port, "/api/logs/batch", json_headers, batch, 201, args.clients
                    )
                timings[path] += seconds
                sent += total
                say(f"round {round_no + 1}: {path:5} {total / seconds:8.0f} entries/s")
        app.check_alive()
        stored = count_logs(mongo_uri)
        if stored != sent:
            raise BenchError(f"{sent} entries acknowledged, {stored} in the database")
        measured = total * args.rounds
        result = {
            "entries_per_path": measured,
            "otlp_entries_per_s": measured / timings["otlp"],
            "batch_entries_per_s": measured / timings["batch"],
        }
        result["ratio"] = result["otlp_entries_per_s"] / result["batch_entries_per_s"]
        return result
    finally:
        procs.stop_all()
        if started_redis:
            stop_redis(redis_client)
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="requests of 512 per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/6")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    say(f"load average at start: {os.getloadavg()[0]:.1f}")
    try:
        result = run(args)
    except BenchError as exc:
        say(f"FAILED: {exc}")
        return 1
    print()
    print("| path | entries/s |")
    print("|---|---:|")
    print(f"| OTLP/HTTP protobuf `/otlp/v1/logs` | {result['otlp_entries_per_s']:,.0f} |")
    print(f"| `POST /api/logs/batch` (JSON) | {result['batch_entries_per_s']:,.0f} |")
    verdict = "PASS" if result["ratio"] >= TARGET_RATIO else "MISS"
    print(
        f"\nOTLP / batch = {result['ratio']:.0%} ({verdict}: target >= {TARGET_RATIO:.0%}); "
        f"{result['entries_per_path']:,} entries per path, all found in the database"
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
