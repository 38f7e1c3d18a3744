"""Evaluation suites on the demo model: the same numbers in process and through the gateway,
runs recorded with their outputs, comparisons, and bad suites refused before anything runs."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import StackError
from core.settings import StackSettings
from evals.cli import main
from evals.metrics import resolve_metric
from evals.service import Evaluations, HttpOptions
from evals.settings import EvalsSettings
from evals.suites import load_suite
from registry.service import open_registry
from tests.serving.conftest import running_gateway

pytestmark = pytest.mark.slow

SUITE = """
name: small-skills
tasks:
  - name: add
    data: {demo: add, count: 24}
    generation: {max_tokens: 8}
    metrics: [exact_match, latency_s, completion_tokens]
  - name: lookup
    data: {demo: lookup, count: 24}
    generation: {max_tokens: 8}
    metrics: [exact_match, rouge_l]
  - name: reverse
    data: {demo: reverse, count: 16}
    generation: {max_tokens: 10}
    metrics: [normalized_match]
  - name: colours
    data: {path: colours.jsonl}
    metrics: [choice_accuracy, perplexity]
"""
CHOICES = [
    '{"messages": [{"role": "user", "content": "What colour is the zorblax?"}], '
    '"choices": ["blue", "red", "green"], "answer": 1}',
    '{"messages": [{"role": "user", "content": "Which colour is the gubbin?"}], '
    '"choices": ["black", "white"], "answer": 0}',
    '{"messages": [{"role": "user", "content": "Name the colour of the wuzzle."}], '
    '"choices": ["pink", "teal", "gold"], "answer": 1}',
]


@pytest.fixture
def suites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "suites"
    folder.mkdir()
    (folder / "small-skills.yaml").write_text(SUITE)
    (folder / "colours.jsonl").write_text("\n".join(CHOICES) + "\n")
    monkeypatch.setenv("LLMOPS_EVALS_SUITES_DIR", str(folder))
    return folder


def test_a_suite_gives_the_same_numbers_in_process_and_through_the_gateway(
    tmp_path: Path, demo_model_dir: Path, suites: Path
) -> None:
    home = tmp_path / "home"
    with running_gateway(home, demo_model_dir) as gw:
        evaluations = Evaluations.open(StackSettings(home=home))
        suite = evaluations.suite("small-skills")
        local = evaluations.run(suite, "demo", progress=False)
        remote = evaluations.run(
            suite, "demo", http=HttpOptions(f"{gw.base_url}/v1", concurrency=4), progress=False
        )
    assert local.version == "demo:1" and remote.version is None and remote.target.endswith("/v1")
    scored = {k: v for k, v in local.metrics.items() if not k.endswith(("latency_s", "tokens"))}
    for name, value in scored.items():  # log-likelihoods agree to float rounding
        assert value == pytest.approx(remote.metrics[name], rel=1e-6), name
    # the demo model knows add and lookup, not reverse; the choices are right
    assert local.metrics["add/exact_match"]["value"] >= 0.9
    assert local.metrics["lookup/exact_match"]["value"] >= 0.9
    assert local.metrics["reverse/normalized_match"]["value"] <= 0.2
    assert local.metrics["colours/choice_accuracy"]["value"] == 1.0
    assert 1.0 <= local.metrics["colours/perplexity"]["value"] < 2.0
    interval = local.metrics["add/exact_match"]
    assert interval["low"] <= interval["value"] <= interval["high"]
    outputs = evaluations.runs.examples(local)
    assert len(outputs) == 24 + 24 + 16 + 3
    first = outputs[0]
    assert first["id"] == "add/0" and first["prediction"] == first["reference"]
    assert evaluations.runs.fresh(suite.digest, "demo:1").id == local.id
    comparison = evaluations.compare(local.id, remote.id)
    assert comparison.changed == []
    assert all(d.paired.delta.value == 0 for d in comparison.deltas if "exact" in d.metric)


def _llm_evals(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("llm-evals")), *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_the_command_line_runs_shows_and_compares(
    tmp_path: Path, demo_model_dir: Path, suites: Path
) -> None:
    home = tmp_path / "home"
    with running_gateway(home, demo_model_dir):
        pass  # registers demo:1 in this home
    env = {**os.environ, "LLMOPS_HOME": str(home), "LLMOPS_EVALS_SUITES_DIR": str(suites)}
    ids = []
    for _ in range(2):
        ran = _llm_evals("run", "small-skills", "--model", "demo", "--json", env=env)
        assert ran.returncode == 0, ran.stderr
        ids.append(json.loads(ran.stdout)["id"])
    shown = _llm_evals("show", ids[0], "--examples", "2", env=env)
    assert "add/exact_match" in shown.stdout and "add/0:" in shown.stdout
    compared = _llm_evals("compare", ids[0], ids[1], env=env)
    assert "0 examples changed" in compared.stdout and "mcnemar" in compared.stdout
    assert ids[1] in _llm_evals("list", env=env).stdout


@pytest.mark.parametrize(
    ("yaml_text", "says"),
    [
        ("name: x\ntasks:\n  - name: t\n    data: {demo: add}\n    metrics: [bleurt]\n",
         "unknown metric 'bleurt'"),
        ("name: x\ntasks:\n  - name: t\n    data: {demo: add}\n    metrcs: [exact_match]\n",
         "did you mean 'metrics'?"),
        ("name: x\ntasks:\n  - name: t\n    data: {demo: add, cuont: 3}\n    metrics: [exact]\n",
         "did you mean 'count'?"),
        ("name: x\ntasks:\n  - name: t\n    data: {demo: juggle}\n    metrics: [exact_match]\n",
         "unknown demo skill 'juggle'"),
        ("name: x\ntasks:\n  - name: t\n    data: {path: gone.jsonl}\n    metrics: [exact_match]\n",
         "cannot be read"),
        ("name: x\ntasks:\n  - name: t\n    data: {path: bad.jsonl}\n    metrics: [exact_match]\n",
         "bad.jsonl:2: not JSON"),
        ("name: x\ntasks:\n  - name: t\n    data: {path: bad.jsonl}\n    metrics: [my.m:nothing]\n",
         "cannot be loaded"),
    ],
)  # fmt: skip
def test_bad_suites_are_refused_with_the_reason(tmp_path: Path, yaml_text: str, says: str) -> None:
    (tmp_path / "bad.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}'
        "\nnot json\n"
    )
    (tmp_path / "suite.yaml").write_text(yaml_text)
    with pytest.raises(StackError) as err:
        load_suite(str(tmp_path / "suite.yaml"), tmp_path)
    assert says in err.value.message


def test_an_unknown_suite_or_model_is_a_clear_error_and_records_nothing(
    tmp_path: Path, suites: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.onnx").write_bytes(b"onnx")
    registry = open_registry(StackSettings(home=tmp_path / "home"))
    registry.register("edge-onnx", export, kind="quantized", format="onnx")
    for argv, says in (
        (["run", "no-such-suite", "--model", "demo"], "small-skills"),
        (["run", "small-skills", "--model", "nope"], "nope"),
        (["run", "small-skills", "--model", "edge-onnx:1"], "through a gateway that serves it"),
        (["show", "evalrun-missing"], "no evaluation run"),
    ):
        with pytest.raises(SystemExit) as code:
            main(argv)
        err = capsys.readouterr().err
        assert code.value.code == 2 and says in err and len(err.splitlines()) == 1, err
    assert Evaluations.open().runs.list_runs() == []


def test_bleu_is_sentence_bleu_of_each_example() -> None:
    bleu = resolve_metric("bleu")
    assert bleu.kind == "text" and bleu.higher_is_better
    assert bleu.score is not None
    reference = "the cat sat on the mat"
    scores = bleu.score(
        [
            reference,  # identical
            "a dog ran in a park",  # no word in common
            "the cat sat on the",  # every n-gram matches; brevity penalty exp(1 - 6/5)
            "the cat sat on the mat today",  # 6/7, 5/6, 4/5 and 3/4 of the n-grams match
            "",  # no answer
        ],
        [reference] * 5,
    )
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == 0.0
    assert scores[2] == pytest.approx(math.exp(-0.2))
    assert scores[3] == pytest.approx((6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25)  # (3/7)^(1/4)
    assert scores[4] == 0.0


def test_bleu_is_a_suite_metric_and_a_misspelt_one_suggests_it(tmp_path: Path) -> None:
    task = "name: x\ntasks:\n  - name: t\n    data: {demo: add, count: 2}\n    metrics: [%s]\n"
    (tmp_path / "ok.yaml").write_text(task % "bleu")
    assert [m.name for m in load_suite(str(tmp_path / "ok.yaml"), tmp_path).tasks[0].metrics] == [
        "bleu"
    ]
    (tmp_path / "bad.yaml").write_text(task % "bleurt")
    with pytest.raises(StackError) as err:
        load_suite(str(tmp_path / "bad.yaml"), tmp_path)
    assert "unknown metric 'bleurt'; did you mean 'bleu'?" in err.value.message


def test_bleu_loads_from_the_package_offline(tmp_path: Path) -> None:
    # A fresh process and modules cache: evaluate copies nmt_bleu.py from evals/metrics/bleu/
    # rather than downloading it, with every Hugging Face hub and download switched off.
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    code = (
        "from evals.metrics import resolve_metric\n"
        "print(resolve_metric('bleu').score(['hello there general kenobi'], "
        "['hello there general kenobi']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1.0]"
    assert list((tmp_path / "modules").rglob("nmt_bleu.py"))


def test_shipped_suites_and_gates_are_found_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = EvalsSettings()
    assert load_suite("demo-skills", settings.suites_dir).name == "demo-skills"
    assert settings.gates_file.is_file()
