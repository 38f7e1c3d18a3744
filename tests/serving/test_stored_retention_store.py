"""The sweeps behind the retention of batch lines and stored responses, on SQLite and
PostgreSQL: ending a batch empties its lines; the sweep deletes the lines of batches past the
retention and those no file holds any more, and nothing of a running batch; `prune` deletes
the responses stored before the cutoff."""

from datetime import timedelta

from sqlalchemy import insert, select, update

from core.database import open_database, reading, utc_now
from finetune import tables as finetune_tables
from finetune.files import FileStore, StoredFile
from serving.batches.store import Batch, BatchStore, Line, new_batch_id
from serving.responses.store import ResponseStore
from serving.tables import CHAIN, batches, responses

DAY = timedelta(days=1)


def _file(files: FileStore, file_id: str) -> str:
    files.add(
        StoredFile(file_id, utc_now(), f"{file_id}.jsonl", "batch_output", 1, 1, "x", "sha256:0")
    )
    return file_id


def _ended(store: BatchStore, status: str, **files: str | None) -> str:
    now = utc_now()
    batch = Batch(
        id=new_batch_id(),
        owner="key-1",
        endpoint="/v1/completions",
        input_file_id="file-in",
        completion_window="24h",
        model="demo",
        metadata=None,
        status="in_progress",
        total=3,
        created_at=now,
        expires_at=now + DAY,
    )
    store.create(batch, [Line(n, f"c{n}", {"prompt": "secret"}) for n in (1, 2, 3)])
    [(_, lease)] = [c for c in store.claim("gateway", timedelta(seconds=30)) if c[0].id == batch.id]
    result = {"custom_id": "c1", "response": {"body": {"text": "secret"}}}
    store.finish_line(lease, 1, ok=True, result=result)
    store.finish_line(lease, 2, ok=False, result=result)
    assert store.move(
        batch.id, status, only_from=("in_progress",), lease=lease, empty_lines=True, **files
    )
    return batch.id


def test_batch_lines_are_emptied_then_swept(database_url: str) -> None:
    open_database(database_url, finetune_tables.CHAIN)
    files = FileStore(open_database(database_url, finetune_tables.CHAIN))
    store = BatchStore(open_database(database_url, CHAIN))
    both = _ended(
        store,
        "completed",
        output_file_id=_file(files, "file-o1"),
        error_file_id=_file(files, "file-e1"),
    )
    assert [(x.status, x.body, x.result) for x in store.lines(both)] == [
        ("completed", {}, None),
        ("failed", {}, None),
        ("pending", {}, None),
    ]
    output_gone = _ended(
        store,
        "cancelled",
        output_file_id=_file(files, "file-o2"),
        error_file_id=_file(files, "file-e2"),
    )
    files.delete("file-o2")
    no_files = _ended(store, "failed")
    old = _ended(
        store,
        "completed",
        output_file_id=_file(files, "file-o3"),
        error_file_id=_file(files, "file-e3"),
    )
    with store.engine.begin() as conn:
        conn.execute(
            update(batches).where(batches.c.id == old).values(created_at=utc_now() - 3 * DAY)
        )
    running = store.create(
        Batch(
            id=new_batch_id(), owner="key-1", endpoint="/v1/completions", input_file_id="f",
            completion_window="24h", model="demo", metadata=None, status="in_progress", total=1,
            created_at=utc_now() - 3 * DAY, expires_at=utc_now() + DAY,
        ),
        [Line(1, "c1", {"prompt": "secret"})],
    ).id  # fmt: skip

    assert store.sweep(utc_now() - DAY) == 1 + 2 + 3 + 3
    assert [x.status for x in store.lines(both)] == ["completed", "failed"]
    assert [x.status for x in store.lines(output_gone)] == ["failed"]
    assert store.lines(no_files) == [] and store.lines(old) == []
    assert [x.body for x in store.lines(running)] == [{"prompt": "secret"}]
    assert store.sweep(utc_now() - DAY) == 0


def test_stored_responses_are_pruned(database_url: str) -> None:
    store = ResponseStore(open_database(database_url, CHAIN))
    with store.engine.begin() as conn:
        for name, age in (("resp_old", 3 * DAY), ("resp_new", timedelta(0))):
            conn.execute(
                insert(responses).values(
                    id=name,
                    key_id="key-1",
                    created_at=utc_now() - age,
                    response={"id": name},
                    conversation=[{"role": "user", "content": "secret"}],
                )
            )
    assert store.prune(utc_now() - DAY) == 1
    with reading(store.engine) as conn:
        assert conn.execute(select(responses.c.id)).scalars().all() == ["resp_new"]
