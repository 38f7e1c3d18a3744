"""OpenAI's legacy completions contract, which evaluation harnesses rely on: several prompts,
token-id prompts, and `echo` with log-probabilities for the prompt (max_tokens 0 scores a
text), checked against the Hugging Face model on the local engine (test_vllm_backend.py
checks the same on vLLM)."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.demo.build import build_demo_model
from tests.serving.conftest import (
    UPPER_SPEC,
    RunningGateway,
    continuation_logprob,
    multiple_choice_accuracy,
    running_gateway,
)


@pytest.fixture(scope="module")
def upper_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    root = tmp_path_factory.mktemp("upper")
    model = build_demo_model(root / "model", UPPER_SPEC).output_dir
    with running_gateway(root / "home", model) as gw:
        yield gw


@pytest.fixture
def client(gateway_server: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway_server.base_url}/v1", api_key="x", max_retries=0)


def hf_continuation_logprob(model_dir: Path, context: list[int], continuation: list[int]) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    return sum(logprobs[len(context) - 1 + i, t].item() for i, t in enumerate(continuation))


def test_echoed_logprobs_equal_the_models(client: openai.OpenAI, random_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    context = tokenizer("Sort: dcba").input_ids
    continuation = tokenizer(" abcd", add_special_tokens=False).input_ids
    served = continuation_logprob(client, "demo", context, continuation)
    expected = hf_continuation_logprob(random_model_dir, context, continuation)
    assert served == pytest.approx(expected, abs=1e-4)


def test_a_multiple_choice_question_the_model_knows(upper_gateway: RunningGateway) -> None:
    client = openai.OpenAI(base_url=f"{upper_gateway.base_url}/v1", api_key="x")
    model_dir = upper_gateway.registry.local_copy(upper_gateway.registry.resolve("demo"))
    assert multiple_choice_accuracy(client, "demo", model_dir) >= 0.8


def test_echo_with_generation_covers_prompt_and_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model="demo", prompt="Sort: cba", max_tokens=4, temperature=0, echo=True, logprobs=2
    )
    choice = reply.choices[0]
    logprobs = choice.logprobs
    prompt_tokens = reply.usage.prompt_tokens
    assert choice.text.startswith("Sort: cba")
    assert len(logprobs.tokens) == prompt_tokens + reply.usage.completion_tokens
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(len(t) <= 2 for t in logprobs.top_logprobs[1:])
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    assert logprobs.text_offset[prompt_tokens] == len("Sort: cba")
    generated = client.completions.create(
        model="demo", prompt="Sort: cba", max_tokens=4, temperature=0, logprobs=2
    ).choices[0]
    assert choice.text == "Sort: cba" + generated.text
    assert logprobs.token_logprobs[prompt_tokens:] == pytest.approx(
        generated.logprobs.token_logprobs, abs=1e-5
    )


def test_streamed_echo_starts_with_the_prompt(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model="demo", prompt="Upper: abc", max_tokens=3, echo=True, stream=True, logprobs=1
        )
    )
    assert chunks[0].choices[0].text.startswith("Upper: abc")
    assert chunks[0].choices[0].logprobs.token_logprobs[0] is None


def test_several_prompts_and_token_id_prompts(
    client: openai.OpenAI, random_model_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    texts = ["Sort: cba", "Upper: hello", "What is 1 + 2?"]
    reply = client.completions.create(model="demo", prompt=texts, max_tokens=3, temperature=0, n=2)
    assert [c.index for c in reply.choices] == list(range(6))
    singles = [
        client.completions.create(model="demo", prompt=t, max_tokens=3, temperature=0)
        for t in texts
    ]
    assert [reply.choices[2 * i].text for i in range(3)] == [s.choices[0].text for s in singles]
    assert reply.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    ids = [tokenizer(t).input_ids for t in texts]
    by_ids = client.completions.create(model="demo", prompt=ids, max_tokens=3, temperature=0)
    assert [c.text for c in by_ids.choices] == [s.choices[0].text for s in singles]
    one = client.completions.create(model="demo", prompt=ids[0], max_tokens=3, temperature=0)
    assert one.choices[0].text == singles[0].choices[0].text


@pytest.mark.parametrize(
    ("prompt", "fields", "message"),
    [
        ([10**6], {}, "outside this model's vocabulary"),
        (["a"] * 20, {"n": 4}, "more than 64 choices"),
        ([], {}, "prompt"),
        ([[]], {}, "prompt"),
        ("x", {"max_tokens": -1}, "max_tokens"),
    ],
)
def test_bad_prompts_are_refused(
    gateway_server: RunningGateway, prompt: object, fields: dict, message: str
) -> None:
    reply = httpx.post(
        f"{gateway_server.base_url}/v1/completions",
        json={"model": "demo", "prompt": prompt, **fields},
    )
    assert reply.status_code == 400 and message in reply.text, reply.text
