"""Minimal reproduction for SecantusDB: retryable writes make every insert slower as the
server has seen more of them.

Needs only pymongo and SecantusDB (``pip install pymongo SecantusDB``)::

    python bench/repro_secantus_retryable.py                # 20,000 inserts per mode
    python bench/repro_secantus_retryable.py --count 5000
    python bench/repro_secantus_retryable.py --uri mongodb://127.0.0.1:27018/  # your server

Two fresh ``secantusd-py`` are started in temporary directories (with ``--uri``, both
modes use that server), one per mode: ``retryWrites=true`` (pymongo's default) and
``retryWrites=false``.  One client per mode inserts ``--count`` small documents one
``insert_one`` at a time (write concern ``j: true``), the two modes taking turns block by
block (1,000 documents), so both see the same machine; the rate of each block is printed.

What it shows (SecantusDB 0.7.0b3): SecantusDB presents itself as a replica set, so
pymongo sends each write with an ``lsid`` and a ``txnNumber`` (a retryable write).  The
server keeps a record of each such write for 30 minutes, at most 10,000
(``secantus/transactions.py``: ``_RETRYABLE_RECORD_LIFETIME_SECONDS``,
``_RETRYABLE_RECORD_MAX``), and ``_prune_retryable_locked`` walks every record on each
lookup and each record, twice per write, sorting them all once past 10,000.  So the cost of
an insert grows with the number of retryable writes in the last 30 minutes: with
``retryWrites=true`` the rate falls block after block; with ``retryWrites=false`` it stays
flat.  (A heap or an insertion-ordered dict pruned from its oldest end would make pruning
cost proportional to what it removes.)
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymongo

BLOCK = 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str, Path]:
    exe = shutil.which("secantusd-py") or str(Path(sys.executable).with_name("secantusd-py"))
    storage = Path(tempfile.mkdtemp(prefix="secantus-repro-"))
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage / "db")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"mongodb://127.0.0.1:{port}/", storage
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("secantusd-py did not start")


def block_rate(collection) -> float:
    started = time.perf_counter()
    for i in range(BLOCK):
        collection.insert_one({"group": i % 5, "at": time.time(), "text": "x" * 100})
    return BLOCK / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--uri", help="an existing server (otherwise one is started per mode)")
    args = parser.parse_args()
    started, collections, rates = [], {}, {True: [], False: []}
    try:
        for retry in (True, False):
            uri = args.uri
            if uri is None:
                proc, uri, storage = start_server()
                started.append((proc, storage))
            client = pymongo.MongoClient(uri, retryWrites=retry, journal=True)
            build = client.admin.command("buildInfo")
            print(f"retryWrites={str(retry).lower()}: SecantusDB {build.get('secantusVersion')}")
            collection = client["repro"][f"docs_retry_{str(retry).lower()}"]
            collection.drop()
            collection.create_index([("group", 1), ("at", -1)])
            collections[retry] = collection
        for block in range(args.count // BLOCK):
            line = f"{(block + 1) * BLOCK:>7,} docs:"
            for retry, collection in collections.items():
                rates[retry].append(block_rate(collection))
                line += f"  retryWrites={str(retry).lower():<5} {rates[retry][-1]:7.1f}/s"
            print(line, flush=True)
        print()
        for retry, series in rates.items():
            print(
                f"retryWrites={str(retry).lower():<5} first 1,000: {series[0]:.1f}/s, "
                f"last 1,000: {series[-1]:.1f}/s, last/first {series[-1] / series[0]:.0%}"
            )
        return 0
    finally:
        for collection in collections.values():
            collection.drop()
            collection.database.client.close()
        for proc, storage in started:
            proc.terminate()
            proc.wait(timeout=30)
            shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
