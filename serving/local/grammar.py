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

    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int):
        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits of the tokens the grammar does not allow next to -inf, in place."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        xgr.apply_token_bitmask_inplace(logits.unsqueeze(0), self._bitmask)

    def accept(self, token: int) -> None:
        if not self._matcher.accept_token(token):
            raise EngineError(f"token {token} breaks the output's grammar")


class Grammars:
    """Compiles grammars for one model's tokenizer; thread-safe, compiled grammars cached."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_ids: set[int]):
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._stop_ids = sorted(stop_ids)
        self._compiler: xgr.GrammarCompiler | None = None
        self._lock = threading.Lock()

    def guide(self, grammar: str) -> Guide:
        """A matcher for the EBNF `grammar`."""
        with self._lock:  # the tokenizer's vocabulary is read once, on first use
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._stop_ids
                )
                self._compiler = xgr.GrammarCompiler(info)
        return Guide(self._compiler.compile_grammar(grammar), self._vocab_size)
