"""Small builders shared by the tests (through the service layer, so rules apply)."""

from __future__ import annotations

import itertools

from polymicro.projects import service as projects
from polymicro.services import service as services

_seq = itertools.count(1)


def make_project(**fields):
    data = {"name": f"project-{next(_seq)}"}
    data.update(fields)
    return projects.create_project(data)


def make_service(project=None, **fields):
    project = project or make_project()
    data = {"project_id": project.id, "name": f"service-{next(_seq)}"}
    data.update(fields)
    return services.create_service(data)
