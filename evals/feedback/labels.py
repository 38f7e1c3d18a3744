"""Feedback as labels: ratings for the drift monitor, corrections for evaluation on live
traffic and for retraining. Read across keys: this is the operator's view, never an API's."""

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from core.database import as_utc, reading
from evals.feedback.review import APPROVED, REJECTED
from evals.tables import feedback


def ratings(engine: Engine, version: str, since: datetime) -> dict[str, int]:
    """request id -> its newest rating, for a version's requests rated since then."""
    query = (
        select(feedback.c.request_id, feedback.c.rating)
        .where(feedback.c.version == version, feedback.c.rating.is_not(None))
        .where(feedback.c.created_at >= since)
        .order_by(feedback.c.created_at)
    )
    with reading(engine) as conn:
        return {request_id: rating for request_id, rating in conn.execute(query)}


@dataclass(frozen=True)
class Correction:
    request_id: str
    version: str  # the version that answered
    correction: str
    created_at: datetime
    given_by: str | None  # the key that gave it; None: the operator of a gateway without keys


def corrections(
    engine: Engine, versions: list[str], since: datetime, *, approved_only: bool, max_per_key: int
) -> list[Correction]:
    """The corrections that may train models, given since then on answers of these versions:
    from keys allowed to teach, never rejected (with `approved_only`, approved by an admin),
    newest per request, at most `max_per_key` from each key (its first ones); oldest first."""
    query = (
        select(feedback.c.request_id, feedback.c.version, feedback.c.correction,
               feedback.c.created_at, feedback.c.given_by)
        .where(feedback.c.version.in_(versions), feedback.c.correction.is_not(None))
        .where(feedback.c.created_at >= since, feedback.c.teach.is_(True))
        .order_by(feedback.c.created_at)
    )  # fmt: skip
    if approved_only:
        query = query.where(feedback.c.review == APPROVED)
    else:
        query = query.where(feedback.c.review != REJECTED)
    with reading(engine) as conn:
        rows = conn.execute(query).all()
    newest = {row.request_id: row for row in rows}
    taken: Counter[str | None] = Counter()
    kept = []
    for r in sorted(newest.values(), key=lambda r: r.created_at):
        taken[r.given_by] += 1
        if r.given_by is None or taken[r.given_by] <= max_per_key:
            kept.append(
                Correction(r.request_id, r.version, r.correction, as_utc(r.created_at), r.given_by)
            )
    return kept
