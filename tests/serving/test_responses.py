"""The Responses API through the official `openai` SDK (`client.responses.create` and
`client.responses.stream`) on the local engine, with stored responses owned by their key."""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from tests.serving.conftest import RunningGateway, running_gateway
from tests.serving.test_structured_outputs import ANSWER

pytestmark = pytest.mark.slow

ADD = {
    "type": "function",
    "name": "add",
    "description": "Adds two numbers.",
    "parameters": {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "minimum": 0, "maximum": 99},
            "b": {"type": "integer", "minimum": 0, "maximum": 99},
        },
        "required": ["a", "b"],
    },
}


@pytest.fixture(scope="module")
def keyed_demo(
    tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path
) -> Iterator[tuple[RunningGateway, openai.OpenAI, openai.OpenAI]]:
    """The demo model behind keys: a client for alice and one for bob."""
    with running_gateway(tmp_path_factory.mktemp("responses"), demo_model_dir) as gw:
        clients = [
            openai.OpenAI(
                base_url=f"{gw.base_url}/v1", api_key=gw.gateway.keys.create(name)[1], max_retries=0
            )
            for name in ("alice", "bob")
        ]
        yield gw, *clients


@pytest.fixture
def alice(keyed_demo) -> openai.OpenAI:
    return keyed_demo[1]


@pytest.fixture
def bob(keyed_demo) -> openai.OpenAI:
    return keyed_demo[2]


def test_a_text_answer_is_the_chat_answer(alice: openai.OpenAI) -> None:
    response = alice.responses.create(
        model="demo", input="What is 12 + 30?", temperature=0, max_output_tokens=20
    )
    chat = alice.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "What is 12 + 30?"}],
        temperature=0,
        max_tokens=20,
    )
    assert response.status == "completed" and response.object == "response"
    assert response.output_text == chat.choices[0].message.content == "42"
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_instructions_and_a_cut_answer(alice: openai.OpenAI) -> None:
    response = alice.responses.create(
        model="demo",
        instructions="Answer briefly.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Sort: dcba"}]}],
        temperature=0,
        max_output_tokens=2,
        extra_body={},
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.instructions == "Answer briefly."


def test_previous_response_id_continues_the_conversation(alice: openai.OpenAI) -> None:
    first = alice.responses.create(model="demo", input="What is 2 + 3?", temperature=0)
    second = alice.responses.create(
        model="demo", input="And 4 + 4?", previous_response_id=first.id, temperature=0
    )
    assert second.previous_response_id == first.id
    alone = alice.responses.create(model="demo", input="And 4 + 4?", temperature=0, store=False)
    # The second saw the first question and answer: exactly their tokens more than alone
    # (less the first one's beginning-of-text token, which a conversation has once).
    assert second.usage.input_tokens == alone.usage.input_tokens + first.usage.total_tokens - 1
    assert alice.responses.retrieve(first.id).output_text == first.output_text
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(alone.id)  # store=False


def test_a_response_belongs_to_its_key(alice: openai.OpenAI, bob: openai.OpenAI) -> None:
    mine = alice.responses.create(model="demo", input="What is 1 + 1?", temperature=0)
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model="demo", input="hi", previous_response_id=mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(mine.id)
    alice.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(mine.id)


def test_structured_output_through_text_format(alice: openai.OpenAI) -> None:
    response = alice.responses.create(
        model="demo",
        input="What colour is the gubbin?",
        text={
            "format": {"type": "json_schema", "name": "answer", "schema": ANSWER, "strict": True}
        },
        temperature=0,
        max_output_tokens=100,
    )
    jsonschema.validate(json.loads(response.output_text), ANSWER)
    assert response.text.format.type == "json_schema"


def test_a_function_tool_round_trip(alice: openai.OpenAI) -> None:
    first = alice.responses.create(
        model="demo",
        input="What is 12 + 30?",
        tools=[ADD],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_output_tokens=100,
    )
    [call] = first.output
    assert call.type == "function_call" and call.name == "add"
    jsonschema.validate(json.loads(call.arguments), ADD["parameters"])
    answer = alice.responses.create(
        model="demo",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "42"}],
        tools=[ADD],
        temperature=0,
        max_output_tokens=20,
    )
    assert answer.output[0].type == "message"
    # Whether the demo model stops within 20 tokens after a tool's output differs between
    # builds of it (its weights are not bit-identical across CPUs); either way is well-formed.
    if answer.status == "incomplete":
        assert answer.incomplete_details.reason == "max_output_tokens"
        assert answer.usage.output_tokens == 20
    else:
        assert answer.status == "completed"
    assert answer.usage.input_tokens > first.usage.total_tokens


def test_streamed_events_build_the_same_response(alice: openai.OpenAI) -> None:
    kwargs = {"model": "demo", "input": "Upper-case: hello", "temperature": 0}
    whole = alice.responses.create(**kwargs)
    with alice.responses.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == whole.output_text
    assert alice.responses.retrieve(final.id).output_text == whole.output_text


def test_a_streamed_function_call(alice: openai.OpenAI) -> None:
    with alice.responses.stream(
        model="demo",
        input="What is 1 + 2?",
        tools=[ADD],
        tool_choice={"type": "function", "name": "add"},
        temperature=0,
        max_output_tokens=100,
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.done" in kinds
    [call] = final.output
    jsonschema.validate(json.loads(call.arguments), ADD["parameters"])


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": [{"type": "image_generation_call", "id": "x"}]}, "input.0.type", "not an item"),
        ({"input": []}, "input", "input is empty"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input.0.call_id", "Field required"),
        (
            {"input": "hi", "tools": [{"type": "web_search"}]},
            "tools.0.type",
            "Input should be 'function'",
        ),
        (
            {"input": "hi", "tools": [ADD], "tool_choice": {"type": "function", "name": "sub"}},
            None,
            "'sub', which is not in tools",
        ),
        ({"input": "hi", "reasoning": {"effort": "high"}}, "reasoning", "unrecognized"),
        (
            {"input": [{"role": "user", "content": "hi", "audio": 1}]},
            "input.0.audio",
            "unrecognized",
        ),
    ],
)
def test_bad_requests_name_what_was_wrong(
    keyed_demo, body: dict, param: str | None, words: str
) -> None:
    gw, alice, _ = keyed_demo
    response = httpx.post(
        f"{gw.base_url}/v1/responses",
        json={"model": "demo", **body},
        headers={"Authorization": f"Bearer {alice.api_key}"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]
