"""``Idempotency-Key`` on the ingest POSTs: a retried request is answered, not redone.

The semantics of the IETF draft (draft-ietf-httpapi-idempotency-key-header):

- A client sends ``Idempotency-Key: <key>`` (1-255 printable ASCII characters, quoted as
  a structured-field string or bare) with ``POST /api/logs``, ``/api/logs/batch`` or
  ``/api/metrics/cpu/{id}/data``.  Keys belong to the caller (the user, or the API key;
  with authentication off, everyone is the same anonymous caller).
- The first request with a key is executed; its answer (status, body, content type) is
  kept for ``IDEMPOTENCY_KEY_HOURS`` (24 by default).
- The same key with the same request (method, path, query and body, byte for byte)
  within that time gets the first answer again, with ``Idempotent-Replayed: true``, and
  nothing is stored twice.  The same key with a different request: 422.  The same key
  while the first request is still being executed: 409 (retry later).
- A request that fails (4xx, 5xx) keeps nothing: the key is free again, so the client
  can correct the request or retry it.

Why this matters: a 503 or a timeout after the database committed makes a client retry,
and without a key the retry stores the logs a second time.

Records live in MongoDB (collection ``idempotency_keys``: unique on (caller, key), a TTL
index on ``expires_at``), so they hold across workers, instances and restarts.  A request
first *claims* its key (an insert that the unique index lets only one request win, marked
in flight with a lease), then runs, then marks the record done with its answer **in the
same transaction as its write** where the database has transactions (a replica set,
SecantusDB): the answer is recorded if and only if the write is committed.  A worker that
dies mid-request leaves an in-flight claim and nothing stored; after the lease
(``LEASE_SECONDS``) a retry takes the claim over and executes.  Without transactions
(a standalone MongoDB, mongomock) the write and the record are two steps: a crash between
them leaves the write stored and the claim in flight, and a retry after the lease would
store it again (the README says so).
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from datetime import timedelta
from functools import wraps

import mongoengine as me
from bson import Binary
from flask import Response, current_app, g, request
from pymongo.errors import DuplicateKeyError

from polymicro.common import atomic
from polymicro.common.timeutil import utcnow
from polymicro.errors import Conflict, InvalidInput

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# What parse_key accepts, for the OpenAPI document: a bare key (printable ASCII, no
# space at either end, not starting with a quote) or a quoted one (a structured-field
# string; the pattern leaves out escapes, which are accepted too).  A generated value
# that matches is never refused (the fuzz run sent "   ", which strips to nothing).
KEY_PATTERN = (
    r"^(?:[!#-~](?:[ -~]{0," + str(MAX_KEY_LENGTH - 2) + r"}[!-~])?"
    r'|"[ !#-\[\]-~]{1,' + str(MAX_KEY_LENGTH) + r'}")$'
)
LEASE_SECONDS = 60  # longer than gunicorn's 30 s timeout: a live request keeps its claim
IN_FLIGHT, DONE = "in_flight", "done"
KEPT_HEADERS = ("Content-Type", "Location")


class IdempotencyRecord(me.Document):
    caller = me.StringField(required=True)
    key = me.StringField(required=True, max_length=MAX_KEY_LENGTH)
    fingerprint = me.StringField(required=True)
    state = me.StringField(required=True, choices=(IN_FLIGHT, DONE))
    lease = me.StringField()
    lease_until = me.DateTimeField()
    status = me.IntField()
    body = me.BinaryField()
    headers = me.DictField()
    created_at = me.DateTimeField(required=True)
    expires_at = me.DateTimeField(required=True)

    meta = {
        "collection": "idempotency_keys",
        "indexes": [
            {"fields": ["caller", "key"], "unique": True},
            {"fields": ["expires_at"], "expireAfterSeconds": 0},
        ],
    }


class Replay:
    """A stored answer to send again."""

    def __init__(self, status: int, body: bytes, headers: dict):
        self.status, self.body, self.headers = status, body, headers

    def response(self) -> Response:
        response = Response(self.body, self.status)
        for name, value in self.headers.items():
            response.headers[name] = value
        response.headers[REPLAYED_HEADER] = "true"
        return response


class Claim:
    """This request's hold on its key (see :func:`claim`)."""

    def __init__(self, record_id, lease: str):
        self.record_id, self.lease = record_id, lease


def _collection():
    return IdempotencyRecord._get_collection()


def parse_key(raw: str) -> str:
    """The key of an ``Idempotency-Key`` header (a structured-field string, or bare)."""
    value = raw.strip()
    quoted = value.startswith('"')
    if quoted and len(value) >= 2 and value.endswith('"'):
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        quoted = False
    if quoted or not 1 <= len(value) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in value):
        raise InvalidInput.field(
            HEADER,
            f"An Idempotency-Key is 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
            "headers",
        )
    return value


def fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def claim(caller: str, key: str, print_: str, hours: float) -> Claim | Replay:
    """Claim ``key`` for this request, or the stored answer to replay.

    Conflict (409) while another request holds the key; InvalidInput (422) when the key
    was used for a different request.
    """
    collection = _collection()
    for _attempt in range(3):
        now = utcnow()
        lease = uuid.uuid4().hex
        record = {
            "caller": caller,
            "key": key,
            "fingerprint": print_,
            "state": IN_FLIGHT,
            "lease": lease,
            "lease_until": now + timedelta(seconds=LEASE_SECONDS),
            "created_at": now,
            "expires_at": now + timedelta(hours=hours),
        }
        try:
            record_id = collection.insert_one(record).inserted_id
            return Claim(record_id, lease)
        except DuplicateKeyError:
            pass
        found = collection.find_one({"caller": caller, "key": key})
        if found is None:
            continue  # expired and swept meanwhile: claim again
        if found["expires_at"] <= now:  # expired, not yet swept (TTL sweeps lag)
            collection.delete_one({"_id": found["_id"], "expires_at": found["expires_at"]})
            continue
        if found["fingerprint"] != print_:
            raise InvalidInput(
                "This Idempotency-Key was used for a different request; use a new key.",
                {"headers": {HEADER: ["Used for a different request."]}},
            )
        if found["state"] == DONE:
            return Replay(found["status"], bytes(found["body"]), found.get("headers") or {})
        if found["lease_until"] > now:
            raise Conflict("A request with this Idempotency-Key is still in progress; retry later.")
        taken = collection.update_one(  # its worker died: take the claim over
            {"_id": found["_id"], "state": IN_FLIGHT, "lease": found["lease"]},
            {"$set": {"lease": lease, "lease_until": now + timedelta(seconds=LEASE_SECONDS)}},
        )
        if taken.modified_count == 1:
            return Claim(found["_id"], lease)
    raise Conflict("A request with this Idempotency-Key is still in progress; retry later.")


def complete(held: Claim, response: Response) -> None:
    """Record the answer (in the caller's transaction, if any).  Conflict when the claim
    was taken over meanwhile (this request outlived its lease): the transaction then
    aborts and nothing of this request is stored."""
    headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    done = _collection().update_one(
        {"_id": held.record_id, "state": IN_FLIGHT, "lease": held.lease},
        {
            "$set": {
                "state": DONE,
                "status": response.status_code,
                "body": Binary(response.get_data()),
                "headers": headers,
            },
            "$unset": {"lease": "", "lease_until": ""},
        },
        session=atomic.current_session(),
    )
    if done.matched_count != 1:
        raise Conflict("This request took too long and its Idempotency-Key was taken over.")


def release(held: Claim) -> None:
    """Free the key after a failed request (nothing was stored)."""
    _collection().delete_one({"_id": held.record_id, "state": IN_FLIGHT, "lease": held.lease})


def _caller() -> str:
    principal = g.get("principal")
    if principal is None or principal.kind == "anonymous":
        return "anonymous"
    if principal.kind == "key":
        return f"key:{principal.key_id}"
    return f"user:{principal.user_id}"


class _NotStored(Exception):
    """Aborts the transaction of a request that answered without success."""

    def __init__(self, response: Response):
        self.response = response


def idempotent(func):
    """Honour ``Idempotency-Key`` on this POST (under ``access()``, above ``arguments``)."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        raw = request.headers.get(HEADER)
        if raw is None:
            return func(*args, **kwargs)
        key = parse_key(raw)
        print_ = fingerprint(
            request.method, request.path, request.query_string, request.get_data(cache=True)
        )
        held = claim(_caller(), key, print_, current_app.config["IDEMPOTENCY_KEY_HOURS"])
        if isinstance(held, Replay):
            return held.response()
        client = _collection().database.client
        try:
            with atomic.transaction(client):
                response = func(*args, **kwargs)
                if not 200 <= response.status_code < 300:
                    raise _NotStored(response)
                complete(held, response)
        except _NotStored as failed:
            release(held)
            return failed.response
        except BaseException:
            release(held)
            raise
        return response

    wrapper._apidoc = copy.deepcopy(getattr(func, "_apidoc", {}))
    manual = wrapper._apidoc.setdefault("manual_doc", {})
    manual.setdefault("parameters", []).append(
        {
            "name": HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "string", "pattern": KEY_PATTERN, "maxLength": MAX_KEY_LENGTH + 2},
            "description": "Makes a retry safe: the same key with the same request within "
            "24 hours gets the first answer again (header `Idempotent-Replayed: true`) and "
            "stores nothing twice; with a different request, 422; while the first is still "
            "running, 409.",
        }
    )
    manual.setdefault("responses", {}).update(
        {"409": {"description": "A request with this Idempotency-Key is still in progress."}}
    )
    return wrapper
