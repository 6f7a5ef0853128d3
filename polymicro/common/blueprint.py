"""The flask-smorest Blueprint with the contract's defaults.

- Pagination: page size 100 by default, 1000 at most.
- ETags: ``If-None-Match`` on GET gives 304 (flask-smorest's behaviour), but
  ``If-Match`` on writes is *optional*: flask-smorest would answer 428 without it,
  the contract allows unconditional writes and answers 412 only to a stale tag.
- Response caching (:meth:`Blueprint.cached_response`) for the dashboard's hot reads.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

import flask_smorest
from flask import Response, request
from flask_smorest.etag import _get_etag_ctx
from flask_smorest.utils import get_appcontext

from polymicro.common import caching
from polymicro.common.converters import query_object_id
from polymicro.common.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from polymicro.common.parser import StrictJsonParser
from polymicro.common.versioning import unversioned_path


class Blueprint(flask_smorest.Blueprint):
    # Bodies are strict JSON: too deep, duplicate keys, not UTF-8, huge integers: a 400.
    ARGUMENTS_PARSER = StrictJsonParser()
    DEFAULT_PAGINATION_PARAMETERS = {
        "page": 1,
        "page_size": DEFAULT_PAGE_SIZE,
        "max_page_size": MAX_PAGE_SIZE,
    }

    def _check_precondition(self):
        """Writes without ``If-Match`` are allowed."""

    def check_etag(self, etag_data, etag_schema=None):
        """412 when ``If-Match`` is present and stale; nothing to check without it."""
        if not request.if_match:
            _get_etag_ctx()["etag_checked"] = True
            return
        super().check_etag(etag_data, etag_schema)

    def _prepare_etag_doc(self, doc, doc_info, **kwargs):
        doc = super()._prepare_etag_doc(doc, doc_info, **kwargs)
        doc.get("responses", {}).pop(428, None)
        return doc

    def cached_response(self, read: Callable, etag: bool = False):
        """Serve this GET from the cache: body, ``X-Pagination`` and ETag, as sent.

        The service layer caches data; on the hot reads the marshmallow dump and JSON
        encoding of that data cost most of a request (66 % of the CPU on a project's
        metrics, measured with py-spy under ``make bench``), so the final response is
        cached too, in the namespace the service declared for ``read`` (the service
        function this view calls, ``@NS.reads``): every write that invalidates the data
        invalidates the response, and the resource never chooses a namespace.  A scoped
        namespace takes its scope from the path parameter of that name, else from the
        query parameter (a malformed one counts as no scope).  The key is the path and
        the whole query string, the path taken without its version (``/api/v1/x`` and
        ``/api/x`` are one view, common/versioning.py), so the twins share entries.
        Place it under ``access()`` (authorization first) and above ``arguments``.
        With ``etag`` (item endpoints under ``@blp.etag``), a cached ETag still
        answers 304.
        """
        declared = caching.namespace_of(read)

        def decorator(func):
            @wraps(func)
            def wrapper(*args, **kwargs):
                namespace = declared.key(_scope_value(declared.scope, kwargs))
                key = caching.make_key(
                    "response",
                    unversioned_path(request.path).rstrip("/"),
                    sorted(request.args.items(multi=True)),
                )
                reader = caching.Reader(namespace)
                hit = reader.peek(key)
                if hit is not None:
                    body, pagination, etag_value = hit
                    if etag and etag_value:
                        self._check_not_modified(etag_value)
                        _get_etag_ctx()["etag"] = etag_value
                    response = Response(body, 200, mimetype="application/json")
                    if pagination:
                        response.headers["X-Pagination"] = pagination
                    return response
                response = func(*args, **kwargs)
                if response.status_code == 200:
                    pagination = response.headers.get("X-Pagination")
                    etag_value = None
                    if etag:
                        etag_value = self._generate_etag(get_appcontext()["result_dump"])
                    reader.put(key, (response.get_data(), pagination, etag_value))
                return response

            return wrapper

        return decorator


def _scope_value(scope: str | None, view_kwargs: dict):
    if scope is None:
        return None
    if scope in view_kwargs:
        return view_kwargs[scope]
    return query_object_id(scope)
