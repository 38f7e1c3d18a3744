"""Explanations take their share of the gateway and no more (issue #24, item 6): each is one
of its key's requests in flight, keys without a token rate get the default one, and their
forward passes take turns with the engine's steps."""

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from serving.config import RateLimitConfig
from serving.engine import SamplingParams, ServedModel
from serving.local.engine import LocalEngine
from serving.local.lending import LentModel
from tests.serving.conftest import LIMITS, running_gateway

QUESTION = [{"role": "user", "content": "What colour is the zorblax today?"}]
# one perturbation per forward pass, 500 x 30 of them: minutes, were it not stopped
SLOW = {"max_batch_tokens": 48, "max_tokens_per_explanation": 10**8}
LONG = {
    "model": "demo",
    "messages": [{"role": "user", "content": "What colour is the zorblax " * 5}],
    "method": "shapley",
    "n_samples": 500,
    "granularity": "tokens",
    "target": "red",
}
SHORT = {"model": "demo", "messages": QUESTION, "method": "feature_ablation", "target": "red"}
CHAT = {"model": "demo", "messages": QUESTION, "max_tokens": 8}


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _code(reply: httpx.Response) -> str:
    return reply.json()["error"]["code"]


def test_explanations_do_not_starve_inference(tmp_path: Path, random_model_dir: Path) -> None:
    limits = {**LIMITS, "max_concurrent_per_key": 2}
    with running_gateway(tmp_path, random_model_dir, limits=limits, explanations=SLOW) as gw:
        service = gw.gateway.explanations
        _, explainer = gw.gateway.keys.create("explainer", tpm=10**9)
        _, chatter = gw.gateway.keys.create("chatter")

        async def main() -> tuple[httpx.Response, httpx.Response, httpx.Response, int]:
            async with httpx.AsyncClient(base_url=gw.base_url, timeout=60) as client:
                running = [
                    asyncio.create_task(
                        client.post("/v1/explanations", json=LONG, headers=_auth(explainer))
                    )
                    for _ in range(2)
                ]
                deadline = time.monotonic() + 30
                while service.running < 2:
                    assert not any(t.done() for t in running), [t.result() for t in running]
                    assert time.monotonic() < deadline, "the explanations did not start"
                    await asyncio.sleep(0.02)
                third = await client.post(
                    "/v1/explanations", json=SHORT, headers=_auth(explainer), timeout=10
                )
                own_chat = await client.post(
                    "/v1/chat/completions", json=CHAT, headers=_auth(explainer), timeout=10
                )
                other_chat = await client.post(
                    "/v1/chat/completions", json=CHAT, headers=_auth(chatter), timeout=30
                )
                still_running = service.running
                for task in running:  # the client goes away: they stop at their next pass
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
            return third, own_chat, other_chat, still_running

        third, own_chat, other_chat, still_running = asyncio.run(main())
        # the key's two explanations are its two requests in flight: a third request of any
        # kind is refused as a third chat would be
        assert third.status_code == 429, third.text
        assert _code(third) == "too_many_concurrent_requests"
        assert "2 requests in flight" in third.json()["error"]["message"]
        assert third.headers["retry-after"] == "1"
        assert own_chat.status_code == 429 and _code(own_chat) == "too_many_concurrent_requests"
        # another key's chat is answered while both explanations go on
        assert other_chat.status_code == 200, other_chat.text
        assert still_running == 2
        # stopped explanations leave the count: the key explains again
        deadline = time.monotonic() + 10
        while True:
            reply = httpx.post(
                f"{gw.base_url}/v1/explanations", json=SHORT, headers=_auth(explainer), timeout=60
            )
            if reply.status_code != 429 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert reply.status_code == 200, reply.text


def test_a_key_without_a_token_rate_gets_the_default(
    tmp_path: Path, random_model_dir: Path
) -> None:
    rates = {"default_tpm": 300}
    with running_gateway(tmp_path, random_model_dir, limits=LIMITS, rate_limits=rates) as gw:
        _, plain = gw.gateway.keys.create("plain")
        _, rated = gw.gateway.keys.create("rated", tpm=10**6)
        url = f"{gw.base_url}/v1"
        refused = httpx.post(f"{url}/explanations", json=SHORT, headers=_auth(plain), timeout=60)
        assert refused.status_code == 429 and _code(refused) == "rate_limit_exceeded"
        assert "allows per minute (300)" in refused.json()["error"]["message"]
        # a key's own rate, larger than the default, is its rate
        explained = httpx.post(f"{url}/explanations", json=SHORT, headers=_auth(rated), timeout=60)
        assert explained.status_code == 200, explained.text
        assert explained.json()["usage"]["total_tokens"] > 300
        # short chats fit in the default until its tokens are spent
        answered = 0
        while answered < 30:
            reply = httpx.post(
                f"{url}/chat/completions", json=CHAT, headers=_auth(plain), timeout=60
            )
            if reply.status_code == 429:
                break
            assert reply.status_code == 200, reply.text
            answered += 1
        assert 1 <= answered < 30
        assert _code(reply) == "rate_limit_exceeded"
        assert "tokens" in reply.json()["error"]["message"]


def test_the_default_token_rate_is_a_setting() -> None:
    assert RateLimitConfig().default_tpm == 2_000_000
    assert RateLimitConfig(default_tpm=None).default_tpm is None
    with pytest.raises(ValueError, match="greater than 0"):
        RateLimitConfig(default_tpm=0)


def test_lent_passes_take_turns_with_engine_steps(random_model_dir: Path) -> None:
    """Three threads lend the model pass after pass while a chat decodes: between two of
    their passes the engine takes a step, so the chat waits at most one pass per token, and
    the engine does not keep the model to itself either."""
    served = ServedModel("random:1", random_model_dir)
    order: list[str] = []  # who ran each forward pass: "engine" or "lent"
    stop = threading.Event()

    def lend(lent: LentModel) -> None:
        with torch.no_grad():
            while not stop.is_set():
                lent(torch.tensor([list(range(1, 41))]))

    async def main() -> None:
        engine = LocalEngine()
        await engine.start()
        try:
            runner = await engine.runner(served)
            runner.model.register_forward_pre_hook(
                lambda *_: order.append(
                    "engine" if threading.current_thread().name.startswith("engine-") else "lent"
                )
            )
            threads = [
                threading.Thread(target=lend, args=(LentModel(runner, None),)) for _ in range(3)
            ]
            for thread in threads:
                thread.start()
            params = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
            async for _ in engine.generate("chat", served, [1, 2, 3], params):
                pass
            stop.set()
            for thread in threads:
                await asyncio.to_thread(thread.join)
        finally:
            await engine.aclose()

    asyncio.run(main())
    first = order.index("engine")
    last = len(order) - 1 - order[::-1].index("engine")
    during = order[first : last + 1]
    assert during.count("engine") >= 60  # the prefill and 59 decoding steps
    assert during.count("lent") >= 10  # about one pass per step: the explanations go on
    adjacent = [i for i in range(len(during) - 1) if during[i] == during[i + 1] == "lent"]
    assert adjacent == []
