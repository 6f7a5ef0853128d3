"""How the domain packages depend on each other, and the few ways up.

Imports between domains run one way (a domain may import those below it, never one
above it, and no two domains import each other)::

    ingest ─┐
    alerts ─┼─> logs, metrics ─> services ─> projects
    liveness┘                    auth ─────> projects
    (every domain may publish into events, which imports none)

``security`` (who is calling) and ``observability`` are infrastructure below the
domains' service modules; ``security`` looks API keys up through ``auth``.

A lower domain sometimes has to reach up: deleting a project must delete its
services, logs, metrics and keys, and a project's view embeds its services.  Those
are the *ways up*, and they are all here: the lower domain sends a blinker signal
(declared in its ``service.py``, with what receivers must do) and the domains above
subscribe below.  :func:`connect` runs once per ``create_app`` (connecting a receiver
twice is a no-op in blinker).

- ``projects.project_deleting`` → ``services.delete_services_of_project`` and
  ``auth.delete_api_keys``: a project's children go first.
- ``projects.project_views_extras`` → ``services.embed_in_project_views``: a
  project's view embeds its ``microservices``.
- ``services.services_deleting`` → ``logs.on_services_deleting`` and
  ``metrics.on_services_deleting``: a service's logs and metrics go first.
- ``services.service_renamed`` → ``metrics.rename_service``: the dashboard matches
  CPU entries by service name.
- ``services.services_deleting`` → ``liveness.on_services_deleting``: a service's
  liveness and its history go with it.
- ``services.service_views_extras`` → ``liveness.embed_in_service_views``: a service's
  view shows its ``liveness`` and the ``health``/``status`` it implies.
- ``services.service_view_filters`` → ``liveness.filter_service_views``: the
  ``status``, ``health`` and ``liveness`` filters match what the views show.
- ``services.services_deleting`` → ``alerts.on_services_deleting``: the alert rules
  and instances of a deleted service (or project) go with it.
- ``logs.entries_stored`` and ``metrics.points_stored`` → ``liveness.on_ingest``:
  stored logs and points are heartbeats of the services that opt in.
- ``projects.project_usage`` → ``logs.usage_of_projects`` and
  ``metrics.usage_of_projects``: a project's usage (and the projects list sorted by
  it) counts what the domains above store.

Retention (``polymicro/common/retention.py``) is not a way up but a registry: each
kind of data with a retention is registered here, one line each, and the projects
domain answers which projects shorten it (their ``retention`` object).
"""

from __future__ import annotations


def connect() -> None:
    from polymicro.alerts import service as alerts
    from polymicro.auth import service as auth
    from polymicro.common import retention
    from polymicro.events import service as events
    from polymicro.liveness import service as liveness
    from polymicro.logs import service as logs
    from polymicro.metrics import service as metrics
    from polymicro.projects import service as projects
    from polymicro.services import service as services

    projects.project_deleting.connect(services.delete_services_of_project)
    projects.project_deleting.connect(auth.delete_api_keys)
    projects.project_views_extras.connect(services.embed_in_project_views)
    services.services_deleting.connect(logs.on_services_deleting)
    services.services_deleting.connect(metrics.on_services_deleting)
    services.service_renamed.connect(metrics.rename_service)
    services.services_deleting.connect(liveness.on_services_deleting)
    services.services_deleting.connect(alerts.on_services_deleting)
    services.service_views_extras.connect(liveness.embed_in_service_views)
    services.service_view_filters.connect(liveness.filter_service_views)
    logs.entries_stored.connect(liveness.on_ingest)
    metrics.points_stored.connect(liveness.on_ingest)

    retention.register(logs.RETENTION)
    retention.register(metrics.RETENTION)
    retention.register(events.RETENTION)
    for kind in metrics.ROLLUP_RETENTION.values():
        retention.register(kind)
    retention.set_override_source(projects.retention_overrides, projects.CATALOG.key())

    projects.project_usage.connect(logs.usage_of_projects)
    projects.project_usage.connect(metrics.usage_of_projects)
