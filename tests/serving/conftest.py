import dataclasses
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
import uvicorn
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.settings import StackSettings
from finetune.demo.skills import SKILLS, generate_splits
from finetune.demo.spec import TINY
from registry.service import Registry
from serving.app import create_app, server_options
from serving.config import ServingConfig
from serving.gateway import Gateway, build_gateway
from serving.vllm.engine import free_port


@dataclass
class RunningGateway:
    base_url: str
    gateway: Gateway
    registry: Registry


@contextmanager
def running_gateway(home: Path, model_dir: Path | None, **config: Any) -> Iterator[RunningGateway]:
    """A real gateway on a free port, in this process, serving `model_dir` as `demo` (None:
    the registry in `home` as it is, such as when a gateway restarts)."""
    config = ServingConfig(port=free_port(), **config)
    gateway = build_gateway(config, StackSettings(home=home, actor="tests"))
    registry = gateway.registry
    if model_dir is not None:
        version = registry.register("demo", model_dir)
        registry.set_alias("demo", "production", version.version)
    options = {**server_options(config), "host": "127.0.0.1"}  # whatever the config's host
    server = uvicorn.Server(uvicorn.Config(create_app(gateway), **options, log_level="warning"))
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


# A demo model that learned one skill (upper-casing) in seconds: enough to tell the right
# answer of a multiple-choice question by log-likelihood (about 19 in 20 here).
UPPER_SPEC = dataclasses.replace(
    TINY,
    name="upper",
    num_train=3000,
    num_eval=20,
    steps=300,
    hidden_size=128,
    intermediate_size=256,
    num_layers=2,
    warmup_steps=20,
    max_new_tokens=12,
    train_skills=("upper",),
    eval_skills=("upper",),
)


def continuation_logprob(
    client: openai.OpenAI, model: str, context: list[int], continuation: list[int]
) -> float:
    """log P(continuation | context) as a client scores it (as lm-eval does): the whole
    sequence as token ids, echoed with max_tokens 0 and logprobs."""
    reply = client.completions.create(
        model=model, prompt=context + continuation, max_tokens=0, echo=True, logprobs=0
    )
    scores = reply.choices[0].logprobs.token_logprobs
    assert len(scores) == len(context) + len(continuation) and scores[0] is None
    return sum(scores[len(context) :])


def multiple_choice_accuracy(client: openai.OpenAI, model: str, model_dir: Path) -> float:
    """Upper-casing questions with four candidate answers, the right one first; the share
    whose right answer has the highest log-likelihood."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = generate_splits(SKILLS["upper"], seed=1, num_train=0, num_eval=20)[1]
    right = 0
    for row in rows:
        question, answer = (m["content"] for m in row["messages"])
        context = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        context_ids = tokenizer(context, add_special_tokens=False).input_ids
        candidates = [answer, answer.lower(), answer[::-1], answer[:-1] + "Q"]
        scores = [
            continuation_logprob(
                client, model, context_ids, tokenizer(c, add_special_tokens=False).input_ids
            )
            for c in candidates
        ]
        right += scores.index(max(scores)) == 0
    return right / len(rows)
