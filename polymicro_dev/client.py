"""The one HTTP client of the dev tooling: a keep-alive ``http.client`` connection.

Why the standard library and not ``requests`` (in the environment through
Schemathesis): the benchmark's clients share two cores with the server they measure,
so every microsecond of client CPU is taken from the server.  Measured 2026-11-29 on
this 2-core machine (gunicorn 2x4 serving bench/hello.py, 2,000 keep-alive GETs from
one thread, three rounds, load average 5): http.client 137-151 µs of client CPU per
request (558-723 µs wall), ``requests.Session`` 640-676 µs (1,263-1,447 µs wall),
4.5 times as much.  The tools need nothing that requests adds (redirects, cookies,
proxies, TLS): JSON in and out on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any

from polymicro_dev.processes import HOST, DevError

# What a keep-alive connection that the server closed while it was idle raises on the
# next request (before any byte of an answer): the request is sent again, once.
IDLE_CLOSED = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
# Every way a request can fail on the wire.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


@dataclass
class Response:
    status: int
    body: bytes
    headers: http.client.HTTPMessage

    def json(self) -> Any:
        """The body decoded as JSON (None when empty)."""
        return json.loads(self.body) if self.body else None

    def data(self) -> Any:
        """The body decoded as JSON where it is JSON, else the raw bytes."""
        try:
            return self.json()
        except ValueError:
            return self.body


def encode(payload: Any) -> bytes | None:
    """A request body: bytes as they are, anything else as compact JSON."""
    if payload is None or isinstance(payload, bytes):
        return payload
    return json.dumps(payload, separators=(",", ":")).encode()


class HttpClient:
    """One keep-alive connection to ``host:port`` (127.0.0.1), JSON in and out.

    gunicorn closes a keep-alive connection after a few idle seconds; a request that
    finds its kept-alive connection closed that way is sent again once, on a new
    connection, and counted in ``retries`` (a write re-sent so could in theory be stored
    twice).  On a new connection nothing is re-sent."""

    def __init__(
        self, port: int, timeout: float = 30.0, host: str = HOST, headers: dict | None = None
    ) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.headers = dict(headers or {})  # sent with every request (credentials)
        self.retries = 0

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def request(
        self, method: str, path: str, payload: Any = None, headers: dict | None = None
    ) -> Response:
        """Send ``payload`` (JSON-encoded unless already bytes); raises OSError or
        HTTPException when the exchange fails."""
        body = encode(payload)
        sent = {"Content-Type": "application/json"} if body is not None else {}
        sent.update(self.headers)
        sent.update(headers or {})
        while True:
            reused = self.conn.sock is not None  # kept alive from an earlier request
            try:
                self.conn.request(method, path, body=body, headers=sent)
                response = self.conn.getresponse()
                return Response(response.status, response.read(), response.headers)
            except IDLE_CLOSED:
                self.conn.close()  # the next request opens a new connection
                if not reused:
                    raise
                self.retries += 1

    def call(self, method: str, path: str, payload: Any = None, expect: int = 200) -> Any:
        """The decoded JSON answer; DevError unless the status is ``expect``."""
        response = self.request(method, path, payload)
        if response.status != expect:
            raise DevError(
                f"{method} {path} answered {response.status} (wanted {expect}): "
                f"{response.body[:500]!r}"
            )
        return response.json()


def request_once(
    port: int,
    method: str,
    path: str,
    payload: Any = None,
    timeout: float = 30.0,
    headers: dict | None = None,
) -> tuple[int, Any]:
    """One request on a connection of its own: (status, decoded JSON or raw bytes).
    A failed exchange is status 0 with the exception as the body."""
    with HttpClient(port, timeout=timeout) as client:
        try:
            response = client.request(method, path, payload, headers)
        except TRANSPORT_ERRORS as exc:
            return 0, exc
    return response.status, response.data()
