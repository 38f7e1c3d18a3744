"""The edge runner refuses a bundle whose genai_config.json loads a native library (however
the bundle reached the device): ONNX Runtime GenAI would load it as it opens the model."""

import json
from pathlib import Path

import pytest

from llmops_edge.errors import EdgeError
from llmops_edge.runner import EdgeModel
from tests.native_code import evil_onnx_folder, write_genai_config


def test_the_edge_runner_refuses_a_custom_ops_library(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    folder = evil_onnx_folder(tmp_path / "bundle", marker)
    setting = r"model\.decoder\.session_options\.custom_ops_library"
    with pytest.raises(EdgeError, match=f"sets {setting}, which loads a native library"):
        EdgeModel(folder)
    assert not marker.exists(), "the library was loaded"


@pytest.mark.parametrize(
    "options",
    [
        {"provider_options": [{"qnn": {"backend_path": "libQnnHtp.so"}}]},
        {"session.some_entry": "C:/ep/plugin.dll"},
    ],
)
def test_the_edge_runner_refuses_provider_libraries(tmp_path: Path, options: dict) -> None:
    write_genai_config(tmp_path, **options)
    with pytest.raises(EdgeError, match="which loads a native library"):
        EdgeModel(tmp_path)


def test_the_edge_runner_names_a_broken_config(tmp_path: Path) -> None:
    write_genai_config(tmp_path).write_text(json.dumps({"model": 1})[:-3])
    with pytest.raises(EdgeError, match="is not valid JSON"):
        EdgeModel(tmp_path)
