"""The Loki push API (``POST /loki/api/v1/push``): JSON, and protobuf + snappy.

JSON (what Fluent Bit, Vector's ``loki`` sink with ``json`` encoding and most logging
handlers send)::

    {"streams": [{"stream": {"app": "api", "level": "error"},
                  "values": [["1732600000000000000", "line"],
                             ["1732600000000000000", "line", {"trace_id": "..."}]]}]}

Protobuf (what Promtail, Grafana Alloy and Vector's default send): ``logproto.PushRequest``
compressed as one snappy block.  No maintained package ships Loki's message classes,
so the four small messages are described here with protobuf's own descriptor API
(no code generation), and snappy comes from ``cramjam``; the label set arrives as
Prometheus text (``{app="api", level="error"}``) and is read by :func:`parse_labels`.

Mapping: the service is the first of ``INGEST_LOKI_SERVICE_LABELS`` present
(``unknown_service`` when none is, as Loki itself does); the severity is the first of
``level``, ``severity``, ``detected_level`` (labels, then structured metadata; text
mapped as for OTLP, info when absent); ``test_id``, ``source`` and ``func_id`` labels or
metadata fill those fields; every other label and structured metadata go into
``attributes`` (metadata wins over a label of the same name).
"""

from __future__ import annotations

import json
import re
from functools import cache

from polymicro.common.parser import parse_json_body
from polymicro.ingest.body import JSON, PROTOBUF, Body, TooLarge, Undecodable
from polymicro.ingest.otlp import attribute_key, severity
from polymicro.ingest.service import LogRecordIn, Outcome, store_logs
from polymicro.logs.schemas import (
    ATTRIBUTE_TEXT_MAX,
    ATTRIBUTES_MAX,
    LABEL_MAX,
    MESSAGE_MAX,
)

MEDIA_TYPES = (JSON, PROTOBUF)
UNKNOWN_SERVICE = "unknown_service"
LEVEL_KEYS = ("level", "severity", "detected_level")
FIELD_KEYS = ("test_id", "source", "func_id")
ELLIPSIS = "…"

_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|\}\s*$)')


@cache
def push_request_class():
    """``logproto.PushRequest`` built from a descriptor (field numbers as in Loki's
    ``pkg/push/push.proto``)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

    fdp = descriptor_pb2.FileDescriptorProto(
        name="polymicro/loki_push.proto",
        package="logproto",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    t = descriptor_pb2.FieldDescriptorProto

    def message(name, *fields):
        msg = fdp.message_type.add(name=name)
        for number, (field_name, kind, repeated, type_name) in enumerate(fields, start=1):
            msg.field.add(
                name=field_name,
                number=number,
                type=kind,
                label=t.LABEL_REPEATED if repeated else t.LABEL_OPTIONAL,
                type_name=type_name or None,
            )

    message("PushRequest", ("streams", t.TYPE_MESSAGE, True, ".logproto.StreamAdapter"))
    message(
        "StreamAdapter",
        ("labels", t.TYPE_STRING, False, ""),
        ("entries", t.TYPE_MESSAGE, True, ".logproto.EntryAdapter"),
        ("hash", t.TYPE_UINT64, False, ""),
    )
    message(
        "LabelPairAdapter",
        ("name", t.TYPE_STRING, False, ""),
        ("value", t.TYPE_STRING, False, ""),
    )
    message(
        "EntryAdapter",
        ("timestamp", t.TYPE_MESSAGE, False, ".google.protobuf.Timestamp"),
        ("line", t.TYPE_STRING, False, ""),
        ("structuredMetadata", t.TYPE_MESSAGE, True, ".logproto.LabelPairAdapter"),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(fdp.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("logproto.PushRequest"))


def parse_labels(text: str) -> dict[str, str]:
    """A Prometheus label set, ``{a="1", b="x\\"y"}``, as a dict."""
    text = text.strip()
    if text in ("", "{}"):
        return {}
    if not text.startswith("{"):
        raise Undecodable(f"Stream labels {text[:60]!r} are not a label set.")
    labels, position = {}, 1
    while position < len(text):
        match = _LABEL.match(text, position)
        if match is None:
            raise Undecodable(f"Stream labels {text[:60]!r} are not a label set.")
        try:
            labels[match.group(1)] = json.loads(f'"{match.group(2)}"')
        except ValueError as exc:
            raise Undecodable(f"A label value in {text[:60]!r} is badly escaped.") from exc
        position = match.end()
    return labels


# --- use case -----------------------------------------------------------------------


def push(scope, body: Body, max_records: int, service_labels: list[str]) -> Outcome:
    """``POST /loki/api/v1/push``: store the entries; the outcome says what was refused."""
    outcome = Outcome()
    records = log_records(decode(body, max_records), service_labels, outcome)
    return store_logs(scope, records, outcome)


# --- decoding -----------------------------------------------------------------------

# A stream: (labels, [(time in ns or None, line, structured metadata)])
Stream = tuple[dict[str, str], list[tuple[int | None, str, dict[str, str]]]]


def decode(body: Body, max_records: int) -> list[Stream]:
    streams = _from_json(body.data) if body.media_type == JSON else _from_protobuf(body.data)
    total = sum(len(entries) for _, entries in streams)
    if total > max_records:
        raise TooLarge(f"{total} entries in one push; send at most {max_records} per request.")
    return streams


def _bad(what: str) -> Undecodable:
    return Undecodable(f"Not a Loki push body: {what}.")


def _from_json(data: bytes) -> list[Stream]:
    try:
        obj = parse_json_body(data)
    except json.JSONDecodeError as exc:
        raise Undecodable(f"The body is not valid JSON ({exc.msg}).") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("streams"), list):
        raise _bad('expected {"streams": [...]}')
    streams = []
    for stream in obj["streams"]:
        if not isinstance(stream, dict):
            raise _bad("a stream is not an object")
        labels = stream.get("stream", {})
        values = stream.get("values", [])
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise _bad('"stream" must map label names to strings')
        if not isinstance(values, list):
            raise _bad('"values" must be an array')
        streams.append((labels, [_json_value(value) for value in values]))
    return streams


def _json_value(value) -> tuple[int | None, str, dict[str, str]]:
    if not isinstance(value, list) or len(value) not in (2, 3):
        raise _bad("a value is [timestamp, line] or [timestamp, line, metadata]")
    stamp, line = value[0], value[1]
    metadata = value[2] if len(value) == 3 else {}
    if isinstance(stamp, str) and stamp.isascii() and stamp.isdigit():
        stamp = int(stamp)
    if not isinstance(stamp, int) or isinstance(stamp, bool) or stamp < 0:
        raise _bad(f"timestamp {str(stamp)[:30]!r} is not nanoseconds since the epoch")
    if not isinstance(line, str):
        raise _bad("a log line must be a string")
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str | int | float | bool) for v in metadata.values()
    ):
        raise _bad("structured metadata must map names to strings")
    return stamp or None, line, {k: str(v) for k, v in metadata.items()}


def _from_protobuf(data: bytes) -> list[Stream]:
    from google.protobuf.message import DecodeError

    request = push_request_class()()
    try:
        request.ParseFromString(data)
    except DecodeError as exc:
        raise Undecodable(f"The body is not a valid Loki PushRequest ({exc}).") from exc
    streams = []
    for stream in request.streams:
        entries = []
        for entry in stream.entries:
            stamp = entry.timestamp.seconds * 10**9 + entry.timestamp.nanos
            metadata = {pair.name: pair.value for pair in entry.structuredMetadata}
            entries.append((stamp if stamp > 0 else None, entry.line, metadata))
        streams.append((parse_labels(stream.labels), entries))
    return streams


# --- mapping ------------------------------------------------------------------------


def _cut(text: str, limit: int, outcome: Outcome, what: str) -> str:
    if len(text) <= limit:
        return text
    outcome.warnings[f"{what} cut to {limit} characters"] += 1
    return text[: limit - 1] + ELLIPSIS


def log_records(
    streams: list[Stream], service_labels: list[str], outcome: Outcome
) -> list[LogRecordIn]:
    records = []
    for labels, entries in streams:
        service_key = next((k for k in service_labels if labels.get(k, "").strip()), None)
        service = labels[service_key] if service_key else UNKNOWN_SERVICE
        stream_labels = {k: v for k, v in labels.items() if k != service_key}
        for time_ns, line, metadata in entries:
            records.append(_record(service, stream_labels, time_ns, line, metadata, outcome))
    return records


def _record(service, labels, time_ns, line, metadata, outcome) -> LogRecordIn:
    merged = {**labels, **metadata}
    level_key = next((k for k in LEVEL_KEYS if k in merged), None)
    level = merged[level_key] if level_key else ""
    fields = {
        k: _cut(merged[k], LABEL_MAX, outcome, f"{k} values") for k in FIELD_KEYS if k in merged
    }
    attributes: dict = {}
    dropped = 0
    for key, value in merged.items():
        if key == level_key or key in FIELD_KEYS:
            continue
        stored = attribute_key(key)
        if stored in attributes:
            continue
        if len(attributes) >= ATTRIBUTES_MAX:
            dropped += 1
            continue
        attributes[stored] = _cut(value, ATTRIBUTE_TEXT_MAX, outcome, "attribute values")
    if dropped:
        outcome.warnings[f"attributes beyond {ATTRIBUTES_MAX} dropped"] += dropped
    return LogRecordIn(
        service=service,
        message=_cut(line, MESSAGE_MAX, outcome, "messages"),
        severity=severity(0, level),
        time_ns=time_ns,
        attributes=attributes,
        **fields,
    )


def rejection_message(outcome: Outcome) -> str:
    """The text of a 400 for a push of which some entries were refused (Loki answers
    the same way: the others are stored)."""
    return (
        f"{outcome.rejected_count} of {outcome.accepted + outcome.rejected_count} entries "
        f"were refused (the others were stored): {outcome.message()}"
    )
