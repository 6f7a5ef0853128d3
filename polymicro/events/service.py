"""Events: publish one per catalog change; read them by cursor; follow them live.

Publishing
    A domain calls :func:`publish` *after* its write succeeded (same request, same
    thread).  So no event exists for a write that failed (422, 404, 409, a database
    error): nothing is published before the change is stored.  The crash window: a
    process killed (or a database lost) between the change and its event leaves the
    change without an event; the audit trail misses it, nothing else breaks.  The
    change and its event are not one transaction: the catalog writes are mongoengine
    saves with cascades (a project deletion removes its logs, possibly millions of
    rows: too big for one transaction), and the event must not hold that open.

    The actor is read here, not passed in: :func:`current_actor` reads the principal
    that the ``access()`` decorator leaves on ``flask.g`` (duck-typed: events imports no
    other domain nor the security module), and the request id from
    ``polymicro.observability``.  Outside a request (CLI, worker) the actor is
    ``system``.  Changes carry only the fields the update touched, before and after;
    fields that hold secrets are never copied (see ``SECRET_FIELDS``); :func:`diff`
    computes them from the document before the update.

Sequence numbers and the gap rule
    ``seq`` comes from one counter document, ``$inc`` (atomic on a real server), taken
    just before the event is inserted.  Two writers can commit out of order: 12 may be
    visible before 11.  A reader therefore never looks past the *settled* point: the
    highest ``seq`` up to which every number is stored.  A missing number is

    - *young* while the event after it is younger than ``EVENTS_SETTLE_SECONDS``: its
      writer is still committing; readers stop before it and see it on a later call;
    - a *hole* after that: the reader inserts a hole row with that ``seq``.  The unique
      index on ``seq`` decides the race with a late writer: if the writer's insert comes
      first, the reader's hole fails (the event is there: fine); if the hole comes
      first, the writer's insert fails with a duplicate key, and the writer takes a new
      number and inserts again.  Either way no reader skips an event that will later
      appear, however slow the writer: the settle time only decides how long readers
      wait for a number whose writer died.

    The settled point is kept on the counter (``$max``), so a read scans only the
    unsettled tail (usually nothing).

Retention
    ``RETENTION_EVENTS_DAYS`` (0 = forever): a TTL index on ``time`` deletes old rows
    (MongoDB and SecantusDB sweep every 60 s), and reads hide them at once (the
    horizon).  A cursor older than the oldest kept event is answered ``410 Gone``:
    events were dropped after it, so the reader has to start again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from bson import ObjectId
from flask import current_app, g, has_request_context, request
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from polymicro.common import clock, retention
from polymicro.common.timeutil import format_time
from polymicro.errors import DomainError, InvalidInput
from polymicro.events.models import DEFAULT_LIMIT, HOLE, MAX_LIMIT, Event, EventCounter
from polymicro.observability import current_request_id

COUNTER_ID = "events"
SETTLE_SCAN = 1000  # unsettled rows looked at per read (the tail is usually empty)
PUBLISH_ATTEMPTS = 10  # a writer loses its number only when it is slower than the settle time
TTL_INDEX = "time_ttl"
# Never copied into an event, whatever a caller passes.
SECRET_FIELDS = frozenset(
    {"password", "password_hash", "current_password", "key", "key_hash", "secret", "token"}
)
API_KEY_HEADER = "X-API-Key"


class CursorGone(DomainError):
    """The cursor points before what is kept (or past anything ever issued): 410."""

    code = 410


# --- who and what -------------------------------------------------------------------------


def current_actor() -> dict:
    """Who is making the change of this request.

    Reads ``flask.g.principal`` (set by ``access()``) by its attributes: a user gives
    ``{kind: user, id, name}``, an API key ``{kind: api_key, id, prefix}``, auth switched
    off (or a public endpoint) ``{kind: anonymous}``; outside a request ``{kind: system}``.
    """
    if not has_request_context():
        return {"kind": "system"}
    principal = g.get("principal")
    kind = getattr(principal, "kind", None)
    if kind == "user":
        return {"kind": "user", "id": principal.user_id, "name": principal.username}
    if kind == "key":
        return {"kind": "api_key", "id": str(principal.key_id), "prefix": _key_prefix()}
    return {"kind": "anonymous"}


def _key_prefix() -> str | None:
    """The public prefix of the request's API key (``pmk_<prefix>_<secret>``); only read
    once ``access()`` has verified that key.  The secret part is never kept."""
    parts = request.headers.get(API_KEY_HEADER, "").split("_", 2)
    return parts[1] if len(parts) == 3 else None


def _plain(value):
    """A JSON-ready copy: times as RFC 3339, ids as strings."""
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def diff(document, new_values: dict) -> dict:
    """``{field: {before, after}}`` for each field of ``new_values`` that differs from
    ``document`` (call it before applying the update).  Secret fields are left out."""
    result = {}
    for field, after in new_values.items():
        if field in SECRET_FIELDS:
            continue
        before = getattr(document, field, None)
        if before != after:
            result[field] = {"before": _plain(before), "after": _plain(after)}
    return result


def changes_of(changed: dict[str, tuple]) -> dict:
    """``{field: {before, after}}`` from ``{field: (before, after)}`` (what
    ``common.models.apply_changes`` returns).  Secret fields are left out."""
    return {
        field: {"before": _plain(before), "after": _plain(after)}
        for field, (before, after) in changed.items()
        if field not in SECRET_FIELDS
    }


def _subject(kind: str, subject) -> dict:
    if isinstance(subject, dict):
        ident, name = subject.get("id"), subject.get("name")
    else:
        ident = getattr(subject, "id", None)
        name = getattr(subject, "name", None) or getattr(subject, "username", None)
    return {"kind": kind, "id": None if ident is None else str(ident), "name": name}


def _actor_keys(actor: dict) -> list[str]:
    keys = [actor["kind"]]
    keys += [actor[k] for k in ("id", "name", "prefix") if actor.get(k)]
    return list(dict.fromkeys(keys))


# --- publishing ---------------------------------------------------------------------------


def publish(
    type: str,
    subject,
    *,
    project_id: ObjectId | None = None,
    changes: dict | None = None,
    actor: dict | None = None,
) -> dict:
    """Append one event; returns it.  Call after the change it records has succeeded.

    ``type`` is ``<kind>.<verb>`` (``service.updated``); ``subject`` is the changed
    document (its ``id`` and ``name``/``username`` are read) or ``{id, name}``.
    """
    actor = actor or current_actor()
    document = {
        "type": type,
        "subject": _subject(type.split(".", 1)[0], subject),
        "actor": actor,
        "actor_keys": _actor_keys(actor),
    }
    if project_id is not None:
        document["project_id"] = project_id
    request_id = current_request_id() if has_request_context() else None
    if request_id:
        document["request_id"] = request_id
    if changes:
        document["changes"] = {k: v for k, v in changes.items() if k not in SECRET_FIELDS}
    collection = _events()
    for _ in range(PUBLISH_ATTEMPTS):
        document["seq"] = _allocate()
        document["time"] = clock.now()
        document.pop("_id", None)
        try:
            collection.insert_one(document)
        except DuplicateKeyError:
            continue  # a reader declared our number a hole (we were slower than the settle time)
        return _view(document)
    raise RuntimeError(f"could not store an event after {PUBLISH_ATTEMPTS} attempts")


def _allocate() -> int:
    """The next ``seq``: one atomic ``$inc`` on the counter document."""
    counters = EventCounter._get_collection()
    for _ in range(3):
        row = counters.find_one_and_update(
            {"_id": COUNTER_ID}, {"$inc": {"seq": 1}}, return_document=ReturnDocument.AFTER
        )
        if row is not None:
            return row["seq"]
        # First event of this database: create the counter (of racing creators, one wins).
        with contextlib.suppress(DuplicateKeyError):
            counters.insert_one({"_id": COUNTER_ID, "seq": 0, "settled": 0})
    raise RuntimeError("the event counter could not be read")


# --- storage and retention ----------------------------------------------------------------


def _events() -> Collection:
    """The events collection (its TTL index follows the retention setting: the first use
    in a process applies it, see ``polymicro.common.retention``)."""
    retention.ensure_applied()
    return Event._get_collection()


# The retention of events (POLYMICRO_RETENTION_EVENTS_DAYS); registered in
# polymicro/domains.py.  The index keeps the name it had before the registry.
RETENTION = retention.Kind(
    "events",
    lambda: Event._get_collection(),
    "time",
    "RETENTION_EVENTS_DAYS",
    index_name=TTL_INDEX,
)


def retention_days() -> int:
    return max(0, int(current_app.config["RETENTION_EVENTS_DAYS"]))


def ensure_retention(collection: Collection, days: int) -> None:
    """Make the TTL index on ``time`` match ``days`` (none when 0): ``collMod`` where
    the database has it, else dropped and made again (mongomock)."""
    retention.apply_ttl(collection, "time", TTL_INDEX, days)


def horizon() -> datetime | None:
    """Events older than this are no longer shown (None: kept forever)."""
    return retention.horizon(RETENTION)


# --- the settled point (gap rule) ---------------------------------------------------------


def settled_head() -> int:
    """The highest ``seq`` up to which every number is stored (event or hole).

    Readers never go past it.  Advances it when the tail allows: stored numbers in a
    row, and holes for missing numbers older than the settle time.
    """
    counter = EventCounter._get_collection().find_one({"_id": COUNTER_ID})
    if counter is None:
        return 0
    allocated, settled = counter.get("seq", 0), counter.get("settled", 0)
    if settled >= allocated:
        return settled
    head = _settle(settled)
    if head > settled:
        EventCounter._get_collection().update_one({"_id": COUNTER_ID}, {"$max": {"settled": head}})
    return head


def _settle(settled: int) -> int:
    settle = timedelta(seconds=current_app.config["EVENTS_SETTLE_SECONDS"])
    now = clock.now()
    collection = _events()
    expected = settled + 1
    rows = collection.find({"seq": {"$gt": settled}}, {"seq": 1, "time": 1})
    for row in rows.sort("seq", 1).limit(SETTLE_SCAN):
        while expected < row["seq"]:
            if now - row["time"] < settle:
                return expected - 1  # a writer may still be committing `expected`
            _declare_hole(collection, expected, now)
            expected += 1
        expected = row["seq"] + 1
    return expected - 1


def _declare_hole(collection: Collection, seq: int, now: datetime) -> None:
    """Store a hole at ``seq``; a duplicate key means its event arrived first (also fine)."""
    with contextlib.suppress(DuplicateKeyError):
        collection.insert_one({"seq": seq, "type": HOLE, "time": now})


def _kept_floor(head: int, since: datetime | None) -> int:
    """The lowest ``seq`` still kept, at most ``head + 1`` (beyond the settled point a
    missing number is a writer still committing, not a dropped event)."""
    query = {} if since is None else {"time": {"$gte": since}}
    for row in _events().find(query, {"seq": 1}).sort("seq", 1).limit(1):
        return min(row["seq"], head + 1)
    return head + 1


# --- reading ------------------------------------------------------------------------------


def _view(row: dict) -> dict:
    return {
        "seq": row["seq"],
        "time": row["time"],
        "type": row["type"],
        "project_id": row.get("project_id"),
        "subject": row.get("subject"),
        "actor": row.get("actor"),
        "request_id": row.get("request_id"),
        "changes": row.get("changes"),
    }


def _filter(project_id, actor) -> dict:
    """The query of the filters.  A hole matches none of them; without filters, holes
    are dropped after the read (``$ne`` would cost SecantusDB's planner the index)."""
    query: dict = {}
    if project_id is not None:
        query["project_id"] = project_id
    if actor:
        query["actor_keys"] = actor
    return query


def _find(query: dict, types, seq: dict, direction: int, limit: int) -> list[dict]:
    """Rows in ``seq`` order.  Several types are one query each, merged: SecantusDB
    scans the whole collection for ``type: {$in: [...]}`` but uses the index for an
    equality (measured with ``explain``)."""
    queries = [{**query, "type": t} for t in dict.fromkeys(types)] if types else [query]
    rows: list[dict] = []
    for one in queries:
        rows += _events().find({**one, "seq": seq}).sort("seq", direction).limit(limit)
    rows.sort(key=lambda row: row["seq"], reverse=direction < 0)
    return rows[:limit]


def _views(rows: list[dict]) -> list[dict]:
    return [_view(row) for row in rows if row["type"] != HOLE]


def read_events(
    after: int | None = None,
    before: int | None = None,
    limit: int = DEFAULT_LIMIT,
    project_id: ObjectId | None = None,
    type: Iterable[str] | None = None,
    actor: str | None = None,
) -> dict:
    """Events matching the filters, with the cursors for the next call.

    - ``after``: oldest first, ``seq > after``; ``next_after`` is the cursor to pass next
      (the last event's ``seq`` when the page is full, else the settled point: the
      filtered-out events up to it need not be read again).
    - otherwise newest first from ``before`` (exclusive; default: the newest); a full
      page gives ``next_before``; ``next_after`` is the settled point, from where to
      follow new events.

    Raises :class:`CursorGone` when events after ``after`` are no longer kept.
    """
    if after is not None and before is not None:
        raise InvalidInput.field("before", "Use either `after` or `before`.", "query")
    limit = max(1, min(limit, MAX_LIMIT))
    head = settled_head()
    if after == head:  # nothing new (a stream's idle poll: one read of the counter)
        return {"events": [], "next_after": head, "next_before": None}
    floor = _kept_floor(head, horizon())
    query = _filter(project_id, actor)
    if after is not None:
        check_cursor(after, head, floor)
        rows = _find(query, type, {"$gt": after, "$lte": head}, 1, limit)
        next_after = rows[-1]["seq"] if len(rows) == limit else head
        return {"events": _views(rows), "next_after": next_after, "next_before": None}
    top = head if before is None else min(before - 1, head)
    rows = _find(query, type, {"$gte": floor, "$lte": top}, -1, limit)
    next_before = rows[-1]["seq"] if len(rows) == limit else None
    return {"events": _views(rows), "next_after": head, "next_before": next_before}


def check_cursor(after: int, head: int, floor: int) -> None:
    if after > head:
        raise CursorGone(
            f"Cursor {after} is past the newest event ({head}): the event log was reset. "
            "Start again without a cursor."
        )
    if after + 1 < floor:
        raise CursorGone(
            f"Events after {after} are no longer kept (the oldest kept is {floor}). "
            "Reload the state you follow, then continue from `next_after` of a fresh read."
        )


def iter_events(until: datetime) -> Iterator[dict]:
    """Every kept event older than ``until``, oldest first (for the export)."""
    query = {"type": {"$ne": HOLE}, "time": {"$lt": until}}
    for row in _events().find(query).sort("seq", 1):
        yield _view(row)


# --- following (the stream) ---------------------------------------------------------------


class Follower:
    """The reads of one live stream: ``seq`` order from a cursor, with the filters.

    ``start(last_event_id)`` gives the cursor to begin after: the resume point when it
    is still kept, else the newest event (``reset`` says which happened).
    """

    def __init__(self, project_id=None, type=None, actor=None):
        self.filters = {"project_id": project_id, "type": type, "actor": actor}
        self.cursor = 0

    def start(self, resume_from: str | int | None) -> bool:
        """Set the cursor; returns True when the resume point is gone (a reset)."""
        head = settled_head()
        if resume_from is None or resume_from == "":
            self.cursor = head
            return False
        try:
            after = int(resume_from)
            if after < 0:
                raise ValueError(after)
            check_cursor(after, head, _kept_floor(head, horizon()))
        except (ValueError, CursorGone):
            self.cursor = head
            return True
        self.cursor = after
        return False

    def poll(self, limit: int = DEFAULT_LIMIT) -> tuple[list[dict], bool]:
        """The events after the cursor (moving it on) and whether more are waiting."""
        page = read_events(after=self.cursor, limit=limit, **self.filters)
        self.cursor = page["next_after"]
        return page["events"], len(page["events"]) == limit
