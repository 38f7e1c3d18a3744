"""A registry version loaded in this process: its weights (with its adapter applied) and its
tokenizer, from verified local copies, safetensors only."""

from dataclasses import dataclass

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from evals.errors import invalid
from registry.entities import ModelVersion, VersionFormat, VersionKind
from registry.service import Registry


@dataclass(frozen=True)
class LoadedVersion:
    version: ModelVersion
    model: object  # a causal LM, or a PeftModel around one
    tokenizer: PreTrainedTokenizerBase


def load_version(registry: Registry, ref: str) -> LoadedVersion:
    transformers_logging.disable_progress_bar()  # stderr is for the command's own messages
    version = registry.resolve(ref)
    if version.format in (VersionFormat.ONNX, VersionFormat.GGUF):
        raise invalid(
            f"{version.ref} is {version.format.value}, which this process cannot load; score it "
            "through a gateway that serves it (--base-url http://GATEWAY/v1)",
            param="model",
        )
    base = registry.base_of(version)
    path = registry.local_copy(base)
    trust = registry.trusts_remote_code(base.name)
    model = AutoModelForCausalLM.from_pretrained(
        path, use_safetensors=True, trust_remote_code=trust
    ).eval()
    if version.kind is VersionKind.ADAPTER:
        model = PeftModel.from_pretrained(model, registry.local_copy(version)).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    return LoadedVersion(version, model, tokenizer)
