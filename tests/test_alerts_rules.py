"""The pure alerting rules: the state machine, comparisons, p95, templates."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from polymicro.alerts import rules
from polymicro.alerts.rules import FIRING, INACTIVE, PENDING, RESOLVED

T0 = datetime(2026, 1, 1)


def run(series: list[bool | None], for_seconds: int, keep: int, every: int = 15) -> list:
    """The transitions of one instance evaluated every ``every`` s over ``series``."""
    row, found = None, []
    for index, holds in enumerate(series):
        now = T0 + timedelta(seconds=index * every)
        result = rules.step(row, holds, now, for_seconds, keep)
        if result.changed:
            found.append(((row or {}).get("state") or INACTIVE, result.state, index))
        row = {**(row or {}), **result.fields}
    return found


def test_for_zero_fires_at_once_and_resolves_at_once():
    assert run([False, True, True, False, False], 0, 0) == [
        (INACTIVE, FIRING, 1),
        (FIRING, RESOLVED, 3),
    ]


def test_pending_fires_at_active_at_plus_for():
    # active at index 1 (15 s), for 30 s: fires at index 3 (45 s), not before.
    assert run([False, True, True, True, True], 30, 0) == [
        (INACTIVE, PENDING, 1),
        (PENDING, FIRING, 3),
    ]


def test_pending_that_stops_holding_is_inactive_again():
    assert run([True, False, True, True, True], 30, 0) == [
        (INACTIVE, PENDING, 0),
        (PENDING, INACTIVE, 1),
        (INACTIVE, PENDING, 2),
        (PENDING, FIRING, 4),
    ]


def test_a_series_alternating_around_the_threshold_fires_once_and_resolves_once():
    """No flap: keep_firing_for bridges the gaps of an alternating series."""
    series = [True, False] * 20 + [False] * 10
    assert run(series, 0, 45) == [
        (INACTIVE, FIRING, 0),
        (FIRING, RESOLVED, 41),
    ]  # last held at 38: 45 s later


def test_unknown_keeps_the_state():
    assert run([True, None, None, None, True], 0, 0) == [(INACTIVE, FIRING, 0)]
    assert run([None, None], 0, 0) == []
    assert run([True, True, None, None, False], 15, 0) == [
        (INACTIVE, PENDING, 0),
        (PENDING, FIRING, 1),
        (FIRING, RESOLVED, 4),
    ]


def test_resolved_can_fire_again():
    assert run([True, False, True], 0, 0) == [
        (INACTIVE, FIRING, 0),
        (FIRING, RESOLVED, 1),
        (RESOLVED, FIRING, 2),
    ]


@pytest.mark.parametrize(
    ("value", "op", "threshold", "expected"),
    [
        (81, ">", 80, True),
        (80, ">", 80, False),
        (80, ">=", 80, True),
        (1, "<", 2, True),
        (2, "<=", 2, True),
        (2, "==", 2, True),
        (2, "!=", 2, False),
        (None, "<", 2, False),
    ],
)
def test_compare(value, op, threshold, expected):
    assert rules.compare(value, op, threshold) is expected


def test_p95_by_nearest_rank():
    assert rules.p95([]) is None
    assert rules.p95([5.0]) == 5.0
    assert rules.p95([float(i) for i in range(1, 101)]) == 95.0
    assert rules.p95([float(i) for i in range(20, 0, -1)]) == 19.0


def test_templates_replace_only_known_names_and_never_interpret():
    variables = {"value": 91.23456789, "service": "api", "threshold": 80.0}
    assert rules.render("{service}: {value} > {threshold}", variables) == "api: 91.2346 > 80"
    # attribute access, indexes and format specs stay literal text
    for hostile in ("{value.__class__}", "{service[0]}", "{value:>10}", "{other}", "{{value}}"):
        out = rules.render(hostile, variables)
        assert "class" not in out or out == hostile
    assert rules.render("{value.__class__}", variables) == "{value.__class__}"
    assert rules.render("{nope}", variables) == "{nope}"
    assert rules.unknown_placeholders("{value} {nope} {service}") == ["nope"]


def test_fingerprint_is_stable_and_order_free():
    assert rules.fingerprint({"a": "1", "b": "2"}) == rules.fingerprint({"b": "2", "a": "1"})
    assert rules.fingerprint({"a": "1"}) != rules.fingerprint({"a": "2"})
    assert len(rules.fingerprint({})) == 16
