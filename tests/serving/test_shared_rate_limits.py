"""Two real gateway processes share a key's rate limit through Redis."""

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from core.database import open_database, utc_now
from core.settings import StackSettings
from registry.service import open_registry
from serving.errors import ServingError
from serving.keys import ApiKey, KeyStore
from serving.ratelimit import RedisRateLimiter
from serving.tables import CHAIN
from serving.vllm.engine import free_port

REDIS_URL = os.environ.get("LLMOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# The gateways' rate-limit window: long enough for the test's 18 tiny requests (a few seconds
# on a loaded 2-core machine), short enough that waiting for a fresh one costs little.
WINDOW_S = 10


@pytest.fixture
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError as err:
        if os.environ.get("LLMOPS_REQUIRE_SERVICES"):
            raise
        pytest.skip(
            f"Redis is not reachable at {REDIS_URL} ({err}); start it or set LLMOPS_TEST_REDIS_URL"
        )
    return REDIS_URL


def _start(home: Path, config: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "LLMOPS_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "serving", "--config", str(config), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture
def two_gateways(tmp_path: Path, random_model_dir: Path, redis_url: str) -> Iterator[list[str]]:
    home = tmp_path / "home"
    settings = StackSettings(home=home)
    registry = open_registry(settings)
    version = registry.register("demo", random_model_dir)
    registry.set_alias("demo", "production", version.version)
    config = tmp_path / "serving.yaml"
    config.write_text(
        f"rate_limits:\n  backend: redis\n  redis_url: {redis_url}\n  window_s: {WINDOW_S}\n"
    )
    ports = [free_port(), free_port()]
    processes = [_start(home, config, port) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        deadline = time.monotonic() + 180  # two start at once on a shared machine
        for url, process in zip(urls, processes, strict=True):
            while True:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "a gateway did not start"
                try:
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
        yield urls
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


@pytest.mark.slow
def test_two_replicas_never_exceed_a_key_limit(two_gateways: list[str], tmp_path: Path) -> None:
    body = {"model": "demo", "prompt": "Sort: cba", "max_tokens": 1}
    for url in two_gateways:  # load the model in both before the clock starts
        httpx.post(f"{url}/v1/completions", json=body, timeout=120).raise_for_status()
    keys = KeyStore(
        open_database(StackSettings(home=tmp_path / "home").resolved_database_url, CHAIN)
    )
    _, secret = keys.create("shared", rpm=6)  # 6 requests a window
    time.sleep(WINDOW_S - time.time() % WINDOW_S + 0.05)  # all requests fall in a new window
    window = int(time.time() // WINDOW_S)
    headers = {"Authorization": f"Bearer {secret}"}
    statuses = []
    for i in range(18):
        url = two_gateways[i % 2]
        response = httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=30)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert 1 <= int(response.headers["retry-after"]) <= WINDOW_S
    assert int(time.time() // WINDOW_S) == window, "the requests outlasted their window"
    # One after another, alternating: both replicas served some of the six, and both refused
    # every request once the shared count was reached.
    assert statuses == [200] * 6 + [429] * 12


def test_a_redis_that_does_not_answer_fails_requests_with_503() -> None:
    """Requests are not let through uncounted, nor held forever."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never answers
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", timeout_s=0.5)
    key = ApiKey("key_x", "x", "llmops-x", ("*",), False, 10, None, True, utc_now(), None)

    async def reserve() -> None:
        try:
            await limiter.reserve(key, 1)
        finally:
            await limiter.aclose()

    started = time.monotonic()
    with pytest.raises(ServingError) as refused:
        asyncio.run(reserve())
    silent.close()
    assert refused.value.http_status == 503 and refused.value.headers["Retry-After"]
    assert time.monotonic() - started < 10
