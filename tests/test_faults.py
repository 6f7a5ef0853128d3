"""Regression tests for what the fault scenarios (scripts/faults.py, ``make faults``)
found.  The scenarios themselves need real processes to stop and kill; these tests pin
the fixes in place without them."""

from __future__ import annotations

import contextlib
import types

import mongoengine
import pytest
from pymongo.errors import BulkWriteError, OperationFailure

from polymicro import create_app
from polymicro.common import atomic
from polymicro.common.atomic import insert_all_or_nothing
from polymicro.extensions import DB_ALIAS, close_db
from tests.conftest import USES_REAL_DB, make_config


def _client_for(uri: str):
    create_app(make_config(uri))  # connects lazily: no server is needed to inspect the client
    try:
        return mongoengine.get_connection(DB_ALIAS).write_concern.document
    finally:
        close_db()


def test_faults_writes_wait_for_the_journal():
    # Found: with the default write concern (w:1, no journal) a SecantusDB killed with
    # SIGKILL lost 30 of 100 acknowledged CPU points; with j:true none.
    assert _client_for("mongodb://127.0.0.1:1/polymicro") == {"j": True}


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("mongodb://127.0.0.1:1/polymicro?w=majority", {"w": "majority"}),
        ("mongodb://127.0.0.1:1/polymicro?journal=false", {"j": False}),
    ],
)
def test_faults_a_write_concern_in_the_uri_is_kept(uri, expected):
    assert _client_for(uri) == expected


# --- a batch is stored completely or not at all ----------------------------------------


def test_faults_a_failed_bulk_insert_leaves_nothing_where_transactions_exist(ctx):
    # Found: a worker or a database killed during POST /api/logs/batch left 276 of its
    # 1000 entries stored.  Here a row fails in the middle of the insert instead (a
    # duplicate _id): inside a transaction nothing of the batch stays; mongomock has no
    # transactions and keeps what came before the failing row, as insert_many does.
    collection = mongoengine.get_db()["atomic_probe"]
    collection.insert_one({"_id": "taken"})
    rows = [{"_id": "first"}, {"_id": "taken"}, {"_id": "last"}]
    with pytest.raises(BulkWriteError):
        insert_all_or_nothing(collection, rows)
    stored = sorted(doc["_id"] for doc in collection.find({}))
    assert stored == (["taken"] if USES_REAL_DB else ["first", "taken"])
    assert insert_all_or_nothing(collection, [{"_id": "a"}, {"_id": "b"}]) == ["a", "b"]


class _Session:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def start_transaction(self):
        return contextlib.nullcontext()


class _StandaloneClient:
    """A client of a server without transactions (a standalone mongod)."""

    def start_session(self):
        return _Session()


class _Collection:
    def __init__(self):
        self.database = types.SimpleNamespace(client=_StandaloneClient())
        self.stored: list[dict] = []
        self.transactions_tried = 0

    def insert_many(self, rows, ordered=True, session=None):
        if session is not None:
            self.transactions_tried += 1
            raise OperationFailure(
                "Transaction numbers are only allowed on a replica set member or mongos", 20
            )
        self.stored += rows
        return types.SimpleNamespace(inserted_ids=[row["_id"] for row in rows])


def test_faults_without_transactions_the_insert_falls_back_once(monkeypatch, caplog):
    monkeypatch.setattr(atomic, "MongoClient", _StandaloneClient)
    collection = _Collection()
    assert insert_all_or_nothing(collection, [{"_id": 1}, {"_id": 2}]) == [1, 2]
    assert insert_all_or_nothing(collection, [{"_id": 3}]) == [3]
    assert collection.transactions_tried == 1  # remembered for the client
    assert [row["_id"] for row in collection.stored] == [1, 2, 3]
    assert "no transactions" in caplog.text


class _Admin:
    def __init__(self, build_info: dict):
        self.build_info = build_info
        self.commands: list[str] = []

    def command(self, name: str):
        self.commands.append(name)
        return self.build_info if name == "buildInfo" else {"ok": 1}


class _TransactionalClient:
    def __init__(self, build_info: dict):
        self.admin = _Admin(build_info)

    def start_session(self):
        return _Session()


class _TransactionalCollection:
    def __init__(self, build_info: dict):
        self.database = types.SimpleNamespace(client=_TransactionalClient(build_info))

    def insert_many(self, rows, ordered=True, session=None):
        assert session is not None
        return types.SimpleNamespace(inserted_ids=[row["_id"] for row in rows])


@pytest.mark.parametrize(
    ("build_info", "commands"),
    [
        ({"version": "8.2.11", "secantusVersion": "0.7.0b3"}, ["buildInfo", "fsync", "fsync"]),
        ({"version": "7.0.12"}, ["buildInfo"]),
    ],
)
def test_faults_secantus_commits_are_flushed_to_disk(monkeypatch, build_info, commands):
    # Found: SecantusDB acknowledged committed transactions (j:true) before they were in
    # its journal; killed right after a series of batches it lost up to 38% of them.
    monkeypatch.setattr(atomic, "MongoClient", _TransactionalClient)
    collection = _TransactionalCollection(build_info)
    assert insert_all_or_nothing(collection, [{"_id": 1}]) == [1]
    assert insert_all_or_nothing(collection, [{"_id": 2}]) == [2]
    assert collection.database.client.admin.commands == commands
