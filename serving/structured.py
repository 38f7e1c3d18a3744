"""The grammar a chat request's output must follow: its `response_format`'s JSON schema, and
the tool calls its `tools` and `tool_choice` allow. Built here with xgrammar, as EBNF that both
engines enforce (the local engine's logits processor and vLLM's structured outputs), so that
the two agree token for token and a schema that cannot be enforced is the client's 400, not
an engine failure.

Request validation only bounds a schema's size (`serving.protocol.check_json_schema`); whether
it is a valid JSON schema costs far more and is checked here, the answers cached by the
schema's text so that a route can check off the event loop and later checks cost a lookup."""

import functools
import json
import re
from collections.abc import Iterable
from typing import Any

import xgrammar as xgr
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from serving.errors import bad_request
from serving.protocol import ChatCompletionRequest
from serving.tool_calls import ToolFormat, tool_constraint

# xgrammar's messages begin with a time and the C++ source line that raised them.
_XGRAMMAR_NOISE = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: .*? is false: )?")


def xgrammar_message(err: Exception) -> str:
    """What xgrammar says is wrong, without its time stamp and source location."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return _XGRAMMAR_NOISE.sub("", lines[0]).strip()


def chat_schemas(req: ChatCompletionRequest) -> list[tuple[str, dict[str, Any]]]:
    """The JSON schemas of a chat request, each with the parameter that holds it."""
    found = [
        (f"tools.{number}.function.parameters", tool.function.parameters)
        for number, tool in enumerate(req.tools or [])
    ]
    answer = req.response_format.json_schema if req.response_format else None
    if answer is not None:
        found.append(("response_format.json_schema.schema", answer.schema_))
    return found


def check_schemas(schemas: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """A 400 naming the first of the (parameter, schema) pairs whose schema is not a valid JSON
    schema. About 0.15 ms per property on first sight: call it off the event loop."""
    for param, schema in schemas:
        problem = _schema_problem(json.dumps(schema, sort_keys=True))
        if problem is not None:
            raise bad_request(f"{param}: not a valid JSON schema: {problem}", param=param)


@functools.lru_cache(maxsize=256)
def _schema_problem(text: str) -> str | None:
    schema = json.loads(text)
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as err:
        where = "/".join(str(p) for p in err.path)
        return err.message + (f" (at {where})" if where else "")
    return None


def output_grammar(req: ChatCompletionRequest, tool_format: ToolFormat) -> str | None:
    check_schemas(chat_schemas(req))
    schema = req.response_format.schema if req.response_format else None
    if req.calls_tools:
        assert req.tools is not None
        tag = tool_constraint(
            tool_format, req.tools, req.tool_choice, req.parallel_tool_calls, schema
        )
        return _ebnf("tools", tag)
    if schema is not None:
        return _ebnf("response_format", json.dumps(schema))
    return None


@functools.lru_cache(maxsize=128)
def _ebnf(param: str, source: str) -> str:
    """The EBNF of a structural tag (`tools`) or a JSON schema (`response_format`), in JSON."""
    try:
        if param == "tools":
            return str(xgr.Grammar.from_structural_tag(source))
        # Compact JSON: a small model left free to add whitespace may add it forever.
        return str(xgr.Grammar.from_json_schema(source, any_whitespace=False))
    except Exception as err:  # xgrammar says which part of the schema it cannot enforce
        raise bad_request(
            f"{param}: the schema cannot be enforced: {xgrammar_message(err)}; simplify it",
            param=param,
        ) from None
