"""Feedback: stored in `evals_feedback`, about a request the traffic log recorded. Only the
key that made the request (or an admin) may give or read feedback on it; to anyone else the
request does not exist. A correction records the key that gave it and whether that key may
teach: only then may it train models (after an admin's review, where a loop asks for one)."""

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from core.callers import Caller
from core.database import as_utc, reading, utc_now
from core.errors import ErrorCode
from core.listing import ListPage, page
from evals.errors import EvalsError
from evals.feedback.protocol import FeedbackObject, FeedbackRequest
from evals.feedback.review import PENDING
from evals.tables import feedback


@dataclass(frozen=True)
class ServedRequest:
    """What the gateway's traffic log knows of a request."""

    request_id: str
    owner: str | None  # the API key that made it; None on a gateway without keys
    version: str


FindRequests = Callable[[str], list[ServedRequest]]  # every recorded request with that id


def request_not_found(request_id: str) -> EvalsError:
    return EvalsError(
        ErrorCode.NOT_FOUND,
        f"no answer with request id {request_id!r} is recorded for this API key; give the "
        "`x-request-id` of an answer this key received (answers are recorded only while the "
        "traffic log is on for the key)",
        param="request_id",
        api_code="request_not_found",
    )


def _object(row: Mapping[str, Any]) -> FeedbackObject:
    return FeedbackObject(
        id=row["id"],
        created_at=int(as_utc(row["created_at"]).timestamp()),
        request_id=row["request_id"],
        model=row["version"],
        rating=row["rating"],
        correction=row["correction"],
        teach=row["teach"],
        review=row["review"],
    )


class FeedbackService:
    def __init__(self, engine: Engine, find_requests: FindRequests):
        self.engine = engine
        self.find_requests = find_requests

    def give(self, caller: Caller, body: FeedbackRequest) -> FeedbackObject:
        found = self.find_requests(body.request_id)
        # the caller's own request first: an admin rates its own over another key's
        found.sort(key=lambda served: served.owner != caller.key_id)
        served = next((s for s in found if caller.sees(s.owner)), None)
        if served is None:
            raise request_not_found(body.request_id)
        row = {
            "id": f"fb-{secrets.token_hex(12)}",
            "created_at": utc_now(),
            "request_id": served.request_id,
            "owner": served.owner,
            "version": served.version,
            "rating": body.rating,
            "correction": body.correction,
            "given_by": caller.key_id,
            # without a key, the gateway serves only its own machine: the operator teaches
            "teach": caller.key_id is None or caller.teach,
            "review": PENDING,
        }
        with self.engine.begin() as conn:
            conn.execute(feedback.insert().values(**row))
        return _object(row)

    def list_feedback(
        self, caller: Caller, *, request_id: str | None = None, limit: int = 20
    ) -> ListPage[FeedbackObject]:
        """Newest first; a caller sees feedback on its own requests (admins see all)."""
        query = select(feedback).order_by(feedback.c.created_at.desc()).limit(limit + 1)
        if not caller.admin:  # (== None is IS NULL: a gateway without keys)
            query = query.where(feedback.c.owner == caller.key_id)
        if request_id is not None:
            query = query.where(feedback.c.request_id == request_id)
        with reading(self.engine) as conn:
            rows = [_object(r._mapping) for r in conn.execute(query)]
        return page(rows, limit, lambda f: f.id)
