"""Single-POST log ingest as data grows, beside raw ``insert_one`` on the same server.

Usage (from the repository root)::

    .venv/bin/python bench/ingest_curve.py                 # up to 50,000 logs
    .venv/bin/python bench/ingest_curve.py --max 10000     # shorter
    .venv/bin/python bench/ingest_curve.py --quick         # smoke run: 2,000 logs
    .venv/bin/python bench/ingest_curve.py --app-env POLYMICRO_MONGODB_RETRY_WRITES=true

One run: a fresh SecantusDB, a private Redis (or ``--redis-url``, flushed), polymicro
under gunicorn (2 workers x 4 threads, authentication and rate limiting off, as
bench/run.py), one project with 10 services.  Then, block after block of 1,000
documents until ``--max``:

- 1,000 single ``POST /api/logs`` from ``--clients`` keep-alive connections, timed;
- 1,000 raw pymongo ``insert_one`` of the same documents as the app stores them, from as
  many threads, into ``bench_raw_logs``, which has every index of the app's ``logs``
  collection, with ``j: true`` and retryable writes as the app has them
  (``POLYMICRO_MONGODB_RETRY_WRITES``: auto = off on SecantusDB).

Both collections grow together, so each block compares the two at the same size.  Printed:
the rate of each block, POST as a fraction of raw insert_one, and at the end the last
block's POST rate over the first's (target >= 80%: ingest stays flat) and the POST/raw
ratio over the whole run (target >= 50%).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pymongo
from common import (
    DataMaker,
    commit,
    copy_log_indexes,
    parse_app_env,
    start_app,
    start_backends,
    stored_log,
)
from load import run_parallel

from polymicro_dev import ROOT, DevError, GunicornSettings, HttpClient, Processes, encode, run_main

BLOCK = 1000
TARGET_FLAT = 0.80
TARGET_VS_RAW = 0.50


def raw_client(uri: str, app_env: dict) -> pymongo.MongoClient:
    """A client with the app's write concern (j:true) and retryable-write setting."""
    setting = app_env.get("POLYMICRO_MONGODB_RETRY_WRITES", "auto").lower()
    probe = pymongo.MongoClient(uri)
    secantus = "secantusVersion" in probe.admin.command("buildInfo")
    probe.close()
    retry = {"true": True, "false": False}.get(setting, not secantus)
    return pymongo.MongoClient(uri, journal=True, retryWrites=retry)


def insert_raw(collection, docs: list[dict], clients: int) -> float:
    shares = [docs[i::clients] for i in range(clients)]
    failures: list[BaseException] = []
    start_line = threading.Barrier(clients + 1)

    def worker(share):
        start_line.wait()
        try:
            for doc in share:
                collection.insert_one(dict(doc))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in shares]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    if failures:
        raise DevError(f"insert_one failed: {failures[0]!r}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/ingest_curve.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--max", type=int, default=50_000, help="documents in the end (50,000)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: --max {2 * BLOCK}")
    parser.add_argument("--clients", type=int, default=4, help="connections / threads (4)")
    parser.add_argument(
        "--redis-url", help="a Redis database to use (flushed) instead of a private redis-server"
    )
    parser.add_argument("--app-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "var" / "bench")
    args = parser.parse_args(argv)
    if args.quick:
        args.max = 2 * BLOCK
    if args.max < BLOCK:
        parser.error(f"--max must be at least {BLOCK}")
    if any("=" not in item for item in args.app_env):
        parser.error("--app-env takes KEY=VALUE")
    return run_main(lambda procs: run(procs, args), "curve")


def run(procs: Processes, args) -> int:
    load_at_start = os.getloadavg()
    backends = start_backends(procs, "curve", args.redis_url, args.keep)
    app_env = parse_app_env(args.app_env)
    app = start_app(procs, backends, GunicornSettings(2, 4), env=app_env)
    maker = DataMaker(1)
    with HttpClient(app.port) as client:
        project = client.call("POST", "/api/projects", maker.project(0), expect=201)["id"]
        services = [
            client.call("POST", "/api/services", maker.service(project, s), expect=201)["id"]
            for s in range(10)
        ]
    # The logs collection and its indexes exist after the first POST.
    first = encode(maker.log(project, services))
    run_parallel(app.port, 1, [("POST", "/api/logs", first)], expect=201)
    mongo = raw_client(backends.mongo_uri, {**dict(os.environ), **app_env})
    procs.on_stop(mongo.close)
    raw = copy_log_indexes(mongo.get_default_database())
    retry = mongo.options.retry_writes
    print(f"curve: raw insert_one with j:true, retryWrites={str(retry).lower()}", flush=True)
    rows = []
    for block in range(args.max // BLOCK):
        entries = [maker.log(project, services) for _ in range(BLOCK)]
        jobs = [("POST", "/api/logs", encode(e)) for e in entries]
        post_s = run_parallel(app.port, args.clients, jobs, expect=201)
        raw_s = insert_raw(raw, [stored_log(e) for e in entries], args.clients)
        app.check_alive()
        row = {
            "docs": (block + 1) * BLOCK,
            "post_per_s": BLOCK / post_s,
            "raw_per_s": BLOCK / raw_s,
        }
        rows.append(row)
        versus = row["post_per_s"] / row["raw_per_s"]
        print(
            f"curve: {row['docs']:>7,} docs  POST {row['post_per_s']:7.1f}/s  "
            f"raw insert_one {row['raw_per_s']:7.1f}/s  POST/raw {versus:.0%}",
            flush=True,
        )
    total_post = sum(BLOCK / r["post_per_s"] for r in rows)
    total_raw = sum(BLOCK / r["raw_per_s"] for r in rows)
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit(),
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "clients": args.clients,
        "app_env": args.app_env,
        "raw_retry_writes": retry,
        "blocks": rows,
        "post_last_over_first": rows[-1]["post_per_s"] / rows[0]["post_per_s"],
        "raw_last_over_first": rows[-1]["raw_per_s"] / rows[0]["raw_per_s"],
        "post_over_raw": total_raw / total_post,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"curve-{result['date'].replace(':', '').replace('-', '')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    flat = result["post_last_over_first"]
    versus = result["post_over_raw"]
    print()
    print(
        f"POST last/first block: {flat:.0%} ({'PASS' if flat >= TARGET_FLAT else 'MISS'} "
        f"≥ {TARGET_FLAT:.0%}); raw insert_one last/first: {result['raw_last_over_first']:.0%}"
    )
    verdict = "PASS" if versus >= TARGET_VS_RAW else "MISS"
    print(
        f"POST / raw insert_one over the run: {versus:.0%} ({verdict} ≥ {TARGET_VS_RAW:.0%}); "
        f"load average {load_at_start[0]:.2f} → {result['load_average_at_end'][0]}"
    )
    print(f"curve: JSON in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
