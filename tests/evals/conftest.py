from pathlib import Path

import pytest

from finetune.demo.build import DemoBuild, build_demo_model
from finetune.demo.spec import FULL


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> DemoBuild:
    """The demo model `llm-serve` serves (FULL spec: add, upper and lookup learned), built
    once for the session: about four minutes on two cores."""
    return build_demo_model(tmp_path_factory.mktemp("demo") / "model", FULL)


@pytest.fixture(scope="session")
def demo_model_dir(demo_build: DemoBuild) -> Path:
    return demo_build.output_dir
