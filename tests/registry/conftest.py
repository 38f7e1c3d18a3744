import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from registry.service import Registry, open_registry
from registry.settings import RegistrySettings

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
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> RegistrySettings:
    return RegistrySettings(home=tmp_path / "home", database_url=database_url, actor="tester")


@pytest.fixture
def registry(settings: RegistrySettings) -> Registry:
    return open_registry(settings)


def make_model_dir(path: Path, seed: int = 0) -> Path:
    """A small directory shaped like a Hugging Face model: config and safetensors weights."""
    path.mkdir(parents=True)
    weights = np.random.default_rng(seed).standard_normal((8, 4)).astype(np.float32)
    save_file({"lm_head.weight": weights}, str(path / "model.safetensors"))
    (path / "config.json").write_text(f'{{"model_type": "llama", "seed": {seed}}}')
    (path / "tokenizer").mkdir()
    (path / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0"}')
    return path


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "model-a", seed=0)


@pytest.fixture
def other_model_dir(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "model-b", seed=1)
