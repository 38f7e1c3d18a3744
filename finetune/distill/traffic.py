"""Prompts from the gateway's traffic log, answered by the teacher, as extra training rows.

The log is the gateway's table (`serving_traffic`, already redacted, opted-out keys absent);
fine-tuning sits below the gateway and does not import it, so the table is read here by name
with plain SQL."""

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from core.database import engine_for, reading
from finetune.demo.evaluation import generate_replies
from finetune.distill.recipe import TrafficPrompts
from finetune.errors import RecipeError

_QUERY = text(
    "SELECT messages FROM serving_traffic WHERE model = :model AND endpoint = :endpoint "
    "AND messages IS NOT NULL AND (:owner IS NULL OR key_id = :owner) ORDER BY id DESC "
    "LIMIT :limit"
)


def _conversation(messages: Any) -> list[dict[str, str]] | None:
    """A logged request's messages as a prompt the teacher can answer, or None."""
    if isinstance(messages, str):
        messages = json.loads(messages)
    if not isinstance(messages, list) or not messages:
        return None
    kept = [
        {"role": m["role"], "content": m["content"]}
        for m in messages
        if isinstance(m, dict)
        and m.get("role") in ("system", "user", "assistant")
        and isinstance(m.get("content"), str)
    ]
    return kept if kept and kept[-1]["role"] == "user" else None


def traffic_prompts(
    database_url: str, spec: TrafficPrompts, owner: str | None
) -> list[list[dict[str, str]]]:
    """The newest chat prompts sent to `spec.model` (only `owner`'s, for a key's job)."""
    params = {"model": spec.model, "endpoint": "chat", "owner": owner, "limit": spec.limit}
    try:
        with reading(engine_for(database_url)) as conn:
            rows = conn.execute(_QUERY, params).all()
    except DBAPIError:
        raise RecipeError(
            "traffic: this database has no traffic log (the gateway has not run on it)",
            param="traffic",
        ) from None
    prompts = [c for (messages,) in rows if (c := _conversation(messages)) is not None]
    if not prompts:
        raise RecipeError(
            f"traffic: the traffic log holds no chat requests to {spec.model!r}", param="traffic"
        )
    return prompts


def teacher_rows(
    teacher: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], max_new_tokens: int
) -> list[tuple[str, dict[str, Any]]]:
    """Chat rows of each prompt and the teacher's greedy answer, as `read_rows` returns them."""
    replies = generate_replies(teacher, tokenizer, prompts, 32, max_new_tokens)
    return [
        (f"traffic:{i}", {"messages": [*prompt, {"role": "assistant", "content": reply}]})
        for i, (prompt, reply) in enumerate(zip(prompts, replies, strict=True), start=1)
        if reply.strip()
    ]
