"""`llm-edge` speaks like the stack's other command lines: --json before or after the
command, and bad input as one line with exit code 2."""

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llmops_edge.cli import main as edge_main
from llmops_edge.device import Device
from llmops_edge.manifest import PublicKey


@pytest.fixture
def device(tmp_path: Path) -> Path:
    pem = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    root = tmp_path / "device"
    Device(root, "dev-1", "http://127.0.0.1:8000", PublicKey.from_pem(pem), None).save()
    return root


@pytest.mark.parametrize("first", [True, False])
def test_json_before_or_after_the_command(
    device: Path, first: bool, capsys: pytest.CaptureFixture
) -> None:
    args = ["status", "--dir", str(device)]
    edge_main(["--json", *args] if first else [*args, "--json"])
    assert json.loads(capsys.readouterr().out) == {
        "device_id": "dev-1",
        "gateway": "http://127.0.0.1:8000",
        "current": None,
        "previous": None,
    }


def test_status_without_json_is_for_people(device: Path, capsys: pytest.CaptureFixture) -> None:
    edge_main(["status", "--dir", str(device)])
    assert capsys.readouterr().out.splitlines()[0].split() == ["device_id", "dev-1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status"], "the following arguments are required: --dir (see `llm-edge status --help`)"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["status", "--dir", "/no/such/device"], "is not an enrolled device folder"),
        (["enroll", "--gateway", "ftp://x", "--dir", "d"], "is not an http(s) URL"),
        (["--json", "rollback", "--dir", "DEVICE"], "has no previous bundle to roll back to"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(
    device: Path, args: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exited:
        edge_main([str(device) if a == "DEVICE" else a for a in args])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("llm-edge: error: ")
    assert message in lines[0]
