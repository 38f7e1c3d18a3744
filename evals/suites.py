"""Evaluation suites: YAML files in `configs/evals/`, validated into a typed `Suite`.

A suite is a list of tasks; each task has its data (chat JSONL with references, or rows
generated from a demo skill), an optional system message, generation settings and metrics.

    name: demo-skills
    tasks:
      - name: add
        data: {demo: add, count: 50}
        generation: {max_tokens: 12}
        metrics: [exact_match]

Data rows are chat rows whose last message is the assistant's reference answer; a task scored
by `choice_accuracy` has rows with `choices` and the index of the right one in `answer`."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.configs import validation_message
from core.digests import bytes_digest
from evals.errors import invalid
from evals.metrics import Metric, resolve_metric
from finetune.demo.skills import SKILLS, generate_splits

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_EXAMPLES = 100_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    path: str | None = Field(
        None, description="Chat JSONL, relative to the suite file (or absolute)."
    )
    demo: str | None = Field(None, description=f"A demo skill: {', '.join(SKILLS)}.")
    count: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)] = Field(
        50, description="Rows of a demo skill (its held-out inputs), or the first rows of a file."
    )
    seed: int = Field(0, description="Seed of the demo data (0: the demo model's held-out rows).")

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        if (self.path is None) == (self.demo is None):
            raise ValueError("give exactly one of `path` or `demo`")
        if self.demo is not None and self.demo not in SKILLS:
            raise ValueError(f"unknown demo skill {self.demo!r}; choose one of {', '.join(SKILLS)}")
        return self


class GenerationSpec(_Strict):
    max_tokens: Annotated[int, Field(ge=1, le=4096)] = Field(32, description="Answer length cap.")
    temperature: Annotated[float, Field(ge=0, le=2)] = Field(0.0, description="0: greedy.")
    stop: list[str] = Field(default_factory=list, description="Stop strings.")


class TaskSpec(_Strict):
    name: str = Field(pattern=NAME)
    description: str = ""
    data: DataSpec
    system: str | None = Field(None, description="A system message put before every prompt.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    metrics: list[str] = Field(min_length=1, description="Built-in names or module:callable.")


class SuiteSpec(_Strict):
    name: str = Field(pattern=NAME)
    description: str = ""
    tasks: list[TaskSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_tasks(self) -> "SuiteSpec":
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names repeat: {names}")
        return self


@dataclass(frozen=True)
class Example:
    id: str  # "<task>/<row number>"
    messages: list[dict[str, str]]  # the prompt
    reference: str
    choices: tuple[str, ...] = ()
    answer: int | None = None  # index of the right choice


@dataclass(frozen=True)
class Task:
    spec: TaskSpec
    metrics: tuple[Metric, ...]
    examples: tuple[Example, ...]

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Suite:
    spec: SuiteSpec
    tasks: tuple[Task, ...]
    digest: str  # of the settings and every example: equal digests, equal suites

    @property
    def name(self) -> str:
        return self.spec.name


def load_suite(reference: str, suites_dir: Path) -> Suite:
    """A suite by file path, or by name from `suites_dir` (`demo-skills` is
    `suites_dir/demo-skills.yaml`)."""
    path = Path(reference)
    if not path.suffix:
        path = suites_dir / f"{reference}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in suites_dir.glob("*.yaml")) if suites_dir.is_dir() else []
        raise invalid(
            f"no evaluation suite {reference!r}; the suites in {suites_dir.name}/ are: "
            f"{', '.join(known) or 'none'}",
            param="suite",
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise invalid(f"suite {path.name} is not valid YAML: {err}", param="suite") from None
    try:
        spec = SuiteSpec.model_validate(data)
    except ValidationError as err:
        raise invalid(f"suite {path.name}: {validation_message(err, SuiteSpec)}") from None
    tasks = tuple(_task(t, path.parent) for t in spec.tasks)
    canonical = json.dumps(
        {
            "spec": spec.model_dump(mode="json"),
            "examples": [[e.__dict__ for e in t.examples] for t in tasks],
        },
        sort_keys=True,
    )
    return Suite(spec, tasks, bytes_digest(canonical.encode()))


def _task(spec: TaskSpec, base: Path) -> Task:
    metrics = tuple(resolve_metric(m) for m in spec.metrics)
    data = spec.data
    if data.demo is not None:
        rows = generate_splits(SKILLS[data.demo], data.seed, 0, data.count)[1]
        where = f"demo skill {data.demo}"
    else:
        assert data.path is not None
        path = (base / data.path).resolve()
        where = f"task {spec.name}: {data.path}"
        try:
            lines = path.read_text().splitlines()
        except OSError as err:
            raise invalid(f"{where} cannot be read ({err.strerror})") from None
        rows = [_row(line, f"{where}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
        rows = rows[: data.count]
    choice_task = any(m.kind == "choice" for m in metrics)
    examples = tuple(
        _example(spec, row, f"{spec.name}/{n}", f"{where}:{n + 1}", choice_task)
        for n, row in enumerate(rows)
    )
    if not examples:
        raise invalid(f"{where} has no rows")
    return Task(spec, metrics, examples)


def _row(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise invalid(f"{where}: not JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise invalid(f"{where}: a row is a JSON object")
    return row


def _example(spec: TaskSpec, row: dict[str, Any], id: str, where: str, choice: bool) -> Example:
    messages = row.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
    ):
        raise invalid(f"{where}: `messages` must be a list of {{role, content}} objects")
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages]
    reference = ""
    if prompt[-1]["role"] == "assistant":
        reference = prompt.pop()["content"]
    if spec.system is not None:
        prompt.insert(0, {"role": "system", "content": spec.system})
    if not prompt:
        raise invalid(f"{where}: no prompt before the reference answer")
    if not choice:
        if not reference:
            raise invalid(f"{where}: the last message must be the assistant's reference answer")
        return Example(id, prompt, reference)
    choices, answer = row.get("choices"), row.get("answer")
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
        or not isinstance(answer, int)
        or not 0 <= answer < len(choices)
    ):
        raise invalid(f"{where}: a choice row needs `choices` (2 or more texts) and `answer`")
    return Example(id, prompt, choices[answer], tuple(choices), answer)
