"""Python CPU per single ``POST /api/logs``, against SecantusDB and Redis.

Usage (from the repository root)::

    .venv/bin/python bench/post_cost.py                      # this tree only
    .venv/bin/python bench/post_cost.py --base /work/wt/perf-base   # before and after, one run
    .venv/bin/python bench/post_cost.py --profile 25         # in-process cProfile's top 25
    .venv/bin/python bench/post_cost.py --quick              # smoke run: 200 POSTs, 1 round

One run starts one SecantusDB (temporary directory) and a private Redis (or uses the
database at ``--redis-url``, flushed), then,
for each tree (``--base`` first, then this one, ``--rounds`` times alternating):

- the figure: gunicorn (1 worker x 4 threads, ``--chdir`` the tree, so the app is that
  tree's) with authentication on and a project API key as the writer (as services send
  logs), rate limiting on (Redis storage; ``--no-ratelimit`` turns it off), app log level
  WARNING; ``--posts`` POSTs from 4 keep-alive clients after ``--warmup``; the worker's
  CPU time (utime + stime from /proc, so the database, Redis and the clients, separate
  processes, are not counted) divided by the number of requests;
- with ``--profile N``: the same requests in-process through Flask's test client under
  cProfile (CPU time), printing the top N functions (to find what to cut).

Each tree gets its own database name on the same server, so figures are comparable
within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from common import start_backends
from load import run_parallel

from polymicro_dev import (
    ROOT,
    GunicornSettings,
    Processes,
    child_pids,
    run_main,
    start_gunicorn,
)

CHILD = r"""
import cProfile, io, json, os, pstats, sys, time
root = sys.argv[1]
sys.path.insert(0, root)
from polymicro import create_app
assert os.path.dirname(os.path.dirname(__import__("polymicro").__file__)) == root
from polymicro.config import Config
from polymicro.extensions import cache
cfg = json.loads(sys.argv[2])
config = {k: getattr(Config, k) for k in dir(Config) if k.isupper()}
config.update(cfg)
app = create_app(config)
with app.app_context():
    cache.clear()
    from polymicro.projects import service as projects
    from polymicro.services import service as services
    from polymicro.auth import service as auth
    project = projects.create_project({"name": "cost-" + str(os.getpid())})
    svc = services.create_service({"project_id": project["id"], "name": "svc"})
    key = auth.create_api_key(project["id"], "writer", None)["key"]
client = app.test_client()
body = json.dumps({"project_id": str(project["id"]), "service_id": str(svc["id"]),
                   "severity": "info", "message": "GET /orders answered in 12 ms",
                   "source": "bench", "attributes": {"request_id": "abc", "attempt": 1}})
headers = {"Content-Type": "application/json", "X-API-Key": key}
def post(n):
    for _ in range(n):
        r = client.post("/api/logs", data=body, headers=headers)
        assert r.status_code == 201, (r.status_code, r.data[:300])
post(int(sys.argv[3]))
n = int(sys.argv[4])
profile = int(sys.argv[5])
prof = cProfile.Profile(time.process_time) if profile else None
cpu0, wall0 = time.process_time(), time.perf_counter()
if prof: prof.enable()
post(n)
if prof: prof.disable()
cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
out = {"cpu_ms": cpu / n * 1000, "wall_ms": wall / n * 1000}
if prof:
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(profile)
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(profile)
    out["profile"] = s.getvalue()
print(json.dumps(out))
"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SETUP = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from polymicro import create_app
app = create_app()
with app.app_context():
    from polymicro.projects import service as projects
    from polymicro.services import service as services
    from polymicro.auth import service as auth
    project = projects.create_project({"name": "cost-" + str(os.getpid())})
    svc = services.create_service({"project_id": project["id"], "name": "svc"})
    key = auth.create_api_key(project["id"], "writer", None)["key"]
print(json.dumps({"project_id": str(project["id"]), "service_id": str(svc["id"]), "key": key}))
"""


def measure_server(
    procs: Processes, root: Path, mongo: str, redis_url: str, args, tag: str, workdir: Path
) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYMICRO_")}
    env.update(
        POLYMICRO_MONGODB_URI=f"{mongo}/postcost_server_{tag}",
        POLYMICRO_REDIS_URL=redis_url,
        POLYMICRO_LOG_LEVEL="WARNING",
        POLYMICRO_GUNICORN_LOGLEVEL="warning",
        POLYMICRO_SECRET_KEY="x" * 40,
        POLYMICRO_RATELIMIT_ENABLED="false" if args.no_ratelimit else "true",
        POLYMICRO_RATELIMIT_DEFAULT="1000000 per minute",
        POLYMICRO_INSTANCE_PATH=str(workdir / f"instance-{tag}"),
    )
    done = subprocess.run(
        [sys.executable, "-c", SETUP, str(root)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"setting up {tag} failed:\n{done.stderr[-3000:]}")
    ids = json.loads(done.stdout.strip().splitlines()[-1])
    server = start_gunicorn(
        procs,
        env,
        workdir,
        GunicornSettings(1, 4, "gthread"),
        name=f"gunicorn-{tag}",
        ready_path="/api/health/live",
        # That tree's app and gunicorn settings (a later -c wins over the default one:
        # this tree's config file imports modules an older tree does not have).
        extra_args=["-c", str(root / "gunicorn.conf.py"), "--chdir", str(root)],
    )
    try:
        body = json.dumps(
            {
                "project_id": ids["project_id"],
                "service_id": ids["service_id"],
                "severity": "info",
                "message": "GET /orders answered in 12 ms",
                "source": "bench",
                "attributes": {"request_id": "abc", "attempt": 1},
            }
        ).encode()

        def post(n: int) -> float:
            jobs = [("POST", "/api/logs", body)] * n
            return run_parallel(server.port, 4, jobs, expect=201, headers=key)

        key = {"X-API-Key": ids["key"]}
        post(args.warmup)
        (worker,) = child_pids(server.proc.pid)
        spy = None
        if args.spy:
            out = workdir / f"spy-{tag}.txt"
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(worker),
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--nonblocking",
                    *(["--gil"] if args.spy_gil else []),
                    "-o",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        cpu0 = _cpu_seconds(worker)
        seconds = post(args.posts)
        cpu = _cpu_seconds(worker) - cpu0
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
            print(summarize(out, args.spy))
        server.check_alive()
        return {"cpu_ms": cpu / args.posts * 1000, "per_s": args.posts / seconds}
    finally:
        procs.stop(server)


GROUPS = {
    "rate limiter (flask_limiter, limits)": ("flask_limiter/", "limits/"),
    "Redis client (redis-py, cachelib, flask-caching)": ("redis/", "cachelib/", "flask_caching/"),
    "MongoDB client (pymongo, bson)": ("pymongo/", "bson/"),
    "mongoengine": ("mongoengine/",),
    "marshmallow + webargs + flask-smorest": ("marshmallow/", "webargs/", "flask_smorest/"),
    "logging (access line)": ("logging/", "pythonjsonlogger/"),
    "prometheus_client": ("prometheus_client/",),
    "JWT / API keys (security)": ("flask_jwt_extended/", "jwt/", "polymicro/security"),
    "gunicorn (HTTP, threads) + thread pool + selectors": (
        "gunicorn/",
        "concurrent/futures",
        "selectors.py",
    ),
    "werkzeug + flask": ("werkzeug/", "flask/"),
}


def summarize(path: Path, top: int) -> str:
    """py-spy's raw output (one stack per line, ';'-separated, then a count): the share
    of samples per group (the innermost frame that belongs to a group wins)."""
    from collections import Counter

    groups: Counter = Counter()
    leaves: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaves[frames[-1]] += n
        for frame in reversed(frames):
            name = next((g for g, keys in GROUPS.items() if any(k in frame for k in keys)), None)
            if name:
                groups[name] += n
                break
        else:
            groups["other (polymicro, stdlib)"] += n
    lines = [f"py-spy: {total} samples"]
    lines += [f"  {share / total:6.1%}  {name}" for name, share in groups.most_common()]
    lines += ["  innermost frames:"]
    lines += [f"  {share / total:6.1%}  {name}" for name, share in leaves.most_common(top)]
    return "\n".join(lines)


def measure(root: Path, mongo: str, redis_url: str, args, tag: str) -> dict:
    config = {
        "MONGODB_URI": f"{mongo}/postcost_{tag}",
        "REDIS_URL": redis_url,
        "LOG_LEVEL": "WARNING",
        "AUTH_ENABLED": True,
        "SECRET_KEY": "x" * 40,
        "RATELIMIT_ENABLED": not args.no_ratelimit,
        "RATELIMIT_DEFAULT": "1000000 per minute",
        "INSTANCE_PATH": tempfile.mkdtemp(prefix="polymicro-cost-"),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYMICRO_")}
    argv = [sys.executable, "-c", CHILD, str(root), json.dumps(config)]
    argv += [str(args.warmup), str(args.posts), str(args.profile)]
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tag} ({root}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/post_cost.py", description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="a checkout of the commit to compare with")
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="alternate base/this N times")
    parser.add_argument("--quick", action="store_true", help="200 POSTs after 50, one round")
    parser.add_argument("--profile", type=int, default=0, help="print cProfile's top N")
    parser.add_argument("--no-ratelimit", action="store_true")
    parser.add_argument("--spy", type=int, default=0, help="py-spy the worker: top N frames")
    parser.add_argument(
        "--spy-gil",
        action="store_true",
        help="with --spy: sample only the thread holding the GIL (Python CPU, no waits)",
    )
    parser.add_argument(
        "--redis-url", help="a Redis database to use (flushed) instead of a private redis-server"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.posts, args.warmup, args.rounds = 200, 50, 1
    return run_main(lambda procs: run(procs, args), "post_cost")


def run(procs: Processes, args) -> int:
    backends = start_backends(procs, "cost", args.redis_url, args.keep)
    workdir, redis_url = backends.workdir, backends.redis_url
    cache = redis.Redis.from_url(redis_url)
    mongo = backends.mongo_uri.rsplit("/", 1)[0]  # each tree gets its own database
    trees = ([("before", args.base.resolve())] if args.base else []) + [("after", ROOT)]
    results: dict[str, list[dict]] = {tag: [] for tag, _ in trees}
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    for _ in range(args.rounds):
        for tag, root in trees:
            cache.flushdb()
            if args.profile:
                result = measure(root, mongo, redis_url, args, tag)
                print(f"{tag:<6} {root}: {result['cpu_ms']:.3f} ms CPU (in-process)")
                print(result.pop("profile"))
                continue
            result = measure_server(procs, root, mongo, redis_url, args, tag, workdir)
            results[tag].append(result)
            print(
                f"{tag:<6} {root}: {result['cpu_ms']:.3f} ms of worker CPU per POST, "
                f"{result['per_s']:.0f} POST/s",
                flush=True,
            )
    if args.profile:
        return 0
    best = {tag: min(r["cpu_ms"] for r in rs) for tag, rs in results.items()}
    print(f"\nbest of {args.rounds}: " + ", ".join(f"{t} {v:.3f} ms" for t, v in best.items()))
    if "before" in best:
        print(f"after / before = {best['after'] / best['before']:.2f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
