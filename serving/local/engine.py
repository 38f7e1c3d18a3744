"""`LocalEngine`: the embedded default backend, one `ModelRunner` per loaded base model."""

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from core.tracing import tracer
from serving.engine import EngineClient, GenerationChunk, SamplingParams, ServedModel
from serving.errors import overloaded
from serving.local.embeddings import EmbeddingRunner
from serving.local.runner import ModelRunner
from serving.local.sequence import Sequence


@dataclass(frozen=True)
class LocalEngineConfig:
    max_num_seqs: int = 32
    max_waiting: int = 256  # per model; more is refused with 503
    max_loaded_models: int = 2  # base models in memory; the least recently used idle one goes
    quantization: Literal["bnb-4bit"] | None = None
    device_map: str | dict[str, Any] | None = None  # accelerate sharding, e.g. "auto"
    max_memory: dict[str, str] | None = None  # per device, e.g. {"0": "10GiB", "cpu": "30GiB"}
    offload_folder: str | None = None  # where layers mapped to "disk" are kept
    dtype: str = "auto"


def load_model(path: str, config: LocalEngineConfig):
    """Load a causal LM from a Hugging Face directory, safetensors only."""
    kwargs: dict[str, Any] = {"use_safetensors": True, "dtype": config.dtype}
    if config.quantization == "bnb-4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    if config.device_map is not None:
        kwargs["device_map"] = config.device_map
        kwargs["max_memory"] = config.max_memory
        kwargs["offload_folder"] = config.offload_folder
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.eval(), AutoTokenizer.from_pretrained(path)


class LocalEngine(EngineClient):
    name = "local"

    def __init__(self, config: LocalEngineConfig | None = None):
        self.config = config or LocalEngineConfig()
        self._runners: dict[str, ModelRunner] = {}  # least recently used first
        self._loading: dict[str, asyncio.Lock] = {}
        self._embedders: dict[str, EmbeddingRunner] = {}  # embedding models, loaded on first use
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def aclose(self) -> None:
        for runner in self._runners.values():
            await asyncio.to_thread(runner.stop)
        self._runners.clear()
        self._embedders.clear()
        self._started = False

    def is_ready(self) -> bool:
        return self._started

    @property
    def queue_depth(self) -> int:
        return sum(r.num_waiting for r in self._runners.values())

    def accepting(self, model: ServedModel) -> None:
        runner = self._runners.get(model.key)
        if runner is not None and runner.num_waiting >= self.config.max_waiting:
            raise overloaded(f"{runner.num_waiting} requests already wait for {model.key}")

    def loaded(self, key: str) -> ModelRunner | None:
        """The runner of the base model `key` if it is loaded; it loads nothing (any thread)."""
        return self._runners.get(key)

    async def runner(self, model: ServedModel) -> ModelRunner:
        """The runner of `model`'s base, loading it on first use (and unloading the least
        recently used idle model when `max_loaded_models` are loaded)."""
        lock = self._loading.setdefault(model.key, asyncio.Lock())
        async with lock:
            if model.key not in self._runners:
                await self._make_room()
                loaded, tokenizer = await asyncio.to_thread(
                    load_model, str(model.path), self.config
                )
                self._runners[model.key] = ModelRunner(
                    loaded,
                    tokenizer,
                    name=model.key,
                    max_num_seqs=self.config.max_num_seqs,
                    max_waiting=self.config.max_waiting,
                )
            runner = self._runners.pop(model.key)
            self._runners[model.key] = runner  # now the most recently used
            return runner

    async def _make_room(self) -> None:
        while len(self._runners) >= self.config.max_loaded_models:
            idle = next((k for k, r in self._runners.items() if r.idle), None)
            if idle is None:
                raise overloaded(
                    f"all {len(self._runners)} loaded models are busy and no other can load"
                )
            await asyncio.to_thread(self._runners.pop(idle).stop)

    async def generate(
        self,
        request_id: str,
        model: ServedModel,
        prompt_ids: list[int],
        params: SamplingParams,
        stream: bool = True,
    ) -> AsyncIterator[GenerationChunk]:
        runner = await self.runner(model)
        adapter = None
        if model.adapter_key is not None:
            adapter = await asyncio.to_thread(
                runner.adapter_name, model.adapter_key, str(model.adapter_path)
            )
        guide = None
        if params.grammar is not None:
            guide = await runner.grammars.guide(params.grammar)
        seed = params.seed if params.seed is not None else random.randrange(2**63)
        seq = Sequence(
            request_id=request_id,
            prompt_ids=list(prompt_ids),
            params=params,
            adapter=adapter,
            loop=asyncio.get_running_loop(),
            queue=asyncio.Queue(),
            generator=None if params.greedy else torch.Generator().manual_seed(seed),
            stream=stream,
            guide=guide,
        )
        submitted = time.time_ns()
        runner.submit(seq)
        queued = tracer().start_span("queue", start_time=submitted)  # until the batch takes it
        try:
            async for chunk in seq.chunks():
                yield chunk
        finally:
            if seq.finish_reason is None:
                runner.abort(seq)
            queued.end(end_time=seq.admitted_ns)

    async def embed(
        self, request_id: str, model: ServedModel, inputs: list[list[int]]
    ) -> list[list[float]]:
        lock = self._loading.setdefault(model.key, asyncio.Lock())
        async with lock:
            if model.key not in self._embedders:
                self._embedders[model.key] = await asyncio.to_thread(EmbeddingRunner, model.path)
        return await asyncio.to_thread(self._embedders[model.key].embed, inputs)
