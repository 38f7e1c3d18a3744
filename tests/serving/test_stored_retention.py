"""What the gateway keeps of batches and stored Responses beyond the traffic log follows its
rules: a batch's lines hold requests and results only while it runs (afterwards its files
are the only copy the API returns), they go when its output file is deleted or its retention
ends; a key that opts out of the traffic log stores a response only when it asks, and stored
responses past the retention are neither found nor kept. On a real gateway, through the
`openai` SDK."""

import dataclasses
import io
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import select, update

from core.database import reading, utc_now
from serving.tables import batch_lines, batches, responses
from tests.serving.conftest import LIMITS, RunningGateway, running_gateway

BATCHES = {"poll_s": 0.1, "lease_s": 5.0, "max_in_flight": 4, "retry_for_s": 1.0}
SECRET = "my card is 4111 1111 1111 1111"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, random_model_dir: Path):
    home = tmp_path_factory.mktemp("retention")
    with running_gateway(home, random_model_dir, limits=LIMITS, batches=BATCHES) as running:
        yield running


def _client(gw: RunningGateway, *, log_traffic: bool) -> openai.OpenAI:
    _, secret = gw.gateway.keys.create("app" if log_traffic else "quiet", log_traffic=log_traffic)
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=secret, max_retries=0)


def _batch(client: openai.OpenAI, count: int) -> Any:
    body = {"model": "demo", "messages": [{"role": "user", "content": SECRET}], "max_tokens": 4}
    line = {"method": "POST", "url": "/v1/chat/completions", "body": body}
    text = "".join(json.dumps({**line, "custom_id": f"r{i}"}) + "\n" for i in range(count))
    upload = client.files.create(file=("in.jsonl", io.BytesIO(text.encode())), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 120
    while (batch := client.batches.retrieve(batch.id)).status != "completed":
        assert time.monotonic() < deadline, f"batch stuck at {batch.status}"
        time.sleep(0.1)
    return batch


def _lines(gw: RunningGateway, batch_id: str) -> list[Any]:
    return gw.gateway.batch_runner.store.lines(batch_id)


def test_a_batch_keeps_no_text_once_it_ends_and_its_lines_go_with_its_output_file(
    gw: RunningGateway,
) -> None:
    client = _client(gw, log_traffic=False)
    batch = _batch(client, 3)
    output = client.files.content(batch.output_file_id).text.splitlines()
    assert sorted(json.loads(x)["custom_id"] for x in output) == ["r0", "r1", "r2"]

    lines = _lines(gw, batch.id)
    assert [(x.status, x.body, x.result) for x in lines] == [("completed", {}, None)] * 3
    assert gw.gateway.batch_runner.sweep() == 0  # its output file still holds them

    client.files.delete(batch.output_file_id)
    assert gw.gateway.batch_runner.sweep() == 3
    assert _lines(gw, batch.id) == []
    assert client.batches.retrieve(batch.id).request_counts.completed == 3


def test_batch_lines_past_the_retention_are_deleted(gw: RunningGateway) -> None:
    client = _client(gw, log_traffic=True)
    old, recent = _batch(client, 2), _batch(client, 2)
    runner = gw.gateway.batch_runner
    long_ago = utc_now() - runner.retention.max_age - timedelta(minutes=1)
    with runner.store.engine.begin() as conn:
        conn.execute(update(batches).where(batches.c.id == old.id).values(created_at=long_ago))
    assert runner.sweep() == 2
    assert _lines(gw, old.id) == [] and len(_lines(gw, recent.id)) == 2
    assert client.files.content(old.output_file_id).text  # the files are the owner's to delete
    with reading(runner.store.engine) as conn:
        left = conn.execute(select(batch_lines.c.batch_id).distinct()).scalars().all()
    assert old.id not in left


def test_a_key_without_traffic_log_stores_a_response_only_when_asked(gw: RunningGateway) -> None:
    client = _client(gw, log_traffic=False)
    service = gw.gateway.responses
    engine = service.store.engine

    def stored() -> list[str]:
        with reading(engine) as conn:
            return conn.execute(select(responses.c.id)).scalars().all()

    before = stored()
    unstored = client.responses.create(model="demo", input=SECRET, store=False, max_output_tokens=4)
    assert stored() == before
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)

    kept = client.responses.create(model="demo", input=SECRET, max_output_tokens=4)
    assert client.responses.retrieve(kept.id).id == kept.id
    with reading(engine) as conn:
        row = conn.execute(select(responses).where(responses.c.id == kept.id)).one()
    assert row.conversation[0]["content"] == SECRET  # what previous_response_id continues

    long_ago = utc_now() - service.retention.max_age - timedelta(minutes=1)
    with engine.begin() as conn:
        conn.execute(update(responses).where(responses.c.id == kept.id).values(created_at=long_ago))
    with pytest.raises(openai.NotFoundError) as gone:
        client.responses.retrieve(kept.id)
    assert gone.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(
            model="demo", input="and then?", previous_response_id=kept.id, max_output_tokens=4
        )

    service.retention = dataclasses.replace(service.retention, every_s=0.0)
    service._next_prune = 0.0
    newer = client.responses.create(model="demo", input="hello", max_output_tokens=4)
    assert kept.id not in stored() and newer.id in stored()
