"""Minimal reproduction for SecantusDB: the TTL monitor reads every document of a
collection with a TTL index each minute, and the writes that meet it stall.

Needs only pymongo and SecantusDB (``pip install pymongo SecantusDB``)::

    python bench/repro_secantus_ttl.py                  # about 3 minutes
    python bench/repro_secantus_ttl.py --seconds 300 --batch 5000

Two fresh ``secantusd-py`` are started in temporary directories.  Each gets a
``points`` collection with an index on ``(metric_id, time)`` and one more on ``time``:
on server ``ttl`` a TTL index (``expireAfterSeconds`` 30 days, as a 30-day retention
makes it), on server ``plain`` an ordinary index (so both do the same index work per
insert).  Then batches of ``--batch`` documents (times 30 days ago plus a few hours:
none of them expires) are inserted with ``insert_many`` in a transaction, the servers
taking turns, until ``--seconds`` have passed.  Each batch prints its rate and the
server's CPU time per document (from /proc, so Linux only).

What it shows (SecantusDB 0.7.0b3): every 60 s (``ttl_sweep_seconds``; the CLI cannot
change it) the ``secantus-ttl-sweeper`` thread runs ``Storage.prune_ttl`` on each
collection with a TTL index, which lists *every* document of the collection
(``_scan_docs``), decodes each and matches it against ``{time: {$lt: cutoff}}`` in
Python, holding the storage lock, instead of reading the TTL index's range below the
cutoff.  Its cost grows with the collection, not with what expires (here nothing does):
the ``ttl`` server's batch that meets a sweep is several times slower and its CPU per
document several times higher, and as the collection grows each sweep takes longer;
``plain`` stays flat.  (``collections with no TTL index short-circuit``: with no TTL
index at all, the sweep costs nothing, which is why this appeared only once an
application turned a retention on.)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pymongo
from bson import ObjectId


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(storage: Path) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("secantusd-py") or str(Path(sys.executable).with_name("secantusd-py"))
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"mongodb://127.0.0.1:{port}/?retryWrites=false"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("secantusd-py did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=170.0, help="how long (170)")
    parser.add_argument("--batch", type=int, default=10_000, help="documents per insert_many")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="secantus-ttl-repro-"))
    servers: dict[str, tuple[subprocess.Popen, pymongo.MongoClient]] = {}
    try:
        for mode in ("ttl", "plain"):
            proc, uri = start_server(workdir / mode)
            client = pymongo.MongoClient(uri)
            points = client.repro.points
            points.create_index([("metric_id", 1), ("time", 1)])
            if mode == "ttl":
                points.create_index([("time", 1)], expireAfterSeconds=30 * 86400)
            else:
                points.create_index([("time", 1)])
            servers[mode] = (proc, client)
        rng = random.Random(1)
        start = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=30)
        began = time.monotonic()
        stored = 0
        worst: dict[str, float] = {}
        number = 0
        while time.monotonic() - began < args.seconds:
            order = ("ttl", "plain") if number % 2 == 0 else ("plain", "ttl")
            for mode in order:
                proc, client = servers[mode]
                metric = ObjectId()
                docs = [
                    {
                        "metric_id": metric,
                        "time": start + timedelta(hours=number, seconds=i),
                        "load": round(rng.uniform(0, 180), 2),
                    }
                    for i in range(args.batch)
                ]
                cpu, wall = cpu_seconds(proc.pid), time.perf_counter()
                with client.start_session() as session, session.start_transaction():
                    client.repro.points.insert_many(docs, session=session)
                wall = time.perf_counter() - wall
                cpu = cpu_seconds(proc.pid) - cpu
                worst[mode] = max(worst.get(mode, 0.0), wall)
                print(
                    f"{time.monotonic() - began:6.1f} s  {mode:5}  {stored + args.batch:>8,} docs "
                    f"stored  {args.batch / wall:7,.0f} docs/s  server CPU "
                    f"{cpu * 1e6 / args.batch:5.0f} µs/doc",
                    flush=True,
                )
            stored += args.batch
            number += 1
        print(
            "slowest batch: "
            + ", ".join(f"{mode} {seconds:.1f} s" for mode, seconds in worst.items())
            + f" (load average {os.getloadavg()[0]:.1f})"
        )
    finally:
        for proc, client in servers.values():
            client.close()
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
