"""What a refresh of a growing project's log list costs: its total counted whole (as
before) vs counted from the last count plus the rows since (``pagination.AppendCount``).

Usage (from the repository root)::

    .venv/bin/python bench/list_count.py            # to 10,000 logs, about 2 minutes
    .venv/bin/python bench/list_count.py --quick    # to 3,000 logs
    .venv/bin/python bench/list_count.py --max 20000 --step 2000

One run starts a fresh SecantusDB and a private Redis (bench/common.py), creates a
project and a service through the service layer, and grows the project as the batch
writer of ``bench/mixed.py`` does: a batch of 100 logs stamped with the time of the write,
one a second (the application's clock, ``polymicro.common.clock``, is moved by a second
per batch, so the run does not wait).  After each batch the project's total is counted
the way a refresh of the list does, ``AppendCount`` (whose last count was one batch ago);
every ``--step`` logs it is also counted whole (one ``count_documents``, as before), both
``--repeat`` times alternating, and the medians are printed: milliseconds per count,
their ratio, and that both gave the same number.

In process: the times are the database's and the client's, without HTTP.  Figures from
one run are comparable with each other only (the machine is shared; the load average is
printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from common import start_backends

from polymicro_dev import Processes, app_env, run_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max", type=int, default=10000, help="logs in the project at the end")
    parser.add_argument("--step", type=int, default=1000, help="logs between two measurements")
    parser.add_argument("--repeat", type=int, default=5, help="counts of each kind per step")
    parser.add_argument("--quick", action="store_true", help="to 3,000 logs, 3 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.max, args.repeat = 3000, 3
    return run_main(lambda procs: run(procs, args), "list_count")


def run(procs: Processes, args) -> int:
    backends = start_backends(procs, "list-count")
    os.environ.update(app_env(backends.mongo_uri, backends.redis_url))
    from polymicro import create_app
    from polymicro.common import clock
    from polymicro.logs import service as logs
    from polymicro.projects import service as projects
    from polymicro.services import service as services

    app = create_app()
    load = os.getloadavg()[0]
    rows = []
    with app.app_context(), clock.use(clock.ManualClock(clock.SystemClock().now())) as manual:
        project = projects.create_project({"name": "count"})
        pid = projects.load_project(project["id"]).id
        svc = services.create_service({"project_id": pid, "name": "api"})
        sid = services.load_service(svc["id"]).id

        def append() -> None:
            manual.advance(1)
            logs.create_logs(
                [
                    {"project_id": pid, "service_id": sid, "severity": "info", "message": f"m{i}"}
                    for i in range(100)
                ]
            )

        def timed(count) -> tuple[float, int]:
            started = time.perf_counter()
            total = count()
            return (time.perf_counter() - started) * 1000, total

        def whole() -> int:
            query = logs.list_logs(project_id=pid).query
            return query.queryset.count()

        def incremental() -> int:
            return logs.list_logs(project_id=pid).query.count()

        stored = 0
        print(f"list_count: load average {load:.1f} at start", flush=True)
        print("| logs in the project | whole count ms | AppendCount ms | AppendCount / whole |")
        print("|---:|---:|---:|---:|", flush=True)
        while stored < args.max:
            append()
            stored += 100
            incremental()  # the refresh after this batch
            if stored % args.step:
                continue
            whole_ms, append_ms = [], []
            for _ in range(args.repeat):
                append()  # one more batch since the last count, as under the writer
                stored += 100
                ms, expected = timed(whole)
                whole_ms.append(ms)
                ms, total = timed(incremental)
                append_ms.append(ms)
                if total != expected:
                    print(f"list_count: MISMATCH {total} != {expected}", file=sys.stderr)
                    return 1
            w, a = statistics.median(whole_ms), statistics.median(append_ms)
            rows.append((stored, w, a))
            print(f"| {stored:,} | {w:.1f} | {a:.1f} | {a / w:.0%} |", flush=True)
    print(f"list_count: load average {os.getloadavg()[0]:.1f} at end; totals equal at every step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
