"""Model strings resolve through the registry; alias moves need no restart."""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from finetune.demo.random_model import build_random_model
from tests.serving.conftest import LIMITS, RunningGateway, running_gateway


@pytest.fixture
def gateway(tmp_path: Path, random_model_dir: Path) -> Iterator[RunningGateway]:
    limits = {**LIMITS, "max_tokens": 240}
    home = tmp_path / "home"
    with running_gateway(home, random_model_dir, resolve_ttl_s=0.0, limits=limits) as gw:
        yield gw


def _reply(client: openai.OpenAI, model: str) -> str:
    r = client.completions.create(model=model, prompt="Sort: dcba", max_tokens=12, temperature=0)
    return r.choices[0].text


def test_alias_move_reaches_new_requests_and_spares_those_in_flight(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    registry = gateway.registry
    v2 = registry.register("demo", build_random_model(tmp_path / "v2", seed=1))
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0)
    old, new = _reply(client, "demo:1"), _reply(client, "demo:2")
    assert old != new
    assert _reply(client, "demo") == old

    async def in_flight_then_move() -> str:
        async with openai.AsyncOpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused") as ac:
            stream = await ac.completions.create(
                model="demo", prompt="Sort: dcba", max_tokens=40, temperature=0, stream=True
            )
            parts = []
            async for chunk in stream:
                if not parts:
                    await asyncio.to_thread(registry.promote, v2.ref, "production")
                parts.append(chunk.choices[0].text)
            return "".join(parts)

    streamed = asyncio.run(in_flight_then_move())
    assert streamed.startswith(old)  # finished on the version it started with
    assert _reply(client, "demo") == new  # no restart needed
    cards = {m.id: m for m in client.models.list().data}
    assert cards["demo"].root == "demo:2"


def test_unknown_versions_and_aliases_are_404(gateway: RunningGateway) -> None:
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0)
    for model in ("demo:7", "demo@canary", "../etc", "nothing"):
        with pytest.raises(openai.NotFoundError) as err:
            client.completions.create(model=model, prompt="x", max_tokens=1)
        assert err.value.body["code"] == "model_not_found", model


def test_client_disconnect_cancels_generation(gateway: RunningGateway) -> None:
    max_tokens = 200
    body = {"model": "demo", "prompt": "Sort: dcba", "max_tokens": max_tokens, "temperature": 0}
    full = httpx.post(f"{gateway.base_url}/v1/completions", json=body).json()
    assert full["usage"]["completion_tokens"] == max_tokens  # left alone, it runs to the limit
    served = gateway.gateway.generator.resolver.resolve("demo").served
    runner = asyncio.run(gateway.gateway.local.runner(served))
    steps_before = runner.decode_steps
    with httpx.stream(
        "POST", f"{gateway.base_url}/v1/completions", json={**body, "stream": True}
    ) as response:
        next(response.iter_lines())
    deadline = time.monotonic() + 5
    while runner.num_running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runner.num_running == 0
    assert runner.decode_steps - steps_before < max_tokens // 2
