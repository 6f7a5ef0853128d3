"""The pure part of alerting: conditions, the state machine, templates, fingerprints.

No database and no clock here: evaluation (``service.evaluate_all``) and the backtest
(``service.backtest``) both call :func:`step` with what they measured, so a replay
gives exactly the transitions the worker would have recorded.

The state machine (Prometheus' semantics)
    ``inactive``/``resolved`` --holds--> ``pending`` (``active_at`` = now), or straight
    to ``firing`` when ``for`` is 0.  ``pending`` --holds, now >= active_at + for-->
    ``firing``; ``pending`` --does not hold--> ``inactive`` (the wait starts again).
    ``firing`` --does not hold for longer than keep_firing_for since it last held-->
    ``resolved``.  ``holds`` None (a liveness rule on a service in ``unknown``: polymicro
    itself was not observing) changes nothing: the instance keeps its state.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

INACTIVE, PENDING, FIRING, RESOLVED = "inactive", "pending", "firing", "resolved"
NOTIFIED = (FIRING, RESOLVED)  # the transitions that send a notification

COMPARE = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


def compare(value: float | None, op: str, threshold: float) -> bool:
    """``value op threshold``; no value (no data in the window) never holds."""
    return value is not None and COMPARE[op](value, threshold)


def p95(values: list[float]) -> float | None:
    """The 95th percentile by nearest rank (the smallest value with at least 95% of the
    values at or below it); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Step:
    state: str  # the state after the step
    changed: bool  # a transition (the state differs)
    fields: dict = field(default_factory=dict)  # what to store on the instance


def step(
    row: dict | None, holds: bool | None, now: datetime, for_seconds: int, keep_firing_for: int
) -> Step:
    """One evaluation of an instance (``row``: its stored fields, None: no row yet)."""
    row = row or {}
    state = row.get("state") or INACTIVE
    if holds is None:
        return Step(state, False)
    if holds:
        if state in (INACTIVE, RESOLVED):
            if for_seconds <= 0:
                return Step(
                    FIRING,
                    True,
                    {
                        "state": FIRING,
                        "active_at": now,
                        "fired_at": now,
                        "resolved_at": None,
                        "last_true_at": now,
                    },
                )
            return Step(
                PENDING,
                True,
                {
                    "state": PENDING,
                    "active_at": now,
                    "fired_at": None,
                    "resolved_at": None,
                    "last_true_at": now,
                },
            )
        if state == PENDING and now >= row["active_at"] + timedelta(seconds=for_seconds):
            return Step(FIRING, True, {"state": FIRING, "fired_at": now, "last_true_at": now})
        return Step(state, False, {"last_true_at": now})
    if state == PENDING:
        return Step(INACTIVE, True, {"state": INACTIVE, "active_at": None})
    if state == FIRING:
        last = row.get("last_true_at")
        if (
            keep_firing_for > 0
            and last is not None
            and now - last < timedelta(seconds=keep_firing_for)
        ):
            return Step(FIRING, False)
        return Step(RESOLVED, True, {"state": RESOLVED, "resolved_at": now})
    return Step(state, False)


# --- templates ----------------------------------------------------------------------------

TEMPLATE_VARIABLES = (
    "value",
    "service",
    "rule",
    "project_id",
    "threshold",
    "operator",
    "window",
    "aggregate",
    "field",
    "state",
)
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
BRACED = re.compile(r"\{([^{}]*)\}")


def unknown_placeholders(template: str) -> list[str]:
    """What a template puts in braces that is not a variable's bare name (attribute
    access, indexes and format specs included)."""
    return sorted({name for name in BRACED.findall(template)} - set(TEMPLATE_VARIABLES))


def format_value(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return f"{value:.6g}"
    return str(value)


def render(template: str, variables: dict) -> str:
    """``{name}`` replaced by the variable's text; nothing else is interpreted (no
    attribute or index access, no format spec: user text never reaches str.format)."""

    def sub(match: re.Match) -> str:
        name = match.group(1)
        if name not in variables:
            return match.group(0)
        return format_value(variables[name])

    return PLACEHOLDER.sub(sub, template)


def fingerprint(labels: dict) -> str:
    """A stable id of a label set (Alertmanager's ``fingerprint``): 16 hex digits."""
    text = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
