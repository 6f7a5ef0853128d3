"""``/otlp/v1/logs``, ``/otlp/v1/metrics`` (so ``OTEL_EXPORTER_OTLP_ENDPOINT=<base>/otlp``
works) and ``/loki/api/v1/push``.

A plain Flask blueprint, outside the OpenAPI document: these bodies are specified by
OTLP and Loki (protobuf, snappy), not by the JSON contract of ``/api``.  Errors keep the
house shape for JSON requests; an OTLP protobuf request gets a ``google.rpc.Status``
as OTLP asks.  ``429`` and ``503`` carry ``Retry-After``; no request answers 500 (an
unexpected error is logged and answered 503, which shippers retry).
"""

from __future__ import annotations

import logging
import math

from flask import Blueprint, Response, current_app, jsonify, request
from flask.views import MethodView
from flask_jwt_extended.exceptions import JWTExtendedException, NoAuthorizationError
from jwt import PyJWTError
from pymongo import errors as pymongo_errors
from werkzeug.exceptions import HTTPException

from polymicro.errors import DB_DOWN_MESSAGE, DomainError, error_body
from polymicro.ingest import body, loki, otlp
from polymicro.security import access, project_scope

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
_DB_DOWN = (
    pymongo_errors.ConnectionFailure,
    pymongo_errors.NetworkTimeout,
    pymongo_errors.ExecutionTimeout,
    pymongo_errors.WaitQueueTimeoutError,
)

blp = Blueprint("ingest", __name__)


def _read(accepted: tuple[str, ...], snappy_protobuf: bool = False) -> body.Body:
    cap = current_app.config["INGEST_MAX_BODY_BYTES"]
    return body.read(request, accepted, cap, snappy_protobuf)


def _max_records() -> int:
    return current_app.config["INGEST_MAX_RECORDS"]


class OtlpLogs(MethodView):
    @access("editor", keys=True)
    def post(self):
        """OTLP/HTTP logs (protobuf or JSON, gzip/deflate)."""
        data, mime = otlp.export_logs(project_scope(), _read(otlp.MEDIA_TYPES), _max_records())
        return Response(data, 200, mimetype=mime)


class OtlpMetrics(MethodView):
    @access("editor", keys=True)
    def post(self):
        """OTLP/HTTP metrics: process/system CPU, memory and threads become CPU points."""
        data, mime = otlp.export_metrics(project_scope(), _read(otlp.MEDIA_TYPES), _max_records())
        return Response(data, 200, mimetype=mime)


class LokiPush(MethodView):
    @access("editor", keys=True)
    def post(self):
        """Loki push: JSON (gzip) or protobuf + snappy; 204 when every entry was stored."""
        labels = [
            label.strip()
            for label in current_app.config["INGEST_LOKI_SERVICE_LABELS"].split(",")
            if label.strip()
        ]
        sent = _read(loki.MEDIA_TYPES, snappy_protobuf=True)
        outcome = loki.push(project_scope(), sent, _max_records(), labels)
        if outcome.rejected:
            return _error(400, loki.rejection_message(outcome))
        return Response(status=204)


blp.add_url_rule("/otlp/v1/logs", view_func=OtlpLogs.as_view("otlp_logs"))
blp.add_url_rule("/otlp/v1/metrics", view_func=OtlpMetrics.as_view("otlp_metrics"))
blp.add_url_rule("/loki/api/v1/push", view_func=LokiPush.as_view("loki_push"))


# --- errors in the shape each client expects ------------------------------------------


NO_CREDENTIALS = (
    "Send a project API key: X-API-Key, Authorization: Bearer <key>, or the password of Basic auth."
)


def _error(code: int, message: str) -> Response:
    is_protobuf = request.mimetype == body.PROTOBUF and request.path.startswith("/otlp/")
    if is_protobuf:
        response = Response(otlp.status_answer(code, message), code, mimetype=body.PROTOBUF)
    else:
        response = jsonify(error_body(code, message))
        response.status_code = code
    if code in (429, 503):
        response.headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    if code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="polymicro"'
    return response


@blp.errorhandler(Exception)
def _any_error(exc: Exception):
    # This handler sees every exception of these routes first (Flask prefers a
    # blueprint's handler over the app's, whatever the class), token errors included:
    # answer them here, in the shape the shipper reads.
    if isinstance(exc, NoAuthorizationError):
        return _error(401, NO_CREDENTIALS)
    if isinstance(exc, JWTExtendedException | PyJWTError):
        return _error(401, "The token is not valid; ingest takes a project API key.")
    if isinstance(exc, DomainError):
        response = _error(exc.code, exc.message)
        retry_after = getattr(exc, "retry_after", None)  # a budget's own wait, if it says
        if retry_after is not None and exc.code in (429, 503):
            response.headers["Retry-After"] = str(max(math.ceil(retry_after), 1))
    elif isinstance(exc, HTTPException):
        response = _error(exc.code or 500, exc.description or exc.name)
        for name, value in exc.get_headers() if exc.response is None else []:
            if name.lower() == "retry-after":
                response.headers[name] = value
    elif isinstance(exc, _DB_DOWN):
        log.warning("database unavailable during %s %s: %s", request.method, request.path, exc)
        response = _error(503, DB_DOWN_MESSAGE)
    else:
        log.exception("ingest failed unexpectedly (answered 503)")
        response = _error(503, "Ingest failed unexpectedly; it has been logged. Retry later.")
    if response.status_code >= 500 and response.status_code != 503:
        response.status_code = 503
        response.headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    return response
