"""Benchmark polymicro: reads against a bare-Flask ceiling, and log/CPU-point ingest.

Usage (from the repository root; ``make bench`` builds .venv first)::

    make bench                                     # full run, about 2.5 minutes on 2 cores
    make bench BENCH_ARGS=--quick                  # smoke run, about 1 minute
    make bench BENCH_ARGS='--workers 2 --threads 8 --duration 20'
    make bench BENCH_ARGS='--sweep 1x8,2x4,2x8,4x2 --duration 5'   # reads only, ~50 s a combo
    make bench BENCH_ARGS='--against /tmp/base'    # reads only: this tree and the one in
                                                   # /tmp/base (git archive), interleaved
    make bench BENCH_ARGS='--auth'                 # authentication on (a viewer reads)
    make bench BENCH_ARGS='--only ingest'          # seed, then the ingest steps only
    make bench BENCH_ARGS='--only points --against /tmp/base --rounds 3'
                                                   # CPU-point ingest of both trees, interleaved
    make bench BENCH_ARGS='--gzip'                 # reads accept gzip, as a browser's do
    .venv/bin/python bench/run.py --help

One run, everything on 127.0.0.1 and stopped at the end (also on error, Ctrl-C, SIGTERM):

1. A private redis-server (or the Redis database at ``--redis-url``, flushed before and
   after) and a fresh SecantusDB (``secantusd-py``) in a temporary directory (kept with
   ``--keep``); polymicro_dev starts and stops every server.
2. The ceiling: bench/hello.py, a bare Flask app answering ``{"hello": "world"}``, under
   gunicorn with the same workers/threads/worker class (and no access log) as the app,
   served beside it; measured with wrk like every read below, before the first read and
   after each one (see step 5).
3. polymicro under gunicorn (``-c bench/gunicorn_conf.py``: the repo's gunicorn.conf.py
   without the access log; workers/threads/class from the options, whose defaults come
   from gunicorn.conf.py and so from POLYMICRO_GUNICORN_WORKERS/THREADS), with app log
   level WARNING and the rate limit and authentication off (polymicro_dev.TOOL_APP_ENV;
   ``--app-env KEY=VALUE`` changes any app setting).
4. Seeding through the API: 5 projects x 10 services, 2,000 logs per project (batches,
   spread over the services, severities and the last two days), a CPU entry per service
   with 96 points.
5. Reads: each endpoint warmed (a few requests, then one second of wrk that is thrown
   away), then ``wrk -t2 -c8 -d10s --latency``; requests/s, p50, p99, and the fraction of
   the ceiling: of the mean of the ceiling's runs just before and just after it (until
   2026-11-30 of one run at the start, which moved every fraction with that minute's
   noise).  Any non-2xx response fails the run.
6. Ingest: logs/s through single ``POST /api/logs`` (8 client threads, keep-alive), through
   ``POST /api/logs/batch`` with 1000 entries per request, CPU points/s through
   ``POST /api/metrics/cpu/{id}/data`` with 10,000 points per request, and raw pymongo
   ``insert_many`` of the same log documents (as the app stores them) in batches of 1000
   into a scratch collection with the ``logs`` collection's indexes.  Batch requests and
   insert_many use the same number of clients (``--batch-clients``, 2).
7. A markdown report (machine, settings, every figure) on stdout, the same as JSON in
   var/bench/<UTC timestamp>.json, then PASS/MISS per target:
   every GET >= 50% of the ceiling; every GET's p99 < 100 ms; batch log ingest >= 20x
   single-POST ingest and >= 30% of raw insert_many.

``--only ingest`` skips the ceiling and the reads: seeding, then step 6 (``--only points``:
only its CPU-point POSTs), with the CPU seconds that SecantusDB and the app's workers
spent in each step and the load average after it.  With ``--against DIR`` both trees are
served on the same data and each round (``--rounds``, 2) measures the steps of one, then
of the other (the order rotated); each round posts points of hours of its own.
``--tree DIR`` (with ``--only``) serves the checkout in DIR as "this", measured by this
bench (e.g. ``git archive <rev> | tar -x -C DIR`` to bisect; the app's dependencies come
from this venv), on a database of its own.

``--sweep 1x8,2x4,...`` (workers x threads) runs only the ceiling and the reads, once per
combination, and prints a comparison table; use it to choose gunicorn's settings.

``--against DIR`` runs only the ceiling and the reads, for this tree and for the polymicro
tree in DIR (e.g. ``git archive main | tar -x -C DIR``), both served at once on the same
data, with the ceiling served beside them; per round (``--rounds``, 2) and endpoint the
ceiling, this tree and DIR are measured one after the other (the order rotated), so a
before/after ratio, and each one's fraction of the ceiling, come from one run.  ``--auth`` turns
authentication on (seeding with an admin's token, reads with a viewer's), to see what
the token check costs a cached read.

Exit status: 0 when the measurement completed, whether targets were met or missed (it is a
measurement, not a test); 1 when something broke (a server did not start, a request
failed, a non-2xx response, wrk missing); 130/143 when interrupted.  wrk comes from
Debian's ``wrk`` package and is installed with apt-get when missing and running as root.

Note: every process (wrk, the Python clients, gunicorn, SecantusDB, Redis) shares this
machine's cores, so figures include that contention; anything else running at the same
time (the load average at start is in the report) makes them lower.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

import pymongo
import redis
from common import (
    BENCH_APP_ENV,
    DataMaker,
    Plan,
    Seeded,
    auth_env,
    bearer,
    bench_reuse_port,
    commit,
    copy_log_indexes,
    machine,
    seed,
    sockets,
    start_backends,
    stored_log,
    tokens,
)
from load import WrkResult, ensure_wrk, run_parallel, run_together, run_wrk

from polymicro_dev import (
    ROOT,
    TOOL_APP_ENV,
    DevError,
    GunicornSettings,
    HttpClient,
    Processes,
    Server,
    app_env,
    child_pids,
    encode,
    read_gunicorn_conf,
    run_main,
    start_gunicorn,
)

BENCH_DIR = ROOT / "bench"

# --- what one run does --------------------------------------------------------------------


FULL = Plan()
QUICK = replace(FULL, single_posts=400, log_batches=4, point_posts=2)

TARGET_CEILING_FRACTION = 0.50
TARGET_P99_MS = 100.0
TARGET_BATCH_VS_SINGLE = 20.0
TARGET_BATCH_VS_RAW = 0.30


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark polymicro (see the module docstring for what a run does).",
    )
    # Defaults: what gunicorn.conf.py sets (POLYMICRO_GUNICORN_WORKERS/THREADS) for an app
    # with POLYMICRO_REDIS_URL set, as the benchmark serves it.
    parser.add_argument("--workers", type=int, help="gunicorn workers (gunicorn.conf.py's)")
    parser.add_argument("--threads", type=int, help="threads per worker (gunicorn.conf.py's)")
    parser.add_argument("--worker-class", help="gunicorn worker class (gunicorn.conf.py's)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (10; --quick: 3)")
    parser.add_argument("--warmup", type=float, help="seconds of discarded wrk per endpoint (1)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (8)")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument(
        "--ingest-clients", type=int, help="client threads for single POSTs (= --connections)"
    )
    parser.add_argument(
        "--batch-clients",
        type=int,
        default=2,
        help="client threads for batch POSTs, point POSTs and insert_many (2)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: short wrk, less ingest")
    parser.add_argument("--keep", action="store_true", help="keep the temporary database dir")
    parser.add_argument(
        "--sweep", metavar="WxT,...", help="reads only, for each workers x threads, e.g. 1x8,2x4"
    )
    parser.add_argument(
        "--redis-url", help="a Redis database to use (flushed) instead of a private redis-server"
    )
    parser.add_argument(
        "--app-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the app, repeatable (e.g. POLYMICRO_RATELIMIT_ENABLED=true)",
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="reads only: also serve the code in DIR (e.g. main exported with git archive) "
        "and measure both, interleaved with the ceiling",
    )
    parser.add_argument(
        "--only",
        choices=("ingest", "points"),
        help="no ceiling, no reads: seed, then every ingest step (ingest) or only the "
        "CPU-point POSTs (points); with --against, both trees interleaved",
    )
    parser.add_argument(
        "--rounds", type=int, help="--against: rounds (2); --only without --against: (1)"
    )
    parser.add_argument(
        "--auth",
        action="store_true",
        help="authentication on: seeded with an admin's token, read with a viewer's",
    )
    parser.add_argument(
        "--tree",
        type=Path,
        metavar="DIR",
        help="--only: serve the polymicro tree in DIR as 'this' (e.g. a git archive of "
        "another commit), measured by this bench",
    )
    parser.add_argument(
        "--gzip",
        action="store_true",
        help="reads send Accept-Encoding: gzip, as a browser (the dashboard) does; the "
        "default sends none, so large bodies are measured uncompressed",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the generated data")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "var" / "bench")
    args = parser.parse_args(argv)
    conf = gunicorn_defaults(args.redis_url)
    args.workers = conf.workers if args.workers is None else args.workers
    args.threads = conf.threads if args.threads is None else args.threads
    args.worker_class = args.worker_class or conf.worker_class
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 1.0
    if args.ingest_clients is None:
        args.ingest_clients = args.connections
    args.plan = QUICK if args.quick else FULL
    args.combos = parse_sweep(parser, args.sweep) if args.sweep else None
    if args.rounds is None:
        args.rounds = 2 if args.against is not None else 1
    for name in ("workers", "threads", "connections", "wrk_threads", "ingest_clients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if any("=" not in item for item in args.app_env):
        parser.error("--app-env takes KEY=VALUE")
    if args.batch_clients < 1 or args.duration <= 0 or args.rounds < 1:
        parser.error("--batch-clients, --duration and --rounds must be positive")
    if args.against is not None and args.combos:
        parser.error("--against and --sweep do not go together")
    if args.only and args.combos:
        parser.error("--only and --sweep do not go together")
    if args.tree is not None and not args.only:
        parser.error("--tree goes with --only")
    for option in ("against", "tree"):
        tree = getattr(args, option)
        if tree is not None:
            if not (tree / "wsgi.py").is_file():
                parser.error(f"--{option}: {tree} has no wsgi.py (a polymicro tree)")
            setattr(args, option, tree.resolve())
    return args


def parse_sweep(parser: argparse.ArgumentParser, text: str) -> list[tuple[int, int]]:
    combos = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", item)
        if not match or min(int(match[1]), int(match[2])) < 1:
            parser.error(f"--sweep: {item!r} is not WORKERSxTHREADS (e.g. 2x4)")
        combos.append((int(match[1]), int(match[2])))
    return combos


def gunicorn_defaults(redis_url: str | None) -> GunicornSettings:
    """workers/threads/worker_class as gunicorn.conf.py sets them in the environment the
    app gets (this one plus POLYMICRO_REDIS_URL, on which its default workers depend;
    the app always has a Redis here)."""
    conf = read_gunicorn_conf({**os.environ, "POLYMICRO_REDIS_URL": redis_url or "redis://private"})
    return GunicornSettings(conf["workers"], conf["threads"], conf["worker_class"])


# --- reads ---------------------------------------------------------------------------------


def read_endpoints(seeded: Seeded) -> list[tuple[str, str]]:
    """(label, path) of every read measured; all on the first project."""
    p = seeded.project_ids[0]
    return [
        ("GET /api/projects", "/api/projects"),
        ("GET /api/services/project/{id}", f"/api/services/project/{p}"),
        ("GET /api/metrics/cpu/project/{id}", f"/api/metrics/cpu/project/{p}"),
        ("GET /api/logs/project/{id}", f"/api/logs/project/{p}"),
        ("GET /api/logs?project_id=…&severity=error", f"/api/logs?project_id={p}&severity=error"),
        ("GET /api/projects/{id}", f"/api/projects/{p}"),
    ]


def measure_read(wrk: str, server: Server, label: str, path: str, args) -> dict:
    """Warm ``path`` (3 checked requests, then ``--warmup`` s of wrk), then measure it
    (with ``--auth``, every request carries a viewer's token)."""
    headers = args.read_headers
    with HttpClient(server.port, headers=headers) as client:
        for _ in range(3):  # the status only: with --gzip the body is compressed
            response = client.request("GET", path)
            if response.status != 200:
                raise DevError(f"GET {path} answered {response.status} (wanted 200)")
    url = server.uri + path
    if args.warmup > 0:
        warm = run_wrk(wrk, url, args.warmup, args.connections, args.wrk_threads, headers=headers)
        require_2xx(label, warm)
    result = run_wrk(wrk, url, args.duration, args.connections, args.wrk_threads, headers=headers)
    server.check_alive()
    require_2xx(label, result)
    say(
        f"{label:<44} {result.rps:9.1f} req/s   p50 {result.p50_ms:7.2f} ms   "
        f"p99 {result.p99_ms:7.2f} ms"
    )
    return {"name": label, "path": path, **result.as_dict()}


def require_2xx(label: str, result: WrkResult) -> None:
    if result.non_2xx:
        raise DevError(f"{label}: {result.non_2xx} of {result.requests} responses were not 2xx/3xx")
    if any(result.socket_errors.values()):
        say(f"warning: {label}: wrk socket errors {result.socket_errors}")


CEILING_LABEL = "bare Flask {hello: world} (ceiling)"


def start_hello(procs, settings, workdir, env) -> Server:
    return start_gunicorn(
        procs,
        env,
        workdir,
        settings,
        app="hello:app",
        name="hello",
        ready_path="/",
        extra_args=["--pythonpath", str(BENCH_DIR)],
    )


def measure_ceiling(wrk, procs, settings, workdir, env, args) -> dict:
    hello = start_hello(procs, settings, workdir, env)
    try:
        return measure_read(wrk, hello, CEILING_LABEL, "/", args)
    finally:
        procs.stop(hello)


def reads_between_ceilings(wrk, app: Server, hello: Server, seeded, args) -> tuple[dict, list]:
    """Each read measured between two measurements of the ceiling, and its fraction taken
    of their mean: on a shared machine the ceiling moves by a quarter between minutes
    (3,806 to 6,410 req/s within one run, 2026-11-30), so one ceiling at the start made
    every fraction depend on that one moment.  Returns (the ceiling run with the median
    rate, with every rate in ``rps_all``; the reads)."""
    ceilings = [measure_read(wrk, hello, CEILING_LABEL, "/", args)]
    reads = []
    for endpoint in read_endpoints(seeded):
        read = measure_read(wrk, app, *endpoint, args)
        ceilings.append(measure_read(wrk, hello, CEILING_LABEL, "/", args))
        read["ceiling_rps"] = (ceilings[-2]["rps"] + ceilings[-1]["rps"]) / 2
        read["fraction_of_ceiling"] = read["rps"] / read["ceiling_rps"]
        reads.append(read)
    median = sorted(ceilings, key=lambda c: c["rps"])[len(ceilings) // 2]
    return {**median, "rps_all": [round(c["rps"], 1) for c in ceilings]}, reads


def with_ceiling(reads: list[dict], ceiling: dict) -> list[dict]:
    for read in reads:
        read["fraction_of_ceiling"] = read["rps"] / ceiling["rps"] if ceiling["rps"] else None
    return reads


# --- ingest --------------------------------------------------------------------------------


def measure_ingest(
    port: int,
    mongo_uri: str,
    seeded: Seeded,
    maker: DataMaker,
    args,
    points_only: bool = False,
    first_hour: int = 0,
    watch: StepCpu | None = None,
) -> dict:
    """Step 6 of the module docstring; ``points_only``: only the CPU-point POSTs, whose
    points start ``first_hour`` hours after 30 days ago (a round of its own).  ``watch``
    adds each step's CPU seconds of the database and the app."""
    plan: Plan = args.plan
    watch = watch or StepCpu()
    if points_only:
        return {
            "cpu_points": watch.step(lambda: measure_points(port, seeded, maker, args, first_hour))
        }

    def entries(count: int) -> list[dict]:
        out = []
        for i in range(count):
            project_id = seeded.project_ids[i % len(seeded.project_ids)]
            out.append(maker.log(project_id, seeded.service_ids[project_id]))
        return out

    # Single POSTs: one entry per request, --ingest-clients keep-alive connections.
    singles = entries(plan.single_posts)
    jobs = [("POST", "/api/logs", encode(entry)) for entry in singles]
    single = watch.step(
        lambda: post_rate(port, "single POST /api/logs", jobs, args.ingest_clients, len(singles))
    )

    # Batches of batch_size; the same entries (as stored) go to insert_many below.
    batches = [entries(plan.batch_size) for _ in range(plan.log_batches)]
    jobs = [("POST", "/api/logs/batch", encode(batch)) for batch in batches]

    def check_batch(answer) -> None:
        if answer.get("inserted") != plan.batch_size:
            raise DevError(f"POST /api/logs/batch answered inserted={answer.get('inserted')}")

    batch = watch.step(
        lambda: post_rate(
            port,
            f"POST /api/logs/batch x {plan.batch_size}",
            jobs,
            args.batch_clients,
            plan.log_batches * plan.batch_size,
            check=check_batch,
        )
    )

    points = watch.step(lambda: measure_points(port, seeded, maker, args, first_hour))

    def raw_step() -> dict:
        say(
            f"ingest: raw insert_many, {plan.log_batches} x {plan.batch_size} into a logs-like copy"
        )
        raw_s = raw_insert_many(mongo_uri, [[stored_log(e) for e in b] for b in batches], args)
        raw = rate(plan.log_batches * plan.batch_size, plan.log_batches, raw_s, args.batch_clients)
        say(f"  {raw['per_s']:.0f} logs/s")
        return raw

    raw = watch.step(raw_step)
    return {
        "single_post_logs": single,
        "batch_post_logs": batch,
        "cpu_points": points,
        "raw_insert_many_logs": raw,
        "batch_vs_single": batch["per_s"] / single["per_s"],
        "batch_vs_raw": batch["per_s"] / raw["per_s"],
    }


def measure_points(port: int, seeded: Seeded, maker: DataMaker, args, first_hour: int = 0) -> dict:
    """CPU points: point_posts requests of points_per_post, one entry each (round-robin),
    a second apart from 30 days ago plus ``first_hour`` + i hours."""
    plan: Plan = args.plan
    start = maker.now - timedelta(days=30)
    jobs = []
    for i in range(plan.point_posts):
        metric_id = seeded.metric_ids[i % len(seeded.metric_ids)]
        points = maker.points(
            plan.points_per_post, start + timedelta(hours=first_hour + i), timedelta(seconds=1)
        )
        jobs.append(("POST", f"/api/metrics/cpu/{metric_id}/data", encode(points)))

    def check_points(answer) -> None:
        if answer != {"inserted": plan.points_per_post}:
            raise DevError(f"POST /api/metrics/cpu/{{id}}/data answered {answer}")

    return post_rate(
        port,
        f"POST /api/metrics/cpu/{{id}}/data x {plan.points_per_post}",
        jobs,
        args.batch_clients,
        plan.point_posts * plan.points_per_post,
        check=check_points,
        unit="points",
    )


class StepCpu:
    """CPU seconds (user + system, from /proc) that the watched processes spent during
    each step, added to the step's figures as ``cpu_s`` (by name), with the load average
    after it.  Watched: ``db`` (SecantusDB) and ``app`` (a gunicorn master and its
    workers); without any, a step only gets its load average."""

    def __init__(self, db: Server | None = None, app: Server | None = None) -> None:
        self.db, self.app = db, app

    def _pids(self) -> dict[str, list[int]]:
        pids = {}
        if self.db is not None:
            pids["db"] = [self.db.proc.pid]
        if self.app is not None:
            pids["app"] = [self.app.proc.pid, *child_pids(self.app.proc.pid)]
        return pids

    @staticmethod
    def _cpu(pids: list[int]) -> float:
        total = 0.0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def step(self, run) -> dict:
        pids = self._pids()
        before = {name: self._cpu(p) for name, p in pids.items()}
        result = run()
        cpu = {name: round(self._cpu(p) - before[name], 2) for name, p in pids.items()}
        result["load_after"] = round(os.getloadavg()[0], 2)
        if cpu:
            result["cpu_s"] = cpu
            say("  CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
        return result


def post_rate(
    port: int,
    what: str,
    jobs: list[tuple[str, str, bytes]],
    clients: int,
    items: int,
    check=None,
    unit: str = "logs",
) -> dict:
    """Send ``jobs`` (each answered 201) from ``clients`` threads; the rate of ``items``."""
    say(f"ingest: {len(jobs)} {what}, {clients} clients")
    seconds = run_parallel(port, clients, jobs, expect=201, check=check)
    result = rate(items, len(jobs), seconds, clients)
    say(f"  {result['per_s']:.0f} {unit}/s")
    return result


def rate(items: int, requests: int, seconds: float, clients: int) -> dict:
    return {
        "items": items,
        "requests": requests,
        "clients": clients,
        "seconds": seconds,
        "per_s": items / seconds,
    }


def raw_insert_many(mongo_uri: str, batches: list[list[dict]], args) -> float:
    """insert_many of each batch into ``bench_raw_logs``, which gets every index of the
    app's ``logs`` collection first; ``--batch-clients`` threads; returns wall seconds."""
    client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        db = client.get_default_database()
        scratch = copy_log_indexes(db)
        clients = max(1, min(args.batch_clients, len(batches)))
        shares = [batches[i::clients] for i in range(clients)]

        def insert(share: list[list[dict]]) -> None:
            for batch in share:
                scratch.insert_many(batch, ordered=True)

        elapsed = run_together([lambda s=share: insert(s) for share in shares], "insert_many")
        expected = sum(len(b) for b in batches)
        if scratch.count_documents({}) != expected:
            raise DevError("insert_many stored a different number of documents")
        scratch.drop()
        return elapsed
    finally:
        client.close()


# --- running -------------------------------------------------------------------------------


def say(text: str) -> None:
    print(f"bench: {text}", flush=True)


def start_app(procs, settings: GunicornSettings, workdir: Path, env: dict) -> Server:
    return start_gunicorn(procs, env, workdir, settings, name="polymicro")


def run_full(wrk, procs, workdir, env, mongo_uri, args) -> dict:
    settings = GunicornSettings(args.workers, args.threads, args.worker_class)
    say(f"gunicorn {settings.label}; wrk -t{args.wrk_threads} -c{args.connections}")
    hello = start_hello(procs, settings, workdir, env)
    app = start_app(procs, settings, workdir, env)
    maker = DataMaker(args.seed)
    seeded = seed(app.port, args.plan, maker, args.batch_clients, args.seed_headers)
    ceiling, reads = reads_between_ceilings(wrk, app, hello, seeded, args)
    procs.stop(hello)
    ingest = measure_ingest(app.port, mongo_uri, seeded, maker, args)
    app.check_alive()
    procs.stop(app)
    result = header(args, settings)
    result.update(
        data=seed_summary(args.plan, seeded),
        ceiling=ceiling,
        reads=reads,
        ingest=ingest,
    )
    result["targets"] = evaluate(result)
    return result


def run_sweep(wrk, procs, workdir, env, redis_url, args) -> dict:
    runs = []
    seeded = None
    maker = DataMaker(args.seed)
    for workers, threads in args.combos:
        settings = GunicornSettings(workers, threads, args.worker_class)
        say(f"sweep: gunicorn {settings.label}")
        redis.Redis.from_url(redis_url).flushdb()  # every combination starts from a cold cache
        ceiling = measure_ceiling(wrk, procs, settings, workdir, env, args)
        app = start_app(procs, settings, workdir, env)
        try:
            if seeded is None:
                seeded = seed(app.port, args.plan, maker, args.batch_clients, args.seed_headers)
            reads = [measure_read(wrk, app, *ep, args) for ep in read_endpoints(seeded)]
        finally:
            procs.stop(app)
        runs.append(
            {
                "gunicorn": settings.__dict__,
                "ceiling": ceiling,
                "reads": with_ceiling(reads, ceiling),
            }
        )
    result = header(args, None)
    result.update(data=seed_summary(args.plan, seeded), runs=runs)
    return result


AGAINST_PREFIX = "polymicro-against:"


def start_tree(
    procs, workdir, env, settings: GunicornSettings, tree: Path, name: str = "against"
) -> Server:
    """The polymicro tree in ``tree`` under gunicorn: ``--chdir`` puts it first on
    ``sys.path`` (ahead of this venv's editable install), bench/gunicorn_conf.py reads
    that tree's gunicorn.conf.py; as ``against``, its cache keys have a prefix of their
    own."""
    env = {**env, "POLYMICRO_BENCH_TREE": str(tree)}
    if (
        settings.worker_class.startswith("polymicro.")
        and not (tree / "polymicro/serving.py").exists()
    ):
        # A tree older than the balancing worker: gthread, which that tree served with.
        settings = replace(settings, worker_class="gthread")
    if name == "against":
        env["POLYMICRO_CACHE_KEY_PREFIX"] = AGAINST_PREFIX
    return start_gunicorn(
        procs, env, workdir, settings, name=name, extra_args=["--chdir", str(tree)]
    )


def run_ingest_only(procs, workdir, env, db: Server, args) -> dict:
    """``--only ingest|points``: seed, then the ingest steps (or only the CPU-point
    POSTs) of this tree, and with ``--against`` of that tree too, both served on the
    same data; per round each tree's steps run one after the other, the order rotated
    each round, and each round posts points of its own hours."""
    settings = GunicornSettings(args.workers, args.threads, args.worker_class)
    say(f"gunicorn {settings.label}; only {args.only}, {args.rounds} round(s)")
    if args.tree is None:
        this = start_gunicorn(procs, env, workdir, settings, name="polymicro")
    else:
        say(f"this: {args.tree}")
        this = start_tree(procs, workdir, env, settings, args.tree, name="polymicro")
    servers = {"this": this}
    if args.against is not None:
        say(f"against: {args.against}")
        servers["against"] = start_tree(procs, workdir, env, settings, args.against)
    maker = DataMaker(args.seed)
    seeded = seed(servers["this"].port, args.plan, maker, args.batch_clients, args.seed_headers)
    names = list(servers)
    rounds = []
    for number in range(args.rounds):
        shift = number % len(names)
        measured = {}
        for name in names[shift:] + names[:shift]:
            say(f"round {number + 1}: {name}")
            measured[name] = measure_ingest(
                servers[name].port,
                db.uri,
                seeded,
                maker,
                args,
                points_only=args.only == "points",
                first_hour=(number * len(names) + len(measured)) * args.plan.point_posts,
                watch=StepCpu(db, servers[name]),
            )
            servers[name].check_alive()
        rounds.append(measured)
    for server in servers.values():
        procs.stop(server)
    result = header(args, settings)
    result.update(
        data=seed_summary(args.plan, seeded),
        only=args.only,
        against=None if args.against is None else str(args.against),
        tree=None if args.tree is None else str(args.tree),
        rounds=rounds,
    )
    return result


INGEST_ROWS = {
    "single_post_logs": "logs: single `POST /api/logs`",
    "batch_post_logs": "logs: `POST /api/logs/batch`, 1000 per request",
    "cpu_points": "CPU points: `POST /api/metrics/cpu/{id}/data`, 10,000 per request",
    "raw_insert_many_logs": "logs: raw pymongo `insert_many`, 1000 per batch, logs indexes",
}


def render_ingest_only(result: dict) -> str:
    lines = render_header(result)
    lines += ["", f"this: {result['tree'] or result['commit']}; against: {result['against']}"]
    lines += ["", f"### Ingest only ({result['only']}), in the order measured", ""]
    lines.append(
        "| round | tree | what | items | s | per s | CPU s SecantusDB | CPU s app | load after |"
    )
    lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for number, measured in enumerate(result["rounds"], 1):
        for name, steps in measured.items():
            for key, row in steps.items():
                if key not in INGEST_ROWS:
                    continue
                cpu = row.get("cpu_s", {})
                lines.append(
                    f"| {number} | {name} | {INGEST_ROWS[key]} | {row['items']:,} | "
                    f"{row['seconds']:.2f} | {row['per_s']:,.0f} | {cpu.get('db', 0):.1f} | "
                    f"{cpu.get('app', 0):.1f} | {row['load_after']:.2f} |"
                )
    return "\n".join(lines)


def run_against(wrk, procs, workdir, env, args) -> dict:
    """Reads of this tree ("this") and of ``--against DIR`` ("against"), both served at
    once on the same data, with the ceiling served beside them: per round and endpoint,
    the ceiling, this and against are measured one after the other (the order rotated
    each round), so each ratio compares figures taken within a minute of each other.

    The other tree is served by the same gunicorn with ``--chdir DIR`` (its directory is
    first on ``sys.path``, ahead of this venv's editable install) and a cache key prefix
    of its own, so neither reads entries the other stored."""
    settings = GunicornSettings(args.workers, args.threads, args.worker_class)
    say(f"gunicorn {settings.label}; wrk -t{args.wrk_threads} -c{args.connections}")
    say(f"against: {args.against}, {args.rounds} rounds")
    servers = {
        "ceiling": start_gunicorn(
            procs,
            env,
            workdir,
            settings,
            app="hello:app",
            name="hello",
            ready_path="/",
            extra_args=["--pythonpath", str(BENCH_DIR)],
        ),
        "this": start_gunicorn(procs, env, workdir, settings, name="polymicro"),
        "against": start_tree(procs, workdir, env, settings, args.against),
    }
    maker = DataMaker(args.seed)
    seeded = seed(servers["this"].port, args.plan, maker, args.batch_clients, args.seed_headers)
    names = ["ceiling", "this", "against"]
    rounds = []
    for number in range(args.rounds):
        say(f"round {number + 1}")
        reads = []
        for index, (label, path) in enumerate(read_endpoints(seeded)):
            shift = (number + index) % len(names)
            measured = {}
            for name in names[shift:] + names[:shift]:
                if name == "ceiling":
                    measured[name] = measure_read(
                        wrk, servers[name], "bare Flask {hello: world} (ceiling)", "/", args
                    )
                else:
                    measured[name] = measure_read(
                        wrk, servers[name], f"{label} [{name}]", path, args
                    )
            for name in ("this", "against"):
                measured[name]["fraction_of_ceiling"] = (
                    measured[name]["rps"] / measured["ceiling"]["rps"]
                )
            reads.append({"name": label, "path": path, **measured})
        rounds.append({"reads": reads})
    for server in servers.values():
        server.check_alive()
        procs.stop(server)
    result = header(args, settings)
    result.update(data=seed_summary(args.plan, seeded), against=str(args.against), rounds=rounds)
    result["summary"] = against_summary(result)
    return result


def seed_summary(plan: Plan, seeded: Seeded) -> dict:
    return {
        "projects": plan.projects,
        "services": plan.projects * plan.services_per_project,
        "logs": plan.projects * plan.logs_per_project,
        "cpu_points": plan.projects * plan.services_per_project * plan.points_per_service,
        "seed_seconds": seeded.seconds,
    }


# --- report --------------------------------------------------------------------------------


def versions() -> dict:
    out = {}
    for name in ("polymicro", "flask", "flask-smorest", "gunicorn", "mongoengine", "pymongo"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["secantusdb"] = metadata.version("SecantusDB")
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    out["wrk"] = (wrk.stdout or wrk.stderr).split(" [")[0].strip()
    return out


STARTED = datetime.now(UTC)


def header(args, settings: GunicornSettings | None) -> dict:
    mode = "sweep" if args.combos else "quick" if args.quick else "full"
    if args.against is not None:
        mode = "against"
    if args.only:
        mode = f"only-{args.only}" + ("-against" if args.against is not None else "")
    return {
        "mode": mode,
        "date": STARTED.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit(),
        "machine": machine(),
        "versions": versions(),
        "gunicorn": None
        if settings is None
        else {
            **settings.__dict__,
            "access_log": False,
            "reuse_port": bench_reuse_port(dict(i.split("=", 1) for i in args.app_env)),
        },
        "app_env": {
            **TOOL_APP_ENV,
            **(
                {"POLYMICRO_AUTH_ENABLED": "true (reads with a viewer's token)"}
                if args.auth
                else {}
            ),
            **dict(item.split("=", 1) for item in args.app_env),
        },
        "redis": args.redis_url or "private redis-server",
        "load": {
            "tool": "wrk",
            "threads": min(args.wrk_threads, args.connections),
            "connections": args.connections,
            "accept_encoding": "gzip" if args.gzip else None,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "ingest_clients": args.ingest_clients,
            "batch_clients": args.batch_clients,
        },
    }


def evaluate(result: dict) -> list[dict]:
    """PASS/MISS of every target (see the module docstring)."""

    def target(text: str, value: str, passed: bool) -> dict:
        return {"target": text, "value": value, "pass": passed}

    reads, ingest = result["reads"], result["ingest"]
    targets = [
        target(
            f"{r['name']}: ≥ {TARGET_CEILING_FRACTION:.0%} of the ceiling",
            f"{r['fraction_of_ceiling']:.1%}",
            r["fraction_of_ceiling"] >= TARGET_CEILING_FRACTION,
        )
        for r in reads
    ]
    targets += [
        target(
            f"{r['name']}: p99 < {TARGET_P99_MS:.0f} ms",
            f"{r['p99_ms']:.1f} ms",
            r["p99_ms"] < TARGET_P99_MS,
        )
        for r in reads
    ]
    targets.append(
        target(
            f"batch log ingest ≥ {TARGET_BATCH_VS_SINGLE:.0f}× single-POST ingest",
            f"{ingest['batch_vs_single']:.1f}×",
            ingest["batch_vs_single"] >= TARGET_BATCH_VS_SINGLE,
        )
    )
    targets.append(
        target(
            f"batch log ingest ≥ {TARGET_BATCH_VS_RAW:.0%} of raw insert_many",
            f"{ingest['batch_vs_raw']:.1%}",
            ingest["batch_vs_raw"] >= TARGET_BATCH_VS_RAW,
        )
    )
    return targets


def render_header(result: dict) -> list[str]:
    m, v, load = result["machine"], result["versions"], result["load"]
    lines = [
        f"## polymicro benchmark ({result['mode']}) — {result['date']}",
        "",
        "| | |",
        "|---|---|",
        f"| machine | {m['nproc']} CPUs (nproc), {m['cpu_model']}, {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, load average at start {m['load_average_at_start'][0]} |",
        f"| code | {result['commit']}; Python {m['python']}, Flask {v['flask']}, "
        f"flask-smorest {v['flask-smorest']}, gunicorn {v['gunicorn']} |",
        f"| database | SecantusDB {v['secantusdb']} (fresh, 127.0.0.1); cache: "
        f"{result.get('redis', 'Redis')} |",
        "| app settings | "
        + ", ".join(f"{k.removeprefix('POLYMICRO_')}={v}" for k, v in result["app_env"].items())
        + " |",
    ]
    if result["gunicorn"]:
        g = result["gunicorn"]
        lines.append(
            f"| gunicorn | {g['workers']} workers × {g['threads']} threads, "
            f"{g['worker_class']}, "
            f"{sockets(g.get('reuse_port'))}, "
            "no access log |"
        )
    lines.append(
        f"| reads | {v['wrk']}: {load['threads']} threads, {load['connections']} connections, "
        f"{load['duration_s']:g} s per endpoint after {load['warmup_s']:g} s warm-up, --latency"
        + (", Accept-Encoding: gzip" if load.get("accept_encoding") else ", no Accept-Encoding")
        + " |"
    )
    d = result["data"]
    lines.append(
        f"| data | {d['projects']} projects, {d['services']} services, {d['logs']:,} logs, "
        f"{d['cpu_points']:,} CPU points (seeded through the API in {d['seed_seconds']:.1f} s) |"
    )
    return lines


def render_full(result: dict) -> str:
    lines = render_header(result)
    c = result["ceiling"]
    lines += [
        "",
        "### Reads",
        "",
        "Each read is measured between two runs of the ceiling and taken as a fraction of "
        f"their mean; the ceiling's runs: {', '.join(f'{x:,.0f}' for x in c['rps_all'])} "
        "req/s (the row shows the median one).",
        "",
        "| endpoint | req/s | p50 ms | p99 ms | ceiling around it | of ceiling |",
    ]
    lines.append("|---|---:|---:|---:|---:|---:|")
    lines.append(
        f'| bare Flask `{{"hello": "world"}}` (ceiling) | {c["rps"]:.1f} | '
        f"{c['p50_ms']:.2f} | {c['p99_ms']:.2f} | | 100% |"
    )
    for r in result["reads"]:
        lines.append(
            f"| `{r['name'][4:]}` | {r['rps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['ceiling_rps']:.1f} | {r['fraction_of_ceiling']:.1%} |"
        )
    i = result["ingest"]
    lines += ["", "### Ingest", "", "| what | items | requests | clients | s | per s | vs |"]
    lines.append("|---|---:|---:|---:|---:|---:|---|")
    rows = [
        ("logs: single `POST /api/logs`", i["single_post_logs"], "1×"),
        (
            "logs: `POST /api/logs/batch`, 1000 per request",
            i["batch_post_logs"],
            f"{i['batch_vs_single']:.1f}× single, {i['batch_vs_raw']:.1%} of raw",
        ),
        (
            "logs: raw pymongo `insert_many`, 1000 per batch, logs indexes",
            i["raw_insert_many_logs"],
            "",
        ),
        ("CPU points: `POST /api/metrics/cpu/{id}/data`, 10,000 per request", i["cpu_points"], ""),
    ]
    for what, row, versus in rows:
        lines.append(
            f"| {what} | {row['items']:,} | {row['requests']:,} | {row['clients']} | "
            f"{row['seconds']:.2f} | {row['per_s']:,.0f} | {versus} |"
        )
    lines += ["", "### Targets", ""]
    for t in result["targets"]:
        lines.append(f"- {'PASS' if t['pass'] else 'MISS'} {t['target']} — {t['value']}")
    return "\n".join(lines)


def render_sweep(result: dict) -> str:
    lines = render_header(result)
    names = [r["name"][4:] for r in result["runs"][0]["reads"]]
    lines += ["", "### Reads per gunicorn setting: req/s (p99 ms)", ""]
    lines.append(
        "| workers × threads | ceiling | "
        + " | ".join(f"`{n}`" for n in names)
        + " | min of ceiling | worst p99 ms |"
    )
    lines.append("|---|" + "---:|" * (len(names) + 3))
    for run in result["runs"]:
        g, c = run["gunicorn"], run["ceiling"]
        cells = [f"{r['rps']:.0f} ({r['p99_ms']:.0f})" for r in run["reads"]]
        worst_fraction = min(r["fraction_of_ceiling"] for r in run["reads"])
        worst_p99 = max(r["p99_ms"] for r in run["reads"])
        lines.append(
            f"| {g['workers']} × {g['threads']} {g['worker_class']} | "
            f"{c['rps']:.0f} ({c['p99_ms']:.0f}) | "
            + " | ".join(cells)
            + f" | {worst_fraction:.1%} | {worst_p99:.1f} |"
        )
    return "\n".join(lines)


def against_summary(result: dict) -> list[dict]:
    """Per endpoint, the medians over the rounds of this/against and of each one's
    fraction of the ceiling (a median resists the slow moments of a shared machine)."""
    rows = []
    for index, first in enumerate(result["rounds"][0]["reads"]):
        reads = [run["reads"][index] for run in result["rounds"]]
        rows.append(
            {
                "name": first["name"],
                "this_vs_against": statistics.median(
                    r["this"]["rps"] / r["against"]["rps"] for r in reads
                ),
                "this_of_ceiling": statistics.median(
                    r["this"]["fraction_of_ceiling"] for r in reads
                ),
                "against_of_ceiling": statistics.median(
                    r["against"]["fraction_of_ceiling"] for r in reads
                ),
            }
        )
    return rows


def render_against(result: dict) -> str:
    lines = render_header(result)
    lines += ["", f"### Reads: this tree against {result['against']}, medians of the rounds", ""]
    lines.append("| endpoint | this/against | this of ceiling | against of ceiling |")
    lines.append("|---|---:|---:|---:|")
    for row in result["summary"]:
        lines.append(
            f"| `{row['name'][4:]}` | {row['this_vs_against']:.2f} | "
            f"{row['this_of_ceiling']:.1%} | {row['against_of_ceiling']:.1%} |"
        )
    lines += ["", "### Every round", ""]
    lines.append(
        "| round | endpoint | ceiling req/s | this req/s (p99 ms) | against req/s (p99 ms) "
        "| this/against | this of ceiling | against of ceiling |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for number, run in enumerate(result["rounds"], 1):
        for r in run["reads"]:
            c, this, other = r["ceiling"], r["this"], r["against"]
            lines.append(
                f"| {number} | `{r['name'][4:]}` | {c['rps']:.0f} | "
                f"{this['rps']:.0f} ({this['p99_ms']:.0f}) | "
                f"{other['rps']:.0f} ({other['p99_ms']:.0f}) | "
                f"{this['rps'] / other['rps']:.2f} | {this['fraction_of_ceiling']:.1%} | "
                f"{other['fraction_of_ceiling']:.1%} |"
            )
    return "\n".join(lines)


def write_json(result: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = {"sweep": "-sweep", "against": "-against"}.get(result["mode"], "")
    if result["mode"].startswith("only-"):
        suffix = "-" + result["mode"]
    path = out_dir / f"{STARTED.strftime('%Y%m%dT%H%M%SZ')}{suffix}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


# --- main ----------------------------------------------------------------------------------


def main(procs: Processes, args: argparse.Namespace) -> int:
    began = time.monotonic()
    load_1m = os.getloadavg()[0]
    if load_1m > 0.5 * len(os.sched_getaffinity(0)):
        say(f"warning: load average {load_1m:.1f} at start; other work will lower the figures")
    wrk = ensure_wrk()
    backends = start_backends(procs, "bench", args.redis_url, args.keep)
    workdir, redis_url, db = backends.workdir, backends.redis_url, backends.db
    say(f"SecantusDB in {workdir}; cache {redis_url}")
    overrides = {**BENCH_APP_ENV, **(auth_env(workdir) if args.auth else {})}
    overrides.update(item.split("=", 1) for item in args.app_env)
    env = app_env(db.uri, redis_url, **overrides)
    args.seed_headers = args.read_headers = None
    if args.auth:
        credentials = tokens()
        args.seed_headers, args.read_headers = (
            bearer(credentials["admin"]),
            bearer(credentials["viewer"]),
        )
    if args.gzip:
        args.read_headers = {**(args.read_headers or {}), "Accept-Encoding": "gzip"}
    if args.only:
        result = run_ingest_only(procs, workdir, env, db, args)
        report = render_ingest_only(result)
    elif args.against is not None:
        result = run_against(wrk, procs, workdir, env, args)
        report = render_against(result)
    elif args.combos:
        result = run_sweep(wrk, procs, workdir, env, redis_url, args)
        report = render_sweep(result)
    else:
        result = run_full(wrk, procs, workdir, env, db.uri, args)
        report = render_full(result)
    result["elapsed_s"] = round(time.monotonic() - began, 1)
    path = write_json(result, args.out_dir)
    print()
    print(report)
    print()
    say(f"took {result['elapsed_s']:.0f} s; JSON in {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    sys.exit(run_main(lambda procs: main(procs, arguments), "bench"))
