"""From an OpenAI request to engine generations and back: prompt building, limits, rate
limiting, `n` choices, streaming and non-streaming responses, metrics and the traffic log."""

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import anyio

from core.callers import Caller
from core.errors import ErrorCode
from core.http import ErrorEnvelope, stream_error
from core.logs import tag_request
from core.tracing import tracer
from serving.config import OpenAIConfig
from serving.engine import EngineClient, GenerationChunk, SamplingParams, TokenLogprob
from serving.errors import ServingError, bad_request, model_not_found
from serving.keys import ApiKey
from serving.metrics import GatewayMetrics
from serving.middleware import METRICS_MODEL
from serving.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    DeltaToolCall,
    EmbeddingRequest,
    OpenAIModel,
    SamplingFields,
    ToolCall,
    TopLogprob,
    Usage,
)
from serving.protocol import TokenLogprob as ProtocolTokenLogprob
from serving.ratelimit import RateLimiter, Reservation
from serving.resolver import ModelResolver, ResolvedModel
from serving.structured import output_grammar
from serving.tool_calls import TOOL_FORMATS, ToolCallStream, ToolFormat, parse_tool_calls
from serving.traffic import TrafficLog, TrafficRecord

log = logging.getLogger(__name__)
_TOKENIZE_INLINE_CHARS = 8192
_PROMPT_PARAMS = {"chat": "messages", "responses": "input"}  # where each endpoint's prompt is


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 4096  # cap on max_tokens / max_completion_tokens
    max_prompt_tokens: int = 8192
    max_concurrent_per_key: int = 64


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    key: ApiKey | None  # None when the gateway runs without keys
    caller: Caller
    endpoint: str  # "chat", "completions" or "embeddings"
    labels: dict[str, Any] = field(default_factory=dict)  # the request's state: metric labels
    priority: int = 0  # SamplingParams.priority of its generations (batch lines run lower)


@dataclass(frozen=True)
class Prompt:
    text: str  # as the client gave it (token ids decoded), or the chat template's rendering
    ids: list[int]
    messages: list[dict[str, Any]] | None = None  # a chat request's, as the client sent them


@dataclass
class Choice:
    """Everything one of the generations produced so far (`n` per prompt)."""

    index: int
    prompt: int  # the index of the prompt it continues
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    completion_tokens: int = 0

    def add(self, chunk: GenerationChunk) -> None:
        self.text += chunk.text
        self.logprobs += chunk.logprobs
        if chunk.prompt_logprobs is not None:
            self.prompt_logprobs = chunk.prompt_logprobs
        self.finish_reason = chunk.finish_reason
        self.completion_tokens = chunk.completion_tokens


@dataclass
class Run:
    """One request in flight: its choices as they grow, and what its end must account for."""

    context: RequestContext
    model: str  # as the client asked
    resolved: ResolvedModel
    backend: str
    prompts: list[Prompt]
    choices: list[Choice]
    streams: list[AsyncIterator[GenerationChunk]]
    reservation: Reservation | None
    end_user: str | None = None  # the request's `user`
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    @property
    def usage(self) -> Usage:
        prompt = sum(len(p.ids) for p in self.prompts)
        completion = sum(c.completion_tokens for c in self.choices)
        return Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )


def _sse(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


class Generator:
    def __init__(
        self,
        resolver: ModelResolver,
        engine_for: Callable[[ResolvedModel], EngineClient],
        metrics: GatewayMetrics,
        limits: Limits,
        limiter: RateLimiter,
        traffic: TrafficLog | None = None,
        openai: OpenAIConfig | None = None,
    ):
        self.resolver = resolver
        self.openai = openai or OpenAIConfig()
        self.engine_for = engine_for
        self.metrics = metrics
        self.limits = limits
        self.limiter = limiter
        self.traffic = traffic
        self._in_flight: Counter[str] = Counter()  # requests per API key

    # -- a request's life -------------------------------------------------------------------

    async def resolve(
        self,
        req: SamplingFields | EmbeddingRequest,
        ctx: RequestContext,
        *,
        embedding: bool = False,
    ) -> ResolvedModel:
        """The version `req.model` names, once the request is known to ask only for what the
        gateway can honour, of a model of the kind the endpoint serves (`embedding` or not)."""
        self.check_fields(req)
        with tracer().start_as_current_span("resolve") as span:
            span.set_attribute("gen_ai.request.model", req.model)
            resolved = self.resolver.cached(req.model) or await asyncio.to_thread(
                self.resolver.resolve, req.model
            )
            span.set_attribute("llmops.model.version", resolved.version.ref)
        ctx.labels[METRICS_MODEL] = resolved.version.ref
        tag_request(model=resolved.version.name, version=str(resolved.version.version))
        if not ctx.caller.sees_model(resolved.version.owner):
            raise model_not_found(req.model, "no model of that name is open to this API key")
        if resolved.served.embedding and not embedding:
            raise bad_request(
                f"`{req.model}` is an embedding model; it answers /v1/embeddings only",
                param="model",
            )
        if embedding and not resolved.served.embedding:
            raise bad_request(
                f"`{req.model}` is not an embedding model; ask /v1/chat/completions or "
                "/v1/completions, or name an embedding model (registry kind `embedding`)",
                param="model",
            )
        return resolved

    def check_fields(self, request: OpenAIModel, prefix: str = "") -> None:
        """A 400 naming the first field of `request` the gateway cannot honour (or, where the
        config says so, a logged warning)."""
        unknown = request.unknown_fields(prefix)
        if not unknown:
            return
        if self.openai.unsupported_fields == "warn":
            log.warning("dropped request fields the gateway cannot honour: %s", ", ".join(unknown))
            return
        raise bad_request(
            f"unrecognized request argument supplied: {unknown[0]}. This gateway cannot honour "
            "it; remove it (or set openai.unsupported_fields: warn in the serving config to "
            "have such fields dropped with a warning)",
            param=unknown[0],
        )

    async def _start(
        self,
        req: SamplingFields,
        ctx: RequestContext,
        resolved: ResolvedModel,
        prompts_of: Callable[[], list[Prompt]],
        prompt_chars: int,
        requested: int | None,
        logprobs: int | None,
        prompt_logprobs: int | None = None,
        grammar: str | None = None,
    ) -> Run:
        if prompt_chars < _TOKENIZE_INLINE_CHARS:
            prompts = prompts_of()
        else:  # long prompts are tokenized off the event loop
            prompts = await asyncio.to_thread(prompts_of)
        limit = min(self.limits.max_prompt_tokens, resolved.max_model_len - 1)
        for prompt in prompts:
            if len(prompt.ids) > limit:
                raise bad_request(
                    f"the prompt is {len(prompt.ids)} tokens long; this model accepts at most "
                    f"{limit}. Shorten the prompt.",
                    param=_PROMPT_PARAMS.get(ctx.endpoint, "prompt"),
                )
        params = [
            self._params(req, requested, resolved, len(p.ids), logprobs, prompt_logprobs, grammar)
            for p in prompts
        ]
        engine = self.engine_for(resolved)
        engine.accepting(resolved.served)
        reservation = None
        if ctx.key is not None:
            self._enter(ctx.key)
            try:
                cost = sum(
                    len(p.ids) + req.n * q.max_tokens for p, q in zip(prompts, params, strict=True)
                )
                reservation = await self.limiter.reserve(ctx.key, cost)
            except BaseException:
                self._in_flight[ctx.key.id] -= 1
                raise
        self.metrics.requests.labels(resolved.version.ref, engine.name, ctx.endpoint).inc()
        choices, streams = [], []
        for number, (prompt, prompt_params) in enumerate(zip(prompts, params, strict=True)):
            for i in range(req.n):
                index = number * req.n + i
                seed = prompt_params.seed
                seeded = replace(
                    prompt_params,
                    seed=None if seed is None else seed + index,
                    priority=ctx.priority,
                )
                choices.append(Choice(index, number))
                streams.append(
                    engine.generate(
                        f"{ctx.request_id}-{index}",
                        resolved.served,
                        prompt.ids,
                        seeded,
                        stream=req.stream,
                    )
                )
        return Run(
            context=ctx,
            model=req.model,
            resolved=resolved,
            backend=engine.name,
            prompts=prompts,
            choices=choices,
            streams=streams,
            reservation=reservation,
            end_user=req.user,
        )

    @asynccontextmanager
    async def admitted(self, key: ApiKey | None, cost: int) -> AsyncIterator[None]:
        """Count a request whose cost in tokens is known up front (an embedding) among its
        key's requests in flight and against its token rate while it runs."""
        if key is None:
            yield
            return
        with self.in_flight(key):
            await self.limiter.reserve(key, cost)  # used whole: nothing to settle after
            yield

    @contextmanager
    def in_flight(self, key: ApiKey) -> Iterator[None]:
        """Count work of `key` (such as an explanation) among its requests in flight while the
        block runs; 429 when it has its limit in flight already."""
        self._enter(key)
        try:
            yield
        finally:
            self._in_flight[key.id] -= 1

    def _enter(self, key: ApiKey) -> None:
        """Count a request of `key` in flight; 429 when it has its limit in flight already."""
        if self._in_flight[key.id] >= self.limits.max_concurrent_per_key:
            raise ServingError(
                ErrorCode.RATE_LIMITED,
                f"key {key.name!r} has {self._in_flight[key.id]} requests in flight, its limit; "
                "wait for one to finish",
                api_code="too_many_concurrent_requests",
                headers={"Retry-After": "1"},
            )
        self._in_flight[key.id] += 1

    def _params(
        self,
        req: SamplingFields,
        requested: int | None,
        resolved: ResolvedModel,
        prompt_len: int,
        logprobs: int | None,
        prompt_logprobs: int | None,
        grammar: str | None,
    ) -> SamplingParams:
        room = resolved.max_model_len - prompt_len
        if requested is not None and requested > self.limits.max_tokens:
            raise bad_request(
                f"max_tokens is {requested}; this gateway allows at most {self.limits.max_tokens}",
                param="max_tokens",
            )
        if requested is not None and requested > room:
            raise bad_request(
                f"this model's maximum context length is {resolved.max_model_len} tokens; the "
                f"request asks for {prompt_len + requested} ({prompt_len} in the prompt, "
                f"{requested} to generate). Lower max_tokens or shorten the prompt.",
                param="max_tokens",
            )
        max_tokens = requested if requested is not None else min(room, self.limits.max_tokens)
        if req.min_tokens > max_tokens:
            raise bad_request(
                f"min_tokens is {req.min_tokens}, more than the {max_tokens} tokens the answer "
                "may have; lower min_tokens or raise max_tokens",
                param="min_tokens",
            )
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=max(req.top_k, 0),
            min_p=req.min_p,
            seed=req.seed,
            stop=tuple(req.stop_sequences),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            frequency_penalty=req.frequency_penalty,
            presence_penalty=req.presence_penalty,
            repetition_penalty=req.repetition_penalty,
            logit_bias=_logit_bias(req.logit_bias, resolved),
            min_tokens=req.min_tokens,
            ignore_eos=req.ignore_eos,
            grammar=grammar,
            user=req.user,
        )

    async def _chunks(self, run: Run) -> AsyncIterator[tuple[Choice, GenerationChunk]]:
        """The chunks of all choices as they come. However the request ends (finished, failed,
        or the client went away), its generations are cancelled and it is accounted once."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(choice: Choice, stream: AsyncIterator[GenerationChunk]) -> None:
            # The engine's generation runs in this task, under this span (its children: the
            # engine's queueing, the trace context sent to vLLM).
            with tracer().start_as_current_span("engine") as span:
                span.set_attribute("llmops.backend", run.backend)
                span.set_attribute("llmops.choice", choice.index)
                try:
                    async for chunk in stream:
                        await queue.put((choice, chunk))
                except Exception as err:
                    await queue.put(err)
                finally:
                    span.set_attribute("gen_ai.usage.output_tokens", choice.completion_tokens)
                    await queue.put(None)

        tasks = [
            asyncio.create_task(pump(c, s)) for c, s in zip(run.choices, run.streams, strict=True)
        ]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                    continue
                if isinstance(item, Exception):
                    raise item
                if run.first_token_at is None:
                    run.first_token_at = time.perf_counter()
                choice, chunk = item
                choice.add(chunk)
                yield choice, chunk
        finally:
            # Shielded: when the client goes away, Starlette cancels this task through an anyio
            # cancel scope, which cancels it again at every await until it leaves the scope, so
            # an unshielded clean-up would stop at its first await.
            with anyio.CancelScope(shield=True):
                await self._stop(run, tasks)
                await self._account(run)

    @staticmethod
    async def _stop(run: Run, tasks: list[asyncio.Task]) -> None:
        """Stop the pumps, then close their streams. In that order: a stream that a pump is
        still running inside cannot be closed (`aclose()` raises RuntimeError), and cancelling
        a pump unwinds its stream, which ends the engine's generation (the vLLM engine closes
        its upstream connection, and vLLM aborts the request when it sees it closed)."""
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in run.streams:
            await stream.aclose()

    async def _account(self, run: Run) -> None:
        labels = (run.resolved.version.ref, run.backend)
        elapsed = time.perf_counter() - run.started
        if run.first_token_at is not None:
            self.metrics.ttft.labels(*labels).observe(run.first_token_at - run.started)
        self.metrics.latency.labels(*labels).observe(elapsed)
        usage = run.usage
        self.metrics.prompt_tokens.labels(*labels).inc(usage.prompt_tokens)
        self.metrics.completion_tokens.labels(*labels).inc(usage.completion_tokens)
        key = run.context.key
        if key is not None:
            self._in_flight[key.id] -= 1
        if run.reservation is not None:
            await self.limiter.settle(run.reservation, usage.total_tokens)
        if self.traffic is None or not (key is None or key.log_traffic):
            return
        for number, prompt in enumerate(run.prompts):  # a record per prompt
            choices = [c for c in run.choices if c.prompt == number]
            self.traffic.record(
                TrafficRecord(
                    created_at=datetime.now(UTC),
                    request_id=run.context.request_id,
                    key_id=key.id if key else None,
                    endpoint=run.context.endpoint,
                    model=run.model,
                    version=run.resolved.version.ref,
                    backend=run.backend,
                    prompt=prompt.text,
                    output=choices[0].text,
                    prompt_tokens=len(prompt.ids),
                    completion_tokens=sum(c.completion_tokens for c in choices),
                    latency_ms=round(elapsed * 1000),
                    finish_reason=choices[0].finish_reason or "cancelled",
                    messages=prompt.messages,
                    end_user=run.end_user,
                )
            )

    async def _finish(self, run: Run) -> None:
        async with aclosing(self._chunks(run)) as chunks:
            async for _ in chunks:
                pass

    # -- chat -------------------------------------------------------------------------------

    async def chat(
        self, req: ChatCompletionRequest, ctx: RequestContext
    ) -> ChatCompletionResponse | AsyncIterator[bytes]:
        run, tool_format = await self._start_chat(req, ctx)
        if req.stream:
            return _event_stream(self._chat_chunks(req, run, tool_format))
        await self._finish(run)
        choices = []
        for c in run.choices:
            message, finish_reason = AssistantMessage(content=c.text), c.finish_reason
            if req.calls_tools and (parsed := parse_tool_calls(tool_format, c.text)).tool_calls:
                message = AssistantMessage(content=parsed.content, tool_calls=parsed.tool_calls)
                finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
            choices.append(
                ChatChoice(
                    index=c.index,
                    message=message,
                    logprobs=_chat_logprobs(c.logprobs) if req.logprobs else None,
                    finish_reason=finish_reason,
                )
            )
        return ChatCompletionResponse(
            id=f"chatcmpl-{ctx.request_id}", model=req.model, choices=choices, usage=run.usage
        )

    async def chat_chunks(
        self, req: ChatCompletionRequest, ctx: RequestContext
    ) -> AsyncIterator[ChatCompletionChunk]:
        """A streamed chat's chunks as objects, for the APIs built on chat (Responses)."""
        run, tool_format = await self._start_chat(req, ctx)
        return self._chat_chunks(req, run, tool_format)

    async def _start_chat(
        self, req: ChatCompletionRequest, ctx: RequestContext
    ) -> tuple[Run, ToolFormat]:
        resolved = await self.resolve(req, ctx)
        tool_format = self._tool_format(resolved)
        messages = _template_messages(req.messages)
        tools = (
            [t.model_dump(exclude_none=True) for t in req.tools or []] if req.calls_tools else None
        )

        def prompts_of() -> list[Prompt]:
            try:
                text = resolved.tokenizer.apply_chat_template(
                    messages, tools=tools, add_generation_prompt=True, tokenize=False
                )
            except Exception as err:  # the template's own message says what is wrong
                raise bad_request(
                    f"the messages do not fit the model's chat template: {err}", param="messages"
                ) from None
            ids = resolved.tokenizer(text, add_special_tokens=False).input_ids
            return [Prompt(text, ids, messages)]

        top = (req.top_logprobs or 0) if req.logprobs else None
        chars = sum(len(m.text()) for m in req.messages)
        # Building a new schema's grammar text costs up to ~150 ms: off the event loop.
        grammar = await asyncio.to_thread(output_grammar, req, tool_format)
        run = await self._start(
            req, ctx, resolved, prompts_of, chars, req.token_limit, top, grammar=grammar
        )
        return run, tool_format

    def _tool_format(self, resolved: ResolvedModel) -> ToolFormat:
        parsers = self.openai.tool_call_parsers
        return TOOL_FORMATS[parsers.get(resolved.version.name, self.openai.tool_call_parser)]

    async def _chat_chunks(
        self, req: ChatCompletionRequest, run: Run, tool_format: ToolFormat
    ) -> AsyncIterator[ChatCompletionChunk]:
        created = int(time.time())

        def chunk(
            choices: list[ChatChunkChoice], usage: Usage | None = None
        ) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=f"chatcmpl-{run.context.request_id}",
                created=created,
                model=req.model,
                choices=choices,
                usage=usage,
            )

        for c in run.choices:
            first = ChatChunkChoice(index=c.index, delta=DeltaMessage(role="assistant", content=""))
            yield chunk([first])
        calls = {c.index: ToolCallStream(tool_format) for c in run.choices if req.calls_tools}
        # Closed on the way out, however this generator ends (finished, failed, cancelled or
        # closed by the server), not whenever the garbage collector gets to it.
        async with aclosing(self._chunks(run)) as chunks:
            async for choice, piece in chunks:
                parser = calls.get(choice.index)
                deltas = (
                    _tool_deltas(parser, piece)
                    if parser is not None
                    else [DeltaMessage(content=piece.text)]
                )
                finish_reason = piece.finish_reason
                if parser is not None and parser.calls and finish_reason == "stop":
                    finish_reason = "tool_calls"
                logprobs = _chat_logprobs(piece.logprobs) if req.logprobs else None
                if not deltas and (finish_reason or logprobs):
                    deltas = [DeltaMessage()]
                for number, delta in enumerate(deltas):
                    last = number == len(deltas) - 1
                    yield chunk(
                        [
                            ChatChunkChoice(
                                index=choice.index,
                                delta=delta,
                                logprobs=logprobs if number == 0 else None,
                                finish_reason=finish_reason if last else None,
                            )
                        ]
                    )
        if req.stream_options and req.stream_options.include_usage:
            yield chunk([], run.usage)

    # -- completions ------------------------------------------------------------------------

    async def complete(
        self, req: CompletionRequest, ctx: RequestContext
    ) -> CompletionResponse | AsyncIterator[bytes]:
        resolved = await self.resolve(req, ctx)

        def prompts_of() -> list[Prompt]:
            tokenizer, prompts = resolved.tokenizer, []
            for given in req.prompts:
                if isinstance(given, str):
                    prompts.append(Prompt(given, tokenizer(given).input_ids))
                    continue
                if unknown := [t for t in given if t >= len(tokenizer)]:
                    raise bad_request(
                        f"token id {unknown[0]} is outside this model's vocabulary of "
                        f"{len(tokenizer)} tokens",
                        param="prompt",
                    )
                prompts.append(Prompt(tokenizer.decode(given), list(given)))
            return prompts

        scored = req.logprobs if req.echo and req.logprobs is not None else None
        chars = sum(len(p) for p in req.prompts)
        run = await self._start(
            req, ctx, resolved, prompts_of, chars, req.max_tokens, req.logprobs, scored
        )
        if req.stream:
            return self._completion_stream(req, run)
        await self._finish(run)
        return CompletionResponse(
            id=f"cmpl-{ctx.request_id}",
            model=req.model,
            choices=[
                CompletionChoice(
                    index=c.index,
                    text=(run.prompts[c.prompt].text if req.echo else "") + c.text,
                    logprobs=self._logprobs(req, run, c, c.logprobs, echoed=req.echo),
                    finish_reason=c.finish_reason,
                )
                for c in run.choices
            ],
            usage=run.usage,
        )

    async def _completion_stream(self, req: CompletionRequest, run: Run) -> AsyncIterator[bytes]:
        created = int(time.time())

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
            body = CompletionResponse(
                id=f"cmpl-{run.context.request_id}",
                created=created,
                model=req.model,
                choices=choices,
                usage=usage,
            )
            return _sse(body.model_dump_json(exclude_none=True))

        sent = {c.index: 0 for c in run.choices}  # characters of each choice's text sent
        echoed: set[int] = set()
        # Closed on the way out, however this generator ends (finished, failed, cancelled or
        # closed by the server), not whenever the garbage collector gets to it.
        async with aclosing(self._chunks(run)) as chunks, ending_in_error() as failed:
            async for choice, piece in chunks:
                echo = req.echo and choice.index not in echoed  # with the first chunk
                echoed.add(choice.index)
                text = (run.prompts[choice.prompt].text if echo else "") + piece.text
                logprobs = self._logprobs(
                    req, run, choice, piece.logprobs, echoed=echo, offset=sent[choice.index]
                )
                sent[choice.index] += len(text)
                yield chunk(
                    [
                        CompletionChoice(
                            index=choice.index,
                            text=text,
                            logprobs=logprobs,
                            finish_reason=piece.finish_reason,
                        )
                    ]
                )
        if failed:
            yield _sse(failed[0].model_dump_json())
            return
        if req.stream_options and req.stream_options.include_usage:
            yield chunk([], run.usage)
        yield _sse("[DONE]")

    @staticmethod
    def _logprobs(
        req: CompletionRequest,
        run: Run,
        choice: Choice,
        generated: list[TokenLogprob],
        *,
        echoed: bool,
        offset: int = 0,
    ) -> CompletionLogprobs | None:
        """Completions' log-probabilities of `generated`, after those of the prompt when it
        is `echoed` (its tokens as the tokenizer spells them, the first one unscored)."""
        if req.logprobs is None:
            return None
        result = CompletionLogprobs(top_logprobs=[])
        if echoed:
            prompt = run.prompts[choice.prompt]
            tokenizer = run.resolved.tokenizer
            scores = choice.prompt_logprobs or [TokenLogprob("", None)] * len(prompt.ids)
            position = offset
            for token_id, score in zip(prompt.ids, scores, strict=True):
                token = tokenizer.decode([token_id])
                _append(result, token, score, position)
                position += len(token)
            offset += len(prompt.text)
        for score in generated:
            _append(result, score.token, score, offset)
            offset += len(score.token)
        return result


def _logit_bias(
    biases: dict[str, float] | None, resolved: ResolvedModel
) -> tuple[tuple[int, float], ...]:
    vocabulary = resolved.vocab_size
    for token in biases or {}:
        if int(token) >= vocabulary:
            raise bad_request(
                f"logit_bias names token {token}, outside this model's vocabulary of "
                f"{vocabulary} tokens",
                param="logit_bias",
            )
    return tuple((int(token), bias) for token, bias in (biases or {}).items())


@asynccontextmanager
async def ending_in_error() -> AsyncIterator[list[ErrorEnvelope]]:
    """Catches what fails a stream midway (an engine that went away) into the list it yields,
    as the error event that the stream then ends with (OpenAI's SDKs raise it as an
    APIError) instead of a connection cut without a word."""
    failed: list[ErrorEnvelope] = []
    try:
        yield failed
    except Exception as err:
        failed.append(stream_error(err))


async def _event_stream(chunks: AsyncIterator[ChatCompletionChunk]) -> AsyncIterator[bytes]:
    """Chunks as server-sent events, ended as OpenAI ends them."""
    async with aclosing(chunks), ending_in_error() as failed:
        async for chunk in chunks:
            yield _sse(chunk.model_dump_json(exclude_none=True))
    yield _sse(failed[0].model_dump_json() if failed else "[DONE]")


def _template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as chat templates read them (Hugging Face's conventions: a tool call's
    arguments as an object; `developer` is the system role of models without one of its own)."""
    rendered = []
    for number, message in enumerate(messages):
        item: dict[str, Any] = {
            "role": "system" if message.role == "developer" else message.role,
            "content": message.text(),
        }
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": _arguments(call, f"messages.{number}.tool_calls.{i}"),
                    },
                }
                for i, call in enumerate(message.tool_calls)
            ]
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            item["name"] = message.name
        rendered.append(item)
    return rendered


def _arguments(call: ToolCall, where: str) -> Any:
    try:
        return json.loads(call.function.arguments)
    except json.JSONDecodeError as err:
        raise bad_request(
            f"{where}.function.arguments is not JSON ({err}); send the arguments the model "
            "gave, as a JSON text",
            param=f"{where}.function.arguments",
        ) from None


def _tool_deltas(parser: ToolCallStream, piece: GenerationChunk) -> list[DeltaMessage]:
    deltas = []
    for item in parser.feed(piece.text, final=piece.finish_reason is not None):
        if isinstance(item, str):
            deltas.append(DeltaMessage(content=item))
        else:
            call = DeltaToolCall(
                index=parser.calls - 1, id=item.id, type="function", function=item.function
            )
            deltas.append(DeltaMessage(tool_calls=[call]))
    return deltas


def _append(result: CompletionLogprobs, token: str, score: TokenLogprob, offset: int) -> None:
    result.tokens.append(token)
    result.token_logprobs.append(score.logprob)
    result.top_logprobs.append(dict(score.top) if score.logprob is not None else None)
    result.text_offset.append(offset)


def _chat_logprobs(logprobs: list[TokenLogprob]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            ProtocolTokenLogprob(
                token=lp.token,
                logprob=lp.logprob,
                bytes=list(lp.token.encode()),
                top_logprobs=[
                    TopLogprob(token=t, logprob=v, bytes=list(t.encode())) for t, v in lp.top
                ],
            )
            for lp in logprobs
        ]
    )
