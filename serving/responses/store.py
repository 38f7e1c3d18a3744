"""Stored responses: each with the conversation it ends, so that `previous_response_id` can
continue it; owned by the API key that made it (another key finds nothing; admins find every
key's, as with every other owned resource: `Caller.sees`). They last as long as the traffic
log's records (`Retention.max_age`): an older one is not found, and `prune` deletes it."""

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine

from core.callers import Caller
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

    def get(
        self, response_id: str, caller: Caller, since: datetime
    ) -> tuple[ResponseObject, list[dict]]:
        """The response and its conversation; 404 when it is not there, not one `caller`
        sees, or stored before `since` (past the retention)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(responses.c.key_id, responses.c.response, responses.c.conversation).where(
                    responses.c.id == response_id, responses.c.created_at >= since
                )
            ).first()
        if row is None or not caller.sees(row.key_id):
            raise _not_found(response_id)
        return ResponseObject.model_validate(row.response), row.conversation

    def delete(self, response_id: str, caller: Caller) -> None:
        with self.engine.begin() as conn:
            owner = conn.execute(
                select(responses.c.key_id).where(responses.c.id == response_id)
            ).first()
            if owner is None or not caller.sees(owner.key_id):
                raise _not_found(response_id)
            conn.execute(delete(responses).where(responses.c.id == response_id))

    def prune(self, cutoff: datetime) -> int:
        """Delete the responses stored before `cutoff`; how many went."""
        with self.engine.begin() as conn:
            return conn.execute(delete(responses).where(responses.c.created_at < cutoff)).rowcount
