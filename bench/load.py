"""Load generators for the benchmark: wrk for reads, threads of HTTP clients for writes.

- :func:`run_together`: callables in threads of their own, released at once and timed.
- :func:`run_parallel`: the same kind of request from N threads, one keep-alive
  connection (polymicro_dev's HttpClient) each; every response must have the expected
  status.
- :func:`ensure_wrk` / :func:`run_wrk`: the Debian ``wrk`` binary and its parsed output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from polymicro_dev import DevError, HttpClient

# --- threads --------------------------------------------------------------------------------


def run_together(tasks: Sequence[Callable[[], object]], what: str = "request") -> float:
    """Run every task in a thread of its own, all released at the same moment; returns
    the wall time in seconds from that moment to the end of the last one.  The first
    failure is raised afterwards (a DevError as it is, anything else as "``what``
    failed")."""
    start_line = threading.Barrier(len(tasks) + 1)
    failures: list[BaseException] = []

    def run(task: Callable[[], object]) -> None:
        start_line.wait()
        try:
            task()
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(task,), daemon=True) for task in tasks]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        exc = failures[0]
        raise exc if isinstance(exc, DevError) else DevError(f"{what} failed: {exc!r}")
    return elapsed


def run_parallel(
    port: int,
    clients: int,
    jobs: Sequence[tuple[str, str, bytes]],
    expect: int,
    check: Callable[[Any], None] | None = None,
    headers: dict | None = None,
) -> float:
    """Send every ``(method, path, body)`` job with expected status ``expect``, spread
    round-robin over ``clients`` threads with one keep-alive connection each.

    Connections are opened before the clock starts; returns the wall time in seconds
    from the common start to the last response.  ``check`` may inspect each decoded
    response (raise DevError to fail the run).  ``headers`` (credentials) go with every
    request.
    """
    clients = max(1, min(clients, len(jobs)))
    shares = [jobs[i::clients] for i in range(clients)]
    connections = [HttpClient(port, timeout=300, headers=headers) for _ in range(clients)]
    for client in connections:
        client.conn.connect()

    def send(client: HttpClient, share: Sequence[tuple[str, str, bytes]]) -> None:
        for method, path, body in share:
            response = client.request(method, path, body)
            if response.status != expect:
                raise DevError(
                    f"{method} {path} answered {response.status} (wanted {expect}): "
                    f"{response.body[:500]!r}"
                )
            if check is not None:  # decoded only then: a body may not be JSON (OTLP)
                check(response.json())

    try:
        return run_together(
            [
                lambda c=client, s=share: send(c, s)
                for client, share in zip(connections, shares, strict=True)
            ]
        )
    finally:
        for client in connections:
            client.close()


# --- wrk ----------------------------------------------------------------------------------

TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}  # → milliseconds
RE_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
RE_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(\w+),", re.M)
RE_PCT = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
RE_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
RE_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
RE_TRANSFER = re.compile(r"^Transfer/sec:\s+([\d.]+)(GB|MB|KB|B)\s*$", re.M)
BYTE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


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
    transfer_per_s: float = 0.0  # bytes of responses per second (wrk's Transfer/sec)

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
    raise DevError(
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
        raise DevError(f"could not read wrk's output for {url}:\n{output}")
    non_2xx = RE_NON2XX.search(output)
    sockets = RE_SOCKET.search(output)
    transfer = RE_TRANSFER.search(output)
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
        transfer_per_s=float(transfer[1]) * BYTE_UNITS[transfer[2]] if transfer else 0.0,
    )


def run_wrk(
    wrk: str,
    url: str,
    duration: float,
    connections: int,
    threads: int,
    timeout_s: int = 10,
    headers: dict | None = None,
) -> WrkResult:
    """``wrk -t threads -c connections -d duration --latency`` against ``url``, with
    ``headers`` (``-H``) on every request.

    wrk's default 2 s request timeout would drop slow responses from the latency
    figures; ``timeout_s`` (10 s) keeps them in, and a request slower than that is
    reported as a socket timeout.
    """
    argv = [wrk, f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration:g}s"]
    argv += ["--latency", f"--timeout={timeout_s}s"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + timeout_s + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DevError(f"wrk did not finish on {url}") from exc
    if done.returncode != 0:
        raise DevError(f"wrk failed on {url} (exit {done.returncode}):\n{done.stderr}")
    result = parse_wrk(url, done.stdout)
    if result.requests == 0:
        raise DevError(f"wrk completed no request on {url}:\n{done.stdout}")
    return result
