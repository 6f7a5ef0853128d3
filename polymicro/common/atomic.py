"""All-or-nothing bulk inserts: a batch of log entries, an array of CPU points.

``insert_many`` is not atomic.  The server applies the documents one after the other
(SecantusDB commits a large insert in chunks of a few MB), so a database killed during
the insert, or a worker killed while it waits for the answer, can leave part of a batch
stored: scripts/faults.py found 276 of 1000 entries of a batch after either.  The
contract says a batch is stored completely or not at all.

Where the database has transactions (a replica set, a sharded cluster, SecantusDB) the
rows are inserted in one transaction: they become visible together at its commit, or
not at all.  A standalone MongoDB has none; there the insert is what it was before (a
warning says so once per process), and mongomock (tests) never gets a transaction.
No retry loop: a failure is answered at once (503 when the database is unreachable).

SecantusDB 0.7 (beta) acknowledges a committed transaction before it is in its journal,
even with ``j: true``: killed right after, it lost up to 38% of such commits
(scripts/faults.py).  On SecantusDB only, each commit is followed by an ``fsync`` (a few
ms), which makes it durable; on MongoDB the commit's write concern does that already.

Idempotent requests (``polymicro/common/idempotency.py``) put the write and the record
of its answer in one transaction: :func:`transaction` opens it, and every insert of this
module called inside it joins it instead of starting its own; :func:`after_commit`
defers work that must only happen once the write is visible (cache bumps).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from pymongo import MongoClient
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

log = logging.getLogger(__name__)

# "Transaction numbers are only allowed on a replica set member or mongos".
ILLEGAL_OPERATION = 20
_FLAG = "_polymicro_transactions"  # remembered on the client: True, False or absent
_FLUSH = "_polymicro_flush_commits"  # remembered on the client: SecantusDB or not


_current: ContextVar[_Transaction | None] = ContextVar("polymicro_transaction", default=None)


class _Transaction:
    def __init__(self, session: ClientSession | None):
        self.session = session
        self.callbacks: list[Callable[[], None]] = []


def in_transaction() -> bool:
    return _current.get() is not None


def after_commit(callback: Callable[[], None]) -> None:
    """Run ``callback`` once the current transaction has committed (now, outside one);
    dropped if it aborts."""
    current = _current.get()
    if current is None:
        callback()
    else:
        current.callbacks.append(callback)


def current_session() -> ClientSession | None:
    current = _current.get()
    return None if current is None else current.session


@contextlib.contextmanager
def transaction(client) -> Iterator[ClientSession | None]:
    """One transaction for everything done inside (yields its session; None where the
    database has none: mongomock, a standalone MongoDB, where each write stands alone).
    Callbacks of :func:`after_commit` run after the commit (and a SecantusDB fsync)."""
    if _current.get() is not None:
        raise RuntimeError("transactions do not nest")
    state = _Transaction(None)
    token = _current.set(state)
    try:
        if _transactions(client) is False or not supports_transactions(client):
            yield None
        else:
            with client.start_session() as session, session.start_transaction():
                state.session = session
                yield session
            if _flush_after_commit(client):
                client.admin.command("fsync")
    finally:
        _current.reset(token)
    for callback in state.callbacks:
        callback()


def supports_transactions(client) -> bool:
    """Whether the server takes transactions (a replica set member, mongos,
    SecantusDB); asked once per client."""
    known = _transactions(client)
    if known is not None:
        return known
    hello = client.admin.command("hello")
    known = bool(hello.get("setName") or hello.get("msg") == "isdbgrid")
    client.__dict__[_FLAG] = known
    return known


def insert_row(collection: Collection, row: dict) -> None:
    """Insert one row (its ``_id`` set by the caller or pymongo), in the current
    transaction if there is one."""
    collection.insert_one(row, session=current_session())


def _transactions(client) -> bool | None:
    if not isinstance(client, MongoClient):
        return False  # mongomock
    return client.__dict__.get(_FLAG)


def insert_all_or_nothing(collection: Collection, rows: list[dict]) -> list:
    """Insert ``rows`` in order; returns their ids.  In one transaction when the
    database supports them."""
    client = collection.database.client
    if in_transaction():  # the caller's transaction holds it (or there is none to have)
        return collection.insert_many(rows, ordered=True, session=current_session()).inserted_ids
    if _transactions(client) is False:
        return collection.insert_many(rows, ordered=True).inserted_ids
    try:
        with client.start_session() as session, session.start_transaction():
            ids = collection.insert_many(rows, ordered=True, session=session).inserted_ids
    except OperationFailure as exc:
        if exc.code != ILLEGAL_OPERATION:
            raise
        client.__dict__[_FLAG] = False
        log.warning(
            "the database has no transactions (not a replica set): a batch interrupted "
            "by a crash may be stored in part"
        )
        return collection.insert_many(rows, ordered=True).inserted_ids
    client.__dict__[_FLAG] = True
    if _flush_after_commit(client):
        client.admin.command("fsync")
    return ids


def _flush_after_commit(client) -> bool:
    flush = client.__dict__.get(_FLUSH)
    if flush is None:
        flush = is_secantus(client.admin.command("buildInfo"))
        client.__dict__[_FLUSH] = flush
    return flush


def is_secantus(build_info: dict) -> bool:
    """Whether ``buildInfo`` came from SecantusDB (it adds ``secantusVersion``)."""
    return "secantusVersion" in build_info
