"""Storage helpers shared by the documents."""

from __future__ import annotations

import re

import mongoengine as me

from polymicro.common.timeutil import utcnow


def name_key(name: str) -> str:
    """The case-insensitive form of a name, used for uniqueness and name search."""
    return name.casefold()


def contains_literally(db_field: str, text: str, ignore_case: bool = False) -> dict:
    """A raw filter: ``db_field`` contains ``text`` as plain text, never as a pattern.

    Sent as ``{"$regex": <escaped>, "$options": …}`` rather than as a BSON regex
    (what mongoengine's ``contains`` sends): SecantusDB matches nothing when a BSON regex
    meets an indexed field, while the ``$regex`` string form works on every server.
    """
    return {db_field: {"$regex": re.escape(text), "$options": "i" if ignore_case else ""}}


class TimestampedDocument(me.Document):
    """``created_at``/``updated_at`` kept by the service layer (naive UTC, ms)."""

    meta = {"abstract": True}

    created_at = me.DateTimeField(required=True, default=utcnow)
    updated_at = me.DateTimeField(required=True)

    def clean(self):
        # A new document's updated_at equals its created_at to the millisecond.
        if self.updated_at is None:
            self.updated_at = self.created_at


def apply_changes(doc: me.Document, data: dict) -> dict[str, tuple]:
    """Set the fields of ``data`` whose values differ and save: a partial update.

    Returns ``{field: (before, after)}`` of what changed; empty means nothing was
    written (a no-op update leaves ``updated_at`` where it was).  A document with a
    ``name_key`` keeps it equal to ``name_key(name)``.
    """
    changed = {k: (getattr(doc, k), v) for k, v in data.items() if getattr(doc, k) != v}
    if changed:
        for key, (_before, after) in changed.items():
            setattr(doc, key, after)
        if "name_key" in doc._fields:
            doc.name_key = name_key(doc.name)
        doc.updated_at = utcnow()
        doc.save()
    return changed


class View(dict):
    """Plain data of a document, read as ``view["name"]`` or ``view.name``."""

    __slots__ = ()

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


def as_view(doc: me.Document, **extra) -> View:
    """A document as plain data (what the cache stores and the schemas dump).

    mongoengine's list and dict wrappers are copied to plain ones: they hold a
    reference to their document, which would otherwise be pickled along.
    """
    view = View()
    for name in doc._fields:
        value = getattr(doc, name)
        if isinstance(value, list):
            value = list(value)
        elif isinstance(value, dict):
            value = dict(value)
        view[name] = value
    view.update(extra)
    return view


def row_view(document_cls: type[me.Document], row: dict) -> View:
    """A raw row (``as_pymongo``) as the view its document would give: ``_id`` as ``id``,
    attribute names for database names, and each missing field at its default.

    The lean read path: building a mongoengine document per row costs about four times
    as much Python time as this (see the README's performance notes).
    """
    view = View()
    for name, field in document_cls._fields.items():
        if field.db_field in row:
            view[name] = row[field.db_field]
        else:
            default = field.default
            view[name] = default() if callable(default) else default
    return view


def to_row(document_cls: type[me.Document], data: dict) -> dict:
    """Validated data as a raw row for a bulk insert (database names, ``None`` left out,
    as mongoengine stores it)."""
    fields = document_cls._fields
    return {fields[name].db_field: value for name, value in data.items() if value is not None}


def average_size(collection, fallback: int) -> int:
    """The average stored size of a document of ``collection`` in bytes, from the
    database's ``collStats`` (``avgObjSize``); ``fallback`` where it gives none
    (mongomock, an empty collection).  Used for storage estimates."""
    try:
        stats = collection.database.command("collStats", collection.name)
    except Exception:  # a database without collStats (mongomock): the typical size
        return fallback
    size = stats.get("avgObjSize") or 0
    return int(size) if size > 0 else fallback
