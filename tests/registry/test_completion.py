"""Shell completion of model references from the registry, and its progress callbacks."""

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from core.settings import StackSettings
from registry.cli import cli
from registry.completion import complete_model_ref, model_refs
from registry.service import Registry


@pytest.fixture
def demo(registry: Registry, model_dir: Path, other_model_dir: Path) -> Registry:
    registry.register("demo", model_dir)
    registry.register("demo", other_model_dir)
    registry.register("other", model_dir)
    registry.set_alias("demo", "production", 1)
    return registry


def test_names_then_versions_and_aliases(demo: Registry) -> None:
    assert model_refs(demo, "de") == ["demo"]
    assert model_refs(demo, "demo") == ["demo", "demo@production", "demo:1", "demo:2"]
    assert model_refs(demo, "demo:") == ["demo:1", "demo:2"]
    assert model_refs(demo, "demo@p") == ["demo@production"]
    assert model_refs(demo, "") == ["demo", "other"]


def test_completion_through_click(
    demo: Registry, settings: StackSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMOPS_HOME", str(settings.home))
    monkeypatch.setenv("LLMOPS_DATABASE_URL", settings.resolved_database_url)
    result = CliRunner().invoke(
        cli,
        env={
            "_LLM_REGISTRY_COMPLETE": "bash_complete",
            "COMP_WORDS": "llm-registry show de",
            "COMP_CWORD": "2",
        },
        prog_name="llm-registry",
    )
    assert result.output.splitlines() == ["plain,demo"]


def test_completion_never_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "none"))
    monkeypatch.delenv("LLMOPS_DATABASE_URL", raising=False)
    param = click.Argument(["ref"])
    assert complete_model_ref(click.Context(cli), param, "de") == []
    assert not (tmp_path / "none").exists()  # nor does it create a registry
    monkeypatch.setenv("LLMOPS_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/x")
    assert complete_model_ref(click.Context(cli), param, "de") == []


def test_register_and_fetch_report_their_bytes(
    registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    seen: list[tuple[int, int]] = []
    registry.register("demo", model_dir, on_progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 3 * size) and seen[-1] == (3 * size, 3 * size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    seen.clear()
    registry.fetch("demo:1", tmp_path / "out", lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 2 * size) and seen[-1] == (2 * size, 2 * size)
