"""Fixtures in the flaskr style: ``app`` and ``client``, a clean database per test.

The database behind the suite is chosen by the environment:

- default: an in-process mongomock client, fresh for every test;
- ``POLYMICRO_TEST_DB=secantus``: a SecantusDB server (MongoDB wire protocol over TCP)
  started once for the session as a separate process; every collection is emptied after
  each test (indexes stay, so uniqueness is enforced by the real server);
- ``POLYMICRO_TEST_MONGODB_URI=mongodb://…``: an existing server (its database
  ``polymicro_test_<pid>`` is dropped at the end).

``POLYMICRO_TEST_REDIS_URL=redis://…/15`` puts the cache on a real Redis (the database
is flushed before each test); otherwise the cache is an in-process SimpleCache.
If a requested server cannot be started or reached, the run fails: it never skips.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mongoengine
import pytest

from polymicro import create_app
from polymicro.common import caching
from polymicro.config import TestingConfig
from polymicro.extensions import cache, close_db

TEST_DB = os.environ.get("POLYMICRO_TEST_DB", "mongomock").lower()
TEST_MONGODB_URI = os.environ.get("POLYMICRO_TEST_MONGODB_URI", "")
TEST_REDIS_URL = os.environ.get("POLYMICRO_TEST_REDIS_URL", "")
USES_REAL_DB = bool(TEST_MONGODB_URI) or TEST_DB == "secantus"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for servers the tests start, or
    for an address where nothing answers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"SecantusDB exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"SecantusDB did not accept connections on port {port} in {timeout}s")


def _secantus_binary() -> str:
    found = shutil.which("secantusd-py") or str(Path(sys.executable).with_name("secantusd-py"))
    if not Path(found).exists():
        raise RuntimeError("secantusd-py not found: install the dev extras (pip install -e .[dev])")
    return found


@pytest.fixture(scope="session")
def mongodb_uri():
    """The URI of the real server for this session, or None on mongomock."""
    if TEST_MONGODB_URI:
        yield TEST_MONGODB_URI
        return
    if TEST_DB == "mongomock":
        yield None
        return
    if TEST_DB != "secantus":
        raise RuntimeError(f"POLYMICRO_TEST_DB must be mongomock or secantus, not {TEST_DB!r}")
    storage = tempfile.mkdtemp(prefix="polymicro-secantus-")
    port = free_port()
    log_path = Path(storage) / "secantus.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, our own dev dependency
            [
                _secantus_binary(),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--storage-path",
                str(Path(storage) / "db"),
                "--log-level",
                "WARNING",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(port, proc)
        yield f"mongodb://127.0.0.1:{port}/polymicro_test"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(storage, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url():
    if not TEST_REDIS_URL:
        return None
    import redis

    redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=2).ping()  # fail loudly, never skip
    return TEST_REDIS_URL


INSTANCE_DIR = tempfile.mkdtemp(prefix="polymicro-instance-")  # never the repo's instance/


def _test_config(mongodb_uri, redis_url) -> dict:
    config = {key: getattr(TestingConfig, key) for key in dir(TestingConfig) if key.isupper()}
    config["INSTANCE_PATH"] = INSTANCE_DIR
    if mongodb_uri:
        config.update(MONGODB_URI=mongodb_uri, MONGODB_MOCK=False, MONGODB_TIMEOUT_MS=5000)
    if redis_url:
        config.update(REDIS_URL=redis_url)
    return config


def _empty_database() -> None:
    db = mongoengine.get_db()
    for name in db.list_collection_names():
        if not name.startswith("system."):
            db[name].delete_many({})


@pytest.fixture
def app(mongodb_uri, redis_url):
    app = create_app(_test_config(mongodb_uri, redis_url))
    caching.reset_state()
    with app.app_context():
        cache.clear()
        if mongodb_uri:
            _empty_database()
    yield app
    if mongodb_uri:
        with app.app_context():
            _empty_database()
    close_db()


def token_for(app, role: str = "admin", user_id: str | None = None) -> str:
    """An access token with ``role`` (claims only: no user document is needed for the
    role checks; the auth tests log real users in)."""
    from bson import ObjectId
    from flask_jwt_extended import create_access_token

    with app.app_context():
        return create_access_token(
            identity=user_id or str(ObjectId()),
            additional_claims={"role": role, "username": f"test-{role}"},
        )


def client_as(app, role: str = "admin"):
    """A test client that sends a ``role`` token with every request."""
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token_for(app, role)}"
    return test_client


@pytest.fixture
def client(app):
    """A client authenticated as an admin (auth is on, as in production)."""
    return client_as(app, "admin")


@pytest.fixture
def anon_client(app):
    """A client without credentials."""
    return app.test_client()


@pytest.fixture
def ctx(app):
    """An app context, for service-layer tests."""
    with app.app_context():
        yield app
