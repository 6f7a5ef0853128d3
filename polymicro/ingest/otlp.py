"""OTLP/HTTP: decoding requests, mapping logs and metrics, encoding answers.

Message classes come from the ``opentelemetry-proto`` package; OTLP/JSON is read with
protobuf's ``json_format`` after two OTLP quirks are undone: trace and span ids are hex
in OTLP/JSON (base64 in protobuf's JSON mapping), and exemplars (unused here, and
carrying more ids) are dropped.  ``json_format`` already takes lowerCamelCase and the
proto names, int64 as strings or numbers, and enums as integers or names.

Log record → log entry (see the README's table):

- severity: ``severityNumber`` 1–8 debug, 9–12 info, 13–16 warn, 17–20 error, 21–24
  critical; otherwise ``severityText`` (``warning`` → warn, ``fatal`` → critical, …);
  otherwise info.
- time: ``timeUnixNano``, else ``observedTimeUnixNano``, else arrival.
- message: the body (a string as is; anything else as JSON text), else the event name;
  an ``exception.stacktrace`` attribute is appended to it (attribute values are short).
- service: the resource's ``service.name`` (``unknown_service`` when absent, as the
  OpenTelemetry SDKs default).
- ``code.function.name`` (or the older ``code.function``) → ``func_id``; ``test_id``
  and ``source`` attributes → those fields; every other record attribute, ``trace_id``,
  ``span_id`` (hex) and ``scope_name`` → ``attributes``.  Dots in keys become ``_``
  (MongoDB keys cannot hold a dot; Loki does the same); at most 32 attributes are kept,
  text values are cut at 1,024 characters and messages at 16,384, each counted in the
  answer's ``errorMessage`` as a warning.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections import defaultdict

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from polymicro.common.parser import parse_json_body
from polymicro.ingest.body import JSON, PROTOBUF, Body, TooLarge, Undecodable
from polymicro.ingest.service import LogRecordIn, Outcome, PointIn, store_logs, store_points
from polymicro.logs.schemas import (
    ATTRIBUTE_KEY_MAX,
    ATTRIBUTE_TEXT_MAX,
    ATTRIBUTES_MAX,
    LABEL_MAX,
    MESSAGE_MAX,
)

MEDIA_TYPES = (PROTOBUF, JSON)
UNKNOWN_SERVICE = "unknown_service"
ELLIPSIS = "…"

# --- use cases ----------------------------------------------------------------------


def export_logs(scope, body: Body, max_records: int) -> tuple[bytes, str]:
    """``POST /otlp/v1/logs``: the answer body and its media type."""
    outcome = Outcome()
    records = log_records(decode_logs(body, max_records), outcome)
    store_logs(scope, records, outcome)
    return logs_answer(outcome, body.media_type)


def export_metrics(scope, body: Body, max_records: int) -> tuple[bytes, str]:
    """``POST /otlp/v1/metrics``: the answer body and its media type."""
    outcome = Outcome()
    points = cpu_points(decode_metrics(body, max_records), outcome)
    store_points(scope, points, outcome)
    return metrics_answer(outcome, body.media_type)


# --- decoding -----------------------------------------------------------------------


def decode_logs(body: Body, max_records: int) -> ExportLogsServiceRequest:
    request = _decode(body, ExportLogsServiceRequest, _hex_ids_in_logs)
    total = sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
    _check_count(total, max_records, "log records")
    return request


def decode_metrics(body: Body, max_records: int) -> ExportMetricsServiceRequest:
    request = _decode(body, ExportMetricsServiceRequest, _drop_exemplars)
    total = sum(
        len(getattr(metric, metric.WhichOneof("data")).data_points)
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.WhichOneof("data")
    )
    _check_count(total, max_records, "data points")
    return request


def _check_count(total: int, cap: int, what: str) -> None:
    if total > cap:
        raise TooLarge(f"{total} {what} in one request; send at most {cap} per request.")


def _decode(body: Body, cls, fix_json):
    message = cls()
    if body.media_type == PROTOBUF:
        try:
            message.ParseFromString(body.data)
        except DecodeError as exc:
            raise Undecodable(f"The body is not a valid {cls.__name__} ({exc}).") from exc
        return message
    try:
        obj = parse_json_body(body.data)
    except json.JSONDecodeError as exc:
        raise Undecodable(f"The body is not valid JSON ({exc.msg}).") from exc
    if not isinstance(obj, dict):
        raise Undecodable(f"The body must be a JSON object (an OTLP {cls.__name__}).")
    fix_json(obj)
    try:
        json_format.ParseDict(obj, message, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError, ValueError, TypeError) as exc:
        raise Undecodable(f"The body is not a valid OTLP/JSON {cls.__name__} ({exc}).") from exc
    return message


def _items(obj, *keys):
    """The dicts found under ``keys`` (each a list of objects) of ``obj``."""
    level = [obj]
    for key in keys:
        found = []
        for item in level:
            if isinstance(item, dict):
                for name in (key, _snake(key)):
                    if isinstance(item.get(name), list):
                        found += [x for x in item[name] if isinstance(x, dict)]
        level = found
    return level


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _hex_ids_in_logs(obj: dict) -> None:
    """OTLP/JSON writes ``traceId``/``spanId`` in hex; protobuf's JSON mapping reads
    bytes as base64."""
    for record in _items(obj, "resourceLogs", "scopeLogs", "logRecords"):
        for key in ("traceId", "trace_id", "spanId", "span_id"):
            value = record.get(key)
            if isinstance(value, str):
                try:
                    record[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
                except ValueError as exc:
                    raise Undecodable(f"{key} {value[:40]!r} is not hexadecimal.") from exc


def _drop_exemplars(obj: dict) -> None:
    """Exemplars are not used, and their ids would need the hex fix too."""
    for metric in _items(obj, "resourceMetrics", "scopeMetrics", "metrics"):
        for kind in ("gauge", "sum", "histogram", "exponentialHistogram", "summary"):
            for name in (kind, _snake(kind)):
                for point in _items(metric.get(name) or {}, "dataPoints"):
                    point.pop("exemplars", None)


# --- answering ----------------------------------------------------------------------


def logs_answer(outcome: Outcome, media_type: str) -> tuple[bytes, str]:
    response = ExportLogsServiceResponse()
    if outcome.rejected or outcome.warnings:
        response.partial_success.rejected_log_records = outcome.rejected_count
        response.partial_success.error_message = outcome.message()
    return _encode(response, media_type)


def metrics_answer(outcome: Outcome, media_type: str) -> tuple[bytes, str]:
    response = ExportMetricsServiceResponse()
    if outcome.rejected or outcome.warnings:
        response.partial_success.rejected_data_points = outcome.rejected_count
        response.partial_success.error_message = outcome.message()
    return _encode(response, media_type)


def status_answer(code: int, message: str) -> bytes:
    """The body of an error answer to a protobuf request: a ``google.rpc.Status``."""
    return status_pb2.Status(code=code, message=message).SerializeToString()


def _encode(message, media_type: str) -> tuple[bytes, str]:
    if media_type == PROTOBUF:
        return message.SerializeToString(), PROTOBUF
    return json_format.MessageToJson(message, indent=None).encode("utf-8"), JSON


# --- values -------------------------------------------------------------------------


def _cut(text: str, limit: int, outcome: Outcome, what: str) -> str:
    if len(text) <= limit:
        return text
    outcome.warnings[f"{what} cut to {limit} characters"] += 1
    return text[: limit - 1] + ELLIPSIS


def _plain(value):
    """An ``AnyValue`` as plain Python (lists and dicts for arrays and key lists)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return getattr(value, kind)


def _scalar(value, outcome: Outcome):
    """An attribute value the logs schema stores: text, finite number, bool or null."""
    plain = _plain(value)
    if isinstance(plain, float) and not math.isfinite(plain):
        plain = str(plain)
    if isinstance(plain, list | dict):
        plain = json.dumps(plain, ensure_ascii=False, default=str)
    if isinstance(plain, str):
        plain = _cut(plain, ATTRIBUTE_TEXT_MAX, outcome, "attribute values")
    return plain


def _text(value) -> str | None:
    """A body as message text: a string as is, anything else as JSON text."""
    plain = _plain(value)
    if plain is None:
        return None
    if isinstance(plain, str):
        return plain
    return json.dumps(plain, ensure_ascii=False, default=str)


def attribute_key(key: str) -> str:
    """A key the logs schema takes: no dot (→ ``_``), no leading ``$``, no NUL, ≤ 64."""
    key = key.replace(".", "_").replace("\x00", "")
    if key.startswith("$"):
        key = "_" + key[1:]
    return key[:ATTRIBUTE_KEY_MAX] or "_"


# --- logs ---------------------------------------------------------------------------

SEVERITY_TEXT = {
    "trace": "debug",
    "debug": "debug",
    "info": "info",
    "information": "info",
    "informational": "info",
    "notice": "info",
    "warn": "warn",
    "warning": "warn",
    "error": "error",
    "err": "error",
    "fatal": "critical",
    "critical": "critical",
    "crit": "critical",
    "alert": "critical",
    "emerg": "critical",
    "emergency": "critical",
    "panic": "critical",
}
FUNC_KEYS = ("code.function.name", "code.function")
STACKTRACE_KEY = "exception.stacktrace"


def severity(number: int, text: str) -> str:
    """OTLP severity → polymicro severity (see the module docstring)."""
    if 1 <= number <= 24:
        return ("debug", "debug", "info", "warn", "error", "critical")[(number - 1) // 4]
    word = text.strip().lower()
    return SEVERITY_TEXT.get(word) or SEVERITY_TEXT.get(word.rstrip("0123456789"), "info")


def _resource_service(resource) -> str:
    for kv in resource.attributes:
        if kv.key == "service.name" and kv.value.WhichOneof("value") == "string_value":
            return kv.value.string_value or UNKNOWN_SERVICE
    return UNKNOWN_SERVICE


def log_records(request: ExportLogsServiceRequest, outcome: Outcome) -> list[LogRecordIn]:
    records = []
    for resource_logs in request.resource_logs:
        service = _resource_service(resource_logs.resource)
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope.name
            for record in scope_logs.log_records:
                records.append(_log_record(record, service, scope, outcome))
    return records


def _log_record(record, service: str, scope: str, outcome: Outcome) -> LogRecordIn:
    attributes: dict = {}
    if record.trace_id:
        attributes["trace_id"] = record.trace_id.hex()
    if record.span_id:
        attributes["span_id"] = record.span_id.hex()
    if scope:
        attributes["scope_name"] = _cut(scope, ATTRIBUTE_TEXT_MAX, outcome, "attribute values")
    fields: dict = {}
    stacktrace = None
    dropped = 0
    for kv in record.attributes:
        key = kv.key
        if key in FUNC_KEYS or key in ("test_id", "source"):
            name = "func_id" if key in FUNC_KEYS else key
            text = _text(kv.value)
            if text is not None and name not in fields:
                fields[name] = _cut(text, LABEL_MAX, outcome, f"{name} values")
            continue
        if key == STACKTRACE_KEY:
            stacktrace = _text(kv.value)
            continue
        stored = attribute_key(key)
        if stored in attributes:
            continue
        if len(attributes) >= ATTRIBUTES_MAX:
            dropped += 1
            continue
        attributes[stored] = _scalar(kv.value, outcome)
    if dropped:
        outcome.warnings[f"attributes beyond {ATTRIBUTES_MAX} dropped"] += dropped
    message = _text(record.body) if record.HasField("body") else None
    if not message and record.event_name:
        message = record.event_name
    if message and stacktrace:
        message = f"{message}\n{stacktrace}"
    if message is not None:
        message = _cut(message, MESSAGE_MAX, outcome, "messages")
    return LogRecordIn(
        service=service,
        message=message,
        severity=severity(record.severity_number, record.severity_text),
        time_ns=record.time_unix_nano or record.observed_time_unix_nano or None,
        func_id=fields.get("func_id"),
        test_id=fields.get("test_id"),
        source=fields.get("source"),
        attributes=attributes,
    )


# --- metrics ------------------------------------------------------------------------
#
# What becomes a CPU point (see the README's table).  For each field, the first source
# present at a timestamp wins:
#
#   load (%)     process.runtime.<impl>.cpu.utilization × 100   (share of one core)
#                process.cpu.utilization × 100                  (share of all cores)
#                system.cpu.utilization × 100, busy states, averaged over CPUs
#   memory (%)   process.memory.utilization × 100
#                system.memory.utilization{state=used} × 100
#                process.memory.usage (or process.runtime.<impl>.memory{type=rss})
#                  ÷ system.memory.limit × 100, when the request carries both
#   threads      process.thread.count, process.runtime.<impl>.thread_count
#
# Gauges and sums alike (a sum's value is read as the current level).  Points of one
# metric with several attribute sets are added up (``cpu.mode``/``state`` ``idle`` and
# ``wait`` left out of CPU figures).  Points with the same timestamp (to the
# millisecond) from several metrics of one request merge into one CPU point; a point
# needs a load, so memory or threads alone are not stored (counted in the answer).

_RUNTIME = re.compile(r"process\.runtime\.[a-z0-9_]+\.")
IDLE_STATES = {"idle", "wait", "iowait"}
STATE_KEYS = ("cpu.mode", "state", "system.cpu.state", "process.cpu.state")
CPU_KEYS = ("cpu", "system.cpu.logical_number", "cpu.logical_number")

# metric name (runtime prefix normalised) → (field, rank, how)
SOURCES = {
    "process.runtime.*.cpu.utilization": ("load", 0, "busy"),
    "process.cpu.utilization": ("load", 1, "busy"),
    "system.cpu.utilization": ("load", 2, "busy_per_cpu"),
    "process.memory.utilization": ("memory", 0, "sum"),
    "system.memory.utilization": ("memory", 1, "used"),
    "process.memory.usage": ("memory_bytes", 0, "sum"),
    "process.runtime.*.memory": ("memory_bytes", 1, "rss"),
    "system.memory.limit": ("memory_limit", 0, "sum"),
    "process.thread.count": ("threads", 0, "sum"),
    "process.runtime.*.thread_count": ("threads", 1, "sum"),
}


def _source(name: str):
    return SOURCES.get(_RUNTIME.sub("process.runtime.*.", name, count=1))


def _attrs(point) -> dict:
    return {kv.key: _plain(kv.value) for kv in point.attributes}


def _state(attrs: dict) -> str | None:
    for key in STATE_KEYS:
        if key in attrs:
            return str(attrs[key]).lower()
    return None


def _number(point) -> float | None:
    value = point.as_double if point.WhichOneof("value") == "as_double" else point.as_int
    return float(value) if math.isfinite(value) else None


def _reduce(how: str, points: list[tuple[dict, float]]) -> float | None:
    if how == "busy":
        return sum(v for a, v in points if _state(a) not in IDLE_STATES)
    if how == "busy_per_cpu":
        cpus = {next((a[k] for k in CPU_KEYS if k in a), None) for a, _ in points}
        busy = sum(v for a, v in points if _state(a) not in IDLE_STATES)
        return busy / max(len(cpus), 1)
    if how == "used":
        used = [v for a, v in points if _state(a) == "used"]
        if used:
            return sum(used)
        return None if any(_state(a) for a, _ in points) else sum(v for _, v in points)
    if how == "rss":
        rss = [v for a, v in points if str(a.get("type", "rss")).lower() == "rss"]
        return sum(rss) if rss else None
    return sum(v for _, v in points)


def cpu_points(request: ExportMetricsServiceRequest, outcome: Outcome) -> list[PointIn]:
    """Merge the charted metrics of a request into CPU points (see the table above)."""
    # (service, time in ms) → field → (rank, value)
    merged: dict[tuple[str, int | None], dict[str, tuple[int, float]]] = defaultdict(dict)
    ignored = 0
    for resource_metrics in request.resource_metrics:
        service = _resource_service(resource_metrics.resource)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                source = _source(metric.name)
                kind = metric.WhichOneof("data")
                if source is None or kind not in ("gauge", "sum"):
                    ignored += 1
                    continue
                target, rank, how = source
                by_time: dict[int | None, list[tuple[dict, float]]] = defaultdict(list)
                for point in getattr(metric, kind).data_points:
                    value = _number(point)
                    if value is not None:
                        ms = point.time_unix_nano // 1_000_000 if point.time_unix_nano else None
                        by_time[ms].append((_attrs(point), value))
                for ms, points in by_time.items():
                    value = _reduce(how, points)
                    slot = merged[(service, ms)]
                    if value is not None and (target not in slot or rank < slot[target][0]):
                        slot[target] = (rank, value)
    if ignored:
        outcome.warnings["metrics polymicro does not chart, ignored"] += ignored
    return [p for p in (_point(key, slot, outcome) for key, slot in merged.items()) if p]


def _point(key, slot: dict, outcome: Outcome) -> PointIn | None:
    service, ms = key
    if "load" not in slot:
        outcome.warnings["points without CPU utilization, not stored"] += 1
        return None
    memory = slot["memory"][1] * 100 if "memory" in slot else None
    if memory is None and "memory_bytes" in slot and slot.get("memory_limit", (0, 0))[1] > 0:
        memory = slot["memory_bytes"][1] / slot["memory_limit"][1] * 100
    threads = slot.get("threads")
    return PointIn(
        service=service,
        time_ns=ms * 1_000_000 if ms is not None else None,
        load=max(slot["load"][1] * 100, 0.0),
        memory=min(max(memory, 0.0), 100.0) if memory is not None else None,
        threads=max(int(threads[1]), 0) if threads is not None else None,
    )
