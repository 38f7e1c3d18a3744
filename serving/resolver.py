"""Model strings to servable models: `demo` (its production alias), `demo@staging`, `demo:3`.

Resolutions are cached for `ttl` seconds, so an alias move reaches new requests within that
time without a restart, while requests in flight keep the version they started with."""

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from core.errors import ErrorCode, StackError
from registry.entities import ModelVersion, VersionKind
from registry.service import Registry
from serving.engine import ServedModel
from serving.errors import model_not_found


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the client asked for
    version: ModelVersion
    served: ServedModel
    tokenizer: PreTrainedTokenizerBase
    max_model_len: int
    vocab_size: int  # the model's: token ids below it are valid


class ModelResolver:
    def __init__(self, registry: Registry, ttl: float = 1.0):
        self.registry = registry
        self.ttl = ttl
        self._resolved: dict[str, tuple[float, ResolvedModel]] = {}
        self._tokenizers: dict[str, PreTrainedTokenizerBase] = {}
        self._lock = threading.Lock()

    def cached(self, model: str) -> ResolvedModel | None:
        """The resolution of `model` while it is fresh, without touching the registry."""
        cached = self._resolved.get(model)
        return cached[1] if cached and cached[0] > time.monotonic() else None

    def resolve(self, model: str) -> ResolvedModel:
        """Resolve a model string; 404 `model_not_found` when the registry has no such model."""
        if (cached := self.cached(model)) is not None:
            return cached
        now = time.monotonic()
        try:
            version = self.registry.resolve(model)
            if version.archived_at is None:
                resolved = self._prepare(model, version)
        except StackError as err:
            if err.code in (ErrorCode.NOT_FOUND, ErrorCode.INVALID):
                raise model_not_found(model, err.message) from None
            raise
        if version.archived_at is not None:
            raise model_not_found(
                model, f"{version.ref} is archived; archived versions are not served"
            )
        self._resolved[model] = (now + self.ttl, resolved)
        return resolved

    def _prepare(self, name: str, version: ModelVersion) -> ResolvedModel:
        base = self.registry.base_of(version)
        base_path = self.local_path(base)
        adapter = version if version.kind is VersionKind.ADAPTER else None
        served = ServedModel(
            key=base.ref,
            path=base_path,
            adapter_key=adapter.ref if adapter else None,
            adapter_path=self.local_path(adapter) if adapter else None,
            embedding=base.kind is VersionKind.EMBEDDING,
        )
        with self._lock:
            if base.ref not in self._tokenizers:
                self._tokenizers[base.ref] = AutoTokenizer.from_pretrained(base_path)
        tokenizer = self._tokenizers[base.ref]
        return ResolvedModel(name, version, served, tokenizer, *_limits(base_path, tokenizer))

    def local_path(self, version: ModelVersion) -> Path:
        """A verified local copy of the version's files, fetched once per artifact digest."""
        with self._lock:
            return self.registry.local_copy(version)


def _limits(path: Path, tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """The context length and vocabulary size of the model files at `path`: a Hugging Face
    config, or ONNX Runtime GenAI's for an ONNX export."""
    if (path / "genai_config.json").exists():
        model = json.loads((path / "genai_config.json").read_text())["model"]
        return int(model["context_length"]), int(model["vocab_size"])
    config = json.loads((path / "config.json").read_text())
    vocab_size = int(config.get("vocab_size", len(tokenizer)))
    # A sentence-transformers model reads at most `max_seq_length` tokens (often fewer than
    # its position embeddings); its encoder would truncate anything longer.
    sentence_config = path / "sentence_bert_config.json"
    if sentence_config.is_file():
        length = json.loads(sentence_config.read_text()).get("max_seq_length")
        if length:
            return int(length), vocab_size
    return int(config.get("max_position_embeddings", 2048)), vocab_size
