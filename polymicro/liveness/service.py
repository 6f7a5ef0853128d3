"""Liveness use cases: heartbeats, liveness derived at read time, transitions recorded once.

For other domains (alerts)
    ``liveness_of(service_ids)`` → ``{service_id: {"state", "since", "reason",
    "last_seen", "deadline", "next_change"}}`` for every id asked, and
    ``liveness_of_project(project_id)`` → the same for the project's services that have
    liveness, and ``ids_in({"critical", "offline"})`` → the ids of the services in those
    states (through an index).  Derived at the time of the call, with no write.  ``state`` is one of
    ``passing``, ``warning``, ``critical``, ``offline``, ``unknown``, or None when the
    service never sent a heartbeat (liveness off).  ``unknown`` is what a service whose
    deadline passed while polymicro itself was not observing shows until one interval
    (TTL + grace) after the recovery: an alert should not fire on it (``reason`` says
    which outage; ``next_change`` says when it ends).  ``since`` is when the state began,
    ``deadline`` when missing starts (last heartbeat + TTL + grace, or an open job run's
    start + grace), ``next_change`` when the state can change with no heartbeat (None:
    only a heartbeat changes it).  Times are naive UTC.

Heartbeats (:func:`heartbeat`)
    One indexed read and one compare-and-set write of the service's row (``version``);
    the derived state is computed from the new row, and when it differs from the state
    last recorded the same write records it.  Only then is the catalog cache bumped, a
    transition stored and an event ``service.liveness_changed`` published (with
    ``before``, ``after``, ``reason``, ``at`` and ``version``).  A row changed meanwhile
    by another writer fails the compare-and-set: the heartbeat reads again and retries.
    Two changes of one service recorded within milliseconds by two writers may be
    published in the other order; ``version`` (the row's, growing with every write)
    orders them, and each event's ``before`` is the ``after`` of the one before it in
    that order.

Deadlines with no request (:func:`record_due`)
    The worker's job (``flask worker``), and catalog reads at most once per
    ``LIVENESS_CHECK_SECONDS`` per process (so the views are right without a worker):
    rows whose ``next_check`` has come are derived again and a change is recorded with a
    compare-and-set on ``version``.  Of several workers (or readers) only one wins a
    change; the others find it recorded.  Exactly one transition and one event per change.

The observer (no alert storm after polymicro's own outage)
    Worker rounds, heartbeats and catalog reads write a tick (at most once per
    ``LIVENESS_CHECK_SECONDS`` per process) on one row.  The first tick after a gap longer
    than ``LIVENESS_OUTAGE_SECONDS`` records that gap as the latest outage (a
    compare-and-set on the previous tick: one process records it).  A deadline that
    passed during it gives ``unknown`` until one interval after the recovery
    (``rules.derive``): the services could not reach polymicro, so their silence says
    nothing.  A process always ticks before it records a change, so no change is recorded
    against an outage it has not seen.  Without a worker, a spell with no heartbeat and no
    read at all also looks like an outage (nothing was observing).

Ingest as heartbeats
    :func:`on_ingest` receives ``logs.entries_stored`` and ``metrics.points_stored``: a
    service with ``heartbeat_from_ingest`` gets a heartbeat that only says it is alive,
    at most one per ``LIVENESS_CHECK_SECONDS`` per service and process.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import pymongo
from bson import ObjectId
from flask import current_app
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from polymicro.common import clock
from polymicro.common.timeutil import format_time
from polymicro.errors import Conflict, NotFound
from polymicro.events import service as events
from polymicro.liveness import rules
from polymicro.liveness.models import OBSERVER_ID, LivenessState, LivenessTransition, Observer
from polymicro.liveness.rules import BEAT, INGEST, Derived, Outage, Policy, Signal
from polymicro.security import charge_ingest, ensure_project
from polymicro.services import service as services

log = logging.getLogger(__name__)
# The most a catalog read spends recording liveness changes first (see catch_up).
CATCH_UP_SECONDS = 0.5

CATALOG = services.CATALOG  # the views show liveness: a recorded change bumps the catalog
EVENT = "service.liveness_changed"
CAS_ATTEMPTS = 100  # a loser retries; each loss is another writer's success
DUE_BATCH = 500  # rows the worker derives per query
DUE_BATCHES = 20  # queries per round at most (the rest waits for the next round)
HISTORY_MAX = 10_000  # transitions read for 30 days of uptime at most
UPTIME_WINDOWS = {"24h": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}
INGEST_MEMORY = 10_000  # services whose last ingest heartbeat a process remembers


def _config():
    return current_app.config


def _every() -> timedelta:
    return timedelta(seconds=_config()["LIVENESS_CHECK_SECONDS"])


def _offline_after() -> timedelta:
    return timedelta(seconds=_config()["HEARTBEAT_OFFLINE_AFTER_SECONDS"])


def _states() -> Collection:
    return LivenessState._get_collection()


def _transitions() -> Collection:
    return LivenessTransition._get_collection()


def _observers() -> Collection:
    return Observer._get_collection()


# --- what a process remembers (per app) ---------------------------------------------------


class _Memory:
    """Per-process throttles: when this process last ticked, read the outage, caught up
    with deadlines, and sent each service's ingest heartbeat.  Races between threads
    only cost a repeated (idempotent) database call."""

    def __init__(self):
        self.ticked: datetime | None = None
        self.outage: Outage | None = None
        self.outage_read: datetime | None = None
        self.caught_up: datetime | None = None
        self.ingested: dict[ObjectId, datetime] = {}
        self.lock = threading.Lock()


def _memory() -> _Memory:
    # Not setdefault(key, _Memory()): that builds a _Memory (and its lock) on every
    # call, and catch_up runs before every projects/services read.
    memory = current_app.extensions.get("polymicro-liveness")
    if memory is None:
        memory = current_app.extensions.setdefault("polymicro-liveness", _Memory())
    return memory


def _recent(last: datetime | None, now: datetime, every: timedelta) -> bool:
    """``last`` is less than ``every`` before ``now`` (a clock set back counts as not)."""
    return last is not None and last <= now < last + every


# --- the observer -------------------------------------------------------------------------


def _outage_of(row: dict | None) -> Outage | None:
    if not row or row.get("outage_start") is None:
        return None
    return Outage(row["outage_start"], row["outage_end"])


def _observe(now: datetime) -> Outage | None:
    """Tick (at most once per LIVENESS_CHECK_SECONDS per process); returns the latest
    outage, recording it when this tick is the first after a gap."""
    memory = _memory()
    if _recent(memory.ticked, now, _every()):
        return memory.outage
    gap = timedelta(seconds=_config()["LIVENESS_OUTAGE_SECONDS"])
    observers = _observers()
    row = None
    for _ in range(CAS_ATTEMPTS):
        row = observers.find_one({"_id": OBSERVER_ID})
        if row is None:
            row = {"_id": OBSERVER_ID, "last_tick": now}
            try:
                observers.insert_one(row)
            except DuplicateKeyError:
                continue
            break
        last = row.get("last_tick")
        if last is not None and now - last > gap:
            outage = {"last_tick": now, "outage_start": last, "outage_end": now}
            won = observers.update_one({"_id": OBSERVER_ID, "last_tick": last}, {"$set": outage})
            if not won.matched_count:
                continue  # another process ticked first: read what it wrote
            row.update(outage)
            log.warning(
                "polymicro was not observing from %s to %s: deadlines that passed meanwhile "
                "are unknown for one interval",
                format_time(last),
                format_time(now),
            )
            break
        if last is None or now > last:
            observers.update_one({"_id": OBSERVER_ID}, {"$max": {"last_tick": now}})
        break
    memory.outage, memory.outage_read, memory.ticked = _outage_of(row), now, now
    return memory.outage


def _latest_outage(now: datetime) -> Outage | None:
    """The latest outage for a read (no tick), read again at most once per
    LIVENESS_CHECK_SECONDS per process."""
    memory = _memory()
    if not _recent(memory.outage_read, now, _every()):
        memory.outage = _outage_of(_observers().find_one({"_id": OBSERVER_ID}))
        memory.outage_read = now
    return memory.outage


# --- recording changes --------------------------------------------------------------------


@dataclass(frozen=True)
class _Transition:
    service_id: ObjectId
    project_id: ObjectId
    version: int
    at: datetime
    before: str | None
    after: str
    reason: str | None


def _recorded(row: dict | None, derived: Derived) -> dict:
    """The fields that record ``derived`` as the state (its ``since`` never goes back)."""
    since = derived.since
    if row and row.get("since") and row["since"] > since:
        since = row["since"]
    return {"state": derived.state, "since": since, "reason": derived.reason}


def _transition(row_before: dict | None, row_after: dict) -> _Transition:
    return _Transition(
        service_id=row_after["_id"],
        project_id=row_after["project_id"],
        version=row_after["version"],
        at=row_after["since"],
        before=(row_before or {}).get("state"),
        after=row_after["state"],
        reason=row_after.get("reason"),
    )


def _announce(transitions: list[_Transition]) -> None:
    """Store the transitions, invalidate the catalog views, publish one event each."""
    if not transitions:
        return
    rows = [
        {
            "service_id": t.service_id,
            "project_id": t.project_id,
            "version": t.version,
            "at": t.at,
            "before": t.before,
            "after": t.after,
            "reason": t.reason,
        }
        for t in transitions
    ]
    with contextlib.suppress(BulkWriteError):  # only a duplicate (service_id, version)
        _transitions().insert_many(rows, ordered=False)
    CATALOG.bump()
    for t in transitions:
        try:
            name = services.require_service(t.service_id)["name"]
        except NotFound:  # deleted meanwhile: its liveness goes with it
            continue
        change = {
            "before": t.before,
            "after": t.after,
            "reason": t.reason,
            "at": format_time(t.at),
            "version": t.version,
        }
        events.publish(
            EVENT,
            {"id": t.service_id, "name": name},
            project_id=t.project_id,
            changes={"liveness": change},
        )
        log.info("service %s (%s) is %s: %s", name, t.service_id, t.after, t.reason)


def _settle(row: dict, now: datetime, outage: Outage | None) -> _Transition | None:
    """Derive ``row`` at ``now``; record a change, and when it can change next, with a
    compare-and-set on its version.  Returns the transition when this call recorded one."""
    derived = rules.derive(row, now, outage, _offline_after())
    update = {"next_check": derived.next_check}
    changed = derived.state != row.get("state")
    if changed:
        update |= _recorded(row, derived)
    won = _states().update_one(
        {"_id": row["_id"], "version": row["version"]},
        {"$set": update, "$inc": {"version": 1}},
    )
    if not (won.matched_count and changed):
        return None
    return _transition(row, {**row, **update, "version": row["version"] + 1})


# --- heartbeats ---------------------------------------------------------------------------


@CATALOG.writes
def heartbeat(
    service_id: ObjectId, kind: str = BEAT, data: dict | None = None, scope: ObjectId | None = None
) -> dict:
    """A heartbeat of a service (``kind``: beat, start or fail; ``data``: the optional
    ``status``, ``note`` and ``run_id``).  A caller limited to project ``scope`` (an API
    key) may only beat for that project's services (403, nothing stored).  Returns the
    service's liveness after it (:func:`liveness_of`'s shape)."""
    svc = services.get_service(service_id)
    ensure_project(scope, svc["project_id"])
    charge_ingest(scope, 1)  # a key's heartbeats count against its project's budget
    data = data or {}
    signal = Signal(
        kind=kind,
        status=data.get("status") or "passing",
        note=data.get("note"),
        run_id=data.get("run_id"),
    )
    return _beat(svc, signal)


def _beat(svc: dict, signal: Signal) -> dict:
    now = clock.now()
    outage = _observe(now)
    policy = Policy.of(svc, _config())
    for _ in range(CAS_ATTEMPTS):
        row = _states().find_one({"_id": svc["id"]})
        new = rules.apply(row, signal, policy, now)
        new.update(_id=svc["id"], project_id=svc["project_id"])
        derived = rules.derive(new, now, outage, _offline_after())
        new["next_check"] = derived.next_check
        changed = derived.state != (row or {}).get("state")
        if changed:
            new.update(_recorded(row, derived))
        if _write(row, new):
            break
    else:
        raise Conflict("Too many heartbeats of this service at once; send it again.")
    if changed:
        _announce([_transition(row, new)])
    return _report(new, derived)


def _write(row: dict | None, new: dict) -> bool:
    """Store ``new`` if the row is still ``row`` (compare-and-set on the version)."""
    if row is None:
        new["version"] = 1
        try:
            _states().insert_one(new)
        except DuplicateKeyError:  # a first heartbeat of another request won
            return False
        return True
    new["version"] = row["version"] + 1
    fields = {k: v for k, v in new.items() if k not in ("_id", "version")}
    won = _states().update_one(
        {"_id": row["_id"], "version": row["version"]}, {"$set": fields, "$inc": {"version": 1}}
    )
    return bool(won.matched_count)


@CATALOG.writes
def on_ingest(_sender, *, service_ids: Iterable[ObjectId]) -> None:
    """Receiver of ``logs.entries_stored`` and ``metrics.points_stored``: a heartbeat
    for each service that opted in (``heartbeat_from_ingest``), at most one per
    LIVENESS_CHECK_SECONDS per service and process.  The entries are stored already:
    a failure here is logged, never raised."""
    now = clock.now()
    memory = _memory()
    every = _every()
    for service_id in service_ids:
        if _recent(memory.ingested.get(service_id), now, every):
            continue
        if len(memory.ingested) >= INGEST_MEMORY:
            memory.ingested.clear()
        memory.ingested[service_id] = now
        try:
            svc = services.get_service(service_id)
            if svc.get("heartbeat_from_ingest"):
                _beat(svc, Signal(kind=INGEST))
        except NotFound:
            continue
        except Exception:
            log.exception("the ingest heartbeat of service %s failed", service_id)


# --- deadlines with no request ------------------------------------------------------------


@CATALOG.writes
def record_due() -> int:
    """Record the changes that deadlines made (the worker's job); returns how many."""
    now = clock.now()
    outage = _observe(now)
    found: list[_Transition] = []
    for _ in range(DUE_BATCHES):
        rows = list(
            _states().find({"next_check": {"$lte": now}}).sort("next_check", 1).limit(DUE_BATCH)
        )
        for row in rows:
            transition = _settle(row, now, outage)
            if transition is not None:
                found.append(transition)
        if len(rows) < DUE_BATCH:
            break
    _announce(found)
    return len(found)


def catch_up() -> None:
    """Before a catalog or liveness read: :func:`record_due`, at most once per
    LIVENESS_CHECK_SECONDS per process, so the views follow the deadlines even with no
    worker.  It never fails the read (a failure is logged: the read answers as it can,
    from the cache if it holds the answer).

    It has a time budget of its own (``CATCH_UP_SECONDS``, pymongo's client-side
    timeout, which bounds server selection too): with the database away, a read used
    to wait a whole server-selection timeout here and then another one of its own (the
    fault scenarios measured 4.5-5 s to the 503 instead of 2-2.5 s).  A round cut short
    records what it did (each change is its own compare-and-set); the worker does the
    rest."""
    now = clock.now()
    memory = _memory()
    with memory.lock:
        if _recent(memory.caught_up, now, _every()):
            return
        memory.caught_up = now
    try:
        with pymongo.timeout(CATCH_UP_SECONDS):
            record_due()
    except PyMongoError as exc:  # the database is away or slow: the read answers as it can
        log.warning("liveness changes not recorded before a read (%s)", type(exc).__name__)
    except Exception:
        log.exception("recording the liveness changes before a read failed")


def on_services_deleting(_sender, *, project_id: ObjectId, service_id: ObjectId | None) -> None:
    """Receiver of ``services.services_deleting``: their liveness and its history go."""
    if service_id is None:
        _states().delete_many({"project_id": project_id})
        _transitions().delete_many({"project_id": project_id})
    else:
        _states().delete_many({"_id": service_id})
        _transitions().delete_many({"service_id": service_id})


# --- reading ------------------------------------------------------------------------------


def _report(row: dict | None, derived: Derived) -> dict:
    row = row or {}
    return {
        "state": derived.state,
        "since": derived.since,
        "reason": derived.reason,
        "last_seen": row.get("last_seen"),
        "deadline": row.get("due"),
        "next_change": derived.next_check,
    }


def _derive_all(rows: dict[ObjectId, dict], ids: Iterable[ObjectId]) -> dict[ObjectId, dict]:
    now = clock.now()
    outage = _latest_outage(now)
    offline_after = _offline_after()
    return {
        sid: _report(rows.get(sid), rules.derive(rows.get(sid), now, outage, offline_after))
        for sid in ids
    }


def liveness_of(service_ids: Iterable[ObjectId]) -> dict[ObjectId, dict]:
    """The liveness of these services now (see the module docstring), one query."""
    ids = list(dict.fromkeys(service_ids))
    rows = {row["_id"]: row for row in _states().find({"_id": {"$in": ids}})} if ids else {}
    return _derive_all(rows, ids)


def liveness_of_project(project_id: ObjectId) -> dict[ObjectId, dict]:
    """The liveness now of the project's services that have liveness, one query."""
    rows = {row["_id"]: row for row in _states().find({"project_id": project_id})}
    return _derive_all(rows, rows)


def embed_in_service_views(service_ids: list[ObjectId]) -> dict[ObjectId, dict]:
    """Receiver of ``services.service_views_extras``: ``liveness``, and for a service
    with heartbeats the ``health`` and ``status`` it implies (``rules.HEALTH`` and
    ``rules.STATUS``); a service without keeps its stored ones."""
    extras = {}
    for sid, report in liveness_of(service_ids).items():
        state = report["state"]
        extras[sid] = {"liveness": state}
        if state is not None:
            extras[sid] |= {"health": rules.HEALTH[state], "status": rules.STATUS[state]}
    return extras


def ids_in(states: set[str]) -> list[ObjectId]:
    """The services whose liveness is one of ``states`` now: the rows found through the
    index ranges of ``rules.candidates``, each derived."""
    now = clock.now()
    outage, offline_after = _latest_outage(now), _offline_after()
    found: dict[ObjectId, dict] = {}
    for state in sorted(states):
        for query in rules.candidates(state, now, outage, offline_after):
            found |= {row["_id"]: row for row in _states().find(query)}
    return [
        sid
        for sid, row in found.items()
        if rules.derive(row, now, outage, offline_after).state in states
    ]


def filter_service_views(
    _sender, *, status: str | None, health: str | None, liveness: str | None
) -> dict:
    """Receiver of ``services.service_view_filters``: a condition on services matching
    what the views show (:func:`ids_in` for ``liveness``); ``health`` and ``status``
    match the stored value of a service without heartbeats and the implied one of a
    service with them."""
    conditions = []
    if liveness:
        conditions.append({"_id": {"$in": ids_in({liveness})}})
    tracked = None
    for field, value, shown in (("status", status, rules.STATUS), ("health", health, rules.HEALTH)):
        if not value:
            continue
        if tracked is None:
            tracked = [row["_id"] for row in _states().find({}, {"_id": 1})]
        if not tracked:  # no service has heartbeats: the stored value, as before
            conditions.append({field: value})
            continue
        implied = {state for state, text in shown.items() if text == value}
        conditions.append(
            {
                "$or": [
                    {"_id": {"$nin": tracked}, field: value},
                    {"_id": {"$in": ids_in(implied)}},
                ]
            }
        )
    return {"$and": conditions}


def get_liveness(service_id: ObjectId, transitions: int = 20) -> dict:
    """The liveness page of a service: now, the last transitions with their durations,
    and the uptime over 24 h, 7 d and 30 d computed from the transitions."""
    svc = services.get_service(service_id)
    now = clock.now()
    row = _states().find_one({"_id": service_id})
    derived = rules.derive(row, now, _latest_outage(now), _offline_after())
    policy = Policy.of(svc, _config())
    oldest = now - max(UPTIME_WINDOWS.values())
    history = list(
        _transitions()
        .find({"service_id": service_id, "at": {"$gte": oldest}})
        .sort([("at", -1), ("version", -1)])
        .limit(HISTORY_MAX)
    )
    page = {
        **_report(row, derived),
        "service_id": svc["id"],
        "project_id": svc["project_id"],
        "reported": (row or {}).get("reported"),
        "note": (row or {}).get("note"),
        "failures": (row or {}).get("failures", 0),
        "heartbeat_ttl": policy.ttl,
        "heartbeat_grace": policy.grace,
        "heartbeat_failures": policy.failures,
        "runs": [
            {**run, "deadline": run["started"] + timedelta(seconds=row["grace"])}
            for run in (row or {}).get("runs") or []
        ],
        "transitions": _durations(history[:transitions], now),
        "uptime": {
            name: rules.uptime(_segments(history, row, derived, now - width), now - width, now)
            for name, width in UPTIME_WINDOWS.items()
        },
    }
    return page


def _durations(history: list[dict], now: datetime) -> list[dict]:
    """Newest first, each lasting until the next one (the newest: until now)."""
    shown, until = [], None
    for row in history:
        end = until or now
        shown.append(
            {
                "at": row["at"],
                "before": row.get("before"),
                "after": row["after"],
                "reason": row.get("reason"),
                "until": until,
                "duration_seconds": round((end - row["at"]).total_seconds(), 3),
            }
        )
        until = row["at"]
    return shown


def _segments(
    history: list[dict], row: dict | None, derived: Derived, start: datetime
) -> list[tuple[datetime, str | None]]:
    """``(from, state)`` from ``start`` on: the recorded transitions, then the derived
    state when it has changed since the last one recorded (the worker has not seen it)."""
    inside = [t for t in reversed(history) if t["at"] >= start]
    first = inside[0]["before"] if inside else (row or {}).get("state")
    segments = [(start, first), *((t["at"], t["after"]) for t in inside)]
    if row and derived.state != row.get("state") and derived.since is not None:
        segments.append((max(derived.since, segments[-1][0]), derived.state))
    return segments
