import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import uvicorn
from transformers import LlamaConfig, LlamaForCausalLM

from finetune.demo.skills import SKILLS, generate_splits
from finetune.demo.tokenizer import train_demo_tokenizer
from registry.service import Registry, open_registry
from registry.settings import RegistrySettings
from serving.app import Gateway, build_gateway, create_app
from serving.config import ServingConfig
from serving.vllm.engine import free_port


def build_random_model(
    path: Path, seed: int = 0, hidden_size: int = 64, initializer_range: float = 0.02
) -> Path:
    """A 2-layer Llama with random weights and the demo tokenizer: it answers with varied,
    deterministic tokens, which is what engine and API tests need (not meaningful text).
    A large `initializer_range` makes its next-token choices clear-cut, so that two engines'
    float rounding cannot flip a greedy choice."""
    texts = [
        message["content"]
        for skill in SKILLS.values()
        for row in generate_splits(skill, seed, 50, 5)[0]
        for message in row["messages"]
    ]
    tokenizer = train_demo_tokenizer(texts, vocab_size=300)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        initializer_range=initializer_range,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_model(tmp_path_factory.mktemp("models") / "random")


@dataclass
class RunningGateway:
    base_url: str
    gateway: Gateway
    registry: Registry


@contextmanager
def running_gateway(home: Path, model_dir: Path, **config: Any) -> Iterator[RunningGateway]:
    """A real gateway on a free port, in this process, serving `model_dir` as `demo`."""
    settings = RegistrySettings(home=home, actor="tests")
    registry = open_registry(settings)
    version = registry.register("demo", model_dir)
    registry.set_alias("demo", "production", version.version)
    config = ServingConfig(port=free_port(), **config)
    gateway = build_gateway(config, registry, home, settings.resolved_database_url)
    server = uvicorn.Server(
        uvicorn.Config(create_app(gateway), host="127.0.0.1", port=config.port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    try:
        yield RunningGateway(f"http://127.0.0.1:{config.port}", gateway, registry)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


LIMITS = {"max_body_bytes": 100_000, "max_tokens": 64, "max_prompt_tokens": 200}


@pytest.fixture(scope="session")
def gateway_server(
    tmp_path_factory: pytest.TempPathFactory, random_model_dir: Path
) -> Iterator[RunningGateway]:
    """The gateway without API keys, resolving model strings afresh on every request."""
    home = tmp_path_factory.mktemp("gateway-home")
    with running_gateway(home, random_model_dir, resolve_ttl_s=0.0, limits=LIMITS) as running:
        yield running
