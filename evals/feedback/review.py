"""An admin's review of corrections before they train models: each correction from a key
allowed to teach starts `pending`; a loop policy with `review: true` trains only on those an
admin approved (`llm-evals feedback approve`), and a rejected one never trains. Corrections
from keys without the teach scope are not reviewed: they never train."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from core.database import as_utc, reading, utc_now
from core.errors import ErrorCode
from evals.errors import EvalsError, invalid
from evals.tables import feedback

PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
STATES = (PENDING, APPROVED, REJECTED)


@dataclass(frozen=True)
class Reviewable:
    id: str
    created_at: datetime
    request_id: str
    version: str
    given_by: str | None
    correction: str
    review: str
    reviewed_by: str | None


def _teaching():
    return select(feedback).where(feedback.c.teach.is_(True), feedback.c.correction.is_not(None))


class FeedbackReview:
    def __init__(self, engine: Engine):
        self.engine = engine

    def list_corrections(
        self, state: str = PENDING, *, key: str | None = None, limit: int = 100
    ) -> list[Reviewable]:
        """Corrections from keys allowed to teach in that state, oldest first."""
        query = _teaching().where(feedback.c.review == state)
        if key is not None:
            query = query.where(feedback.c.given_by == key)
        with reading(self.engine) as conn:
            rows = conn.execute(query.order_by(feedback.c.created_at).limit(limit)).all()
        return [
            Reviewable(
                r.id, as_utc(r.created_at), r.request_id, r.version, r.given_by, r.correction,
                r.review, r.reviewed_by,
            )
            for r in rows
        ]  # fmt: skip

    def decide(
        self, state: str, actor: str, *, ids: Sequence[str] = (), key: str | None = None
    ) -> int:
        """Approve or reject the corrections `ids`, or every one from `key` (approving: its
        pending ones; rejecting: all it gave, approved or not). Returns how many changed; an id
        that is no correction from a key allowed to teach changes nothing and is an error."""
        if state not in (APPROVED, REJECTED):
            raise invalid(f"a review approves or rejects, not {state!r}")
        if bool(ids) == (key is not None):
            raise invalid("name corrections by id, or a key with --key, not both")
        query = _teaching().with_only_columns(feedback.c.id)
        if ids:
            query = query.where(feedback.c.id.in_(ids))
        else:
            undecided = (
                feedback.c.review == PENDING
                if state == APPROVED
                else (feedback.c.review != REJECTED)
            )
            query = query.where(feedback.c.given_by == key, undecided)
        with self.engine.begin() as conn:
            found = set(conn.execute(query).scalars())
            unknown = sorted(set(ids) - found)
            if unknown:
                raise EvalsError(
                    ErrorCode.NOT_FOUND,
                    f"no correction from a key allowed to teach has the id {unknown[0]!r}; "
                    "`llm-evals feedback list` shows them (corrections from other keys never "
                    "train, so they are not reviewed)",
                    api_code="feedback_not_found",
                )
            if found:
                conn.execute(
                    feedback.update()
                    .where(feedback.c.id.in_(found))
                    .values(review=state, reviewed_by=actor, reviewed_at=utc_now())
                )
        return len(found)
