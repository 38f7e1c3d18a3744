"""From an OpenAI embeddings request to engine embeddings and back: tokenizing and limits,
key limits and the traffic log (through the `Generator`'s admission), `dimensions` and the
base64 encoding.

Both engines get the gateway's token ids, so usage and the length limit are the same
whichever answers; vLLM's pooling runner takes them on its own `/v1/embeddings`."""

import asyncio
import base64
import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from serving.errors import bad_request
from serving.generation import Generator, RequestContext
from serving.protocol import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from serving.resolver import ResolvedModel
from serving.traffic import TrafficRecord


def matryoshka_dimensions(path: Path) -> list[int] | None:
    """The shorter sizes the model was trained to give, as its config.json declares them
    (vLLM's convention: `matryoshka_dimensions`, or `is_matryoshka` for any size); None
    when it declares none."""
    config = json.loads((path / "config.json").read_text())
    if config.get("matryoshka_dimensions"):
        return [int(d) for d in config["matryoshka_dimensions"]]
    return [] if config.get("is_matryoshka") else None


def _shorten(vector: list[float], dimensions: int) -> list[float]:
    head = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in head)) or 1.0
    return [x / norm for x in head]


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


class Embedder:
    def __init__(self, generator: Generator):
        self.generator = generator

    async def embed(self, req: EmbeddingRequest, ctx: RequestContext) -> EmbeddingResponse:
        gen = self.generator
        resolved = await gen.resolve(req, ctx, embedding=True)
        dimensions = await asyncio.to_thread(self._dimensions, req, resolved)
        texts, ids = await asyncio.to_thread(self._tokenize, req, resolved)
        engine = gen.engine_for(resolved)
        cost = sum(len(i) for i in ids)
        started = time.perf_counter()
        async with gen.admitted(ctx.key, cost):
            gen.metrics.requests.labels(resolved.version.ref, engine.name, ctx.endpoint).inc()
            vectors = await engine.embed(ctx.request_id, resolved.served, ids)
        elapsed = time.perf_counter() - started
        labels = (resolved.version.ref, engine.name)
        gen.metrics.latency.labels(*labels).observe(elapsed)
        gen.metrics.prompt_tokens.labels(*labels).inc(cost)
        self._log(req, ctx, resolved, engine.name, texts, ids, elapsed)
        if dimensions is not None:
            vectors = [_shorten(v, dimensions) for v in vectors]
        return EmbeddingResponse(
            data=[
                Embedding(index=i, embedding=_encode(v, req.encoding_format))
                for i, v in enumerate(vectors)
            ],
            model=req.model,
            usage=EmbeddingUsage(prompt_tokens=cost, total_tokens=cost),
        )

    @staticmethod
    def _dimensions(req: EmbeddingRequest, resolved: ResolvedModel) -> int | None:
        if req.dimensions is None:
            return None
        sizes = matryoshka_dimensions(resolved.served.path)
        if sizes is None:
            raise bad_request(
                f"`{req.model}` does not support `dimensions`: its config declares no "
                "Matryoshka dimensions, so shorter vectors would lose meaning; leave it out",
                param="dimensions",
            )
        if sizes and req.dimensions not in sizes:
            raise bad_request(
                f"dimensions must be one of {sizes} for `{req.model}`", param="dimensions"
            )
        return req.dimensions

    def _tokenize(
        self, req: EmbeddingRequest, resolved: ResolvedModel
    ) -> tuple[list[str], list[list[int]]]:
        tokenizer = resolved.tokenizer
        limit = min(self.generator.limits.max_prompt_tokens, resolved.max_model_len)
        texts, ids = [], []
        for index, given in enumerate(req.inputs):
            if isinstance(given, str):
                tokens = tokenizer(given).input_ids
            else:
                if unknown := [t for t in given if t >= len(tokenizer)]:
                    raise bad_request(
                        f"input {index}: token id {unknown[0]} is outside this model's "
                        f"vocabulary of {len(tokenizer)} tokens",
                        param="input",
                    )
                tokens = list(given)
            if len(tokens) > limit:
                raise bad_request(
                    f"input {index} is {len(tokens)} tokens long; this model reads at most "
                    f"{limit}. Shorten it or split it.",
                    param="input",
                )
            texts.append(given if isinstance(given, str) else tokenizer.decode(given))
            ids.append(tokens)
        return texts, ids

    def _log(
        self,
        req: EmbeddingRequest,
        ctx: RequestContext,
        resolved: ResolvedModel,
        backend: str,
        texts: list[str],
        ids: list[list[int]],
        elapsed: float,
    ) -> None:
        traffic, key = self.generator.traffic, ctx.key
        if traffic is None or not (key is None or key.log_traffic):
            return
        for text, tokens in zip(texts, ids, strict=True):  # a record per input
            traffic.record(
                TrafficRecord(
                    created_at=datetime.now(UTC),
                    request_id=ctx.request_id,
                    key_id=key.id if key else None,
                    endpoint=ctx.endpoint,
                    model=req.model,
                    version=resolved.version.ref,
                    backend=backend,
                    prompt=text,
                    output="",
                    prompt_tokens=len(tokens),
                    completion_tokens=0,
                    latency_ms=round(elapsed * 1000),
                    finish_reason="stop",
                )
            )
