"""CPU rollups at scale: long-range ``/series`` from rollups against the same query
served from raw points, on the embedded database (SecantusDB).

Usage (from the repository root)::

    .venv/bin/python bench/lifecycle.py                   # 1,000,000 points (heavy)
    .venv/bin/python bench/lifecycle.py --points 100000   # a quick run
    make bench-lifecycle BENCH_ARGS="--points 100000"

One run starts SecantusDB (temporary directory), a private Redis and gunicorn (2 x 4,
authentication off as in every bench), then:

1. seeds ``--services`` CPU entries through the API and ``--points`` points spread
   evenly over ``--days`` days up to the last whole hour (10 x 30 days at 26 s spacing
   for 1,000,000), written with pymongo ``insert_many`` in batches of 10,000 straight
   into ``cpu_points`` (as an upgrade finds them: nothing marked);
2. builds the rollups: ``flask rollups rebuild`` (marks every hour with points) and
   ``flask rollups run`` (what the worker does), timed;
3. measures ``GET /api/metrics/cpu/{id}/series`` for 24 h at 5m, 7 d at 1h and 30 d at
   6h, each with ``source=auto`` (rollups; the header must say so) and ``source=raw``,
   ``--samples`` sequential requests each (``--raw-samples`` for raw), cycling over the
   entries; checks both answers are the same buckets; prints p50/p99 and the ratio;
4. the cost of marking on write: p50 of ``--posts`` single-point POSTs, and of the mark
   (one upsert into ``cpu_rollup_dirty``) alone through pymongo.

Targets (issue 14): the 30-day chart >= 20x faster from rollups than from raw, every
series under 100 ms p99.  Figures are comparable only within one run (shared machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import pymongo
from bson import ObjectId

from polymicro_dev import (
    ROOT,
    GunicornSettings,
    HttpClient,
    Processes,
    app_env,
    ensure_redis,
    run_main,
    start_gunicorn,
    start_secantus,
)
from polymicro_dev.processes import venv_exe

QUERIES = [("24h at 5m", timedelta(hours=24), "5m"), ("7d at 1h", timedelta(days=7), "1h")]
QUERIES.append(("30d at 6h", timedelta(days=30), "6h"))
TARGET_RATIO_30D = 20.0
TARGET_P99_MS = 100.0


def say(text: str) -> None:
    print(f"lifecycle: {text}", flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--samples", type=int, default=40, help="requests per rollup query")
    parser.add_argument("--raw-samples", type=int, default=8, help="requests per raw query")
    parser.add_argument("--posts", type=int, default=200, help="single-point POSTs timed")
    parser.add_argument("--redis-url", default=None, help="default: a private redis-server")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser.parse_args(argv)


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def seed(port: int, mongo_uri: str, args) -> tuple[list[str], datetime]:
    api = HttpClient(port)
    project = api.call("POST", "/api/projects/", {"name": "lifecycle"}, expect=201)
    ids = []
    for index in range(args.services):
        name = f"svc-{index}"
        api.call("POST", "/api/services/", {"project_id": project["id"], "name": name}, 201)
        body = {"project_id": project["id"], "service_name": name}
        ids.append(api.call("POST", "/api/metrics/cpu/", body, expect=201)["id"])
    api.close()
    args.project_id = project["id"]
    per_service = args.points // args.services
    end = datetime.utcnow().replace(minute=0, second=0, microsecond=0)
    spacing = timedelta(days=args.days) / per_service
    start = end - spacing * per_service
    say(f"seeding {per_service * len(ids):,} points, {spacing.total_seconds():.1f} s apart")
    collection = pymongo.MongoClient(mongo_uri)["polymicro"]["cpu_points"]
    began = time.monotonic()
    batch = []
    for metric_id in ids:
        for i in range(per_service):
            t = start + spacing * i
            load = 20 + 15 * math.sin(i / 500) + (i * 7919 % 97) / 4
            doc = {
                "metric_id": ObjectId(metric_id),
                "time": t.replace(microsecond=t.microsecond // 1000 * 1000),
                "load": load,
            }
            doc["memory"] = 30 + (i * 104729 % 61) / 2
            batch.append(doc)
            if len(batch) == 10_000:
                collection.insert_many(batch, ordered=False)
                batch = []
    if batch:
        collection.insert_many(batch, ordered=False)
    seconds = time.monotonic() - began
    say(f"seeded in {seconds:.0f} s ({per_service * len(ids) / seconds:,.0f} points/s)")
    return ids, end


def flask(env: dict, *argv: str) -> tuple[str, float]:
    began = time.monotonic()
    done = subprocess.run(
        [venv_exe("flask"), "--app", "polymicro", *argv],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"flask {' '.join(argv)} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    return done.stdout.strip(), time.monotonic() - began


def sweep_throughput(port: int, mongo_uri: str, env: dict, args) -> dict:
    """The retention sweep's rate: the project's override keeps half the seeded days,
    and one worker round (``flask worker --once``, at most SWEEP_MAX_BATCHES batches of
    SWEEP_BATCH rows) deletes what is older; rows deleted per second of that round."""
    api = HttpClient(port)
    keep = max(1, args.days // 2)
    body = {"retention": {"points_days": keep}}
    api.call("PATCH", f"/api/projects/{args.project_id}", body, expect=200)
    api.close()
    points = pymongo.MongoClient(mongo_uri)["polymicro"]["cpu_points"]
    before = points.estimated_document_count()
    round_env = dict(env, POLYMICRO_RETENTION_SWEEP_MAX_BATCHES="100")
    _, seconds = flask(round_env, "worker", "--once")
    deleted = before - points.estimated_document_count()
    row = {
        "override_days": keep,
        "deleted": deleted,
        "seconds": round(seconds, 1),
        "rows_per_s": round(deleted / seconds) if seconds else None,
    }
    say(f"retention sweep: {json.dumps(row)} (one worker round, process start included)")
    return row


def measure(port: int, ids: list[str], end: datetime, args) -> list[dict]:
    api = HttpClient(port, timeout=300)
    rows = []
    for label, window, step in QUERIES:
        row = {"query": label}
        answers = {}
        for source, samples in (("auto", args.samples), ("raw", args.raw_samples)):
            times = []
            for n in range(samples + 1):  # the first of each is a warm-up
                metric_id = ids[n % len(ids)]
                query = f"since={iso(end - window)}&until={iso(end)}&step={step}&source={source}"
                began = time.perf_counter()
                response = api.request("GET", f"/api/metrics/cpu/{metric_id}/series?{query}")
                elapsed = (time.perf_counter() - began) * 1000
                if response.status != 200:
                    raise SystemExit(f"{label} {source}: {response.status} {response.body[:300]!r}")
                if n == 0:
                    answers[source] = (response.json(), response.headers["X-Series-Source"])
                else:
                    times.append(elapsed)
            row[source] = {
                "p50_ms": round(statistics.median(times), 1),
                "p99_ms": round(percentile(times, 0.99), 1),
                "served_by": answers[source][1],
                "samples": samples,
            }
        row["same_buckets"] = same(answers["auto"][0], answers["raw"][0])
        row["ratio_p50"] = round(row["raw"]["p50_ms"] / row["auto"]["p50_ms"], 1)
        rows.append(row)
        say(json.dumps(row))
    api.close()
    return rows


def same(a: list[dict], b: list[dict]) -> bool:
    if [x["time"] for x in a] != [x["time"] for x in b]:
        return False
    for x, y in zip(a, b, strict=True):
        if x["count"] != y["count"]:
            return False
        for part in ("load", "memory"):
            for key, value in x[part].items():
                other = y[part][key]
                if (value is None) != (other is None):
                    return False
                if value is not None and not math.isclose(value, other, rel_tol=1e-9):
                    return False
    return True


def write_cost(port: int, mongo_uri: str, ids: list[str], args) -> dict:
    api = HttpClient(port)
    times = []
    for n in range(args.posts + 10):
        began = time.perf_counter()
        api.call("POST", f"/api/metrics/cpu/{ids[0]}/data", {"load": 1.0}, expect=201)
        if n >= 10:
            times.append((time.perf_counter() - began) * 1000)
    api.close()
    dirty = pymongo.MongoClient(mongo_uri, journal=True)["polymicro"]["cpu_rollup_dirty"]
    marks = []
    hour = datetime.utcnow().replace(minute=0, second=0, microsecond=0)
    for _ in range(args.posts):
        began = time.perf_counter()
        dirty.update_one(
            {"metric_id": ObjectId(ids[1]), "time": hour}, {"$inc": {"version": 1}}, upsert=True
        )
        marks.append((time.perf_counter() - began) * 1000)
    post, mark = statistics.median(times), statistics.median(marks)
    return {
        "post_p50_ms": round(post, 2),
        "mark_p50_ms": round(mark, 2),
        "mark_share": round(mark / post, 2),
    }


def main(procs: Processes, args) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="polymicro-lifecycle-"))
    if not args.keep:
        procs.on_stop(lambda: shutil.rmtree(workdir, ignore_errors=True))
    say(f"load average {os.getloadavg()[0]:.1f} at start; workdir {workdir}")
    redis_url = ensure_redis(procs, workdir, args.redis_url)
    db = start_secantus(procs, workdir / "db", workdir)
    # A long worker interval: the bench builds the rollups itself, timed.  Raw points
    # are kept forever here: the raw side of each comparison must see all 30 days (the
    # default 30-day retention would hide the oldest hours of the seeded range).
    env = app_env(
        db.uri,
        redis_url,
        POLYMICRO_ROLLUPS_CHECK_SECONDS="3600",
        POLYMICRO_RETENTION_POINTS_DAYS="0",
    )
    app = start_gunicorn(procs, env, workdir, GunicornSettings(2, 4), name="polymicro")
    ids, end = seed(app.port, db.uri, args)
    out, rebuild_s = flask(env, "rollups", "rebuild")
    say(f"{out} ({rebuild_s:.0f} s)")
    out, run_s = flask(env, "rollups", "run")
    say(f"{out} ({run_s:.0f} s; {args.points / run_s:,.0f} points/s rolled up)")
    rows = measure(app.port, ids, end, args)
    cost = write_cost(app.port, db.uri, ids, args)
    sweep = sweep_throughput(app.port, db.uri, env, args)
    thirty = rows[-1]
    result = {
        "points": args.points,
        "services": args.services,
        "days": args.days,
        "rollup_build_s": {"rebuild": round(rebuild_s, 1), "run": round(run_s, 1)},
        "series": rows,
        "write_cost": cost,
        "retention_sweep": sweep,
        "targets": {
            "30d ratio >= 20x": thirty["ratio_p50"] >= TARGET_RATIO_30D,
            "every rollup series p99 < 100 ms": all(
                r["auto"]["p99_ms"] < TARGET_P99_MS for r in rows
            ),
            "every answer equal to raw": all(r["same_buckets"] for r in rows),
        },
        "load_average_end": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(result, indent=2))
    print()
    print(
        "| query | rollups p50 / p99 ms (source) | raw p50 / p99 ms | raw / rollups (p50) |", end=""
    )
    print(" same buckets |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        a, w = r["auto"], r["raw"]
        print(
            f"| {r['query']} | {a['p50_ms']} / {a['p99_ms']} ({a['served_by']}) | "
            f"{w['p50_ms']} / {w['p99_ms']} | {r['ratio_p50']}x | {r['same_buckets']} |"
        )
    return 0


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    sys.exit(run_main(lambda procs: main(procs, arguments), "lifecycle"))
