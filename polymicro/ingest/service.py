"""Ingest use cases: records decoded by a protocol module (``otlp``, ``loki``) become log
entries and CPU points of the project that the caller's API key belongs to.

Rules kept here, whatever the protocol:

- **Identity.** Only a project API key can ingest: the key decides the project.  A user
  token (or authentication switched off) names no project: 403.
- **Services.** A record names its service by name.  A name the project does not have
  yet is registered (``discovered``) unless ``INGEST_AUTO_REGISTER`` is false; then, or
  when the name is not a valid service name, the records of that service are rejected
  one by one.  Two requests racing to register one name end with one service (the
  unique index on ``(project_id, name_key)``, then the lookup again).
- **Time.** A timestamp older than ``INGEST_MAX_AGE_HOURS`` or further ahead than
  ``INGEST_MAX_FUTURE_MINUTES`` rejects its record (Loki's defaults: a week, 10 min).
- **Validation.** Every entry passes the same schema as ``POST /api/logs`` (every point
  the same as ``POST /api/metrics/cpu/{id}/data``); a record that fails is rejected
  alone, with the reason, never the request.  Measured on the reference machine under
  load: 69 ms per 512 records (decoding 0.3 ms, mapping 10 ms), against about a second
  for the whole request on SecantusDB, where the insert dominates; ``/api/logs/batch``
  spends 93 ms parsing and validating the same entries.  Validating by construction
  instead would save little and could drift from the contract.
- **Atomicity.** What one request accepted is stored in one all-or-nothing insert
  (one transaction where the database has them).  A request larger than the batch cap
  of ``/api/logs/batch`` is validated in chunks of that size; the insert itself is split
  into wire batches by the driver, inside the one transaction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import mongoengine
from bson import ObjectId
from flask import current_app
from marshmallow import ValidationError

from polymicro.common.models import name_key
from polymicro.common.timeutil import truncate_ms, utcnow
from polymicro.errors import Conflict, Forbidden, InvalidInput
from polymicro.logs import service as logs
from polymicro.logs.schemas import BATCH_MAX, LogEntrySchema
from polymicro.metrics import service as metrics
from polymicro.metrics.schemas import PointSchema
from polymicro.security import charge_ingest
from polymicro.services import service as services
from polymicro.services.schemas import ServiceSchema

EPOCH = datetime(1970, 1, 1)
NS_PER_MS = 1_000_000
# New services one request may register; the records of further new names are rejected
# (a key holder cannot fill a project with thousands of made-up services in one go).
MAX_NEW_SERVICES = 20
MAX_REASONS = 10  # distinct rejection reasons spelled out in one answer
NO_PROJECT = (
    "Ingest needs a project API key (X-API-Key): the key decides the project. "
    "A user token names no project."
)


@dataclass
class LogRecordIn:
    """One log record as a protocol module read it (not validated yet)."""

    service: str
    message: str | None  # None: the record has nothing to show (rejected)
    severity: str = "info"
    time_ns: int | None = None  # None: the time of arrival
    source: str | None = None
    test_id: str | None = None
    func_id: str | None = None
    attributes: dict = field(default_factory=dict)


@dataclass
class PointIn:
    """One CPU point of a service, merged from the metrics of one request."""

    service: str
    time_ns: int | None
    load: float
    memory: float | None = None
    threads: int | None = None


@dataclass
class Outcome:
    """What a request achieved: how many items were stored, why others were rejected,
    and warnings (values shortened, metrics not charted) for the client."""

    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> items
    warnings: Counter = field(default_factory=Counter)  # note -> items

    @property
    def rejected_count(self) -> int:
        return sum(self.rejected.values())

    def message(self) -> str:
        """One line for the client: rejections first, then warnings; at most
        ``MAX_REASONS`` of each (a request naming many bad services stays readable)."""
        parts = [f"{n} rejected: {reason}" for reason, n in self.rejected.most_common(MAX_REASONS)]
        if len(self.rejected) > MAX_REASONS:
            parts.append(f"{len(self.rejected) - MAX_REASONS} more reasons")
        parts += [f"{note} ({n})" for note, n in self.warnings.most_common(MAX_REASONS)]
        return "; ".join(parts)


# --- identity and budget ------------------------------------------------------------


def _charge(project_id: ObjectId, entries: int) -> None:
    """Count ``entries`` against the project's ingest budget, once per request and
    before any decoding work (``polymicro.security.charge_ingest``: over the budget it
    raises ``IngestRateLimited``, answered 429 with ``Retry-After``).  The stores below
    are told the request is already charged."""
    charge_ingest(project_id, entries)


def _admit(scope: ObjectId | None, items: int) -> ObjectId:
    """The project a request writes to (its API key's), charged for ``items``."""
    if scope is None:
        raise Forbidden(NO_PROJECT)
    _charge(scope, items)
    return scope


# --- services -----------------------------------------------------------------------


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a service name (the catalog's own rules), or None."""
    try:
        ServiceSchema(only=("name",)).load({"name": name})
    except ValidationError as exc:
        return "; ".join(exc.messages.get("name", ["invalid"]))
    return None


def _register(project_id: ObjectId, name: str) -> ObjectId | None:
    """Register a discovered service; the winner of a race is looked up again."""
    try:
        return services.create_service(
            {"project_id": project_id, "name": name.strip(), "discovered": True}
        )["id"]
    except (Conflict, mongoengine.NotUniqueError):
        svc = services.find_service(project_id, name.strip())
        return svc["id"] if svc is not None else None
    except InvalidInput:  # the project was deleted meanwhile
        return None


def resolve_services(
    project_id: ObjectId, names: set[str]
) -> tuple[dict[str, ObjectId], dict[str, str]]:
    """Map service names to ids of the project, registering new ones when allowed.

    Returns ``(ids by name, rejection reason by name)``; every name is in one of them.
    """
    keys = {name: name_key(name.strip()) for name in names}
    found = {}
    for name in names:  # one cached lookup per distinct name
        svc = services.find_service(project_id, name.strip())
        if svc is not None:
            found[keys[name]] = svc["id"]
    ids: dict[str, ObjectId] = {}
    problems: dict[str, str] = {}
    auto = current_app.config["INGEST_AUTO_REGISTER"]
    created = 0
    for name in sorted(names):
        if keys[name] in found:
            ids[name] = found[keys[name]]
        elif (problem := _name_problem(name)) is not None:
            problems[name] = f"service name {name[:60]!r} is not valid ({problem})"
        elif not auto:
            problems[name] = (
                f"service {name!r} is not in this project (POLYMICRO_INGEST_AUTO_REGISTER "
                "is off: create it first)"
            )
        elif created >= MAX_NEW_SERVICES:
            problems[name] = f"more than {MAX_NEW_SERVICES} new services in one request"
        else:
            service_id = _register(project_id, name)
            created += 1
            if service_id is None:
                problems[name] = "the project no longer exists"
            else:
                ids[name] = found[keys[name]] = service_id
    return ids, problems


# --- time ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Window:
    now: datetime
    oldest_ns: int
    newest_ns: int

    @classmethod
    def current(cls) -> _Window:
        config = current_app.config
        now = utcnow()
        now_ns = (now - EPOCH) // timedelta(microseconds=1) * 1000
        return cls(
            now,
            now_ns - config["INGEST_MAX_AGE_HOURS"] * 3600 * 10**9,
            now_ns + config["INGEST_MAX_FUTURE_MINUTES"] * 60 * 10**9,
        )

    def time_of(self, time_ns: int | None) -> datetime | str:
        """The stored time of a record, or why it is refused."""
        if time_ns is None:
            return self.now
        if time_ns < self.oldest_ns:
            return "timestamp older than POLYMICRO_INGEST_MAX_AGE_HOURS"
        if time_ns > self.newest_ns:
            return "timestamp too far in the future (POLYMICRO_INGEST_MAX_FUTURE_MINUTES)"
        return truncate_ms(EPOCH + timedelta(microseconds=time_ns // 1000))


def _first_error(messages) -> str:
    """The first message of a marshmallow error tree, with the path to it."""
    path = []
    while isinstance(messages, dict) and messages:
        key, messages = next(iter(messages.items()))
        path.append(str(key))
    if isinstance(messages, list) and messages:
        messages = messages[0]
        while isinstance(messages, dict | list) and messages:
            messages = next(iter(messages.values())) if isinstance(messages, dict) else messages[0]
    return f"invalid {'.'.join(path) or 'record'}: {messages}"


# --- logs ---------------------------------------------------------------------------


def store_logs(scope: ObjectId | None, records: list[LogRecordIn], outcome: Outcome) -> Outcome:
    """Store the acceptable records as log entries of the key's project, all or none."""
    project_id = _admit(scope, len(records))
    if not records:
        return outcome
    window = _Window.current()
    ids, problems = resolve_services(project_id, {r.service for r in records})
    schema = LogEntrySchema()
    project = str(project_id)
    entries: list[dict] = []
    for start in range(0, len(records), BATCH_MAX):
        for record in records[start : start + BATCH_MAX]:
            entry = _entry(record, ids, problems, window, project, schema, outcome)
            if entry is not None:
                entries.append(entry)
    if entries:
        outcome.accepted = _insert_logs(entries, project_id, outcome)
    return outcome


def _entry(record, ids, problems, window, project, schema, outcome) -> dict | None:
    if record.service in problems:
        outcome.rejected[problems[record.service]] += 1
        return None
    if record.message is None or not record.message.strip():
        outcome.rejected["empty body"] += 1
        return None
    time = window.time_of(record.time_ns)
    if isinstance(time, str):
        outcome.rejected[time] += 1
        return None
    raw = {
        "project_id": project,
        "service_id": str(ids[record.service]),
        "severity": record.severity,
        "message": record.message,
        "timestamp": time,
        "source": record.source,
        "test_id": record.test_id,
        "func_id": record.func_id,
    }
    raw = {k: v for k, v in raw.items() if v is not None}
    if record.attributes:
        raw["attributes"] = record.attributes
    try:
        return schema.load(raw)
    except ValidationError as exc:
        outcome.rejected[_first_error(exc.messages)] += 1
        return None


def _insert_logs(entries: list[dict], project_id: ObjectId, outcome: Outcome) -> int:
    """One all-or-nothing insert.  A service deleted since it was resolved makes
    ``create_logs`` refuse the entries naming it: those are rejected, the rest stored."""
    try:
        return len(logs.create_logs(entries, scope=project_id, charged=True))
    except InvalidInput as exc:
        bad = {int(index) for index in (exc.errors or {}).get("json", {})}
        if not bad:
            raise
    outcome.rejected["service deleted while the request ran"] += len(bad)
    entries = [entry for index, entry in enumerate(entries) if index not in bad]
    return len(logs.create_logs(entries, scope=project_id, charged=True)) if entries else 0


# --- metrics ------------------------------------------------------------------------


def store_points(scope: ObjectId | None, points: list[PointIn], outcome: Outcome) -> Outcome:
    """Append the points to the CPU entries of their services (created when missing),
    all in one all-or-nothing insert."""
    project_id = _admit(scope, len(points))
    if not points:
        return outcome
    window = _Window.current()
    ids, problems = resolve_services(project_id, {p.service for p in points})
    schema = PointSchema()
    by_service: dict[ObjectId, list[dict]] = {}
    for point in points:
        if point.service in problems:
            outcome.rejected[problems[point.service]] += 1
            continue
        time = window.time_of(point.time_ns)
        if isinstance(time, str):
            outcome.rejected[time] += 1
            continue
        raw = {"time": time, "load": point.load, "memory": point.memory, "threads": point.threads}
        try:
            valid = schema.load({k: v for k, v in raw.items() if v is not None})
        except ValidationError as exc:
            outcome.rejected[_first_error(exc.messages)] += 1
            continue
        by_service.setdefault(ids[point.service], []).append(valid)
    if by_service:
        wanted = sum(len(p) for p in by_service.values())
        outcome.accepted = metrics.append_ingested_points(project_id, by_service)
        if wanted > outcome.accepted:
            outcome.rejected["service deleted while the request ran"] += wanted - outcome.accepted
    return outcome
