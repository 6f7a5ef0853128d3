"""WSGI entry point: ``gunicorn wsgi:app``."""

from polymicro import create_app

app = create_app()
