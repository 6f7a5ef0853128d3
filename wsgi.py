"""WSGI entry point: ``gunicorn wsgi:app``."""

from polymicro import check_database, create_app

app = create_app()
check_database(app)
