"""Unbound extensions and the database connection.

Nothing connects at import time: ``create_app`` binds these to an app.
"""

from __future__ import annotations

import logging

import marshmallow as ma
import mongoengine
from flask import Flask
from flask_caching import Cache
from flask_smorest import Api
from flask_smorest import etag as fs_etag
from flask_smorest.pagination import PaginationMetadataSchema
from pymongo import uri_parser
from werkzeug.exceptions import MethodNotAllowed

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


def init_db(app: Flask) -> None:
    """Register the mongoengine connection for this app (lazy: no I/O here).

    With ``MONGODB_MOCK`` the connection is an in-process mongomock client (tests).
    Writes wait for the database's journal (``j: true``) unless the URI says otherwise.
    The server-selection timeout bounds how long a request can wait for a database
    that is down; that error is answered with 503 (see ``errors.py``).
    """
    timeout = app.config["MONGODB_TIMEOUT_MS"]
    kwargs = {
        "host": app.config["MONGODB_URI"],
        "alias": DB_ALIAS,
        "uuidRepresentation": "standard",
        "serverSelectionTimeoutMS": timeout,
        "connectTimeoutMS": timeout,
        "tz_aware": False,
    }
    if app.config["MONGODB_MOCK"]:
        import mongomock  # test-only dependency, imported only when asked for

        kwargs["mongo_client_class"] = mongomock.MongoClient
    elif not _sets_write_concern(app.config["MONGODB_URI"]):
        # An acknowledged write must survive a crash of the database: wait for its
        # journal.  With the default (w:1, no j) a killed SecantusDB lost 30 of 100
        # acknowledged CPU points (scripts/faults.py); a URI that sets `w` or
        # `journal` itself (e.g. w=majority on a replica set) is left as it is.
        kwargs["journal"] = True
    mongoengine.disconnect(DB_ALIAS)
    mongoengine.connect(**kwargs)


def _sets_write_concern(uri: str) -> bool:
    options = {key.lower() for key in uri_parser.parse_uri(uri)["options"]}
    return bool(options & {"w", "journal", "j"})


def close_db() -> None:
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
