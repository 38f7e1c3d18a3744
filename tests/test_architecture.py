"""The layers of the house: imports point one way, `core` <- `registry` <- `finetune` <-
`evals` <- `serving`; `core` and `registry` never import torch; nothing imports `scripts`."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "registry", "finetune", "evals", "serving")
TORCH = {"torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "captum"}


def _imports(path: Path) -> set[str]:
    """The top-level names of every module `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", LAYERS)
def test_imports_point_one_way(package: str) -> None:
    below = set(LAYERS[: LAYERS.index(package) + 1])
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _sources(package)
        for name in _imports(path)
        if (name in LAYERS and name not in below) or name in ("scripts", "tests")
    }
    assert not wrong


@pytest.mark.parametrize("package", ["core", "registry"])
def test_the_base_layers_never_import_torch(package: str) -> None:
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _sources(package)
        for name in _imports(path) & TORCH
    }
    assert not wrong


def _loaded_after_importing(packages: tuple[str, ...]) -> set[str]:
    """The top-level modules loaded after importing every module of `packages`, in a fresh
    interpreter."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"for name in {packages!r}:\n"
        "    package = importlib.import_module(name)\n"
        "    for info in pkgutil.walk_packages(package.__path__, name + '.'):\n"
        "        if '.migrations' not in info.name and not info.name.endswith('__main__'):\n"
        "            importlib.import_module(info.name)\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_core_and_registry_load_without_torch() -> None:
    loaded = _loaded_after_importing(("core", "registry"))
    assert "registry" in loaded
    assert not loaded & (TORCH | {"finetune", "evals", "serving"})


@pytest.mark.parametrize("cli", ["evals.cli", "serving.cli", "finetune.cli"])
def test_command_lines_load_torch_only_for_commands_that_need_it(cli: str) -> None:
    """So that help, `llm-serve keys` and bad input answer at once, not after torch loads."""
    code = f"import sys, {cli}; print(' '.join(m for m in {sorted(TORCH)!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == []


@pytest.mark.slow
def test_registry_and_finetune_never_load_the_gateway() -> None:
    loaded = _loaded_after_importing(("registry", "finetune"))
    assert "finetune" in loaded and "torch" in loaded
    assert not loaded & {"evals", "serving"}
