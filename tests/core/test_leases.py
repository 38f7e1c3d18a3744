"""core.leases on SQLite and PostgreSQL: acquire only when free, renewal that notices a lost
lease, and fenced transitions, on a leased table of the test's own."""

from datetime import timedelta

import pytest
from sqlalchemy import Column, MetaData, String, Table, create_engine, insert, select

from core.leases import LeaseLost, Leases, lease_columns

metadata = MetaData()
items = Table(
    "test_leased_items",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("state", String(16), nullable=False),
    *lease_columns(),
)
LONG, GONE = timedelta(seconds=60), timedelta(seconds=-1)


@pytest.fixture
def leases(database_url: str) -> Leases:
    engine = create_engine(database_url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(items), [{"id": "a", "state": "new"}, {"id": "b", "state": "new"}])
    return Leases(engine, items)


def _state(leases: Leases, item_id: str) -> str:
    with leases.engine.connect() as conn:
        return conn.execute(select(items.c.state).where(items.c.id == item_id)).scalar_one()


def test_only_a_free_item_is_acquired_and_each_acquire_moves_the_epoch(leases: Leases) -> None:
    first = leases.acquire("a", "w1", LONG)
    assert first is not None and (first.owner, first.epoch) == ("w1", 1)
    assert leases.acquire("a", "w2", LONG) is None  # held and not run out
    assert leases.acquire("b", "w2", LONG, items.c.state == "done") is None  # not matching

    [other] = leases.acquire_free("w2", LONG)
    assert (other.item_id, other.epoch) == ("b", 1)
    assert leases.acquire_free("w3", LONG) == []

    short = leases.renew(first, GONE)  # runs out now: free for the next worker
    taken = leases.acquire("a", "w3", LONG)
    assert taken is not None and taken.epoch == short.epoch + 1 == 2


def test_a_worker_that_lost_its_lease_cannot_renew_or_write(leases: Leases) -> None:
    stale = leases.acquire("a", "w1", GONE)
    assert stale is not None
    fresh = leases.acquire("a", "w2", LONG)
    assert fresh is not None

    with pytest.raises(LeaseLost) as lost:
        leases.renew(stale, LONG)
    assert lost.value.api_code == "lease_lost"
    assert not leases.transition(stale, state="stale")
    assert leases.transition(fresh, items.c.state == "new", state="fresh")
    assert not leases.transition(stale, state="stale")
    assert _state(leases, "a") == "fresh"

    assert not leases.release(stale)
    held = leases.holder("a")
    assert held is not None and (held.owner, held.epoch) == ("w2", fresh.epoch)


def test_a_run_out_lease_taken_by_no_one_is_still_its_holders(leases: Leases) -> None:
    lease = leases.acquire("a", "w1", GONE)
    assert lease is not None
    assert leases.transition(lease, state="late")
    assert leases.renew(lease, LONG).epoch == lease.epoch


def test_a_release_frees_the_item_and_fences_its_former_holder(leases: Leases) -> None:
    lease = leases.acquire("a", "w1", LONG)
    assert lease is not None and leases.release(lease)
    assert leases.holder("a") is None
    assert not leases.transition(lease, state="after")
    with pytest.raises(LeaseLost):
        leases.renew(lease, LONG)
    again = leases.acquire("a", "w2", LONG)
    assert again is not None and again.epoch == lease.epoch + 2
