"""Unbound extensions and the database connection.

Nothing connects at import time: ``create_app`` binds these to an app.
"""

from __future__ import annotations

import logging
from functools import partial

import marshmallow as ma
import mongoengine
from flask import Flask
from flask_caching import Cache
from flask_compress import Compress
from flask_smorest import Api
from flask_smorest import etag as fs_etag
from flask_smorest.pagination import PaginationMetadataSchema
from pymongo import MongoClient, uri_parser
from pymongo.errors import PyMongoError
from werkzeug.exceptions import MethodNotAllowed

from polymicro.common import atomic, cache_mirror
from polymicro.common.atomic import is_secantus
from polymicro.config import auto_choice
from polymicro.errors import add_default_message

log = logging.getLogger(__name__)

DB_ALIAS = mongoengine.DEFAULT_CONNECTION_NAME


class PolymicroApi(Api):
    """flask-smorest's Api with a ``message`` in every error, an optional ``If-Match``,
    an ``Allow`` header on 405, ``X-Pagination`` documented as the JSON it is, and
    request bodies documented as they are read (``_document_request_body``)."""

    def handle_http_exception(self, error):
        payload, code, headers = super().handle_http_exception(error)
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            # RFC 9110: a 405 lists the methods the resource supports.
            headers = {**headers, "Allow": ", ".join(sorted(error.valid_methods))}
        return add_default_message(payload, error), code, headers

    def _register_pagination_header(self):
        # The header carries a JSON object; documented as a `schema` of type object it
        # would mean the `simple` style (`total,3,page,1`), which it is not.
        self.spec.components.header("PAGINATION", PAGINATION_HEADER_DOC, lazy=True)

    def register_blueprint(self, blp, *, parameters=None, **options):
        if _document_request_body not in blp._prepare_doc_cbks:
            blp._prepare_doc_cbks.append(_document_request_body)
        super().register_blueprint(blp, parameters=parameters, **options)

    def _register_etag_headers(self):
        super()._register_etag_headers()
        optional = dict(fs_etag.IF_MATCH_HEADER, required=False)
        optional["description"] = "Optional; a stale tag gets 412."
        self.spec.components.parameters.pop("IF_MATCH", None)
        self.spec.components.parameter("IF_MATCH", "header", optional, lazy=True)


PAGINATION_HEADER_DOC = {
    "description": "Pagination metadata, a JSON object.",
    "content": {"application/json": {"schema": PaginationMetadataSchema}},
}


def _document_request_body(doc, doc_info, **kwargs):
    """Document a request body as it is read.

    - A schema with an ``openapi_body()`` method documents the JSON it loads (e.g. an
      array of 1 to 1000 entries, or one object or an array of them).
    - A body is required only when its schema has a required field: without a body,
      webargs loads ``{}``, which such a schema accepts (a PATCH without a body is a
      no-op 200, as ``{}`` is).
    - A ``json_or_form`` body (the login: the dashboard posts form fields) is a request
      body in both media types; flask-smorest would list its fields as parameters
      ``in: json_or_form``, which is no OpenAPI location.
    """
    for parameter in list(doc.get("parameters", [])):
        if isinstance(parameter, dict) and parameter.get("in") == "json_or_form":
            doc["parameters"].remove(parameter)
            schema = parameter["schema"]
            doc["requestBody"] = {
                "required": parameter.get("required", True),
                "content": {
                    "application/json": {"schema": schema},
                    "application/x-www-form-urlencoded": {"schema": schema},
                },
            }
    if "parameters" in doc and not doc["parameters"]:
        del doc["parameters"]
    request_body = doc.get("requestBody", {})
    for media_type in request_body.get("content", {}).values():
        schema = media_type.get("schema")
        shape = getattr(schema, "openapi_body", None)
        if callable(shape):
            media_type["schema"] = shape()
            continue
        if isinstance(schema, type) and issubclass(schema, ma.Schema):
            schema = schema()
        optional = isinstance(schema, ma.Schema) and not schema.many
        if optional and not any(f.required for f in schema.load_fields.values()):
            request_body["required"] = False
    return doc


api = PolymicroApi()
cache = Cache()
compress = Compress()


def init_db(app: Flask) -> None:
    """Register the mongoengine connection for this app (lazy: no I/O here).

    With ``MONGODB_MOCK`` the connection is an in-process mongomock client (tests).
    Writes wait for the database's journal (``j: true``) unless the URI says otherwise.
    The server-selection timeout bounds how long a request can wait for a database
    that is down; that error is answered with 503 (see ``errors.py``).  Retryable writes
    follow ``MONGODB_RETRY_WRITES`` (see :func:`_retry_writes`).
    """
    timeout = app.config["MONGODB_TIMEOUT_MS"]
    uri = app.config["MONGODB_URI"]
    kwargs = {
        "host": uri,
        "alias": DB_ALIAS,
        "uuidRepresentation": "standard",
        "serverSelectionTimeoutMS": timeout,
        "connectTimeoutMS": timeout,
        "tz_aware": False,
    }
    mongoengine.disconnect(DB_ALIAS)
    if app.config["MONGODB_MOCK"]:
        import mongomock  # test-only dependency, imported only when asked for

        kwargs["mongo_client_class"] = mongomock.MongoClient
        mongoengine.connect(**kwargs)
        return
    options = _uri_options(uri)
    if not options & {"w", "journal", "j"}:
        # An acknowledged write must survive a crash of the database: wait for its
        # journal.  With the default (w:1, no j) a killed SecantusDB lost 30 of 100
        # acknowledged CPU points (scripts/faults.py); a URI that sets `w` or
        # `journal` itself (e.g. w=majority on a replica set) is left as it is.
        kwargs["journal"] = True
    setting = _retry_writes(app.config["MONGODB_RETRY_WRITES"])
    if "retrywrites" in options:
        pass  # the URI decides, as it does for the write concern
    elif setting == "auto":
        # Decided when the client is first needed (the first query, or wsgi.py's
        # start-up ping), not here: create_app does no I/O.
        global _registration
        _registration = object()
        kwargs["mongo_client_class"] = partial(_client_deciding_retry_writes, _registration)
    else:
        kwargs["retryWrites"] = setting == "true"
    mongoengine.register_connection(**kwargs)


def _retry_writes(value: str) -> str:
    """``MONGODB_RETRY_WRITES``: ``true``/``false`` set pymongo's ``retryWrites``;
    ``auto`` (the default) turns retryable writes off on SecantusDB only.

    SecantusDB 0.7 presents itself as a replica set, so pymongo sends every write as a
    retryable write (with a ``txnNumber``), and SecantusDB keeps a record of each for 30
    minutes (at most 10,000) and rescans all of them twice per write (sorting them past
    10,000): single-log ingest fell from 75-79 logs/s at 1,000 stored logs to 28-36 at
    11,000-20,000, with 74-81% of the server's CPU in that pruning, and with
    ``retryWrites=false`` it stayed flat (bench/ingest_curve.py; bench/
    repro_secantus_retryable.py reproduces it with pymongo alone).  What retryable
    writes protect against (a network error after the server applied a write, retried
    once without applying it twice) matters for a replica set failing over, which an
    embedded single-node SecantusDB never does; durability comes from ``j: true`` and
    the transactions.  On MongoDB they stay on (pymongo's default).
    """
    return auto_choice("MONGODB_RETRY_WRITES", value)


# Identifies the current registration: a client whose creation outlived it (a thread
# still asking a dead server while the app was closed or replaced) is dropped.
_registration: object | None = None


def _client_deciding_retry_writes(registration: object, **settings) -> MongoClient:
    """Create the client (mongoengine calls this once, on first use) with retryable
    writes off when the server is SecantusDB (its ``buildInfo`` has ``secantusVersion``).

    The question costs one ``buildInfo`` per process and server.  When the server cannot
    be asked (it is down), the client keeps pymongo's default (retryable writes on:
    correct, slower on SecantusDB; a debug line says so); the next process asks again.
    """
    client = MongoClient(**settings)
    try:
        secantus = is_secantus(client.admin.command("buildInfo"))
    except PyMongoError as exc:
        if registration is not _registration:
            client.close()
            raise RuntimeError("the connection was closed while it was being opened") from exc
        # DEBUG: the database being down is reported by whatever needed it (a 503, the
        # start-up check, a CLI error in one line); this only explains the outcome.
        log.debug(
            "could not ask the database what it is (%s); retryable writes stay on "
            "(POLYMICRO_MONGODB_RETRY_WRITES=false turns them off without asking)",
            type(exc).__name__,
        )
        return client
    if registration is not _registration:
        client.close()
        raise RuntimeError("the connection was closed while it was being opened")
    if not secantus:
        return client
    client.close()
    log.info("SecantusDB: retryable writes off (see POLYMICRO_MONGODB_RETRY_WRITES)")
    client = MongoClient(**settings, retryWrites=False)
    atomic.remember_secantus(client, True)  # atomic.py asks the same question
    return client


def _uri_options(uri: str) -> set[str]:
    return {key.lower() for key in uri_parser.parse_uri(uri)["options"]}


def close_db() -> None:
    global _registration
    _registration = None
    mongoengine.disconnect(DB_ALIAS)


def ping_db() -> None:
    """Round-trip to the database; raises a pymongo error when it is unreachable."""
    mongoengine.get_db(DB_ALIAS).command("ping")


def init_cache(app: Flask) -> None:
    """flask-caching on Redis when ``REDIS_URL`` is set, else an in-process SimpleCache."""
    redis_url = app.config["REDIS_URL"]
    if redis_url:
        cache_config = {
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_URL": redis_url,
            "CACHE_OPTIONS": {"socket_timeout": 0.5, "socket_connect_timeout": 0.5},
        }
    else:
        cache_config = {"CACHE_TYPE": "SimpleCache", "CACHE_THRESHOLD": 5000}
    cache_config["CACHE_DEFAULT_TIMEOUT"] = app.config["CACHE_DEFAULT_TIMEOUT"]
    cache_config["CACHE_KEY_PREFIX"] = app.config["CACHE_KEY_PREFIX"]
    cache.init_app(app, config=cache_config)
    if redis_url and app.config["CACHE_MIRROR"]:
        cache_mirror.enable(cache.cache._read_client.connection_pool, cache.cache._get_prefix())


def init_compression(app: Flask) -> None:
    """gzip for JSON responses of ``COMPRESS_MIN_SIZE`` bytes or more when the client
    accepts it (flask-compress).  Responses served from the response cache arrive
    already compressed (``Blueprint.cached_response`` stores a gzipped copy), and
    flask-compress leaves a response with a ``Content-Encoding`` alone."""
    app.config["COMPRESS_ALGORITHM"] = ["gzip"]
    app.config["COMPRESS_MIMETYPES"] = ["application/json"]
    app.config["COMPRESS_STREAMS"] = False
    compress.init_app(app)
