"""`llm-finetune export`: a Hugging Face version as an ONNX model with a KV cache (ONNX Runtime
GenAI's model builder, fp32 or weight-quantized int8 / int4), checked token for token against
eager PyTorch on prompts and registered as a `format: onnx` version whose parent is the
source; an export whose answers drift from the source's is refused, not registered."""

import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from core.errors import ErrorCode
from finetune.demo.skills import SKILLS, generate_splits
from finetune.errors import FinetuneError
from finetune.export.parity import Parity, measure_parity
from registry.entities import ModelVersion, VersionFormat, VersionKind
from registry.service import Registry

Precision = Literal["fp32", "int8", "int4"]
MIN_AGREEMENT: dict[str, float] = {"fp32": 0.99, "int8": 0.9, "int4": 0.8}


def default_prompts(count: int = 32) -> list[str]:
    """Questions in plain language, the demo world's evaluation questions of every skill."""
    rows = [r for s in SKILLS.values() for r in generate_splits(s, 7, 0, count)[1]]
    return [r["messages"][0]["content"] for r in rows[:: max(1, len(rows) // count)]][:count]


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


def export_onnx(
    registry: Registry,
    ref: str,
    precision: Precision = "int8",
    *,
    name: str | None = None,
    prompts: list[str] | None = None,
    min_agreement: float | None = None,
) -> tuple[ModelVersion, Parity]:
    source = registry.resolve(ref)
    if source.format is not VersionFormat.HF_SAFETENSORS:
        hint = (
            f"; merge it first: llm-finetune merge {source.ref}"
            if source.kind is VersionKind.ADAPTER
            else ""
        )
        raise FinetuneError(
            ErrorCode.INVALID,
            f"{source.ref} is {source.format.value}; export takes Hugging Face weights{hint}",
            param="ref",
        )
    source_dir = registry.local_copy(source)
    threshold = MIN_AGREEMENT[precision] if min_agreement is None else min_agreement
    with tempfile.TemporaryDirectory() as folder:
        out_dir = Path(folder) / "onnx"
        build_onnx(source_dir, out_dir, precision)
        parity = measure_parity(source_dir, out_dir, prompts or default_prompts())
        if parity.token_agreement < threshold:
            raise FinetuneError(
                ErrorCode.INVALID,
                f"the {precision} export of {source.ref} agrees with eager PyTorch on "
                f"{parity.token_agreement:.1%} of greedy tokens ({parity.exact_match:.1%} of "
                f"answers exactly), below the {threshold:.0%} required; nothing was registered",
                param="precision",
            )
        size = sum(f.stat().st_size for f in out_dir.iterdir())
        source_size = sum(f.stat().st_size for f in source_dir.glob("*.safetensors"))
        version = registry.register(
            name or f"{source.name}-onnx",
            out_dir,
            kind=VersionKind.QUANTIZED if precision != "fp32" else source.kind,
            format=VersionFormat.ONNX,
            parent=source.ref,
            metrics={
                "parity_token_agreement": parity.token_agreement,
                "parity_exact_match": parity.exact_match,
                "size_ratio": size / max(1, source_size),
            },
            tags={"precision": precision, "runtime": "onnxruntime-genai"},
            dataset_digests=source.dataset_digests,
            source=f"llm-finetune export {source.ref} --precision {precision}",
            description=f"{precision} ONNX export of {source.ref}; parity {asdict(parity)}",
        )
    return version, parity
