"""Flask CLI commands (``flask --app polymicro <command>``).

A thin click layer: the work lives in plain functions (``polymicro.demo``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from pymongo.errors import ConnectionFailure

from polymicro import demo
from polymicro.extensions import cache


def register(app: Flask) -> None:
    """Attach the commands to the app (called by create_app)."""
    app.cli.add_command(seed_demo_command)


def _progressbar(items: list[demo.ServiceWork]):
    return click.progressbar(
        items,
        label="Generating logs and CPU metrics",
        item_show_func=lambda item: item.name if item else None,
    )


def _unreachable(exc: ConnectionFailure) -> str:
    uri = urlsplit(current_app.config["MONGODB_URI"])
    where = f"{uri.hostname or '?'}:{uri.port or 27017}"
    return (
        f"cannot reach MongoDB at {where} ({type(exc).__name__}); start the database "
        "(make run does) or set POLYMICRO_MONGODB_URI."
    )


@click.command("seed-demo")
@click.option(
    "--days",
    type=click.IntRange(1, 90),
    default=demo.DEFAULT_DAYS,
    show_default=True,
    help="How many days of logs and CPU points to generate, up to now.",
)
@click.option(
    "--seed",
    type=int,
    default=demo.DEFAULT_SEED,
    show_default=True,
    help="Random seed: the same seed gives the same data (relative to now).",
)
@click.option(
    "--if-empty",
    is_flag=True,
    help="Do nothing when the database already has any project.",
)
@with_appcontext
def seed_demo_command(days: int, seed: int, if_empty: bool) -> None:
    """Fill the database with demo projects, services, logs and CPU metrics.

    Idempotent: demo projects are found by name and reused; a service gets logs and
    points only when it has none.
    """
    try:
        if if_empty and demo.database_has_projects():
            click.echo("The database already has projects: nothing seeded (--if-empty).")
            return
        click.echo(f"Seeding demo data: {days} day(s), seed {seed}.")
        summary = demo.seed_demo(days=days, seed=seed, progress=_progressbar)
    except ConnectionFailure as exc:  # includes ServerSelectionTimeoutError
        raise click.ClickException(_unreachable(exc)) from None
    if any(summary[key] for key in ("projects", "services", "points", "logs")):
        _clear_cache()  # the data was written past the service layer's invalidation
    click.echo(demo.describe(summary))


def _clear_cache() -> None:
    try:
        cache.clear()
    except Exception as exc:  # a cache that is down must not fail the seeding
        click.echo(f"Warning: could not clear the cache ({type(exc).__name__}).", err=True)
