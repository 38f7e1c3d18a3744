"""One loaded model and the thread that runs its continuous batch.

Every iteration admits waiting sequences (one batched prefill), then runs one decoding step for
every running sequence; finished and cancelled sequences leave between steps."""

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import PeftModel
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from serving.errors import EngineError, overloaded
from serving.local.batch import BatchCache
from serving.local.grammar import Grammars
from serving.local.sampling import next_token, prompt_token_logprobs, shape_logits
from serving.local.sequence import Sequence

log = logging.getLogger(__name__)
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class ModelRunner:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        max_num_seqs: int,
        max_waiting: int,
    ):
        self.model = model
        self.max_waiting = max_waiting
        self.tokenizer = tokenizer
        self.max_num_seqs = max_num_seqs
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {t for t in [*eos, tokenizer.eos_token_id] if t is not None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.max_len = model.config.max_position_embeddings
        self.grammars = Grammars(tokenizer, model.config.vocab_size, self.eos_ids)
        self._adapters: dict[str, str] = {}  # adapter key -> PEFT adapter name
        self.model_lock = threading.Lock()  # held by each step, adapter loads and lent passes
        self._cond = threading.Condition()
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._batch: BatchCache | None = None
        self._stopped = False
        self._paused = False
        self.decode_steps = 0  # batched decoding passes; a sequential engine needs one a token
        self._thread = threading.Thread(target=self._loop, name=f"engine-{name}", daemon=True)
        self._thread.start()

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def idle(self) -> bool:
        """No sequence waits or runs (finished ones leave the batch after their last chunk)."""
        running = list(self._running)
        return not self._waiting and all(s.finish_reason or s.aborted for s in running)

    def submit(self, seq: Sequence) -> None:
        with self._cond:
            if self._stopped:
                raise EngineError("the local engine is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise overloaded(f"{len(self._waiting)} requests already wait for this model")
            self._waiting.append(seq)
            self._cond.notify()

    def abort(self, seq: Sequence) -> None:
        with self._cond:
            seq.aborted = True
            self._cond.notify()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the engine between two steps: what is submitted meanwhile waits, and is
        admitted together (up to `max_num_seqs`, in order) once the block ends."""
        with self._cond:
            self._paused = True
        try:
            yield
        finally:
            with self._cond:
                self._paused = False
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def adapter_name(self, key: str, path: str) -> str:
        """Load the PEFT adapter at `path` once, under a name derived from `key`."""
        with self.model_lock:
            if key not in self._adapters:
                name = "".join(c if c.isalnum() else "_" for c in key)
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(path, adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
                self.model.eval()
                self._adapters[key] = name
            return self._adapters[key]

    # -- the engine thread ----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (self._paused or not (self._waiting or self._running)):
                    self._cond.wait()
                if self._stopped:
                    self._fail([*self._running, *self._waiting], "the local engine stopped")
                    return
                admitted = self._admit(self.max_num_seqs - len(self._running))
            try:
                with self.model_lock, torch.inference_mode():
                    if admitted:
                        self._prefill(admitted)
                        self._drop_finished()
                    if self._running:
                        self._decode()
                        self._drop_finished()
            except Exception:  # a failed step fails the sequences in it, not the engine
                log.exception("a generation step failed")
                self._fail(
                    [*self._running, *admitted], "generation failed; the server log has details"
                )
                self._running, self._batch = [], None

    def _admit(self, room: int) -> list[Sequence]:
        """Up to `room` waiting sequences, by priority (live requests before batch work),
        first come first served within one; aborted ones leave the queue. Under the lock."""
        if room <= 0 or not self._waiting:
            return []
        waiting = [s for s in self._waiting if not s.aborted]
        if all(s.params.priority == waiting[0].params.priority for s in waiting):
            chosen = waiting[:room]  # the usual case: no sorting
        else:
            chosen = sorted(waiting, key=lambda s: s.params.priority)[:room]
        taken = {id(s) for s in chosen}
        now = time.time_ns()
        for seq in chosen:
            seq.admitted_ns = now
        self._waiting = deque(s for s in self._waiting if not s.aborted and id(s) not in taken)
        return chosen

    def _fail(self, seqs: list[Sequence], message: str) -> None:
        for seq in seqs:
            if seq.finish_reason is None:
                seq.emit(EngineError(message))

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache, seqs):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        kwargs = {}
        if isinstance(self.model, PeftModel):
            kwargs["adapter_names"] = [s.adapter or BASE_ADAPTER for s in seqs]
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            **kwargs,
        )
        return out.logits, out.past_key_values

    def _prefill(self, seqs: list[Sequence]) -> None:
        length = max(len(s.prompt_ids) for s in seqs)
        ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, length - len(seq.prompt_ids) :] = torch.tensor(seq.prompt_ids)
            mask[row, length - len(seq.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        logits, cache = self._forward(ids, mask, DynamicCache(), seqs)
        for row, seq in enumerate(seqs):
            if seq.params.prompt_logprobs is not None:
                scored = prompt_token_logprobs(
                    logits[row, length - len(seq.prompt_ids) :].cpu(),
                    seq.prompt_ids,
                    seq.params.prompt_logprobs,
                )
                seq.score_prompt(scored, self.tokenizer)
        self._sample(seqs, logits[:, -1].float().cpu())
        batch = BatchCache(cache, mask)
        if self._batch is None:
            self._batch = batch
        else:
            self._batch.extend(batch)
        self._running.extend(seqs)

    def _decode(self) -> None:
        assert self._batch is not None
        ids = torch.tensor([[s.output_ids[-1]] for s in self._running], device=self.device)
        logits, cache = self._forward(ids, self._batch.grow(), self._batch.cache, self._running)
        self._batch.cache = cache
        self.decode_steps += 1
        self._sample(self._running, logits[:, -1].float().cpu())

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        greedy = logits.argmax(dim=-1).tolist()  # one op for every greedy row
        # Only the rows whose requests shape the logits pay for it; the others share the batch.
        shaped = {
            row: shape_logits(logits[row], seq.params, seq.prompt_ids, seq.output_ids, self.eos_ids)
            for row, seq in enumerate(seqs)
            if seq.params.shapes_logits and seq.params.max_tokens
        }
        guided = [row for row in shaped if seqs[row].guide is not None]
        guides = [seqs[row].guide for row in guided]
        if guided:  # all the grammars of the step in one pass
            rows = torch.stack([shaped[row] for row in guided])
            self.grammars.mask(guides, rows)  # type: ignore[arg-type]
            shaped.update(zip(guided, rows, strict=True))
            greedy_rows = rows.argmax(dim=-1).tolist()
            for row, best in zip(guided, greedy_rows, strict=True):
                greedy[row] = best
        tokens = []
        for row, seq in enumerate(seqs):
            params = seq.params
            row_logits = shaped.get(row, logits[row])
            if row in shaped and seq.guide is None:
                greedy[row] = int(row_logits.argmax())
            if params.greedy or params.max_tokens == 0:
                tokens.append(greedy[row])
            else:
                tokens.append(next_token(row_logits, params, seq.generator))
        if guided:
            self.grammars.accept(guides, [tokens[row] for row in guided])  # type: ignore[arg-type]
        for row, seq in enumerate(seqs):
            if seq.params.max_tokens == 0:  # scoring the prompt only
                seq.finish_without_tokens()
            else:
                seq.append(tokens[row], logits[row], self.tokenizer, self.eos_ids, self.max_len)

    def _drop_finished(self) -> None:
        keep = [i for i, s in enumerate(self._running) if s.finish_reason is None and not s.aborted]
        if len(keep) == len(self._running):
            return
        self._running = [self._running[i] for i in keep]
        if not keep:
            self._batch = None
        else:
            assert self._batch is not None
            self._batch.keep(keep)
