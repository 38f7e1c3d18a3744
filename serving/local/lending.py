"""A loaded model lent to work outside the continuous batch, such as explanations."""

import threading
import time
from typing import Any
from weakref import WeakKeyDictionary

import torch
from peft import PeftModel
from torch import nn

from serving.local.runner import BASE_ADAPTER, ModelRunner

_STEP_WAIT_S = 1.0  # the longest a lent pass waits for an engine step (a held engine takes none)
_POLL_S = 0.001


class _Turns:
    """Lent passes on one runner take turns with its engine's steps: one lent pass at a time,
    an engine step between two of them while the engine has sequences, and the engine held
    for the pass (a plain lock would let its busy thread take the model back every time).
    However many explanations run, a sequence waits at most one lent pass per token, and
    the explanations share up to every other turn of the engine."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.steps = -1  # the runner's decode steps when the last lent pass ended


_turns: WeakKeyDictionary[ModelRunner, _Turns] = WeakKeyDictionary()


class LentModel(nn.Module):
    """The runner's model as a module of its own: each forward pass takes its turn between
    the engine's steps, and an adapter version runs through its adapter (the base through
    none) when the runner has adapters loaded."""

    def __init__(self, runner: ModelRunner, adapter: str | None):
        super().__init__()
        self._runner = runner  # not a submodule: the runner owns the weights
        self._adapter = adapter
        self._turns = _turns.setdefault(runner, _Turns())  # made on the event loop only

    @property
    def device(self) -> torch.device:
        return self._runner.device

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        runner, turns = self._runner, self._turns
        with turns.lock:
            deadline = time.monotonic() + _STEP_WAIT_S
            while (
                runner.decode_steps == turns.steps
                and not runner.idle
                and time.monotonic() < deadline
            ):
                time.sleep(_POLL_S)
            with runner.paused(), runner.model_lock:
                model = runner.model
                if isinstance(model, PeftModel):
                    kwargs["adapter_names"] = [self._adapter or BASE_ADAPTER] * input_ids.shape[0]
                out = model(input_ids=input_ids.to(self.device), **kwargs)
            turns.steps = runner.decode_steps
            return out
