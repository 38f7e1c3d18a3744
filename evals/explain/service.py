"""The explanations handler: from a request to an explanation of a served version.

What only the gateway knows (its models, its engine, its rate limits) comes through a
`ModelHost`, which the gateway implements on its local engine and the command line on a copy of
the version it loads itself."""

import asyncio
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedTokenizerBase

from core.callers import Caller
from core.errors import ErrorCode
from core.tracing import tracer
from evals.errors import EvalsError, invalid
from evals.explain.attribution import GRADIENT_METHODS
from evals.explain.explainer import ExplainSettings, Explanation, explain
from evals.explain.features import Message, PromptFeatures, prompt_features
from evals.explain.protocol import (
    ExplanationMetadata,
    ExplanationRequest,
    ExplanationResponse,
    ExplanationUsage,
    FaithfulnessScore,
    TopFeature,
)
from evals.explain.scoring import Cancelled


@dataclass(frozen=True)
class LoadedModel:
    """A version ready to explain: a module whose forward pass takes `input_ids` (and
    `position_ids`, `past_key_values`, `use_cache`) and returns logits, its input embeddings
    (where gradient methods attribute), its tokenizer, and how it answers greedily."""

    ref: str  # the version, e.g. "demo:3"
    module: nn.Module
    embeddings: nn.Module
    tokenizer: PreTrainedTokenizerBase
    max_len: int
    answer: Callable[[list[int], int], Awaitable[list[int]]]  # prompt ids, max tokens -> ids
    backward: bool = True  # whether gradients flow through its weights (not bitsandbytes 4-bit)


@dataclass
class Bill:
    tokens: int  # what the explanation really ran; set before the charge ends


class ModelHost(ABC):
    @abstractmethod
    async def load(self, model: str, caller: Caller) -> LoadedModel:
        """The version `model` resolves to, if `caller` may use it (404/403 otherwise)."""

    @abstractmethod
    def admit(self, caller: Caller) -> AbstractAsyncContextManager[None]:
        """Count the explanation among the caller's requests in flight while it runs (429 when
        the caller has its limit in flight already)."""

    @abstractmethod
    def charge(self, caller: Caller, tokens: int) -> AbstractAsyncContextManager[Bill]:
        """Reserve `tokens` against the caller's rate limits (429 when they are spent); on
        exit, settle at the bill's tokens."""


@dataclass(frozen=True)
class ExplainLimits:
    max_prompt_tokens: int = 512
    max_tokens_per_explanation: int = 2_000_000  # forward-pass tokens one request may cost
    max_batch_tokens: int = 8192  # tokens in one forward pass


def estimated_tokens(request: ExplanationRequest, features: int, prompt: int, answer: int) -> int:
    """Tokens an explanation runs through the model, before it runs."""
    row = prompt + answer
    rows = {
        "feature_ablation": features + 1,
        "shapley": request.n_samples * features + 1,
        "lime": request.n_samples + 1,
        "kernel_shap": request.n_samples + 1,
        "integrated_gradients": 3 * request.n_steps * answer,  # forward and backward
    }[request.method]
    return (rows + 12) * row  # and the faithfulness check's rows


class ExplanationService:
    def __init__(self, host: ModelHost, limits: ExplainLimits | None = None):
        self.host = host
        self.limits = limits or ExplainLimits()
        self.running = 0  # explanations whose forward passes have not stopped yet

    async def explain(
        self,
        request: ExplanationRequest,
        caller: Caller,
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> ExplanationResponse:
        with tracer().start_as_current_span("explain") as span:
            span.set_attribute("gen_ai.request.model", request.model)
            span.set_attribute("llmops.explain.method", request.method)
            async with self.host.admit(caller):
                return await self._explain(request, caller, is_disconnected)

    async def _explain(self, request, caller, is_disconnected) -> ExplanationResponse:
        loaded = await self.host.load(request.model, caller)
        if request.method in GRADIENT_METHODS and not loaded.backward:
            raise EvalsError(
                ErrorCode.INVALID,
                f"{loaded.ref} runs on bitsandbytes 4-bit weights, whose backward pass "
                f"bitsandbytes does not provide here, so {request.method} cannot run on it; use a "
                "perturbation method (feature_ablation, shapley, lime, kernel_shap)",
                param="method",
                api_code="method_not_supported",
            )
        features = await asyncio.to_thread(self._features, request, loaded)
        if request.target is not None:
            answer = loaded.tokenizer(request.target, add_special_tokens=False).input_ids
        else:
            answer = await loaded.answer(features.ids, request.max_tokens)
        if not answer:
            raise invalid(
                "there is no answer to explain (the target has no tokens, or the model "
                "answered nothing); give a `target`",
                param="target",
            )
        row = len(features.ids) + len(answer)
        if row > loaded.max_len:
            raise invalid(
                f"prompt and answer are {row} tokens; this model takes at most "
                f"{loaded.max_len}. Shorten them.",
                param="target",
            )
        estimate = estimated_tokens(
            request, features.n_itp_features, len(features.ids), len(answer)
        )
        if estimate > self.limits.max_tokens_per_explanation:
            raise invalid(
                f"this explanation would run about {estimate} tokens through the model; the "
                f"gateway allows {self.limits.max_tokens_per_explanation}. Use fewer samples "
                "or steps, a coarser granularity, or a shorter prompt.",
                param="n_samples" if request.method != "integrated_gradients" else "n_steps",
            )
        settings = ExplainSettings(
            method=request.method,
            samples=request.n_samples,
            steps=request.n_steps,
            top_k=request.top_k,
            seed=request.seed,
            max_batch_tokens=self.limits.max_batch_tokens,
        )
        async with self.host.charge(caller, estimate) as bill:
            result = await self._run(loaded, features, answer, settings, is_disconnected)
            bill.tokens = result.tokens
        return _response(request, loaded, features, answer, result)

    def _features(self, request: ExplanationRequest, loaded: LoadedModel) -> PromptFeatures:
        messages = None
        if request.messages is not None:
            messages = [Message(m.role, m.content) for m in request.messages]
        features = prompt_features(
            loaded.tokenizer,
            messages=messages,
            prompt=request.prompt,
            granularity=request.granularity,
            baseline=request.baseline,
        )
        limit = min(self.limits.max_prompt_tokens, loaded.max_len - 1)
        if len(features.ids) > limit:
            raise invalid(
                f"the prompt is {len(features.ids)} tokens long; explanations take at most "
                f"{limit}. Shorten the prompt.",
                param="messages" if messages is not None else "prompt",
            )
        return features

    async def _run(self, loaded, features, answer, settings, is_disconnected) -> Explanation:
        """Explain off the event loop; a client that goes away stops it at the next pass."""
        cancelled = threading.Event()
        work = asyncio.ensure_future(
            asyncio.to_thread(
                explain,
                loaded.module,
                loaded.embeddings,
                loaded.tokenizer,
                features,
                answer,
                settings,
                cancelled,
            )
        )
        self.running += 1
        work.add_done_callback(self._stopped)
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=0.25)
                if not work.done() and is_disconnected is not None and await is_disconnected():
                    cancelled.set()
            return await work
        except Cancelled:
            raise EvalsError(
                ErrorCode.INVALID, "the client went away", api_code="client_closed"
            ) from None
        finally:
            cancelled.set()

    def _stopped(self, _work: asyncio.Future) -> None:
        self.running -= 1


def _response(request, loaded, features, answer, result: Explanation) -> ExplanationResponse:
    attribution = result.attribution
    seq = attribution.sequence.tolist()
    return ExplanationResponse(
        id=f"expl-{uuid.uuid4().hex[:24]}",
        created=int(time.time()),
        model=loaded.ref,
        method=request.method,
        granularity=request.granularity,
        input_features=result.features,
        output_tokens=result.answer_tokens,
        answer=loaded.tokenizer.decode(answer),
        attributions=None if attribution.per_token is None else attribution.per_token.tolist(),
        sequence_attributions=seq,
        top_features=[
            TopFeature(index=i, feature=result.features[i], score=seq[i])
            for i in result.top_features
        ],
        faithfulness=FaithfulnessScore(
            k=result.faithfulness.k,
            top_k_drop=result.faithfulness.top_k_drop,
            random_drop=result.faithfulness.random_drop,
            trials=result.faithfulness.trials,
            score=result.faithfulness.score,
        ),
        metadata=ExplanationMetadata(
            samples=attribution.samples,
            steps=attribution.steps,
            convergence_delta=attribution.convergence_delta,
            forward_passes=result.forward_passes,
            baseline_token_id=features.baselines,
        ),
        seconds=round(result.seconds, 4),
        usage=ExplanationUsage(
            prompt_tokens=len(features.ids),
            completion_tokens=len(answer),
            total_tokens=result.tokens,
        ),
    )
