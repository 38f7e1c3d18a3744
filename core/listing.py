"""Lists over HTTP, as OpenAI pages them: `{"object": "list", "data", "has_more", "first_id",
"last_id"}`, where a client asks for the next page with `after=<last_id>`."""

from collections.abc import Callable, Sequence
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel

T = TypeVar("T")

MAX_PAGE = 100


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


def page(items: Sequence[T], limit: int | None, id_of: Callable[[T], str]) -> ListPage[T]:
    """A page of `items`, which holds up to `limit + 1` of them (one more than the page
    shows says whether there is another page)."""
    shown = list(items if limit is None else items[:limit])
    return ListPage[T](
        data=shown,
        has_more=limit is not None and len(items) > limit,
        first_id=id_of(shown[0]) if shown else None,
        last_id=id_of(shown[-1]) if shown else None,
    )
