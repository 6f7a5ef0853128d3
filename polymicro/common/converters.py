"""URL converter for ObjectId path segments.

A segment that is not 24 hex characters does not match the rule, so Flask answers 404,
exactly as for an unknown id (the contract treats both alike).
"""

from bson import ObjectId
from werkzeug.routing import BaseConverter


class ObjectIdConverter(BaseConverter):
    regex = r"[0-9a-fA-F]{24}"

    def to_python(self, value: str) -> ObjectId:
        return ObjectId(value)

    def to_url(self, value) -> str:
        return str(value)
