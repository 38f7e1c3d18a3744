"""`llm-finetune export`: ONNX through ONNX Runtime GenAI's builder, checked against eager
PyTorch before anything is registered."""

from pathlib import Path

import pytest

from core.settings import StackSettings
from finetune.demo.build import DemoBuild, register_demo_model
from finetune.errors import FinetuneError
from finetune.export import onnx
from finetune.export.parity import greedy_onnx
from registry.entities import VersionFormat, VersionKind
from registry.service import Registry, open_registry
from tests.serving.conftest import make_adapter

pytestmark = pytest.mark.slow


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return open_registry(StackSettings(home=tmp_path / "home", actor="tests"))


def test_an_int8_export_answers_as_the_model_does_and_is_registered(
    registry: Registry, demo_build: DemoBuild
) -> None:
    source = register_demo_model(registry, demo_build)
    questions = ["What is 12 + 30?", "What colour is the gubbin?", "Upper-case: hello"]
    version, parity = onnx.export_onnx(registry, "demo", "int8", prompts=questions)
    assert parity.token_agreement >= 0.9 and parity.prompts == 3
    assert version.format is VersionFormat.ONNX and version.kind is VersionKind.QUANTIZED
    assert version.parent == source.ref and version.tags["precision"] == "int8"
    assert version.metrics["parity_token_agreement"] == parity.token_agreement
    assert version.metrics["size_ratio"] < 0.5  # int8 weights against float32
    files = registry.local_copy(version)
    assert {"model.onnx", "genai_config.json", "tokenizer.json"} <= {
        p.name for p in files.iterdir()
    }
    assert 1 <= len(greedy_onnx(files, [[1, 2, 3]], 4)[0]) <= 4


def test_a_broken_export_is_refused_and_nothing_registered(
    registry: Registry, random_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.register("tiny", random_model_dir)
    build = onnx.build_onnx

    def broken(source_dir: Path, out_dir: Path, precision: str) -> None:
        build(source_dir, out_dir, precision)
        weights = out_dir / "model.onnx.data"
        weights.write_bytes(bytes(reversed(weights.read_bytes())))  # scrambled weights

    monkeypatch.setattr(onnx, "build_onnx", broken)
    with pytest.raises(FinetuneError, match="below the 99% required; nothing was registered"):
        onnx.export_onnx(registry, "tiny:1", "fp32", prompts=["Sort: dcba", "Upper-case: abc"])
    assert [v.ref for v in registry.list_versions("tiny")] == ["tiny:1"]


def test_an_adapter_must_be_merged_first(
    registry: Registry, random_model_dir: Path, tmp_path: Path
) -> None:
    registry.register("tiny", random_model_dir)
    adapter = make_adapter(random_model_dir, tmp_path / "lora", seed=1)
    registry.register("tiny-lora", adapter, kind="adapter", format="peft-lora", parent="tiny:1")
    with pytest.raises(FinetuneError, match="merge it first: llm-finetune merge tiny-lora:1"):
        onnx.export_onnx(registry, "tiny-lora:1", "int8")
