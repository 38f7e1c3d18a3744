"""What every export does around its runtime: take a version's Hugging Face weights, build
the export in a scratch folder, check its greedy answers against eager PyTorch, and register
it with the source as its parent and the parity figures as metrics."""

import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from core.errors import ErrorCode
from finetune.errors import FinetuneError
from finetune.export.parity import (
    MIN_AGREEMENT,
    Greedy,
    Parity,
    Precision,
    default_prompts,
    measure_parity,
    require_parity,
)
from registry.entities import ModelVersion, VersionFormat, VersionKind
from registry.service import Registry

# `on_stage(stage, stages, what)` as each of an export's stages begins.
OnStage = Callable[[int, int, str], None]
STAGES = 4


def checked_export(
    registry: Registry,
    ref: str,
    *,
    format: VersionFormat,
    precision: Precision,
    build: Callable[[Path, Path], None],
    greedy: Callable[[Path], Greedy],
    tags: dict[str, str],
    name: str | None = None,
    prompts: list[str] | None = None,
    min_agreement: float | None = None,
    on_stage: OnStage | None = None,
) -> tuple[ModelVersion, Parity]:
    """`build(source_dir, out_dir)` writes the export; `greedy(out_dir)` answers with it."""
    stage = on_stage or (lambda done, total, what: None)
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
    stage(0, STAGES, f"copying {source.ref}")
    source_dir = registry.local_copy(source)
    threshold = MIN_AGREEMENT[precision] if min_agreement is None else min_agreement
    with tempfile.TemporaryDirectory() as folder:
        out_dir = Path(folder) / format.value
        out_dir.mkdir()
        stage(1, STAGES, f"building the {format.value} export")
        build(source_dir, out_dir)
        stage(2, STAGES, "checking greedy answers against PyTorch")
        parity = measure_parity(source_dir, greedy(out_dir), prompts or default_prompts())
        require_parity(
            parity, f"the {precision} {format.value} export of {source.ref}", precision, threshold
        )
        size = sum(f.stat().st_size for f in out_dir.iterdir())
        source_size = sum(f.stat().st_size for f in source_dir.glob("*.safetensors"))
        stage(3, STAGES, "registering")
        return registry.register(
            name or f"{source.name}-{format.value}",
            out_dir,
            kind=VersionKind.QUANTIZED if precision != "fp32" else source.kind,
            format=format,
            parent=source.ref,
            metrics={
                "parity_token_agreement": parity.token_agreement,
                "parity_exact_match": parity.exact_match,
                "size_ratio": size / max(1, source_size),
            },
            tags={"precision": precision, **tags},
            dataset_digests=source.dataset_digests,
            source=(
                f"llm-finetune export {source.ref} --format {format.value} --precision {precision}"
            ),
            description=(
                f"{precision} {format.value} export of {source.ref}; parity {asdict(parity)}"
            ),
        ), parity
