"""The README's registry round trip on a tiny demo model, as a user runs it: the build script,
then `llm-registry` commands, each a real process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(home: Path, *args: str) -> str:
    env = {**os.environ, "LLMOPS_HOME": str(home), "LLMOPS_ACTOR": "ops"}
    env.pop("LLMOPS_DATABASE_URL", None)
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_build_list_show_promote_rollback_history(tmp_path: Path) -> None:
    home = tmp_path / "home"
    script = [sys.executable, "scripts/build_demo_model.py", "--tiny"]
    registry = [sys.executable, "-m", "registry"]

    built = json.loads(_run(home, *script, "--output", str(tmp_path / "v1")))
    assert built["registered"] == "demo:1"
    assert "production->1" in _run(home, *registry, "list")

    _run(home, *script, "--seed", "1", "--output", str(tmp_path / "v2"), "--no-register")
    _run(home, *registry, "register", "demo", str(tmp_path / "v2"), "--parent", "demo:1")
    shown = json.loads(_run(home, *registry, "--json", "show", "demo:2"))
    assert [p["ref"] for p in shown["lineage"]] == ["demo:1"] and shown["kind"] == "base"

    _run(home, *registry, "promote", "demo:2", "staging", "--reason", "candidate")
    _run(home, *registry, "promote", "demo@staging", "production", "--reason", "ship it")
    assert json.loads(_run(home, *registry, "--json", "show", "demo"))["ref"] == "demo:2"
    _run(home, *registry, "rollback", "demo", "production", "--reason", "answers got worse")
    assert json.loads(_run(home, *registry, "--json", "show", "demo"))["ref"] == "demo:1"

    history = json.loads(_run(home, *registry, "--json", "history", "demo"))
    assert [(e["alias"], e["action"], e["from_version"], e["to_version"]) for e in history] == [
        ("production", "set", None, 1),
        ("staging", "promote", None, 2),
        ("production", "promote", 1, 2),
        ("production", "rollback", 2, 1),
    ]
    assert history[-1]["reason"] == "answers got worse" and history[-1]["actor"] == "ops"
