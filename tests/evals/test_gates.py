"""The eval gate through `llm-registry promote`, on SQLite and PostgreSQL: a worse version is
refused with the metrics that fell, a better one passes, and the gate's result (runs, deltas,
decision) goes into the alias audit event."""

import json
from pathlib import Path

import pytest

from registry.cli import main as registry_main
from tests.serving.conftest import make_adapter

pytestmark = pytest.mark.slow

SUITE = """
name: guard
tasks:
  - name: add
    data: {demo: add, count: 30}
    generation: {max_tokens: 8}
    metrics: [exact_match]
  - name: lookup
    data: {demo: lookup, count: 30}
    generation: {max_tokens: 8}
    metrics: [exact_match]
"""
GATES = """
models:
  demo:
    production:
      suites: [guard]
      guard: {"*/exact_match": 0.05}
      alpha: 0.05
    staging:
      suites: [guard]
      improve: ["add/exact_match"]
"""


def _registry(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as code:
        registry_main(argv)
    captured = capsys.readouterr()
    return code.value.code, captured.out, captured.err


def test_the_eval_gate_refuses_a_worse_version_and_passes_a_better_one(
    tmp_path: Path, database_url: str, demo_model_dir: Path, monkeypatch, capsys
) -> None:
    (tmp_path / "guard.yaml").write_text(SUITE)
    (tmp_path / "gates.yaml").write_text(GATES)
    for name, value in {
        "LLMOPS_HOME": str(tmp_path / "home"),
        "LLMOPS_DATABASE_URL": database_url,
        "LLMOPS_PROMOTION_GATE": "evals.gates:eval_gate",
        "LLMOPS_EVALS_SUITES_DIR": str(tmp_path),
        "LLMOPS_EVALS_GATES_FILE": str(tmp_path / "gates.yaml"),
    }.items():
        monkeypatch.setenv(name, value)
    # an adapter with random weights on every projection: it forgets what the base knows
    broken = make_adapter(
        demo_model_dir, tmp_path / "broken", seed=1, r=16,
        targets=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"),
    )  # fmt: skip
    assert _registry(["register", "demo", str(demo_model_dir)], capsys)[0] == 0
    assert _registry(
        ["register", "demo", str(broken), "--kind", "adapter", "--format", "peft-lora",
         "--parent", "demo:1"], capsys
    )[0] == 0  # fmt: skip

    code, _, err = _registry(["promote", "demo:1", "production"], capsys)
    assert code == 0, err  # nothing to compare with: scored and let through
    code, _, err = _registry(["promote", "demo:2", "production"], capsys)
    assert code == 2 and "failed gate eval" in err and "exact_match fell from" in err, err
    code, out, _ = _registry(["--json", "alias", "list", "demo"], capsys)
    assert '"production"' in out and '"version": 1' in out  # unchanged

    # with the worse version in staging, the better one must (and does) improve add
    assert _registry(["alias", "set", "demo", "staging", "2"], capsys)[0] == 0
    code, _, err = _registry(["promote", "demo:1", "staging", "--reason", "fixes add"], capsys)
    assert code == 0, err
    code, out, _ = _registry(["--json", "history", "demo"], capsys)
    events = json.loads(out)
    gate = events[-1]["gate"]
    assert events[-1]["alias"] == "staging" and gate["gate"] == "eval" and gate["passed"]
    add = next(d for d in gate["details"]["deltas"] if d["metric"] == "add/exact_match")
    assert add["delta"]["value"] > 0.5 and add["p_value"] < 0.05 and add["test"] == "mcnemar"
    assert set(gate["details"]["runs"]["guard"]) == {"candidate", "champion"}

    # forcing past the gate still works, and is recorded with its reason
    code, _, err = _registry(
        ["promote", "demo:2", "production", "--force", "--reason", "incident 42"], capsys
    )
    assert code == 0, err
    last = json.loads(_registry(["--json", "history", "demo"], capsys)[1])[-1]
    assert last["forced"] and last["reason"] == "incident 42" and not last["gate"]["passed"]
