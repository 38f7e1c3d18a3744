"""The batch store on SQLite and PostgreSQL: leases and their fencing, per-line progress
counted once, paging."""

from datetime import timedelta

import pytest

from core.database import open_database, utc_now
from core.leases import LeaseLost
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
    ttl = timedelta(seconds=30)

    [(claimed, lease)] = store.claim("gateway-a", ttl)
    assert claimed.id == first.id and lease.owner == "gateway-a"
    assert store.claim("gateway-b", ttl) == []  # held by a live process
    assert store.move(first.id, "in_progress", only_from=("validating",), lease=lease)
    assert not store.move(first.id, "in_progress", only_from=("validating",), lease=lease)

    result = {"custom_id": "a", "response": {"status_code": 200}}
    store.finish_line(lease, 1, ok=True, result=result, input_tokens=3, output_tokens=5)
    store.finish_line(lease, 1, ok=True, result=result, input_tokens=3, output_tokens=5)
    got = store.get(first.id)
    assert (got.completed, got.failed, got.input_tokens, got.output_tokens) == (1, 0, 3, 5)
    assert [(x.line, x.custom_id) for x in store.lines(first.id, "pending")] == [(3, "b")]
    assert store.lines(first.id, "completed")[0].result == result
    assert got.in_progress_at is not None and got.metadata == {"k": "v"}

    store.release(lease)
    [(_, short)] = store.claim("gateway-b", timedelta(seconds=-1))
    [(_, taken)] = store.claim("gateway-a", ttl)  # that lease ran out
    assert taken.epoch == short.epoch + 1 == lease.epoch + 3  # the release moved it too

    second = store.create(_batch("key-1", seconds=1), lines)
    store.create(_batch("key-2", seconds=2), lines)
    assert [b.id for b in store.list_batches("key-1", None, 1)] == [second.id, first.id]
    assert [b.id for b in store.list_batches("key-1", second.id, 5)] == [first.id]
    assert len(store.list_batches(None, None, 10)) == 3


def test_a_process_that_lost_the_lease_cannot_write(database_url: str) -> None:
    """Gateway a's lease runs out while it still runs the batch, and gateway b takes it
    over: a's renewal says so, and neither a line's result nor the batch's end that a
    writes afterwards is stored; b's are."""
    store = BatchStore(open_database(database_url, CHAIN))
    lines = [Line(1, "a", {"model": "demo", "prompt": "x"}), Line(2, "b", {"prompt": "y"})]
    batch = store.create(_batch("key-1"), lines)
    [(_, stale)] = store.claim("gateway-a", timedelta(seconds=-1))
    assert store.move(batch.id, "in_progress", only_from=("validating",), lease=stale)
    [(_, fresh)] = store.claim("gateway-b", timedelta(seconds=30))

    with pytest.raises(LeaseLost):
        store.renew(stale, timedelta(seconds=30))
    assert store.renew(fresh, timedelta(seconds=30)).epoch == fresh.epoch

    mine = {"custom_id": "a", "by": "b"}
    with pytest.raises(LeaseLost):
        store.finish_line(stale, 1, ok=False, result={"custom_id": "a", "by": "a"})
    store.finish_line(fresh, 1, ok=True, result=mine, output_tokens=4)
    with pytest.raises(LeaseLost):  # the line is pending again for nobody but b
        store.finish_line(stale, 2, ok=True, result={"custom_id": "b", "by": "a"})

    ends = {"only_from": ("in_progress",)}
    assert not store.move(batch.id, "completed", lease=stale, output_file_id="file-a", **ends)
    assert store.move(batch.id, "completed", lease=fresh, output_file_id="file-b", **ends)
    got = store.get(batch.id)
    assert (got.status, got.output_file_id, got.completed, got.failed) == (
        "completed",
        "file-b",
        1,
        0,
    )
    assert got.output_tokens == 4
    assert [(x.line, x.status, x.result) for x in store.lines(batch.id)] == [
        (1, "completed", mine),
        (2, "pending", None),
    ]
    assert not store.leases.release(stale)  # and a's release leaves b's lease alone
    held = store.leases.holder(batch.id)
    assert held is not None and (held.owner, held.epoch) == ("gateway-b", fresh.epoch)
