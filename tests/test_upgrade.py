"""A state folder made by release 0.1.0 upgrades in place: every model, version, alias, audit
event, key, traffic record, file and job survives, on SQLite and PostgreSQL.

`fixtures/release-0.1.0` was written by that release itself (`make_fixture.py`, run at its
commit): a home with its SQLite database and artifacts, and a `pg_dump` of the same state
written to PostgreSQL."""

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import inspect

from core import cli as stack_cli
from core.console import run
from core.database import dispose_engines, engine_for, open_database
from core.errors import ErrorCode, StackError
from core.settings import StackSettings
from finetune.files import FileStore
from finetune.jobs import JobStatus
from finetune.runner import JobRunner
from registry.entities import FINE_TUNED_TAG, VersionFormat, VersionKind
from registry.service import open_registry
from registry.tables import CHAIN as REGISTRY_CHAIN
from serving.keys import KeyStore
from serving.tables import CHAIN as SERVING_CHAIN
from serving.traffic import TrafficLog

FIXTURE = Path(__file__).parent / "fixtures" / "release-0.1.0"
SECRETS = json.loads((FIXTURE / "admin-secrets.json").read_text())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def old_release(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[StackSettings, str]:
    """A copy of release 0.1.0's state, and its first admin key's secret."""
    home = tmp_path / "home"
    shutil.copytree(FIXTURE / "home", home)
    if request.param == "sqlite":
        return StackSettings(home=home, actor="upgrader"), SECRETS["sqlite"]
    url = request.getfixturevalue("postgres_url")
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        conn.execute((FIXTURE / "postgres.sql").read_text())
    (home / "registry.db").unlink()
    return StackSettings(home=home, database_url=url, actor="upgrader"), SECRETS["postgres"]


def test_everything_survives_the_upgrade(old_release: tuple[StackSettings, str]) -> None:
    stack, admin_secret = old_release
    registry = open_registry(stack)

    assert [m.name for m in registry.list_models()] == ["demo", "demo-rev"]
    versions = registry.list_versions(include_archived=True)
    assert [(v.ref, v.kind, v.format) for v in versions] == [
        ("demo:1", VersionKind.BASE, VersionFormat.HF_SAFETENSORS),
        ("demo:2", VersionKind.BASE, VersionFormat.HF_SAFETENSORS),
        ("demo:3", VersionKind.BASE, VersionFormat.HF_SAFETENSORS),  # was "custom-format"
        ("demo-rev:1", VersionKind.ADAPTER, VersionFormat.PEFT_LORA),
    ]
    demo2, demo3, adapter = versions[1], versions[2], versions[3]
    assert demo2.parent == "demo:1" and demo2.tags == {"team": "ml"}
    assert demo2.metrics == {"exact_match": 0.7} and demo3.archived_at is not None
    assert adapter.parent == "demo:1" and adapter.tags["lora_r"] == "8"
    assert adapter.dataset_digests == ("sha256:" + "b" * 64,)
    assert registry.resolve(adapter.tags[FINE_TUNED_TAG]) == adapter
    assert {(a.name, a.alias): a.version for a in registry.aliases()} == {
        ("demo", "production"): 1,
        ("demo", "staging"): 2,
        ("demo-rev", "staging"): 1,
    }
    moves = [
        (e.alias, e.action.value, e.from_version, e.to_version) for e in registry.history("demo")
    ]
    assert moves == [
        ("production", "set", None, 1),
        ("staging", "promote", None, 2),
        ("production", "promote", 1, 2),
        ("production", "rollback", 2, 1),
    ]
    assert {e.actor for e in registry.history("demo")} == {"release-0.1.0"}
    assert registry.verify("demo:2").files and registry.verify("demo-rev:1").files

    keys = KeyStore(open_database(stack.resolved_database_url, SERVING_CHAIN))
    assert sorted(k.name for k in keys.list_keys(include_revoked=True)) == ["app", "old", "ops"]
    assert [k.name for k in keys.list_keys()] == ["ops", "app"]
    assert keys.authenticate(admin_secret).admin
    traffic = TrafficLog(keys.engine)
    try:
        records = traffic.window(datetime(2000, 1, 1, tzinfo=UTC))
    finally:
        traffic.close()
    assert sorted(r.request_id for r in records) == [f"req-{i}" for i in range(5)]
    assert {r.version for r in records} == {"demo:1"}

    runner = JobRunner.open(stack)
    files = FileStore(runner.store.engine).list()
    assert [(f.id, f.rows) for f in files] == [("file-0123456789abcdef01234567", 1)]
    jobs = runner.store.list_jobs()
    assert sorted(j.status for j in jobs) == [JobStatus.QUEUED, JobStatus.SUCCEEDED]
    assert {j.kind for j in jobs} == {"fine-tune"}
    done = next(j for j in jobs if j.status is JobStatus.SUCCEEDED)
    assert done.fine_tuned_model == f"ft:demo:rev:{done.id}" and done.trained_tokens == 100
    assert runner.store.list_events(done.id)[0].message.startswith("Step 1/2")
    assert [c.step for c in runner.store.list_checkpoints(done.id)] == [1]

    # The upgraded database takes new writes: new rows get fresh ids after the copied ones.
    added = registry.register("demo", FIXTURE / "home" / "files", tags={"fresh": "yes"})
    assert added.ref == "demo:4"
    event = registry.promote("demo:4", "production", reason="after the upgrade")
    assert event.id > max(e.id for e in registry.history("demo")[:-1])

    tables = set(inspect(engine_for(stack.resolved_database_url)).get_table_names())
    assert "alembic_version" not in tables
    assert not {"models", "model_versions", "aliases", "api_keys", "traffic", "files"} & tables


def test_the_explicit_upgrade_reports_each_package(
    old_release: tuple[StackSettings, str], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    stack, _ = old_release
    for key, value in stack.environment().items():
        monkeypatch.setenv(key, value)
    assert run(stack_cli.cli, stack_cli.PROG, ["--json", "db", "status"]) == 0
    before = {s["chain"]: s["current"] for s in json.loads(capsys.readouterr().out)}
    # Release 0.1.0 kept the registry's revision in alembic's default table, and had no
    # evaluation tables.
    assert before == {"evals": None, "finetune": "f0001", "registry": "0001", "serving": "s0001"}
    assert run(stack_cli.cli, stack_cli.PROG, ["--json", "db", "upgrade"]) == 0
    moved = {s["chain"]: (s["from"], s["to"]) for s in json.loads(capsys.readouterr().out)}
    assert moved == {
        "evals": (None, "e0005"),
        "finetune": ("f0001", "f0004"),
        "registry": ("0001", "0004"),
        "serving": ("s0001", "s0013"),
    }
    assert run(stack_cli.cli, stack_cli.PROG, ["db", "upgrade"]) == 0
    assert capsys.readouterr().out.count("up to date") == 4


def test_a_schema_newer_than_the_code_is_refused(tmp_path: Path, capsys) -> None:
    stack = StackSettings(home=tmp_path / "home")
    engine = open_database(stack.resolved_database_url, REGISTRY_CHAIN)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {REGISTRY_CHAIN.version_table} SET version_num = '0999'")
    dispose_engines()  # a new process, with an older release of the code
    with pytest.raises(StackError, match="newer release of llmops-stack") as err:
        open_registry(stack)
    assert err.value.code is ErrorCode.UNAVAILABLE
