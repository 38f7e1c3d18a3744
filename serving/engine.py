"""The engine-client interface both backends speak; the gateway never cares which one answers."""

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from core.refs import parse_ref

BATCH_PRIORITY = 10  # below live traffic (0)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: every token
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # how many top alternatives to report per token; None: no logprobs
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (scoring a text)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    min_tokens: int = 0  # the end of the sequence is impossible before this many tokens
    ignore_eos: bool = False  # generate past the end-of-sequence token, up to max_tokens
    # What the output must follow, enforced by constrained decoding: an EBNF grammar in
    # xgrammar's dialect, which vLLM's structured outputs take as they are.
    grammar: str | None = None
    priority: int = 0  # engines admit lower numbers first; batch work runs at BATCH_PRIORITY
    user: str | None = None  # the request's end-user id, passed on to vLLM

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def shapes_logits(self) -> bool:
        """Whether anything changes the model's logits before a token is chosen."""
        return bool(
            self.frequency_penalty
            or self.presence_penalty
            or self.repetition_penalty != 1.0
            or self.logit_bias
            or self.min_tokens
            or self.grammar is not None
        )


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float | None  # None for a prompt's first token, which nothing predicts
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ServedModel:
    """What an engine needs to run a resolved registry version: the base model's files, and
    the adapter's, if the version is an adapter."""

    key: str  # the base version's ref, e.g. "demo:1"
    path: Path
    adapter_key: str | None = None  # the adapter version's ref
    adapter_path: Path | None = None
    embedding: bool = False  # an embedding model (registry kind `embedding`): no generation

    @property
    def name(self) -> str:
        """The registry model of the base version."""
        return parse_ref(self.key).name


@dataclass
class GenerationChunk:
    """New output since the previous chunk of one sequence. The last chunk has `finish_reason`."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" or "length"
    prompt_logprobs: list[TokenLogprob] | None = None  # in the first chunk, when asked for


class EngineClient(ABC):
    name: str

    @abstractmethod
    async def start(self) -> None:
        """Start serving (load models, launch servers)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop serving and release resources; generations in flight end."""

    @abstractmethod
    def is_ready(self) -> bool:
        """Whether the engine can take requests now."""

    def accepting(self, model: ServedModel) -> None:  # noqa: B027 (most engines take all)
        """Raise a 503 with Retry-After if `model` cannot take another request now."""

    @abstractmethod
    def generate(
        self,
        request_id: str,
        model: ServedModel,
        prompt_ids: list[int],
        params: SamplingParams,
        stream: bool = True,
    ) -> AsyncIterator[GenerationChunk]:
        """Stream the continuation of the tokenized prompt. Closing the iterator early cancels
        the generation in the engine. With `stream` False the caller only needs the whole
        answer, so an engine may produce it in one chunk."""

    async def embed(
        self, request_id: str, model: ServedModel, inputs: list[list[int]]
    ) -> list[list[float]]:
        """The embedding of each tokenized input, as the model pools and normalises it."""
        raise NotImplementedError(f"the {self.name} engine serves no embedding models")

    @property
    @abstractmethod
    def queue_depth(self) -> int:
        """Requests waiting to be scheduled (local) or outstanding upstream (vLLM)."""
