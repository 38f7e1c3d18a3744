"""Search files: what they accept, and one-line errors (exit code 2) for what they do not."""

from pathlib import Path

import pytest

from finetune.automl.search import load_search
from finetune.cli import main
from finetune.errors import RecipeError
from tests.finetune.automl.conftest import search_data, write_search


def test_a_search_embeds_its_recipe_with_absolute_data_paths(
    tmp_path: Path, skills_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(skills_dir)
    data = search_data(
        skills_dir, space={"lora_target_modules": {"choices": [["q_proj"], "all-linear"]}}
    )
    data["recipe"]["datasets"][0]["path"] = "reverse/train.jsonl"
    search = load_search(write_search(tmp_path / "s.yaml", data), trials=5)
    assert search.trials == 5
    assert search.recipe["datasets"][0]["path"] == str(skills_dir / "reverse" / "train.jsonl")
    assert search.directions == ["minimize"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"spaec": {}}, "unknown key 'spaec'; did you mean 'space'?"),
        ({"space": {}}, "the search space is empty; search at least one of lora_r"),
        (
            {"space": {"lora_rr": {"choices": [4]}}},
            "unknown key in space: 'lora_rr'; did you mean 'lora_r'?",
        ),
        (
            {"space": {"lora_r": {"low": 4, "hgh": 8}}},
            "unknown key in space.lora_r: 'hgh'; did you mean 'high'?",
        ),
        (
            {"space": {"lora_r": {"low": 0, "high": 8}}},
            "space.lora_r = 0: lora_r: Input should be greater than 0",
        ),
        (
            {"objectives": ["exact_macth"]},
            "unknown metric 'exact_macth'; did you mean 'exact_match'?",
        ),
        (
            {"objectives": ["eval_loss", "trainable_params"], "pruner": {"type": "median"}},
            "Optuna prunes single-objective studies only",
        ),
        (
            {"objectives": ["trainable_params"], "pruner": {"type": "hyperband"}},
            "trainable_params is measured after training only",
        ),
        ({"kind": "distil"}, "kind 'distil' is unknown; known kinds: lora, distill"),
        (
            {"kind": "distill", "space": {"student.hiden_size": {"choices": [32]}}},
            "unknown key in space: 'student.hiden_size'; did you mean 'student.hidden_size'?",
        ),
        (
            {"select": {"where": {"trainable_param": {"max": 1}}}},
            "unknown key in select.where: 'trainable_param'; did you mean 'trainable_params'?",
        ),
    ],
)
def test_bad_searches_fail_with_the_key_and_a_suggestion(
    tmp_path: Path, skills_dir: Path, change: dict, message: str
) -> None:
    data = {**search_data(skills_dir), **change}
    path = write_search(tmp_path / "s.yaml", data)
    with pytest.raises(RecipeError) as err:
        load_search(path)
    assert message in err.value.message


def test_the_cli_answers_bad_input_with_one_line_and_exit_code_2(
    tmp_path: Path, skills_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LLMOPS_DATABASE_URL", raising=False)
    data = {**search_data(skills_dir), "objectives": [{"metric": "acuracy"}]}
    assert main(["tune", "run", str(write_search(tmp_path / "s.yaml", data))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown metric 'acuracy'" in err
    assert main(["tune", "show", "nope"]) == 2
    assert "no study 'nope'; studies: none yet" in capsys.readouterr().err
