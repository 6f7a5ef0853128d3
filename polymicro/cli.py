"""Flask CLI commands (``flask --app polymicro <command>``)."""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    """Attach the commands to the app (called by create_app)."""
