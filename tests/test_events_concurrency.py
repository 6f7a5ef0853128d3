"""Concurrent writers, threads and processes: readers see every event once, in order.

These run on SecantusDB in every run: mongomock's ``$inc`` is not atomic under threads
and separate processes cannot share it, so on the mongomock run this module starts its
own SecantusDB (the wire run uses the session's).

What a reader must see, whatever the interleaving: ``seq`` strictly increasing across
its successive reads (nothing twice, nothing out of order), and every published event
(nothing lost), although writers commit out of order (checked: it happens here).
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from polymicro import create_app
from polymicro.common import caching
from polymicro.events import service as events
from polymicro.extensions import close_db
from tests.conftest import INSTANCE_DIR, _empty_database, make_config

THREADS = 6
PER_THREAD = 25
PROCESSES = 3
PER_PROCESS = 30
DEADLINE_SECONDS = 120


@pytest.fixture
def wire_app(wire_uri, redis_url):
    app = create_app(make_config(wire_uri, redis_url))
    caching.reset_state()
    with app.app_context():
        _empty_database()
    yield app
    with app.app_context():
        _empty_database()
    close_db()


class Reader:
    """Reads after its cursor again and again, checking order as it goes."""

    def __init__(self, app):
        self.app = app
        self.cursor = 0
        self.seqs: list[int] = []
        self.names: list[str] = []
        self.held_back = 0  # reads that stopped before a seq still being written
        self.error: BaseException | None = None

    def read_once(self) -> int:
        with self.app.app_context():
            page = events.read_events(after=self.cursor, limit=50)
            counter = events.EventCounter._get_collection().find_one({"_id": "events"}) or {}
        if counter.get("seq", 0) > page["next_after"] and len(page["events"]) < 50:
            self.held_back += 1
        for event in page["events"]:
            assert not self.seqs or event["seq"] > self.seqs[-1], "seq out of order or repeated"
            self.seqs.append(event["seq"])
            self.names.append(event["subject"]["name"])
        assert page["next_after"] >= self.cursor
        self.cursor = page["next_after"]
        return len(page["events"])

    def read_until(self, expected: int, writers_done) -> None:
        try:
            self._read_until(expected, writers_done)
        except BaseException as exc:  # kept for the test thread (threads swallow errors)
            self.error = exc
            raise

    def _read_until(self, expected: int, writers_done) -> None:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while len(self.names) < expected or not writers_done():
            assert time.monotonic() < deadline, f"read {len(self.names)} of {expected}"
            if not self.read_once():
                time.sleep(0.01)
        while self.read_once():  # nothing more may arrive
            pass


@pytest.mark.parametrize("settle_seconds", [5, 0], ids=["settle-5s", "settle-0-holes-race"])
def test_threads_writing_concurrently_lose_and_repeat_nothing(wire_app, settle_seconds):
    wire_app.config["EVENTS_SETTLE_SECONDS"] = settle_seconds
    commits: list[tuple[float, int]] = []
    lock = threading.Lock()
    real_allocate = events._allocate

    def jittered_allocate():
        seq = real_allocate()
        # A random pause between taking a seq and inserting the event, so that commits
        # land out of seq order: mostly under 2 ms, one in ten 50 ms (a slow writer).
        # An interleaving device, not a wait for a time-dependent rule.
        slow = random.random() < 0.1
        time.sleep(0.05 if slow else random.random() / 500)
        return seq

    def write(worker: int):
        with wire_app.app_context():
            for i in range(PER_THREAD):
                event = events.publish("project.updated", {"id": "x", "name": f"t{worker}-{i}"})
                with lock:
                    commits.append((time.monotonic(), event["seq"]))

    events._allocate = jittered_allocate
    try:
        writers = [threading.Thread(target=write, args=(n,)) for n in range(THREADS)]
        readers = [Reader(wire_app) for _ in range(2)]
        reader_threads = [
            threading.Thread(
                target=r.read_until,
                args=(THREADS * PER_THREAD, lambda: not any(w.is_alive() for w in writers)),
            )
            for r in readers
        ]
        for thread in writers + reader_threads:
            thread.start()
        for thread in writers + reader_threads:
            thread.join(DEADLINE_SECONDS)
    finally:
        events._allocate = real_allocate
    published = {f"t{w}-{i}" for w in range(THREADS) for i in range(PER_THREAD)}
    for reader in readers:
        if reader.error:
            raise reader.error
        assert sorted(reader.names) == sorted(published)  # nothing lost, nothing twice
    in_commit_order = [seq for _, seq in sorted(commits)]
    assert all(reader.held_back for reader in readers)  # readers did meet young gaps
    assert in_commit_order != sorted(in_commit_order)  # writers did commit out of order
    if settle_seconds == 0:
        # Every young gap was declared a hole at once: writers lost numbers to readers
        # and took new ones, and still no reader missed or repeated an event.
        with wire_app.app_context():
            holes = events.Event._get_collection().count_documents({"type": "hole"})
        assert holes > 0
        assert max(seq for _, seq in commits) == THREADS * PER_THREAD + holes


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    from polymicro import create_app
    from polymicro.config import TestingConfig
    from polymicro.projects import service as projects

    uri, tag, count, instance = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    config = {k: getattr(TestingConfig, k) for k in dir(TestingConfig) if k.isupper()}
    config.update(MONGODB_URI=uri, MONGODB_MOCK=False, MONGODB_TIMEOUT_MS=5000,
                  INSTANCE_PATH=instance)
    app = create_app(config)
    with app.app_context():
        for i in range(count):
            projects.create_project({"name": f"{tag}-{i}"})
    print("done", tag)
    """
)


def _start_writer(uri: str, tag: str) -> subprocess.Popen:
    argv = [sys.executable, "-c", WRITER_SCRIPT, uri, tag, str(PER_PROCESS), INSTANCE_DIR]
    return subprocess.Popen(  # noqa: S603 - our own interpreter and script
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_processes_writing_concurrently_lose_and_repeat_nothing(wire_app, wire_uri):
    writers = [_start_writer(wire_uri, f"p{n}") for n in range(PROCESSES)]
    reader = Reader(wire_app)
    try:
        reader.read_until(
            PROCESSES * PER_PROCESS, lambda: all(w.poll() is not None for w in writers)
        )
    finally:
        outputs = [w.communicate(timeout=DEADLINE_SECONDS) for w in writers]
    for writer, (out, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err
        assert out.startswith("done")
    published = {f"p{n}-{i}" for n in range(PROCESSES) for i in range(PER_PROCESS)}
    assert sorted(reader.names) == sorted(published)
    assert len(reader.seqs) == len(set(reader.seqs)) == PROCESSES * PER_PROCESS
