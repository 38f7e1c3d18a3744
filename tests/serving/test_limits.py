"""No single request holds the gateway for everyone: every field bounded, each key's requests
in flight capped, each model's waiting queue capped, idle models unloaded, and stop strings
matched at a cost per token that does not grow with the answer."""

import asyncio
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from serving import cli as serving_cli
from serving.engine import SamplingParams, ServedModel
from serving.errors import ServingError
from serving.local import sequence
from serving.local.engine import LocalEngine, LocalEngineConfig
from tests.serving.conftest import RunningGateway, running_gateway

CHAT = [{"role": "user", "content": "What is 1 + 2?"}]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": "x" * 257}, "stop"),
        ({"stop": [""]}, "stop.list[constrained-str].0"),
        ({"n": 17}, "n"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"max_tokens": 10**12}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"seed": 2**70}, "seed"),
        ({"model": "m" * 300}, "model"),
        ({"temperature": 1e308}, "temperature"),
    ],
)
def test_every_chat_field_is_bounded(
    gateway_server: RunningGateway, fields: dict, param: str
) -> None:
    body = {"model": "demo", "messages": CHAT, "max_tokens": 2, **fields}
    reply = httpx.post(f"{gateway_server.base_url}/v1/chat/completions", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"].startswith(param.split(".")[0])


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"logprobs": 21}, "logprobs"), ({"max_tokens": 2**63}, "max_tokens"), ({"n": 0}, "n")],
)
def test_every_completion_field_is_bounded(
    gateway_server: RunningGateway, fields: dict, param: str
) -> None:
    body = {"model": "demo", "prompt": "x", **fields}
    reply = httpx.post(f"{gateway_server.base_url}/v1/completions", json=body)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text


def test_key_rates_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(serving_cli.cli, ["keys", "create", "x", "--rpm", "3" + "0" * 22])
    assert result.exit_code == 2 and "--rpm" in result.output


def test_each_key_has_a_cap_on_requests_in_flight(tmp_path: Path, random_model_dir: Path) -> None:
    limits = {"max_concurrent_per_key": 2, "max_tokens": 64}
    with running_gateway(tmp_path / "home", random_model_dir, limits=limits) as gw:
        _, secret = gw.gateway.keys.create("busy")
        _, other = gw.gateway.keys.create("other")
        assert asyncio.run(_one(gw.base_url, other)).status_code == 200  # loads the model
        runner = gw.gateway.local.loaded("demo:1")
        assert runner is not None

        async def call(client: httpx.AsyncClient, key: str) -> httpx.Response:
            body = {"model": "demo", "messages": CHAT, "max_tokens": 64, "temperature": 0}
            return await client.post(
                "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=gw.base_url, timeout=120) as client:
                # The engine holds the first two while all six arrive: none finishes early.
                with runner.paused():
                    calls = [asyncio.create_task(call(client, secret)) for _ in range(6)]
                    while sum(c.done() for c in calls) < 4 or runner.num_waiting < 2:
                        await asyncio.sleep(0.01)
                return await asyncio.gather(*calls)

        replies = asyncio.run(main())
        refused = [r for r in replies if r.status_code == 429]
        assert sum(r.status_code == 200 for r in replies) == 2 and len(refused) == 4
        assert refused[0].json()["error"]["code"] == "too_many_concurrent_requests"
        assert refused[0].headers["retry-after"] == "1"
        # Finished requests leave the count: the key (and another key) can go on.
        assert asyncio.run(_one(gw.base_url, secret)).status_code == 200
        assert asyncio.run(_one(gw.base_url, other)).status_code == 200


async def _one(base_url: str, key: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        body = {"model": "demo", "messages": CHAT, "max_tokens": 2}
        return await client.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )


def test_a_models_waiting_queue_is_capped(random_model_dir: Path) -> None:
    served = ServedModel("random:1", random_model_dir)
    params = SamplingParams(max_tokens=40, temperature=0.0)
    long = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)

    async def generate(engine: LocalEngine, params: SamplingParams) -> str:
        async for chunk in engine.generate("r", served, [1, 2, 3], params):
            if chunk.finish_reason:
                return chunk.finish_reason
        return "none"

    async def main() -> list:
        engine = LocalEngine(LocalEngineConfig(max_num_seqs=1, max_waiting=2))
        await engine.start()
        try:
            runner = await engine.runner(served)
            first = asyncio.create_task(generate(engine, long))
            while runner.num_running < 1:
                await asyncio.sleep(0.001)
            # The one slot is taken and stays so while seven more arrive.
            with runner.paused():
                more = [asyncio.create_task(generate(engine, params)) for _ in range(7)]
                while sum(m.done() for m in more) + runner.num_waiting < len(more):
                    await asyncio.sleep(0.01)
            return await asyncio.gather(first, *more, return_exceptions=True)
        finally:
            await engine.aclose()

    results = asyncio.run(main())
    refused = [r for r in results if isinstance(r, ServingError)]
    assert all(r.http_status == 503 and r.headers["Retry-After"] for r in refused)
    # max_num_seqs running and max_waiting waiting are served; the other five are refused.
    assert results[0] == "length" and len(refused) == 8 - 1 - 2
    assert sum(r in ("stop", "length") for r in results) == 1 + 2


def test_the_least_recently_used_idle_model_is_unloaded(
    random_model_dir: Path, tmp_path: Path
) -> None:
    first, second = ServedModel("a:1", random_model_dir), ServedModel("b:1", random_model_dir)
    params = SamplingParams(max_tokens=2, temperature=0.0)

    async def main() -> None:
        engine = LocalEngine(LocalEngineConfig(max_loaded_models=1))
        await engine.start()
        try:
            for model in (first, second, first):
                chunks = [c async for c in engine.generate("r", model, [1, 2], params)]
                assert chunks[-1].finish_reason
                assert list(engine._runners) == [model.key]
        finally:
            await engine.aclose()

    asyncio.run(main())


def test_stop_strings_are_searched_only_in_new_text(monkeypatch: pytest.MonkeyPatch) -> None:
    searched: list[int] = []
    real = sequence.find_stop

    def counting(text: str, stops: tuple[str, ...], start: int) -> int:
        searched.append(len(text) - start)
        return real(text, stops, start)

    monkeypatch.setattr(sequence, "find_stop", counting)
    seq = sequence.Sequence(
        "r",
        [1],
        SamplingParams(max_tokens=10_000, stop=("<never>", "STOP")),
        None,
        loop=None,  # type: ignore[arg-type]
        queue=None,  # type: ignore[arg-type]
        stream=False,
    )
    for _ in range(3000):
        seq.text += "word "
        assert not seq._cut_at_stop()
    assert sum(searched) < 3000 * (len("word ") + len("<never>"))
    seq.text += "and STOP here"
    assert seq._cut_at_stop() and seq.text.endswith("word and ")
