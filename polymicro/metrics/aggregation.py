"""How CPU points become bucket statistics: the one aggregation over raw points, the
percentiles, and the exact merging of partial buckets (raw pieces and rollups).

A *partial* is a dict with the bucket start ``time`` and statistics that merge exactly:
``count``, ``load_sum``/``load_min``/``load_max``, ``memory_count``/``memory_sum``/
``memory_min``/``memory_max``, ``threads_max``; and optionally ``load_p``/``memory_p``,
the bucket's percentiles (these do not merge: a bucket that has them comes from one
source only).

Percentiles (``p`` in ``PERCENTILES``) are the discrete nearest rank: the value at rank
``ceil(p * n)`` of the ``n`` sorted values.  The database computes them with
``$percentile`` where it has it (MongoDB 7+: ``method: "approximate"``, a t-digest, so
approximate on large inputs; SecantusDB accepts only ``approximate`` too but computes
the exact nearest rank); elsewhere (mongomock) the values are pushed and ranked here,
exactly.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from pymongo.errors import OperationFailure

from polymicro.metrics.models import PERCENTILES, CpuPoint

EPOCH = datetime(1970, 1, 1)
MS = timedelta(milliseconds=1)

# Whether the database behind a client computes `$percentile` (asked once per client).
_percentile_support: dict[int, bool] = {}


def percentile(values: list[float], p: float) -> float | None:
    """The discrete nearest-rank percentile (SecantusDB's and MongoDB's definition)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]


def database_percentiles(collection=None) -> bool | None:
    """True when the database computes ``$percentile``, False when it does not, None
    when not known yet (no aggregation with percentiles has run on this client)."""
    collection = collection if collection is not None else CpuPoint._get_collection()
    return _percentile_support.get(id(collection.database.client))


def floor_to(value: datetime, size: timedelta) -> datetime:
    size_ms = size // MS
    return EPOCH + ((value - EPOCH) // MS // size_ms * size_ms) * MS


def ceil_to(value: datetime, size: timedelta) -> datetime:
    floor = floor_to(value, size)
    return floor if floor == value else floor + size


def _group(step_ms: int, percentiles: bool, in_database: bool) -> dict:
    group = {
        "_id": {"$subtract": ["$time", {"$mod": [{"$subtract": ["$time", EPOCH]}, step_ms]}]},
        "count": {"$sum": 1},
        "load_sum": {"$sum": "$load"},
        "load_min": {"$min": "$load"},
        "load_max": {"$max": "$load"},
        "memory_count": {"$sum": {"$cond": [{"$gt": ["$memory", None]}, 1, 0]}},
        "memory_sum": {"$sum": "$memory"},
        "memory_min": {"$min": "$memory"},
        "memory_max": {"$max": "$memory"},
        "threads_max": {"$max": "$threads"},
    }
    if percentiles and in_database:
        for field in ("load", "memory"):
            group[f"{field}_p"] = {
                "$percentile": {
                    "input": f"${field}",
                    "p": list(PERCENTILES),
                    "method": "approximate",
                }
            }
    elif percentiles:
        group["load_v"] = {"$push": "$load"}
        group["memory_v"] = {"$push": "$memory"}
    return group


def _partial(row: dict, percentiles: bool) -> dict:
    part = {
        "time": row["_id"],
        "count": row["count"],
        "load_sum": float(row.get("load_sum") or 0.0),
        "load_min": row.get("load_min"),
        "load_max": row.get("load_max"),
        "memory_count": row.get("memory_count") or 0,
        "memory_sum": float(row.get("memory_sum") or 0.0),
        "memory_min": row.get("memory_min"),
        "memory_max": row.get("memory_max"),
        "threads_max": row.get("threads_max"),
    }
    if percentiles:
        for field in ("load", "memory"):
            if f"{field}_v" in row:
                values = [v for v in row[f"{field}_v"] if v is not None]
                part[f"{field}_p"] = [percentile(values, p) for p in PERCENTILES]
            else:
                got = row.get(f"{field}_p") or [None] * len(PERCENTILES)
                part[f"{field}_p"] = list(got)
        if not part["memory_count"]:
            part["memory_p"] = [None] * len(PERCENTILES)
    return part


def raw_partials(
    metric_id,
    since: datetime,
    until: datetime,
    step: timedelta,
    *,
    percentiles: bool = False,
    until_inclusive: bool = True,
) -> list[dict]:
    """Partials of the raw points of ``[since, until]`` (``[since, until)`` unless
    ``until_inclusive``), one per epoch-aligned bucket of ``step``, oldest first: one
    aggregation on the ``(metric_id, time)`` index."""
    collection = CpuPoint._get_collection()
    match = {
        "metric_id": metric_id,
        "time": {"$gte": since, ("$lte" if until_inclusive else "$lt"): until},
    }
    step_ms = step // MS
    key = id(collection.database.client)
    in_database = percentiles and _percentile_support.get(key, True)
    pipeline = [{"$match": match}, {"$group": _group(step_ms, percentiles, in_database)}]
    pipeline.append({"$sort": {"_id": 1}})
    if in_database and key not in _percentile_support:
        try:
            rows = list(collection.aggregate(pipeline))
        except (NotImplementedError, OperationFailure):
            _percentile_support[key] = False
            in_database = False
            pipeline[1] = {"$group": _group(step_ms, percentiles, False)}
        else:
            _percentile_support[key] = True
            return [_partial(row, percentiles) for row in rows]
    return [_partial(row, percentiles) for row in collection.aggregate(pipeline)]


def _lower(a, b):
    return b if a is None else a if b is None else min(a, b)


def _higher(a, b):
    return b if a is None else a if b is None else max(a, b)


def merge(partials: list[dict], step: timedelta) -> list[dict]:
    """Partials of smaller buckets (or pieces of one) merged into buckets of ``step``,
    oldest first.  Sums and counts add, extremes compare: exact in any order.  A bucket
    keeps percentiles only when it is made of one partial that has them."""
    merged: dict[datetime, dict] = {}
    for part in partials:
        start = floor_to(part["time"], step)
        into = merged.get(start)
        if into is None:
            merged[start] = dict(part, time=start)
            continue
        into["count"] += part["count"]
        into["load_sum"] += part["load_sum"]
        into["memory_count"] += part["memory_count"]
        into["memory_sum"] += part["memory_sum"]
        for field in ("load_min", "memory_min"):
            into[field] = _lower(into[field], part[field])
        for field in ("load_max", "memory_max", "threads_max"):
            into[field] = _higher(into[field], part[field])
        into.pop("load_p", None)
        into.pop("memory_p", None)
    return [merged[start] for start in sorted(merged)]


def bucket_view(part: dict, percentiles: tuple[float, ...] = ()) -> dict:
    """A series bucket as the API shows it (``percentiles``: which ``p`` to add, as
    ``p50``…``p99`` of ``load`` and ``memory``)."""
    count = part["count"]
    memory_count = part["memory_count"]
    view = {
        "time": part["time"],
        "count": count,
        "load": {
            "avg": part["load_sum"] / count if count else None,
            "min": part["load_min"],
            "max": part["load_max"],
        },
        "memory": {
            "avg": part["memory_sum"] / memory_count if memory_count else None,
            "max": part["memory_max"] if memory_count else None,
        },
        "threads": {"max": part["threads_max"]},
    }
    for p in percentiles:
        index = PERCENTILES.index(p)
        name = f"p{round(p * 100)}"
        view["load"][name] = (part.get("load_p") or [None] * len(PERCENTILES))[index]
        view["memory"][name] = (part.get("memory_p") or [None] * len(PERCENTILES))[index]
    return view
