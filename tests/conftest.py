"""Fixtures shared by every package's tests: the databases the stores run on, a tiny
untrained model with the demo tokenizer, and the demo model itself."""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from core.database import dispose_engines
from finetune.demo.build import DemoBuild, build_demo_model
from finetune.demo.random_model import build_random_model
from finetune.demo.spec import FULL

POSTGRES_ADMIN_URL = os.environ.get(
    "LLMOPS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"llmops_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as err:
        admin.dispose()
        if os.environ.get("LLMOPS_REQUIRE_SERVICES"):
            raise
        pytest.skip(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({type(err.orig).__name__}); "
            "start it or set LLMOPS_TEST_POSTGRES_URL"
        )
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_model(tmp_path_factory.mktemp("models") / "random")


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> DemoBuild:
    """The demo model `llm-serve` serves (FULL spec: add, upper and lookup learned), built
    once for the session: two to four minutes on two cores."""
    return build_demo_model(tmp_path_factory.mktemp("demo") / "model", FULL)


@pytest.fixture(scope="session")
def demo_model_dir(demo_build: DemoBuild) -> Path:
    return demo_build.output_dir
