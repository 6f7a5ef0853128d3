"""Domain exceptions and the one error shape every response uses.

Service functions raise the exceptions below; they know nothing about HTTP.  This
module maps them (and the database driver's failures) to flask-smorest's error shape::

    {"code": 422, "status": "Unprocessable Entity", "message": "...", "errors": {...}}

A 500 never carries exception text or a stack trace: the detail goes to the log.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import mongoengine
from bson import errors as bson_errors
from flask import Flask, jsonify, request
from pymongo import errors as pymongo_errors
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class DomainError(Exception):
    """Base of the errors a service function may raise."""

    code = 400

    def __init__(self, message: str, errors: dict | None = None):
        super().__init__(message)
        self.message = message
        self.errors = errors


class Unauthorized(DomainError):
    """No valid credentials (401)."""

    code = 401


class Forbidden(DomainError):
    """Valid credentials that do not allow this (403)."""

    code = 403


class NotFound(DomainError):
    code = 404


class Conflict(DomainError):
    code = 409


class PreconditionFailed(DomainError):
    code = 412


class InvalidInput(DomainError):
    """A rule on the input failed (unknown project, immutable field, …).

    ``errors`` follows the webargs layout: ``{"json": {"field": ["message"]}}``.
    """

    code = 422

    @classmethod
    def field(cls, field: str, message: str, location: str = "json") -> InvalidInput:
        return cls(f"Invalid {field}: {message}", {location: {field: [message]}})


class DatabaseUnavailable(DomainError):
    code = 503


DB_DOWN_MESSAGE = "The database is unavailable; try again shortly."

# Driver errors that mean "the database cannot be reached right now".
_DB_UNAVAILABLE = (
    pymongo_errors.ConnectionFailure,  # includes AutoReconnect, ServerSelectionTimeoutError
    pymongo_errors.NetworkTimeout,
    pymongo_errors.ExecutionTimeout,
    pymongo_errors.WaitQueueTimeoutError,
)


def error_body(code: int, message: str, errors: dict | None = None) -> dict:
    body = {"code": code, "status": HTTPStatus(code).phrase, "message": message}
    if errors:
        body["errors"] = errors
    return body


def _respond(code: int, message: str, errors: dict | None = None):
    response = jsonify(error_body(code, message, errors))
    response.status_code = code
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain_error(exc: DomainError):
        return _respond(exc.code, exc.message, exc.errors)

    @app.errorhandler(mongoengine.NotUniqueError)
    @app.errorhandler(pymongo_errors.DuplicateKeyError)
    def _duplicate(exc: Exception):
        # A race that slipped past the service's own uniqueness check.
        return _respond(409, "A resource with that name already exists.")

    def _db_unavailable(exc: Exception):
        log.warning("database unavailable during %s %s: %s", request.method, request.path, exc)
        return _respond(503, DB_DOWN_MESSAGE)

    for exc_class in _DB_UNAVAILABLE:
        app.register_error_handler(exc_class, _db_unavailable)

    @app.errorhandler(bson_errors.InvalidDocument)
    @app.errorhandler(bson_errors.InvalidStringData)
    @app.errorhandler(OverflowError)
    def _unstorable(exc: Exception):
        # Backstop: schemas refuse what BSON cannot hold (64-bit ints, lone surrogates,
        # `$`/`.` keys); should one slip through, the client still gets a 4xx, not a 500.
        log.error("unstorable value after schema validation: %s", exc)
        return _respond(422, "A value cannot be stored (out of range or not encodable).")

    @app.errorhandler(mongoengine.ValidationError)
    def _model_validation(exc: mongoengine.ValidationError):
        # Schemas validate first; reaching this means a schema is looser than its model.
        log.error("model validation failed after schema validation: %s", exc)
        return _respond(422, "Invalid input.", {"json": exc.to_dict() or {"_schema": [str(exc)]}})


def add_default_message(payload: dict, error: HTTPException) -> dict:
    """flask-smorest leaves ``message`` out unless ``abort`` was given one; add it."""
    if "message" not in payload:
        if error.code == 422:
            payload["message"] = "Invalid input: see `errors` for each field."
        elif error.code == 400 and "json" in payload.get("errors", {}):
            payload["message"] = "Malformed JSON body."
        elif error.code is not None and error.code >= 500:
            payload["message"] = "Internal error; it has been logged."
        else:
            payload["message"] = error.description or HTTPStatus(error.code).phrase
    return payload


def raise_unsupported_media_type() -> None:
    from flask_smorest import abort

    abort(415, message="Send the body as JSON (Content-Type: application/json).")
