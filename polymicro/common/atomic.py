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
"""

from __future__ import annotations

import logging

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

log = logging.getLogger(__name__)

# "Transaction numbers are only allowed on a replica set member or mongos".
ILLEGAL_OPERATION = 20
_FLAG = "_polymicro_transactions"  # remembered on the client: True, False or absent
_FLUSH = "_polymicro_flush_commits"  # remembered on the client: SecantusDB or not


def _transactions(client) -> bool | None:
    if not isinstance(client, MongoClient):
        return False  # mongomock
    return client.__dict__.get(_FLAG)


def insert_all_or_nothing(collection: Collection, rows: list[dict]) -> list:
    """Insert ``rows`` in order; returns their ids.  In one transaction when the
    database supports them."""
    client = collection.database.client
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
        flush = "secantusVersion" in client.admin.command("buildInfo")
        client.__dict__[_FLUSH] = flush
    return flush
