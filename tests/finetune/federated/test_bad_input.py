"""Bad federated input: each a one-line error (exit code 2) before any job or process starts,
and nothing registered."""

from pathlib import Path

import pytest

from core.settings import StackSettings
from finetune.cli import main
from finetune.errors import RecipeError
from finetune.federated.config import load_federated_config
from finetune.jobs import JobStore
from registry.service import open_registry
from tests.finetune.federated.conftest import tiny_config, write_config


@pytest.fixture
def registered_home(home: Path, base_model_dir: Path) -> Path:
    registry = open_registry(StackSettings())
    registry.register("demo", base_model_dir)
    registry.set_alias("demo", "production", 1)
    return home


def _run(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["federated", "run", str(config)])
    return code, capsys.readouterr().err.strip()


def _nothing_happened(home: Path) -> None:
    settings = StackSettings()
    assert JobStore.open(settings.resolved_database_url).list_jobs() == []
    assert [v.name for v in open_registry(settings).list_versions()] == ["demo"]


def test_an_unknown_key_names_the_nearest_one(tmp_path: Path, silo_dirs: dict[str, Path]) -> None:
    data = tiny_config(silo_dirs, roundz=3)
    with pytest.raises(RecipeError, match=r"unknown key 'roundz'; did you mean 'rounds'\?"):
        load_federated_config(write_config(tmp_path / "f.yaml", data))
    data = tiny_config(silo_dirs)
    data["strategy"]["min_silo"] = 2
    with pytest.raises(RecipeError, match=r"in strategy: 'min_silo'; did you mean 'min_silos'\?"):
        load_federated_config(write_config(tmp_path / "f.yaml", data))


def test_unknown_key_on_the_command_line(
    tmp_path: Path, silo_dirs: dict[str, Path], registered_home: Path, capsys
) -> None:
    data = tiny_config(silo_dirs)
    data["privacy"] = {"differential_privacy": {"enabled": True, "noise_multipler": 1.0}}
    code, err = _run(write_config(tmp_path / "f.yaml", data), capsys)
    assert code == 2
    assert "did you mean 'noise_multiplier'?" in err and len(err.splitlines()) == 1
    _nothing_happened(registered_home)


def test_a_silo_with_unreadable_data(
    tmp_path: Path, silo_dirs: dict[str, Path], registered_home: Path, capsys
) -> None:
    with (silo_dirs["b"] / "train.jsonl").open("a") as rows:
        rows.write("{not json\n")
    code, err = _run(write_config(tmp_path / "f.yaml", tiny_config(silo_dirs)), capsys)
    assert code == 2
    assert "1 bad row: train.jsonl:25: not JSON" in err
    _nothing_happened(registered_home)


def test_a_silo_without_data(
    tmp_path: Path, silo_dirs: dict[str, Path], registered_home: Path, capsys
) -> None:
    (silo_dirs["c"] / "train.jsonl").unlink()
    code, err = _run(write_config(tmp_path / "f.yaml", tiny_config(silo_dirs)), capsys)
    assert code == 2
    assert f"{silo_dirs['c'] / 'train.jsonl'}: no such file" in err
    _nothing_happened(registered_home)


def test_a_base_version_that_does_not_exist(
    tmp_path: Path, silo_dirs: dict[str, Path], registered_home: Path, capsys
) -> None:
    data = tiny_config(silo_dirs, base_model="demo:7")
    code, err = _run(write_config(tmp_path / "f.yaml", data), capsys)
    assert code == 2
    assert "demo" in err and "7" in err
    _nothing_happened(registered_home)


def test_silos_with_mismatched_lora_settings(
    tmp_path: Path, silo_dirs: dict[str, Path], registered_home: Path, capsys
) -> None:
    data = tiny_config(silo_dirs)
    data["silos"][1]["lora"] = {**data["lora"], "lora_r": 4}
    code, err = _run(write_config(tmp_path / "f.yaml", data), capsys)
    assert code == 2
    assert err.endswith(
        "silo b pins different LoRA settings: lora_r 4 (coordinator: 2); every silo of a "
        "federation trains the same adapter"
    )
    _nothing_happened(registered_home)
