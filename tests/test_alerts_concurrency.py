"""Alert evaluation by several workers at once: one transition per change, one outbox
row per firing/resolved transition, nothing lost.

These run on SecantusDB in every run (mongomock is not atomic under threads), like
test_liveness_concurrency.py.

- Threads: three apps ("processes") race ``evaluate_all`` on one database at each step
  of a manual clock, over scripted data, with a random pause before each
  compare-and-set to interleave them.
- Processes: three real ``flask worker`` processes (evaluating every second, on the
  real time) while this test writes the scripted series; one of them is killed with
  SIGKILL halfway.  About 40 s.
"""

from __future__ import annotations

import itertools
import random
import signal
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest

from polymicro import create_app
from polymicro.alerts import service as alerts
from polymicro.common import caching, clock
from polymicro.extensions import close_db
from polymicro_dev import Processes, app_env
from polymicro_dev.processes import venv_exe, wait_until
from tests.alerts_helpers import alert_events, instance_rows, outbox_rows, point, rule_data
from tests.conftest import _empty_database, make_config
from tests.factories import make_project, make_service

SERVICES = 8
JOIN_SECONDS = 120


@pytest.fixture
def apps(wire_uri, redis_url):
    """Three apps on one database, the first one's context pushed."""
    made = [create_app(make_config(wire_uri, redis_url)) for _ in range(3)]
    caching.reset_state()
    with made[0].app_context():
        _empty_database()
        yield made
        _empty_database()
    close_db()


@pytest.fixture
def jitter(monkeypatch):
    real = alerts._transit

    def paused(*args, **kwargs):
        time.sleep(random.random() / 500)
        return real(*args, **kwargs)

    monkeypatch.setattr(alerts, "_transit", paused)


def race(apps, job) -> list:
    barrier = threading.Barrier(len(apps))
    results: list = [None] * len(apps)

    def run(index, app):
        with app.app_context():
            barrier.wait()
            try:
                results[index] = job()
            except BaseException as exc:
                results[index] = exc

    threads = [threading.Thread(target=run, args=(i, app)) for i, app in enumerate(apps)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_SECONDS)
    assert not any(thread.is_alive() for thread in threads)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def assert_each_change_once() -> dict:
    """Every instance's events form one chain with versions 1..n (no change twice, none
    lost), and the outbox holds exactly one row per firing/resolved transition.
    Returns ``{instance id: [after, ...]}``."""
    events = alert_events()
    by_instance: dict[str, list[dict]] = {}
    for event in events:
        by_instance.setdefault(event["subject"]["id"], []).append(event["changes"]["alert"])
    rows = {str(row["_id"]): row for row in instance_rows()}
    assert set(by_instance) == set(rows)
    expected_keys = []
    afters = {}
    for iid, changes in by_instance.items():
        changes.sort(key=lambda c: c["version"])
        assert [c["version"] for c in changes] == list(range(1, len(changes) + 1)), changes
        for first, second in itertools.pairwise(changes):
            assert first["after"] == second["before"], changes
        assert changes[0]["before"] == "inactive"
        row = rows[iid]
        assert row["version"] == len(changes)
        assert row["state"] == changes[-1]["after"]
        assert row["notified_version"] == row["version"]
        expected_keys += [
            f"{iid}:{c['version']}" for c in changes if c["after"] in ("firing", "resolved")
        ]
        afters[iid] = [c["after"] for c in changes]
    keys = [row["key"] for row in outbox_rows()]
    assert Counter(keys) == Counter(expected_keys)
    return afters


def test_three_workers_racing_record_each_change_once(apps, jitter):
    with clock.use(clock.ManualClock()) as manual:
        project = make_project()
        svcs = [make_service(project) for _ in range(SERVICES)]
        alerts.create_rule(
            rule_data(svcs[0], service_id=None, window=15, for_seconds=15, keep_firing_for=15)
        )
        start = manual.now()
        pattern = [90, 90, 90, 10, 10, 10, 90, 10, 90, 90, 90, 90, 10, 10, 10, 10]
        for step, load in enumerate(pattern):
            for svc in svcs:
                point(svc, start + timedelta(seconds=step * 15 + 1), float(load))
        total = 0
        for step in range(len(pattern) + 2):
            manual.set(start + timedelta(seconds=(step + 1) * 15))
            total += sum(race(apps, alerts.evaluate_all))
        afters = assert_each_change_once()
    assert len(afters) == SERVICES
    for states in afters.values():
        assert states == [
            "pending",
            "firing",
            "resolved",
            "pending",
            "inactive",  # one high step is shorter than `for`
            "pending",
            "firing",
            "resolved",
        ]
    assert total == 8 * SERVICES


# --- real worker processes ------------------------------------------------------------------

PHASES = 3
PHASE_SECONDS = 6.0


def test_three_worker_processes_one_killed(apps, wire_uri, redis_url, tmp_path):
    project = make_project()
    svcs = [make_service(project) for _ in range(4)]
    alerts.create_rule(
        rule_data(svcs[0], service_id=None, window=2, for_seconds=1, keep_firing_for=0)
    )
    env = app_env(
        wire_uri,
        redis_url,
        POLYMICRO_ALERTS_EVALUATE_SECONDS="1",
        POLYMICRO_LIVENESS_CHECK_SECONDS="1",
        POLYMICRO_LOG_LEVEL="INFO",
        POLYMICRO_INSTANCE_PATH=str(tmp_path / "instance"),
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = [venv_exe("flask"), "--app", "polymicro", "worker"]
    with Processes() as procs:
        workers = [
            procs.start(f"worker-{i}", argv, 0, "", tmp_path / f"worker-{i}.log", env=env)
            for i in range(3)
        ]
        for worker in workers:
            wait_until(
                lambda w=worker: "worker started" in w.log_path.read_text(errors="replace"),
                60,
                f"{worker.name} to start",
                server=worker,
            )
        killed = False
        started = time.monotonic()
        for phase in range(PHASES * 2):
            load = 95.0 if phase % 2 == 0 else 5.0
            phase_end = started + (phase + 1) * PHASE_SECONDS
            while time.monotonic() < phase_end:
                now = clock.now()
                for svc in svcs:
                    point(svc, now, load)
                if not killed and phase == PHASES:  # halfway: one worker dies
                    procs.stop(workers[0], signal.SIGKILL)
                    killed = True
                time.sleep(0.25)
        # the last low phase resolved everything; let the survivors finish a round
        wait_until(
            lambda: (
                all(row["state"] == "resolved" for row in instance_rows())
                and all(row["notified_version"] == row["version"] for row in instance_rows())
            ),
            20,
            "the last resolve",
        )
        time.sleep(2)
        for worker in workers[1:]:
            worker.check_alive()
    afters = assert_each_change_once()
    assert len(afters) == len(svcs)
    for states in afters.values():
        assert states == ["pending", "firing", "resolved"] * PHASES, states
