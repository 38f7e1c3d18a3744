"""The file store on SQLite and PostgreSQL: each key's usage counted beside its files, quotas
that parallel uploads cannot pass together, and the usage of files kept before it existed."""

import threading
from datetime import timedelta

from alembic import command
from sqlalchemy import insert

from core.database import engine_for, utc_now
from core.migrations import migrate
from finetune.files import FileStore, FileUsage, StoredFile
from finetune.tables import CHAIN, files


def stored(file_id: str, owner: str | None, size: int, **values) -> StoredFile:
    return StoredFile(
        **{
            "id": file_id,
            "created_at": utc_now(),
            "filename": "t.jsonl",
            "purpose": "fine-tune",
            "bytes": size,
            "rows": 1,
            "path": f"files/{file_id}.jsonl",
            "sha256": "sha256:" + "0" * 64,
            "owner": owner,
            **values,
        }
    )


def test_parallel_adds_cannot_pass_the_quota_together(database_url: str) -> None:
    store = FileStore.open(database_url)
    threads_n, max_files, max_bytes = 16, 5, 350
    start = threading.Barrier(threads_n)
    kept: list[bool] = []

    def add(i: int) -> None:
        start.wait()
        kept.append(store.add(stored(f"file-a{i}", "alice", 100), max_files=max_files))

    def add_bytes(i: int) -> None:
        start.wait()
        kept.append(store.add(stored(f"file-b{i}", "bob", 100), max_bytes=max_bytes))

    for target in (add, add_bytes):
        threads = [threading.Thread(target=target, args=(i,)) for i in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert kept.count(True) == max_files + max_bytes // 100
    assert len(store.list("alice")) == max_files and len(store.list("bob")) == 3
    assert store.usage("alice") == FileUsage(max_files, 500)
    assert store.usage("bob") == FileUsage(3, 300)


def test_usage_follows_adds_and_deletes_per_owner(database_url: str) -> None:
    store = FileStore.open(database_url)
    assert store.usage("alice") == FileUsage(0, 0)
    assert store.add(stored("file-1", "alice", 10))
    assert store.add(stored("file-2", "alice", 20))
    assert store.add(stored("file-3", None, 5))  # made without keys: counted apart
    assert store.usage("alice") == FileUsage(2, 30) and store.usage(None) == FileUsage(1, 5)
    assert not store.add(stored("file-4", "alice", 1), max_files=2)
    assert store.get("file-4") is None and store.usage("alice") == FileUsage(2, 30)
    assert store.delete("file-1") and not store.delete("file-1")
    assert store.usage("alice") == FileUsage(1, 20)
    assert store.add(stored("file-4", "alice", 1), max_files=2)


def test_listing_pages_by_creation_time_either_way(database_url: str) -> None:
    store = FileStore.open(database_url)
    now = utc_now()
    for i, purpose in enumerate(["fine-tune", "batch", "fine-tune", "batch", "fine-tune"]):
        store.add(
            stored(f"file-{i}", "alice", 1, created_at=now + timedelta(seconds=i), purpose=purpose)
        )
    store.add(stored("file-other", "bob", 1, created_at=now))

    def ids(found: list[StoredFile]) -> list[str]:
        return [f.id for f in found]

    assert ids(store.list("alice", limit=2)) == ["file-4", "file-3"]
    assert ids(store.list("alice", after=store.get("file-3"))) == ["file-2", "file-1", "file-0"]
    assert ids(store.list("alice", order="asc", after=store.get("file-1"))) == [
        "file-2",
        "file-3",
        "file-4",
    ]
    assert ids(store.list("alice", purpose="batch", order="asc")) == ["file-1", "file-3"]
    assert ids(store.list(order="asc", limit=2)) == ["file-0", "file-other"]  # all owners


def test_the_migration_counts_the_files_kept_before_it(database_url: str) -> None:
    engine = engine_for(database_url)
    config = CHAIN.config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "f0002")
        rows = [("file-1", "alice", 10), ("file-2", "alice", 32), ("file-3", None, 7)]
        for file_id, owner, size in rows:
            values = stored(file_id, owner, size).__dict__
            conn.execute(insert(files).values(**values))
    migrate(engine, CHAIN)
    store = FileStore(engine)
    assert store.usage("alice") == FileUsage(2, 42) and store.usage(None) == FileUsage(1, 7)
    assert store.delete("file-2") and store.usage("alice") == FileUsage(1, 10)
