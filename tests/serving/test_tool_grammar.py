"""The grammar a chat request with tools gets under `tool_choice: auto`: the model may answer
in text or call a tool, but a call follows its tool's parameters and `parallel_tool_calls`.
Checked on the EBNF both engines enforce, compiled with xgrammar for a real tokenizer; and
over HTTP, that such a request is still answered on the local engine."""

from pathlib import Path

import httpx
import openai
import pytest
import xgrammar as xgr
from transformers import AutoTokenizer

from serving.protocol import ChatCompletionRequest
from serving.structured import output_grammar
from serving.tool_calls import TOOL_FORMATS
from tests.serving.conftest import RunningGateway

SET_X = {
    "type": "function",
    "function": {
        "name": "set_x",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"x": {"type": "integer"}},
            "required": ["x"],
            "additionalProperties": False,
        },
    },
}


def _call(x: str) -> str:
    return f'<tool_call>\n{{"name": "set_x", "arguments": {{"x": {x}}}}}\n</tool_call>'


@pytest.fixture(scope="module")
def compiler(random_model_dir: Path) -> xgr.GrammarCompiler:
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    return xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer))


def _accepts(compiler: xgr.GrammarCompiler, parallel: bool, text: str) -> bool:
    """Whether the output `text` (ended there) follows the request's grammar."""
    request = ChatCompletionRequest(
        model="demo",
        messages=[{"role": "user", "content": "Set x to 3."}],
        tools=[SET_X],
        tool_choice="auto",
        parallel_tool_calls=parallel,
    )
    grammar = output_grammar(request, TOOL_FORMATS["hermes"])
    assert grammar is not None, "tool_choice auto leaves the calls unconstrained"
    matcher = xgr.GrammarMatcher(
        compiler.compile_grammar(grammar), terminate_without_stop_token=True
    )
    return matcher.accept_string(text) and matcher.is_completed()


def test_under_auto_a_call_follows_its_schema_and_the_parallel_setting(
    compiler: xgr.GrammarCompiler,
) -> None:
    assert _accepts(compiler, False, "The answer in words, no call.")
    assert _accepts(compiler, False, "Calling it: " + _call("3"))
    assert not _accepts(compiler, False, _call('"not-an-int"'))
    assert not _accepts(compiler, False, _call("3") + "\n" + _call("4"))
    assert _accepts(compiler, True, _call("3") + "\n" + _call("4"))
    assert not _accepts(compiler, True, _call("3") + "\n" + _call("4.5"))


def test_a_request_with_tools_under_auto_is_answered(gateway_server: RunningGateway) -> None:
    client = openai.OpenAI(
        base_url=f"{gateway_server.base_url}/v1", api_key="unused", max_retries=0
    )
    reply = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "Set x to 3."}],
        tools=[SET_X],
        parallel_tool_calls=False,
        max_tokens=8,
        temperature=0,
    )
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    health = httpx.get(f"{gateway_server.base_url}/health")
    assert health.status_code == 200
