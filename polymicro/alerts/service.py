"""Alert use cases: rules, instances and their evaluation, silences, backtests.

Evaluation (:func:`evaluate_all`, the worker's job ``alerts``)
    Every rule, every ``POLYMICRO_ALERTS_EVALUATE_SECONDS``.  A rule's condition is
    measured for each of its services with one database aggregation (``$avg``/``$max``
    over the metric points of the window; ``$push`` then the nearest-rank 95th
    percentile in Python for ``p95``, the same on every server; a ``$group`` count of
    the matching log entries) or one liveness read.  :func:`rules.step` then says what
    each (rule, service) instance becomes.  A transition is written with a
    compare-and-set on the instance's ``version`` (and ``evaluated_at``): of several
    workers exactly one wins each change; the losers read the row again and find
    nothing left to do.  A worker whose measurement is older than the row's
    ``evaluated_at`` (a slow round overtaken by another worker's) writes nothing, so a
    stale round never undoes a newer one.

After a transition (by its winner only)
    A firing or resolved transition is put in the outbox (``outbox.enqueue``, key
    ``"<instance id>:<version>"``), then ``notified_version`` is raised to that version;
    every round first re-enqueues any instance whose ``notified_version`` lags its
    ``version`` (a worker that died between the two), and the key makes a retry a no-op.
    Then one event ``alert.state_changed`` (``before``, ``after``, ``version``, ``value``).
    A transition while the instance is silenced is recorded and published, but not
    notified (Alertmanager's semantics: a silence mutes notifications, not state); its
    ``notified_version`` is advanced by the transition's own write.

Liveness rules on a service in ``unknown`` (polymicro itself was not observing) keep the
instance's state: no storm after polymicro's own outage.

Backtest (:func:`backtest`) replays the stored history at the evaluation interval
through the same measurement and :func:`rules.step` (liveness from the stored
transitions), writing nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from bson import ObjectId
from flask import current_app
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from polymicro.alerts import outbox, rules
from polymicro.alerts.models import AlertInstance, AlertRule
from polymicro.common import clock
from polymicro.common.models import contains_literally
from polymicro.common.pagination import PagedQuery
from polymicro.common.timeutil import format_time
from polymicro.errors import InvalidInput, NotFound
from polymicro.events import service as events
from polymicro.liveness import service as liveness
from polymicro.liveness.models import LivenessTransition
from polymicro.logs.models import SEVERITY_LEVEL, LogEntry
from polymicro.metrics.models import CpuMetric, CpuPoint
from polymicro.projects import service as projects
from polymicro.services import service as services
from polymicro.services.models import Service

log = logging.getLogger(__name__)

EVENT = "alert.state_changed"
CAS_ATTEMPTS = 20
CONDITION_FIELDS = {
    "metric_threshold": ("aggregate", "field", "window", "operator", "threshold"),
    "log_count": ("min_severity", "text", "window", "operator", "threshold"),
    "liveness": ("states",),
}
ALL_CONDITION_FIELDS = {f for fields in CONDITION_FIELDS.values() for f in fields}
REQUIRED = {
    "metric_threshold": ("aggregate", "field", "window", "operator", "threshold"),
    "log_count": ("window", "operator", "threshold"),
    "liveness": (),
}
EDITABLE = (
    "name",
    "service_id",
    "kind",
    *sorted(ALL_CONDITION_FIELDS),
    "for_seconds",
    "keep_firing_for",
    "labels",
    "annotations",
    "enabled",
)


def _every() -> int:
    return int(current_app.config["ALERTS_EVALUATE_SECONDS"])


def _rules() -> Collection:
    return AlertRule._get_collection()


def _instances() -> Collection:
    return AlertInstance._get_collection()


# --- rules --------------------------------------------------------------------------------


def _rule_view(row: dict) -> dict:
    view = {key: row.get(key) for key in ("project_id", "service_id", "name", "kind", *EDITABLE)}
    view["id"] = row["_id"]
    view["labels"] = row.get("labels") or {}
    view["annotations"] = row.get("annotations") or {}
    view["states"] = row.get("states") or None
    view["created_at"], view["updated_at"] = row.get("created_at"), row.get("updated_at")
    return view


def _load_rule(rule_id: ObjectId) -> dict:
    row = _rules().find_one({"_id": rule_id})
    if row is None:
        raise NotFound(f"Alert rule {rule_id} not found.")
    return row


def _checked(rule: dict, given: set[str]) -> dict:
    """``rule`` (the stored fields merged with the body) made consistent for its kind:
    a required condition field missing, or a field of another kind in the body, is a
    422; stored fields of another kind (the kind changed) are cleared."""
    kind = rule["kind"]
    errors: dict[str, list[str]] = {}
    for name in ALL_CONDITION_FIELDS - set(CONDITION_FIELDS[kind]):
        if name in given and rule.get(name) is not None:
            errors[name] = [f"Not used by a {kind} rule."]
        rule[name] = None
    for name in REQUIRED[kind]:
        if rule.get(name) is None:
            errors[name] = [f"Required by a {kind} rule."]
    if kind == "log_count" and not rule.get("min_severity") and not rule.get("text"):
        errors["min_severity"] = ["A log_count rule needs min_severity, text or both."]
    if kind == "liveness" and not rule.get("states"):
        rule["states"] = ["critical", "offline"]
    if errors:
        raise InvalidInput("The rule's condition is incomplete.", {"json": errors})
    projects.require_project(rule["project_id"], field="project_id")
    if rule.get("service_id") is not None:
        ref = services.require_service(rule["service_id"], field="service_id")
        if ref["project_id"] != rule["project_id"]:
            raise InvalidInput.field("service_id", "This service belongs to another project.")
    return rule


def _subject(row: dict) -> dict:
    return {"id": row["_id"], "name": row["name"]}


def list_rules(
    project_id: ObjectId | None = None,
    service_id: ObjectId | None = None,
    kind: str | None = None,
    enabled: bool | None = None,
) -> PagedQuery:
    query = {
        key: value
        for key, value in (
            ("project_id", project_id),
            ("service_id", service_id),
            ("kind", kind),
            ("enabled", enabled),
        )
        if value is not None
    }
    return PagedQuery(
        AlertRule.objects(__raw__=query).order_by("name", "id").as_pymongo(),
        lambda rows: [_rule_view(row) for row in rows],
    )


def get_rule(rule_id: ObjectId) -> dict:
    return _rule_view(_load_rule(rule_id))


def create_rule(data: dict) -> dict:
    now = clock.now()
    rule = {key: data.get(key) for key in ("project_id", *EDITABLE)}
    rule.setdefault("enabled", True)
    rule["enabled"] = True if rule["enabled"] is None else rule["enabled"]
    rule["for_seconds"] = rule["for_seconds"] or 0
    rule["keep_firing_for"] = rule["keep_firing_for"] or 0
    rule["labels"], rule["annotations"] = rule["labels"] or {}, rule["annotations"] or {}
    rule = _checked(rule, set(data))
    rule |= {"_id": ObjectId(), "created_at": now, "updated_at": now}
    _rules().insert_one(rule)
    events.publish("alert_rule.created", _subject(rule), project_id=rule["project_id"])
    return _rule_view(rule)


def update_rule(rule_id: ObjectId, data: dict) -> dict:
    row = _load_rule(rule_id)
    if "project_id" in data and data["project_id"] != row["project_id"]:
        raise InvalidInput.field("project_id", "A rule cannot move to another project.")
    merged = {**row, **{k: v for k, v in data.items() if k != "project_id"}}
    merged = _checked(merged, set(data))
    fields = {key: merged.get(key) for key in EDITABLE}
    fields["labels"], fields["annotations"] = fields["labels"] or {}, fields["annotations"] or {}
    changed = {k: v for k, v in fields.items() if row.get(k) != v}
    if changed:
        fields["updated_at"] = clock.now()
        _rules().update_one({"_id": rule_id}, {"$set": fields})
        events.publish(
            "alert_rule.updated",
            _subject({**row, **fields}),
            project_id=row["project_id"],
            changes=events.changes_of({k: (row.get(k), v) for k, v in changed.items()}),
        )
    return _rule_view({**row, **fields})


def delete_rule(rule_id: ObjectId) -> None:
    """Delete a rule and its instances; a firing instance is resolved first (its
    receivers hear that it ended)."""
    rule = _load_rule(rule_id)
    now = clock.now()
    for row in _instances().find({"rule_id": rule_id, "state": rules.FIRING}):
        _transit(rule, row, row["service_id"], row.get("service_name"), False, None, now, keep=0)
    _instances().delete_many({"rule_id": rule_id})
    _rules().delete_one({"_id": rule_id})
    events.publish("alert_rule.deleted", _subject(rule), project_id=rule["project_id"])


def on_services_deleting(_sender, *, project_id: ObjectId, service_id: ObjectId | None) -> None:
    """Receiver of ``services.services_deleting``: the rules and instances of the
    services (or of the whole project) go with them."""
    if service_id is None:
        _rules().delete_many({"project_id": project_id})
        _instances().delete_many({"project_id": project_id})
    else:
        _rules().delete_many({"service_id": service_id})
        _instances().delete_many({"service_id": service_id})


# --- measuring a condition ----------------------------------------------------------------


def _targets(rule: dict) -> dict[ObjectId, str]:
    """``{service id: name}`` of the services a rule watches."""
    query = {"project_id": rule["project_id"]}
    if rule.get("service_id") is not None:
        query["_id"] = rule["service_id"]
    return {row["_id"]: row["name"] for row in Service._get_collection().find(query, {"name": 1})}


def _metric_values(rule: dict, sids: list[ObjectId], at: datetime) -> dict[ObjectId, float]:
    metric_of = {
        row["_id"]: row["service_id"]
        for row in CpuMetric._get_collection().find(
            {"project_id": rule["project_id"], "service_id": {"$in": sids}}, {"service_id": 1}
        )
    }
    if not metric_of:
        return {}
    name = rule["field"]
    match = {
        "metric_id": {"$in": list(metric_of)},
        "time": {"$gt": at - timedelta(seconds=rule["window"]), "$lte": at},
        name: {"$ne": None},
    }
    aggregate = rule["aggregate"]
    accumulator = {"avg": "$avg", "max": "$max", "p95": "$push"}[aggregate]
    pipeline = [
        {"$match": match},
        {"$group": {"_id": "$metric_id", "v": {accumulator: f"${name}"}}},
    ]
    found = {}
    for row in CpuPoint._get_collection().aggregate(pipeline):
        value = rules.p95(row["v"]) if aggregate == "p95" else row["v"]
        if value is not None:
            found[metric_of[row["_id"]]] = float(value)
    return found


def _log_counts(rule: dict, sids: list[ObjectId], at: datetime) -> dict[ObjectId, float]:
    match = {
        "project_id": rule["project_id"],
        "service_id": {"$in": sids},
        "timestamp": {"$gt": at - timedelta(seconds=rule["window"]), "$lte": at},
    }
    if rule.get("min_severity"):
        match["level"] = {"$gte": SEVERITY_LEVEL[rule["min_severity"]]}
    if rule.get("text"):
        match |= contains_literally("message", rule["text"], ignore_case=True)
    pipeline = [{"$match": match}, {"$group": {"_id": "$service_id", "n": {"$sum": 1}}}]
    counts = {row["_id"]: float(row["n"]) for row in LogEntry._get_collection().aggregate(pipeline)}
    return {sid: counts.get(sid, 0.0) for sid in sids}


def _liveness_holds(rule: dict, state: str | None) -> bool | None:
    if state == "unknown":
        return None  # polymicro was not observing: keep the instance's state
    return state in (rule.get("states") or ())


def _measure(
    rule: dict, targets: dict[ObjectId, str], at: datetime, live_states: dict | None = None
) -> dict[ObjectId, tuple[bool | None, float | None]]:
    """``{service id: (holds, value)}`` of a rule's condition at ``at``."""
    sids = list(targets)
    if not sids:
        return {}
    if rule["kind"] == "liveness":
        if live_states is None:
            live_states = {sid: v.get("state") for sid, v in liveness.liveness_of(sids).items()}
        return {sid: (_liveness_holds(rule, live_states.get(sid)), None) for sid in sids}
    if rule["kind"] == "metric_threshold":
        values = _metric_values(rule, sids, at)
    else:
        values = _log_counts(rule, sids, at)
    return {
        sid: (rules.compare(values.get(sid), rule["operator"], rule["threshold"]), values.get(sid))
        for sid in sids
    }


# --- instances ----------------------------------------------------------------------------


def _labels(rule: dict, service_name: str | None) -> dict:
    labels = {str(k): str(v) for k, v in (rule.get("labels") or {}).items()}
    labels |= {
        "alertname": rule["name"],
        "service": service_name or "",
        "project_id": str(rule["project_id"]),
    }
    return labels


def _annotations(rule: dict, service_name: str | None, value, state: str) -> dict:
    variables = {
        "value": value,
        "service": service_name or "",
        "rule": rule["name"],
        "project_id": str(rule["project_id"]),
        "threshold": rule.get("threshold"),
        "operator": rule.get("operator") or "",
        "window": rule.get("window"),
        "aggregate": rule.get("aggregate") or "",
        "field": rule.get("field") or "",
        "state": state,
    }
    return {
        str(k): rules.render(str(v), variables) for k, v in (rule.get("annotations") or {}).items()
    }


def _public(row: dict, rule_name: str | None) -> dict:
    """The instance as the outbox contract and ``GET /api/alerts`` show it."""
    return {
        "id": str(row["_id"]),
        "rule_id": str(row["rule_id"]),
        "rule_name": rule_name,
        "project_id": str(row["project_id"]),
        "service_id": str(row["service_id"]),
        "service_name": row.get("service_name"),
        "state": row["state"],
        "value": row.get("value"),
        "labels": row.get("labels") or {},
        "annotations": row.get("annotations") or {},
        "active_at": row.get("active_at"),
        "fired_at": row.get("fired_at"),
        "resolved_at": row.get("resolved_at"),
        "fingerprint": row.get("fingerprint"),
    }


def _view(row: dict, rule_name: str | None) -> dict:
    now = clock.now()
    silenced_until = row.get("silenced_until")
    return _public(row, rule_name) | {
        "version": row["version"],
        "changed_at": row.get("changed_at"),
        "evaluated_at": row.get("evaluated_at"),
        "silenced_until": silenced_until,
        "silenced": silenced_until is not None and silenced_until > now,
    }


def _notify(row: dict, rule_name: str | None, now: datetime) -> None:
    """Put a firing/resolved transition in the outbox, then mark it notified."""
    outbox.enqueue(
        _public(row, rule_name), row["state"], key=f"{row['_id']}:{row['version']}", now=now
    )
    _instances().update_one({"_id": row["_id"]}, {"$max": {"notified_version": row["version"]}})


def _announce(rule: dict, before: str, row: dict) -> None:
    events.publish(
        EVENT,
        {"id": row["_id"], "name": rule["name"]},
        project_id=row["project_id"],
        changes={
            "alert": {
                "before": before,
                "after": row["state"],
                "version": row["version"],
                "value": row.get("value"),
                "rule_id": str(row["rule_id"]),
                "service_id": str(row["service_id"]),
                "at": format_time(row["changed_at"]),
            }
        },
    )
    log.info(
        "alert %s on %s: %s -> %s", rule["name"], row.get("service_name"), before, row["state"]
    )


def _unchanged_since(row: dict) -> dict:
    """The compare-and-set filter: the row as read (its ``version``, and its
    ``evaluated_at``, which a later evaluation that changed nothing still moves on)."""
    return {"_id": row["_id"], "version": row["version"], "evaluated_at": row.get("evaluated_at")}


def _transit(
    rule: dict,
    row: dict | None,
    service_id: ObjectId,
    service_name: str | None,
    holds: bool | None,
    value: float | None,
    now: datetime,
    keep: int | None = None,
) -> int:
    """Evaluate one instance and record what changed (a compare-and-set on
    ``version``); returns 1 when this call recorded a transition."""
    if keep is None:
        keep = rule.get("keep_firing_for") or 0
    for_seconds = rule.get("for_seconds") or 0
    for _ in range(CAS_ATTEMPTS):
        if row is not None and row.get("evaluated_at") and row["evaluated_at"] > now:
            return 0  # a later evaluation (another worker's) is recorded: ours is stale
        result = rules.step(row, holds, now, for_seconds, keep)
        if not result.changed:
            if row is not None and (result.fields or value != row.get("value")):
                _instances().update_one(
                    _unchanged_since(row),
                    {"$set": {**result.fields, "value": value, "evaluated_at": now}},
                )
            return 0
        before = (row or {}).get("state") or rules.INACTIVE
        labels = _labels(rule, service_name)
        fields = {
            **result.fields,
            "value": value,
            "evaluated_at": now,
            "changed_at": now,
            "service_name": service_name,
            "labels": labels,
            "annotations": _annotations(rule, service_name, value, result.state),
            "fingerprint": rules.fingerprint(labels),
        }
        silenced = row is not None and (row.get("silenced_until") or now) > now
        notify = result.state in rules.NOTIFIED and not silenced
        if row is None:
            new = {
                "_id": ObjectId(),
                "rule_id": rule["_id"],
                "project_id": rule["project_id"],
                "service_id": service_id,
                "version": 1,
                "notified_version": 0 if notify else 1,
                "silenced_until": None,
                **fields,
            }
            try:
                _instances().insert_one(new)
            except DuplicateKeyError:  # another worker created it: evaluate its row
                row = _instances().find_one({"rule_id": rule["_id"], "service_id": service_id})
                continue
            after = new
        else:
            version = row["version"]
            if not notify:
                fields["notified_version"] = version + 1
            won = _instances().update_one(
                _unchanged_since(row), {"$set": fields, "$inc": {"version": 1}}
            )
            if not won.matched_count:
                row = _instances().find_one({"_id": row["_id"]})
                if row is None:
                    return 0
                continue
            after = {**row, **fields, "version": version + 1}
        if notify:
            _notify(after, rule["name"], now)
        _announce(rule, before, after)
        return 1
    log.warning("alert instance of rule %s on %s: too many writers", rule["_id"], service_id)
    return 0


def _evaluate_rule(rule: dict, now: datetime) -> int:
    rows = {row["service_id"]: row for row in _instances().find({"rule_id": rule["_id"]})}
    for row in rows.values():  # a worker that died between a transition and its enqueue
        if row.get("notified_version", 0) < row["version"] and row["state"] in rules.NOTIFIED:
            _notify(row, rule["name"], now)
    targets = _targets(rule) if rule.get("enabled", True) else {}
    measured = _measure(rule, targets, now)
    recorded = 0
    for sid, row in rows.items():
        if sid not in measured and row["state"] in (rules.PENDING, rules.FIRING):
            # The rule is disabled, or no longer watches this service: it ends.
            recorded += _transit(rule, row, sid, row.get("service_name"), False, None, now, keep=0)
    for sid, (holds, value) in measured.items():
        row = rows.get(sid)
        if row is None and not holds:
            continue  # an instance is created the first time its condition holds
        recorded += _transit(rule, row, sid, targets[sid], holds, value, now)
    return recorded


def evaluate_all() -> int:
    """One evaluation round of every rule (the worker's job); returns the transitions
    recorded.  A rule that fails is logged and the others still run."""
    now = clock.now()
    recorded = 0
    for rule in list(_rules().find({})):
        try:
            recorded += _evaluate_rule(rule, now)
        except Exception:
            log.exception("evaluating alert rule %s failed", rule["_id"])
    return recorded


# --- reading instances, silences ----------------------------------------------------------


def _rule_names(rule_ids) -> dict[ObjectId, str]:
    return {
        row["_id"]: row["name"]
        for row in _rules().find({"_id": {"$in": list(set(rule_ids))}}, {"name": 1})
    }


def _views(rows: list[dict]) -> list[dict]:
    names = _rule_names(row["rule_id"] for row in rows)
    return [_view(row, names.get(row["rule_id"])) for row in rows]


def list_alerts(
    state: str | None = None,
    project_id: ObjectId | None = None,
    rule_id: ObjectId | None = None,
    service_id: ObjectId | None = None,
) -> PagedQuery:
    query = {
        key: value
        for key, value in (
            ("state", state),
            ("project_id", project_id),
            ("rule_id", rule_id),
            ("service_id", service_id),
        )
        if value is not None
    }
    return PagedQuery(
        AlertInstance.objects(__raw__=query).order_by("-changed_at", "-id").as_pymongo(), _views
    )


def _load_alert(alert_id: ObjectId) -> dict:
    row = _instances().find_one({"_id": alert_id})
    if row is None:
        raise NotFound(f"Alert {alert_id} not found.")
    return row


def get_alert(alert_id: ObjectId) -> dict:
    return _views([_load_alert(alert_id)])[0]


def silence(alert_id: ObjectId, until: datetime | None) -> dict:
    """Silence an instance until ``until`` (None: lift the silence).  While silenced its
    transitions are recorded and published but send no notification."""
    row = _load_alert(alert_id)
    if until is not None and until <= clock.now():
        raise InvalidInput.field("until", "A silence must end in the future (null lifts it).")
    before = row.get("silenced_until")
    _instances().update_one({"_id": alert_id}, {"$set": {"silenced_until": until}})
    row["silenced_until"] = until
    names = _rule_names([row["rule_id"]])
    events.publish(
        "alert.silenced",
        {"id": row["_id"], "name": names.get(row["rule_id"])},
        project_id=row["project_id"],
        changes=events.changes_of({"silenced_until": (before, until)}),
    )
    return _view(row, names.get(row["rule_id"]))


# --- backtest -----------------------------------------------------------------------------


def _liveness_history(sids: list[ObjectId], until: datetime) -> dict[ObjectId, list[tuple]]:
    history: dict[ObjectId, list[tuple]] = {sid: [] for sid in sids}
    rows = LivenessTransition._get_collection().find(
        {"service_id": {"$in": sids}, "at": {"$lte": until}}
    )
    for row in sorted(rows, key=lambda r: (r["at"], r["version"])):
        history[row["service_id"]].append((row["at"], row["after"]))
    return history


def _state_at(history: list[tuple], at: datetime) -> str | None:
    state = None
    for when, after in history:
        if when > at:
            break
        state = after
    return state


def backtest(rule_id: ObjectId, since: datetime | None, until: datetime | None) -> dict:
    """The transitions the rule would have produced from ``since`` to ``until`` (one
    evaluation per interval), from the stored history; writes nothing."""
    rule = _load_rule(rule_id)
    every = _every()
    until = until or clock.now()
    since = since or until - timedelta(hours=1)
    if since > until:
        raise InvalidInput.field("since", "`since` must not be after `until`.", location="query")
    steps = int((until - since).total_seconds() // every) + 1
    limit = current_app.config["ALERTS_BACKTEST_MAX_STEPS"]
    if steps > limit:
        raise InvalidInput.field(
            "since",
            f"The period spans {steps} evaluations at {every} s; at most {limit}: shorten it.",
            location="query",
        )
    targets = _targets(rule)
    history = _liveness_history(list(targets), until) if rule["kind"] == "liveness" else {}
    rows: dict[ObjectId, dict | None] = dict.fromkeys(targets)
    transitions = []
    for index in range(steps):
        at = since + timedelta(seconds=index * every)
        live = {sid: _state_at(history[sid], at) for sid in history} if history else None
        if rule["kind"] == "liveness" and live is None:
            live = {}
        for sid, (holds, value) in _measure(rule, targets, at, live).items():
            row = rows[sid]
            result = rules.step(
                row, holds, at, rule.get("for_seconds") or 0, rule.get("keep_firing_for") or 0
            )
            if result.changed:
                transitions.append(
                    {
                        "at": at,
                        "service_id": sid,
                        "service_name": targets[sid],
                        "before": (row or {}).get("state") or rules.INACTIVE,
                        "after": result.state,
                        "value": value,
                    }
                )
            rows[sid] = {**(row or {}), **result.fields}
    return {
        "rule_id": rule_id,
        "since": since,
        "until": until,
        "step_seconds": every,
        "steps": steps,
        "transitions": transitions,
    }
