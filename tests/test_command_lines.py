"""What every `llm-*` command line shares: `--json` before or after the verb, one line and
exit code 2 for bad input, and a gateway that Ctrl-C stops cleanly with exit code 0."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core import cli as stack_cli
from core.console import run
from core.settings import StackSettings
from finetune import cli as finetune_cli
from finetune.demo.random_model import build_random_model
from registry import cli as registry_cli
from registry.entities import VersionKind
from registry.service import open_registry
from serving import cli as serving_cli
from serving.vllm.engine import free_port

COMMANDS = {
    "llmops": stack_cli.cli,
    "llm-registry": registry_cli.cli,
    "llm-finetune": finetune_cli.cli,
    "llm-serve": serving_cli.cli,
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _json(capsys: pytest.CaptureFixture, prog: str, *args: str) -> object:
    assert run(COMMANDS[prog], prog, list(args)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("prog", "args"),
    [
        ("llm-registry", ("list",)),
        ("llmops", ("db", "status")),
        ("llm-finetune", ("list",)),
        ("llm-serve", ("keys", "list")),
    ],
)
def test_json_goes_before_or_after_the_verb(
    home: Path, capsys: pytest.CaptureFixture, prog: str, args: tuple[str, ...]
) -> None:
    assert _json(capsys, prog, *args, "--json") == _json(capsys, prog, "--json", *args)


def test_llm_serve_keys_speak_json(home: Path, capsys: pytest.CaptureFixture) -> None:
    created = _json(capsys, "llm-serve", "keys", "create", "ci", "--rpm", "5", "--json")
    assert created["key"].startswith("llmops-") and created["rpm"] == 5
    revoked = _json(capsys, "llm-serve", "keys", "revoke", created["id"], "--json")
    assert revoked["revoked_at"] is not None


@pytest.mark.parametrize(
    ("prog", "args", "message"),
    [
        ("llm-serve", ("keys", "revoke", "key_nope"), "no API key 'key_nope'"),
        ("llm-serve", ("--port", "99999"), "99999 is not in the range"),
        ("llm-serve", ("--log-level", "bogus"), "'bogus' is not one of 'debug', 'info'"),
        ("llm-serve", ("validate", "--config", "nope.yaml"), "serving config nope.yaml does not"),
        ("llm-registry", ("show", "demo:0001"), "without leading zeros"),
        ("llm-finetune", ("show", "ftjob-nope"), "no fine-tuning job 'ftjob-nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    home: Path, capsys: pytest.CaptureFixture, prog: str, args: tuple[str, ...], message: str
) -> None:
    assert run(COMMANDS[prog], prog, list(args)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and message in lines[0]


def _serve_then_ctrl_c(home: Path, *args: str, **env: str) -> tuple[int, str]:
    """Start `llm-serve`, wait for /health, send SIGINT: its exit code and output."""
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "serving", "--port", str(port), *args],
        env={**os.environ, "LLMOPS_HOME": str(home), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert gateway.poll() is None and time.monotonic() < deadline
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        gateway.send_signal(signal.SIGINT)
        output, _ = gateway.communicate(timeout=60)
    finally:
        gateway.kill()
    return gateway.returncode, output


@pytest.mark.slow
def test_ctrl_c_stops_the_gateway_cleanly_with_exit_0(tmp_path: Path) -> None:
    home = tmp_path / "home"
    registry = open_registry(StackSettings(home=home))
    registry.register("tiny", build_random_model(tmp_path / "model"))
    registry.set_alias("tiny", "production", 1)
    code, output = _serve_then_ctrl_c(home, "--demo", LLMOPS_SERVING_DEMO_MODEL="tiny")
    assert code == 0, output
    assert "Application shutdown complete" in output and "Traceback" not in output
    # --demo registered the demo world's embedding model too
    assert "registered minilm:1 (all-MiniLM-L6-v2 embeddings) as minilm@production" in output
    assert registry.resolve("minilm").kind is VersionKind.EMBEDDING


@pytest.mark.slow
def test_without_demo_the_gateway_builds_and_registers_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    code, output = _serve_then_ctrl_c(home, LLMOPS_SERVING_DEMO_MODEL="")
    assert code == 0, output
    assert "registered" not in output and "Traceback" not in output
    assert open_registry(StackSettings(home=home)).list_models() == []
