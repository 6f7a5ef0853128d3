"""``flask retention apply`` and ``flask retention status``."""

from __future__ import annotations

import json

import click
from flask.cli import AppGroup
from pymongo.errors import ConnectionFailure

from polymicro.common import retention
from polymicro.common.timeutil import format_time

retention_cli = AppGroup("retention", help="How long logs, points and events are kept.")


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "isoformat"):
        return format_time(value)
    if value is not None and not isinstance(value, (bool, int, float, str)):
        return str(value)
    return value


@retention_cli.command("apply")
def apply_command() -> None:
    """Make every TTL index say what the settings say (collMod; 0 drops it).

    The first use of the database by the app or the worker does the same; this is for
    a deployment step or to check it by hand.
    """
    try:
        done = retention.apply_all()
    except ConnectionFailure as exc:
        raise click.ClickException(f"cannot reach the database ({type(exc).__name__})") from None
    for name, action in done.items():
        kind = retention.get(name)
        click.echo(f"{name}: {retention.days(kind)} days ({kind.setting}): {action}")


@retention_cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def status_command(as_json: bool) -> None:
    """Per kind: the setting, the TTL index, the oldest stored row and `behind`."""
    try:
        report = _plain(retention.status())
    except ConnectionFailure as exc:
        raise click.ClickException(f"cannot reach the database ({type(exc).__name__})") from None
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for entry in report:
        index = "none" if entry["index_days"] is None else f"{entry['index_days']:g} days"
        click.echo(
            f"{entry['kind']}: setting {entry['days']} days, index {index}, "
            f"oldest {entry['oldest'] or '-'}, horizon {entry['horizon'] or '-'}"
            + (", BEHIND" if entry["behind"] else "")
        )
        for override in entry["overrides"]:
            click.echo(
                f"  project {override['project_id']}: {override['effective_days']} days, "
                f"oldest {override['oldest'] or '-'}" + (", BEHIND" if override["behind"] else "")
            )
