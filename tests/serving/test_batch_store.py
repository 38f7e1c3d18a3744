"""The batch store on SQLite and PostgreSQL: leases, per-line progress counted once, paging."""

from datetime import timedelta

from core.database import open_database, utc_now
from serving.batches.store import Batch, BatchStore, Line, new_batch_id
from serving.tables import CHAIN


def _batch(owner: str | None, seconds: int = 0) -> Batch:
    now = utc_now() + timedelta(seconds=seconds)
    return Batch(
        id=new_batch_id(),
        owner=owner,
        endpoint="/v1/completions",
        input_file_id="file-x",
        completion_window="24h",
        model="demo",
        metadata={"k": "v"},
        status="validating",
        total=2,
        created_at=now,
        expires_at=now + timedelta(hours=24),
    )


def test_leases_progress_and_paging(database_url: str) -> None:
    store = BatchStore(open_database(database_url, CHAIN))
    lines = [Line(1, "a", {"model": "demo", "prompt": "x"}), Line(3, "b", {"prompt": "y"})]
    first = store.create(_batch("key-1"), lines)
    lease = timedelta(seconds=30)

    assert [b.id for b in store.claim("gateway-a", lease)] == [first.id]
    assert store.claim("gateway-b", lease) == []  # held by a live process
    assert store.move(first.id, "in_progress", only_from=("validating",))
    assert not store.move(first.id, "in_progress", only_from=("validating",))

    result = {"custom_id": "a", "response": {"status_code": 200}}
    store.finish_line(first.id, 1, ok=True, result=result, input_tokens=3, output_tokens=5)
    store.finish_line(first.id, 1, ok=True, result=result, input_tokens=3, output_tokens=5)
    got = store.get(first.id)
    assert (got.completed, got.failed, got.input_tokens, got.output_tokens) == (1, 0, 3, 5)
    assert [(x.line, x.custom_id) for x in store.lines(first.id, "pending")] == [(3, "b")]
    assert store.lines(first.id, "completed")[0].result == result
    assert got.in_progress_at is not None and got.metadata == {"k": "v"}

    store.release(first.id, "gateway-a")
    assert [b.id for b in store.claim("gateway-b", timedelta(seconds=-1))] == [first.id]
    assert [b.id for b in store.claim("gateway-a", lease)] == [first.id]  # that lease ran out

    second = store.create(_batch("key-1", seconds=1), lines)
    store.create(_batch("key-2", seconds=2), lines)
    assert [b.id for b in store.list_batches("key-1", None, 1)] == [second.id, first.id]
    assert [b.id for b in store.list_batches("key-1", second.id, 5)] == [first.id]
    assert len(store.list_batches(None, None, 10)) == 3
