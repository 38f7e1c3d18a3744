"""Registry operations, run against SQLite and PostgreSQL."""

import stat
from pathlib import Path

import pytest

from core.errors import ErrorCode, StackError
from core.settings import StackSettings
from registry.entities import FINE_TUNED_TAG, AliasAction, VersionFormat, VersionKind
from registry.errors import RegistryError
from registry.gates import GateResult, MetricGate, load_gate
from registry.service import Registry, open_registry
from tests.registry.conftest import make_model_dir


def _code(err: pytest.ExceptionInfo[StackError]) -> ErrorCode:
    return err.value.code


def test_register_assigns_numbers_and_records_fields(
    registry: Registry, model_dir: Path, other_model_dir: Path
) -> None:
    v1 = registry.register(
        "demo",
        model_dir,
        metrics={"exact_match": 0.9},
        tags={"seed": "0"},
        dataset_digests=["sha256:abc"],
        source="test",
        description="a demo",
    )
    v2 = registry.register(
        "demo", other_model_dir, kind="adapter", parent="demo:1", recipe_digest="sha256:r"
    )
    assert (v1.ref, v2.ref) == ("demo:1", "demo:2")
    assert v1.kind is VersionKind.BASE and v2.kind is VersionKind.ADAPTER
    assert v1.metrics == {"exact_match": 0.9} and v1.tags == {"seed": "0"}
    assert v1.dataset_digests == ("sha256:abc",) and v1.created_by == "tester"
    assert v2.parent == "demo:1" and v2.recipe_digest == "sha256:r"
    assert v1.created_at.tzinfo is not None
    assert registry.store.get_model("demo").description == "a demo"
    assert registry.resolve("demo:2") == v2


def test_show_walks_lineage(registry: Registry, tmp_path: Path) -> None:
    registry.register("base", make_model_dir(tmp_path / "b", 1))
    registry.register("tuned", make_model_dir(tmp_path / "t", 2), parent="base:1")
    registry.register("tuned", make_model_dir(tmp_path / "m", 3), kind="merged", parent="tuned:1")
    details = registry.show("tuned:2")
    assert [v.ref for v in details.lineage] == ["tuned:1", "base:1"]


def test_duplicate_registration_is_refused(registry: Registry, model_dir: Path) -> None:
    registry.register("demo", model_dir)
    with pytest.raises(RegistryError, match=r"demo:1 already holds this artifact") as err:
        registry.register("demo", model_dir)
    assert _code(err) is ErrorCode.ALREADY_EXISTS
    assert [v.ref for v in registry.list_versions("demo")] == ["demo:1"]


@pytest.mark.parametrize("name", ["../x", "", "x" * 200, "a/b"])
def test_invalid_names_register_nothing(registry: Registry, model_dir: Path, name: str) -> None:
    with pytest.raises(StackError) as err:
        registry.register(name, model_dir)
    assert _code(err) is ErrorCode.INVALID
    assert registry.list_models() == []
    assert not (registry.artifacts.root / "manifests").exists()


def test_unknown_references(registry: Registry, model_dir: Path) -> None:
    with pytest.raises(RegistryError, match="model 'nope' does not exist") as err:
        registry.resolve("nope:1")
    assert _code(err) is ErrorCode.NOT_FOUND
    registry.register("demo", model_dir)
    with pytest.raises(RegistryError, match="has no version 7"):
        registry.resolve("demo:7")
    with pytest.raises(RegistryError, match="has no alias 'production'"):
        registry.resolve("demo")
    with pytest.raises(RegistryError, match="has no alias 'staging'"):
        registry.resolve("demo@staging")
    with pytest.raises(RegistryError, match="has no version 3"):
        registry.register("demo", model_dir, parent="demo:3")
    with pytest.raises(RegistryError, match="unknown kind 'weights'"):
        registry.register("demo", model_dir, kind="weights")


def test_promote_rollback_and_history(
    registry: Registry, model_dir: Path, other_model_dir: Path
) -> None:
    registry.register("demo", model_dir)
    registry.register("demo", other_model_dir)
    registry.set_alias("demo", "production", 1, reason="first")
    event = registry.promote("demo:2", "staging", reason="try it")
    assert (event.from_version, event.to_version, event.action) == (None, 2, AliasAction.PROMOTE)
    assert event.gate["gate"] == "none" and event.gate["passed"] is True
    registry.promote("demo@staging", "production", reason="ship")
    assert registry.resolve("demo").version == 2
    back = registry.rollback("demo", "production", reason="bad answers")
    assert (back.from_version, back.to_version, back.action) == (2, 1, AliasAction.ROLLBACK)
    assert registry.resolve("demo").version == 1
    history = registry.history("demo", "production")
    assert [(e.action, e.from_version, e.to_version, e.reason) for e in history] == [
        (AliasAction.SET, None, 1, "first"),
        (AliasAction.PROMOTE, 1, 2, "ship"),
        (AliasAction.ROLLBACK, 2, 1, "bad answers"),
    ]
    assert all(e.actor == "tester" for e in history)
    assert len(registry.history("demo")) == 4


def test_rollback_needs_a_previous_version(registry: Registry, model_dir: Path) -> None:
    registry.register("demo", model_dir)
    registry.set_alias("demo", "staging", 1)
    with pytest.raises(RegistryError, match="no previous version") as err:
        registry.rollback("demo", "staging")
    assert _code(err) is ErrorCode.CONFLICT
    with pytest.raises(RegistryError, match="no previous version"):
        registry.rollback("demo", "production")


def test_delete_alias_is_audited(registry: Registry, model_dir: Path) -> None:
    registry.register("demo", model_dir)
    registry.set_alias("demo", "canary", 1)
    event = registry.delete_alias("demo", "canary", reason="done")
    assert (event.from_version, event.to_version) == (1, None)
    assert registry.aliases("demo") == []
    with pytest.raises(RegistryError, match="no alias 'canary'"):
        registry.delete_alias("demo", "canary")


def test_metric_gate_blocks_then_force_needs_reason(
    registry: Registry, model_dir: Path, other_model_dir: Path
) -> None:
    registry.gate = MetricGate("exact_match")
    registry.register("demo", model_dir, metrics={"exact_match": 0.9})
    registry.register("demo", other_model_dir, metrics={"exact_match": 0.5})
    registry.promote("demo:1", "production")
    with pytest.raises(RegistryError, match="failed gate metric:exact_match") as err:
        registry.promote("demo:2", "production")
    assert _code(err) is ErrorCode.GATE_FAILED
    assert registry.resolve("demo").version == 1
    with pytest.raises(RegistryError, match="forced promotion needs a reason"):
        registry.promote("demo:2", "production", force=True)
    event = registry.promote("demo:2", "production", force=True, reason="hotfix")
    assert event.forced and event.gate["passed"] is False and event.reason == "hotfix"
    assert registry.resolve("demo").version == 2


def test_gate_sees_candidate_and_champion(
    registry: Registry, model_dir: Path, other_model_dir: Path
) -> None:
    seen = []

    def gate(candidate, champion, alias):
        seen.append((candidate.ref, champion.ref if champion else None))
        return GateResult("custom", True)

    registry.gate = gate
    registry.register("demo", model_dir)
    registry.register("demo", other_model_dir)
    registry.promote("demo:1", "production")
    registry.promote("demo:2", "production")
    assert seen == [("demo:1", None), ("demo:2", "demo:1")]


def test_load_gate_specs() -> None:
    assert load_gate("metric:accuracy") == MetricGate("accuracy")
    with pytest.raises(StackError, match=r"promotion_gate 'no\.such\.module:gate' cannot be"):
        load_gate("no.such.module:gate")


def test_archive(registry: Registry, model_dir: Path, other_model_dir: Path) -> None:
    registry.register("demo", model_dir)
    registry.register("demo", other_model_dir)
    registry.set_alias("demo", "production", 1)
    with pytest.raises(RegistryError, match="still the target of alias") as err:
        registry.archive("demo:1")
    assert _code(err) is ErrorCode.CONFLICT
    archived = registry.archive("demo:2")
    assert archived.archived_at is not None
    assert [v.ref for v in registry.list_versions("demo")] == ["demo:1"]
    assert len(registry.list_versions("demo", include_archived=True)) == 2
    with pytest.raises(RegistryError, match="is archived"):
        registry.promote("demo:2", "production")
    assert registry.resolve("demo").version == 1


def test_search_by_kind_format_and_tags(registry: Registry, tmp_path: Path) -> None:
    registry.register("a", make_model_dir(tmp_path / "1", 1), tags={"team": "x"})
    registry.register(
        "b",
        make_model_dir(tmp_path / "2", 2),
        kind="quantized",
        format="onnx",
        tags={"team": "y", "bits": "8"},
    )
    quantized = registry.list_versions(kind=VersionKind.QUANTIZED)
    assert [(v.ref, v.format) for v in quantized] == [("b:1", VersionFormat.ONNX)]
    assert [v.ref for v in registry.list_versions(tags={"team": "x"})] == ["a:1"]
    assert [v.ref for v in registry.list_versions(tags={"bits": None})] == ["b:1"]
    assert registry.list_versions(tags={"team": "x", "bits": "8"}) == []
    assert [m.name for m in registry.list_models("b")] == ["b"]
    with pytest.raises(RegistryError, match="values up to 512"):
        registry.register("c", make_model_dir(tmp_path / "4", 4), tags={"long": "x" * 513})
    with pytest.raises(RegistryError, match="unknown format 'pickle'"):
        registry.register("c", make_model_dir(tmp_path / "3", 3), format="pickle")


def test_lists_page_with_a_limit_and_a_cursor(registry: Registry, tmp_path: Path) -> None:
    for i in range(5):
        registry.register("m", make_model_dir(tmp_path / str(i), i))
        registry.register(f"x{i}", make_model_dir(tmp_path / f"x{i}", 10 + i))
    first = registry.list_versions("m", limit=2)
    assert [v.ref for v in first] == ["m:1", "m:2"]
    rest = registry.list_versions("m", limit=10, after=first[-1].ref)
    assert [v.ref for v in rest] == ["m:3", "m:4", "m:5"]
    assert [m.name for m in registry.list_models(limit=2, after="m")] == ["x0", "x1"]
    assert registry.store.get_model("m").latest_version == 5
    for version in (1, 2, 3):
        registry.set_alias("m", "production", version)
    events = registry.history("m", limit=1, after=registry.history("m")[0].id)
    assert [(e.from_version, e.to_version) for e in events] == [(1, 2)]


def test_fine_tuned_names_resolve_by_their_tag(registry: Registry, tmp_path: Path) -> None:
    registry.register("demo", make_model_dir(tmp_path / "base", 1))
    adapter = registry.register(
        "demo-rev",
        make_model_dir(tmp_path / "adapter", 2),
        kind="adapter",
        format="peft-lora",
        parent="demo:1",
        tags={FINE_TUNED_TAG: "ft:demo:rev:ftjob-1"},
    )
    assert registry.resolve("ft:demo:rev:ftjob-1") == adapter
    with pytest.raises(RegistryError, match="no fine-tuned model 'ft:demo:rev:ftjob-2'"):
        registry.resolve("ft:demo:rev:ftjob-2")


def test_fetch_and_verify_through_registry(
    registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    registry.register("demo", model_dir)
    registry.set_alias("demo", "production", 1)
    registry.fetch("demo", tmp_path / "copy")
    assert (tmp_path / "copy" / "model.safetensors").read_bytes() == (
        model_dir / "model.safetensors"
    ).read_bytes()
    assert len(registry.verify("demo:1").files) == 3


def test_the_state_folder_and_database_are_private(tmp_path: Path) -> None:
    stack = StackSettings(home=tmp_path / "new-home")
    registry = open_registry(stack)
    registry.register("demo", make_model_dir(tmp_path / "m", 1))
    home = stack.resolved_home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for name in ("registry.db", "registry.db-wal"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
