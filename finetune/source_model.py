"""The model a full-weight job starts from (a distillation's teacher, the model to prune): a
registry version of Hugging Face weights, an adapter merged into its base in memory, or a
folder; loaded in float32 with its tokenizer."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from core.errors import ErrorCode
from finetune.errors import RecipeError
from registry.entities import ModelVersion, VersionFormat, VersionKind
from registry.errors import RegistryError
from registry.service import Registry


@dataclass(frozen=True)
class SourceModel:
    """Where a source's weights are: `path` (the base's, for an adapter) and `adapter`."""

    reference: str  # the registry ref (name:version), or the folder
    version: ModelVersion | None
    path: Path
    adapter: Path | None = None
    trust_remote_code: bool = False  # the registry allows the model code (auto_map) to run

    @property
    def name(self) -> str:
        return self.version.name if self.version else self.path.name

    def config(self) -> Any:
        return AutoConfig.from_pretrained(self.path, trust_remote_code=self.trust_remote_code)

    def load(self) -> tuple[PreTrainedModel, Any]:
        """The model in float32, eval mode, and its tokenizer (with a pad token)."""
        model = AutoModelForCausalLM.from_pretrained(
            self.path,
            dtype=torch.float32,
            use_safetensors=True,
            trust_remote_code=self.trust_remote_code,
        )
        if self.adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, self.adapter).merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(
            self.path, trust_remote_code=self.trust_remote_code
        )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model.eval(), tokenizer


def resolve_source(reference: str, registry: Registry, param: str) -> SourceModel:
    """`reference` as a folder or a registry version; RecipeError (naming `param`) for one
    that does not exist or whose files are not Hugging Face weights or a LoRA adapter."""
    path = Path(reference).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RecipeError(f"{param}: {reference} has no config.json", param=param)
        return SourceModel(str(path.resolve()), None, path.resolve())
    try:
        version = registry.resolve(reference)
    except RegistryError as err:
        if err.code is not ErrorCode.NOT_FOUND:
            raise
        raise RecipeError(
            f"{param} {reference!r} is neither a folder nor a registered model ({err.message})",
            param=param,
        ) from None
    if version.kind is VersionKind.ADAPTER:
        if version.parent is None:
            raise RecipeError(f"{param} {version.ref} is an adapter without a base", param=param)
        base = registry.resolve(version.parent)
        return SourceModel(
            version.ref,
            version,
            registry.local_copy(base),
            registry.local_copy(version),
            trust_remote_code=registry.trusts_remote_code(base.name),
        )
    if version.format is not VersionFormat.HF_SAFETENSORS:
        raise RecipeError(
            f"{param} {version.ref} is {version.format.value}; use a version with Hugging Face "
            "weights (the export's parent)",
            param=param,
        )
    return SourceModel(
        version.ref,
        version,
        registry.local_copy(version),
        trust_remote_code=registry.trusts_remote_code(version.name),
    )
