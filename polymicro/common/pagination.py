"""Paging database queries: counting and slicing happen in the database.

``QueryPage`` is the flask-smorest pager for every list endpoint.  It accepts anything
with ``count()`` and slice access: a mongoengine ``QuerySet`` or a :class:`PagedQuery`.
A page past the end is answered without querying (so ``?page=10**12`` costs nothing).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from flask_smorest import Page

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class QueryPage(Page):
    @property
    def item_count(self) -> int:
        return self.collection.count()

    @property
    def items(self) -> list:
        params = self.page_params
        first = params.first_item
        if first >= params.item_count:
            return []
        return list(self.collection[first : first + params.page_size])


class PagedQuery:
    """A query plus a step applied to each page once it is fetched.

    Used where a page needs related data loaded in bulk (e.g. the services of every
    project on the page, in one query) or rows shaped without building documents.
    """

    def __init__(self, queryset, per_page: Callable[[list], list] | None = None):
        self.queryset = queryset
        self.per_page = per_page

    def count(self) -> int:
        return self.queryset.count()

    def __getitem__(self, window: slice) -> list:
        rows = self._fetch(window)
        return self.per_page(rows) if self.per_page else rows

    def _fetch(self, window: slice) -> list:
        return list(self.queryset[window])

    def __iter__(self):
        return iter(self[0 : self.count()])


# The narrowed range starts this much before the hint, and a page taken from it must end
# strictly inside it: SecantusDB's ``$gte`` on a compound index (``project_id``,
# ``-timestamp``) leaves out the rows *equal* to the bound (measured 2026-11-30 on a
# ``bench/mixed.py`` database: 99 rows for 100 expected, the one missing at the bound;
# ``$gt`` and the rows above the bound were exact).  Stored times have millisecond
# precision.
BOUNDARY_MARGIN = timedelta(milliseconds=1)


class NewestFirst(PagedQuery):
    """A :class:`PagedQuery` ordered newest first (its first sort key is a time field,
    descending) whose pages are fetched from a narrowed time range when that is exact.

    ``narrowed(t)`` is the same query restricted to ``time >= t``.  Its first *n* rows
    are the first *n* of the whole query whenever it has at least *n* rows: a row left
    out is older than ``t``, so it sorts after every row kept.  A page ``[start:stop]``
    is therefore fetched from ``narrowed(t)`` with ``t`` just before the time of the row
    at ``stop - 1`` when this page was last fetched (kept per process under
    ``hint_key``); when that returns a full page ending strictly after ``t`` (see
    :data:`BOUNDARY_MARGIN`) it is the answer, else (rows deleted, retention, the first
    fetch) the whole query is asked, which records the hint for the next time.

    Why (issue 9, measured on SecantusDB with 2,000 logs in a project): SecantusDB does
    not walk an index in sort order under a filter; it fetches every row of the range
    and sorts them (140 ms for the first page of a project's logs, growing by the
    project's 100 logs a second under the batch writer); the range since the last
    page's oldest row holds that page plus the rows written since.
    """

    HINTS_KEPT = 1024
    _hints: dict[Any, Any] = {}
    _hints_lock = threading.Lock()

    def __init__(
        self,
        queryset,
        narrowed: Callable[[Any], Any],
        time_field: str,
        hint_key: str,
        per_page: Callable[[list], list] | None = None,
        counter: AppendCount | None = None,
    ):
        super().__init__(queryset, per_page)
        self.narrowed = narrowed
        self.time_field = time_field
        self.hint_key = hint_key
        self.counter = counter

    def count(self) -> int:
        return self.counter.count() if self.counter is not None else super().count()

    def _fetch(self, window: slice) -> list:
        start, stop = window.start or 0, window.stop
        if stop is None or window.step is not None or stop <= start:
            return super()._fetch(window)
        hint = self._hints.get((self.hint_key, stop))
        rows = None
        if hint is not None:
            bound = hint - BOUNDARY_MARGIN
            rows = list(self.narrowed(bound)[start:stop])
            if len(rows) < stop - start or not rows[-1].get(self.time_field) > bound:
                rows = None  # the range may not hold the page: ask the whole query
        if rows is None:
            rows = list(self.queryset[start:stop])
        if len(rows) == stop - start:
            self._remember(stop, rows[-1].get(self.time_field))
        return rows

    def _remember(self, stop: int, time) -> None:
        if time is not None:
            _keep(self._hints, self._hints_lock, self.HINTS_KEPT, (self.hint_key, stop), time)


class AppendCount:
    """The count of a list whose rows mostly arrive as appends (logs: the newest rows are
    the ones written), kept per process as *the rows older than a bound*, counted once,
    plus the rows since the bound, counted at each call.

    ``between(low, high)`` is the list's query restricted to ``low <= time < high``
    (either may be None: no bound), something with ``count()``.  ``history(floor)`` is
    :func:`polymicro.common.caching.history` for the list's namespace: it raises the
    namespace's append floor to ``floor`` and returns its history generation (None: no
    history, count it all).  ``epoch`` is what else the list depends on that moves with
    the time (the minute of the retention horizon, whose rows a TTL index deletes
    without a write the service sees).

    A call takes ``bound`` = now − :data:`SLACK` (whole milliseconds), raises the floor
    to it and reads the generation.  With a kept ``(generation, epoch, old bound,
    below)`` of this list equal in generation and epoch, the rows older than the old
    bound are still ``below`` (no write older than the floor, which is at least the old
    bound, and no other write, since), so the count is ``below`` + the rows in
    ``[old bound, bound)`` + the rows from ``bound`` on; otherwise ``below`` is counted
    anew.  Either way ``(generation, epoch, bound, below + …)`` is kept for the next
    call: the rows in ``[old bound, bound)`` were counted after the floor reached
    ``bound``, so they stay counted.  The count is exact as of its own queries, like a
    full count; the difference is the rows it reads: those of the last SLACK plus the
    time since the last call, instead of the whole list.

    Why (issue 9): SecantusDB counts by fetching every row of the range (no count from
    an index), 300–500 ms for the 4,000 logs of a project that grows by 100 a second
    under the batch writer of ``bench/mixed.py``, and each refresh of a project's log
    list is a count; the page itself is already narrowed (:class:`NewestFirst`).

    Appends older than the floor (a shipper sending logs more than SLACK late, a replay)
    move the generation, and the next count is a whole one: correct, only not cheaper.
    SLACK covers a shipper's batching (about a second) plus the time to the writer's bump,
    which comes after its commit: SecantusDB took 0.8 s at the median and 1.35 s at p99
    for a batch of 100 under ``bench/mixed.py``; at 2 s every count of the batch phase was
    whole (README, "Totals from the last count plus the rows since").
    """

    SLACK = timedelta(seconds=5)
    KEPT = 1024
    _kept: dict[Any, tuple] = {}
    _kept_lock = threading.Lock()

    def __init__(
        self,
        between: Callable[[Any, Any], Any],
        history: Callable[[datetime], Any],
        key: Any,
        epoch: Any,
        now: Callable[[], datetime],
    ):
        self.between = between
        self.history = history
        self.key = key
        self.epoch = epoch
        self.now = now

    def count(self) -> int:
        bound = _whole_ms(self.now() - self.SLACK)
        generation = self.history(bound)
        if generation is None:
            return self.between(None, None).count()
        kept = self._kept.get(self.key)
        if kept is not None and kept[:2] == (generation, self.epoch) and kept[2] <= bound:
            _, _, old_bound, below = kept
            if bound > old_bound:
                below += self.between(old_bound, bound).count()
        else:
            below = self.between(None, bound).count()
        above = self.between(bound, None).count()
        kept = (generation, self.epoch, bound, below)
        _keep(self._kept, self._kept_lock, self.KEPT, self.key, kept)
        return below + above


def _whole_ms(value: datetime) -> datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _keep(store: dict, lock: threading.Lock, limit: int, key: Any, value: Any) -> None:
    """``store[key] = value`` in a per-process dict of at most ``limit`` entries
    (emptied when full: what it holds is a hint, recomputed when missing)."""
    with lock:
        if len(store) >= limit:
            store.clear()
        store[key] = value
