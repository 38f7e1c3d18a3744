"""Structured outputs, tool calls and the sampling fields beyond the basic ones, through the
official `openai` SDK on the local engine: the demo model never saw JSON nor a tool, so what
it answers in those shapes it owes to grammar-constrained decoding."""

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

from tests.serving.conftest import RunningGateway, running_gateway

pytestmark = pytest.mark.slow

ANSWER = {
    "type": "object",
    "properties": {
        "colour": {"type": "string", "enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "sure": {"type": "boolean"},
    },
    "required": ["colour", "count", "sure"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 999},
                "b": {"type": "integer", "minimum": 0, "maximum": 999},
            },
            "required": ["a", "b"],
        },
    },
}
TOOLS = [WEATHER, ADD]
QUESTION = [{"role": "user", "content": "What colour is the gubbin?"}]


@pytest.fixture(scope="module")
def demo_gateway(
    tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path
) -> Iterator[RunningGateway]:
    with running_gateway(tmp_path_factory.mktemp("structured"), demo_model_dir) as gw:
        yield gw


@pytest.fixture
def client(demo_gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{demo_gateway.base_url}/v1", api_key="unused", max_retries=0)


def schema_format(schema: dict) -> dict:
    return {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }


def arguments_valid(call, tool: dict) -> dict:
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, tool["function"]["parameters"])
    return arguments


# -- response_format ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "question",
    ["What colour is the gubbin?", "What is 12 + 30?", "Sort these letters: dcba"],
)
def test_a_strict_json_schema_is_answered_with_json_that_follows_it(
    client: openai.OpenAI, question: str
) -> None:
    reply = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": question}],
        response_format=schema_format(ANSWER),
        temperature=0,
        max_tokens=100,
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), ANSWER)


def test_json_mode_and_sampling_still_give_an_object(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    for seed in range(3):
        reply = client.chat.completions.create(
            model="demo",
            messages=QUESTION,
            response_format=schema_format(schema),
            temperature=1.0,
            seed=seed,
            max_tokens=100,
        )
        jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
    plain = client.chat.completions.create(
        model="demo", messages=QUESTION, response_format={"type": "json_object"}, max_tokens=120
    )
    assert plain.choices[0].message.content.startswith("{")


def test_a_streamed_structured_answer_equals_the_whole_one(client: openai.OpenAI) -> None:
    kwargs = {
        "model": "demo",
        "messages": QUESTION,
        "response_format": schema_format(ANSWER),
        "temperature": 0,
        "max_tokens": 100,
    }
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(**kwargs, stream=True)
        if chunk.choices
    )
    assert streamed == whole


def test_constrained_and_free_requests_share_the_batch(
    client: openai.OpenAI, demo_gateway: RunningGateway
) -> None:
    """Free answers are the same beside constrained ones as alone, and all of them are
    decoded in the same steps."""
    free = {"model": "demo", "messages": QUESTION, "temperature": 0, "max_tokens": 16}
    alone = client.chat.completions.create(**free).choices[0].message.content
    runner = demo_gateway.gateway.local.loaded("demo:1")
    assert runner is not None
    steps = runner.decode_steps
    constrained_body = {**free, "max_tokens": 100, "response_format": schema_format(ANSWER)}
    with (
        httpx.Client(base_url=str(client.base_url), timeout=120) as http,
        ThreadPoolExecutor(6) as pool,
    ):
        with runner.paused():  # all six wait, and are admitted in one step
            constrained = [
                pool.submit(http.post, "/chat/completions", json=constrained_body) for _ in range(3)
            ]
            beside = [pool.submit(http.post, "/chat/completions", json=free) for _ in range(3)]
            deadline = time.monotonic() + 60
            while runner.num_waiting < 6:
                assert time.monotonic() < deadline, "the requests did not reach the engine"
                time.sleep(0.01)
        replies = [f.result().json() for f in constrained + beside]
    answers = [r["choices"][0]["message"]["content"] for r in replies[3:]]
    assert answers == [alone] * 3
    for reply in replies[:3]:
        jsonschema.validate(json.loads(reply["choices"][0]["message"]["content"]), ANSWER)
    # One batch (max_num_seqs 32): a step decodes every running sequence, so the steps are
    # those of the longest answer (its first token comes from the prefill), where one
    # sequence at a time would take the sum of all six.
    lengths = [r["usage"]["completion_tokens"] for r in replies]
    assert runner.decode_steps - steps == max(lengths) - 1 < sum(lengths) - len(lengths)


# -- tools ------------------------------------------------------------------------------------


def test_required_tool_choice_makes_a_call_that_parses(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=120,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    tool = {"get_weather": WEATHER, "add": ADD}[call.function.name]
    arguments_valid(call, tool)


def test_a_named_tool_is_called_streamed_and_not(client: openai.OpenAI) -> None:
    kwargs = {
        "model": "demo",
        "messages": [{"role": "user", "content": "What is 12 + 30?"}],
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "add"}},
        "temperature": 0,
        "max_tokens": 120,
    }
    whole = client.chat.completions.create(**kwargs).choices[0]
    [call] = whole.message.tool_calls
    assert call.function.name == "add" and whole.finish_reason == "tool_calls"
    arguments = arguments_valid(call, ADD)

    deltas, finish = [], None
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        if chunk.choices:
            deltas += chunk.choices[0].delta.tool_calls or []
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert {d.index for d in deltas} == {0}
    assert "".join(d.function.name or "" for d in deltas) == "add"
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == arguments


def test_a_tool_round_trip(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "What is the weather in Lima?"}]
    first = client.chat.completions.create(
        model="demo",
        messages=messages,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=120,
    )
    [call] = first.choices[0].message.tool_calls
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 degrees"},
    ]
    answer = client.chat.completions.create(
        model="demo", messages=messages, tools=[WEATHER], temperature=0, max_tokens=30
    )
    choice = answer.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens  # the call and result count


def test_parallel_calls_come_with_their_own_indexes(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "Weather in Paris and Oslo?"}],
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        max_tokens=120,
    )
    calls = reply.choices[0].message.tool_calls
    assert calls and len({c.id for c in calls}) == len(calls)
    for call in calls:
        arguments_valid(call, {"get_weather": WEATHER, "add": ADD}[call.function.name])


def test_tool_choice_none_renders_no_tools_and_auto_reads_plain_text(
    client: openai.OpenAI,
) -> None:
    kwargs = {"model": "demo", "messages": QUESTION, "temperature": 0, "max_tokens": 12}
    plain = client.chat.completions.create(**kwargs)
    none = client.chat.completions.create(**kwargs, tools=TOOLS, tool_choice="none")
    assert none.choices[0].message.content == plain.choices[0].message.content
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens
    auto = client.chat.completions.create(**kwargs, tools=TOOLS)
    assert auto.choices[0].message.tool_calls is None  # the demo model never learned to call
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens


# -- sampling fields -------------------------------------------------------------------------


def test_logit_bias_forces_and_forbids_a_token(client: openai.OpenAI, demo_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    kwargs = {"model": "demo", "prompt": "What is 2 + 3?", "temperature": 0}
    forced = client.completions.create(**kwargs, max_tokens=4, logit_bias={"65": 100})
    assert forced.choices[0].text == tokenizer.decode([65] * 4)
    greedy = client.completions.create(**kwargs, max_tokens=1).choices[0].text
    [token] = tokenizer(greedy, add_special_tokens=False).input_ids
    other = client.completions.create(**kwargs, max_tokens=1, logit_bias={str(token): -100})
    assert other.choices[0].text != greedy


def test_min_tokens_and_ignore_eos_set_the_length(client: openai.OpenAI) -> None:
    kwargs = {"model": "demo", "messages": QUESTION, "temperature": 0}
    short = client.chat.completions.create(**kwargs, max_tokens=60)
    assert short.choices[0].finish_reason == "stop"
    stopped_at = short.usage.completion_tokens
    longer = client.chat.completions.create(
        **kwargs, max_tokens=60, extra_body={"min_tokens": stopped_at + 5}
    )
    assert longer.usage.completion_tokens >= stopped_at + 5
    full = client.chat.completions.create(**kwargs, max_tokens=40, extra_body={"ignore_eos": True})
    assert full.usage.completion_tokens == 40 and full.choices[0].finish_reason == "length"


def test_top_k_one_is_greedy(client: openai.OpenAI) -> None:
    kwargs = {"model": "demo", "messages": QUESTION, "max_tokens": 12}
    greedy = client.chat.completions.create(**kwargs, temperature=0).choices[0].message.content
    for seed in range(3):
        sampled = client.chat.completions.create(
            **kwargs, temperature=1.5, seed=seed, extra_body={"top_k": 1}
        )
        assert sampled.choices[0].message.content == greedy


def test_a_list_of_prompts_and_of_token_lists(client: openai.OpenAI) -> None:
    texts = client.completions.create(
        model="demo", prompt=["What is 2 + 3?", "Upper-case: abc"], max_tokens=4, temperature=0
    )
    assert [c.index for c in texts.choices] == [0, 1]
    ids = client.completions.create(model="demo", prompt=[[5, 6, 7], [8, 9]], max_tokens=3, n=2)
    assert len(ids.choices) == 4


def test_n_choices_stream_with_their_top_logprobs(client: openai.OpenAI) -> None:
    seen: dict[int, int] = {}
    for chunk in client.chat.completions.create(
        model="demo",
        messages=QUESTION,
        n=2,
        max_tokens=6,
        logprobs=True,
        top_logprobs=3,
        stream=True,
        seed=1,
    ):
        for choice in chunk.choices:
            for token in (choice.logprobs.content if choice.logprobs else None) or []:
                assert len(token.top_logprobs) == 3
                seen[choice.index] = seen.get(choice.index, 0) + 1
    assert set(seen) == {0, 1} and all(count > 0 for count in seen.values())


# -- bad input --------------------------------------------------------------------------------


def _error(demo_gateway: RunningGateway, body: dict) -> dict:
    response = httpx.post(f"{demo_gateway.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    return response.json()["error"]


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        (
            {"response_format": schema_format({"type": "objekt"})},
            "response_format.json_schema.schema",
            "not a valid JSON schema",
        ),
        (
            {"tools": [{"type": "function", "function": {"parameters": {}}}]},
            "tools.0.function.name",
            "Field required",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            None,
            "'nope', which is not in tools",
        ),
        ({"tool_choice": "required"}, None, "has no tools"),
        ({"logit_bias": {"65": 300}}, "logit_bias", "from -100 to 100"),
        ({"logit_bias": {"999999": 5}}, "logit_bias", "outside this model's vocabulary"),
        ({"audio": {"voice": "alloy"}}, "audio", "unrecognized request argument"),
        ({"functions": [{"name": "f"}]}, "functions", "unrecognized request argument"),
        ({"min_tokens": 50, "max_tokens": 10}, "min_tokens", "more than the 10 tokens"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(
    demo_gateway: RunningGateway, extra: dict, param: str | None, words: str
) -> None:
    error = _error(demo_gateway, {"model": "demo", "messages": QUESTION, **extra})
    assert words in error["message"]
    assert error["param"] == param


def test_an_unknown_field_in_a_message_is_named(demo_gateway: RunningGateway) -> None:
    messages = [{"role": "user", "content": "hi", "audio": {"id": "x"}}]
    error = _error(demo_gateway, {"model": "demo", "messages": messages})
    assert error["param"] == "messages.0.audio"


def test_tool_call_arguments_in_the_history_must_be_json(demo_gateway: RunningGateway) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{a:"}}
    messages = [*QUESTION, {"role": "assistant", "tool_calls": [call]}]
    error = _error(demo_gateway, {"model": "demo", "messages": messages, "tools": TOOLS})
    assert error["param"] == "messages.1.tool_calls.0.function.arguments"


def test_unsupported_fields_may_be_dropped_with_a_warning(
    tmp_path: Path, demo_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running_gateway(tmp_path, demo_model_dir, openai={"unsupported_fields": "warn"}) as gw:
        body = {"model": "demo", "messages": QUESTION, "max_tokens": 2, "audio": {"v": 1}}
        response = httpx.post(f"{gw.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    assert "audio" in caplog.text
