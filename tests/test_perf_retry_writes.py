"""POLYMICRO_MONGODB_RETRY_WRITES: retryable writes off on SecantusDB (auto), kept elsewhere.

create_app does no I/O; with ``auto`` the question is asked when the client is first
created.  On the wire run the session's SecantusDB answers it, and a command listener
shows that inserts no longer carry a ``txnNumber``.
"""

from __future__ import annotations

import logging

import mongoengine
import pytest
from pymongo import MongoClient, monitoring

from polymicro import create_app
from polymicro.config import TestingConfig
from polymicro.extensions import DB_ALIAS, close_db

UNREACHABLE = "mongodb://127.0.0.1:1/polymicro"


def _app(uri, **settings):
    config = {key: getattr(TestingConfig, key) for key in dir(TestingConfig) if key.isupper()}
    config.update(MONGODB_URI=uri, MONGODB_MOCK=False, MONGODB_TIMEOUT_MS=300, **settings)
    return create_app(config)


@pytest.fixture
def disconnect():
    yield
    close_db()


@pytest.mark.usefixtures("disconnect")
@pytest.mark.parametrize(("setting", "expected"), [("true", True), ("false", False)])
def test_an_explicit_setting_is_passed_to_the_driver(setting, expected):
    _app(UNREACHABLE, MONGODB_RETRY_WRITES=setting)
    assert mongoengine.get_connection(DB_ALIAS).options.retry_writes is expected


@pytest.mark.usefixtures("disconnect")
@pytest.mark.parametrize("setting", ["auto", "true", "false"])
def test_a_retrywrites_option_in_the_uri_wins(setting):
    _app(UNREACHABLE + "?retryWrites=false", MONGODB_RETRY_WRITES=setting)
    assert mongoengine.get_connection(DB_ALIAS).options.retry_writes is False


def test_a_bad_setting_stops_start_up():
    with pytest.raises(RuntimeError, match="POLYMICRO_MONGODB_RETRY_WRITES"):
        _app(UNREACHABLE, MONGODB_RETRY_WRITES="sometimes")
    close_db()


@pytest.mark.usefixtures("disconnect")
def test_auto_creates_no_client_in_create_app():
    _app(UNREACHABLE)  # no server: creating the app must not wait for one
    assert DB_ALIAS not in mongoengine.connection._connections


@pytest.mark.usefixtures("disconnect")
def test_auto_keeps_retryable_writes_when_the_server_cannot_be_asked(caplog):
    _app(UNREACHABLE)
    with caplog.at_level(logging.DEBUG, logger="polymicro.extensions"):
        client = mongoengine.get_connection(DB_ALIAS)
    assert client.options.retry_writes is True
    assert "retryable writes stay on" in caplog.text


class _Inserts(monitoring.CommandListener):
    def __init__(self):
        self.commands = []

    def started(self, event):
        if event.command_name == "insert":
            self.commands.append(event.command)

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


@pytest.mark.usefixtures("disconnect")
def test_auto_decides_by_asking_the_server(mongodb_uri):
    if mongodb_uri is None:  # mongomock: the question is asked of nothing; see above
        _app(UNREACHABLE)
        assert mongoengine.get_connection(DB_ALIAS).options.retry_writes is True
        return
    with MongoClient(mongodb_uri, serverSelectionTimeoutMS=5000) as probe:
        secantus = "secantusVersion" in probe.admin.command("buildInfo")
    listener = _Inserts()
    monitoring.register(listener)
    try:
        app = _app(mongodb_uri)
        with app.app_context():
            client = mongoengine.get_connection(DB_ALIAS)
            assert client.options.retry_writes is not secantus
            client.get_default_database()["retry_probe"].insert_one({"x": 1})
            client.get_default_database()["retry_probe"].drop()
    finally:
        monitoring._LISTENERS.command_listeners.remove(listener)
    assert listener.commands
    assert all(("txnNumber" in command) is not secantus for command in listener.commands)
