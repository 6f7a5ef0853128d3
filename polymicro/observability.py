"""Request ids, structured logs and Prometheus metrics (being written)."""

from __future__ import annotations

from flask import Flask


def init_observability(app: Flask) -> None:
    """Attach request ids, JSON logging and /metrics to the app."""
