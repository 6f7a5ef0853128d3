"""The flask-smorest Blueprint with the contract's defaults.

- Pagination: page size 100 by default, 1000 at most.
- ETags: ``If-None-Match`` on GET gives 304 (flask-smorest's behaviour), but
  ``If-Match`` on writes is *optional*: flask-smorest would answer 428 without it,
  the contract allows unconditional writes and answers 412 only to a stale tag.
"""

from __future__ import annotations

import flask_smorest
from flask import request
from flask_smorest.etag import _get_etag_ctx

from polymicro.common.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE


class Blueprint(flask_smorest.Blueprint):
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
