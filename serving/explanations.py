"""What the gateway lends explanations (`evals.explain`): its versions, loaded on the local
engine's model copy (vLLM-served versions too), greedy answers from that engine, and the
caller's limits: an explanation is one of its key's requests in flight while it runs, and its
forward passes count against the key's tokens per minute."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager

from core.callers import Caller
from core.errors import ErrorCode
from evals.explain.service import Bill, LoadedModel, ModelHost
from serving.engine import SamplingParams
from serving.errors import ServingError, model_not_found
from serving.keys import ApiKey, KeyStore
from serving.local.engine import LocalEngine
from serving.local.lending import LentModel
from serving.ratelimit import RateLimiter
from serving.resolver import ModelResolver, ResolvedModel


class GatewayModelHost(ModelHost):
    def __init__(
        self,
        resolver: ModelResolver,
        local: LocalEngine,
        keys: KeyStore,
        limiter: RateLimiter,
        in_flight: Callable[[ApiKey], AbstractContextManager[None]],
    ):
        self.resolver = resolver
        self.local = local
        self.keys = keys
        self.limiter = limiter
        self.in_flight = in_flight  # the generator's count of each key's requests in flight

    async def load(self, model: str, caller: Caller) -> LoadedModel:
        if not caller.may_use(model):
            raise ServingError(
                ErrorCode.PERMISSION_DENIED,
                f"key {caller.name!r} may not use model {model!r}",
                param="model",
                api_code="model_not_allowed",
            )
        resolved = self.resolver.cached(model) or await asyncio.to_thread(
            self.resolver.resolve, model
        )
        if not caller.sees_model(resolved.version.owner):
            raise model_not_found(model, "no model of that name is open to this API key")
        self.local.accepting(resolved.served)
        runner = await self.local.runner(resolved.served)
        adapter = None
        if resolved.served.adapter_key is not None:
            adapter = await asyncio.to_thread(
                runner.adapter_name, resolved.served.adapter_key, str(resolved.served.adapter_path)
            )
        return LoadedModel(
            ref=resolved.version.ref,
            module=LentModel(runner, adapter),
            embeddings=runner.model.get_input_embeddings(),
            tokenizer=resolved.tokenizer,
            max_len=resolved.max_model_len,
            answer=lambda ids, max_tokens: self._answer(resolved, ids, max_tokens),
            backward=self.local.config.quantization != "bnb-4bit",
        )

    async def _answer(self, resolved: ResolvedModel, ids: list[int], max_tokens: int) -> list[int]:
        text = ""
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        request_id = f"explain-{uuid.uuid4().hex[:16]}"
        async for chunk in self.local.generate(request_id, resolved.served, ids, params, False):
            text += chunk.text
        return resolved.tokenizer(text, add_special_tokens=False).input_ids

    @asynccontextmanager
    async def admit(self, caller: Caller) -> AsyncIterator[None]:
        if caller.key_id is None:  # a gateway without keys has no limits
            yield
            return
        key = await asyncio.to_thread(self.keys.get, caller.key_id)
        with self.in_flight(key):
            yield

    @asynccontextmanager
    async def charge(self, caller: Caller, tokens: int) -> AsyncIterator[Bill]:
        bill = Bill(tokens)
        if caller.key_id is None:
            yield bill
            return
        key = await asyncio.to_thread(self.keys.get, caller.key_id)
        reservation = await self.limiter.reserve(key, tokens)
        try:
            yield bill
        finally:
            await self.limiter.settle(reservation, bill.tokens)
