"""``/api/metrics/cpu/{id}/series`` through HTTP: the source it used (``X-Series-Source``),
``source`` and ``agg``, results equal across sources, and who may read."""

from __future__ import annotations

import random

import pytest

from polymicro.metrics import service as metrics
from tests.conftest import client_as
from tests.factories import as_json, created, make_service, metric_body, stamp
from tests.test_rollups_service import PCTS, approx, random_points, reference, run_worker

URL = "/api/metrics/cpu"


@pytest.fixture
def entry(client, ctx):
    """An entry with 900 random points over six hours from T0, rolled up, and the
    points (as stored)."""
    points = random_points(random.Random(7), 0, 360, 900)
    body = metric_body(make_service(), data=as_json(points))
    made = created(client, URL, body)
    run_worker()
    return made, points


def series(client, entry, **query):
    return client.get(f"{URL}/{entry['id']}/series", query_string=query)


def as_api(buckets: list[dict]) -> list[dict]:
    return [{**b, "time": as_json(b["time"])} for b in buckets]


@pytest.mark.parametrize(
    ("query", "source"),
    [
        ({"since": stamp(0), "until": stamp(360), "step": "5m"}, "5m"),
        ({"since": stamp(0), "until": stamp(20), "step": "5m"}, "raw"),
        ({"since": stamp(0), "until": stamp(24 * 60), "step": "1h"}, "1h"),
        ({"since": stamp(0), "until": stamp(360), "step": "90s"}, "raw"),
        ({"since": stamp(0), "until": stamp(360), "step": "5m", "source": "raw"}, "raw"),
        ({"since": stamp(0), "until": stamp(360), "step": "1h", "source": "1h"}, "1h"),
    ],
)
def test_the_header_names_the_source_and_the_buckets_are_the_raw_ones(client, entry, query, source):
    made, points = entry
    response = series(client, made, **query)

    assert response.status_code == 200
    assert response.headers["X-Series-Source"] == source
    since, until = (metrics_time(query["since"]), metrics_time(query["until"]))
    step = metrics_step(query["step"])
    assert response.json == approx(as_api(reference(points, since, until, step)))


def metrics_time(text: str):
    from polymicro.common.timeutil import parse_time

    return parse_time(text).replace(tzinfo=None)


def metrics_step(text: str):
    from polymicro.metrics.schemas import Step

    return Step().deserialize(text)


def test_percentiles_are_added_when_asked(client, entry):
    made, points = entry
    response = series(
        client, made, since=stamp(0), until=stamp(360), step="5m", agg="avg,min,max,p50,p90,p95,p99"
    )

    assert response.status_code == 200
    assert response.headers["X-Series-Source"] == "5m"
    expected = reference(
        points, metrics_time(stamp(0)), metrics_time(stamp(360)), metrics_step("5m"), PCTS
    )
    assert response.json == approx(as_api(expected))


def test_percentiles_at_a_step_no_rollup_has_come_from_raw(client, entry):
    made, points = entry
    response = series(client, made, since=stamp(0), until=stamp(360), step="30m", agg="p95")

    assert response.headers["X-Series-Source"] == "raw"
    since, until = metrics_time(stamp(0)), metrics_time(stamp(360))
    expected = reference(points, since, until, metrics_step("30m"), (0.95,))
    assert response.json == approx(as_api(expected))


def test_without_agg_the_buckets_have_no_percentiles(client, entry):
    made, _points = entry
    bucket = series(client, made, since=stamp(0), until=stamp(360), step="5m").json[0]
    assert set(bucket["load"]) == {"avg", "min", "max"}
    assert set(bucket["memory"]) == {"avg", "max"}


@pytest.mark.parametrize(
    "query",
    [
        {"agg": "p42"},
        {"agg": "avg,median"},
        {"source": "2h"},
        {"source": "1h", "step": "5m"},
        {"source": "5m", "step": "15m", "agg": "p95"},
    ],
)
def test_bad_agg_or_source_is_422(client, entry, query):
    made, _points = entry
    response = series(client, made, since=stamp(0), until=stamp(360), **query)
    assert response.status_code == 422
    assert response.json["code"] == 422


@pytest.mark.parametrize("role", ["viewer", "editor", "admin"])
def test_every_role_reads_series(app, entry, role):
    made, _points = entry
    response = series(client_as(app, role), made, since=stamp(0), until=stamp(360))
    assert response.status_code == 200


def test_anonymous_callers_get_401(app, entry):
    made, _points = entry
    assert series(app.test_client(), made).status_code == 401


def test_the_openapi_document_describes_the_header_and_the_parameters(client):
    spec = client.get("/openapi.json").json
    get = spec["paths"]["/api/metrics/cpu/{metric_id}/series"]["get"]
    header = get["responses"]["200"]["headers"]["X-Series-Source"]
    assert header["schema"]["enum"] == ["raw", "5m", "1h"]
    assert {"agg", "source", "step", "since", "until"} <= {p["name"] for p in get["parameters"]}


def test_late_points_posted_through_the_api_show_at_once(client, entry):
    made, _points = entry
    late = [{"time": stamp(61), "load": 12345.0}]
    assert client.post(f"{URL}/{made['id']}/data", json=late).status_code == 201
    response = series(client, made, since=stamp(0), until=stamp(360), step="1h", source="1h")
    assert response.headers["X-Series-Source"] == "1h"
    assert response.json[1]["load"]["max"] == 12345.0
    assert metrics.recompute_rollups() == 1
    again = series(client, made, since=stamp(0), until=stamp(360), step="1h", source="1h")
    assert again.json == response.json
