"""CPU time of one cached read, in process (issue 9, item 5).

    .venv/bin/python bench/hit_cost.py --redis-url redis://127.0.0.1:6379/5
    .venv/bin/python bench/hit_cost.py --redis-url … --against DIR   # + the tree in DIR

wrk figures on a shared 2-core machine move by a factor of two between minutes; the CPU
time a request costs the process that serves it moves much less.  This calls the WSGI
callable of ``create_app`` directly (no HTTP, no gunicorn), on mongomock for the data and
a real Redis for the cache (the database ``--redis-url`` names is flushed), after the
reads were filled: every timed request is a hit of the response cache, with its Redis
round trip.  Per read and variant it prints the median CPU µs per request
(``time.process_time``) over interleaved chunks, with authentication off (as
``make bench``) and on (a viewer's token), and the bare Flask app of ``bench/hello.py``
for scale.  With ``--against DIR`` the same in processes importing the tree in DIR, the
trees alternating, and the ratio this/DIR per row.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHUNK = 200


def _start_response(status, headers, exc_info=None):
    return None


def _loop(app, base: dict, n: int) -> float:
    body = io.BytesIO(b"")
    start = time.process_time()
    for _ in range(n):
        environ = dict(base)
        environ["wsgi.input"] = body
        result = app(environ, _start_response)
        for _chunk in result:
            pass
        getattr(result, "close", lambda: None)()
    return (time.process_time() - start) / n * 1e6


def _app(redis_url: str, auth: bool):
    from polymicro import create_app
    from polymicro.config import TestingConfig

    config = {key: getattr(TestingConfig, key) for key in dir(TestingConfig) if key.isupper()}
    config.update(
        INSTANCE_PATH=str(REPO / "var" / "bench-instance"),
        REDIS_URL=redis_url,
        AUTH_ENABLED=auth,
        METRICS_ENABLED=True,
        LOG_LEVEL="WARNING",
        RETENTION_LOGS_DAYS=30,  # production's keys: the lists depend on the days kept
        RETENTION_POINTS_DAYS=30,
    )
    return create_app(config)


def child(redis_url: str, n: int, chunks: int) -> None:
    """Build the apps, fill the reads, time them; print one JSON line."""
    import logging

    import redis
    from flask_jwt_extended import create_access_token
    from werkzeug.test import EnvironBuilder

    sys.path.insert(0, str(REPO / "bench"))
    import hello

    logging.disable(logging.WARNING)
    redis.Redis.from_url(redis_url).flushdb()
    apps = {"auth off": _app(redis_url, False), "auth on": _app(redis_url, True)}
    with apps["auth on"].app_context():
        viewer = create_access_token(identity="0" * 24, additional_claims={"role": "viewer"})
        admin = create_access_token(identity="1" * 24, additional_claims={"role": "admin"})
    writer = apps["auth on"].test_client()
    writer.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin}"
    project = writer.post("/api/projects", json={"name": "shop"}).get_json()["id"]
    service = writer.post("/api/services", json={"project_id": project, "name": "api"})
    service_id = service.get_json()["id"]
    entries = [{"service_id": service_id, "message": f"line {i}"} for i in range(50)]
    writer.post("/api/logs/batch", json=[{"project_id": project, **e} for e in entries])
    metric = writer.post("/api/metrics/cpu", json={"project_id": project, "service_name": "api"})
    writer.post(f"/api/metrics/cpu/{metric.get_json()['id']}/data", json=[{"load": 0.5}])
    reads = {
        "projects": "/api/projects",
        "project": f"/api/projects/{project}",
        "project services": f"/api/services/project/{project}",
        "project CPU": f"/api/metrics/cpu/project/{project}",
        "project logs": f"/api/logs/project/{project}",
    }
    jobs = {}
    for variant, app in apps.items():
        headers = {"Authorization": f"Bearer {viewer}"} if variant == "auth on" else {}
        for name, path in reads.items():
            client = app.test_client()
            for _ in range(3):  # fill, then learn the key of a hit
                response = client.get(path, headers=headers)
                if response.status_code != 200:
                    raise SystemExit(f"{variant} GET {path}: {response.status_code}")
            builder = EnvironBuilder(path=path, headers=headers)
            jobs[f"{name}, {variant}"] = (app, builder.get_environ())
            builder.close()
    builder = EnvironBuilder(path="/")
    jobs["bare Flask (hello.py)"] = (hello.app, builder.get_environ())
    builder.close()
    for app, environ in jobs.values():
        _loop(app, environ, 100)  # warm-up
    timings: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(chunks):
        for name, (app, environ) in jobs.items():
            timings[name].append(_loop(app, environ, n))
    print(json.dumps(timings), flush=True)


def run_child(tree: Path, redis_url: str, n: int, chunks: int) -> dict[str, list[float]]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.pop("POLYMICRO_REDIS_URL", None)
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", redis_url, str(n), str(chunks)],
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
    parser.add_argument("--redis-url", help="a Redis database (flushed): required")
    parser.add_argument("--against", type=Path, help="another tree to time alongside")
    parser.add_argument("--repeats", type=int, default=3, help="processes per tree (3)")
    parser.add_argument("--chunks", type=int, default=5, help="chunks per process (5)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    if not args.redis_url:
        parser.error("--redis-url is required (a Redis database this may flush)")
    trees = [("this", REPO)] + ([("against", args.against.resolve())] if args.against else [])
    samples: dict[str, dict[str, list[float]]] = {label: {} for label, _ in trees}
    for repeat in range(args.repeats):
        for label, tree in trees if repeat % 2 == 0 else list(reversed(trees)):
            for name, values in run_child(tree, args.redis_url, CHUNK, args.chunks).items():
                samples[label].setdefault(name, []).extend(values)
    med = {
        label: {k: statistics.median(v) for k, v in rows.items()} for label, rows in samples.items()
    }
    print(
        f"cached reads in process: {args.repeats} processes per tree x {args.chunks} chunks of "
        f"{CHUNK} requests; median CPU µs per request; load average {os.getloadavg()[0]:.1f}"
    )
    header = f"{'read':<36}{'this µs':>9}"
    if args.against:
        header += f"{'against µs':>12}{'this/against':>14}"
    print(header)
    for name, value in med["this"].items():
        line = f"{name:<36}{value:>9.0f}"
        if args.against:
            other = med["against"][name]
            line += f"{other:>12.0f}{value / other:>14.2f}"
        print(line)


if __name__ == "__main__":
    main()
