"""One generation in the running batch: its tokens, detokenized text, stop handling and the
queue its chunks go to."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from serving.engine import GenerationChunk, SamplingParams, TokenLogprob
from serving.local.grammar import Guide
from serving.local.sampling import token_logprobs


def find_stop(text: str, stops: tuple[str, ...], start: int) -> int:
    """Where the earliest stop string in `text[start:]` begins, or -1."""
    found = [i for stop in stops if (i := text.find(stop, start)) != -1]
    return min(found, default=-1)


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    generator: torch.Generator | None = None
    guide: Guide | None = None  # the grammar the output must follow
    stream: bool = True  # False: the caller wants the whole answer, so send it once at the end
    output_ids: list[int] = field(default_factory=list)
    generated: int = 0  # sampled tokens, the end-of-sequence token included
    text: str = ""  # decoded output, stop strings excluded
    sent: int = 0  # characters of `text` already sent
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None  # sent with the first chunk
    finish_reason: str | None = None
    aborted: bool = False
    admitted_ns: int | None = None  # when the running batch took it in (time.time_ns())
    # Incremental detokenization: only the tokens from `_prefix` on are decoded each step.
    _prefix: int = 0
    _read: int = 0
    _stop_scanned: int = 0  # characters of `text` already searched for stop strings

    def emit(self, chunk: GenerationChunk | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, chunk)

    async def chunks(self) -> AsyncIterator[GenerationChunk]:
        """The chunks the engine emits, up to the last one; an error it emits is raised."""
        while True:
            item = await self.queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return

    def append(
        self,
        token: int,
        logits: torch.Tensor,
        tokenizer: PreTrainedTokenizerBase,
        eos_ids: set[int],
        max_len: int,
    ) -> None:
        """Add a sampled token, update the text, decide whether the sequence is finished, and
        send what can be sent."""
        self.generated += 1
        if self.params.logprobs is not None:
            logprob, top = token_logprobs(logits, token, self.params.logprobs)
            self.pending_logprobs.append(
                TokenLogprob(
                    tokenizer.decode([token]),
                    logprob,
                    tuple((tokenizer.decode([t]), lp) for t, lp in top),
                )
            )
        if token in eos_ids and not self.params.ignore_eos:
            self.finish_reason = "stop"
        else:
            self.output_ids.append(token)
            self._decode_new(tokenizer)
            if (
                self.generated >= self.params.max_tokens
                or len(self.prompt_ids) + len(self.output_ids) >= max_len
            ):
                self.finish_reason = "length"
        if self.finish_reason is not None:
            # The whole decode, exactly as Hugging Face decodes a generation.
            self.text = tokenizer.decode(self.output_ids, skip_special_tokens=True)
            self._stop_scanned = 0
        if self._cut_at_stop():
            self.finish_reason = "stop"
        self._send()

    def score_prompt(
        self,
        scored: list[tuple[float | None, list[tuple[int, float]]]],
        tokenizer: PreTrainedTokenizerBase,
    ) -> None:
        self.prompt_logprobs = [
            TokenLogprob(
                tokenizer.decode([token]),
                logprob,
                tuple((tokenizer.decode([t]), lp) for t, lp in top),
            )
            for token, (logprob, top) in zip(self.prompt_ids, scored, strict=True)
        ]

    def finish_without_tokens(self) -> None:
        """End a request that asked for no tokens (it scores its prompt)."""
        self.finish_reason = "length"
        self._send()

    def _decode_new(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Decode only the last few tokens; a token that ends inside a UTF-8 character waits
        for the next one."""
        window = self.output_ids[self._prefix :]
        before = tokenizer.decode(window[: self._read - self._prefix], skip_special_tokens=True)
        after = tokenizer.decode(window, skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self.output_ids)

    def _cut_at_stop(self) -> bool:
        """Cut the text at the first stop string. Only the new text is searched (and what a
        stop string that ends in it may begin with), so a long answer costs no more per token
        than a short one."""
        if not self.params.stop:
            return False
        longest = max(len(s) for s in self.params.stop)
        start = max(0, self._stop_scanned - longest + 1)
        self._stop_scanned = len(self.text)
        index = find_stop(self.text, self.params.stop, start)
        if index == -1:
            return False
        self.text = self.text[:index]
        return True

    def _send(self) -> None:
        if self.finish_reason is None and not self.stream:
            return
        end = len(self.text)
        if self.finish_reason is None:
            # Hold back anything that may yet begin a stop string, so that streamed text
            # always equals the non-streamed text.
            end -= max((len(s) - 1 for s in self.params.stop), default=0)
        delta = self.text[self.sent : max(end, self.sent)]
        if not delta and self.finish_reason is None and not self.pending_logprobs:
            return
        self.sent += len(delta)
        chunk = GenerationChunk(
            text=delta,
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=self.generated,
            logprobs=self.pending_logprobs,
            finish_reason=self.finish_reason,
            prompt_logprobs=self.prompt_logprobs,
        )
        self.pending_logprobs = []
        self.prompt_logprobs = None
        self.emit(chunk)
