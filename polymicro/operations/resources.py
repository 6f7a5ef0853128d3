"""/api/health"""

from flask.views import MethodView

from polymicro.common.blueprint import Blueprint
from polymicro.operations import service
from polymicro.operations.schemas import HealthSchema

blp = Blueprint("operations", __name__, url_prefix="/api", description="Operations.")


@blp.route("/health")
class Health(MethodView):
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description="A check failed; it is named.")
    def get(self):
        """Health of the service, its database and its cache."""
        report = service.health()
        return report, (200 if report["status"] == "ok" else 503)
