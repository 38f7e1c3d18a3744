"""Feedback as labels: ratings for the drift monitor, corrections for evaluation on live
traffic and for retraining. Read across keys: this is the operator's view, never an API's."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from core.database import as_utc, reading
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


def corrections(engine: Engine, versions: list[str], since: datetime) -> list[Correction]:
    """Corrections given since then on answers of these versions, newest per request, oldest
    first."""
    query = (
        select(feedback.c.request_id, feedback.c.version, feedback.c.correction,
               feedback.c.created_at)
        .where(feedback.c.version.in_(versions), feedback.c.correction.is_not(None))
        .where(feedback.c.created_at >= since)
        .order_by(feedback.c.created_at)
    )  # fmt: skip
    with reading(engine) as conn:
        rows = conn.execute(query).all()
    newest = {row.request_id: row for row in rows}
    return [
        Correction(r.request_id, r.version, r.correction, as_utc(r.created_at))
        for r in newest.values()
    ]
