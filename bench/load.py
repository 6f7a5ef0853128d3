"""Load generators for the benchmark: wrk for reads, stdlib HTTP clients for writes.

- :class:`HttpClient`: one keep-alive ``http.client`` connection, JSON in and out.
- :func:`run_parallel`: the same kind of request from N threads, one connection each,
  timed from a common start; every response must have the expected status.
- :func:`ensure_wrk` / :func:`run_wrk`: the Debian ``wrk`` binary and its parsed output.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from servers import HOST, BenchError

# --- HTTP ---------------------------------------------------------------------------------

RETRYABLE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class HttpClient:
    """A keep-alive connection to 127.0.0.1:port.

    gunicorn closes a keep-alive connection after a few idle seconds; a request that
    finds its connection closed that way is sent again once on a new connection.
    """

    def __init__(self, port: int, timeout: float = 300.0) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=timeout)

    def close(self) -> None:
        self.conn.close()

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except RETRYABLE:
                self.conn.close()  # the next request opens a new connection
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, payload: Any = None, expect: int = 200) -> Any:
        """Send ``payload`` (JSON-encoded unless already bytes); BenchError unless the
        status is ``expect``.  Returns the decoded JSON body (None when empty)."""
        if payload is None or isinstance(payload, bytes):
            body = payload
        else:
            body = json.dumps(payload).encode()
        status, data = self.request(method, path, body)
        if status != expect:
            raise BenchError(f"{method} {path} answered {status} (wanted {expect}): {data[:500]!r}")
        return json.loads(data) if data else None


def run_parallel(
    port: int,
    clients: int,
    jobs: Sequence[tuple[str, str, bytes]],
    expect: int,
    check: Callable[[Any], None] | None = None,
) -> float:
    """Send every ``(method, path, body)`` job with expected status ``expect``, spread
    round-robin over ``clients`` threads with one keep-alive connection each.

    Connections are opened before the clock starts; returns the wall time in seconds
    from the common start to the last response.  ``check`` may inspect each decoded
    response (raise BenchError to fail the run).
    """
    clients = max(1, min(clients, len(jobs)))
    shares = [jobs[i::clients] for i in range(clients)]
    connections = [HttpClient(port) for _ in range(clients)]
    for conn in connections:
        conn.conn.connect()
    start_line = threading.Barrier(clients + 1)
    failures: list[BaseException] = []

    def worker(conn: HttpClient, share: Sequence[tuple[str, str, bytes]]) -> None:
        start_line.wait()
        try:
            for method, path, body in share:
                result = conn.call(method, path, body, expect=expect)
                if check is not None:
                    check(result)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [
        threading.Thread(target=worker, args=(conn, share), daemon=True)
        for conn, share in zip(connections, shares, strict=True)
    ]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for conn in connections:
        conn.close()
    if failures:
        exc = failures[0]
        raise exc if isinstance(exc, BenchError) else BenchError(f"request failed: {exc!r}")
    return elapsed


# --- wrk ----------------------------------------------------------------------------------

TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}  # → milliseconds
RE_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
RE_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(\w+),", re.M)
RE_PCT = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
RE_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
RE_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass
class WrkResult:
    url: str
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: dict[str, int]

    def as_dict(self) -> dict:
        return asdict(self)


def ensure_wrk() -> str:
    """The path of wrk, installed from Debian's package when missing (as root)."""
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: wrk is missing; installing it (apt-get update && apt-get install -y wrk)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                break
        path = shutil.which("wrk")
        if path:
            return path
    raise BenchError(
        "wrk is not installed and could not be installed here; install it with "
        "'apt-get install -y wrk' (Debian/Ubuntu) and run make bench again"
    )


def parse_wrk(url: str, output: str) -> WrkResult:
    rps = RE_RPS.search(output)
    total = RE_TOTAL.search(output)
    percentiles = {
        pct: float(value) * TIME_UNITS[unit] for pct, value, unit in RE_PCT.findall(output)
    }
    if rps is None or total is None or set(percentiles) != {"50", "75", "90", "99"}:
        raise BenchError(f"could not read wrk's output for {url}:\n{output}")
    non_2xx = RE_NON2XX.search(output)
    sockets = RE_SOCKET.search(output)
    names = ("connect", "read", "write", "timeout")
    return WrkResult(
        url=url,
        rps=float(rps.group(1)),
        p50_ms=percentiles["50"],
        p75_ms=percentiles["75"],
        p90_ms=percentiles["90"],
        p99_ms=percentiles["99"],
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=dict(zip(names, map(int, sockets.groups()), strict=True))
        if sockets
        else dict.fromkeys(names, 0),
    )


def run_wrk(
    wrk: str, url: str, duration: float, connections: int, threads: int, timeout_s: int = 10
) -> WrkResult:
    """``wrk -t threads -c connections -d duration --latency`` against ``url``.

    wrk's default 2 s request timeout would drop slow responses from the latency
    figures; ``timeout_s`` (10 s) keeps them in, and a request slower than that is
    reported as a socket timeout.
    """
    argv = [wrk, f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration:g}s"]
    argv += ["--latency", f"--timeout={timeout_s}s", url]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + timeout_s + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish on {url}") from exc
    if done.returncode != 0:
        raise BenchError(f"wrk failed on {url} (exit {done.returncode}):\n{done.stderr}")
    result = parse_wrk(url, done.stdout)
    if result.requests == 0:
        raise BenchError(f"wrk completed no request on {url}:\n{done.stdout}")
    return result
