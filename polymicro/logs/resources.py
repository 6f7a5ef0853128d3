"""/api/logs"""

from bson import ObjectId
from flask import current_app
from flask.views import MethodView

from polymicro.common import sse
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


# --- live tail ----------------------------------------------------------------------------


@blp.route("/stream")
class LogStream(MethodView):
    @sse.stream_access("logs")
    @blp.arguments(LogQueryArgsSchema, location="query")
    @blp.arguments(sse.TailArgsSchema, location="query")
    @blp.arguments(sse.ResumeHeadersSchema, location="headers")
    @blp.doc(**sse.STREAM_DOC)
    def get(self, filters, stream_args, headers):
        """New log entries as they are stored (Server-Sent Events), with the list filters."""
        return sse.open_stream(*log_source(filters, stream_args["tail"], headers["last_event_id"]))


def log_source(filters: dict, tail: int, resume: str | None):
    """The ``start`` and ``poll`` of a log stream (see ``sse.open_stream``): each entry
    is one message, ``id:`` its id (``Last-Event-ID`` resumes after it)."""
    reader = service.LogTail(filters, current_app.config["LOG_STREAM_WINDOW_SECONDS"])
    dump = LogEntrySchema().dump

    def messages(entries: list[dict], newest) -> list[sse.Message]:
        # A late entry (an older id than one sent before) carries the newest id sent,
        # so the client's Last-Event-ID never moves back.
        out = []
        for entry in entries:
            newest = entry["id"] if newest is None else max(newest, entry["id"])
            out.append(sse.json_message(dump(entry), id=str(newest)))
        return out

    def start() -> list[sse.Message]:
        if resume and not ObjectId.is_valid(resume):
            reset = {"message": "Unknown Last-Event-ID; starting afresh."}
            return [sse.json_message(reset, event="reset"), *start_at(None)]
        return start_at(ObjectId(resume) if resume else None)

    def start_at(after: ObjectId | None) -> list[sse.Message]:
        return messages(reader.start(after, tail if after is None else 0), None)

    def poll() -> tuple[list[sse.Message], bool]:
        newest = reader.cursor
        entries, more = reader.poll()
        return messages(entries, newest), more

    return start, poll
