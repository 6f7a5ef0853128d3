"""/api/logs (being written)."""

from polymicro.common.blueprint import Blueprint

blp = Blueprint("logs", __name__, url_prefix="/api/logs")
