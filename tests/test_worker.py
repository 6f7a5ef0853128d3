"""The background worker's loop: jobs run on their own cadence, a failing job never
stops the others, ``--once`` runs each job one time and says whether all succeeded."""

from __future__ import annotations

import threading

import pytest

from polymicro import worker
from polymicro.worker import Job, _Schedule, run_round


def recorder(calls: list, name: str, fail: bool = False):
    def run():
        calls.append(name)
        if fail:
            raise RuntimeError("boom")
        return 1

    return run


def test_a_round_runs_the_jobs_that_are_due_and_schedules_the_next_turn():
    calls = []
    schedules = [
        _Schedule(Job("fast", recorder(calls, "fast"), every=1)),
        _Schedule(Job("slow", recorder(calls, "slow"), every=10)),
    ]
    assert run_round(schedules, now=100.0) == {"fast": True, "slow": True}
    assert run_round(schedules, now=100.5) == {}
    assert run_round(schedules, now=101.0) == {"fast": True}
    assert calls == ["fast", "slow", "fast"]
    assert [s.due for s in schedules] == [102.0, 110.0]


def test_a_failing_job_is_logged_and_the_others_still_run(caplog):
    calls = []
    schedules = [
        _Schedule(Job("broken", recorder(calls, "broken", fail=True), every=5)),
        _Schedule(Job("fine", recorder(calls, "fine"), every=5)),
    ]
    assert run_round(schedules, now=0.0) == {"broken": False, "fine": True}
    assert calls == ["broken", "fine"]
    assert "job broken failed" in caplog.text


@pytest.mark.parametrize(("fail", "code"), [(False, 0), (True, 1)])
def test_worker_once_runs_every_job_once_and_exits_with_their_outcome(app, monkeypatch, fail, code):
    calls = []
    monkeypatch.setattr(
        worker,
        "jobs",
        lambda _app: [Job("a", recorder(calls, "a", fail), 60), Job("b", recorder(calls, "b"), 60)],
    )
    result = app.test_cli_runner().invoke(args=["worker", "--once"])
    assert result.exit_code == code
    assert calls == ["a", "b"]


def test_the_loop_runs_until_stopped(app, monkeypatch):
    stop = threading.Event()
    calls = []

    def run():
        calls.append(1)
        if len(calls) == 3:
            stop.set()

    monkeypatch.setattr(worker, "jobs", lambda _app: [Job("tick", run, every=0.01)])
    thread = threading.Thread(target=worker.serve, args=(app,), kwargs={"stop": stop})
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(calls) == 3
