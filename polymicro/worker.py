"""``flask worker``: the one background process, running every periodic job.

Periodic work never runs inside a gunicorn worker (architecture.md): it runs here, as
plain functions of the domains' service modules, each registered below with how often
it runs.  ``flask --app polymicro worker`` loops until SIGTERM/SIGINT;
``--once`` runs every job one time and exits (tests, cron), non-zero when a job failed.

Several copies may run at once (one beside each API instance, or a Deployment with
more than one replica): every job makes its state changes with a compare-and-set on a
version field (or a lease with a fencing token), so two workers never produce a
transition twice.  A job that raises is logged and retried at its next turn; it never
stops the others.  Time inside the jobs comes from ``polymicro.common.clock``; the
loop's own cadence uses the process's monotonic time.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[], object]  # returns what it did (a count, a summary), for the log
    every: float  # seconds between two runs of this job


def jobs(app: Flask) -> list[Job]:
    """Every periodic job, with its interval from the settings.

    Each domain that has periodic work contributes its jobs here (one line each).
    """
    from polymicro.alerts import delivery
    from polymicro.alerts import service as alerts
    from polymicro.common import retention
    from polymicro.liveness import service as liveness
    from polymicro.metrics import service as metrics

    webhooks_every = app.config["WEBHOOK_CHECK_SECONDS"]
    found: list[Job] = [
        Job("liveness", in_context(app, liveness.record_due), app.config["LIVENESS_CHECK_SECONDS"]),
        Job("alerts", in_context(app, alerts.evaluate_all), app.config["ALERTS_EVALUATE_SECONDS"]),
        Job("webhook-fan-out", in_context(app, delivery.fan_out), webhooks_every),
        Job("webhook-deliver", in_context(app, delivery.deliver_due), webhooks_every),
        Job("retention", in_context(app, retention.sweep), app.config["RETENTION_SWEEP_SECONDS"]),
        Job(
            "rollups",
            in_context(app, metrics.roll_up_due),
            app.config["ROLLUPS_CHECK_SECONDS"],
        ),
    ]
    return found


def in_context(app: Flask, func: Callable[[], object]) -> Callable[[], object]:
    """``func`` run inside an application context of ``app`` (a job may run in a thread
    of its own, outside the command's context)."""

    def run():
        with app.app_context():
            return func()

    run.__name__ = getattr(func, "__name__", "job")
    return run


@dataclass
class _Schedule:
    job: Job
    due: float = 0.0


def run_round(schedules: list[_Schedule], now: float) -> dict[str, bool]:
    """Run every job that is due at monotonic time ``now``; ``{name: succeeded}``."""
    results = {}
    for schedule in schedules:
        if schedule.due > now:
            continue
        schedule.due = now + schedule.job.every
        started = time.perf_counter()
        try:
            outcome = schedule.job.run()
        except Exception:
            log.exception(
                "job %s failed; it runs again in %.0f s", schedule.job.name, schedule.job.every
            )
            results[schedule.job.name] = False
            continue
        elapsed = (time.perf_counter() - started) * 1000
        log.debug("job %s: %s (%.1f ms)", schedule.job.name, outcome, elapsed)
        results[schedule.job.name] = True
    return results


def serve(app: Flask, once: bool = False, stop: threading.Event | None = None) -> int:
    """Run the jobs until ``stop`` is set (or one round with ``once``)."""
    schedules = [_Schedule(job) for job in jobs(app)]
    if not schedules:
        log.warning("no periodic jobs are configured")
    if once:
        results = run_round(schedules, time.monotonic())
        return 0 if all(results.values()) else 1
    stop = stop or threading.Event()
    log.info(
        "worker started: %s",
        ", ".join(f"{s.job.name} every {s.job.every:g}s" for s in schedules) or "no jobs",
    )
    while not stop.is_set():
        run_round(schedules, time.monotonic())
        next_due = min((s.due for s in schedules), default=time.monotonic() + 1.0)
        stop.wait(max(0.05, min(1.0, next_due - time.monotonic())))
    log.info("worker stopped")
    return 0


@click.command("worker")
@click.option("--once", is_flag=True, help="Run every job one time and exit.")
@with_appcontext
def worker_command(once: bool) -> None:
    """Run the periodic jobs (liveness deadlines, alerts, webhooks, retention)."""
    app = current_app._get_current_object()
    stop = threading.Event()
    if not once:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    raise SystemExit(serve(app, once=once, stop=stop))
