import json
import re

import pytest

from core.digests import file_digest
from finetune.demo.skills import (
    COLOURS,
    NEW_COLOURS,
    NEW_LOOKUP,
    SKILLS,
    exact_match,
    generate_splits,
    read_jsonl,
    write_skill_splits,
)


def _prompts(rows):
    return [row["messages"][0]["content"] for row in rows]


def test_same_seed_writes_identical_files(tmp_path):
    first = write_skill_splits(tmp_path / "a", seed=3, num_train=50, num_eval=10)
    second = write_skill_splits(tmp_path / "b", seed=3, num_train=50, num_eval=10)
    assert first.keys() == second.keys() == SKILLS.keys()
    for name in SKILLS:
        assert first[name].train.read_bytes() == second[name].train.read_bytes()
        assert first[name].eval.read_bytes() == second[name].eval.read_bytes()
        assert file_digest(first[name].train) == file_digest(second[name].train)


def test_another_seed_writes_other_rows(tmp_path):
    first = write_skill_splits(tmp_path / "a", seed=0, num_train=20, num_eval=5, skills=["add"])
    second = write_skill_splits(tmp_path / "b", seed=1, num_train=20, num_eval=5, skills=["add"])
    assert first["add"].train.read_bytes() != second["add"].train.read_bytes()


def test_files_are_chat_jsonl(tmp_path):
    files = write_skill_splits(tmp_path, seed=0, num_train=5, num_eval=2, skills=["upper"])
    lines = files["upper"].train.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[0])
    assert len(lines) == 5
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert row["skill"] == "upper"
    assert read_jsonl(files["upper"].eval) == [json.loads(x) for x in files["upper"].eval.open()]


@pytest.mark.parametrize("name", sorted(SKILLS))
def test_eval_inputs_never_appear_in_train(name):
    train, eval_ = generate_splits(SKILLS[name], seed=0, num_train=2000, num_eval=100)
    assert len(train) == 2000
    assert len(set(_prompts(eval_))) == len(eval_)
    assert not set(_prompts(eval_)) & set(_prompts(train))


def test_eval_takes_at_most_a_quarter_of_a_small_input_space():
    skill = SKILLS["lookup"]
    _, eval_ = generate_splits(skill, seed=0, num_train=10, num_eval=1000)
    assert len(eval_) == skill.num_inputs // 4


def _add(prompt):
    a, b = map(int, re.fullmatch(r"What is (\d+) \+ (\d+)\?", prompt).groups())
    assert 0 <= a <= 99 and 0 <= b <= 99
    return str(a + b)


def _word(prompt):
    word = prompt.rsplit(" ", 1)[1]
    assert re.fullmatch(r"[a-z]{3,6}", word)
    return word


def _lookup(prompt):
    assert "colour" in prompt.lower()
    return COLOURS[re.search(r"(\w+)[?.]$", prompt).group(1)]


# Each skill's answer, worked out independently from its prompt.
EXPECTED = {
    "add": _add,
    "upper": lambda prompt: _word(prompt).upper(),
    "reverse": lambda prompt: _word(prompt)[::-1],
    "sort": lambda prompt: "".join(sorted(_word(prompt))),
    "lookup": _lookup,
}


def test_every_skill_is_checked():
    assert EXPECTED.keys() == SKILLS.keys()


@pytest.mark.parametrize("name", sorted(SKILLS))
def test_answers_are_correct(name):
    train, eval_ = generate_splits(SKILLS[name], seed=0, num_train=300, num_eval=50)
    for row in train + eval_:
        user, assistant = row["messages"]
        assert assistant["content"] == EXPECTED[name](user["content"]), user["content"]


def test_the_new_table_asks_about_items_the_demo_model_never_saw():
    assert not NEW_COLOURS.keys() & COLOURS.keys()
    assert set(NEW_COLOURS.values()) <= set(COLOURS.values())
    train, eval_ = generate_splits(NEW_LOOKUP, seed=0, num_train=300, num_eval=50)
    assert not set(_prompts(train)) & set(_prompts(eval_))
    for row in train + eval_:
        user, assistant = row["messages"]
        item = re.search(r"(\w+)[?.]$", user["content"]).group(1)
        assert assistant["content"] == NEW_COLOURS[item], user["content"]


def test_exact_match_ignores_surrounding_whitespace():
    assert exact_match(" 42\n", "42")
    assert not exact_match("4 2", "42")
    assert not exact_match("abc", "ABC")
