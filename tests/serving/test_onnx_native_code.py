"""The onnx backend refuses a folder whose genai_config.json loads a native library, however
the folder reached the disk: ONNX Runtime GenAI would load the library (and run its
constructor in the gateway) as it opens the model."""

import asyncio
from pathlib import Path

import pytest

from core.errors import ErrorCode
from serving.engine import SamplingParams, ServedModel
from serving.errors import ServingError
from serving.onnx.engine import OnnxEngine
from tests.native_code import evil_onnx_folder


async def _complete(engine: OnnxEngine, model: ServedModel) -> None:
    async for _ in engine.generate("req-1", model, [1, 5, 7], SamplingParams(max_tokens=2)):
        pass


def test_the_onnx_engine_refuses_a_custom_ops_library(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    folder = evil_onnx_folder(tmp_path / "evil", marker)
    with pytest.raises(ServingError) as err:
        asyncio.run(_complete(OnnxEngine(), ServedModel(key="evil:1", path=folder)))
    assert not marker.exists(), "the library was loaded"
    assert err.value.code is ErrorCode.INTEGRITY and err.value.api_code == "unsafe_model"
    message = err.value.message
    assert message.startswith("evil:1 cannot be served: its genai_config.json sets ")
    assert "model.decoder.session_options.custom_ops_library" in message
    assert str(tmp_path) not in message
