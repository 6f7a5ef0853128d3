"""Helpers of the liveness tests: a clock that tests move, with or without a worker.

``Timeline`` installs a :class:`~polymicro.common.clock.ManualClock` for a ``with``
block.  ``advance(seconds)`` moves it on in steps and, like ``flask worker``, runs the
liveness job after each step (its tick is what tells polymicro it was observing);
``advance(seconds, worker=False)`` is time passing with nothing running at all.
"""

from __future__ import annotations

from datetime import datetime

from polymicro.common import clock
from polymicro.events import service as events
from polymicro.liveness import service as liveness
from polymicro.liveness.models import LivenessState, LivenessTransition

EVENT = "service.liveness_changed"


class Timeline:
    def __init__(self, start: datetime | None = None, step: float = 5):
        self.clock = clock.ManualClock(start)
        self.step = step
        self._use = None

    def __enter__(self) -> Timeline:
        self._use = clock.use(self.clock)
        self._use.__enter__()
        return self

    def __exit__(self, *exc):
        return self._use.__exit__(*exc)

    def now(self) -> datetime:
        return self.clock.now()

    def advance(self, seconds: float, *, worker: bool = True, step: float | None = None) -> int:
        """Move time on by ``seconds``; with ``worker``, run the liveness job after every
        ``step`` seconds.  Returns the transitions the job recorded."""
        step = step or self.step
        recorded = 0
        remaining = seconds
        while remaining > 0:
            moved = min(step, remaining)
            self.clock.advance(moved)
            remaining -= moved
            if worker:
                recorded += liveness.record_due()
        return recorded


def liveness_events(service_id=None) -> list[dict]:
    """Every ``service.liveness_changed`` event, oldest first (of one service if given)."""
    found = []
    after = 0
    while True:
        page = events.read_events(after=after, type=[EVENT], limit=1000)
        found += page["events"]
        if len(page["events"]) < 1000:
            break
        after = page["next_after"]
    if service_id is not None:
        found = [e for e in found if e["subject"]["id"] == str(service_id)]
    return found


def changes(service_id) -> list[tuple[str | None, str]]:
    """``(before, after)`` of a service's liveness events in the order of their
    ``version`` (two writers may publish back-to-back changes in the other order)."""
    found = sorted(liveness_events(service_id), key=lambda e: e["changes"]["liveness"]["version"])
    return [(e["changes"]["liveness"]["before"], e["changes"]["liveness"]["after"]) for e in found]


def state_row(service_id) -> dict | None:
    return LivenessState._get_collection().find_one({"_id": service_id})


def transition_rows(service_id) -> list[dict]:
    rows = LivenessTransition._get_collection().find({"service_id": service_id})
    return sorted(rows, key=lambda row: row["version"])
