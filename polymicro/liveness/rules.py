"""The liveness rules as pure functions of a stored row and the time (no I/O).

``service.py`` reads and writes; everything that decides lives here, so the same code
answers a read, a heartbeat, the worker and the list filter, and the tests can walk it
through time without a database.

The derivation (:func:`derive`), for a row whose service has sent a heartbeat::

    due = min(last_seen + ttl + grace, oldest open run's start + grace)
    now < due                                   → what the heartbeats reported
    due passed during an outage of polymicro,
      and nothing was heard since the recovery,
      and less than ttl + grace since it        → unknown
    due + OFFLINE_AFTER ≤ now                   → offline
    otherwise                                   → critical

The ``?liveness=`` filter reads the rows that can be in a state through index ranges
on ``due`` computed from the time (:func:`candidates`), and :func:`derive` decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from polymicro.common.timeutil import format_time

UP = frozenset({"passing", "warning"})
DOWN = frozenset({"critical", "offline"})
# How a state shows in the dashboard's fields (services and the projects' trees).
HEALTH = {
    "passing": "Healthy",
    "warning": "Warning",
    "critical": "Critical",
    "offline": "Critical",
    "unknown": "Unknown",
}
STATUS = {
    "passing": "Running",
    "warning": "Running",
    "critical": "Error",
    "offline": "Stopped",
    "unknown": "Unknown",
}
DEFAULT_RUN = "default"  # the run of /start and its finish when they name none
MAX_OPEN_RUNS = 100  # beyond it the oldest open run is dropped (it is long overdue)

# What a heartbeat request is.
BEAT, START, FAIL, INGEST = "beat", "start", "fail", "ingest"


@dataclass(frozen=True)
class Policy:
    """A service's effective liveness settings, in seconds."""

    ttl: int
    grace: int
    failures: int  # consecutive failed heartbeats before critical

    @classmethod
    def of(cls, service: dict, config) -> Policy:
        """From the service's own settings, else the defaults.  The default grace is
        ``HEARTBEAT_GRACE_SECONDS`` but never less than the TTL (one interval)."""
        ttl = service.get("heartbeat_ttl") or config["HEARTBEAT_TTL_SECONDS"]
        grace = service.get("heartbeat_grace")
        if grace is None:
            grace = max(config["HEARTBEAT_GRACE_SECONDS"], ttl)
        return cls(ttl=int(ttl), grace=int(grace), failures=service.get("heartbeat_failures") or 1)


@dataclass(frozen=True)
class Outage:
    """The latest time polymicro was not observing: no tick from ``start`` to ``end``."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class Signal:
    """One heartbeat: its kind (beat, start, fail, ingest) and its optional body."""

    kind: str = BEAT
    status: str = "passing"
    note: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class Derived:
    state: str | None  # None: no heartbeat yet (liveness is off)
    since: datetime | None
    reason: str | None
    next_check: datetime | None  # when it can change next without a heartbeat


NOT_TRACKED = Derived(None, None, None, None)


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _with_note(reason: str, note: str | None) -> str:
    return f"{reason}: {note}" if note else reason


def apply(row: dict | None, signal: Signal, policy: Policy, now: datetime) -> dict:
    """The stored fields after ``signal`` arrives at ``now`` (``row``: before; None for a
    service's first heartbeat).  The recorded state (``state``, ``since``, ``reason``,
    ``version``) is left to the caller.

    - A beat reports its status and closes its run (``run_id``, else the default run).
    - A fail closes its run and counts as a failed heartbeat: critical once there have
      been ``policy.failures`` in a row; before that the previous report stands (a first
      heartbeat that fails shows warning).
    - A start opens a run: it must be closed (beat or fail with the same ``run_id``)
      within the grace, else the service is critical.
    - Ingest (logs or points received) only says the service is alive.

    Every kind moves ``last_seen`` to ``now`` (the server's time, never the sender's).
    """
    new = dict(row or {})
    runs = [dict(run) for run in new.get("runs") or []]
    previous = new.get("reported")
    reported, reason = previous or "passing", new.get("reported_reason")
    failures = new.get("failures") or 0
    run_id = signal.run_id or DEFAULT_RUN
    if signal.kind == START:
        runs = [run for run in runs if run["id"] != run_id]
        runs.append({"id": run_id, "started": now})
        runs = runs[-MAX_OPEN_RUNS:]
        new["note"] = signal.note
        if previous is None:
            reason = _with_note(f"run {run_id!r} started", signal.note)
    elif signal.kind in (BEAT, FAIL):
        runs = [run for run in runs if run["id"] != run_id]
        failed = signal.kind == FAIL or signal.status == "critical"
        what = f"run {run_id!r} failed" if signal.kind == FAIL else "heartbeat reported critical"
        if failed:
            failures += 1
            if failures >= policy.failures:
                reported = "critical"
                reason = what if policy.failures == 1 else f"{what} ({failures} in a row)"
            else:
                reported = previous if previous in UP else "warning"
                reason = f"{what} ({failures} of {policy.failures} before critical)"
            reason = _with_note(reason, signal.note)
        else:
            failures = 0
            reported = signal.status
            reason = _with_note(f"heartbeat reported {signal.status}", signal.note)
        new["note"] = signal.note
    elif previous is None:  # ingest
        reason = "log entries or CPU points received"
    was_missing = row is not None and row["due"] <= now
    if reported != previous or was_missing or "reported_since" not in new:
        new["reported_since"] = now
    deadline = now + timedelta(seconds=policy.ttl + policy.grace)
    run_deadline = runs[0]["started"] + timedelta(seconds=policy.grace) if runs else None
    new.update(
        last_seen=now,
        reported=reported,
        reported_reason=reason,
        failures=failures,
        runs=runs,
        ttl=policy.ttl,
        grace=policy.grace,
        window=policy.ttl + policy.grace,
        deadline=deadline,
        run_deadline=run_deadline,
        due=min(deadline, run_deadline) if run_deadline else deadline,
    )
    return new


def _missing_reason(row: dict) -> str:
    run_deadline = row.get("run_deadline")
    if run_deadline is not None and run_deadline <= row["deadline"] and row.get("runs"):
        run = row["runs"][0]
        return (
            f"run {run['id']!r} started at {format_time(run['started'])} did not finish "
            f"within the grace of {_seconds(row['grace'])}"
        )
    return (
        f"no heartbeat since {format_time(row['last_seen'])} (interval "
        f"{_seconds(row['ttl'])} + grace {_seconds(row['grace'])})"
    )


def derive(
    row: dict | None, now: datetime, outage: Outage | None, offline_after: timedelta
) -> Derived:
    """The liveness of a stored row at ``now`` (see the module docstring).

    ``since`` is when the derived state began (the deadline, the end of an unknown
    spell, the moment it turned offline, or the heartbeat that reported it), so a
    change recorded late by the worker still carries the instant it happened.
    """
    if not row or row.get("last_seen") is None:
        return NOT_TRACKED
    due = row["due"]
    if now < due:
        return Derived(row["reported"], row["reported_since"], row.get("reported_reason"), due)
    since = due
    if outage is not None and outage.start < due and row["last_seen"] < outage.end:
        until = outage.end + timedelta(seconds=row["window"])
        if now < until:
            reason = (
                f"the deadline passed while polymicro was not observing "
                f"({format_time(outage.start)} to {format_time(outage.end)}); "
                f"waiting one interval after the recovery"
            )
            return Derived("unknown", due, reason, until)
        since = max(since, until)
    offline_at = due + offline_after
    if now >= offline_at:
        reason = f"{_missing_reason(row)}; offline after {_seconds(offline_after.total_seconds())}"
        return Derived("offline", max(since, offline_at), reason, None)
    return Derived("critical", since, _missing_reason(row), offline_at)


def candidates(
    state: str, now: datetime, outage: Outage | None, offline_after: timedelta
) -> list[dict]:
    """MongoDB conditions whose union holds every row :func:`derive` gives ``state`` at
    ``now``: an equality on ``reported`` and one range on ``due``, computed from the
    time.  That shape is what an index serves on SecantusDB too (measured with
    ``explain``: its planner scans for an ``$or``, or for a second range), so the filter
    reads these ranges through an index and :func:`derive` decides on each row found:
    one rule, no second copy of it written as a query."""
    alive = {"due": {"$gt": now}}
    offline_from = now - offline_after
    if state in ("passing", "warning"):
        return [{"reported": state, **alive}]
    if state == "critical":  # reported so, or missing for less than offline_after
        return [{"reported": "critical", **alive}, {"due": {"$lte": now, "$gt": offline_from}}]
    if state == "offline":
        return [{"due": {"$lte": offline_from}}]
    if state == "unknown" and outage is not None:
        return [{"due": {"$lte": now, "$gt": outage.start}}]
    return []


def uptime(
    segments: list[tuple[datetime, str | None]], start: datetime, end: datetime
) -> float | None:
    """Percent of the time in ``[start, end]`` that was up (passing or warning), out of
    the time whose state is known to be up or down.  Unknown and not-yet-tracked time
    count for neither.  ``segments``: ``(from, state)`` in time order, each lasting until
    the next (the last until ``end``).  None: nothing known."""
    up = down = 0.0
    for index, (begin, state) in enumerate(segments):
        finish = segments[index + 1][0] if index + 1 < len(segments) else end
        begin = max(begin, start)
        seconds = (min(finish, end) - begin).total_seconds()
        if seconds <= 0:
            continue
        if state in UP:
            up += seconds
        elif state in DOWN:
            down += seconds
    if up + down == 0:
        return None
    return round(100 * up / (up + down), 3)
