"""Flask CLI commands (``flask --app polymicro <command>``).

A thin click layer: the work lives in plain functions (``polymicro.demo``).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import urlsplit

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from pymongo.errors import ConnectionFailure

from polymicro import demo
from polymicro.auth import service as auth
from polymicro.auth.models import User
from polymicro.events.cli import events_cli
from polymicro.operations.cli import retention_cli

DEMO_ADMIN = "admin"
CREDENTIALS_FILE = "demo-admin.txt"  # in the instance folder, readable by its owner only


def register(app: Flask) -> None:
    """Attach the commands to the app (called by create_app)."""
    from polymicro.worker import worker_command

    app.cli.add_command(seed_demo_command)
    app.cli.add_command(create_admin_command)
    app.cli.add_command(worker_command)
    app.cli.add_command(events_cli)
    app.cli.add_command(retention_cli)
    app.cli.add_command(rollups_command)


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
    points only when it has none.  The writes go through the service layer, which
    invalidates the cached reads they change (no cache is cleared).
    """
    try:
        _ensure_demo_admin()
        if if_empty and demo.database_has_projects():
            click.echo("The database already has projects: nothing seeded (--if-empty).")
            return
        click.echo(f"Seeding demo data: {days} day(s), seed {seed}.")
        summary = demo.seed_demo(days=days, seed=seed, progress=_progressbar)
    except ConnectionFailure as exc:  # includes ServerSelectionTimeoutError
        raise click.ClickException(_unreachable(exc)) from None
    click.echo(demo.describe(summary))


def _ensure_demo_admin() -> None:
    """A database without any user gets the demo admin, with a fresh random password that
    is printed and kept in the instance folder (where ``make run`` shows it)."""
    if User.objects.count():
        return
    password = secrets.token_urlsafe(12)
    auth.create_admin(DEMO_ADMIN, f"{DEMO_ADMIN}@localhost", password)
    path = Path(current_app.instance_path) / CREDENTIALS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{DEMO_ADMIN} {password}\n", encoding="utf-8")
    path.chmod(0o600)
    click.echo(f"Created the demo admin: username {DEMO_ADMIN!r}, password {password!r}")
    click.echo(f"(kept in {path}; change it with PUT /api/auth/me)")


@click.command("create-admin")
@click.option("--username", default=DEMO_ADMIN, show_default=True)
@click.option("--email", default=None, help="Default: <username>@localhost.")
@click.option(
    "--password",
    envvar="POLYMICRO_ADMIN_PASSWORD",
    default=None,
    help="Default: a random one, printed once. Also read from POLYMICRO_ADMIN_PASSWORD.",
)
@with_appcontext
def create_admin_command(username: str, email: str | None, password: str | None) -> None:
    """Create an admin, or make an existing user an active admin with a new password."""
    generated = password is None
    password = password or secrets.token_urlsafe(12)
    if len(password) < 8:
        raise click.BadParameter("at least 8 characters", param_hint="--password")
    try:
        user, created = auth.create_admin(username, email or f"{username}@localhost", password)
    except ConnectionFailure as exc:
        raise click.ClickException(_unreachable(exc)) from None
    click.echo(f"{'Created' if created else 'Updated'} admin {user['username']!r}.")
    if generated:
        click.echo(f"Password: {password}  (shown once)")


@click.command("rollups")
@click.argument("action", type=click.Choice(["rebuild", "run", "retention"]))
@with_appcontext
def rollups_command(action: str) -> None:
    """CPU rollups: `rebuild` marks every hour with points (entries stored before
    rollups existed), `run` recomputes every marked hour now (what the worker does),
    `retention` applies POLYMICRO_RETENTION_ROLLUPS_*_DAYS to the TTL indexes."""
    from polymicro.metrics import service as metrics

    if action == "rebuild":
        click.echo(f"Marked {metrics.rebuild_rollups()} hours; the worker rolls them up.")
    elif action == "run":
        total = 0
        while done := metrics.recompute_rollups(limit=500):
            total += done
        click.echo(f"Recomputed {total} hours.")
    else:
        click.echo(f"TTL seconds: {metrics.rollup_retention(current_app.config)}")
