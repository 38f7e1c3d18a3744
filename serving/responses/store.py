"""Stored responses: each with the conversation it ends, so that `previous_response_id` can
continue it; owned by the API key that made it (another key finds nothing)."""

from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine

from core.database import utc_now
from core.errors import ErrorCode
from serving.errors import ServingError
from serving.responses.protocol import ResponseObject
from serving.tables import responses


def _not_found(response_id: str) -> ServingError:
    return ServingError(
        ErrorCode.NOT_FOUND,
        f"no stored response {response_id!r} is open to this API key",
        param="response_id",
    )


class ResponseStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def save(
        self, response: ResponseObject, key_id: str | None, conversation: list[dict[str, Any]]
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(responses).values(
                    id=response.id,
                    key_id=key_id,
                    created_at=utc_now(),
                    response=response.model_dump(mode="json", by_alias=True),
                    conversation=conversation,
                )
            )

    def get(self, response_id: str, key_id: str | None) -> tuple[ResponseObject, list[dict]]:
        """The response and its conversation; 404 when it is not there or not this key's."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(responses.c.response, responses.c.conversation).where(
                    responses.c.id == response_id, _owned_by(key_id)
                )
            ).first()
        if row is None:
            raise _not_found(response_id)
        return ResponseObject.model_validate(row.response), row.conversation

    def delete(self, response_id: str, key_id: str | None) -> None:
        with self.engine.begin() as conn:
            deleted = conn.execute(
                delete(responses).where(responses.c.id == response_id, _owned_by(key_id))
            ).rowcount
        if not deleted:
            raise _not_found(response_id)


def _owned_by(key_id: str | None):
    column = responses.c.key_id
    return column.is_(None) if key_id is None else column == key_id
