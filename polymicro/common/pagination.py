"""Paging database queries: counting and slicing happen in the database.

``QueryPage`` is the flask-smorest pager for every list endpoint.  It accepts anything
with ``count()`` and slice access: a mongoengine ``QuerySet`` or a :class:`PagedQuery`.
A page past the end is answered without querying (so ``?page=10**12`` costs nothing).
"""

from __future__ import annotations

from collections.abc import Callable

from flask_smorest import Page

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class QueryPage(Page):
    @property
    def item_count(self) -> int:
        return self.collection.count()

    @property
    def items(self) -> list:
        params = self.page_params
        first = params.first_item
        if first >= params.item_count:
            return []
        return list(self.collection[first : first + params.page_size])


class PagedQuery:
    """A query plus a step applied to each page once it is fetched.

    Used where a page needs related data loaded in bulk (e.g. the services of every
    project on the page, in one query) or rows shaped without building documents.
    """

    def __init__(self, queryset, per_page: Callable[[list], list] | None = None):
        self.queryset = queryset
        self.per_page = per_page

    def count(self) -> int:
        return self.queryset.count()

    def __getitem__(self, window: slice) -> list:
        rows = list(self.queryset[window])
        return self.per_page(rows) if self.per_page else rows

    def __iter__(self):
        return iter(self[0 : self.count()])
