"""`llm-finetune export`: ONNX through ONNX Runtime GenAI's builder and GGUF through the `gguf`
package, each checked against eager PyTorch before anything is registered."""

from pathlib import Path

import gguf
import onnx as onnx_format
import pytest
from transformers import AutoTokenizer

from core.settings import StackSettings
from finetune.demo.build import DemoBuild, register_demo_model
from finetune.errors import FinetuneError
from finetune.export import gguf as gguf_export
from finetune.export import onnx
from finetune.export.onnx import greedy_onnx
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
    assert version.metrics["size_ratio"] < 0.35  # int8 weights against float32
    files = registry.local_copy(version)
    graph = onnx_format.load(files / "model.onnx", load_external_data=False).graph
    embedding = [n for n in graph.node if n.name.startswith("/model/embed_tokens/")]
    assert [n.op_type for n in embedding] == ["GatherBlockQuantized"]  # not float32
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
    with pytest.raises(
        FinetuneError, match="below the 99% required for fp32; nothing was registered"
    ):
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


def test_an_int8_gguf_export_answers_as_the_model_does_and_reads_back(
    registry: Registry, demo_build: DemoBuild
) -> None:
    source = register_demo_model(registry, demo_build)
    questions = ["What is 12 + 30?", "What colour is the gubbin?", "Upper-case: hello"]
    version, parity = gguf_export.export_gguf(registry, "demo", "int8", prompts=questions)
    assert parity.token_agreement >= 0.9 and parity.prompts == 3
    assert version.format is VersionFormat.GGUF and version.kind is VersionKind.QUANTIZED
    assert version.parent == source.ref and version.tags["gguf_type"] == "q8_0"
    assert version.metrics["size_ratio"] < 0.35  # q8_0 blocks against float32

    reader = gguf.GGUFReader(registry.local_copy(version) / gguf_export.FILE_NAME)
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] is gguf.GGMLQuantizationType.Q8_0
    assert kinds["output_norm.weight"] is gguf.GGMLQuantizationType.F32

    def text(key: str) -> str:
        return bytes(reader.fields[key].parts[-1]).decode()

    assert text("general.architecture") == "llama" and text("tokenizer.ggml.model") == "gpt2"
    tokenizer = AutoTokenizer.from_pretrained(demo_build.output_dir)
    assert text("tokenizer.chat_template") == tokenizer.chat_template
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == len(tokenizer)


def test_a_gguf_export_without_llamas_rotary_layout_is_refused(
    registry: Registry, random_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.register("tiny", random_model_dir)
    monkeypatch.setattr(gguf_export, "_permute", lambda weights, heads: weights)
    with pytest.raises(FinetuneError, match="below the 99% required for fp32; nothing was"):
        gguf_export.export_gguf(registry, "tiny:1", "fp32", prompts=["Sort: dcba", "Upper: ab"])
    assert [v.ref for v in registry.list_versions("tiny")] == ["tiny:1"]
    monkeypatch.undo()
    version, parity = gguf_export.export_gguf(registry, "tiny:1", "fp32", prompts=["Sort: dcba"])
    assert parity.token_agreement == 1.0 and version.ref == "tiny-gguf:1"
