"""Grammar-constrained decoding on the local engine with xgrammar: a grammar compiles once per
tokenizer (cached by its text), and each constrained sequence gets its own matcher, which masks
the tokens that cannot continue a valid output and follows the tokens chosen.

Compiling can take seconds to minutes (a schema of many optional properties), and xgrammar
cannot interrupt it. So compiles run on their own threads, at most `grammar_compile_workers`
at once per model; a request waits `grammar_compile_timeout_s` at most, and a grammar that
compiled longer than that is refused from then on without being compiled again. The threads
are not daemons: a process exits once its compiles end, as one ended in the middle of
xgrammar's C++ aborts."""

import asyncio
import concurrent.futures
import hashlib
import threading
import time
from dataclasses import dataclass, field

import torch
import xgrammar as xgr
from transformers import PreTrainedTokenizerBase

from serving.errors import EngineError, bad_request, overloaded
from serving.settings import ServingSettings
from serving.structured import xgrammar_message

_CACHE_BYTES = 256 << 20  # compiled grammars kept per model
_MAX_TOO_SLOW = 1024  # grammars remembered as too slow to compile


class Guide:
    """One sequence's grammar state."""

    def __init__(self, compiled: xgr.CompiledGrammar):
        self.matcher = xgr.GrammarMatcher(compiled)


@dataclass
class _Compile:
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    started: float | None = None  # time.monotonic() when a worker took it


class Grammars:
    """Compiles grammars for one model's tokenizer; thread-safe, compiled grammars cached."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        vocab_size: int,
        stop_ids: set[int],
        settings: ServingSettings | None = None,
    ):
        settings = settings or ServingSettings()
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._stop_ids = sorted(stop_ids)
        self._compiler: xgr.GrammarCompiler | None = None
        self._compiler_lock = threading.Lock()
        self._batch = xgr.BatchGrammarMatcher()
        self.timeout_s = settings.grammar_compile_timeout_s
        self._workers = threading.BoundedSemaphore(settings.grammar_compile_workers)
        self._max_compiling = 4 * settings.grammar_compile_workers  # running and waiting
        self._lock = threading.Lock()  # of the two below, held briefly (on the event loop too)
        self._compiling: dict[str, _Compile] = {}  # by the grammar's digest
        self._too_slow: dict[str, None] = {}  # digests, oldest first

    async def guide(self, grammar: str) -> Guide:
        """A matcher for the EBNF `grammar`: 400 if it cannot be compiled or does not compile
        within the time limit; 503 if other grammars keep the workers busy that long."""
        digest = hashlib.sha256(grammar.encode()).hexdigest()
        if digest in self._too_slow:
            raise self._too_slow_error()
        with self._lock:
            job = self._compiling.get(digest)
            if job is None:
                if len(self._compiling) >= self._max_compiling:
                    raise overloaded(f"{len(self._compiling)} output grammars are compiling")
                job = self._compiling[digest] = _Compile()
                threading.Thread(
                    target=self._compile,
                    args=(digest, grammar, job),
                    name="grammar-compile",
                    daemon=False,  # else inherited from the thread that runs the event loop
                ).start()
        waiting = asyncio.wrap_future(job.future)
        # Whoever stops waiting, the compile's outcome is collected (no asyncio warning).
        waiting.add_done_callback(lambda f: f.cancelled() or f.exception())
        await asyncio.wait([waiting], timeout=self.timeout_s)
        started = job.started
        if not waiting.done() and started is not None:
            # A worker took it after the wait began: its compile gets the whole limit too.
            remaining = started + self.timeout_s - time.monotonic()
            if remaining > 0:
                await asyncio.wait([waiting], timeout=remaining)
        if waiting.done():
            return Guide(waiting.result())
        if started is None:
            raise overloaded("other output grammars kept every compile worker busy")
        with self._lock:
            self._too_slow[digest] = None
            if len(self._too_slow) > _MAX_TOO_SLOW:
                del self._too_slow[next(iter(self._too_slow))]
        raise self._too_slow_error()

    def _too_slow_error(self) -> Exception:
        return bad_request(
            "the output's grammar (from response_format or the tools' parameters) did not "
            f"compile within the limit of {self.timeout_s:g} s; simplify the schema (fewer "
            "optional properties, alternatives or patterns)"
        )

    def _compile(self, digest: str, grammar: str, job: _Compile) -> None:
        try:
            with self._workers:
                job.started = time.monotonic()
                job.future.set_running_or_notify_cancel()
                try:
                    job.future.set_result(self._compiler_of().compile_grammar(grammar))
                except Exception as err:  # xgrammar's checks, e.g. a repetition out of range
                    job.future.set_exception(
                        bad_request(
                            "the output's grammar (from response_format or the tools' "
                            f"parameters) cannot be compiled: {xgrammar_message(err)}; "
                            "simplify the schema"
                        )
                    )
        finally:
            with self._lock:
                self._compiling.pop(digest, None)

    def _compiler_of(self) -> xgr.GrammarCompiler:
        with self._compiler_lock:  # the tokenizer's vocabulary is read once, on first use
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._stop_ids
                )
                # One thread per compile: the workers setting bounds the cores compiles take.
                self._compiler = xgr.GrammarCompiler(
                    info, max_threads=1, cache_limit_bytes=_CACHE_BYTES
                )
            return self._compiler

    def mask(self, guides: list[Guide], logits: torch.Tensor) -> None:
        """Set each row's logits of the tokens its grammar does not allow next to -inf, in
        place: one pass for all the constrained rows of a decoding step, as per-row calls
        would cost several times the model's own step on a small model."""
        bitmask = xgr.allocate_token_bitmask(len(guides), self._vocab_size)
        self._batch.batch_fill_next_token_bitmask([g.matcher for g in guides], bitmask)
        xgr.apply_token_bitmask_inplace(logits, bitmask)

    def accept(self, guides: list[Guide], tokens: list[int]) -> None:
        """Advance each grammar by its row's chosen token, all in one call."""
        accepted = self._batch.batch_accept_token([g.matcher for g in guides], tokens)
        if not all(accepted):
            raise EngineError("a chosen token breaks its output's grammar")
