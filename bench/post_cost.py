"""Python CPU per single ``POST /api/logs``, in-process, against SecantusDB and Redis.

Usage (from the repository root)::

    .venv/bin/python bench/post_cost.py                      # this tree only
    .venv/bin/python bench/post_cost.py --base /work/wt/perf-base   # before and after, one run
    .venv/bin/python bench/post_cost.py --profile 25         # and cProfile's top 25

One run starts one SecantusDB (temporary directory) and uses Redis db 9 (flushed), then,
for each tree (``--base`` first, then this one), a child process that imports polymicro
*from that tree*, creates the app (authentication on, a project API key as the writer,
as services send logs; rate limiting on, with Redis storage, unless ``--no-ratelimit``),
sends ``--warmup`` POSTs, then ``--posts`` POSTs through Flask's test client and reports
the process CPU time (``time.process_time``: this process only, so the database and
Redis, separate processes, are not counted) and the wall time per request.  The same
database serves both trees (each child uses its own database name), so figures are
comparable within one run; the test client's own cost is in both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from servers import ROOT, Processes, ensure_redis, start_secantus  # noqa: E402

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
prof = cProfile.Profile() if profile else None
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
    argv += [str(args.warmup), str(args.posts), str(args.profile if tag == "after" else 0)]
    if args.profile and tag == "before" and args.profile_base:
        argv[-1] = str(args.profile)
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tag} ({root}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="a checkout of the commit to compare with")
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="alternate base/this N times")
    parser.add_argument("--profile", type=int, default=0, help="print cProfile's top N")
    parser.add_argument("--profile-base", action="store_true", help="profile --base too")
    parser.add_argument("--no-ratelimit", action="store_true")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    args = parser.parse_args()
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="polymicro-cost-"))
    redis_client = None
    try:
        redis_client, _ = ensure_redis(args.redis_url)
        db = start_secantus(procs, workdir / "db", workdir)
        mongo = f"mongodb://127.0.0.1:{db.port}"
        trees = ([("before", args.base.resolve())] if args.base else []) + [("after", ROOT)]
        results: dict[str, list[dict]] = {tag: [] for tag, _ in trees}
        print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
        for _ in range(args.rounds):
            for tag, root in trees:
                redis_client.flushdb()
                result = measure(root, mongo, args.redis_url, args, tag)
                results[tag].append(result)
                print(
                    f"{tag:<6} {root}: {result['cpu_ms']:.3f} ms CPU, "
                    f"{result['wall_ms']:.3f} ms wall per POST",
                    flush=True,
                )
                if "profile" in result:
                    print(result.pop("profile"))
        best = {tag: min(r["cpu_ms"] for r in rs) for tag, rs in results.items()}
        print(f"\nbest of {args.rounds}: " + ", ".join(f"{t} {v:.3f} ms" for t, v in best.items()))
        if "before" in best:
            print(f"after / before = {best['after'] / best['before']:.2f}")
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
        return 0
    finally:
        procs.stop_all()
        if redis_client is not None:
            redis_client.flushdb()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
