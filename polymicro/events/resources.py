"""/api/events: the change feed (cursor reads), its live stream, and stream tokens."""

from __future__ import annotations

from flask.views import MethodView

from polymicro.common import sse
from polymicro.common.blueprint import Blueprint
from polymicro.events import service
from polymicro.events.schemas import (
    EventPageSchema,
    EventQueryArgsSchema,
    EventSchema,
    EventStreamArgsSchema,
    StreamTokenRequestSchema,
    StreamTokenSchema,
)
from polymicro.security import access
from polymicro.security import current_principal as me

blp = Blueprint(
    "events",
    __name__,
    url_prefix="/api/events",
    description="The append-only record of every catalog change: read by cursor, or live.",
)


@blp.route("/")
class Events(MethodView):
    @access("viewer")
    @blp.arguments(EventQueryArgsSchema, location="query")
    @blp.response(200, EventPageSchema, headers={"X-Next-After": {"schema": {"type": "integer"}}})
    @blp.alt_response(410, description="`after` is older than what is kept: start again.")
    def get(self, args):
        """Events in `seq` order after `after`, or newest first (before `before`)."""
        page = service.read_events(**args)
        return page, 200, {"X-Next-After": str(page["next_after"])}


@blp.route("/stream")
class EventStream(MethodView):
    @sse.stream_access("events")
    @blp.arguments(EventStreamArgsSchema, location="query")
    @blp.arguments(sse.ResumeHeadersSchema, location="headers")
    @blp.doc(**sse.STREAM_DOC)
    def get(self, args, headers):
        """Live events (Server-Sent Events), with the filters of the feed."""
        return sse.open_stream(*event_source(args, headers["last_event_id"]))


@blp.route("/stream-token")
class StreamToken(MethodView):
    @access("viewer")
    @blp.arguments(StreamTokenRequestSchema)
    @blp.response(201, StreamTokenSchema)
    def post(self, data):
        """A token for one stream (≤ 60 s), to pass as `?token=` where headers cannot go."""
        token = sse.mint_token(data["stream"], data.get("project_id"), *_who(me()))
        return token, 201, {"Cache-Control": "no-store"}


def _who(principal) -> tuple[str | None, str | None]:
    if principal is None:
        return None, None
    return principal.user_id, principal.username


def event_source(args: dict, last_event_id: str | None):
    """The ``start`` and ``poll`` of an event stream (see ``sse.open_stream``)."""
    follower = service.Follower(args.get("project_id"), args.get("type"), args.get("actor"))
    resume = last_event_id if last_event_id is not None else args.get("after")
    dump = EventSchema().dump

    def start() -> list[sse.Message]:
        if follower.start(resume):
            reset = {"message": "The resume point is gone; reload, then follow from here."}
            return [sse.json_message(reset, id=str(follower.cursor), event="reset")]
        return []

    def poll() -> tuple[list[sse.Message], bool]:
        before = follower.cursor
        events, more = follower.poll()
        messages = [sse.json_message(dump(e), id=str(e["seq"])) for e in events]
        last = events[-1]["seq"] if events else before
        if follower.cursor > last:  # filtered-out events passed: move Last-Event-ID on
            messages.append(sse.Message(id=str(follower.cursor)))
        return messages, more

    return start, poll
