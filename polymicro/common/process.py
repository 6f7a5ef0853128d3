"""This process's id, without a system call each time it is asked.

``os.getpid()`` is a system call on every call (glibc stopped caching it in 2.25), and a
cached hit asked it four times: the thread's Redis connection check
(common/cache_reads.py) and prometheus_client's multiprocess values, which check the pid
on every ``inc``/``observe`` (the request counter, the latency histogram's sum and
bucket).  strace of a gunicorn worker under wrk on a cached log list (2026-11-30): 5,554
``getpid`` calls for about 1,370 requests; on the benchmarks' 2-core VM a system call
costs microseconds.  The id is read once at import and again in every forked child
(``os.register_at_fork``), which is exactly when it changes (gunicorn forks its workers;
``exec`` starts a new interpreter that imports this afresh).
"""

from __future__ import annotations

import os

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def pid() -> int:
    """``os.getpid()``, as of the last fork."""
    return _pid
