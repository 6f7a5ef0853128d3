"""/api/alert-rules and /api/alerts"""

from flask.views import MethodView

from polymicro.alerts import service
from polymicro.alerts.schemas import (
    AlertQueryArgsSchema,
    AlertRuleQueryArgsSchema,
    AlertRuleSchema,
    AlertRuleUpdateSchema,
    AlertSchema,
    BacktestArgsSchema,
    BacktestSchema,
    SilenceSchema,
)
from polymicro.common.blueprint import Blueprint
from polymicro.common.pagination import QueryPage
from polymicro.security import access

blp = Blueprint(
    "alert_rules",
    __name__,
    url_prefix="/api/alert-rules",
    description="Alert rules over stored metrics, logs and liveness.",
)
alerts_blp = Blueprint(
    "alerts",
    __name__,
    url_prefix="/api/alerts",
    description="Alert instances (one per rule and service) and their silences.",
)


@blp.route("/")
class AlertRules(MethodView):
    @access("viewer")
    @blp.arguments(AlertRuleQueryArgsSchema, location="query")
    @blp.response(200, AlertRuleSchema(many=True))
    @blp.paginate(QueryPage)
    def get(self, args):
        """List alert rules."""
        return service.list_rules(**args)

    @access("editor")
    @blp.arguments(AlertRuleSchema)
    @blp.response(201, AlertRuleSchema)
    def post(self, data):
        """Create an alert rule in a project (optionally for one service)."""
        return service.create_rule(data)


@blp.route("/<objectid:rule_id>")
class AlertRuleItem(MethodView):
    @access("viewer")
    @blp.response(200, AlertRuleSchema)
    @blp.alt_response(404, description="No such rule.")
    def get(self, rule_id):
        """Get an alert rule."""
        return service.get_rule(rule_id)

    @access("editor")
    @blp.arguments(AlertRuleUpdateSchema)
    @blp.response(200, AlertRuleSchema)
    @blp.alt_response(404, description="No such rule.")
    def put(self, data, rule_id):
        """Update an alert rule (partial body accepted, like PATCH)."""
        return service.update_rule(rule_id, data)

    @access("editor")
    @blp.arguments(AlertRuleUpdateSchema)
    @blp.response(200, AlertRuleSchema)
    @blp.alt_response(404, description="No such rule.")
    def patch(self, data, rule_id):
        """Update an alert rule (partial body)."""
        return service.update_rule(rule_id, data)

    @access("editor")
    @blp.response(204)
    @blp.alt_response(404, description="No such rule.")
    def delete(self, rule_id):
        """Delete an alert rule and its alerts (a firing one is resolved first)."""
        service.delete_rule(rule_id)


@blp.route("/<objectid:rule_id>/backtest")
class AlertRuleBacktest(MethodView):
    @access("viewer")
    @blp.arguments(BacktestArgsSchema, location="query")
    @blp.response(200, BacktestSchema)
    @blp.alt_response(404, description="No such rule.")
    def post(self, args, rule_id):
        """Replay stored history: the transitions the rule would have produced.

        One evaluation per POLYMICRO_ALERTS_EVALUATE_SECONDS from `since` (default: an
        hour before `until`) to `until` (default: now); writes nothing. More than
        POLYMICRO_ALERTS_BACKTEST_MAX_STEPS evaluations is a 422.
        """
        return service.backtest(rule_id, args.get("since"), args.get("until"))


@alerts_blp.route("/")
class Alerts(MethodView):
    @access("viewer")
    @alerts_blp.arguments(AlertQueryArgsSchema, location="query")
    @alerts_blp.response(200, AlertSchema(many=True))
    @alerts_blp.paginate(QueryPage)
    def get(self, args):
        """List alert instances, the latest change first."""
        return service.list_alerts(**args)


@alerts_blp.route("/<objectid:alert_id>")
class AlertItem(MethodView):
    @access("viewer")
    @alerts_blp.response(200, AlertSchema)
    @alerts_blp.alt_response(404, description="No such alert.")
    def get(self, alert_id):
        """Get an alert instance."""
        return service.get_alert(alert_id)


@alerts_blp.route("/<objectid:alert_id>/silence")
class AlertSilence(MethodView):
    @access("editor")
    @alerts_blp.arguments(SilenceSchema)
    @alerts_blp.response(200, AlertSchema)
    @alerts_blp.alt_response(404, description="No such alert.")
    def post(self, data, alert_id):
        """Silence an alert until a time (null lifts it): its transitions are still
        recorded, but send no notification while silenced."""
        return service.silence(alert_id, data["until"])
