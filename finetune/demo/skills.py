"""Skills: small tasks with exact answers, generated deterministically as chat JSONL rows.

A row is `{"messages": [{"role": "user", ...}, {"role": "assistant", ...}], "skill": name}`.
To add a skill, build a `Skill` and add it to `SKILLS`.
"""

import json
import random
import string
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The lookup table: fictional items and their colours.
COLOURS: dict[str, str] = {
    "zorblax": "red",
    "quibbet": "blue",
    "flimmon": "green",
    "dravik": "yellow",
    "plonter": "purple",
    "snarvel": "orange",
    "gubbin": "black",
    "twindle": "white",
    "morgle": "pink",
    "vexil": "brown",
    "crumpet": "grey",
    "yobble": "gold",
    "kestrin": "silver",
    "wuzzle": "teal",
    "fendrake": "blue",
    "ostrum": "red",
}

# A second table whose items the demo model never saw (the same colours): the federated demo
# splits it across silos, each holding the rows of different items.
NEW_COLOURS: dict[str, str] = {
    "brimble": "grey",
    "caskin": "brown",
    "dorvel": "orange",
    "elmish": "silver",
    "farrow": "black",
    "glimber": "blue",
    "hoskit": "yellow",
    "jarnel": "purple",
    "kelpin": "blue",
    "lumbra": "grey",
    "mirrin": "red",
    "noddle": "black",
    "parsk": "purple",
    "quillon": "gold",
    "rendle": "black",
    "sabbit": "blue",
    "tolvar": "orange",
    "umbrin": "orange",
    "vassel": "blue",
    "wimmet": "gold",
    "yarrow": "blue",
    "zindle": "purple",
    "bockle": "orange",
    "cravet": "black",
}

# The item always ends the question, so a template changes only the words before it.
_LOOKUP_TEMPLATES = (
    "What colour is the {item}?",
    "What is the colour of the {item}?",
    "Which colour is the {item}?",
    "Tell me the colour of the {item}.",
    "Name the colour of the {item}.",
    "Give the colour of the {item}.",
    "Colour of the {item}?",
    "What colour is a {item}?",
    "Say the colour of the {item}.",
    "What colour is this {item}?",
    "Which colour has the {item}?",
    "Do you know the colour of the {item}?",
)


@dataclass(frozen=True)
class Skill:
    """A task family: how to draw an input, ask for it, and answer it exactly."""

    name: str
    sample: Callable[[random.Random], Hashable]
    prompt: Callable[[Any], str]
    answer: Callable[[Any], str]
    # Number of distinct inputs where it is small; at most a quarter of them go to eval.
    num_inputs: int | None = None


def _word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 6)))


def lookup_skill(name: str, table: dict[str, str]) -> Skill:
    """Questions about an item's colour in `table`, asked with one of the templates."""
    items = sorted(table)
    return Skill(
        name=name,
        sample=lambda rng: (rng.randrange(len(_LOOKUP_TEMPLATES)), rng.choice(items)),
        prompt=lambda ti: _LOOKUP_TEMPLATES[ti[0]].format(item=ti[1]),
        answer=lambda ti: table[ti[1]],
        num_inputs=len(_LOOKUP_TEMPLATES) * len(table),
    )


SKILLS: dict[str, Skill] = {
    skill.name: skill
    for skill in (
        Skill(
            name="add",
            sample=lambda rng: (rng.randint(0, 99), rng.randint(0, 99)),
            prompt=lambda ab: f"What is {ab[0]} + {ab[1]}?",
            answer=lambda ab: str(ab[0] + ab[1]),
            num_inputs=100 * 100,
        ),
        Skill(
            name="upper",
            sample=_word,
            prompt=lambda w: f"Uppercase this word: {w}",
            answer=str.upper,
        ),
        Skill(
            name="reverse",
            sample=_word,
            prompt=lambda w: f"Reverse this word: {w}",
            answer=lambda w: w[::-1],
        ),
        Skill(
            name="sort",
            sample=_word,
            prompt=lambda w: f"Sort the letters of this word: {w}",
            answer=lambda w: "".join(sorted(w)),
        ),
        lookup_skill("lookup", COLOURS),
    )
}
# Not among SKILLS (the demo model is neither trained nor scored on it).
NEW_LOOKUP = lookup_skill("new_lookup", NEW_COLOURS)


@dataclass(frozen=True)
class SplitFiles:
    """Where one skill's splits were written."""

    train: Path
    eval: Path


def make_row(skill: Skill, value: Hashable) -> dict[str, Any]:
    """The chat row for one input of `skill`."""
    return {
        "messages": [
            {"role": "user", "content": skill.prompt(value)},
            {"role": "assistant", "content": skill.answer(value)},
        ],
        "skill": skill.name,
    }


def generate_splits(
    skill: Skill, seed: int, num_train: int, num_eval: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and eval rows for `skill`; no eval input ever appears in train.

    Eval inputs are distinct. Train inputs may repeat where the input space is small. The eval
    split is capped at a quarter of a small input space.
    """
    # Seeding per skill keeps each skill's rows stable when skills are added.
    rng = random.Random(f"{seed}:{skill.name}")
    if skill.num_inputs is not None:
        num_eval = min(num_eval, skill.num_inputs // 4)
    eval_inputs: dict[Hashable, None] = {}
    while len(eval_inputs) < num_eval:
        eval_inputs.setdefault(skill.sample(rng))
    train_inputs: list[Hashable] = []
    while len(train_inputs) < num_train:
        value = skill.sample(rng)
        if value not in eval_inputs:
            train_inputs.append(value)
    return [make_row(skill, v) for v in train_inputs], [make_row(skill, v) for v in eval_inputs]


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_skill_splits(
    root: Path,
    seed: int,
    num_train: int,
    num_eval: int,
    skills: Iterable[str] = tuple(SKILLS),
) -> dict[str, SplitFiles]:
    """Write `<root>/<skill>/train.jsonl` and `eval.jsonl` for each skill."""
    written = {}
    for name in skills:
        train, eval_ = generate_splits(SKILLS[name], seed, num_train, num_eval)
        files = SplitFiles(train=root / name / "train.jsonl", eval=root / name / "eval.jsonl")
        write_jsonl(files.train, train)
        write_jsonl(files.eval, eval_)
        written[name] = files
    return written


def exact_match(prediction: str, answer: str) -> bool:
    """Whether `prediction` is `answer`, ignoring surrounding whitespace."""
    return prediction.strip() == answer.strip()
