"""Request ids, structured logs and Prometheus metrics (polymicro/observability.py).

Log lines are read from stderr (``capsys``): the polymicro handler writes to whatever
``sys.stderr`` is when a record is emitted.  Metric values are process-wide, so every
metric test compares a scrape after the requests with one before.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask.logging import default_handler
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

import polymicro
from polymicro import create_app, observability
from polymicro.extensions import close_db
from polymicro.observability import hooks
from tests.conftest import free_port, make_config
from tests.factories import make_service

REPO = Path(__file__).resolve().parent.parent
HEX_ID = re.compile(r"[0-9a-f]{32}")
RFC3339_MS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
LIVE = "/api/health/live"
REQUESTS = "polymicro_http_requests_total"
LATENCY = "polymicro_http_request_duration_seconds"
INGESTED = "polymicro_ingested_items_total"


def stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def use_format(app, log_format: str) -> None:
    app.config["LOG_FORMAT"] = log_format
    observability.configure_logging(app)


# --- request ids ------------------------------------------------------------------------


def test_a_request_without_an_id_gets_a_new_one(client):
    first = client.get(LIVE).headers["X-Request-ID"]
    second = client.get(LIVE).headers["X-Request-ID"]
    assert HEX_ID.fullmatch(first)
    assert HEX_ID.fullmatch(second)
    assert first != second


def test_forked_workers_make_different_request_ids():
    """gunicorn forks its workers from one process: each must draw its own ids."""
    ids = []
    for _ in range(2):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one new id, then out at once
            os.write(write, hooks.request_id_from(None).encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        ids.append(os.read(read, 64).decode())
        os.close(read)
    assert all(HEX_ID.fullmatch(value) for value in ids)
    assert ids[0] != ids[1]
    assert hooks.request_id_from(None) not in ids


@pytest.mark.parametrize("request_id", ["abc", "A.b_c-9", "x" * 128, "0", "trace.42_x-Y"])
def test_a_valid_request_id_is_echoed(client, request_id):
    response = client.get(LIVE, headers={"X-Request-ID": request_id})
    assert response.headers["X-Request-ID"] == request_id


@pytest.mark.parametrize(
    "request_id", ["", "x" * 129, "has space", "semi;colon", "slash/y", "ünï", "a\tb", "{}"]
)
def test_an_invalid_request_id_is_replaced(client, request_id):
    response = client.get(LIVE, headers={"X-Request-ID": request_id})
    assert HEX_ID.fullmatch(response.headers["X-Request-ID"])


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("get", "/api/nothing-here", {}, 404),  # no route
        ("post", "/api/projects", {"data": "x", "content_type": "text/plain"}, 415),  # guard
        ("get", "/api/projects/0123456789abcdef01234567", {}, 404),  # domain error
        ("post", "/api/projects", {"json": {"name": ""}}, 422),  # validation
    ],
)
def test_error_responses_carry_the_request_id(client, method, path, kwargs, status):
    response = getattr(client, method)(path, headers={"X-Request-ID": "err-1"}, **kwargs)
    assert response.status_code == status
    assert response.headers["X-Request-ID"] == "err-1"


def test_a_500_carries_the_request_id_and_logs_it_with_the_traceback(app, capsys):
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.route("/boom")
    def boom():
        raise RuntimeError("secret internal detail")

    use_format(app, "json")
    capsys.readouterr()
    response = app.test_client().get("/boom", headers={"X-Request-ID": "boom-1"})
    records = [json.loads(line) for line in stderr_lines(capsys)]

    assert response.status_code == 500
    assert response.headers["X-Request-ID"] == "boom-1"
    [error] = [r for r in records if r["level"] == "ERROR"]
    assert error["request_id"] == "boom-1"
    assert "RuntimeError: secret internal detail" in error["exc_info"]
    [access] = [r for r in records if r["logger"] == "polymicro.access"]
    assert (access["status"], access["request_id"]) == (500, "boom-1")


# --- logs -------------------------------------------------------------------------------


@pytest.fixture
def chatty_app(app):
    """The app with a route, a before_request and a teardown that all log."""

    @app.before_request
    def log_before():
        logging.getLogger("polymicro.test.hooks").info("before the view")

    @app.teardown_request
    def log_teardown(exc):
        logging.getLogger("polymicro.test.hooks").info("teardown")

    @app.route("/chatty")
    def chatty():
        logging.getLogger("polymicro.test.view").warning("in the view")
        logging.getLogger("somelibrary").warning("a library outside polymicro")
        return {"ok": True}

    return app


def test_every_log_line_of_a_request_carries_its_id(chatty_app, capsys):
    use_format(chatty_app, "json")
    client = chatty_app.test_client()
    capsys.readouterr()

    client.get("/chatty", headers={"X-Request-ID": "req-A"})
    during_a = [json.loads(line) for line in stderr_lines(capsys)]
    client.get("/chatty")
    during_b = [json.loads(line) for line in stderr_lines(capsys)]
    logging.getLogger("polymicro.test").warning("after every request")
    after = [json.loads(line) for line in stderr_lines(capsys)]

    messages = [r["message"] for r in during_a]
    assert "before the view" in messages
    assert "in the view" in messages
    assert "a library outside polymicro" in messages
    assert "teardown" in messages
    assert any(r["logger"] == "polymicro.access" for r in during_a)
    assert {r["request_id"] for r in during_a} == {"req-A"}
    ids_b = {r["request_id"] for r in during_b}
    assert len(ids_b) == 1
    assert HEX_ID.fullmatch(ids_b.pop())
    assert [r["request_id"] for r in after] == ["-"]


def test_text_lines_carry_the_request_id(chatty_app, capsys):
    use_format(chatty_app, "text")
    capsys.readouterr()
    chatty_app.test_client().get("/chatty", headers={"X-Request-ID": "txt-1"})
    lines = stderr_lines(capsys)

    assert len(lines) >= 5
    assert all("[txt-1]" in line for line in lines)
    assert any(" WARNING polymicro.test.view [txt-1]: in the view" in line for line in lines)


def test_json_lines_parse_and_have_the_fields(client, app, capsys):
    use_format(app, "json")
    capsys.readouterr()
    client.get("/api/projects/0123456789abcdef01234567", headers={"X-Request-ID": "json-1"})
    records = [json.loads(line) for line in stderr_lines(capsys)]  # every line parses

    assert records
    for record in records:
        assert {"time", "level", "logger", "message", "request_id"} <= set(record)
        assert list(record)[:5] == ["time", "level", "logger", "message", "request_id"]
        assert RFC3339_MS_UTC.fullmatch(record["time"])
        assert record["request_id"] == "json-1"
    [access] = [r for r in records if r["logger"] == "polymicro.access"]
    assert access["level"] == "INFO"
    assert access["method"] == "GET"
    assert access["path"] == "/api/projects/0123456789abcdef01234567"
    assert access["status"] == 404
    assert isinstance(access["duration_ms"], float)
    assert access["duration_ms"] >= 0
    assert access["message"].startswith("GET /api/projects/0123456789abcdef01234567 404 ")


def test_logging_is_configured_once_however_many_apps(app, capsys):
    for log_format in ("json", "text", "json"):
        use_format(app, log_format)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_polymicro", False)]
    capsys.readouterr()
    logging.getLogger("polymicro.test").warning("once")

    assert len(ours) == 1
    assert len(stderr_lines(capsys)) == 1


def test_many_apps_in_one_process_share_one_handler_and_write_each_line_once(capsys):
    handlers = []
    try:
        for log_format in ("text", "json", "json", "text"):
            app = create_app(make_config(LOG_FORMAT=log_format))
            app.logger.warning("from app %d", len(handlers))  # Flask's own logger
            handlers.append(app.extensions["polymicro.logging"])
            close_db()
        ours = [h for h in logging.getLogger().handlers if getattr(h, "_polymicro", False)]
        capsys.readouterr()
        app.logger.warning("once")
        logging.getLogger("somelibrary").warning("once too")
        lines = stderr_lines(capsys)
    finally:
        close_db()

    assert ours == [handlers[0]]
    assert all(handler is handlers[0] for handler in handlers)
    assert default_handler not in logging.getLogger("polymicro").handlers
    assert len(lines) == 2
    assert "WARNING polymicro [-]: once" in lines[0]  # the last app's format (text)


def test_each_app_configures_logging_once(monkeypatch):
    calls = []
    real = observability.configure_logging

    def counting(app):
        calls.append(app)
        return real(app)

    monkeypatch.setattr(polymicro, "configure_logging", counting)
    monkeypatch.setattr(observability, "configure_logging", counting)
    try:
        first = create_app(make_config())
        close_db()
        second = create_app(make_config())
    finally:
        close_db()

    assert calls == [first, second]


def test_log_level_applies_to_the_access_line(app, capsys):
    app.config["LOG_LEVEL"] = "WARNING"
    use_format(app, "json")
    try:
        capsys.readouterr()
        app.test_client().get(LIVE)
        assert stderr_lines(capsys) == []
    finally:
        app.config["LOG_LEVEL"] = "INFO"
        use_format(app, "text")


def test_an_unknown_log_format_is_refused_at_start():
    try:
        with pytest.raises(RuntimeError, match="POLYMICRO_LOG_FORMAT"):
            create_app(make_config(LOG_FORMAT="xml"))
    finally:
        close_db()


# --- metrics ----------------------------------------------------------------------------


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_are_served_in_the_prometheus_text_format(app):
    response = app.test_client().get("/metrics")  # no credentials needed
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    assert "# TYPE polymicro_http_requests_total counter" in response.get_data(as_text=True)


def test_requests_are_counted_by_route_template_method_and_status(client):
    ids = ["0123456789abcdef01234567", "89abcdef0123456789abcdef"]
    before = scrape(client)
    for _ in range(3):
        client.get(LIVE)
    for object_id in ids:
        client.get(f"/api/projects/{object_id}")
    client.get("/api/nothing-here")
    client.open("/api/health/live", method="BREW")  # 405, an invented method
    after = scrape(client)

    def delta(**labels) -> float:
        return value(after, REQUESTS, **labels) - value(before, REQUESTS, **labels)

    assert delta(endpoint=LIVE, method="GET", status="200") == 3
    item = "/api/projects/<objectid:project_id>"
    assert delta(endpoint=item, method="GET", status="404") == 2
    assert delta(endpoint="unmatched", method="GET", status="404") == 1
    assert delta(endpoint="unmatched", method="other", status="405") == 1
    labels = {label for name, label_set in after for label in label_set if name == REQUESTS}
    raw_paths = [lv for lv in labels if any(i in lv[1] for i in ids) or "nothing" in lv[1]]
    assert raw_paths == []
    assert ("method", "BREW") not in labels


def test_latency_is_a_histogram_per_route_method_and_status(client):
    before = scrape(client)
    for _ in range(4):
        client.get(LIVE)
    after = scrape(client)
    labels = {"endpoint": LIVE, "method": "GET", "status": "200"}

    def delta(name: str, **extra) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert delta(f"{LATENCY}_count") == 4
    assert delta(f"{LATENCY}_bucket", le="+Inf") == 4
    assert delta(f"{LATENCY}_bucket", le="10.0") == 4
    assert 0 < delta(f"{LATENCY}_sum") < 4 * 10
    buckets = {dict(ls).get("le") for name, ls in after if name == f"{LATENCY}_bucket"}
    assert {"0.005", "0.1", "1.0", "+Inf"} <= buckets


def test_record_ingest_moves_the_ingest_counters(client):
    before = scrape(client)
    observability.record_ingest("logs", 3)
    observability.record_ingest("cpu_points", 5)
    observability.record_ingest("logs", 0)  # nothing stored, nothing counted
    after = scrape(client)

    assert value(after, INGESTED, kind="logs") - value(before, INGESTED, kind="logs") == 3
    cpu = value(after, INGESTED, kind="cpu_points") - value(before, INGESTED, kind="cpu_points")
    assert cpu == 5


def test_posting_a_log_batch_counts_the_logs_stored(client, ctx):
    svc = make_service()
    entry = {"project_id": str(svc.project_id), "service_id": str(svc.id), "severity": "info"}
    batch = [{**entry, "message": f"line {i}"} for i in range(3)]
    before = scrape(client)
    assert client.post("/api/logs/batch", json=batch).status_code == 201
    assert client.post("/api/logs", json={**entry, "message": "one"}).status_code == 201
    after = scrape(client)

    assert value(after, INGESTED, kind="logs") - value(before, INGESTED, kind="logs") == 4


def test_posting_cpu_points_counts_the_points_stored(client, ctx):
    svc = make_service()
    body = {"project_id": str(svc.project_id), "service_name": svc.name}
    before = scrape(client)
    created = client.post("/api/metrics/cpu", json={**body, "data": [{"load": 1.0}]})
    assert created.status_code == 201, created.json
    points = [{"load": 2.0}, {"load": 3.0}]
    assert (
        client.post(f"/api/metrics/cpu/{created.json['id']}/data", json=points).status_code == 201
    )
    after = scrape(client)

    cpu = value(after, INGESTED, kind="cpu_points") - value(before, INGESTED, kind="cpu_points")
    assert cpu == 3


def test_metrics_can_be_switched_off():
    app = create_app(make_config(METRICS_ENABLED=False))
    try:
        client = app.test_client()
        before = observability.metrics().requests.labels(LIVE, "GET", "200")._value.get()
        response = client.get(LIVE)
        after = observability.metrics().requests.labels(LIVE, "GET", "200")._value.get()

        assert client.get("/metrics").status_code == 404
        assert response.headers["X-Request-ID"]  # request ids do not depend on metrics
        assert after == before
    finally:
        close_db()


# --- several processes under gunicorn ---------------------------------------------------


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - local http
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@contextmanager
def gunicorn(tmp_path: Path, **env_extra: str) -> Iterator[tuple[str, Path]]:
    """gunicorn with the repo's gunicorn.conf.py, 2 single-threaded workers, mongomock;
    yields (base url, log file) and stops it (SIGTERM to the master, which we started)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POLYMICRO_", "PROMETHEUS"))}
    env.update(
        POLYMICRO_MONGODB_MOCK="true",
        POLYMICRO_GUNICORN_WORKERS="2",
        POLYMICRO_GUNICORN_THREADS="1",
        POLYMICRO_LOG_LEVEL="WARNING",
        POLYMICRO_SECRET_KEY="gunicorn-test-secret-key-that-is-long-enough-for-hs256",
    )
    env.update(env_extra)
    log_path = tmp_path / "gunicorn.log"
    binary = str(Path(sys.executable).with_name("gunicorn"))
    argv = [binary, "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "wsgi:app"]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv
            argv, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if _get(base + LIVE)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield base, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _live_count(text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == REQUESTS and sample.labels.get("endpoint") == LIVE:
                total += sample.value
    return total


def _live_count_per_worker(directory: Path) -> dict[str, float]:
    counts = {}
    for path in directory.glob("counter_*.db"):
        metrics = MultiProcessCollector.merge([str(path)])
        counts[path.stem.split("_")[1]] = sum(
            s.value
            for m in metrics
            for s in m.samples
            if s.name == REQUESTS and s.labels.get("endpoint") == LIVE
        )
    return counts


def test_gunicorn_workers_metrics_are_summed_on_every_scrape(tmp_path):
    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"stale file of an earlier run")
    with gunicorn(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(directory)) as (base, _log):
        assert not (directory / "counter_999999.db").exists()  # emptied at start
        # The readiness wait's requests to this path (one, or more on a loaded machine).
        sent = _live_count(_get(base + "/metrics")[1])
        assert sent >= 1
        with ThreadPoolExecutor(8) as pool:
            # until both workers have answered some (the readiness wait saw one: on a
            # loaded machine the other may still be booting for a few seconds)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                statuses = list(pool.map(lambda _: _get(base + LIVE)[0], range(40)))
                assert set(statuses) == {200}
                sent += len(statuses)
                per_worker = _live_count_per_worker(directory)
                if len(per_worker) == 2 and all(per_worker.values()):
                    break
        assert len(per_worker) == 2, per_worker
        assert all(0 < count < sent for count in per_worker.values()), per_worker
        # Whichever worker answers the scrape, it reports both workers' requests.
        for _ in range(6):
            status, text = _get(base + "/metrics")
            assert status == 200
            assert _live_count(text) == sent
    assert directory.is_dir()  # a directory given by the operator is kept


def test_gunicorn_makes_and_removes_its_own_multiprocess_directory(tmp_path):
    with gunicorn(tmp_path) as (base, log_path):
        found = re.search(r"Prometheus multiprocess directory (\S+)", log_path.read_text())
        assert found, log_path.read_text()
        directory = Path(found.group(1))
        assert directory.is_dir()
        assert _get(base + "/metrics")[0] == 200
        assert list(directory.glob("counter_*.db"))
    assert not directory.exists()


def test_under_gunicorn_every_line_is_json_and_written_once(tmp_path):
    with gunicorn(tmp_path, POLYMICRO_LOG_FORMAT="json", POLYMICRO_LOG_LEVEL="INFO") as (
        base,
        log_path,
    ):
        ids = [f"once-{i}" for i in range(6)]
        for request_id in ids:
            headers = {"X-Request-ID": request_id}
            request = urllib.request.Request(base + LIVE, headers=headers)  # noqa: S310
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                assert response.status == 200
        deadline = time.monotonic() + 10
        while True:  # the workers write their lines as they answer; wait for the last one
            text = log_path.read_text()
            if all(f'"{request_id}"' in text for request_id in ids):
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.05)
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]

    for request_id in ids:
        lines = [r for r in records if r.get("request_id") == request_id]
        assert [r["logger"] for r in lines] == ["polymicro.access"], lines
    boots = [r for r in records if r["message"].startswith("Booting worker")]
    assert len(boots) == 2  # gunicorn's own lines: JSON too, once each
    assert len({r["message"] for r in boots}) == 2
    assert all(r["logger"] == "gunicorn.error" for r in boots)
