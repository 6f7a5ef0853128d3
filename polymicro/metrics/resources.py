"""/api/metrics (being written)."""

from polymicro.common.blueprint import Blueprint

blp = Blueprint("metrics", __name__, url_prefix="/api/metrics")
