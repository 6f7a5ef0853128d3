"""A WSGI app that answers with the pid of the worker that served it (tests/test_serving.py
serves it with gunicorn.conf.py, to see which worker each connection landed on)."""

import os


def app(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
