"""/api/health, /api/health/live, /api/health/ready: public (no credentials), never cached.
/api/retention: admins.

``/api/health`` is the contract's check (the dashboard reads it); ``/live`` and
``/ready`` are the probe endpoints for an orchestrator: restart on a failing ``live``,
stop routing traffic on a failing ``ready``.
"""

from flask.views import MethodView

from polymicro.common.blueprint import Blueprint
from polymicro.operations import service
from polymicro.operations.schemas import HealthSchema, LivenessSchema, RetentionSchema
from polymicro.security import access

blp = Blueprint("operations", __name__, url_prefix="/api", description="Operations.")

NO_STORE = {"Cache-Control": "no-store"}
FAILED = "A check failed; it is named in `checks`."


def _report(report: dict):
    return report, (200 if report["status"] == service.OK else 503), NO_STORE


@blp.route("/health")
class Health(MethodView):
    @access(public=True)
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description=FAILED)
    def get(self):
        """Health of the service, its database and its cache (at most about 1 s)."""
        return _report(service.health())


@blp.route("/health/live")
class Liveness(MethodView):
    @access(public=True)
    @blp.response(200, LivenessSchema)
    def get(self):
        """Liveness: the process answers.  Checks nothing else (no database, no cache)."""
        return service.liveness(), 200, NO_STORE


@blp.route("/health/ready")
class Readiness(MethodView):
    @access(public=True)
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description=FAILED)
    def get(self):
        """Readiness: the database answers a ping and the cache a set/get, within about 1 s."""
        return _report(service.readiness())


@blp.route("/retention")
class Retention(MethodView):
    @access("admin")
    @blp.response(200, RetentionSchema)
    def get(self):
        """Retention you can see: per kind, the setting, what the database's TTL index
        says, the oldest stored time and whether deletion is behind."""
        return service.retention_status(), 200, NO_STORE
