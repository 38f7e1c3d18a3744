"""`edge/` is its own small distribution: it imports nothing of the stack, and its wheel
installs offline into a fresh virtual environment without torch, where it answers with a
bundle."""

import ast
import shutil
import subprocess
import sys
import tomllib
import venv
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def _requirements_closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The distributions of this environment that `requirements` need, with theirs, and so
    on (extras and other platforms' requirements left out)."""
    found: dict[str, metadata.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in found or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        found[name] = metadata.distribution(name)
        todo += [Requirement(r) for r in found[name].requires or []]
    return list(found.values())


def _expose(dists: list[metadata.Distribution], folder: Path) -> Path:
    """A folder holding links to the installed files of `dists` and nothing else."""
    folder.mkdir()
    for dist in dists:
        tops = {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}
        assert tops, f"{dist.name} lists no installed files"
        for top in tops:
            if not (folder / top).exists():
                (folder / top).symlink_to(Path(dist.locate_file(top)))
    return folder


@pytest.mark.slow
def test_it_installs_without_torch_and_answers(onnx_dir: Path, tmp_path: Path) -> None:
    # The wheel, built from a copy of edge/ so that the build's own files stay out of it.
    source = shutil.copytree(
        EDGE, tmp_path / "edge", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "-q"]
    quiet = {"check": True, "capture_output": True, "timeout": 600}
    build = ["wheel", "--no-index", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    subprocess.run([*pip, *build, str(source)], **quiet)
    # No package index: the device environment sees exactly the edge package's declared
    # dependencies (and theirs), as installed here, and must install the wheel without any
    # other; torch is not among them.
    declared = tomllib.loads((EDGE / "pyproject.toml").read_text())["project"]["dependencies"]
    deps = _expose(_requirements_closure(declared), tmp_path / "deps")
    env = tmp_path / "device-env"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        **quiet,
        text=True,
    ).stdout.strip()
    (Path(site) / "edge-dependencies.pth").write_text(f"{deps}\n")
    install = ["--python", str(python), "install", "--no-index", "--find-links", str(wheels)]
    subprocess.run([*pip, *install, "llmops-edge"], **quiet)
    where = [python, "-c", "import llmops_edge; print(llmops_edge.__file__)"]
    assert subprocess.run(where, **quiet, text=True).stdout.startswith(site)  # the wheel's
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
