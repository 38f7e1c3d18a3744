"""What the security review found a caller could do to the gateway, on a real gateway with
real keys: bodies read before the key was checked, unbounded JSON schemas and grammar
compiles, fields silently ignored, and a console form that crashed."""

import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from serving.protocol import MAX_SCHEMA_CHARS, MAX_SCHEMA_DEPTH, MAX_SCHEMA_PROPERTIES
from tests.serving.conftest import RunningGateway, running_gateway

COMPILE_LIMIT_S = 0.1  # 1,000 optional properties take about 2.5 s; a small schema 1 ms
CHAT = [{"role": "user", "content": "What colour is the gubbin?"}]
MULTIPART = "multipart/form-data; boundary=b"
UPLOAD = "/v1/registry/models/demo/versions/upload"


@dataclass
class Keyed:
    gw: RunningGateway
    user: str  # a plain key's secret
    admin: str


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, random_model_dir: Path) -> Iterator[Keyed]:
    home = tmp_path_factory.mktemp("limits-home")
    with pytest.MonkeyPatch.context() as env:
        # Read when the model loads, on the first generation.
        env.setenv("LLMOPS_SERVING_GRAMMAR_COMPILE_TIMEOUT_S", str(COMPILE_LIMIT_S))
        with running_gateway(home, random_model_dir) as gw:
            _, user = gw.gateway.keys.create("app")
            _, admin = gw.gateway.keys.create("ops", admin=True)
            yield Keyed(gw, user, admin)


def _first_status(gw: RunningGateway, path: str, length: int, kind: str, secret: str = "") -> int:
    """The first status the gateway answers to a POST that declares a body of `length` bytes
    and waits (`Expect: 100-continue`) to be asked for it: 100 (Continue) only once the
    application starts reading the body."""
    port = urlsplit(gw.base_url).port
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Content-Type: {kind}",
        f"Content-Length: {length}",
        "Expect: 100-continue",
        *([f"Authorization: Bearer {secret}"] if secret else []),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return int(sock.recv(4096).split(b" ")[1])


def _chat(keyed: Keyed, body: dict, secret: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{keyed.gw.base_url}/v1/chat/completions",
        json={"model": "demo", "messages": CHAT, "max_tokens": 4, **body},
        headers={"Authorization": f"Bearer {secret or keyed.user}"},
        timeout=120,
    )


def _error(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def _schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def _object(properties: int, kind: str = "integer") -> dict:
    return {"type": "object", "properties": {f"p{i}": {"type": kind} for i in range(properties)}}


def _nested(levels: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def _tool(parameters: dict) -> dict:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


# -- 1 and 3: the key before the body -----------------------------------------------------------


def test_an_anonymous_body_is_never_read(keyed: Keyed) -> None:
    """The review's 889 KB schema and 100 MB uploads: answered 401 before the gateway asks
    for a byte of the body, on JSON and multipart routes alike."""
    gw = keyed.gw
    assert _first_status(gw, "/v1/chat/completions", 900_000, "application/json") == 401
    assert _first_status(gw, "/v1/responses", 900_000, "application/json") == 401
    assert _first_status(gw, "/v1/files", 100_000_000, MULTIPART) == 401
    assert _first_status(gw, UPLOAD, 100_000_000, MULTIPART) == 401
    assert _first_status(gw, UPLOAD, 100_000_000, MULTIPART, "llmops-wrong") == 401


def test_upload_limits_follow_the_keys_role(keyed: Keyed) -> None:
    """The registry's upload limit is an admin's: a plain key is refused before its body is
    read, an admin's body is asked for; files are every key's."""
    gw = keyed.gw
    assert _first_status(gw, UPLOAD, 100_000_000, MULTIPART, keyed.user) == 403
    assert _first_status(gw, UPLOAD, 100_000_000, MULTIPART, keyed.admin) == 100
    files = _first_status(gw, "/v1/files", 100_000_000, MULTIPART, keyed.user)
    assert files == 100
    too_big = 20 * 1024**3 + 1  # beyond the registry's limit, declared up front
    assert _first_status(gw, UPLOAD, too_big, MULTIPART, keyed.admin) == 413


def test_an_anonymous_refusal_is_the_error_envelope(keyed: Keyed) -> None:
    response = httpx.post(
        f"{keyed.gw.base_url}/v1/chat/completions",
        json={"model": "demo", "messages": CHAT, "response_format": _schema_format(_nested(120))},
    )
    error = _error(response, 401)
    assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error"


# -- 1: schemas within bounds -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        (_nested(120), f"more than {MAX_SCHEMA_DEPTH} levels deep"),
        (_object(MAX_SCHEMA_PROPERTIES + 1), f"more than {MAX_SCHEMA_PROPERTIES} properties"),
        (_object(4, "x" * MAX_SCHEMA_CHARS), f"the limit is {MAX_SCHEMA_CHARS}"),
    ],
    ids=["deep", "many-properties", "long"],
)
def test_schemas_beyond_the_bounds_are_a_400_naming_the_limit(
    keyed: Keyed, schema: dict, words: str
) -> None:
    answer = _error(_chat(keyed, {"response_format": _schema_format(schema)}))
    assert words in answer["message"]
    assert answer["param"] == "response_format.json_schema.schema"
    tool = _error(_chat(keyed, {"tools": [_tool(schema)]}))
    assert words in tool["message"] and tool["param"] == "tools.0.function.parameters"


def test_an_invalid_schema_is_a_400_naming_it(keyed: Keyed) -> None:
    """Checked off the event loop now, with the same answer as before."""
    error = _error(_chat(keyed, {"tools": [_tool({"type": "objekt"})], "tool_choice": "required"}))
    assert "not a valid JSON schema" in error["message"]
    assert error["param"] == "tools.0.function.parameters"
    responses = httpx.post(
        f"{keyed.gw.base_url}/v1/responses",
        json={
            "model": "demo",
            "input": "hi",
            "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": 3}}},
        },
        headers={"Authorization": f"Bearer {keyed.user}"},
        timeout=60,
    )
    assert _error(responses)["param"] == "text.format.schema"


# -- 2: grammar compiles bounded ----------------------------------------------------------------


def test_a_grammar_that_compiles_too_long_is_a_400_naming_the_limit(keyed: Keyed) -> None:
    """1,000 optional properties take seconds to compile even on a 300-token vocabulary: the
    request is refused at the limit, and so is the same schema again."""
    body = {"response_format": _schema_format(_object(MAX_SCHEMA_PROPERTIES))}
    error = _error(_chat(keyed, body))
    assert f"within the limit of {COMPILE_LIMIT_S:g} s" in error["message"]
    assert "within the limit" in _error(_chat(keyed, body))["message"]
    assert httpx.get(f"{keyed.gw.base_url}/health", timeout=5).status_code == 200


def test_a_pattern_xgrammar_cannot_compile_is_a_400(keyed: Keyed) -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "a{3000000000}"}}}
    error = _error(_chat(keyed, {"response_format": _schema_format(schema)}))
    assert "cannot be compiled" in error["message"]
    assert ".cc" not in error["message"]  # no source locations of the library


def test_a_small_schema_still_constrains_the_answer(keyed: Keyed) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    reply = _chat(keyed, {"response_format": _schema_format(schema), "max_tokens": 20})
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert json.loads(choice["message"]["content"]) in ({"ok": True}, {"ok": False})


# -- 4: fields that only mean something together --------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 2}, "top_logprobs"),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "logprobs": False, "top_logprobs": 0},
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        (
            "/v1/completions",
            {"prompt": "hi", "stream": False, "stream_options": {"include_usage": True}},
            "stream_options",
        ),
    ],
)
def test_fields_without_the_field_they_need_are_a_400_naming_them(
    keyed: Keyed, path: str, body: dict, param: str
) -> None:
    response = httpx.post(
        f"{keyed.gw.base_url}{path}",
        json={"model": "demo", "max_tokens": 2, **body},
        headers={"Authorization": f"Bearer {keyed.user}"},
        timeout=60,
    )
    error = _error(response)
    assert error["param"] == param and error["code"] == "invalid_request"


# -- 5: the console's CSRF check ------------------------------------------------------------------

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def test_a_non_ascii_csrf_token_is_a_403(keyed: Keyed) -> None:
    with httpx.Client(base_url=f"{keyed.gw.base_url}/ui", timeout=30) as client:
        token = TOKEN.search(client.get("/login").text).group(1)
        login = {"api_key": keyed.admin, "csrf_token": "tökén"}
        refused = client.post("/login", data=login)
        assert refused.status_code == 403 and "CSRF" in refused.text
        done = client.post("/login", data={**login, "csrf_token": token})
        assert done.status_code == 303, done.text
        logout = client.post("/logout", data={"csrf_token": "ünïcode"})
        assert logout.status_code == 403 and "CSRF" in logout.text
