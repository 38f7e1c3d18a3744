"""`llm-serve edge`: the operator's public key, devices added with their keys, the fleet, and
removal, which revokes the device's key."""

import json
from pathlib import Path

import pytest

from core.console import run
from core.settings import StackSettings
from llmops_edge.manifest import PublicKey
from serving import cli as serving_cli


def _serve(capsys: pytest.CaptureFixture, *args: str) -> str:
    capsys.readouterr()
    assert run(serving_cli.cli, serving_cli.PROG, list(args)) == 0
    return capsys.readouterr().out


def test_an_operator_manages_the_fleet_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    pem = _serve(capsys, "edge", "public-key")
    key = json.loads(_serve(capsys, "--json", "edge", "public-key"))
    assert PublicKey.from_pem(pem).fingerprint == key["key_id"]
    stored = StackSettings().resolved_home / "edge" / "signing_key.pem"
    assert stored.stat().st_mode & 0o077 == 0

    added = json.loads(
        _serve(capsys, "edge", "add", "kiosk-1", "--model", "demo-onnx@edge", "--json")
    )
    assert added["key"].startswith("llmops-") and added["model"] == "demo-onnx@edge"
    keys = json.loads(_serve(capsys, "keys", "list", "--json"))
    assert [(k["name"], k["models"], k["admin"]) for k in keys] == [
        ("edge:kiosk-1", ["demo-onnx"], False)
    ]
    assert "kiosk-1  demo-onnx@edge  -" in _serve(capsys, "edge", "devices")
    assert (
        run(serving_cli.cli, serving_cli.PROG, ["edge", "add", "kiosk-1", "--model", "x@edge"]) == 2
    )
    assert "edge device 'kiosk-1' exists" in capsys.readouterr().err

    assert "is revoked" in _serve(capsys, "edge", "remove", "kiosk-1")
    assert json.loads(_serve(capsys, "edge", "devices", "--json")) == []
    assert json.loads(_serve(capsys, "keys", "list", "--json")) == []
