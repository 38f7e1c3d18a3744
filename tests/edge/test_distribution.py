"""`edge/` is its own small distribution: it imports nothing of the stack, and installs into
a fresh virtual environment without torch, where it answers with a bundle."""

import ast
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from llmops_edge.runner import EdgeModel, Sampling

ROOT = Path(__file__).resolve().parents[2]
EDGE = ROOT / "edge"
ALLOWED = {"llmops_edge", "onnxruntime_genai", "numpy", "cryptography"}


def test_the_edge_package_imports_only_its_light_dependencies() -> None:
    found = set()
    for path in (EDGE / "llmops_edge").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    assert found - sys.stdlib_module_names <= ALLOWED
    assert {"onnxruntime_genai", "cryptography"} <= found


@pytest.mark.slow
def test_it_installs_without_torch_and_answers(onnx_dir: Path, tmp_path: Path) -> None:
    env = tmp_path / "device-env"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", str(EDGE)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    no_torch = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    assert "No module named 'torch'" in no_torch.stderr
    question = "What is 12 + 30?"
    answered = subprocess.run(
        [env / "bin" / "llm-edge", "run", onnx_dir, question, "--max-tokens", "10"],
        capture_output=True,
        check=True,
        timeout=120,
    )
    expected = EdgeModel(onnx_dir).answer([{"role": "user", "content": question}], Sampling(10))
    assert answered.stdout.decode() == expected + "\n"  # bytes: the answer may hold a \r
