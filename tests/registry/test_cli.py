"""`llm-registry` as a user runs it: a real process per command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import StackSettings


def _run(settings: StackSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LLMOPS_HOME": str(settings.home),
        "LLMOPS_DATABASE_URL": settings.resolved_database_url,
        "LLMOPS_ACTOR": "cli-user",
    }
    return subprocess.run(
        [sys.executable, "-m", "registry", *args], env=env, capture_output=True, text=True
    )


def _ok(settings: StackSettings, *args: str) -> str:
    result = _run(settings, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_round_trip(
    settings: StackSettings, model_dir: Path, other_model_dir: Path, tmp_path: Path
) -> None:
    assert "registered demo:1" in _ok(
        settings, "register", "demo", str(model_dir), "--metric", "em=0.9"
    )
    _ok(settings, "alias", "set", "demo", "production", "1", "--reason", "first")
    _ok(settings, "register", "demo", str(other_model_dir), "--parent", "demo", "--kind", "adapter")
    listing = _ok(settings, "list", "demo")
    assert "demo:2" in listing and "demo:1" in listing and "production" in listing
    shown = json.loads(_ok(settings, "--json", "show", "demo:2"))
    assert shown["parent"] == "demo:1" and [p["ref"] for p in shown["lineage"]] == ["demo:1"]
    assert "demo@staging: promote - -> 2" in _ok(settings, "promote", "demo:2", "staging")
    _ok(settings, "promote", "demo@staging", "production", "--reason", "ship")
    assert "rollback 2 -> 1" in _ok(settings, "rollback", "demo", "production")
    history = json.loads(_ok(settings, "--json", "history", "demo", "--alias", "production"))
    assert [(e["action"], e["from_version"], e["to_version"]) for e in history] == [
        ("set", None, 1),
        ("promote", 1, 2),
        ("rollback", 2, 1),
    ]
    assert all(e["actor"] == "cli-user" for e in history)
    _ok(settings, "fetch", "demo", str(tmp_path / "fetched"))
    assert (tmp_path / "fetched" / "config.json").is_file()
    assert "all match" in _ok(settings, "verify", "demo:2")
    assert _run(settings, "archive", "demo:2").returncode == 2  # staging still points at it
    _ok(settings, "alias", "delete", "demo", "staging")
    assert "archived demo:2" in _ok(settings, "archive", "demo:2")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "nope:1"), "model 'nope' does not exist"),
        (("show", "../x"), "invalid model name '../x'"),
        (("show", "demo:0"), "must be a positive integer"),
        (("promote",), "Missing argument 'REF'"),
        (("frobnicate",), "No such command 'frobnicate'"),
        (("register", "demo", "/no/such/dir"), "/no/such/dir is not a directory"),
        (("register", "x", "/tmp", "--metric", "em"), "'em' is not KEY=VALUE"),
        (("alias", "set", "demo", "Bad Alias", "1"), "invalid alias 'Bad Alias'"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(
    settings: StackSettings, args: tuple[str, ...], message: str
) -> None:
    result = _run(settings, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llm-registry: error: ")
    assert message in lines[0]


@pytest.mark.slow
def test_tampered_artifact_fails_verify(settings: StackSettings, model_dir: Path) -> None:
    _ok(settings, "register", "demo", str(model_dir))
    blob = next(
        p
        for p in (settings.home / "artifacts" / "blobs").rglob("*")
        if p.is_file() and p.stat().st_size > 100
    )
    blob.write_bytes(b"\x00" + blob.read_bytes()[1:])
    result = _run(settings, "verify", "demo:1")
    assert result.returncode == 1
    assert "model.safetensors does not match its digest" in result.stderr


@pytest.mark.slow
def test_a_promotion_request_is_approved_by_someone_else(
    settings: StackSettings, model_dir: Path, other_model_dir: Path
) -> None:
    _ok(settings, "register", "demo", str(model_dir))
    _ok(settings, "alias", "set", "demo", "production", "1")
    _ok(settings, "register", "demo", str(other_model_dir), "--parent", "demo:1")
    assert _run(settings, "request", "create", "demo:2").returncode == 2  # no reason
    made = _ok(settings, "request", "create", "demo:2", "production", "--reason", "better")
    assert made.strip() == "request 1: demo:2 to @production pending"
    own = _run(settings, "request", "approve", "demo", "1")
    assert own.returncode == 2 and "a second person must approve" in own.stderr
    env_bob = {**os.environ, "LLMOPS_HOME": str(settings.home), "LLMOPS_ACTOR": "bob"}
    env_bob["LLMOPS_DATABASE_URL"] = settings.resolved_database_url
    approved = subprocess.run(
        [sys.executable, "-m", "registry", "request", "approve", "demo", "1"],
        env=env_bob,
        capture_output=True,
        text=True,
    )
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == "demo@production: promote 1 -> 2"
    listed = json.loads(_ok(settings, "--json", "request", "list", "demo"))
    assert [(r["status"], r["requested_by"], r["decided_by"]) for r in listed] == [
        ("approved", "cli-user", "bob")
    ]


@pytest.mark.slow
def test_a_two_person_alias_moves_alone_only_with_a_break_glass_reason(
    settings: StackSettings, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMOPS_TWO_PERSON_ALIASES", "production")
    _ok(settings, "register", "demo", str(model_dir))
    refused = _run(settings, "alias", "set", "demo", "production", "1")
    assert refused.returncode == 2 and refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "give a break-glass reason (--break-glass" in refused.stderr
    moved = _ok(settings, "alias", "set", "demo", "production", "1", "--break-glass", "first")
    assert moved.strip() == "demo@production: set - -> 1 (break-glass, recorded)"
    assert _run(settings, "promote", "demo:1", "production").returncode == 2
    history = json.loads(_ok(settings, "--json", "history", "demo"))
    assert [(e["action"], e["break_glass_reason"]) for e in history] == [("set", "first")]
