"""``flask events export --until TIME [--out FILE]``: save events before retention drops them."""

from __future__ import annotations

import json
import sys

import click
from flask.cli import AppGroup
from pymongo.errors import ConnectionFailure

from polymicro.common.timeutil import format_time, parse_time
from polymicro.events import service
from polymicro.events.schemas import EventSchema

events_cli = AppGroup("events", help="The event log (audit trail and change feed).")


class _Time(click.ParamType):
    name = "time"

    def convert(self, value, param, ctx):
        try:
            return parse_time(value)
        except ValueError:
            self.fail(f"{value!r} is not a time (RFC 3339, e.g. 2026-01-31T00:00:00Z)", param, ctx)


@events_cli.command("export")
@click.option(
    "--until",
    required=True,
    type=_Time(),
    help="Export the events older than this time (RFC 3339; naive means UTC).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="File to write (JSON lines); default: standard output.",
)
def export_command(until, out: str | None) -> None:
    """Write the kept events older than --until as JSON lines, oldest first.

    Each line is an event as GET /api/events returns it.  Nothing is deleted: the
    retention (POLYMICRO_RETENTION_EVENTS_DAYS) does that; run this before.
    """
    schema = EventSchema()
    stream = open(out, "w", encoding="utf-8") if out else sys.stdout  # noqa: SIM115
    count = 0
    try:
        for event in service.iter_events(until):
            stream.write(json.dumps(schema.dump(event), separators=(",", ":")) + "\n")
            count += 1
    except ConnectionFailure as exc:
        raise click.ClickException(f"cannot reach the database ({type(exc).__name__})") from None
    finally:
        if out:
            stream.close()
    click.echo(f"Exported {count} event(s) older than {format_time(until)}.", err=True)
