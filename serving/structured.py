"""The grammar a chat request's output must follow: its `response_format`'s JSON schema, and
the tool calls its `tool_choice` requires. Built here with xgrammar, as EBNF that both engines
enforce (the local engine's logits processor and vLLM's structured outputs), so that the two
agree token for token and a schema that cannot be enforced is the client's 400, not an engine
failure."""

import json

import xgrammar as xgr

from serving.errors import bad_request
from serving.protocol import ChatCompletionRequest
from serving.tool_calls import ToolFormat, tool_constraint


def output_grammar(req: ChatCompletionRequest, tool_format: ToolFormat) -> str | None:
    schema = req.response_format.schema if req.response_format else None
    tag = None
    if req.calls_tools:
        assert req.tools is not None
        tag = tool_constraint(
            tool_format, req.tools, req.tool_choice, req.parallel_tool_calls, schema
        )
    param = "tools" if tag is not None else "response_format"
    try:
        if tag is not None:
            return str(xgr.Grammar.from_structural_tag(tag))
        if schema is not None:
            # Compact JSON: a small model left free to add whitespace may add it forever.
            return str(xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False))
    except Exception as err:  # xgrammar says which part of the schema it cannot enforce
        raise bad_request(
            f"{param}: the schema cannot be enforced: {err}; simplify it", param=param
        ) from None
    return None
