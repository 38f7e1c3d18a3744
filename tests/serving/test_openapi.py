"""The OpenAPI document tells the truth: schemathesis fuzzes every route of a running gateway
with an admin key, finding no server error, no undocumented status code or content type, no
schema-valid request refused and no schema-violating one accepted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import LIMITS, RunningGateway, running_gateway

# Uploads are checked beyond what a schema can say (JSONL rows, tar archives): a
# schema-valid upload of random bytes is refused, and rightly so. A body over the gateway's
# size limit is refused with 413 before it is parsed, and schemathesis' over-long strings can
# make one that large. What else the schema cannot say is filtered by HOOKS.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]

[checks.positive_data_acceptance]
enabled = true

[[operations]]
include-path = "/v1/files"
include-method = "POST"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path-regex = "/versions/upload$"
checks.positive_data_acceptance.enabled = false
"""
# The fuzzing run's limit, below the test's own (which adds the gateway's start and stop): a
# stuck run is stopped by the test, which then shuts its gateway down, not by pytest-timeout.
FUZZ_TIMEOUT_S = 780
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")


@pytest.mark.slow
@pytest.mark.timeout(FUZZ_TIMEOUT_S + 120)
def test_schemathesis_finds_nothing(tmp_path: Path, random_model_dir: Path) -> None:
    with running_gateway(tmp_path / "home", random_model_dir, limits=LIMITS) as gw:
        _, admin = gw.gateway.keys.create("fuzzer", admin=True)
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG)
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "--config-file",
                str(config),
                "run",
                f"{gw.base_url}/openapi.json",
                "-H",
                f"Authorization: Bearer {admin}",
                "--max-examples",
                "25",
                "--seed",
                "7",
            ],
            capture_output=True,
            text=True,
            timeout=FUZZ_TIMEOUT_S,
            env={
                **os.environ,
                "SCHEMATHESIS_HOOKS": str(HOOKS),
                "FUZZ_VOCAB_SIZE": str(
                    json.loads((random_model_dir / "config.json").read_text())["vocab_size"]
                ),
            },
        )
    assert result.returncode == 0, result.stdout[-6000:]
    assert "Schema-valid request rejected" not in result.stdout


def test_a_wrong_method_gets_405_with_every_allowed_method(
    gateway_server: RunningGateway,
) -> None:
    reply = httpx.post(f"{gateway_server.base_url}/v1/registry/models/demo/aliases/production")
    assert reply.status_code == 405
    assert reply.headers["allow"] == "DELETE, PUT"
    assert reply.json()["error"]["code"] == "method_not_allowed"


def test_the_document_names_error_responses_and_content_types(
    gateway_server: RunningGateway,
) -> None:
    document = httpx.get(f"{gateway_server.base_url}/openapi.json").json()
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "403", "404", "413", "429", "503"} <= set(chat)
    assert {"application/json", "text/event-stream"} <= set(chat["200"]["content"])
    assert "ErrorEnvelope" in str(chat["400"])
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    assert "HTTPValidationError" not in str(document)
    name = document["paths"]["/v1/registry/models/{name}/versions"]["get"]["parameters"][0]
    assert name["schema"]["pattern"].startswith("^[A-Za-z0-9]")
