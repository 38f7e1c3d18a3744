"""The gateway driven by the official `openai` SDK on the local engine."""

import asyncio
import contextlib
import json

import httpx
import openai
import pytest

from serving.errors import EngineError
from tests.serving.conftest import RunningGateway

CHAT = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture
def client(gateway_server: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway_server.base_url}/v1", api_key="unused", max_retries=0)


def test_models_list_names_and_aliases(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list().data}
    assert {"demo", "demo@production"} <= ids


def test_chat_sync_has_usage(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="demo", messages=CHAT, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.model == "demo"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_greedy_streaming_equals_non_streaming(client: openai.OpenAI) -> None:
    kwargs = {"model": "demo", "messages": CHAT, "max_completion_tokens": 20, "temperature": 0}
    full = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage


def test_stream_ends_with_done(gateway_server: RunningGateway) -> None:
    body = {"model": "demo", "messages": CHAT, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{gateway_server.base_url}/v1/chat/completions", json=body) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_completions_n_seed_logprobs_echo(client: openai.OpenAI) -> None:
    kwargs = {"model": "demo@production", "prompt": "Reverse: abc", "max_tokens": 6}
    a = client.completions.create(**kwargs, n=3, temperature=1.0, seed=7, logprobs=2)
    b = client.completions.create(**kwargs, n=3, temperature=1.0, seed=7, logprobs=2)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.index for c in a.choices}) == 3
    lp = a.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) > 0
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert a.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in a.choices)
    echoed = client.completions.create(**kwargs, echo=True, temperature=0)
    assert echoed.choices[0].text.startswith("Reverse: abc")


def test_stop_sequences_cut_the_text(client: openai.OpenAI) -> None:
    kwargs = {"model": "demo", "prompt": "Sort: dcba", "max_tokens": 30, "temperature": 0}
    full = client.completions.create(**kwargs).choices[0].text
    assert len(full) > 4
    stop = full[2:4]
    cut = client.completions.create(**kwargs, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(**kwargs, stop=stop, stream=True)
    )
    assert streamed == cut.choices[0].text


def test_chat_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="demo", messages=CHAT, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)


def test_async_client_concurrent(gateway_server: RunningGateway) -> None:
    async def run() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=f"{gateway_server.base_url}/v1", api_key="unused"
        ) as aclient:
            calls = [
                aclient.chat.completions.create(
                    model="demo",
                    temperature=0,
                    max_tokens=8,
                    messages=[{"role": "user", "content": f"Uppercase: word{i}"}],
                )
                for i in range(12)
            ]
            return [r.choices[0].message.content for r in await asyncio.gather(*calls)]

    concurrent = asyncio.run(run())
    client = openai.OpenAI(base_url=f"{gateway_server.base_url}/v1", api_key="unused")
    one = client.chat.completions.create(
        model="demo",
        temperature=0,
        max_tokens=8,
        messages=[{"role": "user", "content": "Uppercase: word5"}],
    )
    assert concurrent[5] == one.choices[0].message.content


def _envelope(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["x-request-id"]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error


def test_error_cases(client: openai.OpenAI, gateway_server: RunningGateway) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=CHAT)
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError, match="allows at most 64"):
        client.chat.completions.create(model="demo", messages=CHAT, max_tokens=65)
    with pytest.raises(openai.BadRequestError, match=r"prompt is .* tokens long"):
        client.completions.create(model="demo", prompt="abc " * 300, max_tokens=1)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="demo", messages=[])
    assert err.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="demo", messages=CHAT, temperature=5)
    url = f"{gateway_server.base_url}/v1/chat/completions"
    error = _envelope(
        httpx.post(url, content=b"{bad", headers={"content-type": "application/json"}),
        400,
        "invalid_request",
    )
    assert "not valid JSON" in error["message"]
    _envelope(httpx.post(url, content=b"x" * 200_000), 413, "request_too_large")
    _envelope(httpx.get(f"{gateway_server.base_url}/v1/nothing-here"), 404, "not_found")


def test_every_response_has_a_request_id(gateway_server: RunningGateway) -> None:
    r = httpx.get(f"{gateway_server.base_url}/health", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert httpx.get(f"{gateway_server.base_url}/ready").json() == {"status": "ready"}


def test_metrics(client: openai.OpenAI, gateway_server: RunningGateway) -> None:
    client.chat.completions.create(model="demo", messages=CHAT, max_tokens=3)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=CHAT)
    text = httpx.get(f"{gateway_server.base_url}/metrics").text
    for name in (
        'llmops_requests_total{backend="local",endpoint="chat",model="demo:1"}',
        'llmops_request_errors_total{code="404",model="invalid"}',
        "llmops_time_to_first_token_seconds_bucket",
        "llmops_e2e_request_latency_seconds_count",
        "llmops_prompt_tokens_total",
        "llmops_completion_tokens_total",
        'llmops_queue_depth{backend="local"}',
    ):
        assert name in text, name


def test_a_stream_that_fails_midway_ends_with_an_error_the_sdk_raises(
    gateway_server: RunningGateway, client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine answers one token, then goes away (as a vLLM server that dies mid-answer).
    (local,) = [e for e in gateway_server.gateway.engines if e.name == "local"]
    answer = local.generate

    async def dies_after_one_token(*args, **kwargs):
        async with contextlib.aclosing(answer(*args, **kwargs)) as chunks:
            async for chunk in chunks:
                yield chunk
                raise EngineError("the server died mid-answer")

    monkeypatch.setattr(local, "generate", dies_after_one_token)
    said = "the model backend is unavailable: the server died mid-answer"
    chat = client.chat.completions.create(model="demo", messages=CHAT, max_tokens=8, stream=True)
    with pytest.raises(openai.APIError, match=said):
        list(chat)
    text = client.completions.create(model="demo", prompt="Hi", max_tokens=8, stream=True)
    with pytest.raises(openai.APIError, match=said):
        list(text)
    events = list(client.responses.create(model="demo", input="Hi", stream=True))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    failed = events[-1]
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error.code == "backend_error" and failed.response.error.message == said
    body = {"model": "demo", "messages": CHAT, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{gateway_server.base_url}/v1/chat/completions", json=body) as r:
        last = [line for line in r.iter_lines() if line][-1]
    assert json.loads(last.removeprefix("data: "))["error"]["code"] == "backend_error"
