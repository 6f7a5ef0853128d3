"""The liveness rules as pure functions (polymicro/liveness/rules.py): what a heartbeat
stores, what a stored row means at a given time, and uptime from transitions.  No
database, no clock: every instant is given."""

from __future__ import annotations

from datetime import timedelta

import pytest

from polymicro.liveness import rules
from polymicro.liveness.rules import BEAT, FAIL, INGEST, START, Outage, Policy, Signal
from polymicro.services.models import HEALTHS, LIVENESS_STATES, STATUSES
from tests.factories import at

POLICY = Policy(ttl=60, grace=60, failures=1)
OFFLINE = timedelta(hours=1)
CONFIG = {"HEARTBEAT_TTL_SECONDS": 60, "HEARTBEAT_GRACE_SECONDS": 30}


def beat(row=None, when=0, policy=POLICY, **signal):
    """The row after a signal at ``at(seconds=when)``."""
    return rules.apply(row, Signal(**signal), policy, at(seconds=when))


def state(row, when, outage=None):
    return rules.derive(row, at(seconds=when), outage, OFFLINE).state


# --- settings ---------------------------------------------------------------------------


def test_defaults_come_from_the_settings_and_grace_is_at_least_one_interval():
    assert Policy.of({}, CONFIG) == Policy(ttl=60, grace=60, failures=1)  # 30 < one TTL
    assert Policy.of({"heartbeat_ttl": 10}, CONFIG) == Policy(ttl=10, grace=30, failures=1)
    assert Policy.of({"heartbeat_ttl": 300}, CONFIG).grace == 300


def test_a_service_s_own_settings_win_even_a_grace_of_zero():
    own = {"heartbeat_ttl": 5, "heartbeat_grace": 0, "heartbeat_failures": 3}
    assert Policy.of(own, CONFIG) == Policy(ttl=5, grace=0, failures=3)


# --- what a heartbeat stores ------------------------------------------------------------


def test_a_heartbeat_stores_its_time_and_the_deadline_ttl_plus_grace_later():
    row = beat(when=10)
    assert row["last_seen"] == at(seconds=10)
    assert row["deadline"] == row["due"] == at(seconds=130)
    assert row["window"] == 120
    assert (row["reported"], row["failures"], row["runs"]) == ("passing", 0, [])


def test_a_reported_status_and_note_are_kept_until_the_next_heartbeat():
    row = beat(status="warning", note="disk 91%")
    assert (row["reported"], row["note"]) == ("warning", "disk 91%")
    assert row["reported_reason"] == "heartbeat reported warning: disk 91%"
    assert beat(row, 30)["reported"] == "passing"


def test_ingest_says_only_that_the_service_is_alive():
    row = beat(status="warning")
    after = beat(row, 30, kind=INGEST)
    assert after["reported"] == "warning"
    assert after["last_seen"] == at(seconds=30)
    assert beat(kind=INGEST)["reported"] == "passing"  # a first sign of life


def test_one_failure_is_critical_by_default():
    row = beat(kind=FAIL, note="exit 1")
    assert row["reported"] == "critical"
    assert row["reported_reason"] == "run 'default' failed: exit 1"


def test_n_consecutive_failures_are_needed_before_critical():
    policy = Policy(ttl=60, grace=60, failures=3)
    row = beat(policy=policy)
    row = beat(row, 10, policy, status="critical")
    assert (row["reported"], row["failures"]) == ("passing", 1)
    row = beat(row, 20, policy, status="critical")
    assert row["reported"] == "passing"
    assert "2 of 3 before critical" in row["reported_reason"]
    row = beat(row, 30, policy, status="critical")
    assert (row["reported"], row["failures"]) == ("critical", 3)
    row = beat(row, 40, policy)
    assert (row["reported"], row["failures"]) == ("passing", 0)


def test_a_failure_between_successes_starts_the_count_again():
    policy = Policy(ttl=60, grace=60, failures=2)
    row = beat(policy=policy)
    for when in range(10, 100, 20):
        row = beat(row, when, policy, status="critical")
        assert row["reported"] == "passing"
        row = beat(row, when + 10, policy)
    assert row["failures"] == 0


def test_a_first_heartbeat_that_fails_below_the_count_shows_warning():
    assert beat(policy=Policy(60, 60, 2), kind=FAIL)["reported"] == "warning"


def test_a_start_opens_a_run_due_within_the_grace():
    row = beat(when=0, kind=START)
    assert row["runs"] == [{"id": "default", "started": at()}]
    assert row["run_deadline"] == row["due"] == at(seconds=60)  # grace, not ttl + grace
    done = beat(row, 20)
    assert (done["runs"], done["run_deadline"], done["due"]) == ([], None, at(seconds=140))


def test_overlapping_runs_are_paired_by_run_id():
    row = beat(when=0, kind=START, run_id="a")
    row = beat(row, 10, kind=START, run_id="b")
    assert [run["id"] for run in row["runs"]] == ["a", "b"]
    row = beat(row, 20, run_id="b")  # b finishes; a is still open and due first
    assert [run["id"] for run in row["runs"]] == ["a"]
    assert row["due"] == at(seconds=60)
    row = beat(row, 30, kind=FAIL, run_id="a")
    assert row["runs"] == []
    assert row["reported"] == "critical"
    assert row["reported_reason"] == "run 'a' failed"


def test_a_finish_without_its_start_is_a_plain_heartbeat():
    row = beat(when=0, kind=START, run_id="a")
    after = beat(row, 10, run_id="other")
    assert [run["id"] for run in after["runs"]] == ["a"]
    assert after["last_seen"] == at(seconds=10)


def test_a_restarted_run_keeps_one_entry_with_the_new_start():
    row = beat(when=0, kind=START, run_id="a")
    row = beat(row, 50, kind=START, run_id="a")
    assert row["runs"] == [{"id": "a", "started": at(seconds=50)}]


def test_open_runs_are_capped_oldest_first():
    row = None
    for n in range(rules.MAX_OPEN_RUNS + 5):
        row = beat(row, n, kind=START, run_id=f"r{n}")
    assert len(row["runs"]) == rules.MAX_OPEN_RUNS
    assert row["runs"][0]["id"] == "r5"


# --- what a stored row means at a time --------------------------------------------------


def test_no_heartbeat_means_liveness_is_off():
    assert rules.derive(None, at(), None, OFFLINE) == rules.NOT_TRACKED


def test_before_the_deadline_the_reported_status_holds():
    row = beat(status="warning")
    derived = rules.derive(row, at(seconds=119), None, OFFLINE)
    assert (derived.state, derived.since, derived.next_check) == ("warning", at(), at(seconds=120))


def test_a_heartbeat_one_second_late_never_changes_anything():
    """Heartbeats every TTL + 1 s: the deadline (TTL + grace) is never reached."""
    row = beat()
    for n in range(1, 50):
        when = n * 61
        assert state(row, when - 0.001) == "passing"
        row = beat(row, when)
    assert state(row, 49 * 61 + 119) == "passing"


def test_at_the_deadline_a_silent_service_is_critical_then_offline():
    row = beat()
    derived = rules.derive(row, at(seconds=120), None, OFFLINE)
    assert (derived.state, derived.since, derived.next_check) == (
        "critical",
        at(seconds=120),
        at(seconds=120 + 3600),
    )
    assert "no heartbeat since 2026-01-01T00:00:00.000Z" in derived.reason
    offline = rules.derive(row, at(seconds=120 + 3600), None, OFFLINE)
    assert (offline.state, offline.since, offline.next_check) == (
        "offline",
        at(seconds=3720),
        None,
    )


def test_a_run_that_does_not_finish_within_the_grace_is_critical():
    row = beat(when=0, kind=START, run_id="nightly")
    assert state(row, 59) == "passing"
    derived = rules.derive(row, at(seconds=60), None, OFFLINE)
    assert derived.state == "critical"
    assert "run 'nightly' started at 2026-01-01T00:00:00.000Z did not finish" in derived.reason


def test_coming_back_starts_the_reported_state_anew():
    row = beat()
    back = beat(row, 500)
    derived = rules.derive(back, at(seconds=501), None, OFFLINE)
    assert (derived.state, derived.since) == ("passing", at(seconds=500))


# --- polymicro's own outage -------------------------------------------------------------

OUTAGE = Outage(start=at(seconds=30), end=at(seconds=600))


def test_a_deadline_passed_during_an_outage_is_unknown_for_one_interval_after_it():
    row = beat()  # due at 120, inside the outage
    derived = rules.derive(row, at(seconds=600), OUTAGE, OFFLINE)
    assert (derived.state, derived.next_check) == ("unknown", at(seconds=720))
    assert "not observing" in derived.reason
    assert state(row, 719, OUTAGE) == "unknown"
    after = rules.derive(row, at(seconds=720), OUTAGE, OFFLINE)
    assert (after.state, after.since) == ("critical", at(seconds=720))


def test_a_service_that_pings_after_the_recovery_is_never_critical():
    row = beat()
    row = beat(row, 650)
    assert state(row, 651, OUTAGE) == "passing"


def test_a_deadline_shortly_after_the_recovery_is_unknown_too():
    """The last heartbeat came just before the outage; its deadline falls after the
    recovery but before the service had one whole interval to ping again."""
    row = beat(when=25)  # due at 145
    short = Outage(start=at(seconds=30), end=at(seconds=100))
    assert state(row, 144, short) == "passing"
    assert state(row, 150, short) == "unknown"
    assert state(row, 220, short) == "critical"  # 100 + 120


def test_a_service_already_missing_before_the_outage_stays_critical():
    row = beat(when=-500)  # due at -380: missed while polymicro was observing
    assert state(row, 600, OUTAGE) == "critical"


def test_a_long_outage_goes_from_unknown_to_offline_never_critical():
    long = Outage(start=at(seconds=30), end=at(120))
    row = beat()
    assert state(row, 7200, long) == "unknown"
    derived = rules.derive(row, at(seconds=7320), long, OFFLINE)
    assert (derived.state, derived.since) == ("offline", at(seconds=7320))


# --- the dashboard's fields --------------------------------------------------------------


@pytest.mark.parametrize("name", LIVENESS_STATES)
def test_every_state_maps_onto_the_dashboard_s_allowed_values(name):
    assert rules.HEALTH[name] in HEALTHS
    assert rules.STATUS[name] in STATUSES


# --- uptime -------------------------------------------------------------------------------


def test_uptime_counts_up_against_down_and_leaves_unknown_and_untracked_out():
    segments = [
        (at(0), None),  # not tracked yet
        (at(10), "passing"),  # 30 min up
        (at(40), "critical"),  # 10 min down
        (at(50), "unknown"),  # 10 min unknown
        (at(60), "warning"),  # 20 min up (until the end)
    ]
    assert rules.uptime(segments, at(0), at(80)) == pytest.approx(100 * 50 / 60, abs=0.001)


def test_uptime_of_a_window_cuts_the_segments_at_its_start():
    segments = [(at(0), "critical"), (at(50), "passing")]
    assert rules.uptime(segments, at(40), at(60)) == 50.0
    assert rules.uptime(segments, at(55), at(60)) == 100.0


def test_uptime_with_nothing_known_is_none():
    assert rules.uptime([(at(0), None)], at(0), at(10)) is None
    assert rules.uptime([(at(0), "unknown")], at(0), at(10)) is None


def test_signals_default_to_a_passing_beat():
    assert Signal() == Signal(kind=BEAT, status="passing", note=None, run_id=None)
