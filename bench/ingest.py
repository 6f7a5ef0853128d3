"""Benchmark OTLP/HTTP log ingest against ``POST /api/logs/batch`` in the same run.

Usage (from the repository root)::

    .venv/bin/python bench/ingest.py                 # about a minute on 2 cores
    .venv/bin/python bench/ingest.py --batches 10    # shorter
    .venv/bin/python bench/ingest.py --redis-url redis://127.0.0.1:6379/6

One run, everything on 127.0.0.1 and stopped at the end:

1. Redis and a fresh SecantusDB in a temporary directory;
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

The servers are started (and stopped, also on Ctrl-C) by polymicro_dev through
bench/common.py, as for ``make bench``; Redis is a private redis-server unless
``--redis-url`` names a database (flushed before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from common import count_logs, start_app, start_backends, tenant
from load import run_parallel

from polymicro_dev import DevError, GunicornSettings, Processes, run_main

BATCH = 512
TARGET_RATIO = 0.70


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


# --- the run ------------------------------------------------------------------------------


def send_all(port: int, path: str, headers: dict, bodies: list[bytes], expect: int, clients: int):
    """Every body, round-robin over ``clients`` keep-alive connections; wall seconds."""
    jobs = [("POST", path, body) for body in bodies]
    return run_parallel(port, clients, jobs, expect=expect, headers=headers)


def run(procs: Processes, args) -> dict:
    backends = start_backends(procs, "bench-ingest", args.redis_url, args.keep)
    settings = GunicornSettings(args.workers, args.threads)
    say(f"gunicorn {settings.label}, {args.clients} clients, batches of {BATCH}")
    app = start_app(procs, backends, settings, auth=True)
    project_id, service_id, key = tenant(backends.mongo_uri, backends.redis_url, "bench-ingest")

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
                seconds = send_all(app.port, "/otlp/v1/logs", otlp_headers, otlp, 200, args.clients)
            else:
                seconds = send_all(
                    app.port, "/api/logs/batch", json_headers, batch, 201, args.clients
                )
            timings[path] += seconds
            sent += total
            say(f"round {round_no + 1}: {path:5} {total / seconds:8.0f} entries/s")
    app.check_alive()
    stored = count_logs(backends.mongo_uri)
    if stored != sent:
        raise DevError(f"{sent} entries acknowledged, {stored} in the database")
    measured = total * args.rounds
    result = {
        "entries_per_path": measured,
        "otlp_entries_per_s": measured / timings["otlp"],
        "batch_entries_per_s": measured / timings["batch"],
    }
    result["ratio"] = result["otlp_entries_per_s"] / result["batch_entries_per_s"]
    return result


def report(result: dict) -> int:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/ingest.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="requests of 512 per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 batches, 1 round")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--redis-url", help="a Redis database to use (flushed) instead of a private redis-server"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.rounds = 4, 1
    say(f"load average at start: {os.getloadavg()[0]:.1f}")
    return run_main(lambda procs: report(run(procs, args)), "bench/ingest")


if __name__ == "__main__":
    sys.exit(main())
