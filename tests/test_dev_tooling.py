"""The dev tooling: the test suite's database guard and polymicro_dev, the launcher that
bench/, scripts/, the fixtures and make run/dev share (process group, HTTP client)."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mongoengine
import pymongo
import pytest

from polymicro import create_app
from polymicro.config import TestingConfig
from polymicro.extensions import close_db
from polymicro_dev import DevError, HttpClient, Processes, free_port, request_once, serve
from polymicro_dev import processes as processes_module
from tests.conftest import (
    NotATestDatabase,
    _empty_database,
    database_name,
    make_config,
    require_test_database,
)

ROOT = processes_module.ROOT

# --- the suite empties only databases whose name ends in _test -----------------------------


@pytest.mark.parametrize(
    ("uri", "name"),
    [
        ("mongodb://127.0.0.1:27017/polymicro_test", "polymicro_test"),
        ("mongodb://user:secret@db1:1,db2:2/app_test?replicaSet=rs&w=majority", "app_test"),
        ("mongodb+srv://cluster0.example.net/orders_test?retryWrites=true", "orders_test"),
    ],
)
def test_guard_accepts_a_database_named_like_a_test_one(uri, name):
    assert require_test_database(database_name(uri)) == name


@pytest.mark.parametrize(
    "uri",
    [
        "mongodb://127.0.0.1:27017/polymicro",  # the production default's name
        "mongodb://user:secret@db1:27017/polymicro?authSource=admin",
        "mongodb://127.0.0.1:27017",  # no name: the driver's default database
        "mongodb://127.0.0.1:27017/",
        "mongodb://127.0.0.1:27017/test",
        "mongodb://127.0.0.1:27017/polymicro_test_cli",
        "mongodb://127.0.0.1:27017/polymicro_testing",
    ],
)
def test_guard_refuses_any_other_database_without_showing_credentials(uri):
    with pytest.raises(NotATestDatabase, match="must end in '_test'") as refused:
        require_test_database(database_name(uri))
    assert "secret" not in str(refused.value)


def test_emptying_a_database_not_named_like_a_test_one_deletes_nothing():
    app = create_app(make_config(MONGODB_URI="mongodb://127.0.0.1/polymicro"))  # mongomock
    try:
        with app.app_context():
            mongoengine.get_db()["projects"].insert_one({"name": "real data"})
            with pytest.raises(NotATestDatabase):
                _empty_database()
            assert mongoengine.get_db()["projects"].count_documents({}) == 1
    finally:
        close_db()


def test_the_app_fixture_gives_an_empty_database(client):
    # Also the test the run below would reach if the guard let it through: its fixture
    # empties the database.
    assert client.get("/api/projects").json == []


def test_a_run_pointed_at_real_data_stops_before_any_test(mongodb_uri):
    """POLYMICRO_TEST_MONGODB_URI naming a database without ``_test`` stops a pytest run
    before the first test; on a real server, its documents are all still there."""
    if mongodb_uri:  # a real server: a database of "real data" the run must not touch
        real_uri = mongodb_uri.rsplit("/", 1)[0] + "/polymicro_guard_probe"
    else:  # nothing listens there: without the guard, the run would fail differently
        real_uri = f"mongodb://127.0.0.1:{free_port()}/polymicro"
    real = pymongo.MongoClient(real_uri, serverSelectionTimeoutMS=5000) if mongodb_uri else None
    if real is not None:
        real.get_default_database()["projects"].insert_one({"name": "production"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYMICRO_TEST_")}
    env["POLYMICRO_TEST_MONGODB_URI"] = real_uri
    try:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/test_dev_tooling.py::test_the_app_fixture_gives_an_empty_database",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        output = run.stdout + run.stderr
        assert run.returncode == pytest.ExitCode.USAGE_ERROR, output
        assert "POLYMICRO_TEST_MONGODB_URI: refusing to use the database" in output
        assert "passed" not in output
        if real is not None:
            assert real.get_default_database()["projects"].count_documents({}) == 1
    finally:
        if real is not None:
            real.drop_database("polymicro_guard_probe")
            real.close()


# --- one way to make a testing config ------------------------------------------------------


def test_make_config_ignores_the_environment_and_applies_overrides(monkeypatch):
    monkeypatch.setenv("POLYMICRO_CACHE_DEFAULT_TIMEOUT", "7")
    monkeypatch.setenv("POLYMICRO_RATELIMIT_ENABLED", "true")
    app = create_app(make_config(RATELIMIT_ENABLED=True, LOG_LEVEL="ERROR"))
    try:
        assert app.config["CACHE_DEFAULT_TIMEOUT"] == TestingConfig.CACHE_DEFAULT_TIMEOUT
        assert app.config["RATELIMIT_ENABLED"] is True
        assert app.config["LOG_LEVEL"] == "ERROR"
        assert app.config["MONGODB_MOCK"] is True
    finally:
        close_db()


def test_make_config_puts_the_app_on_the_given_servers():
    config = make_config("mongodb://127.0.0.1:1/x_test", "redis://127.0.0.1:1/3")
    assert config["MONGODB_URI"] == "mongodb://127.0.0.1:1/x_test"
    assert config["MONGODB_MOCK"] is False
    assert config["REDIS_URL"] == "redis://127.0.0.1:1/3"


# --- polymicro_dev: the process group ------------------------------------------------------

# A process that ignores SIGTERM and starts a child of its own that does too.
STUBBORN = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "child = subprocess.Popen([sys.executable, '-c', "
    "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_process_group_ends_a_server_and_its_children(tmp_path, monkeypatch):
    monkeypatch.setattr(processes_module, "STOP_GRACE_S", 0.5)  # then SIGKILL
    log = tmp_path / "stubborn.log"
    stopped = []
    with Processes() as procs:
        procs.on_stop(lambda: stopped.append(procs.servers))
        server = procs.start("stubborn", [sys.executable, "-c", STUBBORN], 0, "-", log)
        processes_module.wait_until(lambda: log.read_text().strip(), 30, "the child's pid")
        child = int(log.read_text())
        assert _alive(server.proc.pid)
        assert _alive(child)
    assert server.proc.returncode is not None
    # SIGKILL is delivered at once; the child's exit completes a moment later.
    processes_module.wait_until(lambda: not _alive(child), 10, "the child to be gone")
    assert stopped == [[]]  # callbacks run after every server is stopped


def test_a_server_that_exits_during_start_up_is_reported_with_its_log(tmp_path):
    script = "print('cannot open the storage'); raise SystemExit(3)"
    with Processes() as procs:
        server = procs.start("db", [sys.executable, "-c", script], free_port(), "-", tmp_path / "l")
        with pytest.raises(DevError, match=r"exited with code 3(.|\n)*cannot open the storage"):
            procs.wait_for_port(server, timeout=30)


def test_free_port_from_skips_a_busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert processes_module.free_port_from(port) != port


# --- polymicro_dev: the HTTP client --------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers {"n": <request number>} with keep-alive, then closes the connection
    without saying so (as gunicorn does with an idle keep-alive connection)."""

    protocol_version = "HTTP/1.1"
    hits: list[str] = []  # one list per test, set by the fixture

    def do_POST(self):  # the name http.server calls
        length = int(self.headers["Content-Length"])
        self.hits.append(self.rfile.read(length).decode())
        body = f'{{"n": {len(self.hits)}}}'.encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def closing_server():
    _Handler.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], _Handler.hits
    server.shutdown()
    server.server_close()


def test_the_client_resends_once_when_a_kept_alive_connection_was_closed(closing_server):
    port, hits = closing_server
    with HttpClient(port) as client:
        assert client.call("POST", "/", {"a": 1}, expect=201) == {"n": 1}
        assert client.call("POST", "/", {"a": 2}, expect=201) == {"n": 2}
        assert client.retries == 1
    assert hits == ['{"a":1}', '{"a":2}']


def test_the_client_reports_an_unexpected_status(closing_server):
    port, _ = closing_server
    with HttpClient(port) as client, pytest.raises(DevError, match=r"answered 201 \(wanted 200\)"):
        client.call("POST", "/", {"a": 1})


def test_a_one_off_request_is_never_sent_twice(closing_server):
    port, hits = closing_server
    assert request_once(port, "POST", "/", {"a": 1}) == (201, {"n": 1})
    status, error = request_once(free_port(), "GET", "/")
    assert status == 0
    assert isinstance(error, ConnectionRefusedError)
    assert hits == ['{"a":1}']


# --- make run / make dev: one server per storage directory ----------------------------------


def _sleeper(tag: str) -> subprocess.Popen:
    """A process whose command line carries ``tag`` (what the pid-file check reads)."""
    code = "import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, tag])  # noqa: S603
    # Until it has exec'd, its command line is still the forking pytest's (CI once read
    # it in that instant, under load): wait for the tag to show.
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    for _ in range(500):
        if tag.encode() in cmdline.read_bytes():
            return proc
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"the sleeper never showed {tag!r} in its command line")


def _finished_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_a_second_run_is_refused_while_the_first_uses_the_storage(tmp_path, monkeypatch):
    monkeypatch.setattr(serve, "PID_FILE", tmp_path / "secantus.pid")
    owner = _sleeper("polymicro_dev.serve")
    try:
        serve.PID_FILE.write_text(f"{owner.pid} {owner.pid}\n")
        with pytest.raises(DevError, match=f"pid {owner.pid}"):
            serve._claim_storage()
        assert serve.PID_FILE.exists()
    finally:
        owner.kill()
        owner.wait()


def test_a_server_left_by_a_dead_run_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(serve, "PID_FILE", tmp_path / "secantus.pid")
    stale = _sleeper("secantusd-py")
    try:
        serve.PID_FILE.write_text(f"{stale.pid} {_finished_pid()}\n")  # its owner is gone
        serve._claim_storage()
        assert stale.wait(timeout=30) == -15  # SIGTERM
        assert not serve.PID_FILE.exists()
    finally:
        stale.kill()
        stale.wait()


# --- every tool of bench/ and scripts/ still imports and parses its options ----------------

TOOLS = sorted(
    str(path.relative_to(ROOT))
    for folder in ("bench", "scripts")
    for path in (ROOT / folder).glob("*.py")
    if 'if __name__ == "__main__":' in path.read_text()
)


def test_the_tools_are_found():
    assert {"bench/run.py", "bench/mixed.py", "bench/ingest.py", "bench/ingest_curve.py"} <= set(
        TOOLS
    )
    assert {"bench/post_cost.py", "bench/soak.py", "scripts/fuzz.py"} <= set(TOOLS)


def _run_tool(tool: str, *argv: str) -> subprocess.CompletedProcess:
    """``python <tool> <argv>`` from the checkout, as ``make bench`` runs it."""
    return subprocess.run(  # noqa: S603 (our own scripts)
        [sys.executable, tool, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("tool", TOOLS)
def test_a_tool_imports_and_parses_help(tool):
    """Run as ``make bench`` runs it (from the checkout, its own folder on sys.path): an
    import broken by a moved or deleted module fails here, not on the next benchmark."""
    done = _run_tool(tool, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:"), done.stdout[:500]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tree", "."], "--tree goes with --only"),
        (["--only", "points", "--tree", "tests"], "has no wsgi.py"),
        (["--only", "ingest", "--sweep", "1x1"], "--only and --sweep do not go together"),
        (["--only", "everything"], "invalid choice"),
    ],
)
def test_bench_only_and_tree_options_are_checked_before_anything_starts(argv, message):
    """bench/run.py --only (ingest steps without the reads) and --tree (another checkout
    measured by this bench) refuse what they cannot do, before any server starts."""
    done = _run_tool("bench/run.py", *argv)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr
