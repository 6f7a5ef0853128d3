"""Retention: how long each kind of data is kept, and the machinery that enforces it.

A *kind* is one collection with a time field and a setting (days, 0 = forever)::

    Kind(name, collection getter, time field, setting name, per-project override or None)

The domains declare their kinds as constants next to their models (``logs``,
``points``, ``events``); ``polymicro/domains.py`` registers them, one line each::

    retention.register(metrics.ROLLUP_5M_RETENTION)     # a new kind: nothing else to do

A registered kind gets, with no further code:

- a TTL index on its time field (``apply``; made or changed at start-up, by the first
  use of the database in each process, and by ``flask retention apply``).  A changed
  setting is applied with ``collMod`` (the index is kept, not rebuilt); where the
  database has no ``collMod`` (mongomock) the index is dropped and made again.  0 drops
  the TTL index (nothing expires); a later non-zero setting makes it again.
- a read horizon (:func:`horizon`, :func:`visible`, :func:`floor`): reads hide what is
  older, so an answer never depends on when the database's TTL monitor last ran (it
  runs every 60 s on MongoDB and SecantusDB; mongomock hides expired rows on read by the
  real time).  The horizon is rounded *up* to the minute (``HORIZON_STEP``): it never
  shows a row the TTL may already have deleted, and it stays the same for a minute.
  Cached lists follow it by steps: the days kept are in their keys
  (:func:`visible_key`), the step in their entries (:func:`visible_epoch`).  In a
  namespace with a staleness window (the log lists) a list of the step just before may
  be served for up to that window after the step, like a list that lags a delete
  (issue 9: with the horizon in the key every list missed for every reader at once,
  each minute); an exact namespace recomputes at once.
- a per-project override (kinds with ``override``): the project's ``retention`` object
  names days for this kind.  It may only be *shorter* than the global setting (a TTL
  index deletes at one age for the whole collection; a longer override cannot work, so
  the API refuses it with 422).  The worker's sweep (:func:`sweep`) deletes rows of a
  project past its override in batches of ``RETENTION_SWEEP_BATCH`` (each batch a
  ``find`` of ids then a ``delete_many`` by ``_id``: short writes, other writers go
  between them), and the read horizon honours the override at once.
- a backstop: where the TTL index is missing (it could not be made, or TTL indexes are
  off), the sweep deletes past the global horizon too.
- TTL indexes or the sweep alone (``RETENTION_TTL_INDEXES``: ``auto``, the default, is
  ``false`` on SecantusDB and ``true`` elsewhere).  Without TTL indexes a kind's rows
  past the global horizon are deleted by the worker's sweep (the backstop above, in
  batches, every ``RETENTION_SWEEP_SECONDS``), and :func:`apply` keeps an ordinary index
  on the time field for it (named like the TTL index), none when another index already
  leads with that field (the logs').  Why not on SecantusDB (0.7.0b3): its TTL monitor
  (every 60 s, in the server's one Python process) decodes and matches *every*
  document of every collection that has a TTL index, whatever the index says, under
  the storage's lock; with the raw points and logs kept 30 days that is every row
  stored, each minute, and the ingest that meets it stalls (make bench: CPU-point
  ingest 414-934 points/s with the TTL indexes, the server spending 45-67 CPU s per
  100,000 points, against 1,207 and 37 CPU s at 5fd7a1f, before retention; see
  bench/repro_secantus_ttl.py, which shows it with pymongo alone).
- a status (:func:`status`): the setting, what the index says, the oldest stored time,
  and ``behind`` when rows older than the horizon plus ``RETENTION_BEHIND_MARGIN_MINUTES``
  are still stored.  ``GET /api/retention`` and ``/metrics`` show it.

Where the overrides come from is one function registered by the composition root
(:func:`set_override_source`; the projects domain's, cached): this module imports no
domain.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from bson import ObjectId
from flask import current_app, has_app_context, has_request_context
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from polymicro.common import atomic, clock, local_cache
from polymicro.config import auto_choice
from polymicro.errors import InvalidInput

log = logging.getLogger(__name__)

DAY = 86400
HORIZON_STEP = 60  # seconds: the read horizon is rounded up to this
MAX_DAYS = 36500
_APPLIED_FLAG = "_polymicro_retention_applied"  # on the database client: settings applied


@dataclass(frozen=True)
class Kind:
    """One kind of data with a retention.

    - ``name``: what the API and ``/metrics`` call it (``logs``, ``points``, …).
    - ``collection``: returns the pymongo collection (called inside an app context).
    - ``time_field``: the stored datetime the age is measured from.
    - ``setting``: the config key with the days (0 = forever).
    - ``override``: the key of a project's ``retention`` object that may shorten it for
      that project, or None (no per-project override).
    - ``project_scope``: with ``override``, returns the filter selecting one project's
      rows (``{"project_id": id}``, or the project's metric ids).
    - ``index_name``: the TTL index's name.
    """

    name: str
    collection: Callable[[], Collection]
    time_field: str
    setting: str
    override: str | None = None
    project_scope: Callable[[ObjectId], dict] | None = None
    index_name: str = "retention_ttl"


_KINDS: dict[str, Kind] = {}
_override_source: Callable[[], dict] | None = None
# The cached namespace the overrides are read from (see visible_key), when the source
# keeps them in the process (common/local_cache.py).
_override_namespace: str | None = None
_KEYS_MEMO = "polymicro.retention.visible_keys"  # in app.extensions: one per app (config)


def register(kind: Kind) -> Kind:
    """Add (or replace, by name) a kind; returns it.  Idempotent."""
    if kind.override and kind.project_scope is None:
        raise ValueError(f"kind {kind.name}: an override needs a project_scope")
    _KINDS[kind.name] = kind
    return kind


def kinds() -> list[Kind]:
    return list(_KINDS.values())


def get(name: str) -> Kind:
    return _KINDS[name]


def set_override_source(source: Callable[[], dict], namespace: str | None = None) -> None:
    """``source()`` returns ``{project_id: {override key: days}}`` (projects with one);
    ``namespace``: the namespace it reads through ``local_cache.cached``, if it does (the
    days it gives are then remembered as long as that read would be, see
    :func:`visible_key`)."""
    global _override_source, _override_namespace
    _override_source = source
    _override_namespace = namespace


def overrides() -> dict:
    return _override_source() if _override_source is not None else {}


# --- settings and horizons ----------------------------------------------------------------


def days(kind: Kind) -> int:
    """The global setting in days (0: kept forever)."""
    return max(0, int(current_app.config.get(kind.setting, 0)))


def margin() -> timedelta:
    return timedelta(minutes=int(current_app.config.get("RETENTION_BEHIND_MARGIN_MINUTES", 30)))


def check_override(kind_setting: str, value: int | None, field: str) -> None:
    """422 on ``retention.<field>`` when ``value`` is longer than the global setting."""
    if value is None:
        return
    limit = max(0, int(current_app.config.get(kind_setting, 0)))
    if limit and value > limit:
        raise InvalidInput(
            f"Invalid retention.{field}: at most {limit} days (the global "
            f"POLYMICRO_{kind_setting}); a longer override cannot work, the TTL index "
            "deletes at the global age.",
            {"json": {"retention": {field: [f"At most {limit} days (the global retention)."]}}},
        )


def check_overrides(values: dict) -> None:
    """Refuse (422) a project's ``retention`` object that lengthens any kind's setting."""
    for kind in kinds():
        if kind.override and kind.override in values:
            check_override(kind.setting, values[kind.override], kind.override)


def _effective_days(kind: Kind, override: int | None) -> int:
    base = days(kind)
    if override:
        return min(base, override) if base else override
    return base


_EPOCH = datetime(1970, 1, 1)


def _step(moment: datetime) -> int:
    """The ``HORIZON_STEP`` (seconds since 1970) ``moment`` is rounded up to."""
    return math.ceil((moment - _EPOCH).total_seconds() / HORIZON_STEP)


def _cut(age_days: int, now: datetime | None = None) -> datetime:
    """``now - age_days`` rounded up to a multiple of ``HORIZON_STEP`` seconds."""
    exact = (now or clock.now()) - timedelta(days=age_days)
    return _EPOCH + timedelta(seconds=_step(exact) * HORIZON_STEP)


def _override_of(kind: Kind, project_id: ObjectId | None) -> int | None:
    if kind.override is None or project_id is None:
        return None
    return (overrides().get(project_id) or {}).get(kind.override)


def horizon(kind: Kind, project_id: ObjectId | None = None) -> datetime | None:
    """Rows of ``kind`` (of that project, if given) older than this are not shown
    (None: all are kept)."""
    ensure_applied()
    age = _effective_days(kind, _override_of(kind, project_id))
    return _cut(age) if age else None


def floor(kind: Kind, project_id: ObjectId | None, since: datetime | None) -> datetime | None:
    """``since`` raised to the horizon (the lower bound of a read)."""
    cut = horizon(kind, project_id)
    if cut is None:
        return since
    return cut if since is None else max(since, cut)


def visible(kind: Kind, project_id: ObjectId | None = None, project_field: str = "project_id"):
    """A filter selecting the rows still kept: by the project's horizon when
    ``project_id`` is given, else by the global one and every shorter project override
    (``$nor`` of one clause per such project: there are few)."""
    if project_id is not None:
        cut = horizon(kind, project_id)
        return {kind.time_field: {"$gte": cut}} if cut else {}
    query: dict = {}
    cut = horizon(kind)
    if cut is not None:
        query[kind.time_field] = {"$gte": cut}
    if kind.override:
        base = days(kind)
        clauses = []
        for pid, values in sorted(overrides().items(), key=lambda item: str(item[0])):
            override = values.get(kind.override)
            if override and (not base or override < base):
                clauses.append({project_field: pid, kind.time_field: {"$lt": _cut(override)}})
        if clauses:
            query["$nor"] = clauses
    return query


def visible_key(kind: Kind, project_id: ObjectId | None = None):
    """What :func:`visible` depends on besides the time: the days kept (for the project,
    or the global days and every shorter project override).  Cached lists put this in
    their keys and :func:`visible_epoch` in their entries, so a list's key does not
    change each time the horizon moves by a minute (issue 9: it did, and at each minute
    every list of every reader was missing at once and all of them waited for the
    database; with the epoch in the entry an older minute's entry is served like one of
    an older generation: within the namespace's staleness window, refreshed ahead).

    In a request it is remembered per app, kind and project for as long as the
    overrides it comes from would be answered from this process
    (``local_cache.derived``: no longer than ``REFERENCE_RECHECK_MS``, dropped at once by
    a bump this process makes): every cached hit of a project's logs or CPU points asks
    for it twice."""
    if _override_namespace is None or not has_request_context():
        return _visible_key(kind, project_id)
    store = current_app.extensions.get(_KEYS_MEMO)
    if store is None:
        store = current_app.extensions.setdefault(_KEYS_MEMO, {})
    return local_cache.derived(
        _override_namespace,
        store,
        (kind.name, project_id),
        lambda: _visible_key(kind, project_id),
    )


def _visible_key(kind: Kind, project_id: ObjectId | None):
    if project_id is not None:
        return _effective_days(kind, _override_of(kind, project_id))
    base = days(kind)
    shorter = []
    if kind.override:
        for pid, values in sorted(overrides().items(), key=lambda item: str(item[0])):
            override = values.get(kind.override)
            if override and (not base or override < base):
                shorter.append([str(pid), override])
    return [base, shorter]


def visible_epoch(kind: Kind, project_id: ObjectId | None = None) -> int | None:
    """The step (``HORIZON_STEP`` seconds since 1970) the horizons of :func:`visible` are
    cut at now, or None when nothing expires.  Every horizon moves at the same steps
    (whole days before the same time, rounded up to the minute), so one value stands for
    all of them.  Take it
    *before* the query's :func:`visible`: should a step pass in between, the entry then
    claims an older step than its data, which only makes it stale sooner."""
    key = visible_key(kind, project_id)
    if key == 0 or key == [0, []]:
        return None
    # The step of ``_cut(0)``, without making its datetime (this runs on every cached
    # read of a project's logs or points).
    return _step(clock.now())


# --- TTL indexes --------------------------------------------------------------------------


def ttl_indexes(collection: Collection) -> bool:
    """Whether retention is enforced by TTL indexes on ``collection``'s database
    (``RETENTION_TTL_INDEXES``; ``auto``: not on SecantusDB, see the module docstring),
    else by the worker's sweep alone."""
    value = current_app.config.get("RETENTION_TTL_INDEXES", "auto") if has_app_context() else "auto"
    choice = auto_choice("RETENTION_TTL_INDEXES", value)
    if choice == "auto":
        return not atomic.on_secantus(collection.database.client)
    return choice == "true"


def apply_ttl(collection: Collection, field: str, name: str, age_days: int) -> str:
    """Make the TTL index ``name`` on ``field`` say ``age_days`` (none when 0).

    Returns what was done: ``unchanged``, ``created``, ``collMod``, ``recreated`` (no
    ``collMod`` on this database: mongomock), ``dropped`` or ``none``.  Without TTL
    indexes (:func:`ttl_indexes`) the index ``name`` is an ordinary one on ``field``
    for the sweep (:func:`_apply_sweep_index`).
    """
    if not ttl_indexes(collection):
        return _apply_sweep_index(collection, field, name, age_days)
    current = collection.index_information().get(name)
    seconds = age_days * DAY
    if age_days == 0:
        if current is None:
            return "none"
        with contextlib.suppress(OperationFailure):  # another process dropped it first
            collection.drop_index(name)
        return "dropped"
    if current is None:
        collection.create_index([(field, 1)], name=name, expireAfterSeconds=seconds)
        return "created"
    if current.get("expireAfterSeconds") == seconds:
        return "unchanged"
    try:
        collection.database.command(
            {"collMod": collection.name, "index": {"name": name, "expireAfterSeconds": seconds}}
        )
        return "collMod"
    except (NotImplementedError, OperationFailure) as exc:
        log.info("collMod not available (%s): making the TTL index %s again", exc, name)
    with contextlib.suppress(OperationFailure):
        collection.drop_index(name)
    collection.create_index([(field, 1)], name=name, expireAfterSeconds=seconds)
    return "recreated"


def _apply_sweep_index(collection: Collection, field: str, name: str, age_days: int) -> str:
    """Without TTL indexes: no TTL index ``name``; for a kept age, an ordinary index
    ``name`` on ``field`` that the sweep's ``field < horizon`` reads, unless another index
    leads with ``field``.  Returns ``unchanged``, ``created``, ``replaced`` (a TTL index
    made before was replaced), ``dropped`` or ``none``."""
    indexes = collection.index_information()
    current = indexes.get(name)
    ttl = current is not None and current.get("expireAfterSeconds") is not None
    other = any(spec["key"][0][0] == field for index, spec in indexes.items() if index != name)
    wanted = bool(age_days) and not other
    if current is not None and (ttl or not wanted):
        with contextlib.suppress(OperationFailure):  # another process dropped it first
            collection.drop_index(name)
        if not wanted:
            return "dropped"
    elif current is not None or not wanted:
        return "unchanged" if current is not None else "none"
    collection.create_index([(field, 1)], name=name)
    return "replaced" if ttl else "created"


def apply(kind: Kind) -> str:
    return apply_ttl(kind.collection(), kind.time_field, kind.index_name, days(kind))


def apply_all() -> dict[str, str]:
    """Apply every kind's setting to its TTL index; ``{kind: what was done}``."""
    done = {kind.name: apply(kind) for kind in kinds()}
    _mark_applied()
    return done


def _settings() -> tuple:
    return tuple(sorted((kind.name, days(kind)) for kind in kinds()))


def _client():
    import mongoengine

    from polymicro.extensions import DB_ALIAS

    return mongoengine.get_db(DB_ALIAS).client


def _mark_applied() -> None:
    with contextlib.suppress(Exception):
        _client().__dict__[_APPLIED_FLAG] = _settings()


def ensure_applied() -> None:
    """Apply the settings once per database client (per process) and setting values:
    the first use of the database after a start (or a changed setting) makes the TTL
    indexes say what the settings say."""
    client = _client()
    if client.__dict__.get(_APPLIED_FLAG) == _settings():
        return
    client.__dict__[_APPLIED_FLAG] = _settings()  # once, even if it fails below
    for kind in kinds():
        try:
            action = apply(kind)
        except Exception:
            log.exception("retention: the TTL index of %s could not be applied", kind.name)
            client.__dict__.pop(_APPLIED_FLAG, None)  # try again at the next use
            continue
        if action not in ("unchanged", "none"):
            log.info("retention: %s TTL index %s (%s days)", kind.name, action, days(kind))


def index_days(kind: Kind) -> float | None:
    """What the database's TTL index says, in days (None: no TTL index)."""
    info = kind.collection().index_information().get(kind.index_name)
    if info is None or info.get("expireAfterSeconds") is None:
        return None
    return info["expireAfterSeconds"] / DAY


# --- the sweep (the worker) ---------------------------------------------------------------


def _delete_older(collection: Collection, query: dict, batch: int, budget: int) -> int:
    """Delete the rows matching ``query`` in batches of ``batch`` ids, at most ``budget``
    batches; returns how many were deleted."""
    deleted = 0
    for _ in range(budget):
        ids = [row["_id"] for row in collection.find(query, {"_id": 1}).limit(batch)]
        if not ids:
            break
        deleted += collection.delete_many({"_id": {"$in": ids}}).deleted_count
        if len(ids) < batch:
            break
    return deleted


def sweep() -> dict[str, int]:
    """One round: per-project overrides, then the backstop where a TTL index is missing.

    Safe in several workers at once (a delete of what is already gone deletes nothing).
    Each run deletes at most ``RETENTION_SWEEP_MAX_BATCHES`` batches per project and
    kind; the rest waits for the next run.  Returns ``{kind: rows deleted}``.
    """
    ensure_applied()
    batch = max(1, int(current_app.config.get("RETENTION_SWEEP_BATCH", 1000)))
    budget = max(1, int(current_app.config.get("RETENTION_SWEEP_MAX_BATCHES", 100)))
    found = overrides()
    done: dict[str, int] = {}
    for kind in kinds():
        collection = kind.collection()
        deleted = 0
        base = days(kind)
        if kind.override:
            for project_id, values in found.items():
                override = values.get(kind.override)
                if not override or (base and override >= base):
                    continue
                scope = kind.project_scope(project_id)
                query = {**scope, kind.time_field: {"$lt": _cut(override)}}
                deleted += _delete_older(collection, query, batch, budget)
        if base and index_days(kind) is None:  # no TTL index deletes them
            query = {kind.time_field: {"$lt": _cut(base)}}
            deleted += _delete_older(collection, query, batch, budget)
        done[kind.name] = deleted
    return done


# --- what is kept (GET /api/retention, /metrics) ------------------------------------------


def _oldest(collection: Collection, field: str, scope: dict | None = None) -> datetime | None:
    rows = collection.find(scope or {}, {field: 1}).sort(field, 1).limit(1)
    for row in rows:
        return row.get(field)
    return None


def status() -> list[dict]:
    """Per kind: the setting, what the index says, the oldest stored time, whether the
    deletion is behind, and each project override with the same."""
    ensure_applied()
    slack = margin()
    found = overrides()
    report = []
    for kind in kinds():
        collection = kind.collection()
        setting = days(kind)
        cut = _cut(setting) if setting else None
        # Only where an index leads with the time field (the TTL index, the logs' own):
        # /metrics asks at every scrape, and a sort without one reads the collection.
        indexed = any(
            spec["key"][0][0] == kind.time_field for spec in collection.index_information().values()
        )
        oldest = _oldest(collection, kind.time_field) if indexed else None
        entry = {
            "kind": kind.name,
            "setting": f"POLYMICRO_{kind.setting}",
            "days": setting,
            "index_days": index_days(kind),
            "index_name": kind.index_name,
            "horizon": cut,
            "oldest": oldest,
            "behind": bool(cut and oldest and oldest < cut - slack),
            "overrides": [],
        }
        if kind.override:
            for project_id, values in sorted(found.items(), key=lambda item: str(item[0])):
                override = values.get(kind.override)
                if not override:
                    continue
                effective = _effective_days(kind, override)
                project_cut = _cut(effective)
                first = _oldest(collection, kind.time_field, kind.project_scope(project_id))
                entry["overrides"].append(
                    {
                        "project_id": project_id,
                        "days": override,
                        "effective_days": effective,
                        "horizon": project_cut,
                        "oldest": first,
                        "behind": bool(first and first < project_cut - slack),
                    }
                )
        entry["behind"] = entry["behind"] or any(o["behind"] for o in entry["overrides"])
        report.append(entry)
    return report
