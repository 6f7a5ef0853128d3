"""/api/logs"""

from flask.views import MethodView

from polymicro.common.blueprint import Blueprint
from polymicro.common.pagination import QueryPage
from polymicro.logs import service
from polymicro.logs.schemas import (
    LogBatchResultSchema,
    LogBatchSchema,
    LogEntrySchema,
    LogEntryUpdateSchema,
    LogFilterSchema,
    LogQueryArgsSchema,
    ProjectLogQueryArgsSchema,
)
from polymicro.security import access, project_scope

blp = Blueprint(
    "logs",
    __name__,
    url_prefix="/api/logs",
    description="Log entries pushed by services, listed newest first.",
)


@blp.route("/")
class Logs(MethodView):
    @access("viewer")
    @blp.cached_response(service.list_logs)
    @blp.arguments(LogQueryArgsSchema, location="query")
    @blp.response(200, LogEntrySchema(many=True))
    @blp.paginate(QueryPage)
    def get(self, args):
        """List log entries, newest first."""
        return service.list_logs(**args)

    @access("editor", keys=True)
    @blp.idempotent
    @blp.arguments(LogEntrySchema())  # an instance: a class is instantiated per request
    @blp.response(201, LogEntrySchema)
    def post(self, data):
        """Store a log entry of a service of a project."""
        return service.create_log(data, scope=project_scope())


@blp.route("/batch")
class LogBatch(MethodView):
    @access("editor", keys=True)
    @blp.idempotent
    @blp.arguments(LogBatchSchema(many=True))
    @blp.response(201, LogBatchResultSchema)
    def post(self, entries):
        """Store 1–1000 entries: all of them, or none and a 422 naming each bad index."""
        ids = service.create_logs(entries, scope=project_scope())
        return {"inserted": len(ids), "ids": ids}


@blp.route("/project/<objectid:project_id>")
class ProjectLogs(MethodView):
    @access("viewer")
    @blp.cached_response(service.list_project_logs)
    @blp.arguments(ProjectLogQueryArgsSchema, location="query")
    @blp.response(200, LogEntrySchema(many=True))
    @blp.alt_response(404, description="No such project.")
    @blp.paginate(QueryPage)
    def get(self, args, project_id):
        """List the log entries of a project, newest first."""
        return service.list_project_logs(project_id, **args)


@blp.route("/service/<objectid:service_id>")
class ServiceLogs(MethodView):
    @access("viewer")
    @blp.cached_response(service.list_service_logs)
    @blp.arguments(LogFilterSchema, location="query")
    @blp.response(200, LogEntrySchema(many=True))
    @blp.alt_response(404, description="No such service.")
    @blp.paginate(QueryPage)
    def get(self, args, service_id):
        """List the log entries of a service, newest first."""
        return service.list_service_logs(service_id, **args)


@blp.route("/<objectid:log_id>")
@blp.etag
class LogItem(MethodView):
    @access("viewer")
    @blp.response(200, LogEntrySchema)
    @blp.alt_response(404, description="No such log entry.")
    def get(self, log_id):
        """Get a log entry."""
        return service.get_log(log_id)

    @access("editor")
    @blp.arguments(LogEntryUpdateSchema)
    @blp.response(200, LogEntrySchema)
    def put(self, data, log_id):
        """Update a log entry (partial body accepted)."""
        return self._update(data, log_id)

    @access("editor")
    @blp.arguments(LogEntryUpdateSchema)
    @blp.response(200, LogEntrySchema)
    def patch(self, data, log_id):
        """Update a log entry (partial body)."""
        return self._update(data, log_id)

    @access("editor")
    @blp.response(204)
    def delete(self, log_id):
        """Delete a log entry."""
        entry = service.get_log(log_id)
        blp.check_etag(entry, LogEntrySchema)
        service.delete_log(entry)

    @staticmethod
    def _update(data, log_id):
        entry = service.get_log(log_id)
        blp.check_etag(entry, LogEntrySchema)
        return service.update_log(entry, data)
