"""The caching declarations: one owner per namespace, and every write bumps what its
reads depend on.

- Each service module declares its namespaces (``caching.Namespace``) and marks its
  cached reads (``@NS.reads``) and its writes (``@NS.writes``).  The README shows
  ``caching.table()``; a test keeps the two equal.
- A static check: every function of a domain's ``service.py`` that writes to the
  database is a declared write (or listed below as touching nothing that is cached).
- A behavioural check: each declared write, run on real data, bumps a key of every
  namespace it declares, and a cached read of that namespace then answers fresh data.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from polymicro.alerts import delivery as alert_delivery
from polymicro.alerts import service as alerts
from polymicro.auth import service as auth
from polymicro.common import caching, clock
from polymicro.liveness import service as liveness
from polymicro.logs import service as logs
from polymicro.metrics import service as metrics
from polymicro.projects import service as projects
from polymicro.services import service as services
from tests.factories import make_project, make_service

ROOT = Path(__file__).resolve().parents[1]
SERVICE_MODULES = (projects, services, logs, metrics, auth, liveness, alerts, alert_delivery)

# Writes that change nothing any cached read returns (so they bump nothing), and why.
UNCACHED_WRITES = {
    "auth.register_user": "users are never cached (each login and refresh reads the user)",
    "auth.update_me": "users are never cached",
    "auth.admin_update_user": "users are never cached",
    "auth.create_admin": "users are never cached",
    "auth.authenticate": "users are never cached (a login may rehash the password)",
    "alerts.create_rule": "alert rules are never cached (the worker reads them each round)",
    "alerts.update_rule": "alert rules are never cached",
    "alerts.delete_rule": "alert rules and instances are never cached",
    "alerts.on_services_deleting": "alert rules and instances are never cached",
    "alerts.silence": "alert instances are never cached (their state changes every round)",
    "alerts._notify": "the outbox and instances are never cached",
    "alerts._transit": "alert instances are never cached",
    "liveness.on_services_deleting": "the liveness of services being deleted; their "
    "deletion bumps the catalog",
    # Alert receivers and deliveries (polymicro/alerts/delivery.py) are never cached:
    # every read goes to the database (an admin's view of a delivery log must be exact).
    "alerts.create_receiver": "alert receivers are never cached",
    "alerts.update_receiver": "alert receivers are never cached",
    "alerts.delete_receiver": "alert receivers and deliveries are never cached",
    "alerts.disable_receiver": "alert receivers are never cached",
    "alerts.fan_out": "alert deliveries (and the outbox) are never cached",
    "alerts.attempt": "alert deliveries are never cached",
    "alerts.redeliver": "alert deliveries are never cached",
    "metrics.recompute_hours": "rollups: series reads are not cached",
    "metrics.recompute_rollups": "rollups and their marks: series reads are not cached",
    "metrics.rebuild_rollups": "rollup marks and the entry's `rollups` flag, which no "
    "cached view shows (series reads are not cached)",
}
# Calls that write to the database.
WRITE_CALLS = {
    "save",
    "delete",
    "update",
    "update_one",
    "update_many",
    "delete_many",
    "insert_many",
    "insert_one",
    "insert_all_or_nothing",
    "insert_row",
    "modify",
}


def _qualname(module, name: str) -> str:
    return f"{module.__name__.split('.')[1]}.{name}"


def _functions_that_write(module) -> set[str]:
    tree = ast.parse(inspect.getsource(module))
    found = set()
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for call in ast.walk(node):
            if isinstance(call, ast.Call):
                func = call.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in WRITE_CALLS:
                    found.add(node.name)
    return found


def _declared_writes() -> dict[str, object]:
    return {
        _qualname(inspect.getmodule(f), f.__name__): f
        for ns in caching.namespaces()
        for f in ns.write_functions
    }


def test_every_function_that_writes_is_a_declared_write():
    declared = _declared_writes()
    undeclared = []
    for module in SERVICE_MODULES:
        for name in sorted(_functions_that_write(module)):
            qualified = _qualname(module, name)
            if name.startswith("_"):
                continue  # private helpers: their public callers are checked
            if qualified not in declared and qualified not in UNCACHED_WRITES:
                undeclared.append(qualified)
    assert undeclared == [], "writes without a caching declaration"


def test_private_write_helpers_are_only_called_by_declared_writes():
    declared = _declared_writes()
    for module in SERVICE_MODULES:
        writers = _functions_that_write(module)
        private = {name for name in writers if name.startswith("_")}
        tree = ast.parse(inspect.getsource(module))
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            calls = {
                c.func.id
                for c in ast.walk(node)
                if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
            }
            if calls & private:
                qualified = _qualname(module, node.name)
                assert qualified in declared or qualified in UNCACHED_WRITES, qualified


def test_the_readme_shows_the_declared_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = "\n".join(line.strip() for line in readme.splitlines())
    assert caching.table() in lines


def test_every_namespace_has_reads_and_writes():
    for ns in caching.namespaces():
        assert ns.read_functions, ns
        assert ns.write_functions, ns


def test_resources_never_choose_a_namespace():
    for path in (ROOT / "polymicro").glob("*/resources.py"):
        text = path.read_text(encoding="utf-8")
        assert "caching" not in text, path
        assert "Namespace(" not in text, path


# --- each declared write bumps its namespaces -------------------------------------------


@pytest.fixture
def bumped(monkeypatch):
    keys: list[str] = []
    real = caching.bump

    def spy(*namespaces, **options):
        keys.extend(namespaces)
        return real(*namespaces, **options)

    monkeypatch.setattr(caching, "bump", spy)
    return keys


def _log(svc, **fields):
    return {
        "project_id": svc.project_id,
        "service_id": svc.id,
        "severity": "info",
        "message": "m",
        **fields,
    }


def _metric(svc):
    return metrics.create_metric({"project_id": svc.project_id, "service_name": svc.name})


class _Clocked:
    """A service whose liveness scenario runs on a clock of its own."""

    def __init__(self, **fields):
        self.clock = clock.ManualClock()
        self.svc = self.run(lambda: make_service(**fields))

    def run(self, func):
        with clock.use(self.clock):
            return func()

    def beat(self):
        self.run(lambda: liveness.heartbeat(self.svc.id))
        return self

    def liveness(self):
        return self.run(lambda: services.get_service(self.svc.id)["liveness"])

    def later(self, seconds: float, func):
        self.clock.advance(seconds)
        return self.run(func)


# name → (set-up returning state, the write, a cached read of the namespace that must
# see the write: returns something that differs before and after)
SCENARIOS = {
    "projects.create_project": (
        lambda: None,
        lambda _: projects.create_project({"name": "fresh"}),
        lambda _: projects.list_projects().count(),
    ),
    "projects.update_project": (
        lambda: make_project(),
        lambda p: projects.update_project(p.id, {"description": "changed"}),
        lambda p: projects.get_project(p.id)["description"],
    ),
    "projects.delete_project": (
        lambda: make_project(),
        lambda p: projects.delete_project(p.id),
        lambda _: projects.list_projects().count(),
    ),
    "services.create_service": (
        lambda: make_project(),
        lambda p: services.create_service({"project_id": p.id, "name": "new"}),
        lambda p: len(projects.get_project(p.id)["microservices"]),
    ),
    "services.update_service": (
        lambda: make_service(),
        lambda s: services.update_service(s.id, {"description": "changed"}),
        lambda s: services.get_service(s.id)["description"],
    ),
    "services.delete_service": (
        lambda: make_service(),
        lambda s: services.delete_service(s.id),
        lambda s: services.list_project_services(s.project_id).count(),
    ),
    "services.delete_services_of_project": (
        lambda: make_service(),
        lambda s: services.delete_services_of_project(s.project_id),
        lambda s: services.list_project_services(s.project_id).count(),
    ),
    "logs.create_log": (
        lambda: make_service(),
        lambda s: logs.create_log(_log(s)),
        lambda s: logs.list_project_logs(s.project_id).count(),
    ),
    "logs.create_logs": (
        lambda: make_service(),
        lambda s: logs.create_logs([_log(s), _log(s)]),
        lambda s: logs.list_logs().count(),
    ),
    "logs.update_log": (
        lambda: logs.create_log(_log(make_service())),
        lambda e: logs.update_log(e, {"message": "changed"}),
        lambda e: logs.list_project_logs(e.project_id)[0:1][0]["message"],
    ),
    "logs.delete_log": (
        lambda: logs.create_log(_log(make_service())),
        lambda e: logs.delete_log(e),
        lambda e: logs.list_project_logs(e.project_id).count(),
    ),
    "logs.delete_logs": (
        lambda: logs.create_log(_log(make_service())),
        lambda e: logs.delete_logs(service_id=e.service_id),
        lambda e: logs.list_logs(service_id=e.service_id).count(),
    ),
    "metrics.create_metric": (
        lambda: make_service(),
        lambda s: _metric(s),
        lambda s: metrics.list_project_metrics(s.project_id).count(),
    ),
    "metrics.replace_points": (
        lambda: _metric(make_service()),
        lambda m: metrics.replace_points(m["id"], {"data": [{"load": 5.0}]}),
        lambda m: len(metrics.list_project_metrics(m["project_id"])[0:1][0]["data"]),
    ),
    "metrics.append_cpu_points": (
        lambda: _metric(make_service()),
        lambda m: metrics.append_cpu_points(m["id"], [{"load": 1.0}]),
        lambda m: len(metrics.list_project_metrics(m["project_id"])[0:1][0]["data"]),
    ),
    "metrics.append_ingested_points": (
        lambda: _metric(make_service()),
        lambda m: metrics.append_ingested_points(
            m["project_id"], {m["service_id"]: [{"time": _now(), "load": 2.0}]}
        ),
        lambda m: len(metrics.list_project_metrics(m["project_id"])[0:1][0]["data"]),
    ),
    "metrics.delete_metric": (
        lambda: _metric(make_service()),
        lambda m: metrics.delete_metric(m["id"]),
        lambda m: metrics.list_project_metrics(m["project_id"]).count(),
    ),
    "metrics.delete_metrics": (
        lambda: _metric(make_service()),
        lambda m: metrics.delete_metrics(m["project_id"]),
        lambda m: metrics.list_project_metrics(m["project_id"]).count(),
    ),
    "metrics.rename_service": (
        lambda: (make_service(),),
        lambda st: services.update_service(st[0].id, {"name": "renamed"}) and _metric_names(st[0]),
        lambda st: _metric_names(st[0]),
    ),
    "liveness.heartbeat": (
        lambda: _Clocked(),
        lambda st: st.beat(),
        lambda st: st.liveness(),
    ),
    "liveness.record_due": (
        lambda: _Clocked(heartbeat_ttl=1, heartbeat_grace=1).beat(),
        lambda st: st.later(3, liveness.record_due),
        lambda st: st.liveness(),
    ),
    "liveness.on_ingest": (
        lambda: _Clocked(heartbeat_from_ingest=True),
        lambda st: st.run(lambda: logs.create_log(_log(st.svc))),
        lambda st: st.liveness(),
    ),
    "auth.create_api_key": (
        lambda: make_project(),
        lambda p: p.__dict__.setdefault("key", auth.create_api_key(p.id, "k", None)["key"]),
        lambda p: auth.verify_api_key(p.__dict__.get("key", "pmk_x_y")) is not None,
    ),
    "auth.revoke_api_key": (
        lambda: _project_with_key(),
        lambda st: auth.revoke_api_key(st[0].id, st[1]["id"]),
        lambda st: auth.verify_api_key(st[1]["key"]) is not None,
    ),
    "auth.delete_api_keys": (
        lambda: _project_with_key(),
        lambda st: auth.delete_api_keys(st[0].id),
        lambda st: auth.verify_api_key(st[1]["key"]) is not None,
    ),
}


def _now():
    from polymicro.common.timeutil import utcnow

    return utcnow()


def _project_with_key():
    project = make_project()
    return project, auth.create_api_key(project.id, "k", None)


def _metric_names(svc) -> list[str]:
    return [m["service_name"] for m in metrics.list_project_metrics(svc.project_id)[0:10]]


def test_every_declared_write_has_a_scenario():
    assert set(_declared_writes()) == set(SCENARIOS)


@pytest.mark.usefixtures("ctx")
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_declared_write_bumps_its_namespaces_and_reads_see_it(name, bumped):
    setup, write, read = SCENARIOS[name]
    state = setup()
    if name == "metrics.rename_service":
        _metric(state[0])  # the entry that follows the rename
    before = read(state)
    assert read(state) == before  # served from the cache now
    bumped.clear()
    write(state)
    func = _declared_writes()[name]
    for ns in func.bumps_namespaces:
        assert any(key == ns.name or key.startswith(ns.name + ":") for key in bumped), (
            f"{name} did not bump {ns.name}"
        )
    assert read(state) != before, f"a cached read of {name}'s namespace is stale"


@pytest.mark.usefixtures("ctx")
def test_a_scoped_write_bumps_only_its_projects_scope(bumped):
    one, _other = make_service(), make_service()
    bumped.clear()
    logs.create_log(_log(one))
    assert sorted(bumped) == sorted(["logs", f"logs:{one.project_id}"])
