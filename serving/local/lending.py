"""A loaded model lent to work outside the continuous batch, such as explanations."""

from typing import Any

import torch
from peft import PeftModel
from torch import nn

from serving.local.runner import BASE_ADAPTER, ModelRunner


class LentModel(nn.Module):
    """The runner's model as a module of its own: every forward pass holds the runner's model
    lock, so generation waits at most one pass, and an adapter version runs through its
    adapter (the base through none) when the runner has adapters loaded."""

    def __init__(self, runner: ModelRunner, adapter: str | None):
        super().__init__()
        self._runner = runner  # not a submodule: the runner owns the weights
        self._adapter = adapter

    @property
    def device(self) -> torch.device:
        return self._runner.device

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        with self._runner.model_lock:
            model = self._runner.model
            if isinstance(model, PeftModel):
                kwargs["adapter_names"] = [self._adapter or BASE_ADAPTER] * input_ids.shape[0]
            return model(input_ids=input_ids.to(self.device), **kwargs)
