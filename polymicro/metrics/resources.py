"""/api/metrics/cpu"""

from flask.views import MethodView

from polymicro.common.blueprint import Blueprint
from polymicro.common.pagination import QueryPage
from polymicro.metrics import service
from polymicro.metrics.schemas import (
    BucketSchema,
    InsertedSchema,
    MetricQueryArgsSchema,
    MetricSchema,
    MetricUpdateSchema,
    PointsBodySchema,
    PointsWindowSchema,
    SeriesQueryArgsSchema,
)
from polymicro.security import access, project_scope

blp = Blueprint(
    "metrics",
    __name__,
    url_prefix="/api/metrics/cpu",
    description="CPU and memory metrics: one entry per service, points appended over time.",
)


@blp.route("/")
class Metrics(MethodView):
    @access("viewer")
    @blp.arguments(MetricQueryArgsSchema, location="query")
    @blp.response(200, MetricSchema(many=True))
    @blp.paginate(QueryPage)
    def get(self, args):
        """List CPU metrics entries, each with the latest `points` points of the window."""
        return service.list_metrics(**args)

    @access("editor", keys=True)
    @blp.arguments(MetricSchema)
    @blp.response(201, MetricSchema)
    @blp.alt_response(409, description="The service already has an entry.")
    def post(self, data):
        """Create the entry of a service (named case-insensitively), with optional points."""
        return service.create_metric(data, scope=project_scope())


@blp.route("/project/<objectid:project_id>")
class ProjectMetrics(MethodView):
    @access("viewer")
    @blp.cached_response(service.list_project_metrics)
    @blp.arguments(PointsWindowSchema, location="query")
    @blp.response(200, MetricSchema(many=True))
    @blp.alt_response(404, description="No such project.")
    @blp.paginate(QueryPage)
    def get(self, args, project_id):
        """List the entries of a project."""
        return service.list_project_metrics(project_id, **args)


@blp.route("/service/<path:service_name>")
class ServiceMetrics(MethodView):
    @access("viewer")
    @blp.arguments(MetricQueryArgsSchema, location="query")
    @blp.response(200, MetricSchema(many=True))
    @blp.paginate(QueryPage)
    def get(self, args, service_name):
        """List the entries whose service has this name (case-insensitive); empty if none."""
        return service.list_service_metrics(service_name, **args)


@blp.route("/<objectid:metric_id>")
@blp.etag
class MetricItem(MethodView):
    @access("viewer")
    @blp.arguments(PointsWindowSchema, location="query")
    @blp.response(200, MetricSchema)
    @blp.alt_response(404, description="No such entry.")
    def get(self, args, metric_id):
        """Get an entry with the latest `points` points of the window, oldest first."""
        return service.get_metric(metric_id, **args)

    @access("editor", keys=True)
    @blp.arguments(MetricUpdateSchema)
    @blp.response(200, MetricSchema)
    def put(self, data, metric_id):
        """Replace all points of an entry with `data` (`If-Match`: the ETag of a plain GET)."""
        blp.check_etag(service.get_metric(metric_id), MetricSchema)
        return service.replace_points(metric_id, data, scope=project_scope())

    @access("editor")
    @blp.response(204)
    def delete(self, metric_id):
        """Delete an entry with its points."""
        blp.check_etag(service.get_metric(metric_id), MetricSchema)
        service.delete_metric(metric_id)


@blp.route("/<objectid:metric_id>/data")
class MetricData(MethodView):
    @access("editor", keys=True)
    @blp.idempotent
    @blp.arguments(PointsBodySchema())  # an instance: a class is instantiated per request
    @blp.response(201, InsertedSchema)
    @blp.alt_response(404, description="No such entry.")
    def post(self, points, metric_id):
        """Append one point (an object) or up to 10000 (an array): all are stored or none."""
        return {"inserted": service.append_cpu_points(metric_id, points, scope=project_scope())}


@blp.route("/<objectid:metric_id>/series")
class MetricSeries(MethodView):
    @access("viewer")
    @blp.arguments(SeriesQueryArgsSchema, location="query")
    @blp.response(
        200,
        BucketSchema(many=True),
        headers={
            "X-Series-Source": {
                "description": "What served the buckets: `raw` points, or the `5m` or "
                "`1h` rollups (with the window's edges and hours still being rolled up "
                "computed from raw points).",
                "schema": {"type": "string", "enum": ["raw", "5m", "1h"]},
            }
        },
    )
    @blp.alt_response(404, description="No such entry.")
    def get(self, args, metric_id):
        """The window (default: the last 24 hours) in buckets of `step`, oldest first."""
        buckets, source = service.cpu_series_with_source(metric_id, **args)
        return buckets, 200, {"X-Series-Source": source}
