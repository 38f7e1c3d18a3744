"""`llm-finetune` as a user runs it: real processes, one-line errors with exit code 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.settings import StackSettings
from finetune.cli import main
from registry.service import open_registry


def llm_finetune(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLMOPS_HOME": str(home), "LLMOPS_ACTOR": "researcher"}
    env.pop("LLMOPS_DATABASE_URL", None)
    command = [sys.executable, "-m", "finetune", *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)


@pytest.fixture
def home(tmp_path: Path, base_model_dir: Path) -> Path:
    home = tmp_path / "home"
    registry = open_registry(StackSettings(home=home, actor="tests"))
    registry.register("demo", base_model_dir)
    registry.set_alias("demo", "production", 1)
    return home


def write_recipe(path: Path, skills_dir: Path, **keys) -> Path:
    recipe = {
        "base_model": "demo",
        "datasets": [{"path": str(skills_dir / "reverse" / "train.jsonl")}],
        "sequence_len": 64,
        "micro_batch_size": 8,
        "max_steps": 2,
        "learning_rate": 1e-3,
        **keys,
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_run_in_the_foreground_with_flag_overrides(
    home: Path, skills_dir: Path, tmp_path: Path
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", skills_dir)
    ran = llm_finetune(home, "--json", "run", str(recipe), "--max_steps", "3", "--suffix=cli")
    assert ran.returncode == 0, ran.stderr
    job = json.loads(ran.stdout)
    assert job["status"] == "succeeded" and job["metrics"]["steps"] == 3
    assert job["fine_tuned_model"] == f"ft:demo:cli:{job['id']}"

    listed = llm_finetune(home, "list")
    assert job["id"] in listed.stdout and "succeeded" in listed.stdout
    shown = llm_finetune(home, "show", job["id"])
    assert "The job has successfully completed" in shown.stdout


@pytest.fixture
def in_process(home: Path, monkeypatch: pytest.MonkeyPatch):
    """`llm-finetune` in this process (the same `main` the console script runs)."""
    monkeypatch.setenv("LLMOPS_HOME", str(home))
    monkeypatch.delenv("LLMOPS_DATABASE_URL", raising=False)
    return main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--learning_rat", "1e-3"], "unknown key 'learning_rat'; did you mean 'learning_rate'?"),
        (["--lora_r", "0"], "lora_r: Input should be greater than 0"),
        (["--adapter", "dora"], "adapter: Input should be 'lora' or 'qlora'"),
        (["oops"], "unexpected argument 'oops'; recipe keys are --KEY VALUE"),
    ],
)
def test_bad_recipes_and_flags_fail_in_one_line(
    in_process, skills_dir: Path, tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", skills_dir)
    assert in_process(["submit", str(recipe), *args]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("llm-finetune: error: ") and message in line


def test_bad_data_is_refused_before_a_job_exists(in_process, tmp_path: Path, capsys) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump({"base_model": "demo", "datasets": [{"path": str(data)}], "max_steps": 1})
    )
    assert in_process(["submit", str(recipe)]) == 2
    assert capsys.readouterr().err.strip() == (
        "llm-finetune: error: 1 bad row: train.jsonl:1: no assistant message to learn from"
    )
    assert in_process(["--json", "list"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    # with clean: true the job drops the bad rows instead, so the file only has to exist
    good = (
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
    )
    data.write_text(data.read_text() + good + "\n")
    assert in_process(["--json", "run", str(recipe), "--clean", "true"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "succeeded"
    data.unlink()
    assert in_process(["submit", str(recipe), "--clean", "true"]) == 2
    assert capsys.readouterr().err.strip().endswith("train.jsonl: no such file")


def test_unknown_jobs_and_missing_recipes(in_process, tmp_path: Path, capsys) -> None:
    assert in_process(["show", "ftjob-nope"]) == 2
    assert "no fine-tuning job 'ftjob-nope'" in capsys.readouterr().err
    assert in_process(["run", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml does not exist" in capsys.readouterr().err
