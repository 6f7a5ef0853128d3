"""Streams never starve the API: a real threaded server (werkzeug's, one thread per
connection, like gunicorn's gthread) holding every stream it may, and more asked for.

Real time here (a real server in threads): the streams poll every 50 ms and send a
keep-alive every 0.2 s, so a stream whose client left notices within a moment.
"""

from __future__ import annotations

import http.client
import threading
import time

import pytest
from werkzeug.serving import make_server

from polymicro.common import sse
from tests.conftest import token_for

CAP = 3
FAST_SECONDS = 1.0  # what "still answers fast" means on a shared 2-core machine


@pytest.fixture
def server(app):
    app.config.update(
        STREAMS_MAX=CAP,
        STREAM_POLL_MS=50,
        STREAM_KEEPALIVE_SECONDS=0.2,
        STREAM_MAX_SECONDS=30,
    )
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_port
    httpd.shutdown()
    thread.join(10)
    _wait_until(lambda: sse.slots(app).open == 0)  # streams end before the app goes


def _wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _open(port, path, token):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    return connection, connection.getresponse()


def _close(connection, response) -> None:
    response.close()  # the response holds the socket too
    connection.close()


def _timed(port, method, path, token, body=None) -> tuple[int, float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    start = time.perf_counter()
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    elapsed = time.perf_counter() - start
    connection.close()
    return response.status, elapsed


def test_more_streams_than_the_cap_leave_the_json_api_fast(app, server):
    token = token_for(app, "admin")
    streams = []
    for n in range(CAP):
        path = "/api/events/stream" if n % 2 else "/api/logs/stream"
        connection, response = _open(server, path, token)
        assert response.status == 200
        assert response.read1(64).startswith(b": stream open")
        streams.append((connection, response))
    refused = []
    for _ in range(2):
        connection, response = _open(server, "/api/events/stream", token)
        refused.append((response.status, response.getheader("Retry-After")))
        response.read()
        connection.close()
    assert refused == [(503, "10"), (503, "10")]

    timings = {
        "health": _timed(server, "GET", "/api/health", token),
        "projects": _timed(server, "GET", "/api/projects", token),
        "events": _timed(server, "GET", "/api/events?after=0", token),
        "create": _timed(server, "POST", "/api/projects", token, b'{"name": "while-streaming"}'),
    }
    assert {name: status for name, (status, _) in timings.items()} == {
        "health": 200,
        "projects": 200,
        "events": 200,
        "create": 201,
    }
    slowest = max(elapsed for _, elapsed in timings.values())
    assert slowest < FAST_SECONDS, timings
    print({name: f"{elapsed * 1000:.1f} ms" for name, (_, elapsed) in timings.items()})

    _close(*streams.pop())  # a client leaves: its slot comes back once the server notices
    _wait_until(lambda: sse.slots(app).open == CAP - 1)
    connection, response = _open(server, "/api/events/stream", token)
    assert response.status == 200
    streams.append((connection, response))
    for stream in streams:
        _close(*stream)
    _wait_until(lambda: sse.slots(app).open == 0)


def test_a_stream_ends_by_itself_after_its_life(app, server):
    app.config["STREAM_MAX_SECONDS"] = 0.5
    connection, response = _open(server, "/api/events/stream", token_for(app, "viewer"))
    start = time.monotonic()
    body = response.read()  # returns when the server ends the stream
    assert time.monotonic() - start < 5
    assert body.startswith(b": stream open")
    assert body.rstrip().endswith(b": stream life over; reconnect to resume")
    _close(connection, response)
    _wait_until(lambda: sse.slots(app).open == 0)
