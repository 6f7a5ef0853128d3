"""Server-Sent Events: what every stream shares.

- :func:`open_stream` turns a *source* (a ``start()`` giving the first messages and a
  ``poll()`` giving new ones) into a ``text/event-stream`` response that

  - holds one of the process's ``STREAMS_MAX`` stream slots (past it: 503 with
    ``Retry-After``; ``STREAMS_ENABLED=false``: 503 naming the stream server);
  - lives at most ``STREAM_MAX_SECONDS`` (the client reconnects and resumes; that is
    how a stream never keeps a thread without bound);
  - polls every ``STREAM_POLL_MS`` (no change streams on SecantusDB or mongomock), sends
    a keep-alive comment when nothing was written for ``STREAM_KEEPALIVE_SECONDS`` and
    ``retry:`` (``STREAM_RETRY_MS``) first;
  - takes its time and its sleep from ``polymicro.common.clock``, so a test runs a
    whole stream life at once.

- Stream tokens: ``EventSource`` cannot send headers, so a user mints a short-lived
  token (:func:`mint_token`, at most 60 s) and passes it as ``?token=``, which only the
  stream endpoints read (:func:`stream_access`).  It is an HS256 JWT under a key derived
  from ``SECRET_KEY`` for this use only: an access token is not a stream token and a
  stream token is not an access token.  It names the stream (``events`` or ``logs``) and
  optionally a project; then the stream must ask for that project.

Hand-written on purpose: flask-sse (the Flask SSE library) publishes through Redis
pub/sub and cannot resume from a database cursor, cap streams or bound their life;
the wire format itself is a few lines (``encode``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps

import jwt
from flask import Flask, Response, current_app, g, request
from flask_smorest import abort
from marshmallow import fields, validate

from polymicro.common import clock
from polymicro.common.schemas import BaseQuerySchema
from polymicro.errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)

STREAMS = ("events", "logs")
TOKEN_SECONDS = 60
TOKEN_AUDIENCE = "polymicro-stream"  # noqa: S105 - a name, not a secret
RETRY_AFTER_SECONDS = 10  # when every slot is taken
_SLOTS = "polymicro.streams"
_slots_lock = threading.Lock()


# --- the wire format ----------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One SSE block.  ``id`` alone (no data) moves the client's Last-Event-ID on
    without firing an event (the SSE processing model dispatches nothing then)."""

    data: str | None = None
    id: str | None = None
    event: str | None = None
    comment: str | None = None
    retry: int | None = None


def encode(message: Message) -> str:
    lines = []
    if message.comment is not None:
        lines.append(f": {message.comment}")
    if message.retry is not None:
        lines.append(f"retry: {message.retry}")
    if message.event is not None:
        lines.append(f"event: {message.event}")
    if message.id is not None:
        lines.append(f"id: {message.id}")
    if message.data is not None:
        lines.extend(f"data: {line}" for line in message.data.split("\n"))
    return "\n".join(lines) + "\n\n"


def json_message(payload, id: str | None = None, event: str | None = None) -> Message:
    return Message(data=json.dumps(payload, separators=(",", ":")), id=id, event=event)


# --- slots: how many streams a process holds ----------------------------------------------


class Slots:
    """A counter of open streams, one per app (an app per process in production)."""

    def __init__(self, size: int):
        self.size = size
        self.open = 0
        self._lock = threading.Lock()

    def take(self) -> Lease | None:
        with self._lock:
            if self.open >= self.size:
                return None
            self.open += 1
        return Lease(self)

    def _give_back(self) -> None:
        with self._lock:
            self.open -= 1


class Lease:
    """One taken slot; released once, by whichever comes first: the end of the stream
    or the server closing the response (a client that left before the first byte)."""

    def __init__(self, slots: Slots):
        self._slots = slots
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._slots._give_back()


def slots(app: Flask) -> Slots:
    found = app.extensions.get(_SLOTS)
    if found is None:
        with _slots_lock:
            found = app.extensions.setdefault(_SLOTS, Slots(int(app.config["STREAMS_MAX"])))
    return found


# --- the stream ---------------------------------------------------------------------------

Poll = Callable[[], tuple[list[Message], bool]]


def open_stream(start: Callable[[], list[Message]], poll: Poll) -> Response:
    """The response of a stream endpoint (call it from the view, after access checks).

    ``start()`` runs now, inside the request (an error there is an ordinary error
    response); ``poll()`` runs in the stream, each time inside an app context, and
    returns the new messages and whether more are waiting (then it runs again at once).
    """
    app = current_app._get_current_object()
    config = app.config
    if not config["STREAMS_ENABLED"]:
        abort(
            503,
            message="Streams are not served by this server (POLYMICRO_STREAMS_ENABLED=false); "
            "the stream server serves /api/events/stream and /api/logs/stream.",
        )
    lease = slots(app).take()
    if lease is None:
        abort(
            503,
            message=f"This server holds its maximum of {config['STREAMS_MAX']} open streams; "
            "try again shortly.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    try:
        first = start()
    except BaseException:
        lease.release()
        raise
    body = _run(
        app,
        lease,
        first,
        poll,
        max_seconds=float(config["STREAM_MAX_SECONDS"]),
        keepalive=float(config["STREAM_KEEPALIVE_SECONDS"]),
        interval=config["STREAM_POLL_MS"] / 1000,
        retry_ms=int(config["STREAM_RETRY_MS"]),
    )
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    response.call_on_close(lease.release)
    return response


def _run(
    app: Flask,
    lease: Lease,
    first: Iterable[Message],
    poll: Poll,
    *,
    max_seconds: float,
    keepalive: float,
    interval: float,
    retry_ms: int,
) -> Iterator[str]:
    try:
        yield encode(Message(comment="stream open", retry=retry_ms)) + "".join(map(encode, first))
        deadline = clock.monotonic() + max_seconds
        last_write = clock.monotonic()
        while clock.monotonic() < deadline:
            try:
                with app.app_context():
                    messages, more = poll()
            except Exception:
                log.warning("stream ended by an error; the client will resume", exc_info=True)
                return
            if messages:
                yield "".join(map(encode, messages))
                last_write = clock.monotonic()
            elif clock.monotonic() - last_write >= keepalive:
                yield encode(Message(comment="keep-alive"))
                last_write = clock.monotonic()
            if not more:
                now = clock.monotonic()
                clock.sleep(max(0.0, min(interval, deadline - now, last_write + keepalive - now)))
        yield encode(Message(comment="stream life over; reconnect to resume"))
    finally:
        lease.release()


# --- stream tokens ------------------------------------------------------------------------


def _key() -> bytes:
    secret = current_app.config["SECRET_KEY"].encode()
    return hmac.new(secret, b"polymicro stream tokens", hashlib.sha256).digest()


def _timestamp(value: datetime) -> int:
    return int(value.replace(tzinfo=UTC).timestamp())


def mint_token(stream: str, project_id, user_id: str | None, username: str | None) -> dict:
    """A token for ``stream`` (optionally for one project), valid ``TOKEN_SECONDS``."""
    if stream not in STREAMS:
        raise ValueError(stream)
    issued = clock.now()
    claims = {
        "aud": TOKEN_AUDIENCE,
        "sub": user_id or "anonymous",
        "name": username,
        "stream": stream,
        "project_id": None if project_id is None else str(project_id),
        "iat": _timestamp(issued),
        "exp": _timestamp(issued) + TOKEN_SECONDS,
    }
    return {
        "token": jwt.encode(claims, _key(), algorithm="HS256"),
        "expires_in": TOKEN_SECONDS,
        "stream": stream,
        "project_id": project_id,
    }


def verify_token(token: str, stream: str, project_id: str | None) -> dict:
    """The claims of a valid token for ``stream`` and the requested ``project_id``.

    401 when the token is not one (bad signature, another kind of token, expired by
    the application clock); 403 when it is for another stream or another project.
    """
    try:
        claims = jwt.decode(
            token,
            _key(),
            algorithms=["HS256"],
            audience=TOKEN_AUDIENCE,
            options={"verify_exp": False, "verify_iat": False, "require": ["exp", "aud"]},
        )
    except jwt.PyJWTError as exc:
        raise Unauthorized("The stream token is not valid; mint a new one.") from exc
    if not isinstance(claims.get("exp"), int) or _timestamp(clock.now()) >= claims["exp"]:
        raise Unauthorized("The stream token has expired; mint a new one.")
    if claims.get("stream") != stream:
        raise Forbidden(f"This token is for the {claims.get('stream')} stream.")
    scope = claims.get("project_id")
    if scope is not None and (project_id or "").strip().lower() != scope:
        raise Forbidden(f"This token is for project {scope}: ask for project_id={scope}.")
    return claims


def stream_access(stream: str):
    """``access("viewer")``, or a stream token in ``?token=`` (this endpoint only).

    Without ``token`` the request is authenticated as any other (headers).  With it,
    the token alone decides; it is never accepted by any other endpoint, and no other
    credential is accepted in the URL.
    """
    from polymicro.security import access  # the policy owner; imported where it is used

    def decorator(func):
        guarded = access("viewer")(func)

        @wraps(func)
        def wrapper(*args, **kwargs):
            token = request.args.get("token")
            if token is None or not current_app.config["AUTH_ENABLED"]:
                return guarded(*args, **kwargs)
            g.stream_token = verify_token(token, stream, request.args.get("project_id"))
            return func(*args, **kwargs)

        wrapper._access = {**guarded._access, "stream_token": stream}
        wrapper._apidoc = guarded._apidoc
        manual = wrapper._apidoc.setdefault("manual_doc", {})
        manual["description"] = (
            manual.get("description", "")
            + " Or, for EventSource (which cannot send headers), a stream token in "
            "`?token=` (`POST /api/events/stream-token`)."
        )
        return wrapper

    return decorator


# One Server-Sent Events message as a client parses it (what the stream's schema says each
# message is): `data` is the JSON text of the item, `id` the resume point, `event` set on
# `reset`, `retry` once, first.
SSE_MESSAGE = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}

STREAM_DOC = {
    "responses": {
        "200": {
            "description": "`text/event-stream`: `retry:` first, then one message per item "
            "(`id:` to resume from with `Last-Event-ID`, `data:` its JSON); `event: reset` "
            "when the resume point is gone; a comment line at least every 15 s. The stream "
            "ends after `POLYMICRO_STREAM_MAX_SECONDS`: reconnect to resume.",
            "content": {"text/event-stream": {"schema": SSE_MESSAGE}},
        },
        "503": {
            "description": "Every stream slot of this server is taken (`Retry-After`), or "
            "streams are served by another server."
        },
    },
}


class StreamArgsSchema(BaseQuerySchema):
    """Query parameters every stream takes besides its filters."""

    token = fields.String(
        load_only=True,
        metadata={
            "description": "A stream token from `POST /api/events/stream-token` (at most "
            "60 s), for clients that cannot send headers (EventSource)."
        },
    )


class TailArgsSchema(StreamArgsSchema):
    tail = fields.Integer(
        load_default=50,
        validate=validate.Range(min=0, max=1000),
        metadata={"description": "Start with the last N items (not on a resume)."},
    )


class ResumeHeadersSchema(BaseQuerySchema):
    last_event_id = fields.String(
        data_key="Last-Event-ID",
        load_default=None,
        validate=validate.Length(max=64),
        metadata={"description": "Resume after this `id:` (EventSource sends it on reconnect)."},
    )
