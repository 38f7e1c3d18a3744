"""Grammar-constrained decoding on the local engine with xgrammar: a grammar compiles once per
tokenizer (cached), and each constrained sequence gets its own matcher, which masks the tokens
that cannot continue a valid output and follows the tokens chosen."""

import threading

import torch
import xgrammar as xgr
from transformers import PreTrainedTokenizerBase

from serving.errors import EngineError


class Guide:
    """One sequence's grammar state."""

    def __init__(self, compiled: xgr.CompiledGrammar):
        self.matcher = xgr.GrammarMatcher(compiled)


class Grammars:
    """Compiles grammars for one model's tokenizer; thread-safe, compiled grammars cached."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_ids: set[int]):
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._stop_ids = sorted(stop_ids)
        self._compiler: xgr.GrammarCompiler | None = None
        self._lock = threading.Lock()
        self._batch = xgr.BatchGrammarMatcher()

    def guide(self, grammar: str) -> Guide:
        """A matcher for the EBNF `grammar`."""
        with self._lock:  # the tokenizer's vocabulary is read once, on first use
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._stop_ids
                )
                self._compiler = xgr.GrammarCompiler(info)
        return Guide(self._compiler.compile_grammar(grammar))

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
