"""Schemathesis hooks for tests/serving/test_openapi.py (loaded through SCHEMATHESIS_HOOKS):
drop the generated bodies that are refused for what no JSON Schema can state, so that every
other schema-valid request must be accepted. The schema says all it can; what is left names
another part of the same body (tool_choice's function among the tools, distinct tool names,
prompts times n) or the served model (its vocabulary, FUZZ_VOCAB_SIZE)."""

import os
from typing import Any

import schemathesis

MAX_CHOICES = 64  # serving.protocol.MAX_CHOICES; this module runs in schemathesis' process


def _token_ids(body: dict[str, Any]) -> list[int]:
    biases = body.get("logit_bias")
    ids = (
        [int(k) for k in biases if k.isascii() and k.isdigit()] if isinstance(biases, dict) else []
    )
    prompt = body.get("prompt")
    for item in prompt if isinstance(prompt, list) else []:
        ids += [item] if isinstance(item, int) else []
        ids += [i for i in item if isinstance(i, int)] if isinstance(item, list) else []
    return ids


def _prompts(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return 1


@schemathesis.hook
def filter_body(context: schemathesis.HookContext, body: Any) -> bool:
    path = context.operation.path if context.operation else ""
    if not isinstance(body, dict) or path not in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
    ):
        return True
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    names = [
        (t.get("function") or {}).get("name") if "function" in t else t.get("name")
        for t in tools
        if isinstance(t, dict)
    ]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        function = choice.get("function")
        chosen = function.get("name") if isinstance(function, dict) else choice.get("name")
        if chosen not in names:
            return False
    if len(set(names)) < len(names):
        return False
    vocabulary = int(os.environ.get("FUZZ_VOCAB_SIZE", "0"))
    if vocabulary and any(i >= vocabulary for i in _token_ids(body)):
        return False
    n = body.get("n")
    return _prompts(body) * (n if isinstance(n, int) else 1) <= MAX_CHOICES
