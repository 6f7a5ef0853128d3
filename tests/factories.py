"""Small builders shared by the tests: created through the service layer (so the rules
apply), returned as stored documents."""

from __future__ import annotations

import itertools

from polymicro.projects import service as projects
from polymicro.services import service as services

_seq = itertools.count(1)


def make_project(**fields):
    data = {"name": f"project-{next(_seq)}"}
    data.update(fields)
    return projects.load_project(projects.create_project(data)["id"])


def make_service(project=None, **fields):
    project = project or make_project()
    data = {"project_id": project.id, "name": f"service-{next(_seq)}"}
    data.update(fields)
    return services.load_service(services.create_service(data)["id"])
