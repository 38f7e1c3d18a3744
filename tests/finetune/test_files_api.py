"""Listing files and checkpoints as OpenAI pages them, and per-key file quotas under parallel
uploads, through the official `openai` SDK against a real gateway with API keys."""

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from finetune.jobs import JobStatus
from tests.serving.conftest import RunningGateway, running_gateway

ROW = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, base_model_dir: Path
) -> Iterator[RunningGateway]:
    with running_gateway(tmp_path_factory.mktemp("files-api-home"), base_model_dir) as running:
        yield running


def client_of(running: RunningGateway, name: str) -> openai.OpenAI:
    """A client with a new API key of its own, so that it sees only what it makes."""
    _, secret = running.gateway.keys.create(name)
    return openai.OpenAI(base_url=f"{running.base_url}/v1", api_key=secret, max_retries=0)


def upload(client: openai.OpenAI, purpose: str = "fine-tune", data: bytes = ROW):
    return client.files.create(file=("t.jsonl", io.BytesIO(data)), purpose=purpose)


def test_files_list_by_page_order_and_purpose(gateway: RunningGateway) -> None:
    client = client_of(gateway, "lister")
    purposes = ["fine-tune", "batch", "fine-tune", "batch", "fine-tune"]
    made = [upload(client, purpose).id for purpose in purposes]
    newest_first = made[::-1]

    first = client.files.list(limit=2)
    assert [f.id for f in first.data] == newest_first[:2] and first.has_more
    second = client.files.list(limit=2, after=first.data[-1].id)
    assert [f.id for f in second.data] == newest_first[2:4]
    assert [f.id for f in client.files.list(limit=2)] == newest_first  # the SDK follows pages
    assert [f.id for f in client.files.list(order="asc")] == made
    assert [f.id for f in client.files.list(order="asc", after=made[1])] == made[2:]
    assert [f.id for f in client.files.list(purpose="batch")] == [made[3], made[1]]
    assert client.files.list(purpose="assistants").data == []

    other = upload(client_of(gateway, "neighbour"))
    for after in ("file-missing", other.id):  # another key's file is no cursor either
        with pytest.raises(openai.NotFoundError) as caught:
            client.files.list(after=after)
        assert caught.value.body["param"] == "after"
        assert caught.value.body["code"] == "invalid_cursor"
    with pytest.raises(openai.BadRequestError, match="limit"):
        client.files.list(limit=10_001)


def test_checkpoints_list_after_a_cursor(gateway: RunningGateway) -> None:
    client = client_of(gateway, "checkpoints")
    owner = gateway.gateway.keys.authenticate(client.api_key).id
    store = gateway.gateway.fine_tuning.store
    job = store.create(kind="fine-tune", model="demo", recipe={}, created_by="tests", owner=owner)
    store.transition(job.id, (JobStatus.QUEUED,), JobStatus.CANCELLED)
    for step in (10, 20, 30):
        store.add_checkpoint(job.id, step, f"jobs/{job.id}/checkpoint-{step}", {"loss": 1.0})

    first = client.fine_tuning.jobs.checkpoints.list(job.id, limit=2)
    assert [c.step_number for c in first.data] == [30, 20] and first.has_more
    rest = client.fine_tuning.jobs.checkpoints.list(job.id, after=first.data[-1].id)
    assert [c.step_number for c in rest.data] == [10] and not rest.has_more
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=1)] == [
        30,
        20,
        10,
    ]
    with pytest.raises(openai.NotFoundError) as caught:
        client.fine_tuning.jobs.checkpoints.list(job.id, after="ftckpt-missing")
    assert caught.value.body["param"] == "after"


def test_parallel_uploads_cannot_pass_a_keys_quota(
    tmp_path: Path, base_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMOPS_FINETUNE_MAX_FILES_PER_KEY", "3")
    monkeypatch.setenv("LLMOPS_FINETUNE_MAX_FILE_BYTES_PER_KEY", str(10 * len(ROW)))
    with running_gateway(tmp_path / "home", base_model_dir) as running:
        many, large = client_of(running, "many"), client_of(running, "large")
        uploads = 10
        start = threading.Barrier(2 * uploads)
        outcomes: dict[str, list[int]] = {"many": [], "large": []}

        def send(name: str, client: openai.OpenAI, data: bytes) -> None:
            start.wait()
            try:
                upload(client, data=data)
                outcomes[name].append(200)
            except openai.APIStatusError as err:
                outcomes[name].append(err.status_code)

        threads = [
            threading.Thread(target=send, args=args)
            for args in [("many", many, ROW), ("large", large, ROW * 4)] * uploads
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        # Three files for one key; two of 4 rows in a quota of 10 rows' bytes for the other.
        assert sorted(outcomes["many"]) == [200] * 3 + [429] * 7
        assert outcomes["large"].count(200) == 2
        assert set(outcomes["large"]) <= {200, 413, 429}
        assert len(many.files.list().data) == 3 and len(large.files.list().data) == 2
        assert sum(f.bytes for f in large.files.list()) == 8 * len(ROW)
