"""The events service: publishing, the gap rule, cursor reads, retention, export.

A *paused writer* (``paused_writer``) is a real ``publish`` in a thread, stopped
between taking its ``seq`` and inserting its event: the moment when a later writer can
commit first.  Only one thread touches the database at a time (the other waits on a
threading.Event), so these run on mongomock as well as on SecantusDB.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta

import pytest
from bson import ObjectId
from click.testing import CliRunner

from polymicro.auth import service as auth
from polymicro.common import clock
from polymicro.errors import Conflict, InvalidInput, NotFound
from polymicro.events import service as events
from polymicro.events.cli import events_cli
from polymicro.events.models import HOLE, Event
from polymicro.projects import service as projects
from polymicro.services import service as services
from tests.conftest import USES_REAL_DB
from tests.factories import make_project, make_service


def all_events() -> list[dict]:
    """Every stored event (holes left out), oldest first."""
    rows = Event._get_collection().find({"type": {"$ne": HOLE}}).sort("seq", 1)
    return list(rows)


def read_all(after: int = 0, **filters) -> list[dict]:
    return events.read_events(after=after, limit=1000, **filters)["events"]


@pytest.fixture
def manual(ctx):
    with clock.use(clock.ManualClock()) as manual_clock:
        yield manual_clock


@pytest.fixture
def paused_writer(app, monkeypatch):
    """Start a publish that stops right after taking its seq; ``.go()`` lets it finish."""

    class Writer:
        def __init__(self):
            self.taken = threading.Event()
            self.resume = threading.Event()
            self.result: dict | None = None
            self.error: BaseException | None = None
            self.seqs: list[int] = []
            real_allocate = events._allocate

            def allocate():
                seq = real_allocate()
                if threading.current_thread() is self.thread:
                    self.seqs.append(seq)
                    if len(self.seqs) == 1:
                        self.taken.set()
                        assert self.resume.wait(10)
                return seq

            monkeypatch.setattr(events, "_allocate", allocate)
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
            assert self.taken.wait(10)

        def _run(self):
            try:
                with app.app_context():
                    self.result = events.publish("project.updated", {"id": "x", "name": "slow"})
            except BaseException as exc:  # reported by go()
                self.error = exc

        def go(self) -> dict:
            self.resume.set()
            self.thread.join(10)
            if self.error:
                raise self.error
            return self.result

    return Writer


# --- publishing ---------------------------------------------------------------------------


def test_publish_outside_a_request_is_by_the_system_in_seq_order(manual):
    first = events.publish("project.created", {"id": "a", "name": "A"})
    manual.advance(1)
    second = events.publish("project.created", {"id": "b", "name": "B"})
    assert (first["seq"], second["seq"]) == (1, 2)
    assert second["time"] - first["time"] == timedelta(seconds=1)
    assert first["actor"] == {"kind": "system"}
    assert first["request_id"] is None
    assert first["subject"] == {"kind": "project", "id": "a", "name": "A"}


def test_diff_keeps_changed_fields_as_json_and_never_secrets(ctx):
    project = make_project(name="Shop", tags=["a"])
    when = datetime(2026, 5, 1, 12, 0)
    owner = ObjectId()
    changed = events.diff(
        project,
        {
            "name": "Shop",  # unchanged: left out
            "tags": ["a", "b"],
            "owner": owner,
            "path": when,
            "password": "hunter22",
            "key_hash": "abc",
        },
    )
    assert changed == {
        "tags": {"before": ["a"], "after": ["a", "b"]},
        "owner": {"before": None, "after": str(owner)},
        "path": {"before": None, "after": "2026-05-01T12:00:00.000Z"},
    }


def test_publish_drops_secret_fields_passed_in_changes(ctx):
    event = events.publish(
        "user.updated",
        {"id": "u", "name": "bob"},
        changes={"role": {"before": "viewer", "after": "admin"}, "password": {"after": "x"}},
    )
    assert event["changes"] == {"role": {"before": "viewer", "after": "admin"}}
    assert "password" not in json.dumps(all_events()[0], default=str)


# --- every catalog write at the service layer: exactly one event ---------------------------


def test_project_create_update_noop_delete(ctx):
    project = projects.create_project({"name": "Shop"})
    projects.update_project(project["id"], {"owner": "team-a", "name": "Shop"})
    projects.update_project(project["id"], {"owner": "team-a"})  # changes nothing
    services.create_service({"project_id": project["id"], "name": "api"})
    auth.create_api_key(project["id"], "ci", "admin")
    projects.delete_project(project["id"])
    kinds = [(e["type"], e["subject"]["name"], e.get("project_id")) for e in all_events()]
    assert kinds == [
        ("project.created", "Shop", project["id"]),
        ("project.updated", "Shop", project["id"]),
        ("service.created", "api", project["id"]),
        ("api_key.created", "ci", project["id"]),
        ("project.deleted", "Shop", project["id"]),  # the cascade is part of this one
    ]
    assert all_events()[1]["changes"] == {"owner": {"before": None, "after": "team-a"}}


def test_service_create_update_delete(ctx):
    project = make_project()
    svc = services.create_service({"project_id": project.id, "name": "api", "port": 80})
    services.update_service(svc["id"], {"port": 8080, "version": "2"})
    services.update_service(svc["id"], {"port": 8080})  # no change, no event
    services.delete_service(svc["id"])
    stored = all_events()[1:]
    assert [e["type"] for e in stored] == ["service.created", "service.updated", "service.deleted"]
    assert stored[1]["changes"] == {
        "port": {"before": 80, "after": 8080},
        "version": {"before": None, "after": "2"},
    }
    assert {e["subject"]["id"] for e in stored} == {str(svc["id"])}


def test_api_key_create_and_revoke_once_without_the_secret(ctx):
    project = make_project()
    key = auth.create_api_key(project.id, "ci", "admin")
    auth.revoke_api_key(project.id, key["id"])
    auth.revoke_api_key(project.id, key["id"])  # already revoked: nothing changes
    stored = all_events()[1:]
    assert [e["type"] for e in stored] == ["api_key.created", "api_key.revoked"]
    text = json.dumps(stored, default=str)
    assert key["key"] not in text
    assert key["key"].split("_", 2)[2] not in text


def _user(name="target", role="viewer") -> dict:
    data = {"username": name, "email": f"{name}@x.example", "password": "password1", "role": role}
    return auth.register_user(data, by_admin=True)


def test_user_role_and_active_changes(ctx):
    _user("boss", "admin")
    user = _user()
    auth.admin_update_user(user["id"], {"role": "editor"})
    auth.admin_update_user(user["id"], {"role": "editor"})  # the same: no event
    auth.admin_update_user(user["id"], {"is_active": False})
    stored = all_events()
    assert [e["changes"] for e in stored] == [
        {"role": {"before": "viewer", "after": "editor"}},
        {"is_active": {"before": True, "after": False}},
    ]
    assert {(e["type"], e["subject"]["name"], e.get("project_id")) for e in stored} == {
        ("user.updated", "target", None)
    }


def test_create_admin_on_an_existing_user_records_the_role_change_only(ctx):
    _user()
    auth.create_admin("target", "target@x.example", "new-password-1")
    auth.create_admin("target", "target@x.example", "another-password-2")  # already admin
    (event,) = all_events()
    assert event["changes"] == {"role": {"before": "viewer", "after": "admin"}}
    assert event["actor"] == {"kind": "system"}


@pytest.mark.parametrize(
    "failing_write",
    [
        pytest.param(lambda p, s: projects.create_project({"name": p.name.upper()}), id="dup"),
        pytest.param(lambda p, s: projects.update_project(ObjectId(), {"owner": "x"}), id="404"),
        pytest.param(lambda p, s: projects.delete_project(ObjectId()), id="delete-404"),
        pytest.param(
            lambda p, s: services.create_service({"project_id": ObjectId(), "name": "x"}),
            id="svc-unknown-project",
        ),
        pytest.param(
            lambda p, s: services.update_service(s.id, {"project_id": ObjectId()}),
            id="svc-move",
        ),
        pytest.param(
            lambda p, s: services.create_service({"project_id": p.id, "name": s.name}),
            id="svc-dup",
        ),
        pytest.param(lambda p, s: auth.create_api_key(ObjectId(), "k", None), id="key-404"),
        pytest.param(lambda p, s: auth.revoke_api_key(p.id, ObjectId()), id="revoke-404"),
    ],
)
def test_a_failed_write_publishes_nothing(ctx, failing_write):
    project = make_project()
    svc = make_service(project)
    before = all_events()
    with pytest.raises((Conflict, NotFound, InvalidInput)):
        failing_write(project, svc)
    assert all_events() == before


def test_demoting_the_last_admin_fails_without_an_event(ctx):
    admin = _user("boss", "admin")
    with pytest.raises(Conflict):
        auth.admin_update_user(admin["id"], {"role": "viewer"})
    assert all_events() == []


# --- the gap rule -------------------------------------------------------------------------


def test_a_reader_stops_before_a_seq_whose_writer_has_not_committed(manual, paused_writer):
    events.publish("project.created", {"id": "1", "name": "one"})
    slow = paused_writer()  # holds seq 2
    events.publish("project.created", {"id": "3", "name": "three"})  # seq 3, visible first
    page = events.read_events(after=0)
    assert [e["seq"] for e in page["events"]] == [1]
    assert page["next_after"] == 1
    assert slow.go()["seq"] == 2
    page = events.read_events(after=page["next_after"])
    assert [e["seq"] for e in page["events"]] == [2, 3]  # 12 seen after 11, 11 not lost


def test_a_first_seq_still_being_written_is_no_reason_for_410(manual, paused_writer):
    slow = paused_writer()  # holds seq 1
    events.publish("project.created", {"id": "2", "name": "two"})
    page = events.read_events(after=0)  # the oldest stored is 2, but 1 is not gone
    assert (page["events"], page["next_after"]) == ([], 0)
    slow.go()
    assert [e["seq"] for e in read_all()] == [1, 2]


def test_a_missing_seq_older_than_the_settle_time_is_a_hole(manual, paused_writer):
    events.publish("project.created", {"id": "1", "name": "one"})
    slow = paused_writer()  # takes seq 2 and stalls
    events.publish("project.created", {"id": "3", "name": "three"})
    manual.advance(4)  # settle time is 5 s: still young
    assert [e["seq"] for e in read_all()] == [1]
    manual.advance(2)
    assert [e["seq"] for e in read_all()] == [1, 3]
    assert Event._get_collection().find_one({"seq": 2})["type"] == HOLE
    # The stalled writer wakes up: its seq was declared a hole, so it takes a new one.
    late = slow.go()
    assert slow.seqs == [2, 4]
    assert late["seq"] == 4
    assert [e["subject"]["name"] for e in read_all(after=3)] == ["slow"]
    assert [e["seq"] for e in read_all()] == [1, 3, 4]


def test_the_settled_point_is_kept_on_the_counter(ctx):
    for n in range(3):
        events.publish("project.created", {"id": str(n), "name": str(n)})
    assert events.settled_head() == 3
    counter = events.EventCounter._get_collection().find_one({"_id": events.COUNTER_ID})
    assert counter == {"_id": "events", "seq": 3, "settled": 3}


# --- cursor reads -------------------------------------------------------------------------


@pytest.fixture
def five(ctx):
    """Events 1–5: created a, created b, updated a, created c (another project), deleted a."""
    pa, pb = ObjectId(), ObjectId()
    alice = {"kind": "user", "id": "u1", "name": "alice"}
    bob = {"kind": "user", "id": "u2", "name": "bob"}
    events.publish("service.created", {"id": "a", "name": "a"}, project_id=pa, actor=alice)
    events.publish("service.created", {"id": "b", "name": "b"}, project_id=pa, actor=bob)
    events.publish("service.updated", {"id": "a", "name": "a"}, project_id=pa, actor=alice)
    events.publish("service.created", {"id": "c", "name": "c"}, project_id=pb)
    events.publish("service.deleted", {"id": "a", "name": "a"}, project_id=pa, actor=alice)
    return pa, pb


def test_after_pages_in_seq_order_with_the_next_cursor(five):
    page = events.read_events(after=0, limit=2)
    assert [e["seq"] for e in page["events"]] == [1, 2]
    assert page["next_after"] == 2
    page = events.read_events(after=page["next_after"], limit=2)
    assert [e["seq"] for e in page["events"]] == [3, 4]
    page = events.read_events(after=page["next_after"], limit=2)
    assert [e["seq"] for e in page["events"]] == [5]
    assert page["next_after"] == 5
    assert events.read_events(after=5)["events"] == []


def test_before_browses_newest_first(five):
    page = events.read_events(limit=2)
    assert [e["seq"] for e in page["events"]] == [5, 4]
    assert (page["next_before"], page["next_after"]) == (4, 5)
    page = events.read_events(before=page["next_before"], limit=3)
    assert [e["seq"] for e in page["events"]] == [3, 2, 1]
    assert page["next_before"] == 1
    page = events.read_events(before=1, limit=3)
    assert (page["events"], page["next_before"]) == ([], None)


def test_filters_and_a_filtered_cursor_skips_what_it_filtered_out(five):
    pa, pb = five
    assert [e["seq"] for e in read_all(project_id=pa)] == [1, 2, 3, 5]
    assert [e["seq"] for e in read_all(project_id=pb)] == [4]
    assert [e["seq"] for e in read_all(type=["service.created"])] == [1, 2, 4]
    assert [e["seq"] for e in read_all(type=["service.updated", "service.deleted"])] == [3, 5]
    assert [e["seq"] for e in read_all(actor="alice")] == [1, 3, 5]
    assert [e["seq"] for e in read_all(actor="u2")] == [2]
    assert [e["seq"] for e in read_all(actor="system")] == [4]
    page = events.read_events(after=0, project_id=pb)
    assert page["next_after"] == 5  # nothing for pb up to 5: no need to read it again


def test_after_and_before_together_are_refused(five):
    with pytest.raises(InvalidInput):
        events.read_events(after=1, before=3)


def test_a_cursor_older_than_the_retention_is_gone(five, manual):
    assert read_all(after=0)
    manual.advance(91 * 86400)
    with pytest.raises(events.CursorGone):
        events.read_events(after=0)
    assert events.read_events()["events"] == []  # browsing shows nothing older either
    events.publish("project.created", {"id": "n", "name": "new"})
    assert [e["seq"] for e in read_all(after=5)] == [6]  # a cursor at the newest still works


def test_retention_zero_keeps_everything(five, app, manual):
    app.config["RETENTION_EVENTS_DAYS"] = 0
    manual.advance(3650 * 86400)
    assert len(read_all(after=0)) == 5


def test_a_cursor_past_the_newest_event_is_gone(five):
    with pytest.raises(events.CursorGone):
        events.read_events(after=6)


def test_the_ttl_index_follows_the_retention_setting(app, ctx):
    collection = Event._get_collection()
    events.read_events()
    ttl = collection.index_information()[events.TTL_INDEX]
    assert ttl["key"] == [("time", 1)]
    assert ttl["expireAfterSeconds"] == 90 * 86400
    events.ensure_retention(collection, 30)
    assert collection.index_information()[events.TTL_INDEX]["expireAfterSeconds"] == 30 * 86400
    events.ensure_retention(collection, 0)
    assert events.TTL_INDEX not in collection.index_information()


@pytest.mark.parametrize(
    ("query", "sort", "leading"),
    [
        ({"seq": {"$gt": 5}}, [("seq", 1)], "seq"),
        ({"time": {"$gte": datetime(2026, 1, 1)}}, [("seq", 1)], "seq"),
        ({"project_id": ObjectId(), "seq": {"$gt": 5}}, [("seq", 1)], "project_id"),
        ({"type": "a.b", "seq": {"$gt": 5}}, [("seq", 1)], "type"),
        ({"actor_keys": "alice", "seq": {"$gt": 5}}, [("seq", 1)], "actor_keys"),
        ({"time": {"$lt": datetime(2026, 1, 1)}}, None, "time"),
    ],
)
def test_event_reads_are_served_by_an_index(ctx, query, sort, leading):
    events.read_events()  # creates the collection's indexes
    collection = Event._get_collection()
    keys = [spec["key"][0][0] for spec in collection.index_information().values()]
    assert leading in keys
    if USES_REAL_DB:
        cursor = collection.find(query)
        if sort:
            cursor = cursor.sort(sort)
        plan = cursor.limit(10).explain()["queryPlanner"]["winningPlan"]
        text = json.dumps(plan, default=str)
        assert "IXSCAN" in text, plan


# --- following ----------------------------------------------------------------------------


def test_a_follower_starts_at_the_newest_or_resumes(five):
    follower = events.Follower()
    assert follower.start(None) is False
    assert follower.cursor == 5
    assert follower.start("2") is False
    assert [e["seq"] for e in follower.poll()[0]] == [3, 4, 5]
    assert follower.cursor == 5


@pytest.mark.parametrize("resume", ["abc", "-1", "99"])
def test_a_follower_resets_on_a_resume_point_that_is_not_there(five, resume):
    follower = events.Follower()
    assert follower.start(resume) is True
    assert follower.cursor == 5


# --- export -------------------------------------------------------------------------------


def test_export_writes_the_older_events_as_json_lines_oldest_first(app, ctx, manual, tmp_path):
    events.publish("project.created", {"id": "1", "name": "old"})
    manual.advance(3600)
    cut = manual.now()
    events.publish("project.created", {"id": "2", "name": "new"})
    out = tmp_path / "events.jsonl"
    result = CliRunner().invoke(
        events_cli, ["export", "--until", cut.isoformat(), "--out", str(out)], obj=_script(app)
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(e["seq"], e["subject"]["name"]) for e in lines] == [(1, "old")]
    assert lines[0]["time"].endswith("Z")
    assert "Exported 1 event(s)" in result.output


def test_export_refuses_a_time_it_cannot_read(app):
    result = CliRunner().invoke(events_cli, ["export", "--until", "soon"], obj=_script(app))
    assert result.exit_code == 2
    assert "not a time" in result.output


def _script(app):
    from flask.cli import ScriptInfo

    return ScriptInfo(create_app=lambda: app)
