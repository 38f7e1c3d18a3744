"""What a suite runs against: a registry version in this process (batched), or any
OpenAI-compatible server (the gateway, a vLLM server, another vendor) with a concurrency cap.

Both render chat prompts the way the gateway does (the model's chat template, then tokens
without added special tokens), so the same suite gives the same greedy numbers either way."""

import asyncio
import functools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai
import torch
from transformers import PreTrainedTokenizerBase

from core.errors import ErrorCode
from evals.errors import EvalsError
from evals.suites import GenerationSpec

Messages = list[dict[str, str]]
Progress = Callable[[int], None]  # called with how many more examples are done


@dataclass(frozen=True)
class Answer:
    text: str
    completion_tokens: int
    latency_s: float  # what the example waited for its answer (its batch, in process)


class Target(ABC):
    label: str  # recorded with the run: a version ("demo:3") or "<model> at <url>"
    version_ref: str | None  # the registry version scored, when known

    @abstractmethod
    async def answer(
        self, prompts: list[Messages], generation: GenerationSpec, progress: Progress
    ) -> list[Answer]:
        """Each prompt's answer."""

    @abstractmethod
    async def loglik(
        self, prompts: list[Messages], continuations: list[str], progress: Progress
    ) -> list[tuple[float, int]]:
        """For each prompt, the summed log-probability of its continuation and its tokens."""


def chat_ids(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False).input_ids


def _truncate(text: str, stop: list[str]) -> str:
    cuts = [text.index(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


class InProcessTarget(Target):
    """A registry version run here, many prompts per forward pass (never one at a time)."""

    def __init__(
        self, model: Any, tokenizer: PreTrainedTokenizerBase, ref: str, batch_size: int = 64
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.label = self.version_ref = ref
        self.batch_size = batch_size
        self.pad_id = self.tokenizer.pad_token_id or 0

    def _batches(self, count: int, lengths: list[int]) -> list[list[int]]:
        order = sorted(range(count), key=lambda i: lengths[i])  # similar lengths pad least
        return [order[i : i + self.batch_size] for i in range(0, count, self.batch_size)]

    async def answer(self, prompts, generation, progress) -> list[Answer]:
        ids = [chat_ids(self.tokenizer, p) for p in prompts]
        answers: list[Answer | None] = [None] * len(prompts)
        for batch in self._batches(len(ids), [len(i) for i in ids]):
            done = await asyncio.to_thread(self._generate, [ids[i] for i in batch], generation)
            for i, answer in zip(batch, done, strict=True):
                answers[i] = answer
            progress(len(batch))
        return [a for a in answers if a is not None]

    def _generate(self, rows: list[list[int]], generation: GenerationSpec) -> list[Answer]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for n, row in enumerate(rows):  # left padding, as the gateway's engine batches
            ids[n, width - len(row) :] = torch.tensor(row)
            mask[n, width - len(row) :] = 1
        started = time.perf_counter()
        sampling = {"do_sample": False}
        if generation.temperature > 0:
            sampling = {"do_sample": True, "temperature": generation.temperature}
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=generation.max_tokens,
                pad_token_id=self.pad_id,
                **sampling,
            )
        latency = time.perf_counter() - started
        answers = []
        eos = self.tokenizer.eos_token_id
        for row in out[:, width:].tolist():
            tokens = row[: row.index(eos)] if eos in row else row
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            text = _truncate(text, generation.stop)
            answers.append(Answer(text, len(tokens) + (eos in row), latency))
        return answers

    async def loglik(self, prompts, continuations, progress) -> list[tuple[float, int]]:
        pairs = [
            (chat_ids(self.tokenizer, p), self.tokenizer(c, add_special_tokens=False).input_ids)
            for p, c in zip(prompts, continuations, strict=True)
        ]
        scores: list[tuple[float, int] | None] = [None] * len(pairs)
        lengths = [len(a) + len(b) for a, b in pairs]
        for batch in self._batches(len(pairs), lengths):
            done = await asyncio.to_thread(self._score, [pairs[i] for i in batch])
            for i, score in zip(batch, done, strict=True):
                scores[i] = score
            progress(len(batch))
        return [s for s in scores if s is not None]

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, int]]:
        width = max(len(a) + len(b) for a, b in pairs)
        ids = torch.full((len(pairs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for n, (context, continuation) in enumerate(pairs):  # right padding: causal rows
            row = context + continuation
            ids[n, : len(row)] = torch.tensor(row)
            mask[n, : len(row)] = 1
        with torch.no_grad():
            logprobs = self.model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        scores = []
        for n, (context, continuation) in enumerate(pairs):
            positions = torch.arange(len(context) - 1, len(context) + len(continuation) - 1)
            chosen = logprobs[n, positions, torch.tensor(continuation)]
            scores.append((float(chosen.sum()), len(continuation)))
        return scores


class HttpTarget(Target):
    """An OpenAI-compatible server. Scoring log-likelihoods (through the completions API's
    echoed prompt log-probabilities) needs the served model's tokenizer, which `tokenizer`
    returns (None where it is not known); it is asked for only then."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str = "unused",
        concurrency: int = 8,
        tokenizer: Callable[[], PreTrainedTokenizerBase | None] = lambda: None,
        timeout_s: float = 120.0,
    ):
        self.client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=2, timeout=timeout_s
        )
        self.model = model
        self.label = f"{model} at {base_url}"
        self.version_ref = None
        self.tokenizer = functools.cache(tokenizer)
        self.slots = asyncio.Semaphore(concurrency)

    async def answer(self, prompts, generation, progress) -> list[Answer]:
        async def one(messages: Messages) -> Answer:
            async with self.slots:
                started = time.perf_counter()
                reply = await self.client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    max_tokens=generation.max_tokens,
                    temperature=generation.temperature,
                    stop=generation.stop or None,
                )
                latency = time.perf_counter() - started
            progress(1)
            tokens = reply.usage.completion_tokens if reply.usage else 0
            return Answer(reply.choices[0].message.content or "", tokens, latency)

        return await self._gather([one(p) for p in prompts])

    async def loglik(self, prompts, continuations, progress) -> list[tuple[float, int]]:
        tokenizer = self.tokenizer()
        if tokenizer is None:
            raise EvalsError(
                ErrorCode.INVALID,
                f"scoring choices or perplexity against {self.label} needs the model's "
                "tokenizer; register the model, or run the suite in process",
                param="model",
            )

        async def one(messages: Messages, continuation: str) -> tuple[float, int]:
            context = chat_ids(tokenizer, messages)
            tokens = tokenizer(continuation, add_special_tokens=False).input_ids
            async with self.slots:
                reply = await self.client.completions.create(
                    model=self.model, prompt=context + tokens, max_tokens=0, echo=True, logprobs=0
                )
            progress(1)
            scores = reply.choices[0].logprobs.token_logprobs[len(context) :]
            return float(sum(scores)), len(tokens)

        return await self._gather([one(p, c) for p, c in zip(prompts, continuations, strict=True)])

    async def _gather(self, calls: list) -> list:
        try:
            return await asyncio.gather(*calls)
        except openai.APIStatusError as err:
            raise EvalsError(
                ErrorCode.UPSTREAM,
                f"{self.label} refused a request ({err.status_code}): {err.message}",
            ) from None
        except openai.APIConnectionError:
            raise EvalsError(
                ErrorCode.UNAVAILABLE, f"{self.label} cannot be reached; is it running?"
            ) from None
