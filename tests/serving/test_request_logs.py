"""Every log line a gateway request causes names the request, its API key (never the key's
secret), and the model version it was served by; uvicorn's access lines included."""

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from core.database import open_database
from core.logs import configure_logging
from core.settings import StackSettings
from registry.service import open_registry
from serving.keys import KeyStore
from serving.tables import CHAIN
from serving.vllm.engine import free_port
from tests.serving.conftest import running_gateway

GATEWAY_LOGGERS = {"uvicorn", "serving", "core", "registry", "finetune", "evals"}
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
MESSAGES = [{"role": "user", "content": "What is 12 + 30?"}]


@contextmanager
def json_log_records() -> Iterator[list[dict]]:
    """The JSON records every logger of this process writes while the block runs, through
    the stack's one handler; logging as it was afterwards."""
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in UVICORN_LOGGERS)]
    saved = [(lg, lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    stream = io.StringIO()
    records: list[dict] = []
    configure_logging("info", "json", stream=stream)
    try:
        yield records
    finally:
        for logger, level, propagate, handlers in saved:
            logger.setLevel(level)
            logger.propagate = propagate
            logger.handlers[:] = handlers
        records += [json.loads(line) for line in stream.getvalue().splitlines()]


def _gateway_lines(records: list[dict]) -> list[dict]:
    return [r for r in records if r["logger"].split(".")[0] in GATEWAY_LOGGERS]


def test_every_line_of_a_request_names_it_its_key_and_version(
    tmp_path: Path, random_model_dir: Path
) -> None:
    with running_gateway(tmp_path / "home", random_model_dir) as running:
        key, secret = running.gateway.keys.create("logged")
        client = openai.OpenAI(base_url=f"{running.base_url}/v1", api_key=secret, max_retries=0)
        with json_log_records() as records:
            raw = client.chat.completions.with_raw_response.create(
                model="demo", messages=MESSAGES, max_tokens=4
            )
            streamed = client.chat.completions.with_raw_response.create(
                model="demo", messages=MESSAGES, max_tokens=4, stream=True
            )
            list(streamed.parse())
            refused = httpx.post(
                f"{running.base_url}/v1/chat/completions",
                headers={"Authorization": "Bearer llmops-wrong", "x-request-id": "wrong-key-1"},
                json={"model": "demo", "messages": MESSAGES},
            )
    request_id = raw.headers["x-request-id"]
    assert raw.parse().id == f"chatcmpl-{request_id}" and refused.status_code == 401
    served = {request_id, streamed.headers["x-request-id"]}
    lines = _gateway_lines(records)
    # With nothing else going on, every line the gateway wrote belongs to one of the requests.
    assert {r.get("request_id") for r in lines} == served | {"wrong-key-1"}
    for record in lines:
        if record["request_id"] in served:
            assert (record["key_id"], record["model"], record["version"]) == (key.id, "demo", "1")
        else:
            assert "key_id" not in record and "model" not in record
    access = [r for r in lines if r["logger"] == "uvicorn.access"]
    assert sorted(r["request_id"] for r in access) == sorted([*served, "wrong-key-1"])
    assert '"POST /v1/chat/completions HTTP/1.1" 401' in access[-1]["message"]
    text = json.dumps(records)
    assert secret not in text and "llmops-wrong" not in text


def _start_gateway(home: Path, port: int, *args: str) -> subprocess.Popen:
    gateway = subprocess.Popen(
        [sys.executable, "-m", "serving", "--port", str(port), *args],
        env={**os.environ, "LLMOPS_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while True:
        assert gateway.poll() is None and time.monotonic() < deadline, gateway.stderr.read()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return gateway
        except httpx.TransportError:
            time.sleep(0.2)


@pytest.mark.slow
def test_llm_serve_log_format_json_writes_only_json_lines(
    tmp_path: Path, random_model_dir: Path
) -> None:
    home = tmp_path / "home"
    settings = StackSettings(home=home)
    registry = open_registry(settings)
    registry.register("demo", random_model_dir)
    registry.set_alias("demo", "production", 1)
    key, secret = KeyStore(open_database(settings.resolved_database_url, CHAIN)).create("cli")
    port = free_port()
    gateway = _start_gateway(home, port, "--log-format", "json", "--log-level", "info")
    try:
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={"model": "demo", "messages": MESSAGES, "max_tokens": 4},
            timeout=60,
        )
        gateway.send_signal(signal.SIGINT)
        _, stderr = gateway.communicate(timeout=60)
    finally:
        gateway.kill()
    assert reply.status_code == 200 and gateway.returncode == 0, stderr
    records = [json.loads(line) for line in stderr.splitlines()]  # nothing but JSON
    request_id = reply.headers["x-request-id"]
    lines = [r for r in records if r.get("request_id") == request_id]
    assert [(r["logger"], r["key_id"], r["model"], r["version"]) for r in lines] == [
        ("uvicorn.access", key.id, "demo", "1")
    ]
    assert any(r["message"] == "Application shutdown complete." for r in records)
    assert secret not in stderr
