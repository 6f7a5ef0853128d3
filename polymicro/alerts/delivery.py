"""Webhook receivers and delivery: the rules of the delivery half of the alerts domain.

The alerts domain is split in two halves joined by the outbox (``outbox.py``, whose
docstring is the contract):

- evaluation — ``models.py``, ``schemas.py``, ``resources.py``, ``service.py``,
  ``rules.py``: rules, instances, states, backtest; each firing/resolved transition is
  enqueued in the outbox;
- delivery — ``delivery_models.py``, ``delivery_schemas.py``, ``delivery_resources.py``
  and this module: receivers (``/api/alert-receivers``), the fan-out of outbox rows to
  the receivers that match them, and the signed webhooks with their retries.

Two worker jobs (``polymicro/worker.py``), safe in several copies:

- :func:`fan_out`: each pending outbox row becomes one delivery per matching enabled
  receiver (an upsert on the unique ``(key, receiver_id)``), then the row is marked
  fanned out.  A crash between the two repeats the upserts, which create nothing new.
- :func:`deliver_due`: each due delivery is claimed with a compare-and-set on its
  ``version`` that moves ``next_attempt_at`` to the end of a lease, then sent; the
  outcome is recorded only if the version is still the claimed one.  A worker that
  dies mid-send leaves the delivery due again when the lease ends.

Sending: the body is Alertmanager's webhook payload (``version: "4"``), signed the
Standard Webhooks way (``webhook-id``, ``webhook-timestamp``, ``webhook-signature:
v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the base64-decoded
secret after ``whsec_``).  The HTTP client is the standard library's ``http.client``
(``requests`` is not a dependency): it never follows redirects, reads the response
only as far as we ask (``WEBHOOK_MAX_RESPONSE_BYTES``), and lets us connect to the very
address we checked (the host is resolved and checked at every attempt, and the
connection goes to that address: no DNS rebinding between check and use).

Retries: full-jitter exponential backoff (``WEBHOOK_RETRY_BASE_SECONDS`` doubling up to
``WEBHOOK_RETRY_MAX_SECONDS``), a ``Retry-After`` answer (seconds or an HTTP date)
wins; ``WEBHOOK_RETRY_HOURS`` after it was created (or redelivered) the delivery is ``failed``.  2xx
is ``delivered``; ``410 Gone`` fails it and disables the receiver (it shows why).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import random
import secrets
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from bson import ObjectId
from flask import current_app
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from polymicro.alerts import outbox
from polymicro.alerts.delivery_models import ATTEMPTS_KEPT, Delivery, Receiver
from polymicro.common import clock
from polymicro.common.models import as_view, name_key
from polymicro.common.pagination import PagedQuery
from polymicro.common.timeutil import format_time
from polymicro.errors import Conflict, InvalidInput, NotFound
from polymicro.events import service as events
from polymicro.projects import service as projects

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix, not a secret
SECRET_BYTES = 24  # generated secrets: 24 random bytes (Standard Webhooks: 24 to 64)
SECRET_MAX_BYTES = 64
NEVER = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of an alert still firing
USER_AGENT = "polymicro-alerts/1"
LEASE_EXTRA_SECONDS = 60  # a claim lasts twice the timeout plus this
ROUND_SECONDS = 60  # deliver_due claims no more after this long in one round
_random = random.SystemRandom()


# --- secrets and signatures -------------------------------------------------------------


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ValueError when it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("must be whsec_ followed by base64") from exc
    if not SECRET_BYTES <= len(key) <= SECRET_MAX_BYTES:
        raise ValueError(f"must encode {SECRET_BYTES} to {SECRET_MAX_BYTES} bytes")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value (Standard Webhooks, ``v1``)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# --- URL safety ---------------------------------------------------------------------------


class UnsafeURL(ValueError):
    """A receiver URL that may not be used (scheme, host, or the address it resolves to)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # with the query
    addresses: tuple[str, ...]  # resolved (empty when private addresses are allowed)


def refused_address(address: str) -> str | None:
    """Why ``address`` may not receive webhooks, or None when it is a public address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    for flag in (
        "is_loopback",
        "is_link_local",
        "is_private",
        "is_multicast",
        "is_reserved",
        "is_unspecified",
    ):
        if getattr(ip, flag):
            return f"{address} is a {flag[3:].replace('_', '-')} address"
    if not ip.is_global:
        return f"{address} is not a public address"
    return None


def check_url(url: str, allow_private: bool | None = None) -> Target:
    """``url`` split into what a request needs; UnsafeURL when it may not be used.

    Without ``WEBHOOK_ALLOW_PRIVATE`` the host is resolved and every address it resolves
    to must be public (loopback, link-local, private, multicast, reserved and
    unspecified addresses are refused); the request then goes to one of those addresses.
    """
    if allow_private is None:
        allow_private = current_app.config["WEBHOOK_ALLOW_PRIVATE"]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURL("only http and https URLs are accepted")
    host = parts.hostname
    if not host:
        raise UnsafeURL("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("credentials in the URL are not accepted (use the signature)")
    port = port or (443 if scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if allow_private:
        return Target(scheme, host, port, path, ())
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UnsafeURL(f"the host {host!r} cannot be resolved ({exc})") from None
    addresses = tuple(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise UnsafeURL(f"the host {host!r} resolves to no address")
    for address in addresses:
        why = refused_address(address)
        if why:
            raise UnsafeURL(f"{why}; such receivers need POLYMICRO_WEBHOOK_ALLOW_PRIVATE=true")
    return Target(scheme, host, port, path, addresses)


def _checked_url(url: str) -> str:
    try:
        check_url(url)
    except UnsafeURL as exc:
        raise InvalidInput.field("url", str(exc)) from None
    return url


# --- receivers ----------------------------------------------------------------------------


def receiver_view(receiver: Receiver) -> dict:
    view = as_view(receiver)
    view.pop("secret", None)
    view.pop("name_key", None)
    return view


def load_receiver(receiver_id: ObjectId) -> Receiver:
    receiver = Receiver.objects(id=receiver_id).first()
    if receiver is None:
        raise NotFound(f"Alert receiver {receiver_id} not found.")
    return receiver


def _checked_projects(project_ids: list[ObjectId]) -> list[ObjectId]:
    unique = list(dict.fromkeys(project_ids))
    for project_id in unique:
        projects.require_project(project_id, field="project_ids")
    return unique


def _checked_secret(secret: str) -> str:
    try:
        secret_key(secret)
    except ValueError as exc:
        raise InvalidInput.field("secret", str(exc)) from None
    return secret


def _ensure_name_free(name: str, exclude: ObjectId | None = None) -> None:
    clash = Receiver.objects(name_key=name_key(name))
    if exclude is not None:
        clash = clash.filter(id__ne=exclude)
    if clash.first() is not None:
        raise Conflict(f"An alert receiver named {name!r} already exists.")


def list_receivers() -> PagedQuery:
    return PagedQuery(Receiver.objects.order_by("name_key", "id"), per_page=_views)


def _views(receivers: list[Receiver]) -> list[dict]:
    return [receiver_view(r) for r in receivers]


def get_receiver(receiver_id: ObjectId) -> dict:
    return receiver_view(load_receiver(receiver_id))


def create_receiver(data: dict) -> dict:
    """Store a receiver; the answer is the only one that shows its ``secret``."""
    data = dict(data)
    _ensure_name_free(data["name"])
    data["url"] = _checked_url(data["url"])
    data["secret"] = _checked_secret(data["secret"]) if data.get("secret") else generate_secret()
    data["project_ids"] = _checked_projects(data.get("project_ids") or [])
    now = clock.now()
    receiver = Receiver(**data, name_key=name_key(data["name"]), created_at=now, updated_at=now)
    receiver.save(force_insert=True)  # a racing duplicate name hits the unique index → 409
    events.publish("alert_receiver.created", receiver)
    return receiver_view(receiver) | {"secret": receiver.secret}


def update_receiver(receiver_id: ObjectId, data: dict) -> dict:
    """A partial update; ``enabled: true`` clears why it was disabled."""
    receiver = load_receiver(receiver_id)
    data = dict(data)
    if "name" in data and name_key(data["name"]) != receiver.name_key:
        _ensure_name_free(data["name"], exclude=receiver.id)
    if "url" in data and data["url"] != receiver.url:
        _checked_url(data["url"])
    if data.get("secret") is not None:
        _checked_secret(data["secret"])
    else:
        data.pop("secret", None)
    if "project_ids" in data:
        data["project_ids"] = _checked_projects(data["project_ids"] or [])
    changed = {k: (getattr(receiver, k), v) for k, v in data.items() if getattr(receiver, k) != v}
    if data.get("enabled") and (receiver.disabled_reason or receiver.disabled_at):
        changed["disabled_reason"] = (receiver.disabled_reason, None)
        changed["disabled_at"] = (receiver.disabled_at, None)
    if changed:
        for field, (_before, after) in changed.items():
            setattr(receiver, field, after)
        receiver.name_key = name_key(receiver.name)
        receiver.updated_at = clock.now()
        receiver.save()
        events.publish(
            "alert_receiver.updated", receiver, changes=events.changes_of(_public(changed))
        )
    return receiver_view(receiver)


def _public(changed: dict) -> dict:
    return {k: v for k, v in changed.items() if k not in ("secret", "disabled_at")}


def delete_receiver(receiver_id: ObjectId) -> None:
    """Delete a receiver and its delivery log (pending deliveries are dropped)."""
    receiver = load_receiver(receiver_id)
    Delivery.objects(receiver_id=receiver.id).delete()
    receiver.delete()
    events.publish("alert_receiver.deleted", receiver)


def disable_receiver(receiver_id: ObjectId, reason: str) -> None:
    """Switch a receiver off (its URL answered 410 Gone); ``enabled: true`` undoes it."""
    now = clock.now()
    result = Receiver._get_collection().update_one(
        {"_id": receiver_id, "enabled": True},
        {"$set": {"enabled": False, "disabled_reason": reason, "disabled_at": now}},
    )
    if result.modified_count:
        events.publish(
            "alert_receiver.disabled",
            {"id": receiver_id, "name": None},
            changes={"enabled": {"before": True, "after": False}},
        )


# --- the payload --------------------------------------------------------------------------


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _time(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return format_time(value)
    return str(value)


def _project_name(project_id) -> str:
    try:
        return projects.require_project(ObjectId(str(project_id)))["name"]
    except (NotFound, ValueError, TypeError):
        return str(project_id)


def alert_labels(alert: dict, project_name: str | None = None) -> dict[str, str]:
    """The labels a receiver sees and its matchers compare: the rule's labels, then
    ``alertname`` (the rule's name), ``project`` and ``service`` (names)."""
    labels = {str(k): _text(v) for k, v in (alert.get("labels") or {}).items()}
    labels["alertname"] = str(alert.get("rule_name") or "")
    labels["project"] = project_name or _project_name(alert["project_id"])
    if alert.get("service_name"):
        labels["service"] = str(alert["service_name"])
    return labels


def _fingerprint(alert: dict, labels: dict) -> str:
    if alert.get("fingerprint"):
        return str(alert["fingerprint"])
    text = "\xff".join(f"{k}\xff{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _group_key(labels: dict) -> str:
    group = {k: labels[k] for k in ("alertname", "project", "service") if k in labels}
    inner = ",".join(f"{k}={json.dumps(v)}" for k, v in group.items())
    return "{}:{" + inner + "}"


def payload(alert: dict, status: str, receiver_name: str, labels: dict) -> dict:
    """Alertmanager's webhook payload (version 4) for one alert."""
    external = current_app.config["EXTERNAL_URL"].rstrip("/")
    annotations = {str(k): _text(v) for k, v in (alert.get("annotations") or {}).items()}
    ends = _time(alert.get("resolved_at")) if status == "resolved" else None
    group = {k: labels[k] for k in ("alertname", "project", "service") if k in labels}
    rule_id = alert.get("rule_id")
    generator = f"{external}/api/v1/alert-rules/{rule_id}" if rule_id else external
    return {
        "version": "4",
        "groupKey": _group_key(labels),
        "status": status,
        "receiver": receiver_name,
        "groupLabels": group,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external,
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": annotations,
                "startsAt": _time(alert.get("fired_at") or alert.get("active_at")) or NEVER,
                "endsAt": ends or (NEVER if status == "firing" else _time(clock.now())),
                "generatorURL": generator,
                "fingerprint": _fingerprint(alert, labels),
            }
        ],
    }


def matches(receiver: Receiver | dict, project_id: ObjectId, labels: dict) -> bool:
    project_ids = receiver["project_ids"] if isinstance(receiver, dict) else receiver.project_ids
    matchers = receiver["matchers"] if isinstance(receiver, dict) else receiver.matchers
    if project_ids and project_id not in project_ids:
        return False
    return all(labels.get(k) == v for k, v in (matchers or {}).items())


# --- worker job: the fan-out ---------------------------------------------------------------


def fan_out(limit: int = 500) -> int:
    """Pending outbox rows → one delivery per matching enabled receiver; the number of
    rows fanned out.  Idempotent: a row fanned out twice creates no second delivery."""
    rows = outbox.pending(limit)
    if not rows:
        return 0
    receivers = list(Receiver._get_collection().find({"enabled": True}))
    done = 0
    for row in rows:
        try:
            _fan_out_row(row, receivers)
        except Exception:  # one bad row must not hold up the others
            log.exception("outbox row %s could not be fanned out; retried next round", row["key"])
            continue
        outbox.mark_fanned_out(row["key"])
        done += 1
    return done


def _fan_out_row(row: dict, receivers: list[dict]) -> None:
    collection = Delivery._get_collection()
    alert = row["alert"]
    project_id = row["project_id"]
    labels = alert_labels(alert)
    now = clock.now()
    for receiver in receivers:
        if not matches(receiver, project_id, labels):
            continue
        body = json.dumps(
            payload(alert, row["status"], receiver["name"], labels),
            separators=(",", ":"),
            ensure_ascii=False,
        )
        document = {
            "key": row["key"],
            "receiver_id": receiver["_id"],
            "project_id": project_id,
            "alert_id": str(alert.get("id") or ""),
            "alertname": labels["alertname"],
            "alert_status": row["status"],
            "body": body,
            "status": "pending",
            "version": 1,
            "created_at": now,
            "retry_from": now,
            "next_attempt_at": now,
            "attempt_count": 0,
            "attempts": [],
        }
        # A racing upsert by another worker may hit the unique index: it won.
        with contextlib.suppress(DuplicateKeyError):
            collection.update_one(
                {"key": row["key"], "receiver_id": receiver["_id"]},
                {"$setOnInsert": document},
                upsert=True,
            )


# --- worker job: sending -----------------------------------------------------------------


@dataclass
class Response:
    status_code: int | None = None
    error: str | None = None
    retry_after: str | None = None
    response_bytes: int = 0
    response_truncated: bool = False
    duration_ms: float = 0.0


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address, with the certificate checked for the URL's host."""

    def __init__(self, address: str, port: int, server_hostname: str, **kwargs):
        super().__init__(address, port, context=ssl.create_default_context(), **kwargs)
        self._server_hostname = server_hostname

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._server_hostname)


def post(url: str, body: bytes, headers: dict) -> Response:
    """POST ``body`` to ``url``: the host checked (and resolved) now, no redirects,
    at most ``WEBHOOK_TIMEOUT_SECONDS`` per step and ``WEBHOOK_MAX_RESPONSE_BYTES`` read."""
    config = current_app.config
    timeout = float(config["WEBHOOK_TIMEOUT_SECONDS"])
    max_bytes = int(config["WEBHOOK_MAX_RESPONSE_BYTES"])
    started = time.perf_counter()
    result = Response()
    try:
        target = check_url(url)
    except UnsafeURL as exc:
        result.error = f"refused: {exc}"
        return result
    address = target.addresses[0] if target.addresses else target.host
    host_header = target.host if ":" not in target.host else f"[{target.host}]"
    if target.port != (443 if target.scheme == "https" else 80):
        host_header += f":{target.port}"
    if target.scheme == "https":
        conn = _PinnedHTTPSConnection(address, target.port, target.host, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(address, target.port, timeout=timeout)
    try:
        conn.request(
            "POST",
            target.path,
            body=body,
            headers={
                "Host": host_header,
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                **headers,
            },
        )
        response = conn.getresponse()
        result.status_code = response.status
        result.retry_after = response.getheader("Retry-After")
        read = response.read(max_bytes + 1)
        result.response_truncated = len(read) > max_bytes
        result.response_bytes = min(len(read), max_bytes)
        if time.perf_counter() - started > timeout * 2:
            result.error = "the response took longer than the timeout"
    except TimeoutError:
        result.error = f"timed out after {timeout:g} s"
    except Exception as exc:  # any failure of the network or of the peer is recorded
        result.error = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        conn.close()
        result.duration_ms = round((time.perf_counter() - started) * 1000, 1)
    return result


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from ``now`` (a number or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return max(0.0, (when - now).total_seconds())


def backoff_seconds(attempt: int) -> float:
    """Full jitter: a wait drawn in [0, min(max, base * 2**(attempt-1))]."""
    config = current_app.config
    cap = min(
        float(config["WEBHOOK_RETRY_MAX_SECONDS"]),
        float(config["WEBHOOK_RETRY_BASE_SECONDS"]) * 2 ** max(0, attempt - 1),
    )
    return _random.uniform(0, cap)


def _claim(candidate: dict, now: datetime) -> dict | None:
    lease = float(current_app.config["WEBHOOK_TIMEOUT_SECONDS"]) * 2 + LEASE_EXTRA_SECONDS
    return Delivery._get_collection().find_one_and_update(
        {
            "_id": candidate["_id"],
            "version": candidate["version"],
            "status": "pending",
            "next_attempt_at": {"$lte": now},
        },
        {"$set": {"next_attempt_at": now + timedelta(seconds=lease)}, "$inc": {"version": 1}},
        return_document=ReturnDocument.AFTER,
    )


def _finish(delivery: dict, changes: dict, attempt: dict | None = None) -> bool:
    update: dict = {"$set": changes, "$inc": {"version": 1}}
    if attempt is not None:
        update["$inc"]["attempt_count"] = 1
        update["$push"] = {"attempts": {"$each": [attempt], "$slice": -ATTEMPTS_KEPT}}
    result = Delivery._get_collection().update_one(
        {"_id": delivery["_id"], "version": delivery["version"]}, update
    )
    if not result.modified_count:
        log.warning("delivery %s changed while it was being sent", delivery["_id"])
    return bool(result.modified_count)


def deliver_due(limit: int = 50) -> int:
    """Send every due delivery (up to ``limit``, and for at most ``ROUND_SECONDS``: the
    worker's other jobs wait meanwhile; what is left stays due for the next round); the
    number of attempts made."""
    started = clock.monotonic()
    now = clock.now()
    candidates = list(
        Delivery._get_collection()
        .find(
            {"status": "pending", "next_attempt_at": {"$lte": now}},
            {"_id": 1, "version": 1},
        )
        .sort("next_attempt_at", 1)
        .limit(limit)
    )
    sent = 0
    for candidate in candidates:
        if clock.monotonic() - started > ROUND_SECONDS:
            break
        delivery = _claim(candidate, now)
        if delivery is None:
            continue  # another worker took it
        try:
            sent += attempt(delivery)
        except Exception:  # leased: retried when the lease ends; the others go on
            log.exception("delivery %s failed unexpectedly", delivery["_id"])
    return sent


def attempt(delivery: dict) -> bool:
    """One attempt of a claimed delivery; False when nothing was sent (receiver gone)."""
    receiver = Receiver._get_collection().find_one({"_id": delivery["receiver_id"]})
    now = clock.now()
    if receiver is None or not receiver.get("enabled", True):
        why = (
            "the receiver was deleted"
            if receiver is None
            else f"the receiver is disabled: {receiver.get('disabled_reason') or 'by hand'}"
        )
        _finish(delivery, {"status": "cancelled", "last_error": why, "done_at": now})
        return False
    body = delivery["body"].encode()
    msg_id = f"msg_{delivery['_id']}"
    timestamp = int(now.replace(tzinfo=UTC).timestamp())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(receiver["secret"], msg_id, timestamp, body),
    }
    response = post(receiver["url"], body, headers)
    now = clock.now()
    code = response.status_code
    error = response.error
    if error is None and code is not None and not 200 <= code < 300:
        error = f"HTTP {code}"
        if 300 <= code < 400:
            error += " (redirects are not followed)"
    record = {
        "at": now,
        "status_code": code,
        "error": error,
        "duration_ms": response.duration_ms,
        "response_bytes": response.response_bytes,
        "response_truncated": response.response_truncated,
    }
    if error is None:
        _finish(
            delivery,
            {"status": "delivered", "done_at": now, "last_error": None},
            record,
        )
        return True
    if code == 410:
        _finish(delivery, {"status": "failed", "done_at": now, "last_error": error}, record)
        disable_receiver(
            receiver["_id"], f"the URL answered 410 Gone at {format_time(now)}: disabled"
        )
        return True
    delay = retry_after_seconds(response.retry_after, now)
    if delay is None:
        delay = backoff_seconds(delivery.get("attempt_count", 0) + 1)
    next_at = now + timedelta(seconds=delay)
    give_up = delivery["retry_from"] + timedelta(
        hours=float(current_app.config["WEBHOOK_RETRY_HOURS"])
    )
    if next_at > give_up:
        _finish(
            delivery,
            {"status": "failed", "done_at": now, "last_error": error + " (retries exhausted)"},
            record,
        )
    else:
        _finish(delivery, {"next_attempt_at": next_at, "last_error": error}, record)
    return True


# --- the delivery log ---------------------------------------------------------------------


def delivery_view(delivery: Delivery) -> dict:
    view = as_view(delivery)
    view["payload"] = json.loads(view.pop("body"))
    view.pop("version", None)
    return view


def _delivery_views(rows: list[Delivery]) -> list[dict]:
    return [delivery_view(d) for d in rows]


def list_deliveries(receiver_id: ObjectId, status: str | None = None) -> PagedQuery:
    """A receiver's deliveries, newest first."""
    load_receiver(receiver_id)
    query = Delivery.objects(receiver_id=receiver_id)
    if status:
        query = query.filter(status=status)
    return PagedQuery(query.order_by("-created_at", "-id"), per_page=_delivery_views)


def redeliver(receiver_id: ObjectId, delivery_id: ObjectId) -> dict:
    """Send a finished delivery again (same body and webhook-id), with a new retry
    window; 409 while it is still pending or while its receiver is disabled."""
    receiver = load_receiver(receiver_id)
    delivery = Delivery.objects(id=delivery_id, receiver_id=receiver.id).first()
    if delivery is None:
        raise NotFound(f"Delivery {delivery_id} of receiver {receiver_id} not found.")
    if not receiver.enabled:
        raise Conflict("The receiver is disabled: enable it first (PATCH enabled=true).")
    now = clock.now()
    result = Delivery._get_collection().update_one(
        {"_id": delivery.id, "status": {"$ne": "pending"}},
        {
            "$set": {
                "status": "pending",
                "next_attempt_at": now,
                "retry_from": now,
                "done_at": None,
            },
            "$inc": {"version": 1},
        },
    )
    if not result.modified_count:
        raise Conflict("This delivery is still pending: it is sent when due.")
    events.publish(
        "alert_receiver.redelivered",
        receiver,
        changes={"delivery_id": {"before": None, "after": str(delivery.id)}},
    )
    delivery.reload()
    return delivery_view(delivery)
