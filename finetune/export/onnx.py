"""ONNX exports: a Hugging Face version as an ONNX model with a KV cache, written by ONNX
Runtime GenAI's model builder (fp32, or int8 / int4 weights) and run by ONNX Runtime GenAI."""

import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np

from core.errors import ErrorCode
from finetune.errors import FinetuneError
from finetune.export.checked import OnStage, checked_export
from finetune.export.parity import Parity, Precision
from registry.entities import ModelVersion, VersionFormat
from registry.service import Registry

EMBEDDING_TABLE = "model.embed_tokens.weight"  # the builder's name for an untied table
EMBEDDING_BLOCK = 32  # values along the hidden size that share one scale


def quantize_embedding(model_dir: Path) -> None:
    """Store the token embedding table at 8 bits, read by ONNX Runtime's GatherBlockQuantized.

    The builder quantizes an embedding table only when the model ties it to its head and only
    at 4 bits; otherwise the table stays float32, and on a small model that is a large share of
    the file. Each block of `EMBEDDING_BLOCK` values gets one scale (symmetric, stored as
    unsigned bytes around a zero point of 128)."""
    import onnx
    from onnx import helper, numpy_helper

    path = model_dir / "model.onnx"
    model = onnx.load(path)
    graph = model.graph
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == EMBEDDING_TABLE]
    tables = [t for t in graph.initializer if t.name == EMBEDDING_TABLE]
    if len(gathers) != 1 or len(tables) != 1:
        return
    table = numpy_helper.to_array(tables[0])
    vocab, hidden = table.shape
    if table.dtype != np.float32 or hidden % EMBEDDING_BLOCK:
        return
    blocks = table.reshape(vocab, hidden // EMBEDDING_BLOCK, EMBEDDING_BLOCK)
    scales = np.abs(blocks).max(axis=-1) / 127
    scales[scales == 0] = 1.0
    quantized = np.clip(np.rint(blocks / scales[..., None]), -127, 127) + 128
    names = [f"{EMBEDDING_TABLE}_Q8", f"{EMBEDDING_TABLE}_scales", f"{EMBEDDING_TABLE}_zp"]
    graph.initializer.remove(tables[0])
    graph.initializer.extend(
        [
            numpy_helper.from_array(quantized.astype(np.uint8).reshape(vocab, hidden), names[0]),
            numpy_helper.from_array(scales.astype(np.float32), names[1]),
            numpy_helper.from_array(np.full(scales.shape, 128, np.uint8), names[2]),
        ]
    )
    gather = gathers[0]
    replacement = helper.make_node(
        "GatherBlockQuantized",
        [names[0], gather.input[1], names[1], names[2]],
        list(gather.output),
        name=gather.name.replace("/Gather", "/GatherBlockQuantized"),
        domain="com.microsoft",
        bits=8,
        block_size=EMBEDDING_BLOCK,
        gather_axis=0,
        quantize_axis=1,
    )
    graph.node.insert(list(graph.node).index(gather), replacement)
    graph.node.remove(gather)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save(model, path, save_as_external_data=True, location=data.name, size_threshold=0)


def build_onnx(source_dir: Path, out_dir: Path, precision: Precision) -> None:
    """Run the model builder in its own process (it loads the whole model once more); in a
    quantized export, quantize the embedding table too."""
    command = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        *("-m", str(source_dir), "-i", str(source_dir), "-o", str(out_dir)),
        *("-p", precision, "-e", "cpu"),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not (out_dir / "genai_config.json").exists():
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FinetuneError(
            ErrorCode.INVALID,
            f"the ONNX model builder cannot export this model: {last[0]}",
            param="ref",
        )
    if precision != "fp32":
        quantize_embedding(out_dir)


def greedy_onnx(model_dir: Path, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    answers = []
    for ids in prompts:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        tokens = []
        while not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        answers.append(tokens)
    return answers


def export_onnx(
    registry: Registry,
    ref: str,
    precision: Precision = "int8",
    *,
    name: str | None = None,
    prompts: list[str] | None = None,
    min_agreement: float | None = None,
    on_stage: OnStage | None = None,
) -> tuple[ModelVersion, Parity]:
    return checked_export(
        registry,
        ref,
        format=VersionFormat.ONNX,
        precision=precision,
        build=partial(build_onnx, precision=precision),
        greedy=lambda out_dir: partial(greedy_onnx, out_dir),
        tags={"runtime": "onnxruntime-genai"},
        name=name,
        prompts=prompts,
        min_agreement=min_agreement,
        on_stage=on_stage,
    )
