"""/api/services/{id}/heartbeat (…/start, …/fail) and /api/services/{id}/liveness"""

from flask import request
from flask.views import MethodView

from polymicro.common.blueprint import Blueprint
from polymicro.liveness import service
from polymicro.liveness.rules import BEAT, FAIL, START
from polymicro.liveness.schemas import (
    HeartbeatSchema,
    LivenessQueryArgsSchema,
    LivenessSummarySchema,
    RunSignalSchema,
    ServiceLivenessSchema,
)
from polymicro.security import access, project_scope

blp = Blueprint(
    "liveness",
    __name__,
    url_prefix="/api/services",
    description="Heartbeats of services, and the liveness derived from them.",
)

# Reads that show liveness: before them, the changes that deadlines made are recorded
# (at most once per LIVENESS_CHECK_SECONDS per process), so they are right with no worker.
SHOWS_LIVENESS = {"services", "projects", "liveness"}


@blp.before_app_request
def catch_up():
    # ``unversioned.services`` is the /api twin of ``services`` (/api/v1): one view.
    blueprint = (request.blueprint or "").rpartition(".")[2]
    if request.method == "GET" and blueprint in SHOWS_LIVENESS:
        service.catch_up()


def signal_post(kind: str, schema, doc: str):
    """The POST of one heartbeat signal (a beat, a run's start, a failure): the same
    roles, answer and rule (``service.heartbeat``); its own body and documentation."""

    def described(func):
        func.__doc__ = doc  # under the decorators: flask-smorest reads it for the OpenAPI
        return func

    @access("editor", keys=True)
    @blp.arguments(schema)
    @blp.response(200, LivenessSummarySchema)
    @blp.alt_response(404, description="No such service.")
    @described
    def post(self, data, service_id):
        return service.heartbeat(service_id, kind, data, scope=project_scope())

    return post


@blp.route("/<objectid:service_id>/heartbeat")
class Heartbeat(MethodView):
    post = signal_post(
        BEAT,
        HeartbeatSchema,
        """I am alive (and closes the run `run_id`, when one was started).

        The body is optional: `status` (passing, warning or critical; default passing),
        `note`, `run_id`. Answers the service's liveness after it.
        """,
    )


@blp.route("/<objectid:service_id>/heartbeat/start")
class HeartbeatStart(MethodView):
    post = signal_post(
        START,
        RunSignalSchema,
        """A job run starts: it must finish (heartbeat or fail) within the grace.

        Runs that overlap are told apart by `run_id`.
        """,
    )


@blp.route("/<objectid:service_id>/heartbeat/fail")
class HeartbeatFail(MethodView):
    post = signal_post(
        FAIL,
        RunSignalSchema,
        """A job run (or a check) failed: a failed heartbeat.

        Critical at once, or after the service's `heartbeat_failures` in a row.
        """,
    )


@blp.route("/<objectid:service_id>/liveness")
class ServiceLiveness(MethodView):
    @access("viewer")
    @blp.arguments(LivenessQueryArgsSchema, location="query")
    @blp.response(200, ServiceLivenessSchema)
    @blp.alt_response(404, description="No such service.")
    def get(self, args, service_id):
        """The liveness of a service: now, the last transitions, and the uptime."""
        return service.get_liveness(service_id, **args)
