"""The README's tutorial runs as written: every `$ ` command of the fenced blocks under its
"Tutorial" heading, in order, in a fresh LLMOPS_HOME on the demo world, exits 0.

Where the tutorial has the gateway of `make run` running in another terminal, the test
registers the session's demo build (what `llm-serve --demo` would build) and starts `llm-serve`
in the background on a free port, which replaces the tutorial's 8000."""

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.settings import StackSettings
from finetune.demo.build import DemoBuild, register_demo_model
from registry.service import open_registry

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
TUTORIAL_HEADING = re.compile(r"^## Tutorial\b")
GATEWAY = "127.0.0.1:8000"


def _unfinished(command: str) -> bool:
    """Whether bash would read another line: a trailing backslash, or an open quote."""
    if command.endswith("\\"):
        return True
    try:
        shlex.split(command)
    except ValueError:  # no closing quotation
        return True
    return False


def tutorial_commands(readme: str) -> list[str]:
    """The `$ ` commands of the fenced blocks between the tutorial's heading and the next `## `
    heading, each joined as bash joins its lines (a trailing backslash, an open quote)."""
    lines = readme.splitlines()
    start = next(i for i, line in enumerate(lines) if TUTORIAL_HEADING.match(line))
    commands: list[str] = []
    fenced = False
    pending: str | None = None
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            continue
        if pending is not None:
            if pending.endswith("\\"):
                pending = pending.removesuffix("\\").rstrip() + " " + line.strip()
            else:
                pending += "\n" + line
        elif line.startswith("$ "):
            pending = line[2:].strip()
        else:
            continue  # the command's output
        if not _unfinished(pending):
            commands.append(pending)
            pending = None
    assert pending is None, f"the tutorial's last command does not end: {pending}"
    return commands


def test_the_tutorial_is_found_and_short() -> None:
    commands = tutorial_commands(README.read_text())
    assert 8 <= len(commands) <= 12, commands
    assert any(c.startswith("llm-finetune demo-data") for c in commands)
    assert any("llm-registry promote" in c for c in commands)
    assert any(c.startswith("llm-registry rollback") for c in commands)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tutorial_world(tmp_path: Path, demo_build: DemoBuild) -> Iterator[tuple[Path, dict, int]]:
    """A fresh home holding the demo model, a working folder that sees the repository's
    configs, and a gateway serving them as `make run` would."""
    home = tmp_path / "home"
    register_demo_model(open_registry(StackSettings(home=home, actor="tutorial")), demo_build)
    work = tmp_path / "work"
    work.mkdir()
    (work / "configs").symlink_to(ROOT / "configs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPS_")}
    env |= {
        "LLMOPS_HOME": str(home),
        "LLMOPS_ACTOR": "tutorial",
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
    }
    port = _free_port()
    log = (tmp_path / "gateway.log").open("w")
    gateway = subprocess.Popen(
        [str(BIN / "llm-serve"), "--port", str(port)],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert gateway.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway did not get ready in 300 s"
            time.sleep(0.5)
        yield work, env, port
    finally:
        gateway.terminate()
        try:
            gateway.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
        log.close()


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_readme_tutorial_runs_as_written(tutorial_world: tuple[Path, dict, int]) -> None:
    work, env, port = tutorial_world
    commands = tutorial_commands(README.read_text())
    for number, command in enumerate(commands, 1):
        command = command.replace(GATEWAY, f"127.0.0.1:{port}")
        started = time.monotonic()
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,  # minutes on a quiet laptop; a shared CPU is many times slower
        )
        took = time.monotonic() - started
        print(f"[{number}] {took:6.1f} s  $ {shlex.split(command)[0]} ...")
        assert result.returncode == 0, (
            f"tutorial command {number} exited {result.returncode}: {command}\n"
            f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
        )
