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
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from core.settings import StackSettings
from finetune.demo.random_model import build_random_model
from registry.service import Registry
from serving.app import create_app
from serving.config import ServingConfig
from serving.gateway import Gateway, build_gateway
from serving.vllm.engine import free_port


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
    config = ServingConfig(port=free_port(), **config)
    gateway = build_gateway(config, StackSettings(home=home, actor="tests"))
    registry = gateway.registry
    version = registry.register("demo", model_dir)
    registry.set_alias("demo", "production", version.version)
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


def make_adapter(
    base: Path, out: Path, *, seed: int, r: int = 8, targets: tuple[str, ...] = ("q_proj", "v_proj")
) -> Path:
    """A PEFT LoRA adapter on `base` with random (not zero) weights, so that it changes output."""
    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=r, lora_alpha=4 * r, target_modules=list(targets), init_lora_weights=False),
    )
    model.save_pretrained(out)
    return out
