"""CPU metrics use cases."""

from __future__ import annotations

from bson import ObjectId

from polymicro.common.models import name_key
from polymicro.common.timeutil import utcnow
from polymicro.metrics.models import CpuMetric, CpuPoint


def delete_metrics(project_id: ObjectId | None = None, service_id: ObjectId | None = None) -> int:
    """Delete the metrics entries (and their points) of a project or of a service."""
    if project_id is None and service_id is None:
        raise ValueError("delete_metrics needs project_id or service_id")
    query = CpuMetric.objects
    if project_id is not None:
        query = query.filter(project_id=project_id)
    if service_id is not None:
        query = query.filter(service_id=service_id)
    metric_ids = list(query.scalar("id"))
    if metric_ids:
        CpuPoint.objects(metric_id__in=metric_ids).delete()
    return query.delete()


def rename_service(service_id: ObjectId, new_name: str) -> None:
    """Keep the entry's ``service_name`` equal to its service's current name."""
    CpuMetric.objects(service_id=service_id).update(
        set__service_name=new_name, set__service_key=name_key(new_name), set__updated_at=utcnow()
    )
