"""Request bodies are read as strict JSON (RFC 8259), or answered 400.

webargs reads bodies with a plain ``json.loads``, which

- raises ``RecursionError`` on deeply nested input (10,000 ``[``: a 500, not a 400);
- raises a bare ``ValueError`` on an integer of more than 4,300 digits (a 500 too);
- keeps the last of duplicate keys (``{"name": "a", "name": "b"}``), where another
  reader (a proxy, a log pipeline) may keep the first: two views of one request.

:class:`StrictJsonParser` refuses all three with a 400 naming the problem.  (``NaN``,
``Infinity`` and ``-Infinity`` still parse, as before: no field accepts them, so they
are a 422 naming the field.)
"""

from __future__ import annotations

import json

from flask_smorest import abort
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request


class InvalidJson(ValueError):
    """Why a body is not acceptable JSON (the message is shown to the client)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidJson(f"duplicate key {key[:40]!r} in an object")
            seen.add(key)
    return obj


def parse_json_body(data: bytes | str):
    """Parse a request body; ``json.JSONDecodeError`` for anything but strict JSON.

    An empty body raises with ``doc == ""`` (webargs then treats the body as absent).
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise json.JSONDecodeError(f"not UTF-8 ({exc.reason})", "?", exc.start) from exc
    else:
        text = data
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError:
        raise
    except RecursionError as exc:
        raise json.JSONDecodeError("arrays or objects nested too deeply", text, 0) from exc
    except ValueError as exc:
        # InvalidJson, or e.g. an integer literal longer than Python's 4300-digit limit.
        reason = str(exc).split(";")[0].rstrip(".")
        raise json.JSONDecodeError(reason, text, 0) from exc


class StrictJsonParser(FlaskParser):
    """webargs' Flask parser with :func:`parse_json_body` and a 400 that says why."""

    def _raw_load_json(self, req):
        if not is_json_request(req):
            return core.missing
        return parse_json_body(req.get_data(cache=True))

    def _handle_invalid_json_error(self, error, req, *args, **kwargs):
        reason = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
        abort(
            400,
            message="Malformed JSON body.",
            errors={"json": [f"Invalid JSON body: {reason}."]},
        )
