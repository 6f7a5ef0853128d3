"""Schemathesis hooks for scripts/fuzz.py (loaded through SCHEMATHESIS_HOOKS).

Every check stays on.  ``filter_failure`` drops exactly five kinds of report, each a
rule of the contract that an OpenAPI 3.0 document cannot express; anything else that
the built-in checks find is kept:

1. A schema-valid request answered **412** that carried an ``If-Match``: the generated
   tag is stale, and the contract says a stale ``If-Match`` gets 412.
2. A schema-valid request answered **422** whose errors are *all* rules that depend on
   stored data, on two fields together, or on the names of an object's keys (every
   message is listed in ``CONTRACT_RULES``): a ``project_id``/``service_id`` that names
   no stored document ("must name an existing project (else 422)"), a service or log
   moved to another project, ``since`` after ``until``, both ``after`` and ``before``
   on the events cursor, a project retention override longer than the global
   retention setting (depends on the server's settings), an alert rule's condition
   fields for its kind (and its annotation placeholders and label names), a backtest
   period of too many evaluations, a silence ending in the past, a series window of more than
   10,000 buckets, a forced series ``source`` (5m/1h) that cannot serve the ``step``, a
   log attribute key that is empty, too long, starts with ``$`` or holds ``.`` or NUL
   (OpenAPI 3.0 has no ``propertyNames``; the field's description states the rule), an
   ``Idempotency-Key`` already used within 24 h for a different request (stored data:
   Schemathesis drew the same key for two bodies, CI 2026-11-30, twice in 27,048
   cases; the contract answers 422, as the IETF draft says), a time whose offset takes
   it out of the years 0001-9999 in UTC (``0001-01-01T00:00:17+01:01`` is a valid
   RFC 3339 ``date-time``; OpenAPI cannot bound a date-time; CI 2026-11-30, once in
   30,709 cases).  A 422 that names any other problem is still a finding.
3. A schema-valid ``GET /api/events`` answered **410** (documented): its generated
   ``after`` cursor lies outside the events kept (older than the oldest, or past the
   newest of a fresh database), which depends on stored data.
4. A **414** answered by gunicorn itself (HTML, before the app sees the request) to a
   request line longer than its limit: a transport limit like the proxy's, not the
   application's answer.  Filters of up to 1,000 characters of 4-byte UTF-8 need up
   to 12 bytes per character on the request line.
5. A **503** to ``GET …/events/stream`` or ``…/logs/stream`` with ``Retry-After`` and
   the message "This server holds its maximum of N open streams": the documented answer
   of a process whose stream slots (``POLYMICRO_STREAMS_MAX``, 2 per worker) are all
   held.  The fuzz's stream calls follow each other with no pause, and a call's slot is
   given back only once gunicorn has closed its response; with one shared listening
   socket (gunicorn.conf.py) consecutive calls can land on one worker (CI, 2026-11-30:
   once in 23,290 cases).  Any other 5xx from a stream is still a finding.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import threading
from collections import Counter

import schemathesis

# How many failures each rule dropped; written to $FUZZ_FILTER_REPORT (JSON) at exit.
DROPPED: Counter = Counter()
_lock = threading.Lock()


def _drop(reason: str) -> bool:
    with _lock:
        DROPPED[reason] += 1
    return False


@atexit.register
def _write_report() -> None:
    path = os.environ.get("FUZZ_FILTER_REPORT")
    if path:
        with open(path, "w") as out:
            json.dump(dict(DROPPED.most_common()), out, indent=2)


CONTRACT_RULES = [
    re.compile(pattern)
    for pattern in (
        r"^No project with this id\.$",
        r"^No service with this id\.$",
        r"^This service belongs to another project\.$",
        r"^The project has no service with this name\.$",
        r"^A service cannot move to another project\.$",
        r"^A log entry cannot move to another project/service\.$",
        r"^`since` must not be after `until`\.$",
        r"^The window spans \d+ buckets of this step; at most 10000: ",
        r"^`(5m|1h)` rollups serve steps that are multiples of ",
        r"^A key is 1-64 characters\.$",
        r"^A key must not start with '\$' or contain '\.' or NUL\.$",
        r"^Use either `after` or `before`\.$",
        r"^At most \d+ days \(the global retention\)\.$",
        # alert rules: the fields of each kind, a period in evaluations, a silence's end
        r"^(Not used|Required) by a \w+ rule\.$",
        r"^A log_count rule needs min_severity, text or both\.$",
        r"^A rule cannot move to another project\.$",
        r"^The period spans \d+ evaluations at \d+ s; at most \d+: ",
        r"^A silence must end in the future \(null lifts it\)\.$",
        r"^Unknown placeholders in ",
        r"^A name is a letter or _ then letters, digits or _ \(at most 100\)\.$",
        r"^Used for a different request\.$",  # an Idempotency-Key already used
        # a date-time whose offset takes it out of the years 0001-9999 in UTC
        r"^A time must fall within the years 0001-9999 once converted to UTC\.$",
    )
]


def _messages(errors) -> list[str]:
    """Every message in a webargs-style ``errors`` tree."""
    if isinstance(errors, str):
        return [errors]
    if isinstance(errors, list):
        return [m for item in errors for m in _messages(item)]
    if isinstance(errors, dict):
        return [m for item in errors.values() for m in _messages(item)]
    return [repr(errors)]


def _only_contract_rules(response) -> bool:
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    messages = _messages(body.get("errors")) if isinstance(body, dict) else []
    return bool(messages) and all(
        any(rule.search(message) for rule in CONTRACT_RULES) for message in messages
    )


def _header(case, name: str):
    for key, value in (case.headers or {}).items():
        if key.lower() == name.lower():
            return value
    return None


STREAMS_FULL = re.compile(r"^This server holds its maximum of \d+ open streams; ")


def _streams_full(case, response) -> bool:
    if not case.path.rstrip("/").endswith(("/events/stream", "/logs/stream")):
        return False
    if not response.headers.get("retry-after"):
        return False
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    return isinstance(body, dict) and bool(STREAMS_FULL.match(str(body.get("message", ""))))


@schemathesis.hook
def filter_failure(ctx, failure, case, response) -> bool:
    """False drops the failure (see the module docstring); True keeps it."""
    if response is None:
        return True
    status = response.status_code
    content_type = (response.headers.get("content-type") or [""])[0]
    if status == 414 and content_type.startswith("text/html"):
        return _drop("414 from gunicorn (request line too long)")
    if status == 503 and _streams_full(case, response):
        return _drop("503 + Retry-After from a stream endpoint at its cap of open streams")
    if getattr(failure, "code", "") == "ST202":  # schema-valid request rejected
        if status == 412 and _header(case, "If-Match"):
            return _drop("412 to a generated (stale) If-Match")
        if status == 422 and _only_contract_rules(response):
            return _drop("422 naming only contract rules (stored data, two fields, key names)")
        if status == 410 and case.path.rstrip("/").endswith("/events"):
            return _drop("410 to a generated events cursor outside what is kept")
    return True
