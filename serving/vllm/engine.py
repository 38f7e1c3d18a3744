"""`VllmEngine`: routes generations to vLLM servers by least outstanding requests, serves
registry adapters as runtime-loaded LoRA adapters, and retries on another replica when one
fails before answering (a non-streaming request is always answered whole, so it can always
be retried)."""

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from core.errors import ErrorCode
from core.tracing import traced_headers
from serving.config import VLLM_LORA_RANKS, VllmConfig
from serving.engine import (
    EngineClient,
    GenerationChunk,
    SamplingParams,
    ServedModel,
    TokenLogprob,
)
from serving.errors import EngineError, ServingError, bad_request
from serving.vllm.server import LaunchSpec, VllmServer, wait_ready

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _upstream_error(response: httpx.Response) -> ServingError:
    """vLLM's error bodies, translated: its envelope, or its bare `{"error": "..."}`."""
    try:
        error = response.json().get("error")
    except ValueError:
        error = None
    message = error.get("message") if isinstance(error, dict) else error
    message = message or response.text[:200] or response.reason_phrase
    if response.status_code == 400:
        return bad_request(f"the model server refused the request: {message}")
    return ServingError(
        ErrorCode.UPSTREAM, f"the model server failed: {message}", api_code="upstream_error"
    )


def _logprobs(data: dict[str, Any] | None) -> list[TokenLogprob]:
    if not data:
        return []
    tops = data.get("top_logprobs") or [{}] * len(data["tokens"])
    return [
        TokenLogprob(token, logprob if logprob is not None else 0.0, tuple((top or {}).items()))
        for token, logprob, top in zip(data["tokens"], data["token_logprobs"], tops, strict=True)
    ]


def _prompt_logprobs(
    scored: list[dict[str, Any] | None] | None, prompt_ids: list[int], top: int
) -> list[TokenLogprob]:
    """vLLM's `prompt_logprobs` (per position: token id -> logprob, rank, decoded token,
    for the prompt's token and the most likely others; None first) as token logprobs."""
    result = []
    for token_id, entry in zip(prompt_ids, scored or [None] * len(prompt_ids), strict=True):
        if entry is None:
            result.append(TokenLogprob("", None))
            continue
        own = entry[str(token_id)]
        alternatives = sorted(
            (e for e in entry.values() if e.get("rank") is not None and e["rank"] <= top),
            key=lambda e: e["rank"],
        )
        result.append(
            TokenLogprob(
                own["decoded_token"],
                own["logprob"],
                tuple((e["decoded_token"], e["logprob"]) for e in alternatives),
            )
        )
    return result


def _sampling_extras(params: SamplingParams) -> dict[str, Any]:
    """The sampling settings beyond OpenAI's basic ones, in vLLM's completions fields."""
    extras: dict[str, Any] = {
        "top_k": params.top_k or None,
        "min_p": params.min_p,
        "frequency_penalty": params.frequency_penalty,
        "presence_penalty": params.presence_penalty,
        "repetition_penalty": params.repetition_penalty,
        "min_tokens": params.min_tokens,
        "ignore_eos": params.ignore_eos,
        "logit_bias": {str(t): b for t, b in params.logit_bias} or None,
        "user": params.user,
    }
    if params.grammar is not None:
        extras["structured_outputs"] = {"grammar": params.grammar}
    return extras


def _vllm_loads(adapter_path: Path, max_rank: int) -> bool:
    try:
        config = json.loads((adapter_path / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return False
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    rank = config.get("r", 0)
    return (
        config.get("peft_type", "LORA") == "LORA"
        and not config.get("modules_to_save")
        and not any("embed" in t or "lm_head" in t for t in targets)
        and rank in VLLM_LORA_RANKS
        and rank <= max_rank
    )


async def _sse_lines(response: httpx.Response) -> AsyncIterator[str]:
    """The lines of a server-sent event stream. Not `aiter_lines()`: it splits at every line
    boundary that `str.splitlines` knows, U+0085, U+2028 and U+2029 among them, and vLLM's JSON
    leaves those unescaped in generated text, so a line would be cut inside its JSON. vLLM
    ends its lines with LF (CR LF is accepted too)."""
    pending = b""
    async for data in response.aiter_bytes():
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            yield line.removesuffix(b"\r").decode()
    if pending:
        yield pending.removesuffix(b"\r").decode()


class VllmEngine(EngineClient):
    name = "vllm"

    def __init__(
        self,
        config: VllmConfig,
        log_dir: Path,
        needed: Callable[[], set[str]] = set,
    ):
        """`needed` says which base versions (refs) must stay up whether used or not: those
        an alias serves; other launched servers stop after `idle_stop_s` without a request."""
        self.config = config
        self.configs = {m.model: m for m in config.models}
        self.log_dir = log_dir
        self.needed = needed
        self._groups: dict[str, list[VllmServer]] = {}
        self._launching: dict[str, asyncio.Lock] = {}
        self._client: httpx.AsyncClient | None = None
        self._health: asyncio.Task | None = None

    def serves(self, model: ServedModel) -> bool:
        """Whether vLLM serves `model`: its base is configured for vLLM, and an adapter is one
        vLLM can load (LoRA on linear layers, within `max_lora_rank`; embeddings, `lm_head`
        and fully trained modules need the local engine)."""
        config = self.configs.get(model.name)
        if config is None:
            return False
        return model.adapter_path is None or _vllm_loads(model.adapter_path, config.max_lora_rank)

    @property
    def servers(self) -> list[VllmServer]:
        return [s for group in self._groups.values() for s in group]

    @property
    def queue_depth(self) -> int:
        return sum(s.outstanding for s in self.servers)

    async def replica_metrics(self, timeout_s: float = 2.0) -> list[tuple[str, str, str | None]]:
        """Each ready server's own `/metrics` text, read concurrently, as (base version,
        replica index, text); the text is None for a server that did not answer in time."""
        client = self._client
        if client is None:  # not started, or closed
            return []
        replicas = [
            (key, str(index), server)
            for key, group in list(self._groups.items())
            for index, server in enumerate(group)
            if server.ready
        ]

        async def read(server: VllmServer) -> str | None:
            try:
                response = await client.get(
                    f"{server.url}/metrics", headers=server.headers, timeout=timeout_s
                )
                response.raise_for_status()
                return response.text
            except httpx.HTTPError as err:
                log.debug("reading the metrics of vLLM at %s failed: %r", server.url, err)
                return None

        texts = await asyncio.gather(*(read(server) for _, _, server in replicas))
        return [(key, index, text) for (key, index, _), text in zip(replicas, texts, strict=True)]

    async def start(self) -> None:
        timeout = httpx.Timeout(connect=10, read=self.config.read_timeout_s, write=60, pool=None)
        self._client = httpx.AsyncClient(timeout=timeout)
        self._health = asyncio.create_task(self._health_loop())

    async def aclose(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        for server in self.servers:
            await asyncio.to_thread(server.stop)
        self._groups.clear()
        if self._client is not None:
            await self._client.aclose()

    def is_ready(self) -> bool:
        return self._client is not None and all(
            any(s.ready for s in group) for group in self._groups.values()
        )

    async def _health_loop(self) -> None:
        assert self._client is not None
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            for server in self.servers:
                await server.check(self._client)
            await self.stop_idle()

    async def stop_idle(self, now: float | None = None) -> list[str]:
        """Stop the launched servers of versions that no alias needs and no request has used
        for `idle_stop_s`; they start again on the next request. Returns the versions."""
        now = time.monotonic() if now is None else now
        idle = [
            key
            for key, group in self._groups.items()
            if all(s.spec is not None and s.outstanding == 0 for s in group)
            and now - max(s.last_used for s in group) > self.config.idle_stop_s
        ]
        if not idle:
            return []
        needed = await asyncio.to_thread(self.needed)
        stopped = [key for key in idle if key not in needed]
        for key in stopped:
            log.info("stopping the idle vLLM servers of %s", key)
            for server in self._groups[key]:
                server.ready = False  # no new request picks it while it stops
                await asyncio.to_thread(server.stop)
            del self._groups[key]
        return stopped

    async def group(self, model: ServedModel) -> list[VllmServer]:
        """The servers of `model`'s base version, launched (and waited for) on first use."""
        lock = self._launching.setdefault(model.key, asyncio.Lock())
        async with lock:
            if model.key in self._groups:
                return self._groups[model.key]
            config = self.configs[model.name]
            api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
            servers = [VllmServer(url, api_key=api_key) for url in config.urls]
            for replica in range(config.replicas if not config.urls else 0):
                port = free_port()
                spec = LaunchSpec(
                    model_path=model.path,
                    served_name=model.key,
                    port=port,
                    tensor_parallel_size=config.tensor_parallel_size,
                    pipeline_parallel_size=config.pipeline_parallel_size,
                    max_model_len=config.max_model_len,
                    max_loras=config.max_loras,
                    max_lora_rank=config.max_lora_rank,
                    extra_args=tuple(config.extra_args),
                    env=dict(config.env),
                    log_path=self.log_dir / f"{model.key.replace(':', '-')}-{replica}.log",
                    pooling=model.embedding,
                )
                servers.append(
                    VllmServer(f"http://127.0.0.1:{port}", spec, max_restarts=config.max_restarts)
                )
            assert self._client is not None
            try:
                await wait_ready(servers, self._client, config.startup_timeout_s)
            except TimeoutError as err:
                for server in servers:
                    await asyncio.to_thread(server.stop)
                log.error("%s; the servers' logs are in %s", err, self.log_dir)
                raise EngineError(f"{err}; the gateway's vLLM logs say why") from None
            self._groups[model.key] = servers
            return servers

    async def _model_name(self, server: VllmServer, model: ServedModel) -> str:
        """The vLLM model id to ask for: the base, or the adapter, loaded on first use."""
        if model.adapter_key is None:
            return model.key
        if model.adapter_key not in server.loaded_adapters:
            assert self._client is not None
            response = await self._client.post(
                f"{server.url}/v1/load_lora_adapter",
                json={"lora_name": model.adapter_key, "lora_path": str(model.adapter_path)},
                headers=server.headers,
            )
            if response.status_code != 200 and "already" not in response.text:
                raise _upstream_error(response)
            server.loaded_adapters.add(model.adapter_key)
        return model.adapter_key

    def _pick(self, servers: list[VllmServer], tried: set[int]) -> VllmServer:
        """The ready server with the fewest outstanding requests, preferring those this
        request has not failed on yet."""
        ready = [s for s in servers if s.ready]
        if not ready:
            raise EngineError("no vLLM replica of this model is available; retry shortly")
        untried = [s for s in ready if id(s) not in tried]
        return min(untried or ready, key=lambda s: s.outstanding)

    async def generate(
        self,
        request_id: str,
        model: ServedModel,
        prompt_ids: list[int],
        params: SamplingParams,
        stream: bool = True,
    ) -> AsyncIterator[GenerationChunk]:
        servers = await self.group(model)
        tried: set[int] = set()
        attempts = len(servers) + 1
        for _ in range(attempts):
            server = self._pick(servers, tried)
            server.outstanding += 1
            server.last_used = time.monotonic()
            answered = False
            try:
                body = {
                    "model": await self._model_name(server, model),
                    "prompt": prompt_ids,
                    "max_tokens": params.max_tokens,
                    "temperature": params.temperature,
                    "top_p": params.top_p,
                    "seed": params.seed,
                    "stop": list(params.stop) or None,
                    "logprobs": params.logprobs,
                    "stream": stream,
                    "skip_special_tokens": True,
                    **_sampling_extras(params),
                }
                scoring = params.prompt_logprobs is not None or params.max_tokens == 0
                if scoring:
                    # vLLM returns prompt log-probabilities whole, and takes max_tokens 0
                    # (score the prompt, generate nothing) only with echo.
                    body.update(
                        stream=False,
                        prompt_logprobs=params.prompt_logprobs,
                        echo=params.max_tokens == 0,
                    )
                chunks = self._stream if stream and not scoring else self._complete
                # Closed as soon as this generator is (the consumer stopped early), not when the
                # garbage collector gets to it: closing it closes the upstream response, and an
                # unfinished one takes its connection with it, which is how vLLM learns that it
                # should abort the request.
                async with contextlib.aclosing(chunks(server, body, len(prompt_ids))) as answer:
                    async for chunk in answer:
                        answered = True
                        yield chunk
                return
            except httpx.TransportError as err:
                if answered:
                    raise EngineError(
                        f"the vLLM server at {server.url} failed mid-stream: {err}"
                    ) from None
                log.warning("vLLM at %s failed (%r); retrying", server.url, err)
                # Refused or dead: out of rotation until the health check sees it back. Any
                # other failure (such as a kept-alive connection the server had just closed)
                # only makes this request prefer another replica.
                if isinstance(err, httpx.ConnectError) or server.exited():
                    server.ready = False
                tried.add(id(server))
            finally:
                server.outstanding -= 1
        raise EngineError(f"every vLLM replica failed this request ({attempts} attempts)")

    async def embed(
        self, request_id: str, model: ServedModel, inputs: list[list[int]]
    ) -> list[list[float]]:
        """On the model's pooling server's own `/v1/embeddings`, as token ids; retried on
        another replica when one fails (an embedding has no partial answer)."""
        servers = await self.group(model)
        assert self._client is not None
        tried: set[int] = set()
        attempts = len(servers) + 1
        for _ in range(attempts):
            server = self._pick(servers, tried)
            server.outstanding += 1
            server.last_used = time.monotonic()
            try:
                response = await self._client.post(
                    f"{server.url}/v1/embeddings",
                    json={"model": model.key, "input": inputs, "encoding_format": "float"},
                    headers=traced_headers(server.headers),
                )
                if response.status_code != 200:
                    raise _upstream_error(response)
                data = sorted(response.json()["data"], key=lambda d: d["index"])
                return [d["embedding"] for d in data]
            except httpx.TransportError as err:
                log.warning("vLLM at %s failed (%r); retrying", server.url, err)
                if isinstance(err, httpx.ConnectError) or server.exited():
                    server.ready = False
                tried.add(id(server))
            finally:
                server.outstanding -= 1
        raise EngineError(f"every vLLM replica failed this request ({attempts} attempts)")

    async def _complete(self, server: VllmServer, body: dict, prompt_tokens: int):
        assert self._client is not None
        response = await self._client.post(
            f"{server.url}/v1/completions", json=body, headers=traced_headers(server.headers)
        )
        if response.status_code != 200:
            raise _upstream_error(response)
        data = response.json()
        choice = data["choices"][0]
        generated = body["max_tokens"] > 0  # else vLLM echoed the prompt, and that is all
        yield GenerationChunk(
            text=choice["text"] if generated else "",
            prompt_tokens=data["usage"]["prompt_tokens"],
            completion_tokens=data["usage"]["completion_tokens"] if generated else 0,
            logprobs=_logprobs(choice.get("logprobs")) if generated else [],
            finish_reason=choice["finish_reason"] if generated else "length",
            prompt_logprobs=_prompt_logprobs(
                choice.get("prompt_logprobs"), body["prompt"], body.get("prompt_logprobs") or 0
            )
            if body.get("prompt_logprobs") is not None
            else None,
        )

    async def _stream(self, server: VllmServer, body: dict, prompt_tokens: int):
        assert self._client is not None
        body = {**body, "stream_options": {"include_usage": True}}
        async with self._client.stream(
            "POST",
            f"{server.url}/v1/completions",
            json=body,
            headers=traced_headers(server.headers),
        ) as response:
            if response.status_code != 200:
                await response.aread()
                raise _upstream_error(response)
            finish: GenerationChunk | None = None
            produced = 0
            async for line in _sse_lines(response):
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if not data["choices"]:
                    if finish is not None and data.get("usage"):
                        finish.prompt_tokens = data["usage"]["prompt_tokens"]
                        finish.completion_tokens = data["usage"]["completion_tokens"]
                    continue
                choice = data["choices"][0]
                logprobs = _logprobs(choice.get("logprobs"))
                produced += max(1, len(logprobs))
                chunk = GenerationChunk(
                    choice["text"], prompt_tokens, produced, logprobs, choice.get("finish_reason")
                )
                if chunk.finish_reason is None:
                    yield chunk
                else:
                    finish = chunk  # sent once the usage chunk has the exact counts
            if finish is not None:
                yield finish
