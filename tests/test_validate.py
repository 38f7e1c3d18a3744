"""`validate` on every command line that reads a config file: every error at once, one line
each, a misspelt key with the nearest valid one, exit code 2; "ok" and 0 for a valid file.
The commands that load the same files (`llm-serve --config`, `llm-finetune run`) say the
same."""

from pathlib import Path

import click
import pytest
import yaml

from core.console import run
from evals import cli as evals_cli
from finetune import cli as finetune_cli
from finetune.recipe import Recipe
from serving import cli as serving_cli

ROOT = Path(__file__).resolve().parents[1]
COMMANDS: dict[str, click.Group] = {
    "llm-serve": serving_cli.cli,
    "llm-finetune": finetune_cli.cli,
    "llm-evals": evals_cli.cli,
}


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LLMOPS_DATABASE_URL", raising=False)
    monkeypatch.delenv("LLMOPS_SERVING_CONFIG", raising=False)
    return tmp_path / "home"


def _run(capsys: pytest.CaptureFixture, prog: str, *args: str) -> tuple[int, str, list[str]]:
    """Exit code, stdout and the lines of stderr."""
    code = run(COMMANDS[prog], prog, list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def _write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _bad_serving(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "serving.yaml", {"hostt": "0.0.0.0", "rate_limit": {}, "port": "eighty"}
    )


def _assert_lists(err: list[str], prog: str, *messages: str) -> None:
    assert err[0].startswith(f"{prog}: error: ") and err[0].endswith(f"{len(messages)} errors:")
    assert len(err) == 1 + len(messages), err
    for line, message in zip(err[1:], messages, strict=True):
        assert message in line, (line, message)


def test_a_serving_config_reports_every_error_with_the_nearest_key(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = _bad_serving(tmp_path)
    for args in (("validate", "--config", str(bad)), ("--config", str(bad), "validate")):
        code, out, err = _run(capsys, "llm-serve", *args)
        assert code == 2 and out == ""
        _assert_lists(
            err,
            "llm-serve",
            "unknown key 'hostt'; did you mean 'host'?",
            "unknown key 'rate_limit'; did you mean 'rate_limits'?",
            "port: Input should be a valid integer",
        )


def test_the_gateway_refuses_a_bad_config_with_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = _run(capsys, "llm-serve", "--config", str(_bad_serving(tmp_path)))
    assert code == 2 and len(err) == 4 and "did you mean 'rate_limits'?" in err[2]


def test_a_recipe_reports_every_error_on_validate_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe = _write(
        tmp_path / "r.yaml",
        {
            "base_model": "demo",
            "datasets": [{"path": "x.jsonl"}],
            "learning_rat": 1e-3,
            "lora_r": 0,
        },
    )
    for verb in ("validate", "run"):
        code, out, err = _run(capsys, "llm-finetune", verb, str(recipe))
        assert code == 2 and out == ""
        _assert_lists(
            err,
            "llm-finetune",
            "unknown key 'learning_rat'; did you mean 'learning_rate'?",
            "lora_r: Input should be greater than 0",
        )


def test_a_suite_reports_every_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    suite = _write(
        tmp_path / "s.yaml",
        {
            "name": "s",
            "tasks": [{"name": "add", "data": {"demo": "add", "cont": 5}, "metrics": []}],
        },
    )
    code, out, err = _run(capsys, "llm-evals", "validate", str(suite))
    assert code == 2 and out == ""
    _assert_lists(
        err,
        "llm-evals",
        "unknown key in tasks.0.data: 'cont'; did you mean 'count'?",
        "tasks.0.metrics: List should have at least 1 item",
    )


@pytest.mark.parametrize(
    ("prog", "args"),
    [
        ("llm-serve", ("validate", "--config", "configs/serving.yaml")),
        ("llm-finetune", ("validate", "configs/finetune/demo-reverse-lora.yaml")),
        ("llm-finetune", ("validate", "configs/finetune/demo-distill.yaml")),
        ("llm-evals", ("validate", "configs/evals/demo-skills.yaml")),
        ("llm-evals", ("validate", "configs/evals/gates.yaml")),
        ("llm-evals", ("validate", "--kind", "policy", "configs/continuous/demo.yaml")),
    ],
)
def test_the_shipped_configs_are_ok(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, prog: str, args: tuple[str, ...]
) -> None:
    monkeypatch.chdir(ROOT)
    assert _run(capsys, prog, *args) == (0, "ok\n", [])


def test_a_file_whose_kind_cannot_be_told_asks_for_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = _run(capsys, "llm-evals", "validate", str(_write(tmp_path / "x.yaml", {"a": 1})))
    assert code == 2 and err == [
        "llm-evals: error: cannot tell whether x.yaml is a suite, gates or a policy; give --kind "
        "(see `llm-evals validate --help`)"
    ]


def test_run_help_lists_every_recipe_key_and_the_reference(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _run(capsys, "llm-finetune", "run", "--help")
    text = " ".join(out.split())
    assert code == 0 and "docs/reference/recipe.md" in text
    assert all(f" {key}," in text or f" {key};" in text for key in Recipe.model_fields)
