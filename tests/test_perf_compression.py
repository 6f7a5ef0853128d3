"""gzip: cached responses are compressed once, when stored; others by flask-compress."""

from __future__ import annotations

import gzip

import pytest

from polymicro.common import blueprint

GZIP = {"Accept-Encoding": "gzip"}


@pytest.fixture
def metrics_path(client):
    project = client.post("/api/projects", json={"name": "Shop"}).json
    for name in ("api", "web"):
        client.post("/api/services", json={"project_id": project["id"], "name": name})
        points = [{"load": float(i), "memory": 10.0, "threads": 4} for i in range(60)]
        client.post(
            "/api/metrics/cpu",
            json={"project_id": project["id"], "service_name": name, "data": points},
        )
    return f"/api/metrics/cpu/project/{project['id']}"


@pytest.fixture
def compressions(monkeypatch):
    calls = []
    real = blueprint.gzip.compress

    def counting(data, *args, **kwargs):
        calls.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(blueprint.gzip, "compress", counting)
    return calls


def test_a_cached_response_is_gzipped_once_and_served_gzipped(client, metrics_path, compressions):
    plain = client.get(metrics_path)
    assert "Content-Encoding" not in plain.headers
    assert len(plain.data) > 5000
    for _ in range(3):
        zipped = client.get(metrics_path, headers=GZIP)
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in zipped.headers["Vary"]
        assert gzip.decompress(zipped.data) == plain.data
        assert len(zipped.data) < len(plain.data) / 3
        assert zipped.headers["X-Pagination"] == plain.headers["X-Pagination"]
    assert len(compressions) == 1  # when the entry was stored, not per request


def test_the_first_gzip_request_is_answered_gzipped_too(client, metrics_path):
    zipped = client.get(metrics_path, headers=GZIP)
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.data) == client.get(metrics_path).data


@pytest.mark.parametrize("accept", [None, "identity", "br"])
def test_clients_that_do_not_accept_gzip_get_the_plain_body(client, metrics_path, accept):
    client.get(metrics_path, headers=GZIP)  # both variants stored
    headers = {"Accept-Encoding": accept} if accept else {}
    answer = client.get(metrics_path, headers=headers)
    assert "Content-Encoding" not in answer.headers
    assert answer.json[0]["service_name"] == "api"


def test_small_cached_responses_are_not_compressed(client):
    client.post("/api/projects", json={"name": "tiny"})
    for _ in range(2):
        answer = client.get("/api/projects?q=tiny", headers=GZIP)
        assert "Content-Encoding" not in answer.headers


def test_uncached_large_responses_are_compressed_by_flask_compress(client, metrics_path):
    metric_id = client.get(metrics_path).json[0]["id"]
    answer = client.get(f"/api/metrics/cpu/{metric_id}", headers=GZIP)
    assert answer.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(answer.data).startswith(b"{")


def test_a_gzip_etag_still_answers_304_and_passes_if_match(client, metrics_path):
    metric_id = client.get(metrics_path).json[0]["id"]
    path = f"/api/metrics/cpu/{metric_id}"
    zipped = client.get(path, headers=GZIP)
    etag = zipped.headers["ETag"]
    assert etag.endswith(':gzip"')
    assert client.get(path, headers={**GZIP, "If-None-Match": etag}).status_code == 304
    replaced = client.put(path, json={"data": [{"load": 1.0}]}, headers={"If-Match": etag})
    assert replaced.status_code == 200
    stale = client.put(path, json={"data": [{"load": 2.0}]}, headers={"If-Match": etag})
    assert stale.status_code == 412


@pytest.fixture
def project_path(client):
    """A project whose view (with its services) is over COMPRESS_MIN_SIZE: an ETag view."""
    project = client.post("/api/projects", json={"name": "Shop"}).json
    for name in ("api", "web", "worker", "billing"):
        client.post("/api/services", json={"project_id": project["id"], "name": name})
    return f"/api/projects/{project['id']}"


def test_an_etag_response_is_gzipped_once_and_tagged_as_gzipped(client, project_path, compressions):
    plain = client.get(project_path)
    assert "Content-Encoding" not in plain.headers
    assert len(plain.data) >= 500  # COMPRESS_MIN_SIZE: large enough to be compressed
    for _ in range(3):
        zipped = client.get(project_path, headers=GZIP)
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(zipped.data) == plain.data
        # a strong ETag names one representation: the gzipped one gets ':gzip'
        assert zipped.headers["ETag"] == plain.headers["ETag"][:-1] + ':gzip"'
    assert len(compressions) == 1  # when the entry was stored, not per request


def test_the_first_gzip_request_of_an_etag_view_is_tagged_as_gzipped(client, project_path):
    zipped = client.get(project_path, headers=GZIP)  # computed, not a hit
    assert zipped.headers["Content-Encoding"] == "gzip"
    plain = client.get(project_path)
    assert zipped.headers["ETag"] == plain.headers["ETag"][:-1] + ':gzip"'
    assert gzip.decompress(zipped.data) == plain.data


@pytest.mark.parametrize("cached", [False, True])
def test_either_etag_of_a_project_answers_304_and_passes_if_match(client, project_path, cached):
    plain_tag = client.get(project_path).headers["ETag"]
    if cached:
        client.get(project_path, headers=GZIP)  # the next one is a hit
    zipped_tag = client.get(project_path, headers=GZIP).headers["ETag"]
    for tag in (plain_tag, zipped_tag):
        for headers in ({}, GZIP):
            again = client.get(project_path, headers={**headers, "If-None-Match": tag})
            assert again.status_code == 304
    renamed = client.patch(project_path, json={"name": "Shop 2"}, headers={"If-Match": zipped_tag})
    assert renamed.status_code == 200
    stale = client.patch(project_path, json={"name": "Shop 3"}, headers={"If-Match": plain_tag})
    assert stale.status_code == 412
    assert client.get(project_path).json["name"] == "Shop 2"
