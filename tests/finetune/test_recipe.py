import importlib.util
from pathlib import Path

import pytest

from finetune.recipe import RecipeError, load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {"base_model": "demo", "datasets": [{"path": "train.jsonl"}], "max_steps": 10}


def test_shipped_recipe_loads() -> None:
    recipe = load_recipe(ROOT / "configs/finetune/demo-reverse-lora.yaml")
    assert recipe.base_model == "demo" and recipe.adapter == "lora"
    assert [d.split for d in recipe.datasets] == ["train", "validation"]
    assert {"q_proj", "embed_tokens", "lm_head"} <= set(recipe.lora_target_modules)


def test_overrides_replace_keys(tmp_path: Path) -> None:
    path = ROOT / "configs/finetune/demo-reverse-lora.yaml"
    recipe = load_recipe(path, {"learning_rate": 1e-4, "max_steps": 5})
    assert recipe.learning_rate == 1e-4 and recipe.max_steps == 5


@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here"
)
@pytest.mark.parametrize("strategy", ["deepspeed-zero2", "deepspeed-zero3"])
def test_a_deepspeed_recipe_without_deepspeed_names_the_extra(strategy: str) -> None:
    with pytest.raises(
        RecipeError, match=r"needs the deepspeed package.*llmops-stack\[deepspeed\]"
    ):
        parse_recipe({**MINIMAL, "distributed": strategy})


def test_qlora_loads_in_4bit() -> None:
    assert parse_recipe({**MINIMAL, "adapter": "qlora"}).load_in_4bit is True
    with pytest.raises(RecipeError, match="load_in_4bit needs adapter: qlora"):
        parse_recipe({**MINIMAL, "load_in_4bit": True})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {**MINIMAL, "learning_rat": 1e-3},
            "unknown key 'learning_rat'; did you mean 'learning_rate'?",
        ),
        ({**MINIMAL, "lora_rank": 8}, "did you mean 'lora_r'?"),
        (
            {**MINIMAL, "datasets": [{"path": "x", "typ": "chat"}]},
            "in datasets.0: 'typ'; did you mean 'type'?",
        ),
        ({**MINIMAL, "zzz": 1}, "unknown key 'zzz'; valid keys:"),
        ({**MINIMAL, "lora_r": 0}, "lora_r: Input should be greater than 0"),
        ({**MINIMAL, "adapter": "full"}, "adapter: Input should be 'lora' or 'qlora'"),
        ({"base_model": "demo", "datasets": [{"path": "x"}]}, "set num_epochs or max_steps"),
        ({**MINIMAL, "datasets": []}, "datasets: List should have at least 1 item"),
    ],
)
def test_bad_recipes_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(RecipeError) as err:
        parse_recipe(data)
    assert message in str(err.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("base_model: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        load_recipe(listed)
