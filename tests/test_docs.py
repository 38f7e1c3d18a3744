"""The documentation site builds without a warning, and its recipe reference is the one the
recipe models' field descriptions give today (so that it cannot drift from the code)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).with_name("mkdocs")


def test_the_recipe_reference_is_generated_from_the_recipe_models(tmp_path: Path) -> None:
    fresh = tmp_path / "recipe.md"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "recipe_reference.py"), "--output", str(fresh)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    committed = ROOT / "docs" / "reference" / "recipe.md"
    assert committed.read_text() == fresh.read_text(), (
        "docs/reference/recipe.md is out of date: run python scripts/recipe_reference.py"
    )
    # Every key of every recipe kind is documented, with its help text.
    page = fresh.read_text()
    for key in ("`base_model`", "`lora_target_modules`", "`teacher_model`", "`kd_alpha`",
                "`pruning`", "`drop_layers`", "`split`"):  # fmt: skip
        assert key in page
    assert "Load the base in bitsandbytes NF4 (qlora)." in page


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    if not MKDOCS.exists():
        pytest.fail(f"mkdocs is not installed beside {sys.executable}: pip install -e '.[dev]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "WARNING" not in log, log
    for page in ("index.html", "serving/index.html", "reference/recipe/index.html",
                 "benchmarks/index.html", "architecture/index.html"):  # fmt: skip
        assert (tmp_path / "site" / page).is_file(), page


TEST_REFERENCE = re.compile(r"`((?:tests/[\w/]+\.py)?)::(\w+)`")


def test_every_test_the_docs_name_exists() -> None:
    """The README's security table and the docs name the tests that hold each boundary;
    `::name` alone is in the file named before it."""
    named = 0
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        path = None
        for file, name in TEST_REFERENCE.findall(page.read_text()):
            path = file or path
            assert path is not None, f"{page.name}: `::{name}` names no file before it"
            source = (ROOT / path).read_text()
            assert re.search(rf"^(async )?def {name}\(", source, re.M), (
                f"{page.name}: {path}::{name}"
            )
            named += 1
    assert named >= 20
