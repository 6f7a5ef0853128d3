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
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextvars import ContextVar

from pymongo import MongoClient
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

log = logging.getLogger(__name__)

# "Transaction numbers are only allowed on a replica set member or mongos".
ILLEGAL_OPERATION = 20
_FLAG = "_polymicro_transactions"  # remembered on the client: True, False or absent
_SECANTUS = "_polymicro_on_secantus"  # remembered on the client: SecantusDB or not


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
            if on_secantus(client):
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


def insert_row(collection: Collection, row: dict, grouped: bool = False) -> None:
    """Insert one row (its ``_id`` set by the caller), in the current transaction if
    there is one.  With ``grouped`` (and no transaction), rows that threads of this
    process insert into the same collection at the same time go in one ``insert_many``
    (a group commit, see :class:`GroupCommit`)."""
    if grouped and not in_transaction():
        _group_for(collection).insert(row)
        return
    collection.insert_one(row, session=current_session())


class GroupCommit:
    """Concurrent single-row inserts into one collection, written together.

    A thread that finds no insert in progress becomes the leader: it writes everything
    queued so far in one ordered=False ``insert_many`` (the collection's write concern:
    ``j: true``), then again whatever queued meanwhile, until the queue is empty.  Every
    thread returns only when the insert holding its row has been acknowledged, so each
    request is answered after its row is durable; a row that failed (a duplicate ``_id``)
    raises in its own thread only, any other error in every thread of that insert.
    No waiting is added: a lone request is written at once.
    """

    def __init__(self, collection: Collection):
        self.collection = collection
        self.lock = threading.Lock()
        self.queue: list[tuple[dict, Future]] = []
        self.busy = False

    def insert(self, row: dict) -> None:
        done: Future = Future()
        with self.lock:
            self.queue.append((row, done))
            leader = not self.busy
            self.busy = True
        if leader:
            self._drain()
        done.result()

    def _drain(self) -> None:
        while True:
            with self.lock:
                batch, self.queue = self.queue, []
                if not batch:
                    self.busy = False
                    return
            self._write(batch)

    def _write(self, batch: list[tuple[dict, Future]]) -> None:
        try:
            self.collection.insert_many([row for row, _ in batch], ordered=False)
        except BulkWriteError as exc:
            failed = {error["index"]: error for error in exc.details.get("writeErrors", [])}
            for index, (_row, done) in enumerate(batch):
                if index in failed:
                    done.set_exception(_row_error(failed[index]))
                else:
                    done.set_result(None)
            if exc.details.get("writeConcernErrors"):
                for _row, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            return
        except BaseException as exc:
            for _row, done in batch:
                done.set_exception(exc)
            return
        for _row, done in batch:
            done.set_result(None)


def _row_error(error: dict) -> Exception:
    if error.get("code") == 11000:
        return DuplicateKeyError(error.get("errmsg", "duplicate key"), 11000, error)
    return OperationFailure(error.get("errmsg", "write failed"), error.get("code"), error)


_groups: dict[tuple[int, str], GroupCommit] = {}
_groups_lock = threading.Lock()


def _group_for(collection: Collection) -> GroupCommit:
    key = (id(collection.database.client), collection.full_name)
    group = _groups.get(key)
    if group is None:
        with _groups_lock:
            group = _groups.setdefault(key, GroupCommit(collection))
    return group


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
    if on_secantus(client):
        client.admin.command("fsync")
    return ids


def on_secantus(client) -> bool:
    """Whether ``client`` talks to SecantusDB: asked once per client (``buildInfo``) and
    remembered on it.  A database without ``buildInfo`` (mongomock) is not SecantusDB."""
    known = client.__dict__.get(_SECANTUS)
    if known is None:
        try:
            known = is_secantus(client.admin.command("buildInfo"))
        except NotImplementedError:
            known = False
        remember_secantus(client, known)
    return known


def remember_secantus(client, known: bool) -> None:
    """Record what :func:`on_secantus` answers for ``client`` (a caller that asked
    ``buildInfo`` itself: the client made by ``extensions`` for retryable writes)."""
    client.__dict__[_SECANTUS] = known


def is_secantus(build_info: dict) -> bool:
    """Whether ``buildInfo`` came from SecantusDB (it adds ``secantusVersion``)."""
    return "secantusVersion" in build_info
