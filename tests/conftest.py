"""Fixtures in the flaskr style: ``app`` and ``client``, a clean database per test.

The database behind the suite is chosen by the environment:

- default: an in-process mongomock client, fresh for every test;
- ``POLYMICRO_TEST_DB=secantus``: a SecantusDB server (MongoDB wire protocol over TCP)
  started once for the session as a separate process (polymicro_dev, the dev tooling's
  launcher); every collection is emptied after each test (indexes stay, so uniqueness
  is enforced by the real server);
- ``POLYMICRO_TEST_MONGODB_URI=mongodb://…/NAME_test``: an existing server, whose
  database is emptied the same way.  Its name must end in ``_test``: pointed at any
  other database the run stops before the first test (see ``require_test_database``).

``POLYMICRO_TEST_REDIS_URL=redis://…/15`` puts the cache on a real Redis (the database
is flushed before each test); otherwise the cache is an in-process SimpleCache.
Under pytest-xdist (``-n 2``) each worker has its own SecantusDB (the session fixture
runs per worker) and its own Redis database (:func:`worker_redis_url`).
If a requested server cannot be started or reached, the run fails: it never skips.

A test that needs an app of its own builds its settings with ``make_config``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import mongoengine
import pytest

from polymicro import create_app
from polymicro.common import caching
from polymicro.config import TestingConfig
from polymicro.extensions import cache, close_db
from polymicro_dev import Processes, handle_signals, start_secantus
from polymicro_dev import free_port as free_port  # tests import it from here

TEST_DB = os.environ.get("POLYMICRO_TEST_DB", "mongomock").lower()
TEST_MONGODB_URI = os.environ.get("POLYMICRO_TEST_MONGODB_URI", "")


def worker_redis_url(url: str, worker: str) -> str:
    """The Redis URL for one pytest-xdist worker (``gw0``, ``gw1``…; "" outside xdist):
    the database number of ``url`` less the worker's index (``/15`` → 15, 14, …), since
    every test flushes its cache database and two workers must not share one."""
    if not url or not worker:
        return url
    index = int(worker.removeprefix("gw"))
    parts = urlsplit(url)
    base = int(parts.path.lstrip("/") or 0)
    if base - index < 0:
        raise pytest.UsageError(
            f"POLYMICRO_TEST_REDIS_URL {url}: worker {worker} would need Redis database "
            f"{base - index}; name a higher database or run fewer workers"
        )
    return parts._replace(path=f"/{base - index}").geturl()


TEST_REDIS_URL = worker_redis_url(
    os.environ.get("POLYMICRO_TEST_REDIS_URL", ""), os.environ.get("PYTEST_XDIST_WORKER", "")
)
USES_REAL_DB = bool(TEST_MONGODB_URI) or TEST_DB == "secantus"
TEST_DATABASE_SUFFIX = "_test"


# --- never empty a database that is not a test database ----------------------------------


class NotATestDatabase(RuntimeError):
    """The suite was pointed at a database whose name does not end in ``_test``."""


def database_name(uri: str) -> str:
    """The database a MongoDB URI names ("" when it names none); read from the text
    alone, without resolving or connecting to anything."""
    return unquote(urlsplit(uri).path.lstrip("/"))


def require_test_database(name: str) -> str:
    """``name``, when the suite may empty that database: the name ends in ``_test``.
    Otherwise NotATestDatabase, before anything is deleted (the suite empties every
    collection of its database after each test)."""
    if not name.endswith(TEST_DATABASE_SUFFIX):
        raise NotATestDatabase(
            f"refusing to use the database {name or '(none named)'!r} for the tests: they "
            f"delete every document of their database, so its name must end in "
            f"{TEST_DATABASE_SUFFIX!r} (e.g. mongodb://127.0.0.1:27017/polymicro_test)"
        )
    return name


def pytest_configure(config):
    """Check the requested servers before any test runs (a UsageError stops the run)."""
    if TEST_DB not in ("mongomock", "secantus"):
        raise pytest.UsageError(f"POLYMICRO_TEST_DB must be mongomock or secantus, not {TEST_DB!r}")
    if TEST_MONGODB_URI:
        try:
            require_test_database(database_name(TEST_MONGODB_URI))
        except NotATestDatabase as exc:
            raise pytest.UsageError(f"POLYMICRO_TEST_MONGODB_URI: {exc}") from None


# --- servers ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mongodb_uri():
    """The URI of the real server for this session, or None on mongomock."""
    if TEST_MONGODB_URI:
        yield TEST_MONGODB_URI
        return
    if TEST_DB == "mongomock":
        yield None
        return
    # SIGTERM/SIGHUP unwind like Ctrl-C, through this fixture's teardown.
    handle_signals()
    with (
        tempfile.TemporaryDirectory(prefix="polymicro-secantus-") as storage,
        Processes() as procs,
    ):
        yield start_secantus(
            procs, Path(storage) / "db", Path(storage), database="polymicro_test"
        ).uri


@pytest.fixture(scope="module")
def wire_uri(mongodb_uri):
    """A wire-protocol database for tests that need one on every run (concurrency,
    pymongo spans): the session's real server, else a SecantusDB of the module's own."""
    if mongodb_uri:
        yield mongodb_uri
        return
    with (
        tempfile.TemporaryDirectory(prefix="polymicro-module-secantus-") as storage,
        Processes() as procs,
    ):
        yield start_secantus(
            procs, Path(storage) / "db", Path(storage), database="polymicro_module_test"
        ).uri


@pytest.fixture(scope="session")
def redis_url():
    if not TEST_REDIS_URL:
        return None
    import redis

    redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=2).ping()  # fail loudly, never skip
    return TEST_REDIS_URL


# --- the app ------------------------------------------------------------------------------

INSTANCE_DIR = tempfile.mkdtemp(prefix="polymicro-instance-")  # never the repo's instance/


def make_config(mongodb_uri: str | None = None, redis_url: str | None = None, **overrides) -> dict:
    """The one way to build a test app's settings: TestingConfig's values (never the
    environment's ``POLYMICRO_*``), a private instance folder, the real database and
    Redis when given (the ``mongodb_uri`` and ``redis_url`` fixtures, or any URI), then
    ``overrides``.  ``create_app(make_config(mongodb_uri, redis_url, RATELIMIT_ENABLED=True))``."""
    config = {key: getattr(TestingConfig, key) for key in dir(TestingConfig) if key.isupper()}
    config["INSTANCE_PATH"] = INSTANCE_DIR
    if mongodb_uri:
        config.update(MONGODB_URI=mongodb_uri, MONGODB_MOCK=False, MONGODB_TIMEOUT_MS=5000)
    if redis_url:
        config.update(REDIS_URL=redis_url)
    config.update(overrides)
    return config


def _empty_database() -> None:
    db = mongoengine.get_db()
    require_test_database(db.name)  # the database the app really uses
    for name in db.list_collection_names():
        if not name.startswith("system."):
            db[name].delete_many({})


@pytest.fixture
def app(mongodb_uri, redis_url):
    app = create_app(make_config(mongodb_uri, redis_url))
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
