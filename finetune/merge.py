"""Merge-and-export: an adapter version folded into its base weights, registered as a
`merged` version (a plain Hugging Face model that any runtime can load)."""

import tempfile
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.errors import ErrorCode
from registry.entities import FINE_TUNED_TAG, ModelVersion, VersionFormat, VersionKind
from registry.errors import RegistryError
from registry.service import Registry


def merge_adapter(registry: Registry, ref: str, name: str | None = None) -> ModelVersion:
    """Merge adapter `ref` into its base (in float32, also for QLoRA adapters)."""
    adapter = registry.resolve(ref)
    if adapter.kind is not VersionKind.ADAPTER or adapter.parent is None:
        raise RegistryError(
            ErrorCode.INVALID,
            f"{adapter.ref} is a {adapter.kind.value} version; merge takes an adapter version "
            "with a registered base",
            param="ref",
        )
    base = registry.resolve(adapter.parent)
    base_dir = registry.local_copy(base)
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, use_safetensors=True
    )
    model = PeftModel.from_pretrained(model, registry.local_copy(adapter))
    merged = model.merge_and_unload()
    with tempfile.TemporaryDirectory() as folder:
        merged.save_pretrained(folder)
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(folder)
        return registry.register(
            name or f"{adapter.name}-merged",
            Path(folder),
            kind=VersionKind.MERGED,
            format=VersionFormat.HF_SAFETENSORS,
            parent=adapter.ref,
            metrics=adapter.metrics,
            tags={
                **{k: v for k, v in adapter.tags.items() if k != FINE_TUNED_TAG},
                "merged_from": adapter.ref,
            },
            recipe_digest=adapter.recipe_digest,
            dataset_digests=adapter.dataset_digests,
            source=f"llm-finetune merge {adapter.ref}",
        )
