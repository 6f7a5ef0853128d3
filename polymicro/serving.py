"""gunicorn's threaded worker, accepting from the shared socket by fewest connections.

gunicorn.conf.py names :class:`BalancedThreadWorker` as the worker class.

**The problem.**  With one listening socket shared by the workers (gunicorn's default),
whichever worker wakes first accepts.  A client that opens a few keep-alive connections at
once (a browser's six, a load balancer's pool, wrk's eight) often gets most of them on one
worker, which then does all of its work on one core: 16 of 40 trials of 8 simultaneous
connections to plain ``gthread`` (2 workers) landed 6:2 or worse, 4 of them 7:1
(2026-11-30).  A socket per worker (``reuse_port``) spreads by a hash of each connection:
7:1 or 8:0 with odds of 18 in 256, and a killed worker's queued connections are reset
unless the kernel migrates them (``net.ipv4.tcp_migrate_req``).

**What this worker does.**  Each worker publishes how many connections it holds in a
small table shared by the workers of one master (an anonymous shared mapping made in the
master before the first fork).  When the shared socket is readable and some live sibling
holds fewer connections than this worker, this worker leaves the connection to it: it
stops polling the socket for :data:`HOLD_S` and looks again.  The least-loaded worker
accepts; a tie is a race, as before.  A worker that is not accepting (full, or stopping)
publishes no count, so no sibling waits for it (a worker holding still counts: it
looks again within the hold).  A deferral never lasts more than
:data:`MAX_DEFER_S` in a row: a sibling that does not take the connection by then (hung,
or killed and not yet reaped) gets it accepted here after all, so the worst a new
connection meets is that delay, and no connection is ever refused or dropped.

Nothing changes for one worker (no sibling), and with ``reuse_port`` each worker has a
socket of its own, so this worker then behaves exactly as ``gthread``.  The table has
:data:`SLOTS` rows; a worker that finds none free (more workers than that) accepts as
plain ``gthread`` does.

Only the standard library and gunicorn are used here; importing this module from the
master (gunicorn loads the worker class there) imports the ``polymicro`` package, which
connects to nothing and starts nothing at import.
"""

from __future__ import annotations

import mmap
import os
import time

from gunicorn.workers.gthread import ThreadWorker

SLOTS = 64
HOLD_S = 0.005
MAX_DEFER_S = 0.05
# Published instead of a count by a worker that is not accepting.
NOT_ACCEPTING = 1 << 62
# A deferral episode ends when no deferral followed the last one for this long.
_EPISODE_GAP_S = 4 * HOLD_S

# The clock of the hold and deferral bounds (tests replace it).
_now = time.monotonic

_ROW = 2  # (pid, published connection count); pid 0 = free, -1 = reserved by the master


class Board:
    """The shared table: a row per worker of one master, int64 cells."""

    def __init__(self, slots: int = SLOTS) -> None:
        self._map = mmap.mmap(-1, slots * _ROW * 8)  # anonymous, MAP_SHARED: survives fork
        self.cells = memoryview(self._map).cast("q")
        self.slots = slots

    def claim(self) -> int | None:
        """A free row (never used, or its worker is gone), reserved; None when full.
        Called in the master, which is single-threaded, before it forks the worker."""
        for slot in range(self.slots):
            pid = self.cells[slot * _ROW]
            if pid == 0 or (pid > 0 and not _alive(pid)):
                self.cells[slot * _ROW] = -1
                self.cells[slot * _ROW + 1] = NOT_ACCEPTING
                return slot
        return None

    def publish(self, slot: int, pid: int, count: int) -> None:
        self.cells[slot * _ROW + 1] = count
        self.cells[slot * _ROW] = pid

    def least_loaded_sibling(self, slot: int) -> tuple[int, int] | None:
        """(pid, count) of the accepting sibling with the fewest connections."""
        best = None
        for other in range(self.slots):
            if other == slot:
                continue
            pid = self.cells[other * _ROW]
            if pid <= 0:
                continue
            count = self.cells[other * _ROW + 1]
            if count < NOT_ACCEPTING and (best is None or count < best[1]):
                best = (pid, count)
        return best


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_board: Board | None = None


def board() -> Board:
    """The master's table, made on first use (in the master, before the first fork)."""
    global _board
    if _board is None:
        _board = Board()
    return _board


class BalancedThreadWorker(ThreadWorker):
    """``gthread``, accepting from a shared socket only while no live sibling holds fewer
    connections (module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        self._nr_conns = 0
        self._slot: int | None = None
        self._pid = 0
        self._board: Board | None = None
        self._hold_until = 0.0
        self._defer_started = 0.0
        self._last_defer = 0.0
        super().__init__(*args, **kwargs)
        # In the master: a row reserved before the fork.  With reuse_port each worker has
        # a socket of its own, and a deferred connection would only wait.
        if not self.cfg.reuse_port:
            self._board = board()
            self._slot = self._board.claim()

    # -- the published count --------------------------------------------------------------

    @property
    def nr_conns(self) -> int:
        return self._nr_conns

    @nr_conns.setter
    def nr_conns(self, value: int) -> None:
        self._nr_conns = value
        self._publish()

    def _publish(self) -> None:
        if self._slot is None or not self._pid:  # no row, or still in the master
            return
        # A worker holding (accept) still takes connections, in a few ms: it keeps its count.
        accepting = (self._accepting or self._hold_until) and self.alive
        count = self._nr_conns if accepting else NOT_ACCEPTING
        self._board.publish(self._slot, self._pid, count)

    def init_process(self) -> None:
        self._pid = os.getpid()
        self._publish()  # the row now carries this process's pid
        super().init_process()

    def set_accept_enabled(self, enabled: bool) -> None:
        if enabled and self._hold_until:
            if _now() < self._hold_until:
                return  # leaving the socket to a sibling for now (accept)
            self._hold_until = 0.0
        super().set_accept_enabled(enabled)
        self._publish()

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        self._publish()  # stopping: no sibling waits for this worker any more

    # -- accepting --------------------------------------------------------------------------

    def should_defer(self) -> bool:
        """Whether a live sibling that accepts holds fewer connections than this worker."""
        if self._slot is None:
            return False
        best = self._board.least_loaded_sibling(self._slot)
        return best is not None and best[1] < self._nr_conns and _alive(best[0])

    def accept(self, listener) -> None:
        if self.should_defer():
            now = _now()
            if now - self._last_defer > _EPISODE_GAP_S:
                self._defer_started = now
            self._last_defer = now
            if now - self._defer_started < MAX_DEFER_S:
                self._hold_until = now + HOLD_S
                self.set_accept_enabled(False)
                return
        super().accept(listener)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # While holding, wake up when the hold ends, to look at the socket again.
        if self._hold_until:
            timeout = max(0.0, min(timeout, self._hold_until - _now()))
        super().wait_for_and_dispatch_events(timeout)
