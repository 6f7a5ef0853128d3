"""HTTP hardening: security headers on every response, and CORS (flask-cors).

- Every response: ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
  ``Referrer-Policy: no-referrer``, ``Cross-Origin-Resource-Policy: same-origin``; a
  ``Content-Security-Policy`` of ``default-src 'none'`` except on the doc pages (they
  load their scripts); ``Cache-Control: no-store`` under /api/auth; HSTS over HTTPS.
- CORS only for the origins in ``CORS_ORIGINS`` (none by default: no ``Access-Control-*``
  header at all), never with credentials (bearer tokens, no cookies).
"""

from __future__ import annotations

from flask import Flask, request
from flask_cors import CORS

from polymicro.security.identity import API_KEY_HEADER

DOC_PATHS = ("/docs", "/redoc")


def init_hardening(app: Flask) -> None:
    _init_cors(app)
    app.after_request(_security_headers)


def _init_cors(app: Flask) -> None:
    origins = [o.strip() for o in app.config["CORS_ORIGINS"].split(",") if o.strip()]
    if not origins:
        return  # no Access-Control-* headers at all: browsers keep other origins out
    CORS(
        app,
        resources={r"/api/*": {"origins": origins}},
        supports_credentials=False,  # bearer tokens, no cookies: never * with credentials
        expose_headers=["X-Pagination", "ETag", "X-Request-ID", "Retry-After"],
        allow_headers=[
            "Authorization",
            "Content-Type",
            API_KEY_HEADER,
            "If-Match",
            "If-None-Match",
            "X-Request-ID",
        ],
    )


def _security_headers(response):
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    if not request.path.startswith(DOC_PATHS):  # the doc pages load their scripts
        headers.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
    if request.path.startswith("/api/auth"):
        headers["Cache-Control"] = "no-store"
    if request.is_secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response
