"""`OnnxEngine`: registry versions exported to ONNX (`llm-finetune export`) served on ONNX
Runtime GenAI, the runtime of the edge bundles, so that an edge model is evaluated and
compared through the same API and suites as any other. Each request generates on its own
generator in a worker thread (ONNX Runtime sessions run concurrently); text, stop strings and
chunks are handled as the local engine handles them."""

import asyncio
import random
import threading
from collections.abc import AsyncIterator

from transformers import AutoTokenizer

from core.errors import ErrorCode
from registry.model_files import GENAI_CONFIG, genai_config_problem
from serving.engine import EngineClient, GenerationChunk, SamplingParams, ServedModel
from serving.errors import ServingError, bad_request
from serving.local.sequence import Sequence

UNSUPPORTED = {
    "logprobs": lambda p: p.logprobs is not None or p.prompt_logprobs is not None,
    "response_format and required tool calls": lambda p: p.grammar is not None,
    "logit_bias": lambda p: bool(p.logit_bias),
    "frequency_penalty and presence_penalty": lambda p: p.frequency_penalty or p.presence_penalty,
    "min_p": lambda p: p.min_p > 0,
    "min_tokens": lambda p: p.min_tokens > 0,
    "ignore_eos": lambda p: p.ignore_eos,
}


class _Loaded:
    def __init__(self, model: ServedModel):
        import onnxruntime_genai as og

        # The registry refuses such a version; a folder that got here some other way must
        # not reach the runtime, which loads the library as it opens the model.
        config = model.path / GENAI_CONFIG
        if config.is_file() and (problem := genai_config_problem(config)):
            raise ServingError(
                ErrorCode.INTEGRITY,
                f"{model.key} cannot be served: its {GENAI_CONFIG} {problem}",
                api_code="unsafe_model",
            )
        self.og = og
        self.model = og.Model(str(model.path))
        self.tokenizer = AutoTokenizer.from_pretrained(model.path, trust_remote_code=False)
        eos = self.tokenizer.eos_token_id
        self.eos_ids = {eos} if eos is not None else set()


class OnnxEngine(EngineClient):
    name = "onnx"

    def __init__(self) -> None:
        self._models: dict[str, _Loaded] = {}
        self._lock = threading.Lock()
        self._running = 0

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        self._models.clear()

    def is_ready(self) -> bool:
        return True

    @property
    def queue_depth(self) -> int:
        return self._running

    def _load(self, model: ServedModel) -> _Loaded:
        with self._lock:
            if model.key not in self._models:
                self._models[model.key] = _Loaded(model)
            return self._models[model.key]

    async def generate(
        self,
        request_id: str,
        model: ServedModel,
        prompt_ids: list[int],
        params: SamplingParams,
        stream: bool = True,
    ) -> AsyncIterator[GenerationChunk]:
        for field, asks in UNSUPPORTED.items():
            if asks(params):
                raise bad_request(
                    f"{field} cannot be served by the onnx backend; serve the version this "
                    "export was made from for that",
                    param=field.split()[0],
                )
        loaded = await asyncio.to_thread(self._load, model)
        seq = Sequence(
            request_id=request_id,
            prompt_ids=list(prompt_ids),
            params=params,
            adapter=None,
            loop=asyncio.get_running_loop(),
            queue=asyncio.Queue(),
            stream=stream,
        )
        worker = asyncio.create_task(asyncio.to_thread(self._run, loaded, seq))
        try:
            async for chunk in seq.chunks():
                yield chunk
        finally:
            seq.aborted = True  # the worker stops at its next token
            await asyncio.shield(worker)

    def _run(self, loaded: _Loaded, seq: Sequence) -> None:
        og, params = loaded.og, seq.params
        with self._lock:
            self._running += 1
        try:
            search = og.GeneratorParams(loaded.model)
            max_length = len(seq.prompt_ids) + params.max_tokens
            options = {"max_length": max_length, "do_sample": not params.greedy}
            if not params.greedy:
                options.update(
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=params.top_k or loaded.tokenizer.vocab_size,
                    random_seed=params.seed if params.seed is not None else random.randrange(2**31),
                )
            if params.repetition_penalty != 1.0:
                options["repetition_penalty"] = params.repetition_penalty
            search.set_search_options(**options)
            generator = og.Generator(loaded.model, search)
            generator.append_tokens(seq.prompt_ids)
            while not seq.aborted and seq.finish_reason is None and not generator.is_done():
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                seq.append(token, None, loaded.tokenizer, loaded.eos_ids, max_length)  # type: ignore[arg-type]
            if seq.finish_reason is None and not seq.aborted:
                seq.finish_reason = "length"
                seq.emit(
                    GenerationChunk(
                        text=seq.text[seq.sent :],
                        prompt_tokens=len(seq.prompt_ids),
                        completion_tokens=seq.generated,
                        finish_reason="length",
                    )
                )
        except Exception as err:  # the request fails, not the engine
            seq.emit(err)
        finally:
            with self._lock:
                self._running -= 1
