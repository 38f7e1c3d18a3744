"""ONNX exports: a Hugging Face version as an ONNX model with a KV cache, written by ONNX
Runtime GenAI's model builder (fp32, or int8 / int4 weights) and run by ONNX Runtime GenAI."""

import subprocess
import sys
from functools import partial
from pathlib import Path

from core.errors import ErrorCode
from finetune.errors import FinetuneError
from finetune.export.checked import checked_export
from finetune.export.parity import Parity, Precision
from registry.entities import ModelVersion, VersionFormat
from registry.service import Registry


def build_onnx(source_dir: Path, out_dir: Path, precision: Precision) -> None:
    """Run the model builder in its own process (it loads the whole model once more)."""
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
    )
