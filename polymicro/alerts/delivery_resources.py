"""/api/alert-receivers: webhook receivers and their delivery log.

The delivery half of the alerts domain (``delivery.py`` holds the rules,
``delivery_models.py`` the documents, ``delivery_schemas.py`` the contract, this file
the endpoints); the evaluation half (rules, instances) is ``resources.py`` and its
siblings, and ``outbox.py`` joins the two.  Viewers read, editors write; a receiver's
secret is shown once, in the answer to its creation.
"""

from flask.views import MethodView

from polymicro.alerts import delivery
from polymicro.alerts.delivery_schemas import (
    DeliveryQueryArgsSchema,
    DeliverySchema,
    ReceiverCreatedSchema,
    ReceiverSchema,
    ReceiverUpdateSchema,
)
from polymicro.common.blueprint import Blueprint
from polymicro.common.pagination import QueryPage
from polymicro.security import access

blp = Blueprint(
    "alert_receivers",
    __name__,
    url_prefix="/api/alert-receivers",
    description="Webhook receivers of alert notifications (Alertmanager's payload, signed "
    "the Standard Webhooks way), and their delivery log.",
)


@blp.route("/")
class Receivers(MethodView):
    @access("viewer")
    @blp.response(200, ReceiverSchema(many=True))
    @blp.paginate(QueryPage)
    def get(self):
        """List alert receivers (without their secrets)."""
        return delivery.list_receivers()

    @access("editor")
    @blp.arguments(ReceiverSchema)
    @blp.response(201, ReceiverCreatedSchema)
    @blp.alt_response(409, description="A receiver with that name exists.")
    def post(self, data):
        """Create an alert receiver; the answer shows its `secret`, this once.

        The URL is checked: http or https, and (unless POLYMICRO_WEBHOOK_ALLOW_PRIVATE)
        a host resolving only to public addresses; otherwise 422 and nothing is stored.
        """
        return delivery.create_receiver(data)


@blp.route("/<objectid:receiver_id>")
class ReceiverItem(MethodView):
    @access("viewer")
    @blp.response(200, ReceiverSchema)
    @blp.alt_response(404, description="No such receiver.")
    def get(self, receiver_id):
        """Get an alert receiver (a disabled one shows why in `disabled_reason`)."""
        return delivery.get_receiver(receiver_id)

    @access("editor")
    @blp.arguments(ReceiverUpdateSchema)
    @blp.response(200, ReceiverSchema)
    @blp.alt_response(404, description="No such receiver.")
    @blp.alt_response(409, description="Another receiver has that name.")
    def put(self, data, receiver_id):
        """Update an alert receiver (partial body accepted)."""
        return delivery.update_receiver(receiver_id, data)

    @access("editor")
    @blp.arguments(ReceiverUpdateSchema)
    @blp.response(200, ReceiverSchema)
    @blp.alt_response(404, description="No such receiver.")
    @blp.alt_response(409, description="Another receiver has that name.")
    def patch(self, data, receiver_id):
        """Update an alert receiver (partial body); `enabled: true` re-enables it."""
        return delivery.update_receiver(receiver_id, data)

    @access("editor")
    @blp.response(204)
    @blp.alt_response(404, description="No such receiver.")
    def delete(self, receiver_id):
        """Delete an alert receiver with its delivery log."""
        delivery.delete_receiver(receiver_id)


@blp.route("/<objectid:receiver_id>/deliveries")
class Deliveries(MethodView):
    @access("viewer")
    @blp.arguments(DeliveryQueryArgsSchema, location="query")
    @blp.response(200, DeliverySchema(many=True))
    @blp.alt_response(404, description="No such receiver.")
    @blp.paginate(QueryPage)
    def get(self, args, receiver_id):
        """The delivery log of a receiver, newest first, each with its attempts."""
        return delivery.list_deliveries(receiver_id, **args)


@blp.route("/<objectid:receiver_id>/deliveries/<objectid:delivery_id>/redeliver")
class Redeliver(MethodView):
    @access("editor")
    @blp.response(202, DeliverySchema)
    @blp.alt_response(404, description="No such receiver or delivery.")
    @blp.alt_response(409, description="Still pending, or the receiver is disabled.")
    def post(self, receiver_id, delivery_id):
        """Send a delivery again (same body and `webhook-id`, a new retry window).

        The worker sends it at its next round.
        """
        return delivery.redeliver(receiver_id, delivery_id)
