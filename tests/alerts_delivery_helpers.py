"""Helpers of the webhook delivery tests: a real HTTP receiver and alert dicts.

``Hook`` is an ``http.server`` in a thread on 127.0.0.1 (a free port): it records every
request (path, headers, raw body) and answers from a script of responses (default
``200 ok``).  The tests turn ``WEBHOOK_ALLOW_PRIVATE`` on to reach it, as the README
says a local receiver needs.

``alert_for(svc, ...)`` builds the ``alert`` dict of the outbox contract
(``polymicro/alerts/outbox.py``) without any evaluation; ``enqueue(...)`` puts it in the
outbox as the evaluation half would.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bson import ObjectId

from polymicro.alerts import outbox
from polymicro.common import clock


@dataclass
class Answer:
    status: int = 200
    headers: dict = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0  # real seconds before answering (time-out tests only)


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


class Hook:
    def __init__(self):
        self.received: list[Received] = []
        self.script: list[Answer] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                hook.received.append(Received(self.path, dict(self.headers.items()), body))
                answer = hook.script.pop(0) if hook.script else Answer()
                if answer.delay:
                    time.sleep(answer.delay)
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading (the response size bound)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def answer(self, *answers: Answer) -> None:
        self.script.extend(answers)

    def __enter__(self) -> Hook:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def alert_for(svc, status: str = "firing", *, instance_id: str | None = None, **fields) -> dict:
    """The ``alert`` dict of the outbox contract for an instance of ``svc``."""
    now = clock.now()
    alert = {
        "id": instance_id or str(ObjectId()),
        "rule_id": str(ObjectId()),
        "rule_name": "HighLoad",
        "project_id": str(svc.project_id),
        "service_id": str(svc.id),
        "service_name": svc.name,
        "state": status,
        "value": 97.5,
        "labels": {"severity": "page"},
        "annotations": {
            "summary": f"{svc.name} load is 97.5",
            "description": "avg load over 5m above 90",
        },
        "active_at": now,
        "fired_at": now,
        "resolved_at": now if status == "resolved" else None,
        "fingerprint": "f" * 16,
    }
    alert.update(fields)
    return alert


def enqueue(alert: dict, status: str = "firing", version: int = 1) -> str:
    """Put a transition in the outbox as evaluation does; returns its key."""
    key = f"{alert['id']}:{version}"
    outbox.enqueue(alert, status, key)
    return key
