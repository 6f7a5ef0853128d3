"""Group commit of single log POSTs (``LOG_GROUP_COMMIT``, polymicro/common/atomic.py)."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import mongoengine
import pytest
from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from polymicro.common import atomic
from polymicro.logs.models import LogEntry


class Held:
    """A collection whose first insert_many waits until ``others`` rows are queued."""

    def __init__(self, collection, group_ref, others):
        self.collection, self.group_ref, self.others = collection, group_ref, others
        self.calls: list[int] = []
        self.database = collection.database
        self.full_name = collection.full_name

    def insert_many(self, rows, ordered):
        if not self.calls:
            ready = threading.Event()
            while len(self.group_ref[0].queue) < self.others:
                ready.wait(0.001)
        self.calls.append(len(rows))
        return self.collection.insert_many(rows, ordered=ordered)


@pytest.mark.usefixtures("ctx")
def test_concurrent_rows_go_in_one_insert_and_every_caller_returns_after_it():
    collection = mongoengine.get_db()["group_probe"]
    ref: list = [None]
    held = Held(collection, ref, others=4)
    group = atomic.GroupCommit(held)
    ref[0] = group
    returned = []

    def insert(i):
        group.insert({"_id": i})
        returned.append(i)

    threads = [threading.Thread(target=insert, args=(i,)) for i in range(5)]
    threads[0].start()
    while not group.busy:
        threading.Event().wait(0.001)
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert held.calls == [1, 4]  # the leader's own row, then the four that queued
    assert sorted(returned) == [0, 1, 2, 3, 4]
    assert collection.count_documents({}) == 5
    assert group.busy is False


@pytest.mark.usefixtures("ctx")
def test_a_failed_row_fails_only_its_own_caller():
    collection = mongoengine.get_db()["group_probe"]
    collection.insert_one({"_id": "taken"})
    group = atomic.GroupCommit(collection)
    batch = [({"_id": key}, Future()) for key in ("a", "taken", "b")]
    group._write(batch)
    assert batch[0][1].result() is None
    with pytest.raises(DuplicateKeyError):
        batch[1][1].result()
    assert batch[2][1].result() is None
    assert sorted(d["_id"] for d in collection.find()) == ["a", "b", "taken"]


def test_single_posts_with_group_commit_on(app, client):
    app.config["LOG_GROUP_COMMIT"] = True
    project = client.post("/api/projects", json={"name": "Shop"}).json
    svc = client.post("/api/services", json={"project_id": project["id"], "name": "api"}).json
    body = {"project_id": project["id"], "service_id": svc["id"], "severity": "info"}
    for i in range(3):
        answer = client.post("/api/logs", json={**body, "message": f"m{i}"})
        assert answer.status_code == 201
        assert LogEntry.objects(id=ObjectId(answer.json["id"])).count() == 1
    listed = client.get(f"/api/logs/project/{project['id']}").json
    assert sorted(e["message"] for e in listed) == ["m0", "m1", "m2"]
