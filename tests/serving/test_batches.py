"""The Batch API with the official SDK: a batch of 100 mixed requests to its output and
error files, the other endpoints, a cancel mid-way, a gateway restart mid-batch, bad lines,
and another key's view."""

import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import update

from core.database import utc_now
from finetune.demo.embedding import register_embedding_model
from serving.batches.runner import _STATUS_EVERY_S
from serving.tables import batches
from tests.serving.conftest import LIMITS, RunningGateway, running_gateway

BATCHES = {"poll_s": 0.1, "lease_s": 5.0, "max_in_flight": 4, "retry_for_s": 1.0}


def _gateway(home: Path, model_dir: Path | None) -> Any:
    return running_gateway(home, model_dir, limits=LIMITS, batches=BATCHES, resolve_ttl_s=0.0)


@pytest.fixture(scope="module")
def batch_gateway(
    tmp_path_factory: pytest.TempPathFactory, random_model_dir: Path
) -> Iterator[RunningGateway]:
    with _gateway(tmp_path_factory.mktemp("batches"), random_model_dir) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(batch_gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{batch_gateway.base_url}/v1", api_key="unused", max_retries=0)


def _upload(client: openai.OpenAI, rows: list[Any]) -> str:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    return client.files.create(
        file=("requests.jsonl", io.BytesIO(text.encode())), purpose="batch"
    ).id


def _line(custom_id: str, body: dict[str, Any], url: str = "/v1/chat/completions") -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def _chat(custom_id: str, content: str, **extra: Any) -> dict:
    body = {"model": "demo", "messages": [{"role": "user", "content": content}], **extra}
    return _line(custom_id, body)


def _wait(client: openai.OpenAI, batch_id: str, until: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if until(batch):
            return batch
        assert time.monotonic() < deadline, f"batch stuck at {batch.status}"
        time.sleep(0.1)


def _results(client: openai.OpenAI, file_id: str | None) -> dict[str, dict]:
    if file_id is None:
        return {}
    rows = [json.loads(line) for line in client.files.content(file_id).text.splitlines()]
    return {row["custom_id"]: row for row in rows}


def test_a_batch_of_100_mixed_requests_completes_with_its_files(client: openai.OpenAI) -> None:
    rows = []
    for i in range(100):
        kind = i % 5
        if kind == 0:
            rows.append(_chat(f"r{i}", f"add {i} and 1", max_tokens=4, temperature=0))
        elif kind == 1:
            rows.append(_chat(f"r{i}", "sort b a", max_completion_tokens=3, n=2, seed=i))
        elif kind == 2:
            rows.append(_chat(f"r{i}", "upper abc", max_tokens=2, logprobs=True, top_logprobs=2))
        elif kind == 3:
            rows.append(_chat(f"r{i}", "reverse xyz", max_tokens=5, stop=["\n"]))
        elif i % 10 == 4:
            rows.append(_chat(f"r{i}", "hi", max_tokens=999))  # above the gateway's cap: 400
        else:
            body = {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}
            rows.append(_line(f"r{i}", body))  # 404
    batch = client.batches.create(
        input_file_id=_upload(client, rows),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"purpose": "nightly"},
    )
    assert batch.status == "validating" and batch.request_counts.total == 100
    assert batch.metadata == {"purpose": "nightly"} and batch.model == "demo"

    done = _wait(client, batch.id, lambda b: b.status == "completed")
    assert done.request_counts.model_dump() == {"completed": 80, "failed": 20, "total": 100}
    assert done.in_progress_at <= done.finalizing_at <= done.completed_at
    output, errors = _results(client, done.output_file_id), _results(client, done.error_file_id)
    assert (len(output), len(errors)) == (80, 20) and not set(output) & set(errors)
    for i in range(100):
        row = output.get(f"r{i}") or errors[f"r{i}"]
        response = row["response"]
        assert row["id"].startswith("batch_req_") and row["error"] is None
        assert response["request_id"] == f"{batch.id}-{i + 1}"
        if i % 5 == 4:
            status, code = (400, "invalid_request") if i % 10 == 4 else (404, "model_not_found")
            assert response["status_code"] == status
            assert response["body"]["error"]["code"] == code
            continue
        completion = openai.types.chat.ChatCompletion.model_validate(response["body"])
        assert response["status_code"] == 200
        assert len(completion.choices) == (2 if i % 5 == 1 else 1)
        if i % 5 == 2:
            assert len(completion.choices[0].logprobs.content[0].top_logprobs) == 2
    assert done.usage.input_tokens > 0 and done.usage.output_tokens > 0
    listed = [b.id for b in client.batches.list(limit=100)]
    assert batch.id in listed


def test_completions_and_embeddings_batches(
    client: openai.OpenAI, batch_gateway: RunningGateway
) -> None:
    register_embedding_model(batch_gateway.registry)
    completions = [
        _line(f"c{i}", {"model": "demo", "prompt": f"text {i}", "max_tokens": 3}, "/v1/completions")
        for i in range(5)
    ]
    texts = ["a cat on a mat", "a kitten on a rug", "interest rates rose"]
    embeddings = [
        _line(f"e{i}", {"model": "minilm", "input": t}, "/v1/embeddings")
        for i, t in enumerate(texts)
    ]
    made = [
        client.batches.create(
            input_file_id=_upload(client, rows), endpoint=endpoint, completion_window="24h"
        )
        for rows, endpoint in ((completions, "/v1/completions"), (embeddings, "/v1/embeddings"))
    ]
    for batch in made:
        done = _wait(client, batch.id, lambda b: b.status == "completed")
        assert done.request_counts.failed == 0 and done.error_file_id is None
    with pytest.raises(openai.ConflictError, match="only a validating or in-progress batch"):
        client.batches.cancel(made[0].id)
    output = _results(client, client.batches.retrieve(made[0].id).output_file_id)
    assert {r["response"]["body"]["object"] for r in output.values()} == {"text_completion"}
    vectors = {
        k: r["response"]["body"]["data"][0]["embedding"]
        for k, r in _results(client, client.batches.retrieve(made[1].id).output_file_id).items()
    }
    live = client.embeddings.create(model="minilm", input=texts[0]).data[0].embedding
    assert vectors["e0"] == pytest.approx(live, abs=1e-5)


@contextmanager
def _engine_held(gw: RunningGateway, client: openai.OpenAI, batch_id: str) -> Iterator[int]:
    """Hold the engine while the batch's `max_in_flight` lines are in it, and give the count
    of its completed lines, which cannot change until the block ends. Held for longer than
    the runner's interval between status checks, so that the first line to finish afterwards
    makes it look at the batch's status before it starts another line."""
    runner = gw.gateway.local.loaded("demo:1")
    assert runner is not None
    with runner.paused():
        deadline = time.monotonic() + 60
        while runner.num_running + runner.num_waiting < BATCHES["max_in_flight"]:
            assert time.monotonic() < deadline, "the batch's lines did not reach the engine"
            time.sleep(0.01)
        yield client.batches.retrieve(batch_id).request_counts.completed
        time.sleep(2 * _STATUS_EVERY_S)


def test_a_batch_cancelled_mid_way_keeps_what_finished(
    client: openai.OpenAI, batch_gateway: RunningGateway
) -> None:
    rows = [_chat(f"r{i}", f"count to {i}", max_tokens=48, temperature=0) for i in range(300)]
    batch = client.batches.create(
        input_file_id=_upload(client, rows),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    _wait(client, batch.id, lambda b: b.request_counts.completed >= 8)
    with _engine_held(batch_gateway, client, batch.id) as finished:
        cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = _wait(client, batch.id, lambda b: b.status == "cancelled")
    # What finished before the cancel is kept; of the lines then running, at most all
    # `max_in_flight` finish before the runner sees the cancel, and no other line starts.
    completed = done.request_counts.completed
    assert finished <= completed <= finished + BATCHES["max_in_flight"] and done.cancelled_at
    assert done.request_counts.failed == 0
    output = _results(client, done.output_file_id)
    assert len(output) == completed
    time.sleep(0.5)  # nothing runs after the cancel
    assert client.batches.retrieve(batch.id).request_counts == done.request_counts
    assert client.batches.cancel(batch.id).status == "cancelled"  # again: as it is


def test_a_batch_out_of_its_window_expires_with_what_finished(
    client: openai.OpenAI, batch_gateway: RunningGateway
) -> None:
    rows = [_chat(f"r{i}", f"word {i}", max_tokens=48, temperature=0) for i in range(300)]
    batch = client.batches.create(
        input_file_id=_upload(client, rows),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    assert batch.expires_at == batch.created_at + 24 * 3600
    _wait(client, batch.id, lambda b: b.request_counts.completed >= 4)
    store = batch_gateway.gateway.batches.store
    with _engine_held(batch_gateway, client, batch.id) as finished, store.engine.begin() as conn:
        # The window closes now, as 24 hours later.
        conn.execute(update(batches).where(batches.c.id == batch.id).values(expires_at=utc_now()))
    done = _wait(client, batch.id, lambda b: b.status == "expired")
    completed = done.request_counts.completed
    assert finished <= completed <= finished + BATCHES["max_in_flight"] and done.expired_at
    assert len(_results(client, done.output_file_id)) == completed


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "input file line 2: not JSON"),
        ('["a list"]', "input file line 2: not a JSON object"),
        (json.dumps({"url": "/v1/chat/completions", "body": {}}), "line 2: custom_id must be"),
        (json.dumps(_chat("a", "x")), "line 2: custom_id 'a' is used by an earlier line"),
        (
            json.dumps(_line("b", {"model": "demo", "prompt": "x"}, "/v1/completions")),
            "line 2: url",
        ),
        (json.dumps({**_chat("b", "x"), "body": "text"}), "line 2: body must be a JSON object"),
        (json.dumps(_line("b", {"model": "demo"})), "line 2: body.messages: Field required"),
    ],
)
def test_a_bad_line_fails_the_batch_creation(
    client: openai.OpenAI, line: str, message: str
) -> None:
    file_id = _upload(client, [_chat("a", "fine"), line])
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert message in err.value.body["message"]
    assert err.value.body["code"] == "invalid_batch_line"


def test_a_fine_tuning_file_is_not_a_batch_file(client: openai.OpenAI) -> None:
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    file_id = client.files.create(
        file=("t.jsonl", io.BytesIO((json.dumps(chat) + "\n").encode())), purpose="fine-tune"
    ).id
    with pytest.raises(openai.BadRequestError, match="purpose 'batch'"):
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )


def test_a_batch_survives_a_gateway_restart(tmp_path: Path, random_model_dir: Path) -> None:
    rows = [_chat(f"r{i}", f"say {i}", max_tokens=8, temperature=0) for i in range(60)]
    with _gateway(tmp_path, random_model_dir) as first:
        client = openai.OpenAI(base_url=f"{first.base_url}/v1", api_key="x", max_retries=0)
        batch = client.batches.create(
            input_file_id=_upload(client, rows),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        _wait(client, batch.id, lambda b: b.request_counts.completed >= 5)
    store = first.gateway.batches.store
    before = {line.custom_id: line.result["id"] for line in store.lines(batch.id, "completed")}
    assert 5 <= len(before) < 60 and store.get(batch.id).status == "in_progress"

    with _gateway(tmp_path, None) as second:
        client = openai.OpenAI(base_url=f"{second.base_url}/v1", api_key="x", max_retries=0)
        done = _wait(client, batch.id, lambda b: b.status == "completed")
        assert done.request_counts.completed == 60
        output = _results(client, done.output_file_id)
    assert sorted(output) == sorted(f"r{i}" for i in range(60))
    # the lines finished before the restart were not run again
    assert {k: output[k]["id"] for k in before} == before


def test_another_key_sees_no_batch_and_no_file(tmp_path: Path, random_model_dir: Path) -> None:
    with _gateway(tmp_path, random_model_dir) as gw:
        alice_id, alice_key = gw.gateway.keys.create("alice")
        _, bob_key = gw.gateway.keys.create("bob")
        alice, bob = (
            openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=k, max_retries=0)
            for k in (alice_key, bob_key)
        )
        file_id = _upload(alice, [_chat("a", "hi", max_tokens=2)])
        with pytest.raises(openai.NotFoundError):  # bob cannot batch alice's file
            bob.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        batch = alice.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = _wait(alice, batch.id, lambda b: b.status == "completed")
        assert json.loads(alice.files.content(done.output_file_id).text)["custom_id"] == "a"
        for call in (
            lambda: bob.batches.retrieve(batch.id),
            lambda: bob.batches.cancel(batch.id),
            lambda: bob.files.content(done.output_file_id),
            lambda: bob.files.content(file_id),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        assert [b.id for b in bob.batches.list()] == []
        assert [b.id for b in alice.batches.list()] == [batch.id]
        # the line ran as alice's key: her traffic, her request id
        records = gw.gateway.traffic.find(f"{batch.id}-1")
        assert [r.key_id for r in records] == [alice_id.id]

        # the key's limits apply to its lines: one that never fits its tokens per minute is
        # tried again for retry_for_s, then fails with the 429
        _, tight_key = gw.gateway.keys.create("tight", tpm=5)
        tight = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=tight_key, max_retries=0)
        limited = tight.batches.create(
            input_file_id=_upload(tight, [_chat("t", "hello there", max_tokens=8)]),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        done = _wait(tight, limited.id, lambda b: b.status == "completed")
        assert done.request_counts.failed == 1 and done.output_file_id is None
        response = _results(tight, done.error_file_id)["t"]["response"]
        assert response["status_code"] == 429
        assert response["body"]["error"]["code"] == "rate_limit_exceeded"
