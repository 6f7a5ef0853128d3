"""The flask-smorest Blueprint with the contract's defaults.

- Pagination: page size 100 by default, 1000 at most.
- ETags: ``If-None-Match`` on GET gives 304 (flask-smorest's behaviour), but
  ``If-Match`` on writes is *optional*: flask-smorest would answer 428 without it,
  the contract allows unconditional writes and answers 412 only to a stale tag.
- Response caching (:meth:`Blueprint.cached_response`) for the dashboard's hot reads,
  with a gzipped copy of large bodies made once, when the entry is stored.
- ETags of gzipped responses: flask-compress (which compresses the other responses)
  appends ``:gzip`` to a strong ETag it compresses; ``If-Match`` and ``If-None-Match``
  accept a tag with or without that suffix.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from functools import partial, wraps

import flask_smorest
from flask import Response, copy_current_request_context, current_app, request
from flask_smorest.etag import _get_etag_ctx
from flask_smorest.exceptions import NotModified, PreconditionFailed
from flask_smorest.utils import get_appcontext, resolve_schema_instance

from polymicro.common import bodies, caching, idempotency
from polymicro.common.converters import query_object_id
from polymicro.common.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from polymicro.common.parser import StrictJsonParser
from polymicro.common.versioning import unversioned_path

# How many scopes (projects) a view remembers the last salt of (see cached_response).
LEARNED_SCOPES = 10_000


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
        _get_etag_ctx()["etag_checked"] = True
        if not request.if_match:
            return
        if etag_schema is not None:
            etag_data = resolve_schema_instance(etag_schema).dump(etag_data)
        if not _tag_in(self._generate_etag(etag_data), request.if_match):
            raise PreconditionFailed

    def _check_not_modified(self, etag):
        if request.method in self.METHODS_CHECKING_NOT_MODIFIED and _tag_in(
            etag, request.if_none_match
        ):
            raise NotModified

    def _prepare_etag_doc(self, doc, doc_info, **kwargs):
        doc = super()._prepare_etag_doc(doc, doc_info, **kwargs)
        doc.get("responses", {}).pop(428, None)
        return doc

    @staticmethod
    def idempotent(func: Callable) -> Callable:
        """Honour an ``Idempotency-Key`` header (``polymicro/common/idempotency.py``);
        place it under ``access()`` and above ``arguments``."""
        return idempotency.idempotent(func)

    def cached_response(self, read: Callable, etag: bool = False):
        """Serve this GET from the cache: body, ``X-Pagination`` and ETag, as sent.

        The service layer caches data; on the hot reads the marshmallow dump and JSON
        encoding of that data cost most of a request (66 % of the CPU on a project's
        metrics, measured with py-spy under ``make bench``), so the final response is
        cached too, in the namespace the service declared for ``read`` (the service
        function this view calls, ``@NS.reads``): every write that invalidates the data
        invalidates the response (within the namespace's staleness window, if it has
        one), and the resource never chooses a namespace.  A scoped namespace takes its
        scope from the path parameter of that name, else from the query parameter (a
        malformed one counts as no scope).  The key is the path and the whole query
        string, the path taken without its version (``/api/v1/x`` and ``/api/x`` are one
        view, common/versioning.py), so the twins share entries.  Place it under
        ``access()`` (authorization first) and above ``arguments``.  With ``etag`` (item
        endpoints under ``@blp.etag``), a cached ETag still answers 304.

        One Redis round trip per hit: where the namespace declares a ``salt`` (what else
        the answer depends on: the retention days of the project, read from the
        catalog's cached overrides) the key depends on cached data, which took a round
        trip of its own before the response's (py-spy: half of a cached logs list's view
        time).  Each view remembers, per scope, the salt of its last request and the
        exact cached reads computing it took (``caching.recording``); the next request
        builds its key from that salt and fetches those reads in the MGET of its lookup
        (``Reader.also``), then computes the salt and epoch (from the request memo the
        MGET filled) and keeps what it read only if the salt is the same; if not
        (``unsettled``: a new minute, a changed override) it looks up the right key.

        Compression: each response is kept in two variants, for clients that accept gzip
        and for those that do not.  A body of ``COMPRESS_MIN_SIZE`` bytes or more is
        gzipped once, when stored (the 76 KB CPU metrics of a project become about
        10 KB), instead of on every hit.  So are ETag responses (a project, a service):
        their gzipped variant is sent with the plain body's ETag plus ``:gzip``, the tag
        flask-compress gave them when it compressed them on every hit (``bench/run.py
        --gzip``: the one-project read was the slowest of all with a browser's
        ``Accept-Encoding``).
        """
        declared = caching.namespace_of(read)
        derived = declared.salt is not None or declared.epoch is not None
        # scope -> (salt, the exact cached() reads it took) of the last request of this
        # view: the next one guesses its key from it and reads those in its own lookup.
        learned: dict = {}

        def derive(scope):
            """(epoch, salt) of ``scope`` now, remembering what they read."""
            with caching.recording() as reads:
                epoch = declared.epoch(scope) if declared.epoch else None  # before the salt
                salt = declared.salt(scope) if declared.salt else None
            if len(learned) >= LEARNED_SCOPES:
                learned.clear()
            learned[scope] = (salt, reads)
            return epoch, salt

        def decorator(func):
            @wraps(func)
            def wrapper(*args, **kwargs):
                req = request._get_current_object()  # once, not through the proxy
                scope = _scope_value(declared.scope, kwargs)
                namespace = declared.key(scope)
                path = unversioned_path(req.path).rstrip("/")
                query = sorted(req.args.items(multi=True)) if req.query_string else []
                gzip_ok = _accepts_gzip(req.environ)
                guess = learned.get(scope) if derived else None
                if guess is None:
                    epoch, salt = derive(scope) if derived else (None, None)
                    key = _response_key(path, query, salt)
                    reader = caching.Reader(namespace, epoch)
                    hit = reader.peek(f"{key}:gzip" if gzip_ok else key, background=True)
                else:
                    # One round trip: the key from the salt of the last request, the reads
                    # the salt takes fetched with the entry; kept if the salt is the same.
                    key = _response_key(path, query, guess[0])
                    reader = caching.Reader(namespace)
                    reader.also = guess[1]
                    actual = []

                    def settle() -> bool:
                        reader.epoch, salt = derive(scope)
                        actual.append(salt)
                        return salt == guess[0]

                    hit = reader.peek(
                        f"{key}:gzip" if gzip_ok else key, background=True, settle=settle
                    )
                    if reader.unsettled:  # the salt moved: a new minute, another override
                        key = _response_key(path, query, actual[0])
                        reader = caching.Reader(namespace, reader.epoch)
                        hit = reader.peek(f"{key}:gzip" if gzip_ok else key, background=True)

                def compute(answer: bool = True):
                    try:
                        with reader.computing():
                            response = func(*args, **kwargs)
                        return store(response, answer)
                    finally:
                        reader.release()

                def store(response, answer: bool):
                    """Keep both variants; the response for this client (``answer``:
                    False for a refresh in the background, whose response nobody gets)."""
                    if response.status_code != 200:
                        return response
                    body = response.get_data()
                    pagination = response.headers.get("X-Pagination")
                    etag_value = None
                    if etag:
                        etag_value = self._generate_etag(get_appcontext()["result_dump"])
                    plain = (body, None, pagination, etag_value)
                    packed = plain
                    if len(body) >= current_app.config["COMPRESS_MIN_SIZE"]:
                        level = current_app.config["COMPRESS_LEVEL"]
                        zipped = gzip.compress(body, level, mtime=0)
                        packed = (zipped, "gzip", pagination, etag_value)
                    # Large bodies go to Redis apart, once (common/bodies.py); also after
                    # a hit whose body was gone, when there is no entry to store.
                    entries = bodies.by_ref({key: plain, f"{key}:gzip": packed})
                    if entries is not None:
                        reader.put_many(entries)
                    if not (answer and gzip_ok and packed[1] == "gzip"):
                        return response
                    return self._cached_hit(packed, etag)  # answered as a hit would be

                if hit is not None:
                    hit = bodies.resolve(hit)
                    if hit is None:  # its body is gone (common/bodies.py): compute it again
                        return compute()
                    if reader.refresh_due:  # served stale; refreshed without making it wait
                        caching.refresh_later(copy_current_request_context(partial(compute, False)))
                    return self._cached_hit(hit, etag)
                return compute()

            return wrapper

        return decorator

    def _cached_hit(self, hit, etag: bool) -> Response:
        etag_value = hit[3]
        if etag and etag_value:
            self._check_not_modified(etag_value)
            _get_etag_ctx()["etag"] = _tag_of(hit)
        return _response(hit)


def _tag_of(entry) -> str:
    """The ETag of a cached entry as sent: a gzipped body's is the plain body's with
    ``:gzip`` appended, as flask-compress tags a body it compresses (a strong ETag names
    one representation: the gzipped bytes are another)."""
    _body, encoding, _pagination, etag_value = entry
    return f"{etag_value}:{encoding}" if encoding else etag_value


# (path, query items, salt) -> the response key: make_key is a JSON dump and a SHA-1 of
# them, on every hit.  Only salts of exact types whose equality means equal JSON (1 ==
# 1.0 == True do not dump alike); bounded like the learned salts.
_response_keys: dict = {}
_MEMO_SALTS = (int, str, type(None))


# In the keys: entries of another format (before common/bodies.py, a body was always
# inline) are never read by this code, nor its entries by that code, during a rolling
# deploy.
ENTRY_FORMAT = 2


def _response_key(path: str, query: list, salt) -> str:
    if type(salt) not in _MEMO_SALTS:
        return caching.make_key("response", ENTRY_FORMAT, path, query, salt)
    memo_key = (path, tuple(query), type(salt), salt)
    key = _response_keys.get(memo_key)
    if key is None:
        if len(_response_keys) >= LEARNED_SCOPES:
            _response_keys.clear()
        key = _response_keys[memo_key] = caching.make_key(
            "response", ENTRY_FORMAT, path, query, salt
        )
    return key


def _response(entry) -> Response:
    """The response of a cached entry, its headers given as one list (werkzeug's ``vary``
    property parses and rebuilds the header set, and each item set scans the list)."""
    body, encoding, pagination, _etag = entry
    headers = [("Vary", "Accept-Encoding")]
    if encoding:
        headers.append(("Content-Encoding", encoding))
    if pagination:
        headers.append(("X-Pagination", pagination))
    return Response(body, 200, headers, mimetype="application/json")


def _accepts_gzip(environ: dict) -> bool:
    """The client accepts gzip (werkzeug's ``accept_encodings``: q-values, ``*``), the
    header parsed only when there is one."""
    return bool(environ.get("HTTP_ACCEPT_ENCODING")) and request.accept_encodings["gzip"] > 0


def _tag_in(etag: str, tags) -> bool:
    """``etag`` is in ``If-Match``/``If-None-Match``, as sent or with the ``:gzip``
    suffix flask-compress gives the ETag of a body it compressed."""
    return etag in tags or f"{etag}:gzip" in tags


def _scope_value(scope: str | None, view_kwargs: dict):
    if scope is None:
        return None
    if scope in view_kwargs:
        return view_kwargs[scope]
    return query_object_id(scope)
