"""/api/metrics/cpu through the HTTP client.

Rules every JSON endpoint shares (media type, malformed JSON, a body of the wrong JSON
type) are tested once for every endpoint in ``test_hostile_inputs.py``.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import bson
import pytest

from polymicro.common.timeutil import format_time, utcnow
from polymicro.metrics.models import CpuMetric, CpuPoint
from tests.factories import (
    T0,
    as_json,
    created,
    hour_of_points,
    make_project,
    make_service,
    metric_body,
    minute_points,
    stamp,
)

URL = "/api/metrics/cpu"
UNKNOWN_ID = "0123456789abcdef01234567"
MALFORMED_IDS = ["123", "zzzzzzzzzzzzzzzzzzzzzzzz", "0123456789abcdef0123456", "not-an-id"]


@pytest.fixture
def svc(ctx):
    return make_service(name="Checkout")


def create_entry(client, svc, **fields) -> dict:
    """Create the entry of ``svc`` through the API (``data=`` gives initial points)."""
    return created(client, URL, metric_body(svc, **fields))


def append(client, entry, points):
    return client.post(f"{URL}/{entry['id']}/data", json=as_json(points))


def stored_points(metric_id: str) -> int:
    return CpuPoint.objects(metric_id=bson.ObjectId(metric_id)).count()


# --- create -------------------------------------------------------------------------


def test_create_returns_the_entry_with_its_initial_points_oldest_first(client, svc):
    points = [
        {"time": stamp(2), "load": 2},
        {"time": stamp(1), "load": 1, "memory": 10, "threads": 4},
    ]

    entry = create_entry(client, svc, data=points)

    assert set(entry) == {
        "id",
        "project_id",
        "service_id",
        "service_name",
        "data",
        "created_at",
        "updated_at",
    }
    assert entry["project_id"] == str(svc.project_id)
    assert entry["service_id"] == str(svc.id)
    assert entry["service_name"] == "Checkout"
    assert entry["data"] == [
        {"time": stamp(1), "load": 1.0, "memory": 10.0, "threads": 4},
        {"time": stamp(2), "load": 2.0, "memory": None, "threads": None},
    ]
    assert entry["created_at"] == entry["updated_at"]
    assert client.get(f"{URL}/{entry['id']}").json["id"] == entry["id"]


def test_create_matches_the_service_name_case_insensitively_and_stores_the_canonical_one(
    client, svc
):
    entry = create_entry(client, svc, service_name="  cHeCkOuT ")

    assert entry["service_name"] == "Checkout"
    assert entry["service_id"] == str(svc.id)
    assert entry["data"] == []


def test_create_answers_on_the_path_with_a_trailing_slash(client, svc):
    response = client.post(URL + "/", json=metric_body(svc))

    assert response.status_code == 201


def test_a_second_entry_for_the_same_service_is_a_conflict(client, svc):
    create_entry(client, svc)

    response = client.post(URL, json=metric_body(svc, service_name="CHECKOUT"))

    assert response.status_code == 409
    assert CpuMetric.objects.count() == 1


def test_create_with_an_unknown_project_is_422_on_project_id(client, svc):
    response = client.post(URL, json=metric_body(svc, project_id=UNKNOWN_ID))

    assert response.status_code == 422
    assert "project_id" in response.json["errors"]["json"]


def test_create_with_the_service_of_another_project_is_422_on_service_name(client, svc):
    other_project = make_project()

    response = client.post(URL, json=metric_body(svc, project_id=other_project.id))

    assert response.status_code == 422
    assert "service_name" in response.json["errors"]["json"]
    assert CpuMetric.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"service_name": "x"}, "project_id"),
        ({"project_id": "nope", "service_name": "x"}, "project_id"),
        ({"project_id": UNKNOWN_ID}, "service_name"),
        ({"project_id": UNKNOWN_ID, "service_name": "   "}, "service_name"),
        ({"project_id": UNKNOWN_ID, "service_name": "x", "service_id": UNKNOWN_ID}, "service_id"),
        ({"project_id": UNKNOWN_ID, "service_name": "x", "data": [{"load": -1}]}, "data"),
        ({"project_id": UNKNOWN_ID, "service_name": "x", "data": {"load": 1}}, "data"),
    ],
)
def test_create_validation_errors_name_the_field(client, body, field):
    response = client.post(URL, json=body)

    assert response.status_code == 422
    assert field in response.json["errors"]["json"]


# --- lists --------------------------------------------------------------------------


def test_list_filters_by_project_and_pages_in_the_database(client, ctx):
    first, second = make_project(), make_project()
    services = [make_service(first) for _ in range(3)] + [make_service(second)]
    ids = [create_entry(client, s)["id"] for s in services]

    everything = client.get(URL)
    of_first = client.get(URL, query_string={"project_id": str(first.id)})
    page_two = client.get(URL, query_string={"page": 2, "page_size": 3})

    assert [e["id"] for e in everything.json] == ids
    assert [e["id"] for e in of_first.json] == ids[:3]
    assert [e["id"] for e in page_two.json] == ids[3:]
    assert json.loads(page_two.headers["X-Pagination"])["total"] == 4


def test_project_list_returns_its_entries_and_404_for_an_unknown_project(client, ctx):
    project = make_project()
    entry = create_entry(client, make_service(project))
    create_entry(client, make_service(make_project()))

    found = client.get(f"{URL}/project/{project.id}")
    unknown = client.get(f"{URL}/project/{UNKNOWN_ID}")
    malformed = client.get(f"{URL}/project/123")

    assert [e["id"] for e in found.json] == [entry["id"]]
    assert unknown.status_code == 404
    assert malformed.status_code == 404


def test_service_list_matches_the_name_case_insensitively_and_filters_by_project(client, ctx):
    first, second = make_project(), make_project()
    in_first = create_entry(client, make_service(first, name="Billing"))
    in_second = create_entry(client, make_service(second, name="billing"))
    create_entry(client, make_service(first, name="Search"))

    any_project = client.get(f"{URL}/service/BILLING")
    one_project = client.get(f"{URL}/service/billing", query_string={"project_id": str(second.id)})
    none = client.get(f"{URL}/service/no-such-service")

    assert [e["id"] for e in any_project.json] == [in_first["id"], in_second["id"]]
    assert [e["id"] for e in one_project.json] == [in_second["id"]]
    assert none.status_code == 200
    assert none.json == []


def test_lists_give_each_entry_the_latest_points_of_the_window(client, svc):
    entry = create_entry(client, svc, data=minute_points(10))
    window = {"since": stamp(2), "until": stamp(8), "points": 3}

    for path in (URL, f"{URL}/project/{svc.project_id}", f"{URL}/service/{svc.name}"):
        listed = client.get(path, query_string=window).json

        assert [e["id"] for e in listed] == [entry["id"]]
        assert [p["load"] for p in listed[0]["data"]] == [6.0, 7.0, 8.0]


# --- read window --------------------------------------------------------------------


def test_points_limit_returns_the_latest_n_oldest_first(client, svc):
    entry = create_entry(client, svc, data=minute_points(20))

    response = client.get(f"{URL}/{entry['id']}", query_string={"points": 5})

    assert [p["time"] for p in response.json["data"]] == [stamp(m) for m in range(15, 20)]


def test_reads_default_to_the_latest_500_points(client, svc):
    entry = create_entry(client, svc, data=minute_points(600))

    data = client.get(f"{URL}/{entry['id']}").json["data"]

    assert len(data) == 500
    assert data[0]["time"] == stamp(100)
    assert data[-1]["time"] == stamp(599)


def test_since_and_until_are_inclusive(client, svc):
    entry = create_entry(client, svc, data=minute_points(10))

    response = client.get(
        f"{URL}/{entry['id']}", query_string={"since": stamp(3), "until": stamp(6)}
    )

    assert [p["time"] for p in response.json["data"]] == [stamp(3), stamp(4), stamp(5), stamp(6)]


def test_window_times_accept_offsets_and_naive_strings(client, svc):
    entry = create_entry(client, svc, data=minute_points(10))
    since = "2026-01-01T01:04:00+01:00"  # = 00:04Z
    until = "2026-01-01 00:05:00"

    response = client.get(f"{URL}/{entry['id']}", query_string={"since": since, "until": until})

    assert [p["time"] for p in response.json["data"]] == [stamp(4), stamp(5)]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"points": 0}, "points"),
        ({"points": 10001}, "points"),
        ({"points": "many"}, "points"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since"),
    ],
)
def test_bad_read_arguments_are_422_on_the_query(client, svc, query, field):
    entry = create_entry(client, svc)

    response = client.get(f"{URL}/{entry['id']}", query_string=query)

    assert response.status_code == 422
    assert field in response.json["errors"]["query"]


# --- append -------------------------------------------------------------------------


def test_append_one_point_object(client, svc):
    entry = create_entry(client, svc)
    before = utcnow()

    response = client.post(f"{URL}/{entry['id']}/data", json={"load": 250.5, "memory": 40})

    assert response.status_code == 201
    assert response.json == {"inserted": 1}
    [point] = client.get(f"{URL}/{entry['id']}").json["data"]
    assert point["load"] == 250.5
    assert point["memory"] == 40.0
    assert point["threads"] is None
    assert format_time(before) <= point["time"] <= format_time(utcnow())


def test_append_an_array_of_points(client, svc):
    entry = create_entry(client, svc)

    response = append(client, entry, minute_points(3))

    assert response.status_code == 201
    assert response.json == {"inserted": 3}
    assert [p["load"] for p in client.get(f"{URL}/{entry['id']}").json["data"]] == [0, 1, 2]


def test_append_accepts_10000_points(client, svc):
    entry = create_entry(client, svc)

    response = append(client, entry, minute_points(10000))

    assert response.status_code == 201
    assert response.json == {"inserted": 10000}
    assert stored_points(entry["id"]) == 10000


@pytest.mark.parametrize(("count", "problem"), [(10001, "at most 10000"), (0, "at least one")])
def test_append_refuses_too_many_or_no_points(client, svc, count, problem):
    entry = create_entry(client, svc)

    response = append(client, entry, minute_points(count))

    assert response.status_code == 422
    assert problem in response.json["errors"]["json"]["_schema"][0]
    assert stored_points(entry["id"]) == 0


def test_a_bad_point_is_named_by_its_index_and_nothing_is_stored(client, svc):
    entry = create_entry(client, svc, data=minute_points(2))
    points = as_json(minute_points(5, start=10))
    points[3]["load"] = "high"
    before = stored_points(entry["id"])

    response = client.post(f"{URL}/{entry['id']}/data", json=points)

    assert response.status_code == 422
    assert response.json["errors"]["json"] == {"3": {"load": ["Not a valid number."]}}
    assert stored_points(entry["id"]) == before == 2


@pytest.mark.parametrize(
    ("point", "field"),
    [
        ({}, "load"),
        ({"load": -0.1}, "load"),
        ({"load": 100000.1}, "load"),
        ({"load": "5"}, "load"),
        ({"load": True}, "load"),
        ({"load": None}, "load"),
        ({"load": 1, "memory": 100.5}, "memory"),
        ({"load": 1, "memory": -1}, "memory"),
        ({"load": 1, "memory": "50"}, "memory"),
        ({"load": 1, "threads": 1.5}, "threads"),
        ({"load": 1, "threads": -1}, "threads"),
        ({"load": 1, "threads": 10_000_001}, "threads"),
        ({"load": 1, "threads": False}, "threads"),
        ({"load": 1, "time": "soon"}, "time"),
        ({"load": 1, "time": 1767225600}, "time"),
        ({"load": 1, "cpu": 3}, "cpu"),
    ],
)
def test_invalid_point_fields_are_422_naming_the_field(client, svc, point, field):
    entry = create_entry(client, svc)

    response = client.post(f"{URL}/{entry['id']}/data", json=point)

    assert response.status_code == 422
    assert field in response.json["errors"]["json"]
    assert stored_points(entry["id"]) == 0


@pytest.mark.parametrize("raw", ['{"load": NaN}', '{"load": Infinity}', '{"load": -Infinity}'])
def test_nan_and_infinity_are_refused(client, svc, raw):
    entry = create_entry(client, svc)

    response = client.post(f"{URL}/{entry['id']}/data", data=raw, content_type="application/json")

    assert response.status_code == 422
    assert "load" in response.json["errors"]["json"]
    assert stored_points(entry["id"]) == 0


def test_an_array_of_numbers_is_not_an_array_of_points(client, svc):
    entry = create_entry(client, svc)

    response = client.post(f"{URL}/{entry['id']}/data", json=[5])

    assert response.status_code == 422
    assert stored_points(entry["id"]) == 0


def test_appending_does_not_grow_or_rewrite_the_entry_document(client, svc):
    entry = create_entry(client, svc)
    collection = CpuMetric._get_collection()
    # An old updated_at, so that a bump within the same millisecond would still show.
    collection.update_one({"_id": bson.ObjectId(entry["id"])}, {"$set": {"updated_at": T0}})
    before = collection.find_one({"_id": bson.ObjectId(entry["id"])})

    for start in (0, 100, 200):
        append(client, entry, minute_points(100, start=start))

    after = collection.find_one({"_id": bson.ObjectId(entry["id"])})
    assert after == before
    assert len(bson.encode(after)) == len(bson.encode(before))
    assert CpuPoint._get_collection().count_documents({"metric_id": after["_id"]}) == 300
    assert client.get(f"{URL}/{entry['id']}").json["updated_at"] == stamp(0)


# --- replace and delete -------------------------------------------------------------


def test_put_replaces_all_points(client, svc):
    entry = create_entry(client, svc, data=minute_points(5))

    response = client.put(
        f"{URL}/{entry['id']}", json=as_json({"data": minute_points(2, start=100)})
    )

    assert response.status_code == 200
    assert [p["load"] for p in response.json["data"]] == [100.0, 101.0]
    assert response.json["updated_at"] >= entry["updated_at"]
    assert stored_points(entry["id"]) == 2


def test_put_with_an_empty_array_removes_every_point(client, svc):
    entry = create_entry(client, svc, data=minute_points(5))

    response = client.put(f"{URL}/{entry['id']}", json={"data": []})

    assert response.status_code == 200
    assert response.json["data"] == []
    assert stored_points(entry["id"]) == 0


def test_put_without_data_changes_nothing(client, svc):
    entry = create_entry(client, svc, data=minute_points(5))

    response = client.put(f"{URL}/{entry['id']}", json={})

    assert response.status_code == 200
    assert response.json == entry


@pytest.mark.parametrize(
    "body",
    [
        {"service_name": "other"},
        {"data": [{"load": 1}], "project_id": UNKNOWN_ID},
        {"data": [{"load": 1}, {"load": -5}]},
        {"data": "points"},
    ],
)
def test_put_accepts_only_valid_data(client, svc, body):
    entry = create_entry(client, svc, data=minute_points(3))

    response = client.put(f"{URL}/{entry['id']}", json=body)

    assert response.status_code == 422
    assert stored_points(entry["id"]) == 3


def test_delete_is_204_then_404_and_the_points_are_gone(client, svc):
    entry = create_entry(client, svc, data=minute_points(5))

    deleted = client.delete(f"{URL}/{entry['id']}")

    assert deleted.status_code == 204
    assert deleted.data == b""
    assert client.get(f"{URL}/{entry['id']}").status_code == 404
    assert client.delete(f"{URL}/{entry['id']}").status_code == 404
    assert stored_points(entry["id"]) == 0


@pytest.mark.parametrize("metric_id", [UNKNOWN_ID, *MALFORMED_IDS])
@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("get", "", None),
        ("put", "", {"data": []}),
        ("delete", "", None),
        ("post", "/data", {"load": 1}),
        ("get", "/series", None),
    ],
)
def test_unknown_and_malformed_ids_are_404(client, ctx, metric_id, method, suffix, body):
    response = getattr(client, method)(f"{URL}/{metric_id}{suffix}", json=body)

    assert response.status_code == 404
    assert response.json["code"] == 404
    assert CpuPoint.objects.count() == 0


# --- ETags --------------------------------------------------------------------------


def test_get_gives_an_etag_and_a_matching_if_none_match_is_304(client, svc):
    entry = create_entry(client, svc, data=minute_points(2))
    etag = client.get(f"{URL}/{entry['id']}").headers["ETag"]

    unchanged = client.get(f"{URL}/{entry['id']}", headers={"If-None-Match": etag})
    client.post(f"{URL}/{entry['id']}/data", json={"load": 1})
    changed = client.get(f"{URL}/{entry['id']}", headers={"If-None-Match": etag})

    assert unchanged.status_code == 304
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag


def test_writes_with_a_stale_if_match_are_412_and_with_a_fresh_one_succeed(client, svc):
    entry = create_entry(client, svc, data=minute_points(2))
    stale = client.get(f"{URL}/{entry['id']}").headers["ETag"]
    client.post(f"{URL}/{entry['id']}/data", json={"load": 1})
    fresh = client.get(f"{URL}/{entry['id']}").headers["ETag"]
    item = f"{URL}/{entry['id']}"

    assert client.put(item, json={"data": []}, headers={"If-Match": stale}).status_code == 412
    assert client.delete(item, headers={"If-Match": stale}).status_code == 412
    assert stored_points(entry["id"]) == 3
    assert client.put(item, json={"data": []}, headers={"If-Match": fresh}).status_code == 200
    fresh = client.get(item).headers["ETag"]
    assert client.delete(item, headers={"If-Match": fresh}).status_code == 204


# --- series -------------------------------------------------------------------------


@pytest.fixture
def hour_entry(client, svc):
    """An entry with ``hour_of_points()``: one a minute from 00:00 to 00:59, load =
    minute, memory = minute % 10 except in minutes 10-14 (not measured), threads =
    minute // 2."""
    return create_entry(client, svc, data=hour_of_points())


def series(client, entry, **query):
    return client.get(f"{URL}/{entry['id']}/series", query_string=query)


def test_series_groups_points_into_buckets_of_step(client, hour_entry):
    response = series(client, hour_entry, since=stamp(0), until=stamp(59), step="5m")

    assert response.status_code == 200
    buckets = response.json
    assert [b["time"] for b in buckets] == [stamp(5 * k) for k in range(12)]
    assert all(b["count"] == 5 for b in buckets)
    assert buckets[0] == {
        "time": stamp(0),
        "count": 5,
        "load": {"avg": 2.0, "min": 0.0, "max": 4.0},
        "memory": {"avg": 2.0, "max": 4.0},
        "threads": {"max": 2},
    }
    assert buckets[1]["load"] == {"avg": 7.0, "min": 5.0, "max": 9.0}
    assert buckets[1]["memory"] == {"avg": 7.0, "max": 9.0}
    assert buckets[1]["threads"] == {"max": 4}
    # minutes 10-14 measured no memory
    assert buckets[2]["memory"] == {"avg": None, "max": None}
    assert buckets[11]["load"] == {"avg": 57.0, "min": 55.0, "max": 59.0}


def test_series_buckets_are_epoch_aligned_and_the_window_is_inclusive(client, hour_entry):
    # 00:07 .. 00:15: bucket 00:05 holds 7, 8, 9; 00:10 holds 10-14; 00:15 holds 15 only.
    response = series(client, hour_entry, since=stamp(7), until=stamp(15), step="5m")

    assert [(b["time"], b["count"]) for b in response.json] == [
        (stamp(5), 3),
        (stamp(10), 5),
        (stamp(15), 1),
    ]
    assert response.json[0]["load"] == {"avg": 8.0, "min": 7.0, "max": 9.0}


def test_series_with_a_larger_step(client, hour_entry):
    response = series(client, hour_entry, since=stamp(0), until=stamp(120), step="1h")

    [bucket] = response.json
    assert bucket["count"] == 60
    assert bucket["load"] == {"avg": 29.5, "min": 0.0, "max": 59.0}
    assert bucket["memory"]["max"] == 9.0
    assert bucket["memory"]["avg"] == pytest.approx(
        sum(m % 10 for m in range(60) if not 10 <= m <= 14) / 55
    )
    assert bucket["threads"] == {"max": 29}


def test_series_defaults_to_the_last_24_hours_in_5_minute_buckets(client, svc):
    now = utcnow()
    recent = [{"time": format_time(now - timedelta(hours=h)), "load": 1.0} for h in (1, 2)]
    old = [{"time": format_time(now - timedelta(hours=25)), "load": 99.0}]
    entry = create_entry(client, svc, data=recent + old)

    buckets = client.get(f"{URL}/{entry['id']}/series").json

    assert sum(b["count"] for b in buckets) == 2
    assert all(b["load"]["max"] == 1.0 for b in buckets)
    for bucket in buckets:
        start = datetime.fromisoformat(bucket["time"].replace("Z", "+00:00"))
        assert start.timestamp() % 300 == 0


def test_series_of_an_empty_window_is_an_empty_list(client, hour_entry):
    response = series(client, hour_entry, since=stamp(600), until=stamp(700), step="5m")

    assert response.status_code == 200
    assert response.json == []


@pytest.mark.parametrize(
    "step", ["0s", "5s", "9s", "2d", "86401s", "5x", "", "-5m", "1.5m", "5 m", "m", "5M"]
)
def test_bad_step_values_are_422(client, hour_entry, step):
    response = series(client, hour_entry, step=step)

    assert response.status_code == 422
    assert "step" in response.json["errors"]["query"]


@pytest.mark.parametrize("step", ["10s", "1d", "86400s", "1440m", "24h"])
def test_step_bounds_are_inclusive(client, hour_entry, step):
    response = series(client, hour_entry, since=stamp(0), until=stamp(59), step=step)

    assert response.status_code == 200
    assert sum(b["count"] for b in response.json) == 60


def test_too_many_buckets_is_422(client, hour_entry):
    # 10s buckets over 2 days = 17281 buckets
    response = series(client, hour_entry, since=stamp(0), until=stamp(2 * 24 * 60), step="10s")

    assert response.status_code == 422
    assert "step" in response.json["errors"]["query"]


def test_series_window_with_since_after_until_is_422(client, hour_entry):
    response = series(client, hour_entry, since=stamp(10), until=stamp(5))

    assert response.status_code == 422
    assert "since" in response.json["errors"]["query"]


# --- cascades and renames -----------------------------------------------------------


def test_deleting_the_service_removes_its_entry_and_points_only(client, svc):
    entry = create_entry(client, svc, data=minute_points(5))
    other = create_entry(client, make_service(project_id=svc.project_id), data=minute_points(2))

    assert client.delete(f"/api/services/{svc.id}").status_code == 204

    assert client.get(f"{URL}/{entry['id']}").status_code == 404
    assert stored_points(entry["id"]) == 0
    assert stored_points(other["id"]) == 2


def test_deleting_the_project_removes_its_entries_and_points_only(client, ctx):
    project = make_project()
    entries = [create_entry(client, make_service(project), data=minute_points(3)) for _ in "ab"]
    elsewhere = create_entry(client, make_service(), data=minute_points(2))

    assert client.delete(f"/api/projects/{project.id}").status_code == 204

    for entry in entries:
        assert client.get(f"{URL}/{entry['id']}").status_code == 404
        assert stored_points(entry["id"]) == 0
    assert [e["id"] for e in client.get(URL).json] == [elsewhere["id"]]
    assert stored_points(elsewhere["id"]) == 2


def test_renaming_the_service_renames_its_entry(client, svc):
    entry = create_entry(client, svc, data=minute_points(1))

    renamed = client.patch(f"/api/services/{svc.id}", json={"name": "Payments"})

    assert renamed.status_code == 200
    found = client.get(f"{URL}/service/payments").json
    assert [e["id"] for e in found] == [entry["id"]]
    assert found[0]["service_name"] == "Payments"
    assert found[0]["data"] == entry["data"]
    assert client.get(f"{URL}/service/{svc.name}").json == []


def test_the_openapi_document_lists_the_metrics_endpoints(client):
    paths = client.get("/openapi.json").json["paths"]

    assert {
        "/api/metrics/cpu/",
        "/api/metrics/cpu/project/{project_id}",
        "/api/metrics/cpu/service/{service_name}",
        "/api/metrics/cpu/{metric_id}",
        "/api/metrics/cpu/{metric_id}/data",
        "/api/metrics/cpu/{metric_id}/series",
    } <= set(paths)
