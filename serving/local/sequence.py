"""One generation in the running batch: its tokens, detokenized text, stop handling and the
queue its chunks go to."""

import asyncio
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from serving.engine import GenerationChunk, SamplingParams, TokenLogprob
from serving.local.sampling import token_logprobs


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    generator: torch.Generator | None = None
    output_ids: list[int] = field(default_factory=list)
    generated: int = 0  # sampled tokens, the end-of-sequence token included
    text: str = ""  # decoded output, stop strings excluded
    sent: int = 0  # characters of `text` already sent
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    aborted: bool = False

    def emit(self, chunk: GenerationChunk | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, chunk)

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
        if token in eos_ids:
            self.finish_reason = "stop"
        else:
            self.output_ids.append(token)
            self.text = tokenizer.decode(self.output_ids, skip_special_tokens=True)
            if self._cut_at_stop():
                self.finish_reason = "stop"
            elif (
                self.generated >= self.params.max_tokens
                or len(self.prompt_ids) + len(self.output_ids) >= max_len
            ):
                self.finish_reason = "length"
        self._send()

    def _cut_at_stop(self) -> bool:
        for stop in self.params.stop:
            index = self.text.find(stop)
            if index != -1:
                self.text = self.text[:index]
                return True
        return False

    def _send(self) -> None:
        end = len(self.text)
        if self.finish_reason is None:
            # Hold back an incomplete UTF-8 character and anything that may yet begin a stop
            # string, so that streamed text always equals the non-streamed text.
            if self.text.endswith("\ufffd"):
                return
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
        )
        self.pending_logprobs = []
        self.emit(chunk)
