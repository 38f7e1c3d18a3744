"""Tool calls in a model's own output format: the grammar its calls follow, and that makes it
call a tool when the request requires one (xgrammar's structural tag for the format), and the
parser that reads calls back out of the text, whole or as it streams.

Formats, named as vLLM names its tool parsers:
- `hermes`: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes, Qwen, the demo
  model's chat template);
- `llama3_json`: a bare `{"name": ..., "parameters": {...}}` (Llama 3.1 and later)."""

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from xgrammar import get_model_structural_tag
from xgrammar.structural_tag import (
    JSONSchemaFormat,
    OrFormat,
    StructuralTag,
    TagsWithSeparatorFormat,
    TriggeredTagsFormat,
)

from serving.protocol import ChatTool, FunctionCall, NamedToolChoice, ToolCall

_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ToolFormat:
    name: str
    xgrammar_style: str  # the model key of xgrammar's builtin structural tags
    start: str  # the text a call begins with
    arguments_key: str

    def parse_call(self, text: str, at: int) -> tuple[ToolCall, int] | None:
        """The call that begins at `text[at:]` (which starts with `self.start`) and where it
        ends; None while it is incomplete or if it is not a well-formed call."""
        try:
            if self.name == "hermes":
                end = text.find("</tool_call>", at)
                if end == -1:
                    return None
                call = json.loads(text[at + len(self.start) : end])
                after = end + len("</tool_call>")
            else:
                call, after = _DECODER.raw_decode(text, at)
        except json.JSONDecodeError:
            return None
        if not (isinstance(call, dict) and isinstance(call.get("name"), str)):
            return None
        tool_call = ToolCall(
            id=f"call_{uuid.uuid4().hex[:24]}",
            function=FunctionCall(
                name=call["name"], arguments=json.dumps(call.get(self.arguments_key, {}))
            ),
        )
        return tool_call, after


TOOL_FORMATS = {
    "hermes": ToolFormat("hermes", "qwen_3", "<tool_call>", "arguments"),
    "llama3_json": ToolFormat("llama3_json", "llama", '{"name":', "parameters"),
}


def tool_constraint(
    tool_format: ToolFormat,
    tools: list[ChatTool],
    choice: str | NamedToolChoice | None,
    parallel: bool,
    answer_schema: dict[str, Any] | None,
) -> str:
    """The structural tag (as JSON) that the output must follow: only calls where the request
    requires one (`required` or a named function); else, when the answer must follow a JSON
    schema, either such an answer or calls; else free text or calls. Every call follows its
    tool's parameters, and with `parallel` off there is one call at most."""
    named = isinstance(choice, NamedToolChoice)
    free = not (named or choice == "required" or answer_schema is not None)
    tag = get_model_structural_tag(
        tool_format.xgrammar_style,
        tools=[t.model_dump(exclude_none=True) for t in tools],
        tool_choice=choice.model_dump() if named else "auto" if free else "required",
        reasoning="disabled",
        parallel_tool_calls=parallel,
        max_whitespace_cnt=1,  # a model never taught tools may otherwise indent forever
    )
    calls = tag.format
    if isinstance(calls, TriggeredTagsFormat) and not free:
        # Calls and nothing else: free text before the first call would let a model that was
        # never taught to call tools wander off instead.
        calls = TagsWithSeparatorFormat(
            tags=calls.tags, separator="\n", at_least_one=True, stop_after_first=not parallel
        )
    if answer_schema is not None and not named and choice != "required":
        calls = OrFormat(elements=[JSONSchemaFormat(json_schema=answer_schema), calls])
    return StructuralTag(format=calls).model_dump_json()


@dataclass
class ParsedOutput:
    content: str | None
    tool_calls: list[ToolCall]


def parse_tool_calls(tool_format: ToolFormat, text: str) -> ParsedOutput:
    """The calls in a whole output, and the text around them as the content."""
    parser = ToolCallStream(tool_format)
    pieces = list(parser.feed(text, final=True))
    calls = [p for p in pieces if isinstance(p, ToolCall)]
    content = "".join(p for p in pieces if isinstance(p, str))
    if calls:
        content = content.strip()
    return ParsedOutput(content or None, calls)


class ToolCallStream:
    """Reads an output as it grows: yields text that is certainly content, holding back what
    may begin a call, and each call once it is complete."""

    def __init__(self, tool_format: ToolFormat):
        self.format = tool_format
        self._text = ""
        self._done = 0  # characters of `_text` already yielded, as content or in a call
        self.calls = 0

    def feed(self, delta: str, final: bool = False) -> Iterator[str | ToolCall]:
        self._text += delta
        start = self.format.start
        while True:
            at = self._text.find(start, self._done)
            if at == -1:
                # Keep back a tail that may be the beginning of a call's start.
                keep = 0 if final else _partial_prefix(self._text, start, self._done)
                end = len(self._text) - keep
                if end > self._done:
                    yield from self._content(self._text[self._done : end])
                    self._done = end
                return
            if at > self._done:
                yield from self._content(self._text[self._done : at])
                self._done = at
            parsed = self.format.parse_call(self._text, at)
            if parsed is None:
                if final:  # cut off or malformed: it was text after all
                    yield from self._content(self._text[at:])
                    self._done = len(self._text)
                return
            call, self._done = parsed
            self.calls += 1
            yield call

    def _content(self, text: str) -> Iterator[str]:
        if text and not (self.calls and text.isspace()):  # no whitespace between calls
            yield text


def _partial_prefix(text: str, start: str, since: int) -> int:
    """The length of the longest end of `text[since:]` that `start` begins with."""
    for length in range(min(len(start) - 1, len(text) - since), 0, -1):
        if start.startswith(text[-length:]):
            return length
    return 0
