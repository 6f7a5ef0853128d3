"""Dashboard reads while logs stream in: each read idle, then under two kinds of ingest.

Usage (from the repository root)::

    .venv/bin/python bench/mixed.py            # about 4 minutes on 2 cores
    .venv/bin/python bench/mixed.py --quick    # about 1.5 minutes
    .venv/bin/python bench/mixed.py --app-env POLYMICRO_LIST_STALENESS_MS=0   # exact lists

One run, everything on 127.0.0.1 and stopped at the end:

1. Redis (a private redis-server, or the database at ``--redis-url``, flushed), a fresh
   SecantusDB, and polymicro under gunicorn
   (2 workers x 4 threads unless ``--workers``/``--threads``; ``bench/gunicorn_conf.py``)
   with **authentication on** (unlike bench/run.py): the dashboard reads with a viewer's
   token, the writer sends logs with the project's API key (as services do), so a write
   and a read have different callers, as in production.  Rate limiting is off (one
   client address).  ``PROMETHEUS_MULTIPROC_DIR`` is a directory of this run, so the
   requests each worker served can be counted (per-process files of prometheus_client).
2. Seeding through the API, as bench/run.py does (5 projects x 10 services, 2,000 logs
   per project, 96 CPU points per service).
3. For each phase, every dashboard read of the first project is warmed, then measured with
   wrk (2 threads, 8 connections, ``--duration`` s, ``Accept-Encoding: gzip`` as a browser
   sends it).  The phases:

   - ``idle``: nothing else runs;
   - ``20 POST/s``: a writer thread sends single ``POST /api/logs`` into the same project at
     20 requests/s (paced: request *i* is due at start + i/20 s) for the whole phase;
     each log is stamped as a running service's shipper stamps it: the time it is sent,
     less up to a second (until 2026-11-30 the writers stamped them at random over the
     seed's two days, which no live service does);
   - ``batch 100/s``: a writer sends ``POST /api/logs/batch`` of 100 entries once a second.

   Each read under ingest is printed as a fraction of its idle rate, with its p99; each
   writer with its achieved rate, its non-2xx count and its p99.  The requests served by
   each gunicorn worker during each read are counted: a run where one worker served
   (nearly) everything says so (``spread`` column: the busiest worker's share).
4. Compression: ``GET /api/metrics/cpu/project/{id}`` idle, with and without
   ``Accept-Encoding: gzip``: req/s and bytes per response.

Targets (PASS/MISS at the end): every read under ingest >= 50% of its idle rate with a p99
< 100 ms; each writer keeps its rate (>= 95% of it) with no non-2xx response.

Exit status: 0 when the measurement completed (targets met or not), 1 when something
broke.  Figures from one run are comparable with each other only (shared machine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from common import (
    DataMaker,
    Plan,
    Seeded,
    bearer,
    bench_reuse_port,
    commit,
    parse_app_env,
    percentile,
    seed,
    sockets,
    start_app,
    start_backends,
    tokens,
)
from load import WrkResult, ensure_wrk, run_wrk

from polymicro_dev import (
    ROOT,
    DevError,
    GunicornSettings,
    HttpClient,
    Processes,
    encode,
    run_main,
)

TARGET_FRACTION = 0.50
TARGET_P99_MS = 100.0
TARGET_WRITER_RATE = 0.95
SINGLE_RATE = 20.0
BATCH_SIZE = 100
BATCH_EVERY_S = 1.0


def say(text: str) -> None:
    print(f"mixed: {text}", flush=True)


# --- wrk with headers ----------------------------------------------------------------------


def measure(wrk: str, url: str, headers: dict[str, str], args) -> WrkResult:
    """A discarded warm-up run (it may complete nothing when responses are slow), then
    the measured one."""
    with contextlib.suppress(DevError):
        run_wrk(wrk, url, args.warmup, args.connections, args.wrk_threads, headers=headers)
    return run_wrk(wrk, url, args.duration, args.connections, args.wrk_threads, headers=headers)


# --- per-worker request counts -------------------------------------------------------------


def worker_counts(metrics_dir: Path) -> Counter:
    """Requests answered so far by each worker process (prometheus_client's multiprocess
    files are per process: ``counter_<pid>.db``)."""
    from prometheus_client.mmap_dict import MmapedDict

    counts: Counter = Counter()
    for path in metrics_dir.glob("counter_*.db"):
        pid = path.stem.split("_", 1)[1]
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if '"polymicro_http_requests_total"' in key or "polymicro_http_requests_total" in key:
                counts[pid] += value
    return counts


def spread(before: Counter, after: Counter) -> dict:
    served = {pid: after[pid] - before.get(pid, 0) for pid in after}
    served = {pid: n for pid, n in served.items() if n > 0}
    total = sum(served.values()) or 1
    return {"per_worker": served, "busiest_share": max(served.values(), default=0) / total}


# --- writers ---------------------------------------------------------------------------------


class Writer:
    """Open-loop load: request *i* is due at start + i*every, whoever sends it (``SENDERS``
    keep-alive connections, as a fleet of services would, so one slow answer does not
    hold the next request back); a request is sent as soon as it is due and a sender is
    free.  Records statuses and latencies until stopped."""

    SENDERS = 4

    def __init__(self, port: int, key: str, make_body, path: str, every: float, items: int):
        self.port, self.key, self.make_body, self.path = port, key, make_body, path
        self.every, self.items = every, items
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.next_slot = 0
        self.statuses: Counter = Counter()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.started = self.stopped = 0.0
        self.threads = [
            threading.Thread(target=self._send, daemon=True) for _ in range(self.SENDERS)
        ]

    def start(self) -> None:
        self.started = time.perf_counter()
        for thread in self.threads:
            thread.start()

    def _client(self) -> HttpClient:
        return HttpClient(self.port, timeout=30, headers={"X-API-Key": self.key})

    def _send(self) -> None:
        client = self._client()
        while not self.stop_event.is_set():
            with self.lock:
                slot = self.next_slot
                self.next_slot += 1
                body = self.make_body()
            delay = self.started + slot * self.every - time.perf_counter()
            if delay > 0 and self.stop_event.wait(delay):
                break
            t0 = time.perf_counter()
            try:
                status = client.request("POST", self.path, body).status
            except Exception as exc:  # counted, never fatal: the point is to measure
                status = 0
                client.close()
                client = self._client()
                with self.lock:
                    self.errors.append(repr(exc))
            with self.lock:
                self.latencies.append(time.perf_counter() - t0)
                self.statuses[status] += 1
        client.close()

    def stop(self) -> dict:
        self.stop_event.set()
        self.stopped = time.perf_counter()
        for thread in self.threads:
            thread.join(timeout=60)
        sent = sum(self.statuses.values())
        seconds = max(self.stopped - self.started, 1e-9)
        return {
            "path": self.path,
            "target_per_s": 1 / self.every,
            "achieved_per_s": sent / seconds,
            "items_per_s": sent * self.items / seconds,
            "requests": sent,
            "non_2xx": sum(n for s, n in self.statuses.items() if not 200 <= s < 300),
            "statuses": dict(self.statuses),
            "p50_ms": percentile(self.latencies, 50) * 1000,
            "p99_ms": percentile(self.latencies, 99) * 1000,
            "errors": self.errors[:5],
        }


# --- the run ----------------------------------------------------------------------------------


def read_paths(seeded: Seeded) -> list[tuple[str, str]]:
    p = seeded.project_ids[0]
    return [
        ("projects list", "/api/projects"),
        ("services of a project", f"/api/services/project/{p}"),
        ("CPU metrics of a project", f"/api/metrics/cpu/project/{p}"),
        ("logs of a project", f"/api/logs/project/{p}"),
        ("logs ?project_id=…&severity=error", f"/api/logs?project_id={p}&severity=error"),
    ]


def measure_reads(wrk, app, seeded, tokens_, metrics_dir, args, phase: str) -> list[dict]:
    headers = {**bearer(tokens_["viewer"]), "Accept-Encoding": "gzip"}
    rows = []
    for label, path in read_paths(seeded):
        with HttpClient(app.port, headers=headers) as client:
            for _ in range(3):  # one at a time first: a cold entry is computed once
                status = client.request("GET", path).status  # gzip: not decoded
                if status != 200:
                    raise DevError(f"GET {path} answered {status}")
        before = worker_counts(metrics_dir)
        result = measure(wrk, app.uri + path, headers, args)
        after = worker_counts(metrics_dir)
        app.check_alive()
        if result.non_2xx:
            raise DevError(f"{phase}: {label}: {result.non_2xx} non-2xx responses")
        row = {
            "phase": phase,
            "read": label,
            "path": path,
            **result.as_dict(),
            "bytes_per_response": result.transfer_per_s / result.rps if result.rps else 0,
            "spread": spread(before, after),
        }
        rows.append(row)
        say(
            f"{phase:<12} {label:<36} {result.rps:8.1f} req/s  p99 {result.p99_ms:7.1f} ms  "
            f"busiest worker {row['spread']['busiest_share']:.0%}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/mixed.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per read instead of 10")
    parser.add_argument("--duration", type=float)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument(
        "--redis-url", help="a Redis database to use (flushed) instead of a private redis-server"
    )
    parser.add_argument("--app-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "var" / "bench")
    args = parser.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    if any("=" not in item for item in args.app_env):
        parser.error("--app-env takes KEY=VALUE")
    return run_main(lambda procs: run(procs, args), "mixed")


def run(procs: Processes, args) -> int:
    began = time.monotonic()
    load_at_start = os.getloadavg()
    wrk = ensure_wrk()
    backends = start_backends(procs, "mixed", args.redis_url, args.keep)
    metrics_dir = backends.workdir / "prometheus"
    metrics_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), **parse_app_env(args.app_env)}
    settings = GunicornSettings(args.workers, args.threads)
    app = start_app(procs, backends, settings, auth=True, env=env)
    tokens_ = tokens()
    admin_headers = bearer(tokens_["admin"])
    maker = DataMaker(1)
    seeded = seed(app.port, Plan(), maker, 2, headers=admin_headers)
    project = seeded.project_ids[0]
    with HttpClient(app.port, headers=admin_headers) as admin:
        key = admin.call("POST", f"/api/projects/{project}/keys", {"name": "writer"}, 201)["key"]

    # The writers send live logs (stamped when sent, less up to a second), as a running
    # service does; the seed's logs are spread over two days.
    def single():
        return encode(maker.log(project, seeded.service_ids[project], live=True))

    def batch():
        ids = seeded.service_ids[project]
        return encode([maker.log(project, ids, live=True) for _ in range(BATCH_SIZE)])

    phases = {}
    writers = {}
    phases["idle"] = measure_reads(wrk, app, seeded, tokens_, metrics_dir, args, "idle")
    for phase, (path, make, every, items) in {
        f"{SINGLE_RATE:g} POST/s": ("/api/logs", single, 1 / SINGLE_RATE, 1),
        f"batch {BATCH_SIZE}/s": ("/api/logs/batch", batch, BATCH_EVERY_S, BATCH_SIZE),
    }.items():
        writer = Writer(app.port, key, make, path, every, items)
        writer.start()
        time.sleep(1.0)  # the writer is in its stride before the reads start
        phases[phase] = measure_reads(wrk, app, seeded, tokens_, metrics_dir, args, phase)
        writers[phase] = writer.stop()
        w = writers[phase]
        say(
            f"{phase}: writer {w['achieved_per_s']:.1f}/s of {w['target_per_s']:.1f}/s, "
            f"non-2xx {w['non_2xx']}, p99 {w['p99_ms']:.0f} ms"
        )
    compression = measure_compression(wrk, app, seeded, tokens_, args)
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit(),
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "gunicorn": {
            **settings.__dict__,
            "reuse_port": bench_reuse_port(env),
        },
        "app_env": args.app_env,
        "duration_s": args.duration,
        "phases": phases,
        "writers": writers,
        "compression": compression,
    }
    result["targets"] = evaluate(result)
    result["elapsed_s"] = round(time.monotonic() - began, 1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"mixed-{result['date'].replace(':', '').replace('-', '')}.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print()
    print(render(result))
    print()
    say(f"took {result['elapsed_s']:.0f} s; JSON in {out}")
    return 0


def measure_compression(wrk, app, seeded, tokens_, args) -> list[dict]:
    path = read_paths(seeded)[2][1]
    rows = []
    for label, extra in (("identity", {}), ("gzip", {"Accept-Encoding": "gzip"})):
        headers = {**bearer(tokens_["viewer"]), **extra}
        with HttpClient(app.port, headers=headers) as client:
            response = client.request("GET", path)
        size = len(response.body)
        encoding = response.headers.get("Content-Encoding") or "identity"
        result = measure(wrk, app.uri + path, headers, args)
        rows.append(
            {
                "accept": label,
                "content_encoding": encoding,
                "body_bytes": size,
                "rps": result.rps,
                "p99_ms": result.p99_ms,
                "transfer_per_s": result.transfer_per_s,
            }
        )
        say(f"CPU metrics, {label}: {size:,} bytes, {result.rps:.0f} req/s")
    return rows


def evaluate(result: dict) -> list[dict]:
    idle = {r["read"]: r for r in result["phases"]["idle"]}
    targets = []
    for phase, rows in result["phases"].items():
        if phase == "idle":
            continue
        for r in rows:
            fraction = r["rps"] / idle[r["read"]]["rps"]
            r["fraction_of_idle"] = fraction
            targets.append(
                {
                    "target": f"{phase}: {r['read']} ≥ {TARGET_FRACTION:.0%} of idle, "
                    f"p99 < {TARGET_P99_MS:.0f} ms",
                    "value": f"{fraction:.0%}, p99 {r['p99_ms']:.1f} ms",
                    "pass": fraction >= TARGET_FRACTION and r["p99_ms"] < TARGET_P99_MS,
                }
            )
    for phase, w in result["writers"].items():
        kept = w["achieved_per_s"] / w["target_per_s"]
        targets.append(
            {
                "target": f"{phase}: writer keeps its rate (≥ {TARGET_WRITER_RATE:.0%}), "
                "no non-2xx",
                "value": f"{w['achieved_per_s']:.2f}/s of {w['target_per_s']:.2f}/s, "
                f"{w['non_2xx']} non-2xx",
                "pass": kept >= TARGET_WRITER_RATE and w["non_2xx"] == 0,
            }
        )
    spreads = [r["spread"]["busiest_share"] for rows in result["phases"].values() for r in rows]
    workers = result["gunicorn"]["workers"]
    if workers > 1:
        worst = max(spreads)
        targets.append(
            {
                "target": f"every read spread over the {workers} workers (busiest ≤ 80%)",
                "value": f"busiest worker served at most {worst:.0%} of a read's requests",
                "pass": worst <= 0.80,
            }
        )
    return targets


def render(result: dict) -> str:
    phases = list(result["phases"])
    idle = {r["read"]: r for r in result["phases"]["idle"]}
    lines = [
        f"## Dashboard reads under ingest — {result['date']} ({result['commit']})",
        "",
        f"gunicorn {result['gunicorn']['workers']}×{result['gunicorn']['threads']} "
        f"{result['gunicorn']['worker_class'].rsplit('.', 1)[-1]} "
        f"({sockets(result['gunicorn'].get('reuse_port'))}), "
        f"SecantusDB + Redis, auth on, wrk 8 connections × {result['duration_s']:g} s per read, "
        f"load average {result['load_average_at_start'][0]} at start, "
        f"{result['load_average_at_end'][0]} at end; app env {result['app_env'] or 'default'}",
        "",
        "| read | idle req/s (p99 ms) | "
        + " | ".join(f"{p}: req/s (p99 ms), of idle" for p in phases[1:])
        + " | busiest worker |",
        "|---|---:|" + "---:|" * (len(phases) - 1) + "---:|",
    ]
    for label, base in idle.items():
        cells = [f"{base['rps']:,.0f} ({base['p99_ms']:.1f})"]
        worst = base["spread"]["busiest_share"]
        for phase in phases[1:]:
            r = next(x for x in result["phases"][phase] if x["read"] == label)
            cells.append(f"{r['rps']:,.0f} ({r['p99_ms']:.1f}), {r['fraction_of_idle']:.0%}")
            worst = max(worst, r["spread"]["busiest_share"])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {worst:.0%} |")
    lines += ["", "| writer | target/s | achieved/s | non-2xx | p50 ms | p99 ms |"]
    lines.append("|---|---:|---:|---:|---:|---:|")
    for phase, w in result["writers"].items():
        lines.append(
            f"| {phase} (`{w['path']}`) | {w['target_per_s']:.1f} | {w['achieved_per_s']:.2f} | "
            f"{w['non_2xx']} | {w['p50_ms']:.0f} | {w['p99_ms']:.0f} |"
        )
    lines += ["", "| CPU metrics of a project | Content-Encoding | body bytes | req/s | p99 ms |"]
    lines.append("|---|---|---:|---:|---:|")
    for c in result["compression"]:
        lines.append(
            f"| Accept-Encoding: {c['accept']} | {c['content_encoding']} | {c['body_bytes']:,} | "
            f"{c['rps']:,.0f} | {c['p99_ms']:.1f} |"
        )
    lines += ["", "### Targets", ""]
    for t in result["targets"]:
        lines.append(f"- {'PASS' if t['pass'] else 'MISS'} {t['target']} — {t['value']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
