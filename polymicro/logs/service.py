"""Log use cases."""

from __future__ import annotations

from bson import ObjectId

from polymicro.logs.models import LogEntry


def delete_logs(project_id: ObjectId | None = None, service_id: ObjectId | None = None) -> int:
    """Delete the logs of a project or of a service (used by the cascades)."""
    if project_id is None and service_id is None:
        raise ValueError("delete_logs needs project_id or service_id")
    query = LogEntry.objects
    if project_id is not None:
        query = query.filter(project_id=project_id)
    if service_id is not None:
        query = query.filter(service_id=service_id)
    return query.delete()
