"""The traffic log keeps what it can and only as long as it should: bounded queue, retention
by age and rows, a bad record does not lose its batch, and shutdown stores what is queued."""

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from openai import OpenAI
from sqlalchemy import func, select

from core.database import open_database, utc_now
from core.settings import StackSettings
from serving.config import ServingConfig
from serving.gateway import build_gateway
from serving.tables import CHAIN, traffic
from serving.traffic import Retention, TrafficLog, TrafficRecord
from tests.serving.conftest import running_gateway


def _record(i: int, age: timedelta = timedelta(0), prompt: str | None = "p") -> TrafficRecord:
    return TrafficRecord(
        utc_now() - age,
        f"req-{i}",
        None,
        "chat",
        "demo",
        "demo:1",
        "local",
        prompt,
        "o",
        1,
        1,
        1,
        "stop",  # type: ignore[arg-type]
    )


def _count(log: TrafficLog) -> int:
    with log.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(traffic)).scalar_one()


def test_retention_by_age_and_rows(database_url: str) -> None:
    engine = open_database(database_url, CHAIN)
    log = TrafficLog(engine, retention=Retention(timedelta(days=7), max_rows=3))
    try:
        log.record(_record(0, age=timedelta(days=8)))
        for i in range(1, 6):
            log.record(_record(i))
        log.flush()
        assert log.prune() == 3
        ids = sorted(r.request_id for r in log.window(utc_now() - timedelta(days=30)))
        assert ids == ["req-3", "req-4", "req-5"]
    finally:
        log.close()


def test_a_bad_record_does_not_lose_its_batch(database_url: str) -> None:
    dropped: list[int] = []
    engine = open_database(database_url, CHAIN)
    log = TrafficLog(engine, on_drop=dropped.append, linger_s=1.0)
    try:
        for i in range(5):
            log.record(_record(i, prompt=None if i == 2 else "p"))  # NOT NULL fails
        log.flush()
        assert _count(log) == 4 and dropped == [1]
    finally:
        log.close()


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = open_database(url, CHAIN)
    dropped: list[int] = []
    with engine.connect() as blocker:
        blocker.exec_driver_sql("SELECT 1")  # holds SQLite's write lock: the writer waits
        log = TrafficLog(engine, on_drop=dropped.append, max_queue=2, linger_s=0.0)
        for i in range(10):
            log.record(_record(i))  # returns at once, whatever the database does
        assert sum(dropped) >= 7
        blocker.rollback()
    log.flush()
    log.close()
    assert _count(log) + sum(dropped) == 10


class _FailingEngine:
    name = "failing"
    queue_depth = 0

    async def start(self) -> None: ...

    async def aclose(self) -> None:
        raise RuntimeError("the engine would not stop")


def test_shutdown_stores_queued_records_when_an_engine_fails_to_stop(tmp_path: Path) -> None:
    gateway = build_gateway(ServingConfig(), StackSettings(home=tmp_path / "home"))
    gateway.engines = [_FailingEngine()]  # type: ignore[list-item]
    assert gateway.traffic is not None
    gateway.traffic.record(_record(1))
    with pytest.raises(RuntimeError, match="would not stop"):
        asyncio.run(gateway.aclose())
    assert [r.request_id for r in gateway.traffic.window(utc_now() - timedelta(hours=1))] == [
        "req-1"
    ]


def test_the_requests_user_is_logged_with_it(tmp_path: Path, random_model_dir: Path) -> None:
    with running_gateway(tmp_path / "home", random_model_dir) as gw:
        client = OpenAI(base_url=f"{gw.base_url}/v1", api_key="none")
        client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            user="end-user-17",
        )
        client.completions.create(model="demo", prompt="hi", max_tokens=2)
        gw.gateway.traffic.flush()
        logged = gw.gateway.traffic.window(utc_now() - timedelta(hours=1))
    assert sorted((r.endpoint, r.end_user) for r in logged) == [
        ("chat", "end-user-17"),
        ("completions", None),
    ]
